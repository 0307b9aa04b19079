//! Creating and binding the four sockets with the options a public server
//! needs.

use std::net::IpAddr;

use crate::config::Config;
use crate::protocol::Channel;

/// Messages queued per connection inside libzmq. Our own outboxes hold the
/// rest, where they can be counted and bounded.
const HWM: i32 = 1000;
/// How long a connection may take to complete the ZMTP handshake.
const HANDSHAKE_MS: i32 = 10_000;
/// Idle time before TCP keepalive probes start, to notice dead peers behind
/// NATs.
const KEEPALIVE_IDLE_S: i32 = 60;

/// The four bound sockets. Each keeps its libzmq context alive, so the
/// context ends when the last socket closes.
pub struct Sockets {
    /// In channel order: commands, subscriber, publisher, heartbeat.
    pub(super) sockets: [zmq::Socket; 4],
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
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

impl Sockets {
    /// Creates and binds the four sockets on `config.bind`, ports base..base+3.
    pub fn bind(config: &Config) -> Result<Self, BindError> {
        let ports = config.ports()?;
        let context = zmq::Context::new();
        let max_frame = i64::try_from(config.limits.max_frame_bytes()).unwrap_or(i64::MAX);
        let make = |channel: Channel| -> Result<zmq::Socket, BindError> {
            let name = channel.name();
            let err = |source| BindError::Socket {
                channel: name,
                source,
            };
            let kind = match channel {
                Channel::Publisher => zmq::PULL,
                _ => zmq::ROUTER,
            };
            let socket = context.socket(kind).map_err(err)?;
            if kind == zmq::ROUTER {
                // Fail (EHOSTUNREACH / EAGAIN) instead of silently dropping
                // messages to unknown or full peers.
                socket.set_router_mandatory(true).map_err(err)?;
                // A client that reconnects with the same identity takes over.
                socket.set_router_handover(true).map_err(err)?;
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
            if config.bind.is_ipv6() {
                socket.set_ipv6(true).map_err(err)?;
            }
            let port = ports[channel as usize];
            let endpoint = match config.bind {
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
            Ok(socket)
        };
        let sockets = [
            make(Channel::Commands)?,
            make(Channel::Subscriber)?,
            make(Channel::Publisher)?,
            make(Channel::Heartbeat)?,
        ];
        Ok(Self { sockets })
    }
}
