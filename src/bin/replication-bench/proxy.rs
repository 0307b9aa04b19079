//! A TCP proxy in front of the four ports that holds every chunk of bytes
//! for a fixed time in each direction: a long link on loopback, for kernels
//! without netem. It also counts the bytes the server sends through it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::server::free_base;

/// The proxy's four ports; it runs until the process ends.
pub struct DelayProxy {
    pub port: u16,
    /// Bytes read from the server so far, on all four ports.
    from_server: Arc<AtomicU64>,
}

impl DelayProxy {
    /// Listens on four free ports and forwards each to `server_base + i`.
    pub fn start(server_base: u16, delay: Duration) -> anyhow::Result<Self> {
        let base = free_base(server_base + 100);
        let from_server = Arc::new(AtomicU64::new(0));
        for i in 0..4 {
            let listener = TcpListener::bind(("127.0.0.1", base + i))?;
            let target = server_base + i;
            let counted = from_server.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming().flatten() {
                    let _ = conn.set_nodelay(true);
                    if let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) {
                        let _ = upstream.set_nodelay(true);
                        link(conn, upstream, delay, &counted);
                    }
                }
            });
        }
        Ok(Self {
            port: base,
            from_server,
        })
    }

    /// Bytes the server has sent through the proxy: once a client has
    /// received a reply, they include all of it, since they are counted
    /// as they are read from the server.
    pub fn bytes_from_server(&self) -> u64 {
        self.from_server.load(Ordering::Relaxed)
    }
}

/// Pumps both directions of a connection through delay lines, counting
/// what comes from the server.
fn link(client: TcpStream, server: TcpStream, delay: Duration, from_server: &Arc<AtomicU64>) {
    for (from, to, counted) in [
        (client.try_clone(), server.try_clone(), None),
        (
            server.try_clone(),
            client.try_clone(),
            Some(from_server.clone()),
        ),
    ] {
        if let (Ok(from), Ok(to)) = (from, to) {
            pump(from, to, delay, counted);
        }
    }
}

/// Reads chunks as they come and writes each one `delay` later, so that the
/// delay adds latency without limiting bandwidth.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration, counted: Option<Arc<AtomicU64>>) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Some(counted) = &counted {
                        counted.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
