//! The sockets' side of the transport: reading whole messages, sending
//! without blocking, and the per-client outboxes for connections that are
//! full.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use super::connections::{self, Connections, Verdict};
use super::outbox::Outbox;
use super::shared::{INLINE_MAX, SharedFrame};
use super::sockets::ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL;
use super::{ClientMessage, Command, Frame, Identity, Inbound, Sockets, TransportLimits};
use crate::metrics::Traffic;
use crate::protocol::{
    Channel, ProtocolError, Wire, decode_header, decode_publisher, old_multiuser,
};

/// Frames a client message may have after the identity or token frame.
const MAX_FRAMES: usize = 2;
/// Longest pause between retries to a blocked connection.
const MAX_BACKOFF: Duration = Duration::from_millis(64);
/// How long shutdown lets libzmq flush the last messages (DISCONNECT).
const SHUTDOWN_LINGER_MS: i32 = 250;

type Key = (Channel, Identity);

pub(super) struct Io {
    pub(super) sockets: Sockets,
    limits: TransportLimits,
    outboxes: HashMap<Key, Outbox>,
    /// Outboxes with queued messages.
    active: HashSet<Key>,
    /// When each blocked outbox is retried next, and the current backoff.
    retry: HashMap<Key, (Instant, Duration)>,
    /// Clients reported too slow; traffic to them is dropped until the core
    /// disconnects them.
    slow: HashSet<Identity>,
    /// Outboxes held until a new connection proves the session: queued,
    /// not sent.
    held: HashSet<Key>,
    /// Events for the core that come from the transport itself (a client
    /// reported too slow), handed over before the next messages read.
    pub(super) pending: VecDeque<Inbound>,
    /// Messages and bytes in and out, by channel, for the metrics.
    traffic: Traffic,
    /// The connections the listeners accepted, and their caps.
    connections: Connections,
    /// Handshakes that failed since they were last reported.
    handshakes: FailedHandshakes,
}

/// Failed handshakes on encrypted ports, reported at most every minute:
/// a refused client's libzmq retries by itself, on every channel.
#[derive(Default)]
struct FailedHandshakes {
    /// Plain clients (no CURVE) on an encrypted port.
    plain: usize,
    /// CURVE handshakes that did not decrypt: a wrong server key.
    wrong_key: usize,
    reported: Option<Instant>,
}

impl FailedHandshakes {
    fn report(&mut self) {
        if self.plain + self.wrong_key == 0
            || self
                .reported
                .is_some_and(|at| at.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        tracing::warn!(
            without_encryption = self.plain,
            wrong_server_key = self.wrong_key,
            "refused connections whose handshake failed: clients without encryption, or with another server's key (the fingerprint at start, or the console's key, tells the right one)"
        );
        *self = Self {
            reported: Some(Instant::now()),
            ..Self::default()
        };
    }
}

impl Io {
    pub(super) fn new(sockets: Sockets, limits: TransportLimits, traffic: Traffic) -> Self {
        let caps = limits.unauthenticated;
        Self {
            sockets,
            limits,
            outboxes: HashMap::new(),
            active: HashSet::new(),
            retry: HashMap::new(),
            slow: HashSet::new(),
            held: HashSet::new(),
            pending: VecDeque::new(),
            traffic,
            connections: Connections::new(caps),
            handshakes: FailedHandshakes::default(),
        }
    }

    /// The SERVER_KEY answer (protocol section 18).
    pub(super) fn server_key_answer(&self, id: Option<u64>) -> crate::protocol::HeartbeatMessage {
        crate::security::service::key_answer(id, self.sockets.public_key)
    }

    pub(super) fn command(&mut self, command: Command) {
        match command {
            Command::Deliver { channel, to, wire } => {
                // A message for several clients is handed to libzmq once;
                // each client's copy shares its buffers. So is a large data
                // frame for one client: sharing saves copying it.
                let mut shared = if to.len() > 1 {
                    SharedWire::new(&wire)
                } else {
                    SharedWire::large_payload(&wire)
                };
                for identity in to.iter() {
                    self.enqueue(channel, identity.clone(), wire.clone(), shared.as_mut());
                }
            }
            Command::Disconnect { identity, last } => {
                for channel in Channel::ALL {
                    let key = (channel, identity.clone());
                    self.outboxes.remove(&key);
                    self.active.remove(&key);
                    self.retry.remove(&key);
                    self.held.remove(&key);
                }
                self.slow.remove(&identity);
                if let Some(wire) = last {
                    let _ = self.send(Channel::Commands, &identity, &wire);
                }
            }
            Command::Frames { identity, frames } => {
                let socket = &self.sockets.sockets[Channel::Commands as usize];
                if let Err(e) = send_frames(socket, &identity, &frames) {
                    tracing::debug!(error = %e, "answer not sent; dropped");
                }
            }
            Command::Hold {
                channel,
                identity,
                prompt,
            } => {
                let _ = self.send(channel, &identity, &prompt);
                self.held.insert((channel, identity));
            }
            Command::Users { address, delta } => {
                self.connections
                    .users_changed(address.to_canonical(), delta);
            }
            Command::Release { channel, identity } => {
                let key = (channel, identity);
                if self.held.remove(&key) && self.outboxes.contains_key(&key) {
                    self.retry.remove(&key);
                    self.active.insert(key);
                }
            }
        }
    }

    fn enqueue(
        &mut self,
        channel: Channel,
        identity: Identity,
        wire: Wire,
        shared: Option<&mut SharedWire>,
    ) {
        let key = (channel, identity);
        let held = !self.held.is_empty() && self.held.contains(&key);
        if channel == Channel::Heartbeat {
            // Pings are periodic: one that cannot go now is simply skipped.
            if !held {
                let _ = self.send(channel, &key.1, &wire);
            }
            return;
        }
        if !self.slow.is_empty() && self.slow.contains(&key.1) {
            return;
        }
        if held {
            let outbox = self.outboxes.entry(key.clone()).or_default();
            let within = outbox.push(
                wire,
                self.limits.outbox_max_messages,
                self.limits.outbox_max_bytes,
            );
            if !within {
                self.report_slow(key.1, "outbox over its limit");
            }
            return;
        }
        // Fast path: nothing queued for this client, so the message may go
        // straight to libzmq; only a full connection needs an outbox.
        if self.outboxes.is_empty() || !self.outboxes.contains_key(&key) {
            let sent = match shared {
                Some(frames) => {
                    let socket = &mut self.sockets.sockets[channel as usize];
                    let sent = send_shared(socket, &key.1, &wire, frames);
                    if sent.is_ok() {
                        self.traffic.sent(channel, wire_bytes(&wire));
                    }
                    sent
                }
                None => self.send(channel, &key.1, &wire),
            };
            match sent {
                Ok(()) => return,
                Err(zmq::Error::EAGAIN) => {}
                Err(zmq::Error::EHOSTUNREACH) => {
                    tracing::debug!(
                        channel = channel.name(),
                        "peer not connected; message dropped"
                    );
                    return;
                }
                Err(e) => {
                    tracing::warn!(channel = channel.name(), error = %e, "send failed; message dropped");
                    return;
                }
            }
        }
        let outbox = self.outboxes.entry(key.clone()).or_default();
        let within = outbox.push(
            wire,
            self.limits.outbox_max_messages,
            self.limits.outbox_max_bytes,
        );
        self.active.insert(key.clone());
        if !within {
            self.report_slow(key.1, "outbox over its limit");
        }
    }

    fn report_slow(&mut self, identity: Identity, why: &str) {
        if self.slow.insert(identity.clone()) {
            tracing::warn!(reason = why, "client cannot keep up; disconnecting it");
            for channel in Channel::ALL {
                let key = (channel, identity.clone());
                self.outboxes.remove(&key);
                self.active.remove(&key);
                self.retry.remove(&key);
                self.held.remove(&key);
            }
            self.pending.push_back(Inbound::TooSlow { identity });
        }
    }

    /// Hands queued messages to libzmq until each connection is full.
    pub(super) fn flush(&mut self, now: Instant) {
        if self.active.is_empty() {
            return;
        }
        let keys: Vec<Key> = self.active.iter().cloned().collect();
        for key in keys {
            if self.retry.get(&key).is_some_and(|(at, _)| *at > now) {
                continue;
            }
            if self.held.contains(&key) {
                self.active.remove(&key);
                continue;
            }
            let Some(outbox) = self.outboxes.get_mut(&key) else {
                self.active.remove(&key);
                continue;
            };
            let socket = &self.sockets.sockets[key.0 as usize];
            let mut progressed = false;
            let mut blocked = false;
            while let Some(wire) = outbox.front() {
                match send_on(socket, &key.1, wire) {
                    Ok(()) => {
                        self.traffic.sent(key.0, wire_bytes(wire));
                        outbox.pop();
                        progressed = true;
                    }
                    Err(zmq::Error::EAGAIN) => {
                        blocked = true;
                        break;
                    }
                    Err(zmq::Error::EHOSTUNREACH) => {
                        // Not connected on this channel (yet, or any more):
                        // the heartbeat timeout decides the client's fate.
                        tracing::debug!(
                            channel = key.0.name(),
                            "peer not connected; dropping its queued messages"
                        );
                        outbox.clear();
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(channel = key.0.name(), error = %e, "send failed; message dropped");
                        outbox.pop();
                    }
                }
            }
            if progressed {
                outbox.blocked_since = None;
            }
            if outbox.is_empty() {
                // Dropped, not kept: answers to identities that never
                // authenticate must not leave anything behind.
                self.outboxes.remove(&key);
                self.active.remove(&key);
                self.retry.remove(&key);
                continue;
            }
            if blocked {
                let since = *outbox.blocked_since.get_or_insert(now);
                if now.duration_since(since) > self.limits.blocked_timeout {
                    self.report_slow(key.1.clone(), "connection blocked longer than the timeout");
                    continue;
                }
                let backoff = match self.retry.get(&key) {
                    Some((_, b)) if !progressed => (*b * 2).min(MAX_BACKOFF),
                    _ => Duration::from_millis(1),
                };
                self.retry.insert(key, (now + backoff, backoff));
            }
        }
    }

    /// When a queued outbox should be tried again, if any is queued.
    pub(super) fn next_retry(&self, now: Instant) -> Option<Instant> {
        let next = self.retry.values().map(|(at, _)| *at).min();
        match next {
            Some(at) => Some(at),
            // Queued, not yet tried: at the next turn.
            None if !self.active.is_empty() => Some(now + Duration::from_millis(1)),
            None => None,
        }
    }

    fn send(&self, channel: Channel, identity: &Identity, wire: &Wire) -> Result<(), zmq::Error> {
        send_on(&self.sockets.sockets[channel as usize], identity, wire)?;
        self.traffic.sent(channel, wire_bytes(wire));
        Ok(())
    }

    /// Reads the messages waiting on one socket into `out`, at most `limit`
    /// of them, stopping once their data frames reach `bytes` (adding
    /// their size to `read`). Returns true when the socket may hold more:
    /// the caller must then read again before waiting for the socket to
    /// signal.
    pub(super) fn read(
        &mut self,
        channel: Channel,
        out: &mut Vec<Inbound>,
        limit: usize,
        bytes: usize,
        read: &mut usize,
    ) -> bool {
        let socket = &self.sockets.sockets[channel as usize];
        let mut taken = 0;
        for _ in 0..limit {
            // At least one message, however large.
            if taken > 0 && taken >= bytes {
                return true;
            }
            match read_message(socket, channel, self.limits.max_header_bytes, &self.traffic) {
                Ok(Some(msg)) => {
                    let size = data_len(&msg);
                    taken += size;
                    *read += size;
                    out.push(msg);
                }
                // Nothing left. A read that finds nothing has libzmq take
                // in every command waiting for the socket first (pipes that
                // became readable included) and then look again, so the
                // socket is empty now and its descriptor will signal the
                // next message: asking ZMQ_EVENTS again would only repeat
                // that work (a system call each time).
                Ok(None) => return false,
                Err(e) => {
                    tracing::warn!(channel = channel.name(), error = %e, "receive failed");
                    return false;
                }
            }
        }
        true
    }

    /// Reads every monitor's events: connections accepted (refused when
    /// past a cap) and lost, listeners, and failures to accept.
    pub(super) fn read_monitors(&mut self) {
        let mut out_of_descriptors = false;
        for (monitor, &relayed) in self.sockets.monitors.iter().zip(&self.sockets.relayed) {
            while let Ok(frames) = monitor.recv_multipart(zmq::DONTWAIT) {
                let Some((event, value)) = frames.first().and_then(|f| monitor_event(f)) else {
                    continue;
                };
                let fd = i32::try_from(value).unwrap_or(-1);
                match event {
                    zmq_sys::ZMQ_EVENT_ACCEPTED if relayed => {}
                    e if e == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL as u32 => {
                        if value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH {
                            self.handshakes.plain += 1;
                        } else if value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC {
                            self.handshakes.wrong_key += 1;
                        }
                        self.handshakes.report();
                    }
                    zmq_sys::ZMQ_EVENT_ACCEPTED => {
                        let Some(address) = connections::peer(fd) else {
                            continue;
                        };
                        if self.connections.accepted(fd, address) == Verdict::Refuse {
                            connections::shut_down(fd, address);
                            if let Some(refused) =
                                self.connections.refusal_to_report(Instant::now())
                            {
                                tracing::warn!(
                                    peer = %address,
                                    refused,
                                    "refused connections beyond the caps on connections that have not logged in (limits.max_unauthenticated_per_address, limits.max_unauthenticated_total)"
                                );
                            }
                        }
                    }
                    zmq_sys::ZMQ_EVENT_DISCONNECTED => self.connections.closed(fd),
                    zmq_sys::ZMQ_EVENT_LISTENING => self.connections.listening(fd),
                    zmq_sys::ZMQ_EVENT_ACCEPT_FAILED => {
                        out_of_descriptors |=
                            value == libc::EMFILE as u32 || value == libc::ENFILE as u32;
                    }
                    _ => {}
                }
            }
        }
        if out_of_descriptors {
            let refused = self.connections.out_of_descriptors();
            if let Some(reported) = self.connections.refusal_to_report(Instant::now()) {
                tracing::warn!(
                    refused,
                    reported,
                    "out of open files: closed the connections waiting to be accepted; raise the open-file limit or lower the limits"
                );
            }
        }
    }

    pub(super) fn finish(mut self) {
        self.flush(Instant::now());
        for socket in &self.sockets.sockets {
            let _ = socket.set_linger(SHUTDOWN_LINGER_MS);
        }
        drop(self.sockets);
    }
}

/// libzmq's protocol errors (zmq.h) for a plain client on a CURVE port, and
/// for a CURVE handshake that does not decrypt.
const ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: u32 = 0x1100_0002;
const ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: u32 = 0x1100_0001;

/// A monitor event's first frame: the event (16 bits) and its value (32
/// bits), in the machine's byte order.
fn monitor_event(frame: &[u8]) -> Option<(u32, u32)> {
    let event = u16::from_ne_bytes(frame.get(0..2)?.try_into().ok()?);
    let value = u32::from_ne_bytes(frame.get(2..6)?.try_into().ok()?);
    Some((u32::from(event), value))
}

fn send_on(socket: &zmq::Socket, identity: &Identity, wire: &Wire) -> Result<(), zmq::Error> {
    // The first frame decides: once it is accepted libzmq takes the whole
    // multipart message atomically.
    socket.send(&identity[..], zmq::SNDMORE | zmq::DONTWAIT)?;
    match &wire.payload {
        Some(payload) => {
            socket.send(&wire.header[..], zmq::SNDMORE | zmq::DONTWAIT)?;
            socket.send(&payload[..], zmq::DONTWAIT)
        }
        None => socket.send(&wire.header[..], zmq::DONTWAIT),
    }
}

/// Sends `frames` after the identity, as one message that libzmq takes
/// whole or not at all.
fn send_frames(
    socket: &zmq::Socket,
    identity: &Identity,
    frames: &[Bytes],
) -> Result<(), zmq::Error> {
    socket.send(&identity[..], zmq::SNDMORE | zmq::DONTWAIT)?;
    let last = frames.len().saturating_sub(1);
    for (index, frame) in frames.iter().enumerate() {
        let more = if index < last { zmq::SNDMORE } else { 0 };
        socket.send(&frame[..], more | zmq::DONTWAIT)?;
    }
    Ok(())
}

/// From this size a data frame for a single recipient is shared with
/// libzmq rather than copied: below it, copying costs less than the
/// message's bookkeeping.
const SHARE_ALONE_MIN: usize = 16 * 1024;

/// A delivery's frames, handed to libzmq once for all its recipients. A
/// frame small enough to live inside libzmq's message is copied instead.
struct SharedWire {
    header: Option<SharedFrame>,
    payload: Option<SharedFrame>,
}

impl SharedWire {
    /// None when nothing is worth sharing (or libzmq is out of memory, and
    /// the frames are copied as usual).
    fn new(wire: &Wire) -> Option<Self> {
        let share = |bytes: &Bytes| {
            (bytes.len() > INLINE_MAX)
                .then(|| SharedFrame::new(bytes.clone()).ok())
                .flatten()
        };
        let header = share(&wire.header);
        let payload = wire.payload.as_ref().and_then(share);
        (header.is_some() || payload.is_some()).then_some(Self { header, payload })
    }

    /// Only the data frame, when it is at least [`SHARE_ALONE_MIN`] bytes
    /// (a snapshot's DATABLOCKS, a CHUNK, a large update).
    fn large_payload(wire: &Wire) -> Option<Self> {
        let payload = wire.payload.as_ref()?;
        if payload.len() < SHARE_ALONE_MIN {
            return None;
        }
        let payload = SharedFrame::new(payload.clone()).ok()?;
        Some(Self {
            header: None,
            payload: Some(payload),
        })
    }
}

/// Like [`send_on`], from shared frames.
fn send_shared(
    socket: &mut zmq::Socket,
    identity: &Identity,
    wire: &Wire,
    frames: &mut SharedWire,
) -> Result<(), zmq::Error> {
    socket.send(&identity[..], zmq::SNDMORE | zmq::DONTWAIT)?;
    let more = if wire.payload.is_some() {
        zmq::SNDMORE
    } else {
        0
    };
    match &mut frames.header {
        Some(frame) => frame.send(socket, more | zmq::DONTWAIT)?,
        None => socket.send(&wire.header[..], more | zmq::DONTWAIT)?,
    }
    match (&wire.payload, &mut frames.payload) {
        (None, _) => Ok(()),
        (Some(_), Some(frame)) => frame.send(socket, zmq::DONTWAIT),
        (Some(payload), None) => socket.send(&payload[..], zmq::DONTWAIT),
    }
}

/// Reads one whole multipart message, or None when nothing is waiting.
fn read_message(
    socket: &zmq::Socket,
    channel: Channel,
    max_header: usize,
    traffic: &Traffic,
) -> Result<Option<Inbound>, zmq::Error> {
    let first = match socket.recv_msg(zmq::DONTWAIT) {
        Ok(m) => m,
        Err(zmq::Error::EAGAIN) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut more = first.get_more();
    // The header and data frames, and how many more came.
    let (mut header, mut data, mut extra) = (None::<zmq::Message>, None, 0usize);
    let mut bytes = 0;
    while more {
        let part = socket.recv_msg(0)?;
        more = part.get_more();
        bytes += part.len();
        if header.is_none() {
            header = Some(part);
        } else if data.is_none() {
            data = Some(part);
        } else {
            extra += 1;
        }
    }
    traffic.received(channel, bytes);
    // Connection metadata rides on the frames the peer sent, not on the
    // identity frame the ROUTER prepends.
    let peer_address = match (channel, header.as_mut()) {
        (Channel::Commands, Some(header)) => header.gets("Peer-Address").map(str::to_owned),
        _ => None,
    };
    // A ROUTER's notice of a new connection: the identity and one empty
    // frame. A client sending an empty message itself only makes its own
    // connection unconfirmed.
    if channel != Channel::Publisher
        && extra == 0
        && data.is_none()
        && header.as_ref().is_some_and(|h| h.is_empty())
    {
        return Ok(Some(Inbound::Connected {
            channel,
            identity: Bytes::copy_from_slice(&first),
        }));
    }
    let (identity, token) = match channel {
        Channel::Publisher => (None, Some(Frame(first))),
        _ => (Some(Bytes::copy_from_slice(&first)), None),
    };
    // An old Multi-User client's message is known by its first frame
    // alone (it has three); the publisher channel's first frame is a token.
    let old = match (channel, header.as_deref()) {
        (Channel::Publisher, _) | (_, None) => None,
        (_, Some(first)) => old_multiuser::recognise(first),
    };
    if let Some(request) = old {
        return Ok(Some(Inbound::Message {
            channel,
            identity,
            token,
            peer_address,
            message: Ok(ClientMessage::OldMultiUser(request)),
            payload: None,
        }));
    }
    let payload = data.map(Frame);
    let message = match header {
        _ if extra > 0 => Err(ProtocolError::Frames(
            MAX_FRAMES + extra,
            "a header frame and at most one data frame",
        )),
        None => Err(ProtocolError::Frames(
            0,
            "a header frame and at most one data frame",
        )),
        Some(h) => decode(channel, &h, max_header),
    };
    Ok(Some(Inbound::Message {
        channel,
        identity,
        token,
        peer_address,
        message,
        payload,
    }))
}

/// A message's size on the wire, without its routing frame.
/// Bytes of a message's data frame.
fn data_len(event: &Inbound) -> usize {
    match event {
        Inbound::Message {
            payload: Some(frame),
            ..
        } => frame.len(),
        _ => 0,
    }
}

fn wire_bytes(wire: &Wire) -> usize {
    wire.header.len() + wire.payload.as_ref().map_or(0, |p| p.len())
}

fn decode(channel: Channel, header: &[u8], limit: usize) -> Result<ClientMessage, ProtocolError> {
    Ok(match channel {
        Channel::Commands => ClientMessage::Command(decode_header(header, limit)?),
        Channel::Subscriber => ClientMessage::Subscriber(decode_header(header, limit)?),
        Channel::Publisher => ClientMessage::Publisher(decode_publisher(header, limit)?),
        Channel::Heartbeat => ClientMessage::Heartbeat(decode_header(header, limit)?),
    })
}
