//! One stream: the fastest this machine moves bytes from one process to
//! another, over one bare loopback TCP connection (std::net, no libzmq, no
//! protocol) written and read 256 KiB at a time. The late joins are read
//! against it: the server's snapshot is one such stream with a protocol on
//! top.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::child::{self, KillOnDrop};

/// Bytes of each write and read: large enough that the figure is the
/// kernel's copies and the loopback's, not the system calls'. Buffers of
/// 1 MiB measured 20 to 35 % slower on this machine than 64 to 256 KiB
/// (they no longer fit in the cores' own caches).
const CHUNK: usize = 256 << 10;

/// The writer, in its own process: each connection says how many bytes it
/// wants (a big-endian u64), gets that many, and is closed.
pub fn serve() -> anyhow::Result<()> {
    let listener = child::listen()?;
    let chunk = vec![0x5a_u8; CHUNK];
    for conn in listener.incoming() {
        // A reader that goes away early fails its own transfer, not the
        // next ones.
        if let Err(e) = conn
            .map_err(anyhow::Error::from)
            .and_then(|c| send(c, &chunk))
        {
            eprintln!("one stream: {e:#}");
        }
    }
    Ok(())
}

fn send(mut conn: TcpStream, chunk: &[u8]) -> anyhow::Result<()> {
    // Without this the last partial segment could wait for a delayed ACK.
    conn.set_nodelay(true)?;
    let mut wanted = [0u8; 8];
    conn.read_exact(&mut wanted)?;
    let mut left = u64::from_be_bytes(wanted);
    while left > 0 {
        let n = usize::try_from(left).map_or(chunk.len(), |l| l.min(chunk.len()));
        let Some(part) = chunk.get(..n) else {
            bail!("no chunk of {n} bytes");
        };
        conn.write_all(part)?;
        left -= n as u64;
    }
    Ok(())
}

/// The writer's process and the reader's buffer, kept between transfers.
pub struct OneStream {
    writer: KillOnDrop,
    port: u16,
    buffer: Vec<u8>,
}

impl OneStream {
    /// Starts the writer and moves 16 MiB once, so that neither process
    /// pays its first page faults in a measured transfer.
    pub fn start() -> anyhow::Result<Self> {
        let (writer, port) = child::spawn_listening(&["stream"])?;
        let mut stream = Self {
            writer,
            port,
            // Filled, so that its pages exist before the first read.
            buffer: vec![1; CHUNK],
        };
        stream.transfer(16 << 20)?;
        Ok(stream)
    }

    /// The time to connect, ask for `bytes` and read them all: what a late
    /// joiner does, without the protocol.
    pub fn transfer(&mut self, bytes: u64) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut conn = TcpStream::connect(("127.0.0.1", self.port))?;
        conn.set_nodelay(true)?;
        conn.write_all(&bytes.to_be_bytes())?;
        let mut got = 0u64;
        while got < bytes {
            match conn.read(&mut self.buffer)? {
                0 => bail!(
                    "the stream (process {}) ended after {got} of {bytes} bytes",
                    self.writer.pid()
                ),
                n => got += n as u64,
            }
        }
        Ok(started.elapsed())
    }
}
