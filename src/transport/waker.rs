//! Wakes the transport thread out of `zmq::poll` when the core queues work,
//! through a socket pair whose read end is polled beside the ZeroMQ sockets.
//! A flag makes sure at most one byte is written per sleep, not one per
//! message.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The core's end.
#[derive(Debug, Clone)]
pub struct Waker {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Set by the transport right before it sleeps.
    armed: AtomicBool,
    writer: UnixStream,
}

/// The transport's end.
#[derive(Debug)]
pub struct WakeReceiver {
    inner: Arc<Shared>,
    reader: UnixStream,
}

impl Waker {
    pub fn new() -> std::io::Result<(Self, WakeReceiver)> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        let inner = Arc::new(Shared {
            armed: AtomicBool::new(false),
            writer,
        });
        Ok((
            Self {
                inner: inner.clone(),
            },
            WakeReceiver { inner, reader },
        ))
    }

    /// Wakes the transport if it is asleep (or about to be).
    pub fn wake(&self) {
        if self.inner.armed.swap(false, Ordering::SeqCst) {
            // A full pipe already holds a wake-up: WouldBlock is fine.
            let _ = (&self.inner.writer).write(&[1]);
        }
    }
}

impl WakeReceiver {
    /// Declares that the transport is about to sleep.
    pub fn arm(&self) {
        self.inner.armed.store(true, Ordering::SeqCst);
    }

    /// Declares that the transport is awake and drains pending wake-ups.
    pub fn disarm(&mut self) {
        self.inner.armed.store(false, Ordering::SeqCst);
        let mut buf = [0u8; 64];
        while matches!(self.reader.read(&mut buf), Ok(n) if n > 0) {}
    }

    /// The descriptor to poll for readability.
    pub fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.reader.as_raw_fd()
    }
}
