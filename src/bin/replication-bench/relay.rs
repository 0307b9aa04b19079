//! The relay to N readers: the most 1 KiB messages this machine carries
//! from one connection to N others. A bare process (std::net, no libzmq)
//! reads length-prefixed messages from one TCP connection and writes every
//! whole message it has read to each reader in one write; TCP's flow
//! control holds the writer back when a reader falls behind, so nothing is
//! lost. The server's fan-out is read against it.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use anyhow::{Context, bail};

use crate::child;
use crate::server::CpuMeter;
use crate::stats::now_ns;

/// Bytes the relay and each reader take from a connection at once.
const BUFFER: usize = 256 << 10;
/// Each message is a big-endian u32 length, then that many bytes.
const PREFIX: usize = 4;
/// Messages the writer puts in each write: about 64 KiB, as a writer that
/// sends as fast as it can batches its writes (libzmq's I/O thread does).
const WRITER_BATCH: usize = 64;

/// Each connection says what it is with one byte first.
const WRITER: u8 = b'W';
const READER: u8 = b'R';

/// The relay, in its own process: waits for `readers` readers and one
/// writer, then relays until the writer closes its connection.
pub fn serve(readers: usize) -> anyhow::Result<()> {
    let listener = child::listen()?;
    let mut writer = None;
    let mut outs = Vec::with_capacity(readers);
    while writer.is_none() || outs.len() < readers {
        let (mut conn, _) = listener.accept()?;
        conn.set_nodelay(true)?;
        let mut role = [0u8];
        conn.read_exact(&mut role)?;
        match role {
            [WRITER] => writer = Some(conn),
            [READER] => outs.push(conn),
            _ => bail!("a connection said it is {role:?}"),
        }
    }
    let mut writer = writer.context("no writer")?;
    let mut buffer = vec![0u8; BUFFER];
    let mut filled = 0;
    loop {
        let Some(free) = buffer.get_mut(filled..) else {
            bail!("the buffer overflowed");
        };
        let n = writer.read(free)?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let (whole, _) = whole_messages(buffer.get(..filled).unwrap_or_default());
        if whole == 0 && filled == BUFFER {
            bail!("a message longer than {BUFFER} bytes");
        }
        let Some(messages) = buffer.get(..whole) else {
            bail!("whole messages past the buffer");
        };
        for out in &mut outs {
            out.write_all(messages)?;
        }
        buffer.copy_within(whole..filled, 0);
        filled -= whole;
    }
}

/// The length of the longest run of whole messages at the start of
/// `bytes`, and how many messages it holds.
fn whole_messages(bytes: &[u8]) -> (usize, u64) {
    let (mut at, mut count) = (0usize, 0u64);
    while let Some(prefix) = bytes.get(at..at + PREFIX) {
        let mut length = [0u8; PREFIX];
        length.copy_from_slice(prefix);
        let end = at + PREFIX + u32::from_be_bytes(length) as usize;
        if end > bytes.len() {
            break;
        }
        at = end;
        count += 1;
    }
    (at, count)
}

/// Delivery rate and relay cost.
pub struct Relay {
    /// Messages per second delivered to each reader, from the first write
    /// to the last delivery.
    pub rate: f64,
    /// The relay's CPU time per message, in microseconds.
    pub cpu_us: f64,
}

/// Sends `messages` messages of `size` bytes through the relay to
/// `readers` readers, all watched by one thread of the tool as the
/// fan-out's readers are.
pub fn measure(messages: u64, size: usize, readers: usize) -> anyhow::Result<Relay> {
    let (relay, port) = child::spawn_listening(&["relay", "--readers", &readers.to_string()])?;
    let connect = |role: u8| -> anyhow::Result<TcpStream> {
        let mut conn = TcpStream::connect(("127.0.0.1", port))?;
        conn.set_nodelay(true)?;
        conn.write_all(&[role])?;
        Ok(conn)
    };
    let ins = (0..readers)
        .map(|_| connect(READER))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let counter = std::thread::spawn(move || count(ins, messages));
    let mut writer = connect(WRITER)?;
    let meter = CpuMeter::start(relay.pid());
    let start_ns = now_ns();
    let written = write_messages(&mut writer, messages, size);
    let _ = writer.shutdown(Shutdown::Write);
    let seen = join(counter)?;
    written?;
    let (cpu, _) = meter.read();
    let mut last_ns = start_ns;
    for (got, at) in seen {
        if got < messages {
            bail!("a reader of the relay received {got} of {messages} messages");
        }
        last_ns = last_ns.max(at);
    }
    Ok(Relay {
        rate: messages as f64 / ((last_ns - start_ns) as f64 / 1e9).max(1e-9),
        cpu_us: cpu.as_secs_f64() * 1e6 / messages as f64,
    })
}

fn join(counter: JoinHandle<anyhow::Result<Vec<(u64, u64)>>>) -> anyhow::Result<Vec<(u64, u64)>> {
    counter
        .join()
        .map_err(|_| anyhow::anyhow!("the relay's readers' thread panicked"))?
}

fn write_messages(writer: &mut TcpStream, messages: u64, size: usize) -> anyhow::Result<()> {
    let length = u32::try_from(size)?.to_be_bytes();
    let mut one = length.to_vec();
    one.resize(PREFIX + size, 0x5a);
    let batch = one.repeat(WRITER_BATCH);
    let mut left = messages;
    while left > 0 {
        let n = usize::try_from(left).map_or(WRITER_BATCH, |l| l.min(WRITER_BATCH));
        writer.write_all(batch.get(..n * one.len()).unwrap_or_default())?;
        left -= n as u64;
    }
    Ok(())
}

/// One reader's connection and what it has counted.
struct Reader {
    conn: TcpStream,
    buffer: Vec<u8>,
    filled: usize,
    count: u64,
    /// When the last message arrived, in ns of the tool's clock.
    last_ns: u64,
}

/// Counts each reader's messages until each has `expect`, its connection
/// ends, or 10 s pass without any: (count, time of the last) per reader.
fn count(conns: Vec<TcpStream>, expect: u64) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut readers: Vec<Reader> = conns
        .into_iter()
        .map(|conn| Reader {
            conn,
            buffer: vec![0u8; BUFFER],
            filled: 0,
            count: 0,
            last_ns: 0,
        })
        .collect();
    let mut fds: Vec<libc::pollfd> = readers
        .iter()
        .map(|r| libc::pollfd {
            fd: r.conn.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while readers.iter().any(|r| r.count < expect) {
        if !poll(&mut fds)? {
            break;
        }
        for (fd, reader) in fds.iter_mut().zip(&mut readers) {
            if fd.revents == 0 {
                continue;
            }
            if !reader.read()? {
                // Closed: poll no longer watches it.
                fd.fd = -1;
            }
        }
    }
    Ok(readers.iter().map(|r| (r.count, r.last_ns)).collect())
}

impl Reader {
    /// Reads what has arrived and counts the whole messages in it; false
    /// once the connection has ended.
    fn read(&mut self) -> anyhow::Result<bool> {
        let Some(free) = self.buffer.get_mut(self.filled..) else {
            bail!("a reader's buffer overflowed");
        };
        let n = match self.conn.read(free) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(true),
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Ok(false);
        }
        self.filled += n;
        let (whole, count) = whole_messages(self.buffer.get(..self.filled).unwrap_or_default());
        if count > 0 {
            self.count += count;
            self.last_ns = now_ns();
        }
        self.buffer.copy_within(whole..self.filled, 0);
        self.filled -= whole;
        Ok(true)
    }
}

/// Waits up to 10 s for any of `fds` to be readable; false on timeout.
fn poll(fds: &mut [libc::pollfd]) -> anyhow::Result<bool> {
    let count = libc::nfds_t::try_from(fds.len())?;
    loop {
        #[allow(unsafe_code)]
        // SAFETY: `fds` is a live slice of `count` pollfd structures that
        // poll may write to, and nothing else uses it meanwhile.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), count, 10_000) };
        if ready >= 0 {
            return Ok(ready > 0);
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != ErrorKind::Interrupted {
            return Err(error.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_messages_stop_before_a_partial_one() {
        let mut bytes = Vec::new();
        for payload in [&b"ab"[..], b"", b"cde"] {
            bytes.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
            bytes.extend_from_slice(payload);
        }
        let whole = bytes.len();
        assert_eq!(whole_messages(&bytes), (whole, 3));
        bytes.extend_from_slice(&[0, 0, 0, 9, 1, 2]);
        assert_eq!(whole_messages(&bytes), (whole, 3));
        assert_eq!(whole_messages(&bytes[..3]), (0, 0));
    }
}
