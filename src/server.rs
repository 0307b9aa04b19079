//! Wires the transport, the core and the console together.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::core::rooms::{self, DEFAULT_ROOM, RoomEntry, Rooms};
use crate::core::{ConsoleRequest, Core, backups};
use crate::descriptors::{self, DescriptorError};
use crate::room::Room;
use crate::store::SessionImage;
use crate::store::db::{Store, StoreError};
use crate::store::file::{FileError, SaveInfo, read_session, write_session};
use crate::transport::{BindError, Sockets, Transport, TransportLimits};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot start the network thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot load the session: {0}")]
    Load(#[from] FileError),
    #[error("cannot load {}: {reason}", .file.display())]
    TooBig {
        file: std::path::PathBuf,
        reason: String,
    },
    #[error(
        "cannot keep a backup of the recorded session before replacing it with --load, so nothing was replaced: {0}"
    )]
    Backup(String),
    #[error(transparent)]
    Descriptors(#[from] DescriptorError),
}

/// A server whose sockets are bound, ready to run.
pub struct Server {
    config: Config,
    sockets: Sockets,
    ports: [u16; 4],
    console_tx: mpsc::Sender<ConsoleRequest>,
    console_rx: mpsc::Receiver<ConsoleRequest>,
    rooms: Rooms,
}

impl Server {
    /// Validates the configuration and binds the four ports, so that every
    /// start-up error is reported before anything runs.
    pub fn bind(config: Config) -> Result<Self, ServerError> {
        config.validate()?;
        let ports = config.ports()?;
        let needed = descriptors::needed(&config.limits);
        let open_files = descriptors::ensure(needed)?;
        if let Some(before) = open_files.raised_from {
            tracing::info!(
                from = before,
                to = open_files.soft,
                "raised the open-file limit to what the configured limits need"
            );
        }
        let rooms = open_rooms(&config)?;
        let sockets = Sockets::bind(&config)?;
        let (console_tx, console_rx) = mpsc::channel(16);
        Ok(Self {
            config,
            sockets,
            ports,
            console_tx,
            console_rx,
            rooms,
        })
    }

    /// The four ports: commands, subscriber, publisher, heartbeat.
    pub fn ports(&self) -> [u16; 4] {
        self.ports
    }

    /// A channel for console requests to this server.
    pub fn console_sender(&self) -> mpsc::Sender<ConsoleRequest> {
        self.console_tx.clone()
    }

    /// Serves until `shutdown` is cancelled; then disconnects every client
    /// with a reason and closes the sockets. Runs on the current task, which
    /// must belong to a tokio runtime with I/O and time enabled (the sockets
    /// are registered with its reactor).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let Self {
            config,
            sockets,
            ports,
            console_tx,
            console_rx,
            rooms,
        } = self;
        // Only the console's own senders should keep the channel open.
        drop(console_tx);
        let transport = Transport::new(sockets, TransportLimits::from_config(&config))?;
        tracing::info!(
            bind = %config.bind,
            commands = ports[0],
            subscriber = ports[1],
            publisher = ports[2],
            heartbeat = ports[3],
            private = config.server_password.is_some(),
            timeout_ms = config.timeout_ms,
            "replication-serve {} listening",
            env!("CARGO_PKG_VERSION")
        );
        Core::new(config, transport, rooms)
            .run(console_rx, shutdown)
            .await?;
        Ok(())
    }
}

/// The rooms to serve: the default room (from `--load`, else recovered from
/// the data directory, else empty) and every other recorded room.
fn open_rooms(config: &Config) -> Result<Rooms, ServerError> {
    let (room, store) = open_default_room(config)?;
    let mut rooms = Rooms::default();
    rooms.insert(DEFAULT_ROOM, RoomEntry::new(room, store));
    if !config.in_memory {
        for (name, entry) in rooms::open_recorded(config, &config.data_dir())? {
            if name == DEFAULT_ROOM {
                tracing::warn!("a recorded room is named like the default room; it was not opened");
                continue;
            }
            rooms.insert(&name, entry);
        }
    }
    Ok(rooms)
}

/// The default room: loaded from `--load`, else recovered from the data
/// directory, else empty.
fn open_default_room(config: &Config) -> Result<(Room, Option<Store>), ServerError> {
    let limits = &config.limits;
    let loaded = match &config.load {
        Some(file) => {
            let (image, header) = read_session(file, limits.max_datablock_bytes)?;
            if image.blocks.len() > limits.max_datablocks {
                return Err(ServerError::TooBig {
                    file: file.clone(),
                    reason: format!(
                        "it holds {} datablocks; limits.max_datablocks is {}",
                        image.blocks.len(),
                        limits.max_datablocks
                    ),
                });
            }
            tracing::info!(
                file = %file.display(),
                datablocks = image.blocks.len(),
                bytes = image.bytes(),
                saved_by = header.server_version,
                "loaded a session file"
            );
            Some(image)
        }
        None => None,
    };
    if config.in_memory {
        tracing::info!("the session is kept in memory only: a restart starts an empty session");
        let room = match loaded {
            Some(image) => Room::restore(limits.clone(), image),
            None => Room::new(limits.clone()),
        };
        return Ok((room, None));
    }
    let dir = config.data_dir();
    let (mut store, recovered) = Store::open(&dir, config.durability)?;
    if let Some(image) = loaded {
        if let Some(previous) = recovered.image.filter(|i| !i.blocks.is_empty()) {
            keep_before_load(config, &previous)?;
        }
        store.replace(&image)?;
        return Ok((Room::restore(limits.clone(), image), Some(store)));
    }
    let room = match recovered.image {
        Some(image) => {
            tracing::info!(
                data_dir = %dir.display(),
                datablocks = image.blocks.len(),
                bytes = image.bytes(),
                folded_patches = recovered.compacted_patches,
                "restored the recorded session; it is ACTIVE and every owner is COMMON"
            );
            if image.blocks.len() > limits.max_datablocks {
                tracing::warn!(
                    datablocks = image.blocks.len(),
                    limit = limits.max_datablocks,
                    "the recorded session holds more datablocks than limits.max_datablocks; no new ones will be accepted"
                );
            }
            Room::restore(limits.clone(), image)
        }
        None => {
            tracing::info!(data_dir = %dir.display(), "recording the session; it waits for its first upload");
            Room::new(limits.clone())
        }
    };
    Ok((room, Some(store)))
}

/// Saves the recorded session before `--load` replaces it.
fn keep_before_load(config: &Config, previous: &SessionImage) -> Result<(), ServerError> {
    let dir = config.backup_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| ServerError::Backup(format!("cannot create {}: {e}", dir.display())))?;
    let path = backups::new_path(&dir, "before-load");
    write_session(&path, previous, &SaveInfo::now())
        .map_err(|e| ServerError::Backup(e.to_string()))?;
    tracing::warn!(
        backup = %path.display(),
        datablocks = previous.blocks.len(),
        "--load replaces the recorded session; it was saved first"
    );
    Ok(())
}
