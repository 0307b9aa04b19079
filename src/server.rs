//! Wires the transport, the core, the console and the metrics listener
//! together.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, DEFAULT_ADMIN_PASSWORD};
use crate::core::rooms::{self, DEFAULT_ROOM, RoomEntry, Rooms, dir_name};
use crate::core::{ConsoleRequest, Core, backups};
use crate::descriptors::{self, DescriptorError};
use crate::metrics::http::{self, HttpError};
use crate::metrics::{Metrics, MetricsError};
use crate::protocol::SessionState;
use crate::room::Room;
use crate::security::front::{self, Front};
use crate::security::service::{KeyService, Service};
use crate::security::{self as security, Encrypting, Security, SecurityError};
use crate::store::Change;
use crate::store::SessionImage;
use crate::store::db::{Store, StoreError};
use crate::store::file::{FileError, SaveInfo, read_session, write_session};
use crate::store::recorder::Recorder;
use crate::transport::{BindError, EncryptedParts, Sockets, Transport, TransportLimits};

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
    #[error(
        "cannot keep a backup of the recorded sessions before starting --fresh, so nothing was replaced: {0}"
    )]
    FreshBackup(String),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Descriptors(#[from] DescriptorError),
    #[error(transparent)]
    Security(#[from] SecurityError),
}

impl ServerError {
    /// The configuration key whose value the error is about (as a config
    /// file spells it), so the message can say where it was given.
    pub fn key(&self) -> Option<&'static str> {
        match self {
            Self::Config(e) => Some(e.key()),
            Self::Bind(BindError::Config(e)) => Some(e.key()),
            Self::Bind(_) => Some("port"),
            Self::Store(_) => Some("data_dir"),
            Self::Load(_) | Self::TooBig { .. } => Some("load"),
            Self::Backup(_) | Self::FreshBackup(_) => Some("backup_dir"),
            Self::Http(_) => Some("metrics"),
            Self::Security(
                SecurityError::AuthorizedKeys(_) | SecurityError::KeysWithoutEncryption(_),
            ) => Some("authorized_keys"),
            Self::Security(SecurityError::Key(_)) => Some("server_key"),
            Self::Security(SecurityError::NoCurve(_)) => Some("encryption"),
            Self::Thread(_) | Self::Metrics(_) | Self::Descriptors(_) => None,
        }
    }
}

/// A server whose sockets are bound, ready to run.
pub struct Server {
    config: Config,
    sockets: Sockets,
    ports: [u16; 4],
    console_tx: mpsc::Sender<ConsoleRequest>,
    console_rx: mpsc::Receiver<ConsoleRequest>,
    rooms: Rooms,
    metrics: Arc<Metrics>,
    /// The metrics listener, bound, when `--metrics` asks for one.
    metrics_listener: Option<std::net::TcpListener>,
    /// The key pair and admitted keys, when the server encrypts.
    encrypting: Option<Encrypting>,
    /// The heartbeat port's listener and the security thread's sockets,
    /// when the server encrypts.
    encrypted: Option<EncryptedParts>,
    /// What the console asks about keys.
    security: Security,
    /// The console's requests to read the authorized keys again.
    reloads: std::sync::mpsc::Receiver<security::service::Reload>,
}

impl Server {
    /// Validates the configuration and binds the four ports, so that every
    /// start-up error is reported before anything runs.
    pub fn bind(config: Config) -> Result<Self, ServerError> {
        config.validate()?;
        let ports = config.ports()?;
        let encrypting = security::prepare(&config)?;
        let needed = if encrypting.is_some() {
            descriptors::needed_encrypted(&config.limits)
        } else {
            descriptors::needed(&config.limits)
        };
        let open_files = descriptors::ensure(needed)?;
        if let Some(before) = open_files.raised_from {
            tracing::info!(
                from = before,
                to = open_files.soft,
                "raised the open-file limit to what the configured limits need"
            );
        }
        let metrics = Arc::new(Metrics::new()?);
        let mut sockets = Sockets::bind(&config, encrypting.as_ref())?;
        let encrypted = sockets.take_encrypted();
        let (reload_tx, reloads) = std::sync::mpsc::sync_channel(4);
        let security = Security::new(encrypting.as_ref(), reload_tx);
        let metrics_listener = config.metrics.map(|a| http::bind(a.0)).transpose()?;
        let rooms = open_rooms(&config)?;
        let (console_tx, console_rx) = mpsc::channel(16);
        Ok(Self {
            config,
            sockets,
            ports,
            console_tx,
            console_rx,
            rooms,
            metrics,
            metrics_listener,
            encrypting,
            encrypted,
            security,
            reloads,
        })
    }

    /// What the console's `key` and `reload-keys` use.
    pub fn security(&self) -> Security {
        self.security.clone()
    }

    /// The key pair the server encrypts with, when it does.
    pub fn encrypting(&self) -> Option<&Encrypting> {
        self.encrypting.as_ref()
    }

    /// Where the metrics listener listens, if there is one (with the port
    /// chosen when `--metrics` asked for port 0).
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
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
        let metrics_address = self.metrics_address();
        let Self {
            config,
            sockets,
            ports,
            console_tx,
            console_rx,
            rooms,
            metrics,
            metrics_listener,
            encrypting,
            encrypted,
            security: _,
            reloads,
        } = self;
        let transport = Transport::new(
            sockets,
            TransportLimits::from_config(&config),
            metrics.traffic.clone(),
        )?;
        // The listener stops with the core, whatever stops it.
        let listening = shutdown.child_token();
        let listener = match metrics_listener {
            Some(listener) => Some(http::spawn(
                listener,
                metrics.clone(),
                console_tx.clone(),
                listening.clone(),
            )?),
            None => None,
        };
        // Only the console's own senders (and the listener's) should keep
        // the channel open.
        drop(console_tx);
        let (service, front) = start_security(&config, encrypted, reloads, &listening)?;
        tracing::info!(
            bind = %config.bind,
            commands = ports[0],
            subscriber = ports[1],
            publisher = ports[2],
            heartbeat = ports[3],
            private = config.server_password.is_some(),
            timeout_ms = config.timeout_ms,
            encryption = if encrypting.is_some() { "curve" } else { "off" },
            "replication-serve {} listening",
            env!("CARGO_PKG_VERSION")
        );
        log_encryption(&config, encrypting.as_ref());
        if exposes_default_password(&config) {
            tracing::warn!(
                bind = %config.bind,
                "the admin password is the well-known default \"admin\" and the server is reachable from other machines: anyone who reaches it can log in as admin; set your own with -pwd, REPLICATION_ADMIN_PASSWORD or admin_password in the config file"
            );
        }
        if let Some(address) = metrics_address {
            tracing::info!(
                metrics = %format!("http://{address}/metrics"),
                status = %format!("http://{address}/status"),
                "metrics listening"
            );
        }
        let result = Core::new(config, transport, rooms, metrics)
            .run(console_rx, shutdown)
            .await;
        listening.cancel();
        // Both stop at once (the front on the token, the thread within a
        // tick); joined off the runtime's thread.
        let _ = tokio::task::spawn_blocking(move || drop((front, service))).await;
        if let Some(thread) = listener {
            // It stops at once once cancelled; nothing to report if not.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result?;
        Ok(())
    }
}

/// Starts the security thread (authorized keys, key service) and the
/// heartbeat port's front, when the server encrypts.
fn start_security(
    config: &Config,
    encrypted: Option<EncryptedParts>,
    reloads: std::sync::mpsc::Receiver<security::service::Reload>,
    shutdown: &CancellationToken,
) -> Result<(Option<Service>, Option<Front>), ServerError> {
    let Some(parts) = encrypted else {
        // Nothing answers `reload-keys`: the console says so itself.
        drop(reloads);
        return Ok((None, None));
    };
    let EncryptedParts {
        heartbeat,
        backends,
        key_service,
        zap,
    } = parts;
    let service = Service::spawn(zap, Some::<KeyService>(key_service), reloads)?;
    let limits = &config.limits;
    let caps = front::Caps {
        per_address: limits
            .max_unauthenticated_per_address
            .saturating_add(limits.max_users),
        total: limits
            .max_unauthenticated_total
            .saturating_add(limits.max_users_total),
    };
    let front = Front::spawn(heartbeat, backends, caps, shutdown.child_token())?;
    Ok((Some(service), Some(front)))
}

/// Says at start how the server encrypts: the fingerprint (the public key
/// itself goes to stdout, from the binary), or why it does not.
fn log_encryption(config: &Config, encrypting: Option<&Encrypting>) {
    match encrypting {
        Some(e) => {
            tracing::info!(
                fingerprint = %e.pair.public().fingerprint(),
                key_file = %e.key_file.display(),
                created = e.created,
                authorized_keys = ?e.authorized.as_ref().map(|(p, k)| format!("{} ({} keys)", p.display(), k.len())),
                "encryption: CURVE on all four ports; clients check the server by this fingerprint"
            );
        }
        None if config.encryption == crate::config::Encryption::Off => {
            if !config.bind.is_loopback() {
                tracing::warn!(
                    "encryption is off (--encryption off): passwords and the scene travel in clear; use it only on a network you trust, or a VPN"
                );
            }
        }
        None => tracing::info!(
            "encryption: off, since the server listens on loopback only; --encryption required encrypts there too"
        ),
    }
}

/// The default admin password on an address other machines can reach.
fn exposes_default_password(config: &Config) -> bool {
    config.admin_password == DEFAULT_ADMIN_PASSWORD && !config.bind.is_loopback()
}

/// The rooms to serve: the default room (from `--load`, else recovered from
/// the data directory, else empty) and every other recorded room.
fn open_rooms(config: &Config) -> Result<Rooms, ServerError> {
    let (room, store) = open_default_room(config)?;
    let mut rooms = Rooms::default();
    let store = store
        .map(|s| Recorder::spawn(s, rooms.wake().clone()))
        .transpose()?;
    rooms.insert(DEFAULT_ROOM, RoomEntry::new(room, store));
    if !config.in_memory {
        for (name, entry) in rooms::open_recorded(config, &config.data_dir(), rooms.wake())? {
            if name == DEFAULT_ROOM {
                tracing::warn!("a recorded room is named like the default room; it was not opened");
                continue;
            }
            rooms.insert(&name, entry);
        }
        if config.fresh {
            start_fresh(config, &mut rooms)?;
        }
    }
    Ok(rooms)
}

/// `--fresh`: saves every recorded scene to the backup directory, then
/// empties the default room and removes the others. Nothing is removed
/// unless every backup was written.
fn start_fresh(config: &Config, rooms: &mut Rooms) -> Result<(), ServerError> {
    let dir = config.backup_dir();
    let mut saved = Vec::new();
    for (name, entry) in rooms.iter_mut() {
        let Some(image) = entry.room.image().filter(|i| !i.blocks.is_empty()) else {
            continue;
        };
        let path = backups::new_path(&dir, &format!("before-fresh-{}", dir_name(name)));
        let file = backups::save_to(&image, &backups::Target::InBackups(path))
            .map_err(ServerError::FreshBackup)?;
        saved.push((name.to_string(), file));
    }
    for name in rooms.names() {
        if &*name == DEFAULT_ROOM {
            continue;
        }
        if let Some(mut entry) = rooms.remove(&name)
            && let Some(store) = entry.store.take()
        {
            let room_dir = store.dir().to_owned();
            drop(store);
            std::fs::remove_dir_all(&room_dir).map_err(|e| StoreError::Directory {
                dir: room_dir.clone(),
                source: e,
            })?;
        }
    }
    if let Some(entry) = rooms.get_mut(DEFAULT_ROOM) {
        entry.room = Room::new(config.limits.clone());
        entry.room.set_name(DEFAULT_ROOM);
        if let Some(store) = &mut entry.store {
            store.record([Change::Clear, Change::State(SessionState::Waiting)]);
            store.commit_and_wait()?;
        }
    }
    for (room, file) in &saved {
        tracing::warn!(
            room,
            backup = %file.path.display(),
            datablocks = file.summary.datablocks,
            "--fresh: the recorded scene was saved, and the room starts empty"
        );
    }
    tracing::info!(
        rooms_saved = saved.len(),
        "started fresh: the default room waits for its first upload"
    );
    Ok(())
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
