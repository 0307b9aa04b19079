//! Receiving: polling the sockets, answering pings, reassembling chunks,
//! acknowledging snapshot windows, and waiting for events.

use super::*;
use crate::protocol::codec::header_type;

impl Client {
    /// The next whole message, waiting at most `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Event>, ClientError> {
        self.next_event_until(Instant::now() + timeout)
    }

    /// Waits for an event matching `pred`, keeping the others queued.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Result<Event, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        let result = loop {
            match self.next_event_until(deadline)? {
                None => break Err(ClientError::Timeout(timeout)),
                Some(e) if pred(&e) => break Ok(e),
                Some(e) => skipped.push(e),
            }
        };
        for e in skipped.into_iter().rev() {
            self.events.push_front(e);
        }
        result
    }

    pub(super) fn next_event_until(
        &mut self,
        deadline: Instant,
    ) -> Result<Option<Event>, ClientError> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = i64::try_from((deadline - now).as_millis())
                .unwrap_or(i64::MAX)
                .max(1);
            self.poll_once(wait)?;
        }
    }

    /// The next message on the subscriber channel as raw frames, without
    /// decoding it; pings are still answered, command-channel messages
    /// still queued as events, and the server's RESUME answered on every
    /// channel (it is never returned). For tools that only count or sample
    /// traffic.
    pub fn next_subscriber_frames(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<Vec<zmq::Message>>, ClientError> {
        let found = Self::next_subscriber_frames_of(std::slice::from_mut(self), 0, timeout)?;
        Ok(found.map(|(_, frames)| frames))
    }

    /// Like [`Client::next_subscriber_frames`] for several clients watched
    /// from one thread: the next subscriber message of any of them, with
    /// the index of the client it came to. The clients are tried in turn
    /// from `first` (wrapping), so a caller that passes the index after the
    /// last one served reads them all fairly. No clients, no message: it
    /// returns `None` at once.
    ///
    /// It waits on the subscriber sockets alone: with libzmq every socket a
    /// wait includes costs a system call each time it wakes, which would
    /// add to the delay of every message. The heartbeat and command sockets
    /// are read at least every 100 ms instead, which answers pings well
    /// within any heartbeat timeout.
    pub fn next_subscriber_frames_of(
        clients: &mut [Client],
        first: usize,
        timeout: Duration,
    ) -> Result<Option<(usize, Vec<zmq::Message>)>, ClientError> {
        let deadline = Instant::now() + timeout;
        let count = clients.len();
        if count == 0 {
            return Ok(None);
        }
        let first = first % count;
        loop {
            let now = Instant::now();
            for client in clients.iter_mut() {
                if now.duration_since(client.serviced) >= SERVICE_EVERY {
                    client.service()?;
                    client.serviced = now;
                }
            }
            for k in 0..count {
                let i = (first + k) % count;
                if let Some(frames) = clients[i].try_subscriber_frames()? {
                    return Ok(Some((i, frames)));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = (deadline - now).min(SERVICE_EVERY);
            let wait = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX).max(1);
            let mut items: Vec<zmq::PollItem<'_>> = clients
                .iter()
                .map(|c| c.subscriber.as_poll_item(zmq::POLLIN))
                .collect();
            zmq::poll(&mut items, wait)?;
        }
    }

    /// Reads whatever waits on the heartbeat and command sockets, without
    /// blocking: answers pings, queues command-channel messages as events.
    fn service(&mut self) -> Result<(), ClientError> {
        while let Ok(frames) = self.heartbeat.recv_multipart(zmq::DONTWAIT) {
            self.on_heartbeat(&frames)?;
        }
        while let Some(frames) = recv_frames(&self.commands)? {
            self.on_message(Channel::Commands, frames)?;
        }
        Ok(())
    }

    /// One whole subscriber message if one is waiting, without blocking.
    ///
    /// The server's RESUME is answered here and not handed out: until the
    /// client answers it, the server holds everything that comes from and
    /// goes to this connection (a SNAPSHOT just sent, say), and a caller
    /// that reads raw frames has no way to answer it.
    fn try_subscriber_frames(&mut self) -> Result<Option<Vec<zmq::Message>>, ClientError> {
        while let Some(frames) = recv_frames(&self.subscriber)? {
            // RESUME has no data frame: messages that carry data (every
            // forwarded update) are passed on without a look at their header.
            if let [header] = &frames[..]
                && header_type(header) == Some(b"RESUME".as_slice())
            {
                self.resume(Channel::Subscriber)?;
                continue;
            }
            return Ok(Some(frames));
        }
        Ok(None)
    }

    /// Polls the sockets once and queues whatever arrived.
    pub fn poll_once(&mut self, timeout_ms: i64) -> Result<(), ClientError> {
        let mut items = [
            self.commands.as_poll_item(zmq::POLLIN),
            self.subscriber.as_poll_item(zmq::POLLIN),
            self.heartbeat.as_poll_item(zmq::POLLIN),
        ];
        zmq::poll(&mut items, timeout_ms)?;
        let ready = [
            items[0].is_readable(),
            items[1].is_readable(),
            items[2].is_readable(),
        ];
        if ready[0] || ready[2] {
            self.service()?;
        }
        if ready[1] {
            while let Some(frames) = recv_frames(&self.subscriber)? {
                self.on_message(Channel::Subscriber, frames)?;
            }
        }
        Ok(())
    }

    fn on_heartbeat(&mut self, frames: &[Vec<u8>]) -> Result<(), ClientError> {
        let Some(header) = frames.first() else {
            return Ok(());
        };
        match decode_header(header, MAX_HEADER)? {
            HeartbeatMessage::Ping { seq } => {
                let now = Instant::now();
                if let Some(last) = self.last_ping.replace(now) {
                    self.ping_gap = self.ping_gap.max(now.duration_since(last));
                }
                if self.answer_pings {
                    self.send(Channel::Heartbeat, &HeartbeatMessage::Pong { seq }, None)?;
                }
            }
            HeartbeatMessage::Resume { token: None } => self.resume(Channel::Heartbeat)?,
            _ => {}
        }
        Ok(())
    }

    /// The server saw a new connection of ours on `channel` (libzmq
    /// reconnected it): prove that it is ours with the session token, now
    /// or as soon as the token is known.
    pub(super) fn resume(&mut self, channel: Channel) -> Result<(), ClientError> {
        let Some(token) = &self.token else {
            if !self.resume_due.contains(&channel) {
                self.resume_due.push(channel);
            }
            return Ok(());
        };
        let token = String::from_utf8_lossy(token).into_owned();
        self.resumed += 1;
        match channel {
            Channel::Commands => self.send(channel, &CommandRequest::Resume { token }, None),
            Channel::Subscriber => self.send(channel, &SubscriberRequest::Resume { token }, None),
            _ => self.send(
                channel,
                &HeartbeatMessage::Resume { token: Some(token) },
                None,
            ),
        }
    }

    fn on_message(
        &mut self,
        channel: Channel,
        frames: Vec<zmq::Message>,
    ) -> Result<(), ClientError> {
        let mut frames = frames.into_iter();
        let header = frames.next().unwrap_or_else(zmq::Message::new);
        let payload = frames.next().map(into_bytes);
        self.received[channel as usize] +=
            (header.len() + payload.as_ref().map_or(0, Bytes::len)) as u64;
        let message = decode_server(&header, MAX_HEADER)?;
        if let ServerMessage::Resume {} = message {
            // Not part of any stream: the server sends it on a new
            // connection, beside everything else.
            return self.resume(channel);
        }
        if let ServerMessage::Updates { updates, lengths } = message {
            return self.on_batch(channel, Batch::Updates, updates, &lengths, payload);
        }
        if matches!(
            message,
            ServerMessage::ClientsState { .. } | ServerMessage::Presence { .. }
        ) {
            // Either way the caller sees the whole list after the change.
            presence::apply(&mut self.users, message);
            self.events.push_back(Event {
                channel,
                message: ServerMessage::ClientsState {
                    users: self.users.clone(),
                },
                payload: None,
            });
            return Ok(());
        }
        if channel == Channel::Subscriber {
            self.count_snapshot(
                &message,
                header.len() + payload.as_ref().map_or(0, Bytes::len),
            )?;
        }
        if let ServerMessage::Datablocks {
            datablocks,
            lengths,
        } = message
        {
            return self.on_batch(channel, Batch::Datablocks, datablocks, &lengths, payload);
        }
        if let ServerMessage::Chunk { transfer, index: _ } = message {
            let Some(partial) = self.partial.get_mut(&transfer) else {
                return Err(ProtocolError::Invalid(format!(
                    "chunk of unknown transfer {transfer}"
                ))
                .into());
            };
            partial
                .data
                .extend_from_slice(payload.as_deref().unwrap_or_default());
            let complete = match &partial.message {
                ServerMessage::Datablock { chunk, .. } | ServerMessage::Update { chunk, .. } => {
                    chunk.size.unwrap_or_default() <= partial.data.len() as u64
                }
                _ => true,
            };
            if complete && let Some(done) = self.partial.remove(&transfer) {
                self.events.push_back(Event {
                    channel,
                    message: done.message,
                    payload: Some(done.data.freeze()),
                });
            }
            return Ok(());
        }
        let chunked = match &message {
            ServerMessage::Datablock { chunk, .. } | ServerMessage::Update { chunk, .. } => {
                chunk.spec()?
            }
            _ => PayloadSpec::Inline,
        };
        match chunked {
            PayloadSpec::Chunked { transfer, size, .. } => {
                // The whole payload in one allocation, so that it is not
                // copied again as it grows (up to the largest frame the
                // client accepts: a server is not trusted with more).
                let size = usize::try_from(size).unwrap_or(0).min(MAX_RESERVE);
                self.partial.insert(
                    transfer,
                    Partial {
                        message,
                        data: BytesMut::with_capacity(size),
                    },
                );
            }
            PayloadSpec::Inline => self.events.push_back(Event {
                channel,
                message,
                payload,
            }),
        }
        Ok(())
    }

    /// Queues each item of an UPDATES or a DATABLOCKS as if it had come
    /// alone, after checking the batch the way the server checks those it
    /// receives.
    fn on_batch(
        &mut self,
        channel: Channel,
        kind: Batch,
        items: Vec<ServerMessage>,
        lengths: &[u64],
        payload: Option<Bytes>,
    ) -> Result<(), ClientError> {
        let name = kind.name();
        let bad = |why: String| Err(ProtocolError::Invalid(format!("{name}: {why}")).into());
        let data = payload.unwrap_or_default();
        if items.len() != lengths.len() || items.is_empty() {
            return bad(format!(
                "{} items but {} lengths",
                items.len(),
                lengths.len()
            ));
        }
        if lengths.iter().map(|&l| u128::from(l)).sum::<u128>() != data.len() as u128 {
            return bad(format!(
                "the lengths do not add up to the data frame's {} bytes",
                data.len()
            ));
        }
        if let Some(other) = items.iter().find(|item| !kind.holds(item)) {
            return bad(format!("holds a {other:?}, not an inline {}", kind.item()));
        }
        let mut offset = 0usize;
        for (message, &length) in items.into_iter().zip(lengths) {
            // The lengths add up to the data's size, so each fits.
            let end = offset + length as usize;
            self.events.push_back(Event {
                channel,
                message,
                payload: Some(data.slice(offset..end)),
            });
            offset = end;
        }
        Ok(())
    }

    /// Counts snapshot messages and acknowledges every half window.
    fn count_snapshot(&mut self, message: &ServerMessage, size: usize) -> Result<(), ClientError> {
        if let ServerMessage::Snapshot {
            step: SnapshotStep::Begin,
            window,
            window_bytes,
            ..
        } = message
        {
            self.snapshot = Some(SnapshotProgress {
                window: window.unwrap_or(1).max(1),
                window_bytes: window_bytes.unwrap_or(1).max(1),
                ..SnapshotProgress::default()
            });
        }
        let Some(progress) = self.snapshot.as_mut() else {
            return Ok(());
        };
        progress.received += 1;
        progress.bytes += size as u64;
        let end = matches!(
            message,
            ServerMessage::Snapshot {
                step: SnapshotStep::End,
                ..
            }
        );
        if end {
            self.snapshot = None;
            return Ok(());
        }
        if (progress.received - progress.acked) * 2 >= progress.window
            || (progress.bytes - progress.acked_bytes) * 2 >= progress.window_bytes
        {
            progress.acked = progress.received;
            progress.acked_bytes = progress.bytes;
            let received = progress.received;
            self.send(
                Channel::Subscriber,
                &SubscriberRequest::SnapshotAck { received },
                None,
            )?;
        }
        Ok(())
    }
}

/// One whole multipart message if one is waiting, without blocking.
fn recv_frames(socket: &zmq::Socket) -> Result<Option<Vec<zmq::Message>>, ClientError> {
    let first = match socket.recv_msg(zmq::DONTWAIT) {
        Ok(first) => first,
        Err(zmq::Error::EAGAIN) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut more = first.get_more();
    let mut frames = vec![first];
    while more {
        let part = socket.recv_msg(0)?;
        more = part.get_more();
        frames.push(part);
    }
    Ok(Some(frames))
}

/// From this size a data frame is kept in the buffer libzmq received it
/// into, rather than copied: a late joiner's DATABLOCKS (up to a megabyte
/// each) then cost no copy and no fresh pages. Smaller frames are copied, as
/// libzmq may have read them into a buffer it shares with the frames around
/// them, which a kept frame would hold in memory.
const KEEP_FRAME_MIN: usize = 64 * 1024;

/// A received frame's bytes.
fn into_bytes(frame: zmq::Message) -> Bytes {
    if frame.len() < KEEP_FRAME_MIN {
        return Bytes::copy_from_slice(&frame);
    }
    Bytes::from_owner(KeptFrame(frame))
}

/// A libzmq message that owns the bytes of a [`Bytes`].
struct KeptFrame(zmq::Message);

impl AsRef<[u8]> for KeptFrame {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The two kinds of batch a server sends.
#[derive(Debug, Clone, Copy)]
enum Batch {
    Updates,
    Datablocks,
}

impl Batch {
    fn name(self) -> &'static str {
        match self {
            Self::Updates => "UPDATES",
            Self::Datablocks => "DATABLOCKS",
        }
    }

    fn item(self) -> &'static str {
        match self {
            Self::Updates => "UPDATE",
            Self::Datablocks => "DATABLOCK",
        }
    }

    /// True for a message this kind of batch may carry: its own item, with
    /// the data inline (and, for a snapshot datablock, not a FETCH answer).
    fn holds(self, message: &ServerMessage) -> bool {
        let inline = |chunk: &ChunkFields| *chunk == ChunkFields::default();
        match (self, message) {
            (Self::Updates, ServerMessage::Update { chunk, .. }) => inline(chunk),
            (Self::Datablocks, ServerMessage::Datablock { chunk, id, .. }) => {
                inline(chunk) && id.is_none()
            }
            _ => false,
        }
    }
}
