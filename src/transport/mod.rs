//! The four ZeroMQ sockets, driven by the core's own thread: libzmq sockets
//! are not thread-safe, and a message that crosses no thread on its way in
//! or out costs no wake-up.
//!
//! - Inbound: [`Transport::recv_many`] waits until a socket's descriptor
//!   signals (through tokio's reactor, beside the core's timers), then reads
//!   whole multipart messages, checks their frame count and sizes, decodes
//!   the header (or recognises an old Multi-User client's pickled message
//!   by its first frame) and hands the core [`Inbound`]s. It reads only
//!   when the core asks, so while the core is busy libzmq's high-water
//!   marks push back on the clients instead of memory growing here.
//! - Outbound: the core gives [`Command`]s to [`Transport::send`]; each
//!   client has a bounded [`outbox::Outbox`] per channel. Sends never block:
//!   a client whose connection is full keeps its messages queued while the
//!   others are served; when its outbox exceeds the limits, or stays blocked
//!   longer than the heartbeat timeout, the core is told it is too slow.

mod connections;
mod io;
mod outbox;
mod shared;
mod sockets;

use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::config::Config;
use crate::metrics::Traffic;
use crate::protocol::old_multiuser::OldRequest;
use crate::protocol::{
    Channel, CommandRequest, HeartbeatMessage, ProtocolError, PublisherMessage, SubscriberRequest,
    Wire,
};

pub use sockets::{BindError, EncryptedParts, Sockets};

/// A client's routing identity, the same on its three DEALER sockets.
pub type Identity = Bytes;

/// A frame as libzmq received it, not copied: a session token, which is
/// only looked up (tokens fit in libzmq's message itself), or a data frame,
/// which the core copies what it keeps out of when it handles the message.
/// Its `Debug` shows only its length (a token is a credential).
pub struct Frame(zmq::Message);

impl std::ops::Deref for Frame {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({} bytes)", self.0.len())
    }
}

/// Whom a message goes to: one client, or a list that several messages
/// share. A busy room addresses the same clients with every update, so the
/// core builds that list once and hands out clones of it.
#[derive(Debug, Clone)]
pub enum Recipients {
    One(Identity),
    Many(Arc<[Identity]>),
}

impl std::ops::Deref for Recipients {
    type Target = [Identity];

    fn deref(&self) -> &[Identity] {
        match self {
            Self::One(identity) => std::slice::from_ref(identity),
            Self::Many(list) => list,
        }
    }
}

impl Default for Recipients {
    /// Nobody.
    fn default() -> Self {
        Self::Many(Arc::default())
    }
}

impl PartialEq for Recipients {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Many(a), Self::Many(b)) if Arc::ptr_eq(a, b) => true,
            _ => **self == **other,
        }
    }
}

impl From<Vec<Identity>> for Recipients {
    fn from(mut list: Vec<Identity>) -> Self {
        match list.len() {
            1 => Self::One(list.swap_remove(0)),
            _ => Self::Many(list.into()),
        }
    }
}

/// A decoded message from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Command(CommandRequest),
    Publisher(PublisherMessage),
    Subscriber(SubscriberRequest),
    Heartbeat(HeartbeatMessage),
    /// A message of an old Multi-User client (pickled frames, not protocol
    /// v1), known from its first frame; its other frames are dropped unread.
    OldMultiUser(OldRequest),
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
        token: Option<Frame>,
        /// The remote address, where libzmq knows it (used to slow down
        /// repeated failed logins from one place).
        peer_address: Option<String>,
        /// The decoded header, or why it could not be decoded.
        message: Result<ClientMessage, ProtocolError>,
        /// The data frame, if any.
        payload: Option<Frame>,
    },
    /// A client's outbox overflowed or stayed blocked too long.
    TooSlow { identity: Identity },
    /// A new connection presented `identity` on `channel` (libzmq tells
    /// this in band, before anything that arrives on the connection).
    Connected {
        channel: Channel,
        identity: Identity,
    },
}

/// What the core tells the transport.
#[derive(Debug)]
pub enum Command {
    /// Queue `wire` for each identity on `channel`.
    Deliver {
        channel: Channel,
        to: Recipients,
        wire: Wire,
    },
    /// Drop everything queued for `identity`, send it `last` on the command
    /// channel (best effort), and forget it.
    Disconnect {
        identity: Identity,
        last: Option<Wire>,
    },
    /// Send `frames` as one message to `identity` on the commands channel,
    /// best effort and never queued: answers in no version of this protocol
    /// messages (to old Multi-User clients), to identities without a
    /// session.
    Frames {
        identity: Identity,
        frames: Arc<[Bytes]>,
    },
    /// Hold what is sent to `identity` on `channel` until [`Command::Release`]:
    /// its connection there has not proven the session yet. `prompt` goes
    /// out at once (best effort), held nothing.
    Hold {
        channel: Channel,
        identity: Identity,
        prompt: Wire,
    },
    /// Send what was held for `identity` on `channel`, and no longer hold.
    Release {
        channel: Channel,
        identity: Identity,
    },
    /// A user logged in from `address` (`delta` 1) or left (-1): each
    /// brings four connections more under the caps.
    Users { address: IpAddr, delta: isize },
}

/// Limits the transport enforces.
#[derive(Debug, Clone)]
pub struct TransportLimits {
    pub max_header_bytes: usize,
    pub outbox_max_messages: usize,
    pub outbox_max_bytes: usize,
    /// An outbox that makes no progress for this long marks its client too slow.
    pub blocked_timeout: Duration,
    /// Connections beyond those of users logged in.
    pub unauthenticated: connections::Caps,
}

impl TransportLimits {
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_header_bytes: config.limits.max_header_bytes,
            outbox_max_messages: config.limits.outbox_max_messages,
            outbox_max_bytes: config.limits.outbox_max_bytes,
            blocked_timeout: config.timeout(),
            unauthenticated: connections::Caps {
                per_address: config.limits.max_unauthenticated_per_address,
                total: config.limits.max_unauthenticated_total,
            },
        }
    }
}

/// The core's side of the transport.
pub struct Transport {
    /// The sockets' descriptors, then their monitors', registered with
    /// tokio's reactor. Declared before `io` so that they are deregistered
    /// before the sockets close.
    signals: [AsyncFd<SocketSignal>; 8],
    io: io::Io,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").finish_non_exhaustive()
    }
}

/// A socket's `ZMQ_FD`: readable when libzmq has news for the socket. It
/// belongs to the socket, which closes it.
struct SocketSignal(RawFd);

impl AsRawFd for SocketSignal {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl Transport {
    /// Takes already-bound sockets. Must be called inside a tokio runtime
    /// with I/O enabled.
    #[allow(unsafe_code)]
    pub fn new(
        sockets: Sockets,
        limits: TransportLimits,
        traffic: Traffic,
    ) -> std::io::Result<Self> {
        let signal = |socket: &zmq::Socket| -> std::io::Result<AsyncFd<SocketSignal>> {
            let fd = socket.get_fd().map_err(std::io::Error::other)?;
            // SAFETY: tokio needs the descriptor to stay open, and to be the
            // same file, for as long as the registration lives. It is the
            // socket's own ZMQ_FD, which libzmq keeps open and unchanged
            // until the socket closes, and `Transport` drops its
            // registrations before its sockets (field order, and the
            // explicit drop in `shutdown`).
            unsafe { AsyncFd::register_with_interest(SocketSignal(fd), Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
        };
        let [s0, s1, s2, s3] = &sockets.sockets;
        let [m0, m1, m2, m3] = &sockets.monitors;
        let signals = [
            signal(s0)?,
            signal(s1)?,
            signal(s2)?,
            signal(s3)?,
            signal(m0)?,
            signal(m1)?,
            signal(m2)?,
            signal(m3)?,
        ];
        let mut io = io::Io::new(sockets, limits, traffic);
        // A ZMQ_FD signals only news after the socket was last read until
        // empty: the monitors have their first events (the listeners)
        // already, and would never signal the next ones.
        io.read_monitors();
        Ok(Self { signals, io })
    }

    /// The answer to SERVER_KEY: how this server encrypts, and its key.
    pub fn server_key_answer(&self, id: Option<u64>) -> HeartbeatMessage {
        self.io.server_key_answer(id)
    }

    /// Carries out a command at once: messages go to libzmq, or to the
    /// client's outbox when its connection is full.
    pub fn send(&mut self, command: Command) {
        self.io.command(command);
    }

    /// Waits for inbound events and moves up to `limit` of them into `out`
    /// (at least one), with at most about `bytes` of data frames among them
    /// (a larger frame comes alone). Meanwhile retries blocked outboxes
    /// when they are due. Cancel-safe: nothing is taken from a socket at an
    /// await point.
    pub async fn recv_many(&mut self, out: &mut Vec<Inbound>, limit: usize, bytes: usize) -> usize {
        let limit = limit.max(1);
        loop {
            self.io.flush(std::time::Instant::now());
            while out.len() < limit {
                match self.io.pending.pop_front() {
                    Some(event) => out.push(event),
                    None => break,
                }
            }
            self.read_fairly(out, limit, bytes);
            if !out.is_empty() {
                return out.len();
            }
            // Every socket was read until empty just now: sleep until one
            // signals, or until a blocked outbox is due.
            let retry = self
                .io
                .next_retry(std::time::Instant::now())
                .map(tokio::time::Instant::from_std);
            let signals = &self.signals;
            let woke = tokio::select! {
                r = readable(signals) => r,
                () = sleep_until(retry) => Ok(None),
            };
            match woke {
                // A monitor: connections came or went, read its events.
                Ok(Some(i)) if i >= Channel::ALL.len() => self.io.read_monitors(),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "waiting for the sockets failed");
                    return 0;
                }
            }
        }
    }

    /// Reads the sockets in channel order (under light load a message sent
    /// on one channel before another on the next is handed over first),
    /// each up to its share of `limit` messages and of `bytes`; what is left
    /// of both then goes to the sockets that filled their share, so that a
    /// flooded socket cannot starve the others, whether it floods them with
    /// many messages or with large ones.
    fn read_fairly(&mut self, out: &mut Vec<Inbound>, limit: usize, bytes: usize) {
        let share = (limit / Channel::ALL.len()).max(1);
        let byte_share = bytes / Channel::ALL.len();
        let mut taken = 0;
        let mut more = [false; 4];
        for channel in Channel::ALL {
            let room = share.min(limit.saturating_sub(out.len()));
            let mut read = 0;
            more[channel as usize] =
                room > 0 && self.io.read(channel, out, room, byte_share, &mut read);
            taken += read;
        }
        for channel in Channel::ALL {
            if out.len() >= limit || taken >= bytes {
                break;
            }
            if more[channel as usize] {
                self.io
                    .read(channel, out, limit - out.len(), bytes - taken, &mut taken);
            }
        }
    }

    /// Flushes what can be flushed quickly and closes the sockets.
    pub fn shutdown(self) {
        let Self { signals, io, .. } = self;
        drop(signals);
        io.finish();
    }
}

/// Waits until one of `signals` is readable; clears its readiness and
/// returns its index.
async fn readable(signals: &[AsyncFd<SocketSignal>]) -> std::io::Result<Option<usize>> {
    std::future::poll_fn(|cx| {
        for (i, signal) in signals.iter().enumerate() {
            if let std::task::Poll::Ready(ready) = signal.poll_read_ready(cx) {
                return std::task::Poll::Ready(ready.map(|mut guard| {
                    guard.clear_ready();
                    Some(i)
                }));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
