//! Big payloads beside small updates: two clients in room A exchange small
//! updates at a steady rate while a third client, in room B, uploads a
//! large scene, has it joined late and sends one large UPDATE. What each
//! big operation costs the small updates (their latency, the heartbeat's
//! lateness) and how fast it runs itself, with the disk's own sequential
//! speed measured in the same run for comparison.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use replication_serve::client::{Block, Client, ClientOptions};
use replication_serve::protocol::ServerMessage;
use rmpv::Value;

use crate::scenarios::{Setup, update_payloads};
use crate::server::scratch_dir;
use crate::stats::{TimedPayload, now_ns, quantile};

/// Deadline for each big operation.
const WAIT: Duration = Duration::from_secs(300);
/// The name of the operation that closes room B.
pub const CLOSING: &str = "closing";
/// Small updates a second from room A's writer.
const SMALL_RATE: f64 = 50.0;

/// Sizes of the big operations.
#[derive(Debug, Clone, Copy)]
pub struct BigPlan {
    /// Datablocks of the initial upload, and the size of each.
    pub upload_blocks: usize,
    pub upload_block_bytes: usize,
    /// The single large UPDATE.
    pub update_bytes: usize,
}

/// What one big operation cost, and how fast it went.
#[derive(Debug, Clone)]
pub struct BigOp {
    pub name: &'static str,
    pub bytes: u64,
    pub seconds: f64,
    /// Small updates sent while it ran, and their latencies.
    pub small_sent: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Small updates sent while it ran that never arrived.
    pub small_lost: usize,
    /// The longest wait between two PINGs room A's reader saw meanwhile.
    pub ping_gap_ms: f64,
}

/// The whole run against one server.
pub struct BigRun {
    pub ops: Vec<BigOp>,
    /// The server's peak resident memory, and the scene it held at the end.
    pub peak_rss: u64,
    pub scene_bytes: u64,
}

/// Room A's two clients: a writer at [`SMALL_RATE`] and a reader that
/// timestamps every arrival and notes the heartbeat's gaps.
struct SmallTraffic {
    stop: Arc<AtomicBool>,
    /// (send time, latency) of every delivered update, in ns.
    delivered: Arc<Mutex<Vec<(u64, u64)>>>,
    /// Send times of every update sent, in ns.
    sent: Arc<Mutex<Vec<u64>>>,
    /// (time seen, gap) of the reader's heartbeat: its longest gap since
    /// the last look, sampled every 50 ms.
    gaps: Arc<Mutex<Vec<(u64, u64)>>>,
    threads: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl SmallTraffic {
    fn start(ctx: &zmq::Context, port: u16) -> anyhow::Result<Self> {
        let target = Block {
            uuid: "stroke".to_owned(),
            type_id: "Stroke".to_owned(),
            owner: Some("COMMON".to_owned()),
            deps: Vec::new(),
            data: Value::Nil,
        };
        let mut writer = Client::connect_in(
            ctx,
            ClientOptions::admin(port, "a-writer", "admin").in_room("A"),
        )?;
        writer.authenticate(WAIT)?;
        writer.upload(std::slice::from_ref(&target), WAIT)?;
        let mut reader = joined(ctx, ClientOptions::new(port, "a-reader").in_room("A"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let gaps = Arc::new(Mutex::new(Vec::new()));
        let reading = {
            let (stop, delivered, gaps) = (stop.clone(), delivered.clone(), gaps.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut last_look = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(frames) =
                        reader.next_subscriber_frames(Duration::from_millis(50))?
                    {
                        let now = now_ns();
                        for payload in update_payloads(&frames) {
                            if let Some(at) = TimedPayload::sent_at(payload) {
                                lock(&delivered).push((at, now.saturating_sub(at)));
                            }
                        }
                    }
                    if last_look.elapsed() >= Duration::from_millis(50) {
                        last_look = Instant::now();
                        let gap = reader.take_ping_gap();
                        lock(&gaps).push((now_ns(), nanos(gap)));
                    }
                }
                Ok(())
            })
        };
        let writing = {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut payload = TimedPayload::new(1024);
                let started = Instant::now();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let due = started + Duration::from_secs_f64(n as f64 / SMALL_RATE);
                    // Waiting on the client answers its pings meanwhile.
                    loop {
                        let wait = due.saturating_duration_since(Instant::now());
                        if wait.is_zero() {
                            break;
                        }
                        writer.poll_once(i64::try_from(wait.as_millis()).unwrap_or(1).max(1))?;
                    }
                    let bytes = payload.stamped();
                    let at = TimedPayload::sent_at(bytes).unwrap_or_default();
                    writer.update_raw(&target, bytes)?;
                    lock(&sent).push(at);
                    n += 1;
                }
                Ok(())
            })
        };
        Ok(Self {
            stop,
            delivered,
            sent,
            gaps,
            threads: vec![reading, writing],
        })
    }

    /// What the small updates sent between `from` and `to` (ns) met,
    /// waiting a moment for the last of them to arrive.
    fn during(&self, name: &'static str, bytes: u64, from: u64, to: u64) -> BigOp {
        std::thread::sleep(Duration::from_millis(500));
        let mut latencies: Vec<u64> = lock(&self.delivered)
            .iter()
            .filter(|(at, _)| (from..to).contains(at))
            .map(|&(_, latency)| latency)
            .collect();
        let small_sent = lock(&self.sent)
            .iter()
            .filter(|at| (from..to).contains(*at))
            .count();
        // A gap ends when a PING arrives: the gaps noted up to a second
        // after the operation may have begun during it.
        let ping_gap = lock(&self.gaps)
            .iter()
            .filter(|(seen, _)| *seen >= from && *seen <= to + 1_000_000_000)
            .map(|&(_, gap)| gap)
            .max()
            .unwrap_or(0);
        let max = latencies.iter().copied().max().unwrap_or(0);
        BigOp {
            name,
            bytes,
            seconds: (to - from) as f64 / 1e9,
            small_sent,
            small_lost: small_sent.saturating_sub(latencies.len()),
            p50_ms: quantile(&mut latencies, 0.5) as f64 / 1e6,
            p99_ms: quantile(&mut latencies, 0.99) as f64 / 1e6,
            max_ms: max as f64 / 1e6,
            ping_gap_ms: ping_gap as f64 / 1e6,
        }
    }

    fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("a small-update client panicked"))??;
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn joined(ctx: &zmq::Context, options: ClientOptions) -> anyhow::Result<Client> {
    let mut c = Client::connect_in(ctx, options)?;
    c.authenticate(WAIT)?;
    c.download(WAIT, |_, _| {})?;
    Ok(c)
}

/// Runs the three big operations in room B against one server while room A
/// exchanges small updates.
pub fn run(setup: &Setup, plan: BigPlan) -> anyhow::Result<BigRun> {
    let server = setup.server()?;
    let ctx = zmq::Context::new();
    let port = server.port;
    let small = SmallTraffic::start(&ctx, port)?;
    // Let the small traffic settle, then measure it alone: the floor that
    // this machine's load sets, to read the figures below against.
    std::thread::sleep(Duration::from_secs(1));
    let mut ops = Vec::new();
    let from = now_ns();
    std::thread::sleep(Duration::from_secs(2));
    ops.push(small.during("nothing", 0, from, now_ns()));

    let mut host = Client::connect_in(
        &ctx,
        ClientOptions::admin(port, "b-host", "admin").in_room("B"),
    )?;
    host.authenticate(WAIT)?;
    let scene: Vec<Block> = (0..plan.upload_blocks)
        .map(|i| Block {
            uuid: format!("image-{i:03}"),
            type_id: "Image".to_owned(),
            owner: Some("COMMON".to_owned()),
            deps: Vec::new(),
            data: Value::Binary(vec![(i % 251) as u8; plan.upload_block_bytes]),
        })
        .collect();
    let scene_bytes = (plan.upload_blocks * plan.upload_block_bytes) as u64;
    let from = now_ns();
    host.upload(&scene, WAIT)?;
    let to = now_ns();
    drop(scene);
    ops.push(small.during("initial upload", scene_bytes, from, to));

    // The late joiner downloads on a thread of its own while the host
    // answers the server's PINGs, as any idle client does: on a loaded
    // machine the join may outlast the heartbeat's timeout.
    let from = now_ns();
    let joining = {
        let ctx = ctx.clone();
        std::thread::spawn(move || -> anyhow::Result<(Client, usize, u64)> {
            let mut late =
                Client::connect_in(&ctx, ClientOptions::new(port, "b-late").in_room("B"))?;
            late.authenticate(WAIT)?;
            let blocks = late.download(WAIT, |_, _| {})?;
            let to = now_ns();
            Ok((late, blocks.iter().map(|b| b.data.len()).sum(), to))
        })
    };
    while !joining.is_finished() {
        host.poll_once(50)?;
    }
    let (mut late, got, to) = joining
        .join()
        .map_err(|_| anyhow::anyhow!("the late joiner's thread panicked"))??;
    if got < scene_bytes as usize {
        bail!("the late joiner received {got} of {scene_bytes} bytes");
    }
    ops.push(small.during("late join", scene_bytes, from, to));
    // The late joiner receives the large update below: its own thread
    // reads it (and answers pings) while the host waits for the ACK.
    // Then the same UPDATE again, which replaces the data of the first
    // (freed by the server once the new data is in).
    let big = Block {
        uuid: "texture".to_owned(),
        type_id: "Image".to_owned(),
        owner: Some("COMMON".to_owned()),
        deps: Vec::new(),
        data: Value::Nil,
    };
    let data = replication_serve::protocol::codec::encode_value(&Value::Binary(vec![
            7u8;
            plan.update_bytes
        ]));
    for name in ["UPDATE", "UPDATE replacing it"] {
        let update_bytes = plan.update_bytes;
        let receiver = std::thread::spawn(move || -> anyhow::Result<Client> {
            late.wait_for(WAIT, |e| {
                e.payload.as_ref().is_some_and(|p| p.len() >= update_bytes)
            })
            .context("the late joiner never received the large update")?;
            Ok(late)
        });
        let from = now_ns();
        host.update_raw_confirmed(&big, &data, WAIT)?;
        let to = now_ns();
        late = receiver
            .join()
            .map_err(|_| anyhow::anyhow!("the late joiner's thread panicked"))??;
        ops.push(small.during(name, plan.update_bytes as u64, from, to));
    }
    drop(data);

    // Both leave, which closes room B and removes its record (the scene and
    // the UPDATE, in files when recorded). The closing lasts until the
    // server no longer lists the room; room A is watched for a second more,
    // while the files may still be removed.
    let from = now_ns();
    late.leave()?;
    host.leave()?;
    let mut probe = Client::connect_in(&ctx, ClientOptions::new(port, "b-probe"))?;
    let listed = loop {
        match probe.server_info(WAIT)? {
            ServerMessage::ServerInfo { rooms, .. } if rooms.iter().all(|r| r.name != "B") => {
                break now_ns();
            }
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    std::thread::sleep(Duration::from_secs(1));
    let mut closing = small.during(CLOSING, 0, from, now_ns());
    closing.seconds = (listed - from) as f64 / 1e9;
    ops.push(closing);

    let peak_rss = peak_rss(server.pid());
    small.stop()?;
    Ok(BigRun {
        ops,
        peak_rss,
        scene_bytes: scene_bytes + plan.update_bytes as u64,
    })
}

/// The peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The disk's sequential write speed with a sync at the end, in MB/s:
/// `dd if=/dev/zero bs=1M count=N conv=fdatasync` into the directory the
/// recorded servers write to.
pub fn disk_speed(megabytes: usize) -> anyhow::Result<f64> {
    let dir = scratch_dir();
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("dd.bin");
    let result = dd(&file, megabytes);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn dd(file: &Path, megabytes: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", file.display()))
        .args(["bs=1M", &format!("count={megabytes}"), "conv=fdatasync"])
        .output()
        .context("cannot run dd")?;
    let seconds = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("dd failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok((megabytes << 20) as f64 / seconds / 1e6)
}
