//! The heartbeat port of an encrypting server, shared by two kinds of
//! connection. libzmq fixes one security mechanism per listener, and a
//! client that has never seen the server needs its public key before it
//! can open a CURVE connection; so this port is served here: the ZMTP
//! greeting is read, and the connection is relayed to one of two listeners
//! on loopback: the heartbeat socket itself (CURVE), or the key service
//! (plain, which answers SERVER_KEY and nothing else).
//!
//! Heartbeat traffic is a PING and a PONG a second per client, so the relay
//! costs nothing the other channels would notice, and those keep libzmq's
//! own listeners.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// ZMTP 3's greeting: a signature (0xFF, eight bytes of padding, 0x7F),
/// then the major version, then the rest. Each side sends its signature and
/// major version before it reads the other's rest.
const GREETING: usize = 64;
/// What is sent before the client's greeting is read: the signature and
/// major version 3, as libzmq sends them.
const OPENING: [u8; 11] = [0xFF, 0, 0, 0, 0, 0, 0, 0, 1, 0x7F, 3];
/// Where the mechanism's name sits in a greeting (20 bytes, NUL padded).
const MECHANISM: std::ops::Range<usize> = 12..32;
/// How long a connection may take to send its greeting, as libzmq's
/// handshake timeout on the other ports.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Idle time before TCP keepalive probes start, as on the other ports.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Refused connections are reported at most this often.
const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Where each kind of connection goes.
#[derive(Debug, Clone, Copy)]
pub struct Backends {
    /// The heartbeat socket's CURVE listener.
    pub curve: SocketAddr,
    /// The key service's plain listener.
    pub plain: SocketAddr,
}

/// How many connections the port holds at once: per address and in all.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub per_address: usize,
    pub total: usize,
}

/// The relay's thread.
pub struct Front {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Front {
    /// Serves `listener` on a thread of its own until `shutdown`.
    pub fn spawn(
        listener: std::net::TcpListener,
        backends: Backends,
        caps: Caps,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("heartbeat-front".into())
            .spawn(move || {
                runtime.block_on(async {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => serve(listener, backends, caps, shutdown).await,
                        Err(e) => {
                            tracing::error!(error = %e, "the heartbeat port cannot be served")
                        }
                    }
                });
            })?;
        Ok(Self {
            thread: Some(thread),
        })
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            // Stops once the shutdown token is cancelled.
            let _ = thread.join();
        }
    }
}

/// Open connections, per address.
#[derive(Default)]
struct Open {
    per_address: HashMap<IpAddr, usize>,
    total: usize,
    refused: usize,
    reported: Option<Instant>,
}

/// A connection counted in [`Open`] until it is dropped.
struct Counted {
    open: Arc<Mutex<Open>>,
    address: IpAddr,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.per_address.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.per_address.remove(&self.address);
            }
        }
    }
}

/// Counts a new connection, or refuses it past a cap.
fn admit(open: &Arc<Mutex<Open>>, address: IpAddr, caps: Caps) -> Option<Counted> {
    let mut guard = open.lock().unwrap_or_else(PoisonError::into_inner);
    let count = guard.per_address.get(&address).copied().unwrap_or(0);
    if count >= caps.per_address || guard.total >= caps.total {
        guard.refused += 1;
        let due = guard
            .reported
            .is_none_or(|at| at.elapsed() >= REPORT_INTERVAL);
        if due {
            tracing::warn!(
                peer = %address,
                refused = guard.refused,
                "refused heartbeat connections beyond the caps (limits.max_unauthenticated_per_address plus limits.max_users per address, limits.max_unauthenticated_total plus limits.max_users_total in all)"
            );
            guard.refused = 0;
            guard.reported = Some(Instant::now());
        }
        return None;
    }
    guard.per_address.insert(address, count + 1);
    guard.total += 1;
    Some(Counted {
        open: open.clone(),
        address,
    })
}

async fn serve(listener: TcpListener, backends: Backends, caps: Caps, shutdown: CancellationToken) {
    let open = Arc::new(Mutex::new(Open::default()));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, peer)) => {
                let Some(counted) = admit(&open, peer.ip(), caps) else {
                    continue;
                };
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let _counted = counted;
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        result = relay(client, backends) => {
                            if let Err(e) = result {
                                tracing::debug!(peer = %peer, "heartbeat connection ended: {e}");
                            }
                        }
                    }
                });
            }
            Err(e) => {
                // Out of descriptors, mostly: the listener stays readable,
                // so wait a little rather than spin.
                tracing::warn!(error = %e, "cannot accept on the heartbeat port");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

/// Why a relayed connection ended early.
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no ZMTP greeting within {HANDSHAKE:?}")]
    Timeout,
    #[error("not a ZMTP 3 greeting")]
    NotZmtp,
    #[error("mechanism {0:?} is neither CURVE nor NULL")]
    Mechanism(String),
}

/// Reads the client's greeting, connects to the listener of its mechanism,
/// passes the greeting on and the listener's back (after the part the
/// client already has), then copies both ways until either side closes.
async fn relay(mut client: TcpStream, backends: Backends) -> Result<(), RelayError> {
    configure(&client);
    let (mut server, greeting) = tokio::time::timeout(HANDSHAKE, async {
        client.write_all(&OPENING).await?;
        let mut greeting = [0u8; GREETING];
        client.read_exact(&mut greeting).await?;
        let backend = choose(&greeting, backends)?;
        let mut server = TcpStream::connect(backend).await?;
        configure(&server);
        server.write_all(&greeting).await?;
        let mut answer = [0u8; GREETING];
        server.read_exact(&mut answer).await?;
        Ok::<_, RelayError>((server, answer))
    })
    .await
    .map_err(|_| RelayError::Timeout)??;
    client.write_all(&greeting[OPENING.len()..]).await?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

/// The listener for a client's greeting.
fn choose(greeting: &[u8; GREETING], backends: Backends) -> Result<SocketAddr, RelayError> {
    let versioned = greeting[0] == 0xFF && greeting[9] & 1 == 1;
    if !versioned || greeting[10] < 3 {
        return Err(RelayError::NotZmtp);
    }
    let name = &greeting[MECHANISM];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    match &name[..end] {
        b"CURVE" => Ok(backends.curve),
        b"NULL" => Ok(backends.plain),
        other => Err(RelayError::Mechanism(
            String::from_utf8_lossy(other).into_owned(),
        )),
    }
}

/// No Nagle delay (libzmq sets the same on its connections), and keepalive
/// so that a peer gone behind a NAT is noticed.
fn configure(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let fd = stream.as_fd();
    let _ = rustix::net::sockopt::set_socket_keepalive(fd, true);
    let _ = rustix::net::sockopt::set_tcp_keepidle(fd, KEEPALIVE_IDLE);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends() -> Backends {
        Backends {
            curve: "127.0.0.1:1".parse().unwrap(),
            plain: "127.0.0.1:2".parse().unwrap(),
        }
    }

    fn greeting(major: u8, mechanism: &[u8]) -> [u8; GREETING] {
        let mut g = [0u8; GREETING];
        g[..10].copy_from_slice(&OPENING[..10]);
        g[10] = major;
        g[11] = 1;
        g[12..12 + mechanism.len()].copy_from_slice(mechanism);
        g
    }

    #[test]
    fn the_mechanism_chooses_the_listener() {
        let b = backends();
        assert_eq!(choose(&greeting(3, b"CURVE"), b).unwrap(), b.curve);
        assert_eq!(choose(&greeting(3, b"NULL"), b).unwrap(), b.plain);
        assert!(matches!(
            choose(&greeting(3, b"PLAIN"), b),
            Err(RelayError::Mechanism(_))
        ));
        assert!(matches!(
            choose(&greeting(2, b"NULL"), b),
            Err(RelayError::NotZmtp)
        ));
        assert!(matches!(
            choose(&[0x41; GREETING], b),
            Err(RelayError::NotZmtp)
        ));
    }

    #[test]
    fn caps_count_per_address_and_in_all() {
        let open = Arc::new(Mutex::new(Open::default()));
        let caps = Caps {
            per_address: 2,
            total: 3,
        };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = admit(&open, a, caps);
        let second = admit(&open, a, caps);
        assert!(first.is_some() && second.is_some());
        assert!(admit(&open, a, caps).is_none());
        let third = admit(&open, b, caps);
        assert!(third.is_some());
        assert!(admit(&open, b, caps).is_none(), "the total is reached");
        drop(first);
        assert!(admit(&open, a, caps).is_some());
    }
}
