//! Wires the transport, the core and the console together.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::core::{ConsoleRequest, Core};
use crate::transport::{BindError, Sockets, TransportHandle, TransportLimits};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot start the network thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// A server whose sockets are bound, ready to run.
pub struct Server {
    config: Config,
    sockets: Sockets,
    ports: [u16; 4],
    console_tx: mpsc::Sender<ConsoleRequest>,
    console_rx: mpsc::Receiver<ConsoleRequest>,
}

impl Server {
    /// Validates the configuration and binds the four ports, so that every
    /// start-up error is reported before anything runs.
    pub fn bind(config: Config) -> Result<Self, ServerError> {
        config.validate()?;
        let ports = config.ports()?;
        let sockets = Sockets::bind(&config)?;
        let (console_tx, console_rx) = mpsc::channel(16);
        Ok(Self {
            config,
            sockets,
            ports,
            console_tx,
            console_rx,
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
    /// with a reason and closes the sockets.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let Self {
            config,
            sockets,
            ports,
            console_tx,
            console_rx,
        } = self;
        // Only the console's own senders should keep the channel open.
        drop(console_tx);
        let (transport, inbound) =
            TransportHandle::spawn(sockets, TransportLimits::from_config(&config))?;
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
        Core::new(config, transport)
            .run(inbound, console_rx, shutdown)
            .await;
        Ok(())
    }
}
