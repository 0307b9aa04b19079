//! The actor that owns all session state. It runs as one task; the transport
//! thread and the console send it events over bounded channels, and nothing
//! else touches the state, so it needs no locks.

mod auth;
pub mod backups;
mod console_requests;
mod dispatch;
mod gate;
mod links;
mod old_clients;
mod payloads;
mod reset;
mod room_password;
pub mod rooms;
pub(crate) mod transfers;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use foldhash::{HashMap, HashMapExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::batch::{BatchLimits, Batcher, SERVER_BATCH_DATA, updates_message};
use crate::protocol::old_multiuser::OldAnswers;
use crate::protocol::{
    Channel, ErrorCode, HeartbeatMessage, RefersTo, RoomInfo, ServerMessage, SessionState,
    UserState, Wire, encode,
};
use crate::room::{ClientId, Effects, RoomError, TOO_SLOW};
use crate::store::Change;
use crate::store::db::StoreError;
use crate::store::file::FileSummary;
use crate::transport::{Command, Identity, Recipients, Transport};

use auth::{LoginThrottle, Secret};
pub use console_requests::{Lock, Report, ResetDone};
use gate::{Await, Gate};
use links::Links;
use old_clients::NotedClients;
use reset::PendingReset;
use rooms::Rooms;
use transfers::Transfers;

/// Delay that gathers presence changes into one PRESENCE broadcast.
const PRESENCE_DELAY: Duration = Duration::from_millis(30);
/// Most messages the core reads in one turn of its loop.
const TURN_MESSAGES: usize = 256;
/// Most bytes of data frames the core reads in one turn (a larger frame
/// comes alone): each byte is copied once into a reassembled payload or a
/// datablock, so this bounds a turn's work at about a millisecond whatever
/// the size of the messages, and the other clients' messages wait that
/// long at most (docs/architecture.md, "Big payloads").
const TURN_BYTES: usize = 4 << 20;
/// A turn that read at least this many messages, but not as many as it
/// could take, means they come faster than the core handles them one by
/// one, and that it has caught up with them...
const GATHER_AFTER: usize = 16;
/// ...so it pauses this long after sending the turn's messages, for the
/// next turn to gather more: larger batches, and fewer messages, each of
/// which costs libzmq, the kernel and every reader a fixed amount of work.
/// Under light load turns hold a message or two and never pause; a full
/// turn means more is waiting already, and does not pause either.
const GATHER_PAUSE: Duration = Duration::from_micros(100);
/// Longest the core goes without handing its thread back to the runtime.
/// tokio only learns that a timer is due while the thread waits for
/// events; under a flood the sockets are never empty, the loop never
/// waits, and without this no PING would go out until the flood ended.
const YIELD_EVERY: Duration = Duration::from_millis(1);
/// An unfinished chunked transfer that receives nothing for this long is
/// dropped: long enough for a 1 MiB chunk over a very slow link.
const TRANSFER_IDLE: Duration = Duration::from_secs(120);

/// Requests from the admin console, answered through a oneshot. `room`
/// names a room; `None` means the default room, or for `users`, every room.
#[derive(Debug)]
pub enum ConsoleRequest {
    Users {
        room: Option<String>,
        reply: oneshot::Sender<Result<Vec<(String, UserState)>, String>>,
    },
    Kick {
        user: String,
        room: Option<String>,
        reason: Option<String>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// One report per room (only the named one, if any).
    Status {
        room: Option<String>,
        reply: oneshot::Sender<Result<Vec<StatusReport>, String>>,
    },
    Rooms(oneshot::Sender<Vec<RoomInfo>>),
    /// Disconnects a room's users with a reason and removes the room.
    Close {
        room: String,
        reason: Option<String>,
        reply: oneshot::Sender<Result<usize, String>>,
    },
    /// Save a room (the default one when `None`) to a file (`None`: a new
    /// file in the backup directory). Answered once the file is written.
    Save {
        path: Option<PathBuf>,
        room: Option<String>,
        reply: oneshot::Sender<Result<SavedFile, String>>,
    },
    /// The datablocks users hold: in one room and/or of one user. `first`
    /// alone names a room if there is one of that name, else a user.
    Locks {
        first: Option<String>,
        user: Option<String>,
        reply: oneshot::Sender<Result<Vec<Lock>, String>>,
    },
    /// Saves a room's scene to a backup, disconnects its users and starts
    /// it empty (the default room when `None`). Answered once done.
    Reset {
        room: Option<String>,
        reply: oneshot::Sender<Result<ResetDone, String>>,
    },
    /// Everything `status`, `users`, `rooms` and `locks` show, at once (for
    /// the metrics and the JSON status); the list of locks only when
    /// `locks` is set.
    Report {
        locks: bool,
        reply: oneshot::Sender<Report>,
    },
}

/// A session file written by `save` or autosave.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedFile {
    pub path: PathBuf,
    pub summary: FileSummary,
}

/// What `status` shows for one room.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusReport {
    pub room: String,
    pub state: SessionState,
    pub datablocks: usize,
    pub bytes: usize,
    pub users: usize,
    pub keep_open: bool,
    pub uptime: Duration,
}

/// One authenticated connection.
#[derive(Debug)]
struct Session {
    identity: Identity,
    token: Bytes,
    user: String,
    /// When the client last sent anything, on any channel.
    last_seen: Instant,
    /// The last ping sent and when, to measure the round trip.
    ping: Option<(u64, Instant)>,
    transfers: Transfers,
    span: tracing::Span,
    /// The room the client is in; `None` after LEAVE_ROOM.
    room: Option<Arc<str>>,
    /// Authenticated with the admin password: an admin in every room.
    admin: bool,
    /// The peer's address (or identity), which login throttling counts by.
    place: String,
    /// The client reads UPDATES: forwarded updates that are ready together
    /// reach it in one message.
    batches: bool,
    /// Which of its connections have proven the session.
    links: Links,
    /// The peer's address, when libzmq knows it: each user brings four
    /// connections more under the transport's caps on that address.
    peer: Option<std::net::IpAddr>,
    /// The token before the last room switch, which still proves the
    /// session in RESUME.
    previous_token: Option<Bytes>,
}

/// The core's state.
pub struct Core {
    config: Config,
    rooms: Rooms,
    sessions: HashMap<ClientId, Session>,
    by_identity: HashMap<Identity, ClientId>,
    by_token: HashMap<Bytes, ClientId>,
    /// The last list of several clients delivered to, and their sessions'
    /// identities: every update of a busy room goes to the same clients,
    /// and sharing the list saves looking up and copying each identity per
    /// update. Forgotten whenever a session ends (client ids are never
    /// reused, so a new session cannot be on an old list).
    audience: Option<(Vec<ClientId>, Recipients)>,
    next_client: u64,
    next_ping: u64,
    /// Wrong guesses at each password, per address.
    logins: LoginThrottle,
    /// The frames that answer old Multi-User clients, built once.
    old_answers: OldAnswers,
    /// Old Multi-User clients already written to the log.
    noted_old_clients: NotedClients,
    /// The admin password and the server's, kept as digests.
    admin_secret: Secret,
    server_secret: Option<Secret>,
    transport: Transport,
    started: Instant,
    /// When the next presence broadcast is due, if one is.
    presence_due: Option<Instant>,
    /// Changes were recorded and are not committed yet.
    recording_open: bool,
    /// Some room's record is being written in the background: what its
    /// members are sent waits in `gate` until it is committed.
    committing: bool,
    /// Commands waiting for a background commit, or behind one.
    gate: Gate,
    /// A client entered or left a room in this turn: the rooms of the
    /// turn's recipients may have changed since their commands were made.
    moved: bool,
    /// Transport commands of this turn of the loop, sent at its end: after
    /// the commit of the changes recorded before them (nothing is forwarded
    /// before it is recorded), and with forwarded updates ready together
    /// gathered into UPDATES for clients that read batches.
    deferred: Vec<Command>,
    /// What `flush` hands the transport, and the run of updates it is
    /// gathering: kept between turns, with their capacity.
    outgoing: Vec<Command>,
    run: Batcher,
    /// Set while an autosave is being written, so they never overlap.
    autosaving: Arc<AtomicBool>,
    /// Recording failed: the server stops rather than forward what it could
    /// not record.
    failure: Option<StoreError>,
    /// Counters for the metrics.
    metrics: Arc<Metrics>,
    /// A reset waiting for its backup to be written.
    reset: Option<PendingReset>,
}

impl Core {
    /// A core serving `rooms` (each recorded in its store, when it has one).
    pub fn new(
        config: Config,
        transport: Transport,
        mut rooms: Rooms,
        metrics: Arc<Metrics>,
    ) -> Self {
        for (_, entry) in rooms.iter_mut() {
            entry.room.set_recording(entry.store.is_some());
        }
        let old_answers = OldAnswers::new(config.server_password.is_some());
        let limits = BatchLimits {
            max_data: config.limits.chunk_bytes.min(SERVER_BATCH_DATA),
            max_header: config.limits.max_header_bytes,
        };
        Self {
            admin_secret: Secret::new(&config.admin_password),
            server_secret: config.server_password.as_deref().map(Secret::new),
            rooms,
            config,
            sessions: HashMap::new(),
            by_identity: HashMap::new(),
            by_token: HashMap::new(),
            audience: None,
            next_client: 1,
            next_ping: 1,
            logins: LoginThrottle::default(),
            old_answers,
            noted_old_clients: NotedClients::new(),
            transport,
            started: Instant::now(),
            presence_due: None,
            recording_open: false,
            committing: false,
            gate: Gate::default(),
            moved: false,
            deferred: Vec::new(),
            outgoing: Vec::new(),
            run: Batcher::new(limits),
            autosaving: Arc::new(AtomicBool::new(false)),
            failure: None,
            metrics,
            reset: None,
        }
    }

    /// Runs until `shutdown` is cancelled, then tells every client and closes
    /// the transport. Fails when the session could not be recorded.
    pub async fn run(
        mut self,
        mut console: mpsc::Receiver<ConsoleRequest>,
        shutdown: CancellationToken,
    ) -> Result<(), StoreError> {
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval());
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let autosave_every = self.config.autosave;
        let mut autosave = tokio::time::interval_at(
            Instant::now() + autosave_every.0.max(Duration::from_millis(1)),
            autosave_every.0.max(Duration::from_millis(1)),
        );
        autosave.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(TURN_MESSAGES);
        let recorded = self.rooms.wake().clone();
        let mut yielded = std::time::Instant::now();
        loop {
            // A late joiner's stream goes out a slice per turn, so that the
            // first slices travel while the next are built, and whatever
            // else arrives is not kept waiting behind a whole snapshot.
            let downloading = self.downloads_ready();
            if downloading {
                self.continue_downloads().await;
            }
            self.flush().await;
            if self.failure.is_some() {
                break;
            }
            let downloading = downloading && self.downloads_ready();
            let presence_due = self.presence_due;
            // Timers and the console come before the sockets: they are
            // rarely ready and cheap, and under a flood of messages (an
            // upload of a large scene) the sockets are always ready, so in
            // the other order no heartbeat would go out until it ended.
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = heartbeat.tick() => self.heartbeat().await,
                // A background commit finished: the next flush sends what
                // waited for it.
                () = recorded.notified() => {}
                () = sleep_until(presence_due), if presence_due.is_some() => {
                    self.presence_due = None;
                    self.broadcast_presence().await;
                }
                _ = autosave.tick(), if !autosave_every.is_off() => self.autosave(),
                saved = reset::backup_written(&mut self.reset), if self.reset.is_some() => {
                    self.finish_reset(saved).await;
                }
                Some(request) = console.recv() => self.console(request).await,
                n = self.transport.recv_many(&mut batch, TURN_MESSAGES, TURN_BYTES) => {
                    if n == 0 {
                        tracing::error!("transport stopped unexpectedly");
                        break;
                    }
                    for event in batch.drain(..) {
                        self.inbound(event).await;
                    }
                    if (GATHER_AFTER..TURN_MESSAGES).contains(&n) {
                        self.flush().await;
                        // The core's own thread pauses, on purpose: a tokio
                        // timer would wait a whole millisecond.
                        std::thread::sleep(GATHER_PAUSE);
                    }
                    if yielded.elapsed() >= YIELD_EVERY {
                        tokio::task::yield_now().await;
                        yielded = std::time::Instant::now();
                    }
                }
                // Nothing else is ready: the next turn sends the next slice.
                () = std::future::ready(()), if downloading => {}
            }
        }
        self.flush().await;
        // What waits for a background commit goes before the goodbyes.
        for (_, entry) in self.rooms.iter_mut() {
            if let Some(store) = &entry.store {
                store.wait();
            }
        }
        self.flush().await;
        let reason = match &self.failure {
            Some(_) => "server storage failed; the session was stopped at its last recorded change",
            None => "server shutting down",
        };
        let ids: Vec<ClientId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.disconnect(id, reason).await;
        }
        self.flush().await;
        tracing::info!("server stopped");
        self.transport.shutdown();
        // Closing the stores flushes and checkpoints what was recorded.
        for (_, entry) in self.rooms.iter_mut() {
            drop(entry.store.take());
        }
        match self.failure.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// True when some room has a download that may send more now.
    fn downloads_ready(&mut self) -> bool {
        self.rooms
            .iter_mut()
            .any(|(_, entry)| entry.room.downloads_ready())
    }

    /// Releases the next slice of every download that may send more
    /// (`room::download::PUMP_BYTES`).
    async fn continue_downloads(&mut self) {
        let ready: Vec<Arc<str>> = self
            .rooms
            .iter_mut()
            .filter(|(_, entry)| entry.room.downloads_ready())
            .map(|(name, _)| name.clone())
            .collect();
        for name in ready {
            let Some(entry) = self.rooms.get_mut(&name) else {
                continue;
            };
            let effects = entry.room.continue_downloads();
            self.apply(&name, effects).await;
        }
    }

    /// Commits what was recorded (or hands it to the room's recorder), then
    /// sends what does not wait for a commit still under way.
    async fn flush(&mut self) {
        if self.recording_open || self.committing {
            self.commit();
        }
        if self.failure.is_some() {
            // Never forward what could not be recorded.
            self.deferred.clear();
            return;
        }
        // The turn's buffers are taken out and put back, not reallocated.
        let mut commands = std::mem::take(&mut self.deferred);
        if self.committing || !self.gate.is_empty() {
            commands = self.through_gate(commands);
        }
        self.moved = false;
        let mut out = std::mem::take(&mut self.outgoing);
        let limits = self.run.limits();
        let mut run = std::mem::replace(&mut self.run, Batcher::new(limits));
        self.gather_batches(&mut commands, &mut run, &mut out);
        for command in out.drain(..) {
            self.transport.send(command);
        }
        (self.deferred, self.outgoing, self.run) = (commands, out, run);
    }

    /// Hands every room's changes of this turn to its recorder, and notes
    /// whether some room's record is still being written.
    fn commit(&mut self) {
        let mut failed = None;
        let mut committing = false;
        for (_, entry) in self.rooms.iter_mut() {
            let Some(store) = &mut entry.store else {
                continue;
            };
            if let Err(e) = store.commit() {
                failed.get_or_insert(e);
            }
            if let Some(e) = store.take_failure() {
                failed.get_or_insert(e);
            }
            for took in store.take_timings() {
                self.metrics.committed(took);
            }
            committing |= store.busy();
        }
        self.recording_open = false;
        self.committing = committing;
        if let Some(e) = failed {
            self.fail(e);
        }
    }

    /// Of the turn's commands, those that wait for no background commit
    /// and for no earlier command to the same client; the gate keeps the
    /// others, and lets out those whose commit has finished.
    fn through_gate(&mut self, commands: Vec<Command>) -> Vec<Command> {
        let mut ready = Vec::with_capacity(commands.len());
        let rooms = &self.rooms;
        self.gate.release(
            |room, batch| {
                rooms
                    .get(room)
                    .and_then(|e| e.store.as_ref())
                    .is_none_or(|s| s.committed() >= batch)
            },
            &mut ready,
        );
        // A busy room's updates share one list of recipients: their rooms
        // are looked up once.
        let mut last: Option<(Arc<[Identity]>, Vec<Await>)> = None;
        for command in commands {
            let after = match (&command, &last) {
                (
                    Command::Deliver {
                        channel,
                        to: Recipients::Many(to),
                        ..
                    },
                    Some((seen, after)),
                ) if *channel != Channel::Heartbeat && Arc::ptr_eq(to, seen) => after.clone(),
                _ => {
                    let after = self.awaits(&command);
                    if let Command::Deliver {
                        channel,
                        to: Recipients::Many(to),
                        ..
                    } = &command
                        && *channel != Channel::Heartbeat
                    {
                        last = Some((to.clone(), after.clone()));
                    }
                    after
                }
            };
            self.gate.admit(command, after, &mut ready);
        }
        ready
    }

    /// The background commits a command may report: those of its
    /// recipients' rooms. When a client changed rooms in this turn, the
    /// rooms its commands were made in are not known any more, so they
    /// wait for every room's. PINGs report nothing, and neither do the
    /// commands that do not carry a message of a room.
    fn awaits(&self, command: &Command) -> Vec<Await> {
        let to = match command {
            Command::Deliver {
                channel: Channel::Heartbeat,
                ..
            }
            | Command::Disconnect { .. }
            | Command::Frames { .. }
            | Command::Hold { .. }
            | Command::Release { .. }
            | Command::Users { .. } => return Vec::new(),
            Command::Deliver { to, .. } => to,
        };
        let busy = |name: &Arc<str>| {
            self.rooms
                .get(name)
                .and_then(|e| e.store.as_ref())
                .filter(|s| s.busy())
                .map(|s| (name.clone(), s.submitted()))
        };
        if self.moved {
            return self.rooms.names().iter().filter_map(busy).collect();
        }
        let mut after: Vec<Await> = Vec::new();
        for identity in to.iter() {
            let room = self
                .by_identity
                .get(identity)
                .and_then(|id| self.sessions.get(id))
                .and_then(|s| s.room.as_ref());
            if let Some(wait) = room.and_then(busy)
                && !after.iter().any(|(r, _)| *r == wait.0)
            {
                after.push(wait);
            }
        }
        after
    }

    /// Turns each run of forwarded updates that go to the same clients, one
    /// after the other on the subscriber channel, into UPDATES for the
    /// clients that read batches (and the single UPDATEs for the others).
    /// Commands on other channels may pass a run: there is no order between
    /// channels. Anything else on the subscriber channel, and every
    /// disconnection, ends the run first.
    /// Empties `commands` into `out` (which is empty), through `run`.
    fn gather_batches(
        &self,
        commands: &mut Vec<Command>,
        run: &mut Batcher,
        out: &mut Vec<Command>,
    ) {
        // Most turns hold at most one update: nothing to gather, and no need
        // to look at the sessions.
        let updates = commands
            .iter()
            .filter(|c| matches!(c, Command::Deliver { wire, .. } if wire.batchable))
            .take(2)
            .count();
        if updates < 2 || !self.sessions.values().any(|s| s.batches) {
            std::mem::swap(commands, out);
            return;
        }
        let mut run_to = Recipients::default();
        for command in commands.drain(..) {
            match command {
                Command::Deliver {
                    channel: Channel::Subscriber,
                    to,
                    wire,
                } if wire.batchable => {
                    if !run.is_empty() && (run_to != to || !run.fits(&wire)) {
                        self.end_run(run, &run_to, out);
                    }
                    run_to = to;
                    run.push(wire);
                }
                Command::Deliver { channel, .. } if channel != Channel::Subscriber => {
                    out.push(command);
                }
                Command::Frames { .. } => out.push(command),
                other => {
                    self.end_run(run, &run_to, out);
                    out.push(other);
                }
            }
        }
        self.end_run(run, &run_to, out);
    }

    fn end_run(&self, run: &mut Batcher, to: &Recipients, out: &mut Vec<Command>) {
        let count = run.items().len();
        if count == 0 {
            return;
        }
        let reads_batches = |identity: &Identity| {
            self.by_identity
                .get(identity)
                .and_then(|id| self.sessions.get(id))
                .is_some_and(|s| s.batches)
        };
        let (batched, single) = if count == 1 {
            (Recipients::default(), to.clone())
        } else if to.iter().all(reads_batches) {
            (to.clone(), Recipients::default())
        } else {
            let (batched, single): (Vec<Identity>, Vec<Identity>) =
                to.iter().cloned().partition(reads_batches);
            (batched.into(), single.into())
        };
        if !batched.is_empty() {
            out.push(Command::Deliver {
                channel: Channel::Subscriber,
                to: batched,
                wire: updates_message(run.items()),
            });
        }
        for wire in run.drain() {
            if !single.is_empty() {
                out.push(Command::Deliver {
                    channel: Channel::Subscriber,
                    to: single.clone(),
                    wire,
                });
            }
        }
    }

    fn fail(&mut self, error: StoreError) {
        if self.failure.is_none() {
            tracing::error!("{error}; stopping the server");
            self.failure = Some(error);
        }
    }

    /// Queues a transport command, sent at the end of this turn of the loop
    /// (after the commit of what it depends on).
    async fn send(&mut self, command: Command) {
        if self.failure.is_some() {
            // Only goodbyes go out now: nothing else was recorded.
            if matches!(command, Command::Disconnect { .. }) {
                self.transport.send(command);
            }
            return;
        }
        self.deferred.push(command);
    }

    /// Records a room's accepted changes (before anything about them is
    /// sent).
    fn record(&mut self, room: &str, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let Some(entry) = self.rooms.get_mut(room) else {
            return;
        };
        entry.changed_since_autosave = true;
        if let Some(store) = &mut entry.store {
            self.recording_open = true;
            store.record(changes);
        }
    }

    /// Pings everyone, measures latency, drops the silent.
    async fn heartbeat(&mut self) {
        let now = Instant::now();
        let timeout = self.config.timeout();
        let silent: Vec<ClientId> = self
            .sessions
            .iter()
            .filter(|(_, s)| now.duration_since(s.last_seen) > timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in silent {
            self.metrics.heartbeat_timeouts.inc();
            self.disconnect(id, "timed out").await;
        }
        // A connection that took over a client's identity and never proved
        // the session: the client cannot be reached through it.
        let unproven: Vec<ClientId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.links
                    .unconfirmed_since()
                    .is_some_and(|t| now.into_std().duration_since(t) > timeout)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in unproven {
            self.disconnect(id, "connection not confirmed").await;
        }
        self.expire_transfers(now.into_std()).await;
        self.logins.forget(now.into_std());
        if self.sessions.is_empty() {
            return;
        }
        let seq = self.next_ping;
        self.next_ping += 1;
        let wire = Wire {
            header: encode(&HeartbeatMessage::Ping { seq }),
            payload: None,
            batchable: false,
        };
        let mut to = Vec::with_capacity(self.sessions.len());
        for session in self.sessions.values_mut() {
            session.ping = Some((seq, now));
            to.push(session.identity.clone());
        }
        self.send(Command::Deliver {
            channel: Channel::Heartbeat,
            to: to.into(),
            wire,
        })
        .await;
        // Latencies were measured: they go out with the next changes.
        for room in self.rooms.names() {
            if let Some(entry) = self.rooms.get_mut(&room) {
                entry.room.latencies_measured();
            }
            self.presence_changed(&room);
        }
    }

    /// Drops abandoned chunked transfers and tells their senders.
    async fn expire_transfers(&mut self, now: std::time::Instant) {
        let mut expired = Vec::new();
        for (id, session) in &mut self.sessions {
            for (pending, transfer) in session.transfers.expire(now, TRANSFER_IDLE) {
                expired.push((*id, pending, transfer));
            }
        }
        for (id, pending, transfer) in expired {
            let error = RoomError::new(
                ErrorCode::TransferFailed,
                format!(
                    "transfer {transfer} abandoned: no chunk for {} s; send the whole payload again",
                    TRANSFER_IDLE.as_secs()
                ),
            );
            self.error_to_client(id, &error, pending.refers_to(Some(transfer)))
                .await;
        }
    }

    /// Starts an autosave of every room that changed since its last one.
    fn autosave(&mut self) {
        if self.autosaving.load(Ordering::Acquire) {
            return;
        }
        let mut images = Vec::new();
        for (name, entry) in self.rooms.iter_mut() {
            if !entry.changed_since_autosave {
                continue;
            }
            if let Some(image) = entry.room.image() {
                entry.changed_since_autosave = false;
                images.push((name.to_string(), image));
            }
        }
        if images.is_empty() {
            return;
        }
        self.autosaving.store(true, Ordering::Release);
        let dir = self.config.backup_dir();
        let keep = self.config.autosave_keep;
        let running = self.autosaving.clone();
        backups::autosave_in_background(images, dir, keep, move || {
            running.store(false, Ordering::Release);
        });
    }

    /// Schedules a presence broadcast for a room.
    fn presence_changed(&mut self, room: &str) {
        if let Some(entry) = self.rooms.get_mut(room) {
            entry.presence_due = true;
        }
        if self.presence_due.is_none() {
            self.presence_due = Some(Instant::now() + PRESENCE_DELAY);
        }
    }

    /// Tells each room whose user list changed, within its presence
    /// budget: a room over it waits, its changes gathering, until the
    /// budget allows (a user's latest values win meanwhile).
    async fn broadcast_presence(&mut self) {
        let now = Instant::now();
        let rate = self.config.limits.presence_bytes_per_second;
        let mut later: Option<Instant> = None;
        let mut due = Vec::new();
        for (_, entry) in self.rooms.iter_mut() {
            if !entry.presence_due {
                continue;
            }
            if let Some(wait) = entry.presence_budget.wait(now.into_std(), rate) {
                let at = now + wait;
                later = Some(later.map_or(at, |l| l.min(at)));
                continue;
            }
            entry.presence_due = false;
            for delivery in entry.room.presence() {
                let cost = delivery.wire.len().saturating_mul(delivery.to.len());
                entry.presence_budget.spend(cost);
                due.push(delivery);
            }
        }
        if let Some(at) = later {
            self.presence_due = Some(self.presence_due.map_or(at, |d| d.min(at)));
        }
        for delivery in due {
            self.deliver(delivery.to, delivery.channel, delivery.wire)
                .await;
        }
    }

    /// Carries out what a room asked for: records its changes, then sends
    /// its messages.
    async fn apply(&mut self, room: &str, mut effects: Effects) {
        self.record(room, std::mem::take(&mut effects.changes));
        if effects.streams_started > 0 {
            self.metrics
                .streams_started
                .inc_by(effects.streams_started as u64);
        }
        for took in &effects.streams_finished {
            self.metrics.stream_finished(*took);
        }
        for d in effects.deliveries {
            self.deliver(d.to, d.channel, d.wire).await;
        }
        for (id, reason) in effects.disconnect {
            self.disconnect(id, &reason).await;
        }
        if effects.presence_changed {
            self.presence_changed(room);
        }
    }

    async fn deliver(&mut self, to: Vec<ClientId>, channel: Channel, wire: Wire) {
        let to = self.recipients(to);
        if !to.is_empty() {
            self.send(Command::Deliver { channel, to, wire }).await;
        }
    }

    /// The identities of the sessions of `ids` (those that still exist).
    fn recipients(&mut self, ids: Vec<ClientId>) -> Recipients {
        if let Some((last, shared)) = &self.audience
            && *last == ids
        {
            return shared.clone();
        }
        let identities: Vec<Identity> = ids
            .iter()
            .filter_map(|id| self.sessions.get(id).map(|s| s.identity.clone()))
            .collect();
        let to = Recipients::from(identities);
        if ids.len() > 1 {
            self.audience = Some((ids, to.clone()));
        }
        to
    }

    /// Ends a session's record (not the client's connection).
    fn remove_session(&mut self, id: ClientId) -> Option<Session> {
        // The shared recipient list may name it.
        self.audience = None;
        self.sessions.remove(&id)
    }

    /// Sends a message on the command channel to any identity, authenticated
    /// or not.
    async fn reply_to(&mut self, identity: &Identity, msg: &ServerMessage) {
        self.send(Command::Deliver {
            channel: Channel::Commands,
            to: Recipients::One(identity.clone()),
            wire: Wire::message(msg),
        })
        .await;
    }

    /// Sends an ERROR to a client and logs it, with who was refused and,
    /// for a datablock, who holds it.
    async fn error_to(&mut self, identity: &Identity, error: &RoomError, refers_to: RefersTo) {
        self.metrics.refused(error.code);
        let session = self
            .by_identity
            .get(identity)
            .and_then(|id| self.sessions.get(id));
        let user = session.map(|s| s.user.as_str());
        let datablock = error
            .held
            .as_ref()
            .map(|h| h.datablock.as_str())
            .or(refers_to.uuid.as_deref());
        let owner = match &error.held {
            Some(held) => Some(held.owner.clone()),
            None => session
                .and_then(|s| s.room.as_deref())
                .and_then(|room| self.rooms.get(room))
                .zip(datablock)
                .and_then(|(entry, uuid)| entry.room.repository().get(uuid))
                .map(|b| b.owner.clone()),
        };
        tracing::warn!(
            user,
            code = ?error.code,
            kind = refers_to.kind.as_deref().unwrap_or("?"),
            datablock,
            owner,
            "refused: {}",
            error.message
        );
        let msg = ServerMessage::Error {
            code: error.code,
            message: error.message.clone(),
            refers_to,
        };
        self.reply_to(identity, &msg).await;
    }

    /// Removes a client: tells it why, frees its locks, tells the others.
    async fn disconnect(&mut self, id: ClientId, reason: &str) {
        if reason == TOO_SLOW {
            self.metrics.slow_disconnects.inc();
        }
        // Leaving the room first: its other users are told, locks freed.
        self.leave_room(id).await;
        let Some(session) = self.remove_session(id) else {
            return;
        };
        self.by_identity.remove(&session.identity);
        self.by_token.remove(&session.token);
        if let Some(address) = session.peer {
            self.send(Command::Users { address, delta: -1 }).await;
        }
        session.span.in_scope(|| {
            let dropped = session.links.waiting();
            if dropped > 0 {
                tracing::warn!(
                    dropped,
                    "refused the messages of a connection that presented this client's identity and never proved the session"
                );
            }
            tracing::info!(reason, "client disconnected");
        });
        let last = Wire::message(&ServerMessage::Disconnect {
            reason: reason.to_owned(),
        });
        self.send(Command::Disconnect {
            identity: session.identity,
            last: Some(last),
        })
        .await;
    }

    fn new_client_id(&mut self) -> ClientId {
        let id = ClientId(self.next_client);
        self.next_client += 1;
        id
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn kick_reason(by: &str, reason: Option<&str>) -> String {
    match reason {
        Some(r) if !r.trim().is_empty() => format!("kicked by {by}: {r}"),
        _ => format!("kicked by {by}"),
    }
}

/// An error for a request the server could not parse or accept.
fn protocol_error(code: ErrorCode, message: impl Into<String>) -> RoomError {
    RoomError::new(code, message)
}
