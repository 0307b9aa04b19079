//! The security thread: libzmq's authentication requests (ZAP, for
//! `--authorized-keys`) and the key service that plain connections to an
//! encrypting server's heartbeat port reach (`security::front`). Both are
//! sockets of the server's libzmq context, owned by this thread alone, so
//! a slow disk while the key list is reloaded never holds up the core.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::authorized::{AuthorizedKeys, Stamp};
use super::key::PublicKey;
use crate::protocol::{
    ErrorCode, HeartbeatMessage, RefersTo, ServerMessage, decode_header, encode,
};

/// How often the thread looks up from its sockets: for the stop flag and
/// a changed key list.
const TICK: Duration = Duration::from_millis(250);
/// How often the key list's file is looked at for a change.
const WATCH: Duration = Duration::from_secs(1);
/// A refused key is logged at most this often, since a refused client's
/// libzmq retries by itself, on four connections.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Largest message the key service reads (a SERVER_KEY is a few bytes).
pub const KEY_SERVICE_MAX_MESSAGE: i64 = 64 * 1024;
/// Where libzmq sends authentication requests (ZeroMQ RFC 27).
pub const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";

/// A request to read the key list again, answered with how many keys it
/// now holds or why it could not be read (the old list then stays).
pub type Reload = mpsc::SyncSender<Result<usize, String>>;

/// The ZAP side: the admitted keys and where they come from.
pub struct Zap {
    pub socket: zmq::Socket,
    pub path: PathBuf,
    pub keys: AuthorizedKeys,
}

/// The key service side: a plain ROUTER socket on loopback.
pub struct KeyService {
    pub socket: zmq::Socket,
    pub public: PublicKey,
}

/// The running thread.
pub struct Service {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Service {
    /// Starts the thread; `reloads` brings the console's `reload-keys`.
    pub fn spawn(
        zap: Option<Zap>,
        keys: Option<KeyService>,
        reloads: mpsc::Receiver<Reload>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("security".into())
            .spawn(move || run(zap, keys, &reloads, &flag))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // It notices within a tick; a panic there was already reported.
            let _ = thread.join();
        }
    }
}

fn run(
    mut zap: Option<Zap>,
    keys: Option<KeyService>,
    reloads: &mpsc::Receiver<Reload>,
    stop: &AtomicBool,
) {
    let mut stamp = zap.as_ref().and_then(|z| Stamp::of(&z.path));
    let mut watched = Instant::now();
    let mut refusals = Refusals::default();
    while !stop.load(Ordering::Relaxed) {
        let mut items = Vec::with_capacity(2);
        if let Some(zap) = &zap {
            items.push(zap.socket.as_poll_item(zmq::POLLIN));
        }
        if let Some(keys) = &keys {
            items.push(keys.socket.as_poll_item(zmq::POLLIN));
        }
        let ready = zmq::poll(&mut items, i64::try_from(TICK.as_millis()).unwrap_or(250));
        let readable: Vec<bool> = items.iter().map(zmq::PollItem::is_readable).collect();
        drop(items);
        if ready.is_ok() {
            let mut next = readable.into_iter();
            if let Some(zap) = &zap
                && next.next() == Some(true)
            {
                answer_zap(zap, &mut refusals);
            }
            if let Some(keys) = &keys
                && next.next() == Some(true)
            {
                answer_key_requests(keys);
            }
        }
        if let Some(zap) = zap.as_mut() {
            while let Ok(reply) = reloads.try_recv() {
                let result = reload(zap);
                stamp = Stamp::of(&zap.path);
                // The console may have given up waiting.
                let _ = reply.try_send(result);
            }
            if watched.elapsed() >= WATCH {
                watched = Instant::now();
                let now = Stamp::of(&zap.path);
                if now != stamp {
                    stamp = now;
                    // Errors are logged by `reload`; nothing else to do.
                    let _ = reload(zap);
                }
            }
        } else {
            while let Ok(reply) = reloads.try_recv() {
                let _ = reply.try_send(Err(
                    "the server admits every client key: start it with --authorized-keys FILE to admit only listed ones".into(),
                ));
            }
        }
    }
}

/// Reads the key list again; a list that cannot be read leaves the old one
/// in force, since admitting everyone or no one would both be worse.
fn reload(zap: &mut Zap) -> Result<usize, String> {
    match AuthorizedKeys::read(&zap.path) {
        Ok(keys) => {
            let count = keys.len();
            if keys != zap.keys {
                tracing::info!(
                    file = %zap.path.display(),
                    keys = count,
                    "authorized keys reloaded"
                );
            }
            zap.keys = keys;
            Ok(count)
        }
        Err(e) => {
            tracing::error!("{e}; the {} keys read before stay in force", zap.keys.len());
            Err(e.to_string())
        }
    }
}

/// When each refused key was last logged.
#[derive(Default)]
struct Refusals {
    logged: HashMap<PublicKey, Instant>,
}

impl Refusals {
    fn should_log(&mut self, key: PublicKey) -> bool {
        let now = Instant::now();
        if self.logged.len() > 4096 {
            self.logged
                .retain(|_, at| now.duration_since(*at) < REFUSAL_LOG_INTERVAL);
        }
        match self.logged.get(&key) {
            Some(at) if now.duration_since(*at) < REFUSAL_LOG_INTERVAL => false,
            _ => {
                self.logged.insert(key, now);
                true
            }
        }
    }
}

/// Answers the waiting ZAP requests (ZeroMQ RFC 27: version, request id,
/// domain, address, routing id, mechanism, then the client's key).
fn answer_zap(zap: &Zap, refusals: &mut Refusals) {
    while let Ok(frames) = zap.socket.recv_multipart(zmq::DONTWAIT) {
        let (Some(version), Some(request_id)) = (frames.first(), frames.get(1)) else {
            continue;
        };
        let address = frames
            .get(3)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .unwrap_or_default();
        let key = match (frames.get(5).map(Vec::as_slice), frames.get(6)) {
            (Some(b"CURVE"), Some(key)) => <[u8; 32]>::try_from(key.as_slice())
                .ok()
                .map(PublicKey::from_bytes),
            _ => None,
        };
        let (status, text, user) = match key {
            Some(key) => match zap.keys.admits(&key) {
                Some(comment) => ("200", "OK", comment.to_owned()),
                None => {
                    if refusals.should_log(key) {
                        tracing::warn!(
                            fingerprint = %key.fingerprint(),
                            peer = %address,
                            "refused a client key that is not in the authorized keys; to admit it, add its public key to {}",
                            zap.path.display()
                        );
                    }
                    ("400", "this client key is not authorized", String::new())
                }
            },
            None => ("400", "only CURVE clients are admitted", String::new()),
        };
        let reply: [&[u8]; 6] = [
            version,
            request_id,
            status.as_bytes(),
            text.as_bytes(),
            user.as_bytes(),
            b"",
        ];
        if let Err(e) = zap.socket.send_multipart(reply, zmq::DONTWAIT) {
            tracing::error!(error = %e, "cannot answer an authentication request");
        }
    }
}

/// Answers what plain connections sent to the key service: SERVER_KEY with
/// the key, anything else with ERROR `encryption_required`.
fn answer_key_requests(keys: &KeyService) {
    while let Ok(frames) = keys.socket.recv_multipart(zmq::DONTWAIT) {
        let Some(identity) = frames.first() else {
            continue;
        };
        let request = frames.get(1).map(|header| {
            decode_header::<HeartbeatMessage>(header, KEY_SERVICE_MAX_MESSAGE as usize)
        });
        let answer = match request {
            Some(Ok(HeartbeatMessage::ServerKey { id, .. })) if frames.len() == 2 => {
                encode(&key_answer(id, Some(keys.public)))
            }
            _ => encode(&ServerMessage::Error {
                code: ErrorCode::EncryptionRequired,
                message: "this server encrypts every session (CURVE): connect with its public key, which SERVER_KEY on this port tells".to_owned(),
                refers_to: RefersTo::default(),
            }),
        };
        // A peer that went away or stopped reading misses its answer.
        let _ = keys
            .socket
            .send_multipart([identity.as_slice(), &answer[..]], zmq::DONTWAIT);
    }
}

/// The SERVER_KEY answer for a server with `public` as its key (`None`: a
/// server that does not encrypt).
pub fn key_answer(id: Option<u64>, public: Option<PublicKey>) -> HeartbeatMessage {
    match public {
        Some(key) => HeartbeatMessage::ServerKey {
            id,
            encryption: Some("curve".to_owned()),
            public_key: Some(key.to_text()),
            fingerprint: Some(key.fingerprint()),
        },
        None => HeartbeatMessage::ServerKey {
            id,
            encryption: Some("none".to_owned()),
            public_key: None,
            fingerprint: None,
        },
    }
}
