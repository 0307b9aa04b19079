//! The server under test, as a separate process, with its CPU time and
//! memory read from /proc.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use replication_serve::client::{Client, ClientOptions, ServerTrust};

/// Whether the servers under test encrypt (`--encryption`): they then use
/// CURVE on all four ports, and every client of the tool does too.
static ENCRYPTED: AtomicBool = AtomicBool::new(false);

/// Makes every server and client of this run encrypt.
pub fn encrypt() {
    ENCRYPTED.store(true, Ordering::Relaxed);
}

/// `options`, encrypting when the run does (with the key the server gives:
/// the tool measures, it does not need to check whom it talks to).
pub fn client(options: ClientOptions) -> ClientOptions {
    if ENCRYPTED.load(Ordering::Relaxed) {
        options.trusting(ServerTrust::Unchecked)
    } else {
        options
    }
}

/// A running `replication-serve` on free local ports.
pub struct ServerProcess {
    child: Child,
    pub port: u16,
    /// A data directory to remove once the server is gone.
    pub scratch: Option<PathBuf>,
}

impl ServerProcess {
    /// Starts the binary on the first free base port from `first_port`, with
    /// extra arguments, and waits until it answers SERVER_INFO.
    pub fn start(binary: &Path, first_port: u16, extra: &[&str]) -> anyhow::Result<Self> {
        let mut port = first_port;
        let encrypted = ENCRYPTED.load(Ordering::Relaxed);
        let in_memory = !extra.contains(&"--data-dir");
        // A server in memory has no data directory to keep its key in: it
        // gets a scratch one, removed with the server.
        let key_dir = (encrypted && in_memory).then(scratch_dir);
        let mut encryption = Vec::new();
        if encrypted {
            encryption.extend(["--encryption".to_owned(), "required".to_owned()]);
        }
        if let Some(dir) = &key_dir {
            encryption.push("--server-key".to_owned());
            encryption.push(dir.join("server.key").display().to_string());
        }
        for _ in 0..50 {
            port = free_base(port);
            let mut child = Command::new(binary)
                .args([
                    "--bind",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-l",
                    "ERROR",
                ])
                .args(extra)
                .args(&encryption)
                .args(in_memory.then_some("--in-memory"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("cannot start {}", binary.display()))?;
            let mut probe = Client::connect(client(ClientOptions::new(port, "probe")))?;
            match probe.server_info(Duration::from_secs(5)) {
                Ok(_) => {
                    return Ok(Self {
                        child,
                        port,
                        scratch: key_dir,
                    });
                }
                Err(_) => {
                    // Lost a race for the port: try the next ones.
                    let _ = child.kill();
                    let _ = child.wait();
                    port += 4;
                }
            }
        }
        bail!("could not start the server on any port from {first_port}")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in bytes.
    pub fn rss(&self) -> u64 {
        process_rss(self.pid())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = self.scratch.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A new, empty directory path under the system's temporary directory.
pub fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("replication-bench-{}-{n}", std::process::id()))
}

/// A base port whose four ports are free now.
pub fn free_base(mut port: u16) -> u16 {
    loop {
        if (0..4).all(|i| std::net::TcpListener::bind(("127.0.0.1", port + i)).is_ok()) {
            return port;
        }
        port += 4;
    }
}

/// CPU time of a process: the sum over its threads of the nanosecond
/// counters in /proc/PID/task/TID/schedstat (far finer than the 10 ms
/// ticks of /proc/PID/stat, which matters for the idle figure).
pub fn process_cpu(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let mut total = 0u64;
    for task in tasks.flatten() {
        let path = task.path().join("schedstat");
        if let Ok(text) = std::fs::read_to_string(path) {
            total += text
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(total)
}

/// CPU time the hypervisor has taken from this virtual machine since it
/// booted, all CPUs together: the `steal` column of /proc/stat's `cpu`
/// line, in clock ticks. `None` where the kernel does not report it.
pub fn stolen() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: u64 = line.split_whitespace().nth(8)?.parse().ok()?;
    #[allow(unsafe_code)]
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second).ok().filter(|&t| t > 0)?;
    Some(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// Resident set size of a process, from /proc/PID/status.
pub fn process_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// CPU used by a process between two instants, as a share of one core.
pub struct CpuMeter {
    pid: u32,
    cpu: Duration,
    at: Instant,
}

impl CpuMeter {
    pub fn start(pid: u32) -> Self {
        Self {
            pid,
            cpu: process_cpu(pid),
            at: Instant::now(),
        }
    }

    /// (CPU time used, wall time elapsed) since the start.
    pub fn read(&self) -> (Duration, Duration) {
        (
            process_cpu(self.pid).saturating_sub(self.cpu),
            self.at.elapsed(),
        )
    }
}
