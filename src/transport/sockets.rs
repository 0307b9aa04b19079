//! Creating and binding the four sockets with the options a public server
//! needs.

use std::net::{IpAddr, SocketAddr};

use crate::config::Config;
use crate::protocol::Channel;
use crate::security::Encrypting;
use crate::security::front::Backends;
use crate::security::key::PublicKey;
use crate::security::service::{KEY_SERVICE_MAX_MESSAGE, KeyService, ZAP_ENDPOINT, Zap};

/// Messages queued per connection inside libzmq. Our own outboxes hold the
/// rest, where they can be counted and bounded.
const HWM: i32 = 1000;
/// How long a connection may take to complete the ZMTP handshake.
const HANDSHAKE_MS: i32 = 10_000;
/// Idle time before TCP keepalive probes start, to notice dead peers behind
/// NATs.
const KEEPALIVE_IDLE_S: i32 = 60;
/// How much libzmq reads from a client's publisher connection per call:
/// its default, 8 KiB, is eight updates of 1 KB, and every read costs a
/// system call, a wake-up and often an acknowledgement.
const PUBLISHER_READ_BYTES: i32 = 64 * 1024;
/// `ZMQ_IN_BATCH_SIZE`, from libzmq's draft API (zmq.h, libzmq 4.3).
const ZMQ_IN_BATCH_SIZE: i32 = 101;
/// `ZMQ_ROUTER_NOTIFY` and `ZMQ_NOTIFY_CONNECT`, from libzmq's draft API:
/// a ROUTER hands the application an empty message from each new
/// connection, before anything the connection sends.
const ZMQ_ROUTER_NOTIFY: i32 = 97;
const ZMQ_NOTIFY_CONNECT: i32 = 1;
/// The socket events the transport follows (`transport::connections`).
const MONITORED: i32 = zmq_sys::ZMQ_EVENT_LISTENING as i32
    | zmq_sys::ZMQ_EVENT_ACCEPTED as i32
    | zmq_sys::ZMQ_EVENT_ACCEPT_FAILED as i32
    | zmq_sys::ZMQ_EVENT_DISCONNECTED as i32
    | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
    | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH;
/// libzmq's events for a connection whose handshake failed: its protocol
/// (a plain client on an encrypted port, a wrong server key), or the
/// authentication (a client key not admitted).
pub(super) const ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL: i32 = 0x2000;
pub(super) const ZMQ_EVENT_HANDSHAKE_FAILED_AUTH: i32 = 0x4000;
/// The ZAP domain of the server's sockets: with one set, libzmq asks the
/// handler about every CURVE client.
const ZAP_DOMAIN: &str = "replication-serve";

/// The four bound sockets. Each keeps its libzmq context alive, so the
/// context ends when the last socket closes.
pub struct Sockets {
    /// In channel order: commands, subscriber, publisher, heartbeat.
    pub(super) sockets: [zmq::Socket; 4],
    /// Each socket's monitor: the connections its listener accepts and
    /// loses, and its failures to accept.
    pub(super) monitors: [zmq::Socket; 4],
    /// Which sockets' connections come through the heartbeat front on
    /// loopback: the front caps those per real address, so the transport
    /// does not count them.
    pub(super) relayed: [bool; 4],
    /// The server's public key, when the sockets use CURVE.
    pub(super) public_key: Option<PublicKey>,
    /// What the security thread and the front take over, when encrypting.
    encrypted: Option<EncryptedParts>,
}

/// An encrypting server's sockets and listener outside the four.
pub struct EncryptedParts {
    /// The public heartbeat port, served by the front.
    pub heartbeat: std::net::TcpListener,
    pub backends: Backends,
    pub key_service: KeyService,
    pub zap: Option<Zap>,
}

impl std::fmt::Debug for Sockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sockets").finish_non_exhaustive()
    }
}

/// A socket that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "port {port} ({channel} channel) is already in use on {addr}; choose another base port with -p"
    )]
    InUse {
        port: u16,
        channel: &'static str,
        addr: IpAddr,
    },
    #[error("cannot bind {addr}:{port} ({channel} channel): {source}")]
    Bind {
        addr: IpAddr,
        port: u16,
        channel: &'static str,
        source: zmq::Error,
    },
    #[error("cannot create the {channel} socket: {source}")]
    Socket {
        channel: &'static str,
        source: zmq::Error,
    },
    #[error(
        "libzmq was built without its draft API, which the server needs to bind sessions to \
         their connections (ZMQ_ROUTER_NOTIFY): build with the flags in .cargo/config.toml \
         (a CXXFLAGS set in the environment replaces them)"
    )]
    NoConnectNotices,
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

impl Sockets {
    /// Creates and binds the four sockets on `config.bind`, ports base..base+3.
    pub fn bind(config: &Config, encrypting: Option<&Encrypting>) -> Result<Self, BindError> {
        let ports = config.ports()?;
        let context = zmq::Context::new();
        // Bound before any socket listens, so that no handshake can happen
        // without it.
        let zap = match encrypting.and_then(|e| e.authorized.as_ref()) {
            Some((path, keys)) => {
                let err = |source| BindError::Socket {
                    channel: "authentication",
                    source,
                };
                let socket = context.socket(zmq::REP).map_err(err)?;
                socket.set_linger(0).map_err(err)?;
                socket.bind(ZAP_ENDPOINT).map_err(err)?;
                Some(Zap {
                    socket,
                    path: path.clone(),
                    keys: keys.clone(),
                })
            }
            None => None,
        };
        let max_frame = i64::try_from(config.limits.max_frame_bytes()).unwrap_or(i64::MAX);
        let make = |channel: Channel| -> Result<(zmq::Socket, zmq::Socket), BindError> {
            let name = channel.name();
            let err = |source| BindError::Socket {
                channel: name,
                source,
            };
            let kind = match channel {
                Channel::Publisher => zmq::PULL,
                _ => zmq::ROUTER,
            };
            let mut socket = context.socket(kind).map_err(err)?;
            if kind == zmq::ROUTER {
                // Fail (EHOSTUNREACH / EAGAIN) instead of silently dropping
                // messages to unknown or full peers.
                socket.set_router_mandatory(true).map_err(err)?;
                // A client that reconnects with the same identity takes
                // over; the core is told, and the new connection must prove
                // the session (core::links).
                socket.set_router_handover(true).map_err(err)?;
                set_int(&mut socket, ZMQ_ROUTER_NOTIFY, ZMQ_NOTIFY_CONNECT)
                    .map_err(|()| BindError::NoConnectNotices)?;
            }
            socket.set_sndhwm(HWM).map_err(err)?;
            socket.set_rcvhwm(HWM).map_err(err)?;
            socket.set_maxmsgsize(max_frame).map_err(err)?;
            socket.set_handshake_ivl(HANDSHAKE_MS).map_err(err)?;
            socket.set_tcp_keepalive(1).map_err(err)?;
            socket
                .set_tcp_keepalive_idle(KEEPALIVE_IDLE_S)
                .map_err(err)?;
            socket.set_linger(0).map_err(err)?;
            if channel == Channel::Publisher {
                set_read_batch(&mut socket, PUBLISHER_READ_BYTES);
            }
            if config.bind.is_ipv6() {
                socket.set_ipv6(true).map_err(err)?;
            }
            if let Some(encrypting) = encrypting {
                socket.set_curve_server(true).map_err(err)?;
                socket
                    .set_curve_secretkey(encrypting.pair.secret_bytes())
                    .map_err(err)?;
                if zap.is_some() {
                    socket.set_zap_domain(ZAP_DOMAIN).map_err(err)?;
                }
            }
            // Before binding, so that the listener's own event is seen.
            let endpoint = format!("inproc://monitor-{name}");
            socket.monitor(&endpoint, MONITORED).map_err(err)?;
            let monitor = context.socket(zmq::PAIR).map_err(err)?;
            monitor.connect(&endpoint).map_err(err)?;
            let port = ports[channel as usize];
            // An encrypting server's heartbeat socket listens on loopback,
            // behind the front that serves the public port.
            let relayed = encrypting.is_some() && channel == Channel::Heartbeat;
            let endpoint = match config.bind {
                _ if relayed => "tcp://127.0.0.1:*".to_owned(),
                IpAddr::V4(a) => format!("tcp://{a}:{port}"),
                IpAddr::V6(a) => format!("tcp://[{a}]:{port}"),
            };
            socket.bind(&endpoint).map_err(|source| match source {
                zmq::Error::EADDRINUSE => BindError::InUse {
                    port,
                    channel: name,
                    addr: config.bind,
                },
                source => BindError::Bind {
                    addr: config.bind,
                    port,
                    channel: name,
                    source,
                },
            })?;
            Ok((socket, monitor))
        };
        let (s0, m0) = make(Channel::Commands)?;
        let (s1, m1) = make(Channel::Subscriber)?;
        let (s2, m2) = make(Channel::Publisher)?;
        let (s3, m3) = make(Channel::Heartbeat)?;
        let encrypted = match encrypting {
            Some(encrypting) => {
                let heartbeat_port = ports[Channel::Heartbeat as usize];
                let heartbeat = bind_front(config.bind, heartbeat_port)?;
                let key_service = bind_key_service(&context, encrypting.pair.public())?;
                Some(EncryptedParts {
                    heartbeat,
                    backends: Backends {
                        curve: last_endpoint(&s3, "heartbeat")?,
                        plain: last_endpoint(&key_service.socket, "key service")?,
                    },
                    key_service,
                    zap,
                })
            }
            None => None,
        };
        Ok(Self {
            sockets: [s0, s1, s2, s3],
            monitors: [m0, m1, m2, m3],
            relayed: [false, false, false, encrypted.is_some()],
            public_key: encrypting.map(|e| e.pair.public()),
            encrypted,
        })
    }

    /// Hands over what the security thread and the front serve, once.
    pub fn take_encrypted(&mut self) -> Option<EncryptedParts> {
        self.encrypted.take()
    }
}

/// The public heartbeat port of an encrypting server, for the front.
fn bind_front(addr: IpAddr, port: u16) -> Result<std::net::TcpListener, BindError> {
    std::net::TcpListener::bind(SocketAddr::new(addr, port)).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            BindError::InUse {
                port,
                channel: Channel::Heartbeat.name(),
                addr,
            }
        } else {
            BindError::Bind {
                addr,
                port,
                channel: Channel::Heartbeat.name(),
                source: zmq::Error::from_raw(source.raw_os_error().unwrap_or(libc::EINVAL)),
            }
        }
    })
}

/// The key service's plain socket, on a loopback port of its own.
fn bind_key_service(context: &zmq::Context, public: PublicKey) -> Result<KeyService, BindError> {
    let err = |source| BindError::Socket {
        channel: "key service",
        source,
    };
    let socket = context.socket(zmq::ROUTER).map_err(err)?;
    socket.set_linger(0).map_err(err)?;
    socket
        .set_maxmsgsize(KEY_SERVICE_MAX_MESSAGE)
        .map_err(err)?;
    socket.set_sndhwm(HWM).map_err(err)?;
    socket.set_rcvhwm(HWM).map_err(err)?;
    socket.set_handshake_ivl(HANDSHAKE_MS).map_err(err)?;
    socket.bind("tcp://127.0.0.1:*").map_err(err)?;
    Ok(KeyService { socket, public })
}

/// The loopback address a socket bound with a wildcard port got.
fn last_endpoint(socket: &zmq::Socket, channel: &'static str) -> Result<SocketAddr, BindError> {
    let err = |source| BindError::Socket { channel, source };
    let endpoint = socket
        .get_last_endpoint()
        .map_err(err)?
        .map_err(|_| err(zmq::Error::EINVAL))?;
    endpoint
        .strip_prefix("tcp://")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| err(zmq::Error::EINVAL))
}

/// Sets how many bytes libzmq reads per call on the socket's connections.
/// A libzmq built without its draft API does not know the option; it then
/// keeps its default, which only costs speed.
fn set_read_batch(socket: &mut zmq::Socket, bytes: i32) {
    if set_int(socket, ZMQ_IN_BATCH_SIZE, bytes).is_err() {
        tracing::debug!(
            "libzmq was built without its draft API: the publisher socket reads 8 KiB at a time"
        );
    }
}

/// Sets an integer option the zmq crate does not know (from libzmq's draft
/// API).
#[allow(unsafe_code)]
fn set_int(socket: &mut zmq::Socket, option: i32, value: i32) -> Result<(), ()> {
    // SAFETY: the socket is open for as long as the borrow, and libzmq
    // reads exactly `size_of::<i32>()` bytes from a live local.
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            socket.as_mut_ptr(),
            option,
            (&raw const value).cast(),
            std::mem::size_of::<i32>(),
        )
    };
    if rc == 0 { Ok(()) } else { Err(()) }
}

/// How many bytes libzmq reads per call on the socket's connections, when
/// the library can say.
#[cfg(test)]
#[allow(unsafe_code)]
fn read_batch(socket: &mut zmq::Socket) -> Option<i32> {
    let mut value: i32 = 0;
    let mut size = std::mem::size_of::<i32>();
    // SAFETY: libzmq writes at most `size` bytes into the live local and
    // updates `size`; the socket is open for as long as the borrow.
    let rc = unsafe {
        zmq_sys::zmq_getsockopt(
            socket.as_mut_ptr(),
            ZMQ_IN_BATCH_SIZE,
            (&raw mut value).cast(),
            &raw mut size,
        )
    };
    (rc == 0 && size == std::mem::size_of::<i32>()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binds on a random base port, trying others while another process
    /// holds one of the four; returns the sockets and the base port.
    fn bind_anywhere() -> (Sockets, u16) {
        for _ in 0..100 {
            let config = Config {
                bind: "127.0.0.1".parse().unwrap(),
                port: rand::random_range(20_000u16..60_000),
                ..Config::default()
            };
            match Sockets::bind(&config, None) {
                Ok(sockets) => return (sockets, config.port),
                Err(BindError::InUse { .. }) => continue,
                Err(e) => panic!("cannot bind: {e}"),
            }
        }
        panic!("no four free ports in 100 tries")
    }

    /// The build must keep libzmq's draft API (.cargo/config.toml): without
    /// it the publisher socket silently falls back to 8 KiB reads.
    #[test]
    fn the_publisher_socket_reads_64_kib_at_a_time() {
        let (mut bound, _) = bind_anywhere();
        let [commands, _, publisher, _] = &mut bound.sockets;
        assert_eq!(
            read_batch(publisher),
            Some(PUBLISHER_READ_BYTES),
            "libzmq was built without its draft API: is CXXFLAGS set in the \
             environment? It replaces the one in .cargo/config.toml"
        );
        assert_eq!(read_batch(commands), Some(8192));
    }

    /// For each port, the kernel's timers on the established TCP connections
    /// whose local end is that port, from /proc/net/tcp: 0 none, 1
    /// retransmission, 2 keepalive, 4 zero-window probe. Empty until libzmq
    /// has accepted the connection. (Another process's outgoing connection
    /// could in principle share the port number; hence a list.)
    fn server_side_timers(ports: &[u16]) -> Vec<Vec<u8>> {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        let entries: Vec<(u16, u8)> = table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.get(3) != Some(&"01") {
                    return None;
                }
                let (_, port) = fields.get(1)?.split_once(':')?;
                let (timer, _) = fields.get(5)?.split_once(':')?;
                Some((
                    u16::from_str_radix(port, 16).ok()?,
                    u8::from_str_radix(timer, 16).ok()?,
                ))
            })
            .collect();
        ports
            .iter()
            .map(|port| {
                entries
                    .iter()
                    .filter(|(p, _)| p == port)
                    .map(|&(_, timer)| timer)
                    .collect()
            })
            .collect()
    }

    /// Every accepted connection carries TCP keepalive, so a peer that
    /// vanished behind a NAT is noticed. libzmq built without the platform
    /// flags in .cargo/config.toml accepts the option and ignores it.
    #[cfg(target_os = "linux")]
    #[test]
    fn accepted_connections_carry_tcp_keepalive() {
        let (_bound, base) = bind_anywhere();
        let ports = [base, base + 1, base + 2, base + 3];
        // Peers that complete the handshake, so that libzmq keeps the
        // connections open for as long as the test looks at them.
        let context = zmq::Context::new();
        let _peers: Vec<zmq::Socket> = Channel::ALL
            .into_iter()
            .zip(ports)
            .map(|(channel, port)| {
                let kind = match channel {
                    Channel::Publisher => zmq::PUSH,
                    _ => zmq::DEALER,
                };
                let peer = context.socket(kind).expect("socket");
                peer.set_linger(0).expect("linger");
                peer.connect(&format!("tcp://127.0.0.1:{port}"))
                    .expect("connect");
                peer
            })
            .collect();
        // libzmq connects and accepts on its own threads; wait for all
        // four, with a deadline far beyond what that takes.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let timers = server_side_timers(&ports);
            if timers.iter().all(|t| t.contains(&2)) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server's ends of the connections have timers {timers:?}, not keepalive \
                 (2): was libzmq built without the flags in .cargo/config.toml? A CXXFLAGS \
                 set in the environment replaces them"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
