//! A blocking Rust client of protocol v2, used by the tests and tools.
//!
//! It owns its four sockets (three DEALERs sharing one random 16-byte routing
//! identity, and a PUSH), answers the server's pings whenever it is polled,
//! reassembles chunked payloads and acknowledges snapshot windows, so callers
//! see whole messages as [`Event`]s.

mod presence;
mod receive;
mod requests;
pub mod trust;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::RngExt;
use rmpv::Value;
use serde::Serialize;

use crate::protocol::batch::MAX_BATCH;
use crate::protocol::patch::Patch;
use crate::protocol::{
    AuthStatus, Channel, ChunkFields, CommandRequest, DatablockHeader, HeartbeatMessage,
    PROTOCOL_VERSION, PayloadSpec, ProtocolError, PublisherMessage, Role, ServerMessage,
    SnapshotStep, SubscriberRequest, UploadStatus, UploadStep, UserState, codec::encode_value,
    decode_header, decode_server, encode,
};
use crate::security::key::{KeyPair, PublicKey};
pub use trust::ServerTrust;

/// libzmq's monitor events (zmq.h): the server refused the client's key
/// (ZAP), or the handshake failed its protocol.
const HANDSHAKE_FAILED_AUTH: i32 = 0x4000;
const HANDSHAKE_FAILED_PROTOCOL: i32 = 0x2000;

/// Largest header the client accepts from a server.
const MAX_HEADER: usize = 64 << 20;
/// While a tool reads only subscriber messages, the other sockets (pings to
/// answer, command replies to queue) are read at least this often.
const SERVICE_EVERY: Duration = Duration::from_millis(100);
/// Most bytes reserved at once for a chunked payload the server announces:
/// larger ones still arrive, growing as they do.
const MAX_RESERVE: usize = 1 << 30;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("socket error: {0}")]
    Zmq(#[from] zmq::Error),
    #[error("invalid message from the server: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("no answer from the server within {0:?}")]
    Timeout(Duration),
    #[error("the server refused: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("disconnected by the server: {0}")]
    Disconnected(String),
    #[error("not authenticated")]
    NotAuthenticated,
    /// The server presents another key than the one given.
    #[error("{0}")]
    WrongServerKey(String),
    /// The server presents another key than the one pinned on first use.
    #[error("{0}")]
    ChangedServerKey(String),
    /// The server admits only listed client keys, and not this one.
    #[error("{0}")]
    KeyNotAdmitted(String),
    #[error("the known-servers file {0}")]
    KnownServers(String),
    #[error("cannot make a client key: {0}")]
    ClientKey(String),
}

/// Who connects, and how.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub role: Role,
    pub admin_password: Option<String>,
    pub server_password: Option<String>,
    /// The room to join (or create); the default room when `None`.
    pub room: Option<String>,
    pub room_password: Option<String>,
    /// Ask the server for UPDATES (several forwarded updates in one
    /// message), and for DATABLOCKS in the snapshot stream. The client
    /// hands them out as single UPDATE and DATABLOCK events either way;
    /// only raw frames ([`Client::next_subscriber_frames`]) show them.
    pub batches: bool,
    /// How the server's key is known (plain, given, pinned on first use).
    pub trust: ServerTrust,
    /// The client's own key pair, for servers that admit only listed keys;
    /// a new one for each client when `None`.
    pub client_key: Option<KeyPair>,
    /// How long connecting waits for the server's SERVER_KEY answer.
    pub key_timeout: Duration,
}

impl ClientOptions {
    /// A regular user on localhost.
    pub fn new(port: u16, user: &str) -> Self {
        Self {
            host: "127.0.0.1".into(),
            port,
            user: user.into(),
            role: Role::Client,
            admin_password: None,
            server_password: None,
            room: None,
            room_password: None,
            batches: true,
            trust: ServerTrust::Plain,
            client_key: None,
            key_timeout: Duration::from_secs(10),
        }
    }

    /// The same, encrypting with `trust`.
    pub fn trusting(self, trust: ServerTrust) -> Self {
        Self { trust, ..self }
    }

    /// The same, joining (or creating) room `room`.
    pub fn in_room(self, room: &str) -> Self {
        Self {
            room: Some(room.into()),
            ..self
        }
    }

    /// An admin on localhost.
    pub fn admin(port: u16, user: &str, password: &str) -> Self {
        Self {
            role: Role::Admin,
            admin_password: Some(password.into()),
            ..Self::new(port, user)
        }
    }
}

/// Where JOIN_ROOM took the client.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomJoined {
    pub room: String,
    /// LOBBY (upload or wait for the scene) or RUNNING (download it).
    pub status: AuthStatus,
    /// This client created the room: it waits for this client's upload.
    pub created: bool,
    /// This client is an admin of the room.
    pub admin: bool,
}

/// A whole message from the server, chunks reassembled.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub channel: Channel,
    pub message: ServerMessage,
    /// The data frame (datablock data or a patch), if any.
    pub payload: Option<Bytes>,
}

/// A datablock as uploaded or downloaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub uuid: String,
    pub type_id: String,
    pub owner: Option<String>,
    pub deps: Vec<String>,
    pub data: Value,
}

/// A downloaded datablock with its server-side header.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub header: DatablockHeader,
    pub data: Bytes,
}

struct Partial {
    message: ServerMessage,
    data: BytesMut,
}

/// One connection to a server.
pub struct Client {
    options: ClientOptions,
    /// The routing identity of the three DEALER sockets.
    identity: [u8; 16],
    commands: zmq::Socket,
    subscriber: zmq::Socket,
    publisher: zmq::Socket,
    heartbeat: zmq::Socket,
    token: Option<Bytes>,
    /// The room this client is in, as the server last said.
    room: Option<String>,
    chunk_bytes: usize,
    next_id: u64,
    next_transfer: u64,
    events: VecDeque<Event>,
    partial: HashMap<u64, Partial>,
    /// Snapshot acknowledgement state: messages and bytes since BEGIN, and
    /// when the next acknowledgement is due.
    snapshot: Option<SnapshotProgress>,
    /// Answer pings while polling (tests turn this off to play dead).
    pub answer_pings: bool,
    /// Channels on which the server asked for RESUME before the token was
    /// known.
    resume_due: Vec<Channel>,
    /// RESUMEs sent: how many new connections the client proved.
    resumed: usize,
    /// The room's users, kept from CLIENTS_STATE and PRESENCE.
    users: Vec<UserState>,
    /// Bytes of the messages received, by channel.
    received: [u64; 4],
    /// When the heartbeat and command sockets were last read by
    /// [`Client::next_subscriber_frames_of`], which waits on the subscriber
    /// socket alone.
    serviced: Instant,
    /// When the last PING arrived, and the longest wait between two so far
    /// (see [`Client::take_ping_gap`]).
    last_ping: Option<Instant>,
    ping_gap: Duration,
    /// The key the sockets encrypt with, when they do.
    server_key: Option<PublicKey>,
    /// The client's public key, when encrypting.
    client_key: Option<PublicKey>,
    /// The commands socket's handshake events, when encrypting: a refused
    /// client key shows only there.
    handshakes: Option<zmq::Socket>,
}

#[derive(Debug, Default)]
struct SnapshotProgress {
    received: u64,
    bytes: u64,
    acked: u64,
    acked_bytes: u64,
    window: u64,
    window_bytes: u64,
}

impl Client {
    /// Opens the four sockets towards `options.host` (nothing is sent yet).
    pub fn connect(options: ClientOptions) -> Result<Self, ClientError> {
        Self::connect_in(&zmq::Context::new(), options)
    }

    /// Like [`Client::connect`], in an existing ZeroMQ context, so that many
    /// clients in one process can share its I/O thread.
    pub fn connect_in(context: &zmq::Context, options: ClientOptions) -> Result<Self, ClientError> {
        let mut identity: [u8; 16] = rand::rng().random();
        // libzmq reserves identities that start with a zero byte.
        identity[0] = identity[0].max(1);
        let base = options.port;
        let server_key = trust::decide(
            &options.trust,
            context,
            &options.host,
            base.saturating_add(3),
            options.key_timeout,
        )?;
        let pair = match (server_key, &options.client_key) {
            (None, _) => None,
            (Some(_), Some(pair)) => Some(pair.clone()),
            (Some(_), None) => {
                Some(KeyPair::generate().map_err(|e| ClientError::ClientKey(e.to_string()))?)
            }
        };
        let secure = |s: &zmq::Socket| -> Result<(), zmq::Error> {
            if let (Some(server), Some(pair)) = (server_key, &pair) {
                s.set_curve_serverkey(server.as_bytes())?;
                s.set_curve_publickey(pair.public().as_bytes())?;
                s.set_curve_secretkey(pair.secret_bytes())?;
            }
            Ok(())
        };
        let endpoint = |offset: u16| format!("tcp://{}:{}", options.host, base + offset);
        let dealer = |offset: u16| -> Result<zmq::Socket, zmq::Error> {
            let s = context.socket(zmq::DEALER)?;
            s.set_identity(&identity)?;
            s.set_linger(0)?;
            secure(&s)?;
            s.connect(&endpoint(offset))?;
            Ok(s)
        };
        let commands = context.socket(zmq::DEALER)?;
        commands.set_identity(&identity)?;
        commands.set_linger(0)?;
        secure(&commands)?;
        // Watched before it connects, so that no handshake goes unseen.
        let handshakes = match server_key {
            Some(_) => {
                let address = format!("inproc://client-handshakes-{}", rand::rng().random::<u64>());
                commands.monitor(&address, HANDSHAKE_FAILED_AUTH | HANDSHAKE_FAILED_PROTOCOL)?;
                let monitor = context.socket(zmq::PAIR)?;
                monitor.connect(&address)?;
                Some(monitor)
            }
            None => None,
        };
        commands.connect(&endpoint(0))?;
        let subscriber = dealer(1)?;
        let publisher = context.socket(zmq::PUSH)?;
        // Lets queued updates reach the server when the client closes.
        publisher.set_linger(1000)?;
        secure(&publisher)?;
        publisher.connect(&endpoint(2))?;
        let heartbeat = dealer(3)?;
        Ok(Self {
            options,
            identity,
            commands,
            subscriber,
            publisher,
            heartbeat,
            token: None,
            room: None,
            chunk_bytes: 1 << 20,
            next_id: 1,
            next_transfer: 1,
            events: VecDeque::new(),
            partial: HashMap::new(),
            snapshot: None,
            answer_pings: true,
            resume_due: Vec::new(),
            resumed: 0,
            users: Vec::new(),
            received: [0; 4],
            serviced: Instant::now(),
            last_ping: None,
            ping_gap: Duration::ZERO,
            server_key,
            client_key: pair.map(|p| p.public()),
            handshakes,
        })
    }

    /// The key the client encrypts with, when it does.
    pub fn server_key(&self) -> Option<PublicKey> {
        self.server_key
    }

    /// Why the server refused the encrypted handshake, if it did: a
    /// client key it does not admit, or a handshake that did not decrypt.
    pub fn handshake_refusal(&self) -> Option<ClientError> {
        let monitor = self.handshakes.as_ref()?;
        let mut refusal = None;
        while let Ok(frames) = monitor.recv_multipart(zmq::DONTWAIT) {
            let event = frames
                .first()
                .and_then(|f| f.get(0..2))
                .and_then(|b| <[u8; 2]>::try_from(b).ok())
                .map(|b| i32::from(u16::from_ne_bytes(b)));
            let name = trust::server_name(&self.options.host, self.options.port);
            let key = self.client_key.map(|k| k.to_text()).unwrap_or_default();
            let fingerprint = self.client_key.map(|k| k.fingerprint()).unwrap_or_default();
            match event {
                Some(HANDSHAKE_FAILED_AUTH) => {
                    refusal = Some(ClientError::KeyNotAdmitted(format!(
                        "the server at {name} admits only the client keys its admin listed, and not this one: send the admin your public key {key} (fingerprint {fingerprint})"
                    )));
                }
                Some(HANDSHAKE_FAILED_PROTOCOL) if refusal.is_none() => {
                    refusal = Some(ClientError::WrongServerKey(format!(
                        "the encrypted handshake with the server at {name} failed: the server key used may be wrong"
                    )));
                }
                _ => {}
            }
        }
        refusal
    }

    /// The room this client is in, as the server last said (`None` before
    /// AUTH and after LEAVE_ROOM).
    pub fn room(&self) -> Option<&str> {
        self.room.as_deref()
    }

    /// The session token from AUTH (the first frame of publisher messages),
    /// for tools that build publisher messages themselves.
    pub fn token(&self) -> Option<&[u8]> {
        self.token.as_deref()
    }

    /// How many new connections the client has proven with RESUME since
    /// it was created.
    pub fn resumed(&self) -> usize {
        self.resumed
    }

    /// The room's users as the server last told (CLIENTS_STATE, then the
    /// PRESENCE changes applied to it).
    pub fn users(&self) -> &[UserState] {
        &self.users
    }

    /// Bytes received on `channel` so far (header and data frames).
    pub fn received_bytes(&self, channel: Channel) -> u64 {
        self.received[channel as usize]
    }

    /// The longest time between two PINGs received since the last call, as
    /// the client read them: how late the server's heartbeat was.
    pub fn take_ping_gap(&mut self) -> Duration {
        std::mem::take(&mut self.ping_gap)
    }

    /// The routing identity of the client's DEALER sockets.
    pub fn identity(&self) -> &[u8] {
        &self.identity
    }

    /// The user name this client authenticates as.
    pub fn user(&self) -> &str {
        &self.options.user
    }

    /// Sends raw frames on a channel (the token frame is not added): for
    /// tests of bad input.
    pub fn send_raw(&self, channel: Channel, frames: &[&[u8]]) -> Result<(), ClientError> {
        let socket = self.socket(channel);
        socket.send_multipart(frames.iter().copied(), 0)?;
        Ok(())
    }

    fn socket(&self, channel: Channel) -> &zmq::Socket {
        match channel {
            Channel::Commands => &self.commands,
            Channel::Subscriber => &self.subscriber,
            Channel::Publisher => &self.publisher,
            Channel::Heartbeat => &self.heartbeat,
        }
    }

    fn send<T: Serialize>(
        &self,
        channel: Channel,
        msg: &T,
        payload: Option<&[u8]>,
    ) -> Result<(), ClientError> {
        let header = encode(msg);
        let socket = self.socket(channel);
        if channel == Channel::Publisher {
            let token = self.token.as_ref().ok_or(ClientError::NotAuthenticated)?;
            socket.send(&token[..], zmq::SNDMORE)?;
        }
        match payload {
            Some(p) => {
                socket.send(&header[..], zmq::SNDMORE)?;
                socket.send(p, 0)?;
            }
            None => socket.send(&header[..], 0)?,
        }
        Ok(())
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

fn unexpected(message: &ServerMessage) -> ClientError {
    ClientError::Protocol(ProtocolError::Invalid(format!(
        "unexpected answer: {message:?}"
    )))
}
