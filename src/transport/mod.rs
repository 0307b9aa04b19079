//! The four ZeroMQ sockets, owned by one thread (libzmq sockets are not
//! thread-safe), bridged to the tokio core by bounded channels.
//!
//! - Inbound: the thread reads whole multipart messages, checks their frame
//!   count and sizes, decodes the header and hands the core an [`Inbound`].
//!   When the core's queue is full it stops reading, so libzmq's high-water
//!   marks push back on the clients instead of memory growing here.
//! - Outbound: the core sends [`Command`]s; each client has a bounded
//!   [`outbox::Outbox`] per channel. Sends never block: a client whose
//!   connection is full keeps its messages queued while the others are
//!   served; when its outbox exceeds the limits, or stays blocked longer than
//!   the heartbeat timeout, the core is told it is too slow.

mod io;
mod outbox;
mod sockets;
mod waker;

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::protocol::{
    Channel, CommandRequest, HeartbeatMessage, ProtocolError, PublisherMessage, SubscriberRequest,
    Wire,
};

pub use sockets::{BindError, Sockets};
use waker::Waker;

/// A client's routing identity, the same on its three DEALER sockets.
pub type Identity = Bytes;

/// A decoded message from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Command(CommandRequest),
    Publisher(PublisherMessage),
    Subscriber(SubscriberRequest),
    Heartbeat(HeartbeatMessage),
}

/// What the transport tells the core.
// Nearly every event is a `Message`: boxing it would cost an allocation per
// message to shrink the rare `TooSlow`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Inbound {
    /// A message arrived.
    Message {
        channel: Channel,
        /// Routing identity (commands, subscriber, heartbeat channels).
        identity: Option<Identity>,
        /// Session token frame (publisher channel).
        token: Option<Bytes>,
        /// The remote address, where libzmq knows it (used to slow down
        /// repeated failed logins from one place).
        peer_address: Option<String>,
        /// The decoded header, or why it could not be decoded.
        message: Result<ClientMessage, ProtocolError>,
        /// The data frame, if any.
        payload: Option<Bytes>,
    },
    /// A client's outbox overflowed or stayed blocked too long.
    TooSlow { identity: Identity },
}

/// What the core tells the transport.
#[derive(Debug)]
pub enum Command {
    /// Queue `wire` for each identity on `channel`.
    Deliver {
        channel: Channel,
        to: Vec<Identity>,
        wire: Wire,
    },
    /// Drop everything queued for `identity`, send it `last` on the command
    /// channel (best effort), and forget it.
    Disconnect {
        identity: Identity,
        last: Option<Wire>,
    },
    /// Flush what can be flushed quickly, close the sockets and stop.
    Shutdown,
}

/// Limits the transport enforces.
#[derive(Debug, Clone)]
pub struct TransportLimits {
    pub max_header_bytes: usize,
    pub outbox_max_messages: usize,
    pub outbox_max_bytes: usize,
    /// An outbox that makes no progress for this long marks its client too slow.
    pub blocked_timeout: Duration,
}

impl TransportLimits {
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_header_bytes: config.limits.max_header_bytes,
            outbox_max_messages: config.limits.outbox_max_messages,
            outbox_max_bytes: config.limits.outbox_max_bytes,
            blocked_timeout: config.timeout(),
        }
    }
}

/// The core's side of the transport.
#[derive(Debug)]
pub struct TransportHandle {
    commands: mpsc::Sender<Command>,
    waker: Waker,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Capacity of the channels between the transport thread and the core.
const CHANNEL_CAPACITY: usize = 4096;

impl TransportHandle {
    /// Starts the transport thread on already-bound sockets.
    pub fn spawn(
        sockets: Sockets,
        limits: TransportLimits,
    ) -> std::io::Result<(Self, mpsc::Receiver<Inbound>)> {
        let (inbound_tx, inbound_rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (commands_tx, commands_rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (waker, wake_rx) = Waker::new()?;
        let thread = std::thread::Builder::new()
            .name("zmq-io".into())
            .spawn(move || io::run(sockets, limits, commands_rx, inbound_tx, wake_rx))?;
        Ok((
            Self {
                commands: commands_tx,
                waker,
                thread: Some(thread),
            },
            inbound_rx,
        ))
    }

    /// Queues a command; waits only while the transport's queue is full.
    pub async fn send(&self, command: Command) {
        if self.commands.send(command).await.is_ok() {
            self.waker.wake();
        }
    }

    /// Stops the thread and waits for it to close the sockets.
    pub async fn shutdown(mut self) {
        self.send(Command::Shutdown).await;
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}
