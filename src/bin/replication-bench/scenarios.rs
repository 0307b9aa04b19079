//! One function per benchmark scenario. Each starts its own server, drives
//! it with the library's client, and returns what it measured.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use replication_serve::client::{Block, Client, ClientOptions, Received};
use replication_serve::protocol::patch::{Patch, PatchOp, PathStep};
use rmpv::Value;

use crate::proxy::DelayProxy;
use crate::python::{self, PythonJoin};
use crate::server::{self, CpuMeter, ServerProcess};
use crate::stats::{TimedPayload, now_ns, quantile};

/// Deadline for anything a scenario waits for.
const WAIT: Duration = Duration::from_secs(120);

/// What every scenario needs.
pub struct Setup {
    pub binary: PathBuf,
    pub first_port: u16,
    /// How the server records the session.
    pub storage: Storage,
    /// The Python interpreter that has the Python client, for the joins
    /// that are also made with it.
    pub python: Option<PathBuf>,
}

/// The server's recording mode for a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// `--in-memory`: nothing recorded.
    InMemory,
    /// A data directory with `--durability normal` (the default).
    Normal,
    /// A data directory with `--durability strict`.
    Strict,
}

impl Storage {
    pub fn name(self) -> &'static str {
        match self {
            Self::InMemory => "in memory",
            Self::Normal => "recorded, normal",
            Self::Strict => "recorded, strict",
        }
    }
}

impl Setup {
    pub fn server(&self) -> anyhow::Result<ServerProcess> {
        let durability = match self.storage {
            Storage::InMemory => {
                return ServerProcess::start(&self.binary, self.first_port, &[]);
            }
            Storage::Normal => "normal",
            Storage::Strict => "strict",
        };
        let dir = crate::server::scratch_dir();
        let dir_arg = dir.to_string_lossy().into_owned();
        let mut server = ServerProcess::start(
            &self.binary,
            self.first_port,
            &[
                "--data-dir",
                &dir_arg,
                "--durability",
                durability,
                "--autosave",
                "0",
            ],
        )?;
        server.scratch = Some(dir);
        Ok(server)
    }
}

fn admin(ctx: &zmq::Context, port: u16) -> anyhow::Result<Client> {
    let mut c = Client::connect_in(
        ctx,
        server::client(ClientOptions::admin(port, "host", "admin")),
    )?;
    c.authenticate(WAIT)?;
    Ok(c)
}

fn joiner(ctx: &zmq::Context, port: u16, name: &str) -> anyhow::Result<Client> {
    joiner_with(ctx, ClientOptions::new(port, name))
}

fn joiner_with(ctx: &zmq::Context, options: ClientOptions) -> anyhow::Result<Client> {
    let mut c = Client::connect_in(ctx, server::client(options))?;
    c.authenticate(WAIT)?;
    c.download(WAIT, |_, _| {})?;
    Ok(c)
}

fn block(uuid: &str, data: Value) -> Block {
    Block {
        uuid: uuid.to_owned(),
        type_id: "Mesh".to_owned(),
        owner: Some("COMMON".to_owned()),
        deps: Vec::new(),
        data,
    }
}

/// A scene of `count` datablocks of `size` bytes of binary data.
fn scene(count: usize, size: usize) -> Vec<Block> {
    (0..count)
        .map(|i| {
            block(
                &format!("block-{i:06}"),
                Value::Binary(vec![(i % 251) as u8; size]),
            )
        })
        .collect()
}

/// Late join: time for a new client to authenticate and download a scene.
#[derive(Debug, Clone, Copy)]
pub struct Join {
    /// Datablocks in the scene, and the bytes of binary data in each.
    pub count: usize,
    pub size: usize,
    /// Through a proxy that delays every chunk of bytes by this much in
    /// each direction.
    pub delay: Option<Duration>,
    /// The joiner asks for DATABLOCKS (protocol section 16); without, each
    /// datablock is a message of its own.
    pub batches: bool,
    /// After the timed join, a second joiner (the same options, no delay)
    /// joins through a proxy that counts the bytes the server sends it.
    pub count_bytes: bool,
    /// Then the Python client joins too (directly), when there is one.
    pub python: bool,
}

/// What a late join measured.
pub struct LateJoin {
    pub seconds: f64,
    pub rss_empty: u64,
    pub rss_loaded: u64,
    /// The Python client's join, with `python` and an interpreter.
    pub python: Option<PythonJoin>,
    /// Bytes the server sent the second joiner, with `count_bytes`.
    pub wire_bytes: Option<u64>,
}

pub fn late_join(setup: &Setup, join: Join) -> anyhow::Result<LateJoin> {
    let server = setup.server()?;
    let rss_empty = server.rss();
    let ctx = zmq::Context::new();
    let mut host = admin(&ctx, server.port)?;
    host.upload(&scene(join.count, join.size), WAIT)?;
    let rss_loaded = server.rss();
    let proxy = join
        .delay
        .map(|d| DelayProxy::start(server.port, d))
        .transpose()?;
    let port = proxy.as_ref().map_or(server.port, |p| p.port);
    let started = Instant::now();
    let joined = download(&ctx, port, "joiner", join)?;
    let seconds = started.elapsed().as_secs_f64();
    drop(joined);
    let wire_bytes = if join.count_bytes {
        let counter = DelayProxy::start(server.port, Duration::ZERO)?;
        let _counted = download(&ctx, counter.port, "joiner-2", join)?;
        Some(counter.bytes_from_server())
    } else {
        None
    };
    let python = match (&setup.python, join.python) {
        (Some(python), true) => {
            let config = server::scratch_dir();
            let joined = python::join(
                python,
                server.port,
                join.count,
                join.count * join.size,
                &config,
            );
            let _ = std::fs::remove_dir_all(&config);
            Some(joined?)
        }
        _ => None,
    };
    Ok(LateJoin {
        seconds,
        rss_empty,
        rss_loaded,
        python,
        wire_bytes,
    })
}

/// A new client joins on `port` and downloads the whole scene. Both are
/// returned, so that the caller's timing does not include freeing them.
fn download(
    ctx: &zmq::Context,
    port: u16,
    name: &str,
    join: Join,
) -> anyhow::Result<(Client, Vec<Received>)> {
    let options = ClientOptions {
        batches: join.batches,
        ..ClientOptions::new(port, name)
    };
    let mut joiner = Client::connect_in(ctx, server::client(options))?;
    joiner.authenticate(WAIT)?;
    let got = joiner.download(WAIT, |_, _| {})?;
    if got.len() != join.count {
        bail!("downloaded {} of {} datablocks", got.len(), join.count);
    }
    let bytes: usize = got.iter().map(|b| b.data.len()).sum();
    if bytes < join.count * join.size {
        bail!(
            "downloaded {bytes} bytes of data, not {}",
            join.count * join.size
        );
    }
    Ok((joiner, got))
}

/// What one reader saw.
struct Seen {
    count: u64,
    /// Send-to-receive latencies in nanoseconds.
    latencies: Vec<u64>,
    last_ns: u64,
}

/// Starts one thread that joins every reader in `options`, waits at
/// `ready`, then counts each reader's forwarded updates until each has
/// `expect` or 10 s pass without any, keeping in `slowest` the count of the
/// reader that has the fewest. One thread watches them all, as the
/// ceiling's readers are watched, so that the harness's own wake-ups on this
/// small machine (one per reader per message, with a thread each) weigh as
/// little as they can on what is measured.
fn start_readers(
    ctx: &zmq::Context,
    options: Vec<ClientOptions>,
    expect: u64,
    ready: Arc<Barrier>,
    slowest: Arc<AtomicU64>,
) -> JoinHandle<anyhow::Result<Vec<Seen>>> {
    let ctx = ctx.clone();
    std::thread::spawn(move || {
        let mut clients = options
            .into_iter()
            .map(|o| joiner_with(&ctx, o))
            .collect::<anyhow::Result<Vec<_>>>()?;
        ready.wait();
        let capacity = usize::try_from(expect).unwrap_or(0).min(1 << 22);
        let mut seen: Vec<Seen> = clients
            .iter()
            .map(|_| Seen {
                count: 0,
                latencies: Vec::with_capacity(capacity),
                last_ns: 0,
            })
            .collect();
        let mut next = 0;
        while seen.iter().any(|s| s.count < expect) {
            let Some((i, frames)) =
                Client::next_subscriber_frames_of(&mut clients, next, Duration::from_secs(10))?
            else {
                break;
            };
            record(&mut seen[i], &frames);
            let fewest = seen.iter().map(|s| s.count).min().unwrap_or(0);
            slowest.store(fewest, Ordering::Relaxed);
            next = i + 1;
        }
        Ok(seen)
    })
}

/// Just enough of a subscriber header to find the updates in a message.
#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    lengths: Vec<u64>,
}

/// The data of each forwarded update in a subscriber message: one for an
/// UPDATE, one per update for an UPDATES, none for anything else. The
/// headers are not decoded beyond the type and the lengths.
pub(crate) fn update_payloads(frames: &[zmq::Message]) -> Vec<&[u8]> {
    let (Some(header), Some(data)) = (frames.first(), frames.get(1)) else {
        return Vec::new();
    };
    let Ok(envelope) = rmp_serde::from_slice::<Envelope>(header) else {
        return Vec::new();
    };
    match envelope.kind.as_str() {
        "UPDATE" => vec![&data[..]],
        "UPDATES" => {
            let mut offset = 0usize;
            let mut out = Vec::with_capacity(envelope.lengths.len());
            for length in envelope.lengths {
                let end = offset.saturating_add(usize::try_from(length).unwrap_or(usize::MAX));
                let Some(slice) = data.get(offset..end) else {
                    break;
                };
                out.push(slice);
                offset = end;
            }
            out
        }
        _ => Vec::new(),
    }
}

/// Fan-out or paced load: one writer, `readers` readers.
pub struct Fanout {
    /// Updates per second, from the first send to the last delivery.
    pub rate: f64,
    /// Server CPU time per update, in microseconds.
    pub cpu_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Updates some reader did not receive.
    pub lost: u64,
}

/// How the fan-out's clients use batches (protocol section 15).
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Updates the writer puts in each UPDATES (1: single UPDATEs).
    pub writer: usize,
    /// The readers ask for UPDATES.
    pub readers: bool,
}

impl Batching {
    /// Single updates from the writer; readers take batches.
    pub const READERS: Self = Self {
        writer: 1,
        readers: true,
    };
}

/// Updates the writer may be ahead of the slowest reader. Without a bound,
/// a tool whose readers fall behind (one thread reads for all eight, on two
/// cores shared with the server) would let the server's outboxes grow until
/// it disconnects a reader as too slow, which is its slow-consumer policy at
/// work, not a loss; the crowd scenario measures that policy. 10,000 updates
/// of 1 KB is a tenth of an outbox's message limit.
const WRITER_LEAD: u64 = 10_000;

/// Sends `updates` updates of `size` bytes, as fast as the server takes
/// them and the readers keep up (`rate` None; see [`WRITER_LEAD`]) or
/// paced at `rate` per second.
pub fn fanout(
    setup: &Setup,
    updates: u64,
    size: usize,
    readers: usize,
    rate: Option<f64>,
    batching: Batching,
) -> anyhow::Result<Fanout> {
    let server = setup.server()?;
    let ctx = zmq::Context::new();
    let mut host = admin(&ctx, server.port)?;
    host.upload(&[block("stroke", Value::Nil)], WAIT)?;
    let ready = Arc::new(Barrier::new(2));
    let options = (0..readers)
        .map(|i| {
            server::client(ClientOptions {
                batches: batching.readers,
                ..ClientOptions::new(server.port, &format!("reader-{i}"))
            })
        })
        .collect();
    let slowest = Arc::new(AtomicU64::new(0));
    let watcher = start_readers(&ctx, options, updates, ready.clone(), slowest.clone());
    ready.wait();
    let meter = CpuMeter::start(server.pid());
    let group = batching.writer.max(1) as u64;
    let mut payloads: Vec<TimedPayload> = (0..group).map(|_| TimedPayload::new(size)).collect();
    let target = block("stroke", Value::Nil);
    let start_ns = now_ns();
    let started = Instant::now();
    let mut i = 0;
    while i < updates {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        while i >= slowest.load(Ordering::Relaxed) + WRITER_LEAD && !watcher.is_finished() {
            std::thread::sleep(Duration::from_micros(100));
        }
        let n = group.min(updates - i);
        if n == 1 {
            host.update_raw(&target, payloads[0].stamped())?;
        } else {
            let items: Vec<(&Block, &[u8])> = payloads
                .iter_mut()
                .take(n as usize)
                .map(|p| (&target, p.stamped()))
                .collect();
            host.updates_raw(&items)?;
        }
        i += n;
    }
    let mut latencies = Vec::new();
    let mut lost = 0;
    let mut last_ns = start_ns;
    let seen = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("the readers' thread panicked"))??;
    for seen in seen {
        lost += updates - seen.count.min(updates);
        last_ns = last_ns.max(seen.last_ns);
        latencies.extend(seen.latencies);
    }
    let (cpu, _) = meter.read();
    let seconds = (last_ns - start_ns) as f64 / 1e9;
    Ok(Fanout {
        rate: updates as f64 / seconds,
        cpu_us: cpu.as_secs_f64() * 1e6 / updates as f64,
        p50_us: quantile(&mut latencies, 0.5) as f64 / 1e3,
        p99_us: quantile(&mut latencies, 0.99) as f64 / 1e3,
        lost,
    })
}

/// A one-value patch to a large datablock: delivery latency and server CPU
/// per patch.
pub struct BigPatch {
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_us: f64,
}

pub fn big_patch(setup: &Setup, megabytes: usize, patches: u64) -> anyhow::Result<BigPatch> {
    let server = setup.server()?;
    let ctx = zmq::Context::new();
    let mut host = admin(&ctx, server.port)?;
    // A mesh-like value: about `megabytes` MB of floats (9 bytes each).
    let floats = megabytes * 1_000_000 / 9;
    let mesh = Value::Map(vec![(
        Value::from("vertices"),
        Value::Array((0..floats).map(|i| Value::F64(i as f64)).collect()),
    )]);
    host.upload(&[block("mesh", mesh)], WAIT)?;
    let mut reader = joiner(&ctx, server.port, "reader")?;
    let mut latencies = Vec::new();
    let mut meter = None;
    // The first patch decodes the datablock once; measure the others.
    for i in 0..=patches {
        if i == 1 {
            meter = Some(CpuMeter::start(server.pid()));
        }
        let patch = Patch {
            ops: vec![PatchOp::Set {
                path: vec![
                    PathStep::Key("vertices".into()),
                    PathStep::Index(i % floats as u64),
                ],
                value: Value::F64(-1.0),
            }],
        };
        let sent = now_ns();
        host.patch("mesh", &patch, None)?;
        let frames = reader
            .next_subscriber_frames(WAIT)?
            .context("the patch never arrived")?;
        if frames.len() != 2 {
            bail!("unexpected message with {} frames", frames.len());
        }
        if i > 0 {
            latencies.push(now_ns() - sent);
        }
    }
    let (cpu, _) = meter.map(|m| m.read()).unwrap_or_default();
    Ok(BigPatch {
        p50_us: quantile(&mut latencies, 0.5) as f64 / 1e3,
        p99_us: quantile(&mut latencies, 0.99) as f64 / 1e3,
        cpu_us: cpu.as_secs_f64() * 1e6 / patches as f64,
    })
}

/// Server CPU while `clients` connected clients only answer pings, as a
/// share of one core.
pub fn idle(setup: &Setup, clients: usize, seconds: f64) -> anyhow::Result<f64> {
    let server = setup.server()?;
    let ctx = zmq::Context::new();
    let mut host = admin(&ctx, server.port)?;
    host.upload(&[], WAIT)?;
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let stop_rx = Arc::new(std::sync::Mutex::new(stop_rx));
    let ready = Arc::new(Barrier::new(clients + 1));
    let handles: Vec<JoinHandle<anyhow::Result<()>>> = (0..clients)
        .map(|i| {
            let (ctx, ready, stop) = (ctx.clone(), ready.clone(), stop_rx.clone());
            let port = server.port;
            std::thread::spawn(move || {
                let mut c = joiner(&ctx, port, &format!("idle-{i}"))?;
                ready.wait();
                loop {
                    c.next_event(Duration::from_millis(200))?;
                    let stopped = stop.lock().map(|rx| rx.try_recv().is_ok()).unwrap_or(true);
                    if stopped {
                        return Ok(());
                    }
                }
            })
        })
        .collect();
    ready.wait();
    // Let the joins' presence traffic settle before measuring.
    std::thread::sleep(Duration::from_secs(1));
    let meter = CpuMeter::start(server.pid());
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let (cpu, wall) = meter.read();
    for _ in 0..clients {
        let _ = stop_tx.send(());
    }
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
    }
    drop(host);
    Ok(cpu.as_secs_f64() / wall.as_secs_f64())
}

/// Many clients, a few writing at a steady rate: does everyone get
/// everything, how fast, and what does one stalled client change?
pub struct Crowd {
    pub delivered: u64,
    pub expected: u64,
    pub p99_us: f64,
    pub rss: u64,
    pub cpu_share: f64,
}

pub fn crowd(
    setup: &Setup,
    clients: usize,
    writers: usize,
    rate: f64,
    seconds: f64,
    stalled: bool,
) -> anyhow::Result<Crowd> {
    let server = setup.server()?;
    let ctx = zmq::Context::new();
    let mut host = admin(&ctx, server.port)?;
    let blocks: Vec<Block> = (0..writers)
        .map(|w| block(&format!("stroke-{w}"), Value::Nil))
        .collect();
    host.upload(&blocks, WAIT)?;
    let per_writer = (rate * seconds) as u64;
    let total = per_writer * writers as u64;
    let ready = Arc::new(Barrier::new(clients + 1));
    let mut handles = Vec::new();
    for i in 0..clients {
        let (ctx, ready) = (ctx.clone(), ready.clone());
        let port = server.port;
        let writing = i < writers;
        let expect = if writing { total - per_writer } else { total };
        handles.push(std::thread::spawn(move || -> anyhow::Result<Seen> {
            let mut c = joiner(&ctx, port, &format!("user-{i}"))?;
            ready.wait();
            if !writing {
                return watch(&mut c, expect);
            }
            // Writers interleave sending with reading what the others send.
            let mut payload = TimedPayload::new(1024);
            let target = block(&format!("stroke-{i}"), Value::Nil);
            let started = Instant::now();
            let mut seen = Seen {
                count: 0,
                latencies: Vec::new(),
                last_ns: 0,
            };
            for n in 0..per_writer {
                let due = started + Duration::from_secs_f64(n as f64 / rate);
                drain_until(&mut c, &mut seen, due)?;
                c.update_raw(&target, payload.stamped())?;
            }
            let rest = watch(&mut c, expect - seen.count.min(expect))?;
            seen.count += rest.count;
            seen.latencies.extend(rest.latencies);
            Ok(seen)
        }));
    }
    let stalled_client = if stalled {
        let mut c = Client::connect_in(
            &ctx,
            server::client(ClientOptions::new(server.port, "stalled")),
        )?;
        c.authenticate(WAIT)?;
        c.subscribe(None)?;
        Some(c)
    } else {
        None
    };
    ready.wait();
    let meter = CpuMeter::start(server.pid());
    let mut delivered = 0;
    let mut expected = 0;
    let mut latencies = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        let seen = h.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        delivered += seen.count;
        expected += if i < writers {
            total - per_writer
        } else {
            total
        };
        latencies.extend(seen.latencies);
    }
    let (cpu, wall) = meter.read();
    let rss = server.rss();
    drop(stalled_client);
    Ok(Crowd {
        delivered,
        expected,
        p99_us: quantile(&mut latencies, 0.99) as f64 / 1e3,
        rss,
        cpu_share: cpu.as_secs_f64() / wall.as_secs_f64(),
    })
}

fn watch(c: &mut Client, expect: u64) -> anyhow::Result<Seen> {
    let mut seen = Seen {
        count: 0,
        latencies: Vec::new(),
        last_ns: 0,
    };
    while seen.count < expect {
        let Some(frames) = c.next_subscriber_frames(Duration::from_secs(10))? else {
            break;
        };
        record(&mut seen, &frames);
    }
    Ok(seen)
}

fn drain_until(c: &mut Client, seen: &mut Seen, due: Instant) -> anyhow::Result<()> {
    loop {
        let now = Instant::now();
        let wait = due.saturating_duration_since(now);
        match c.next_subscriber_frames(wait)? {
            Some(frames) => record(seen, &frames),
            None => return Ok(()),
        }
        if Instant::now() >= due {
            return Ok(());
        }
    }
}

fn record(seen: &mut Seen, frames: &[zmq::Message]) {
    let now = now_ns();
    for payload in update_payloads(frames) {
        if let Some(sent) = TimedPayload::sent_at(payload) {
            seen.latencies.push(now.saturating_sub(sent));
            seen.count += 1;
            seen.last_ns = now;
        }
    }
}

/// Restart after a crash: a recorded server holding `count` datablocks of
/// `size` bytes is killed with SIGKILL, then started again on the same data
/// directory. Measures the time from the new process's start until it
/// answers SERVER_INFO (the session restored), and until a late joiner has
/// downloaded every datablock.
pub struct Recovery {
    pub serving_s: f64,
    pub joined_s: f64,
    pub disk_bytes: u64,
}

pub fn recovery(
    setup: &Setup,
    durability: &str,
    count: usize,
    size: usize,
) -> anyhow::Result<Recovery> {
    let dir = crate::server::scratch_dir();
    let dir_arg = dir.to_string_lossy().into_owned();
    let args = [
        "--data-dir",
        &dir_arg,
        "--durability",
        durability,
        "--autosave",
        "0",
    ];
    let result = (|| {
        let first = ServerProcess::start(&setup.binary, setup.first_port, &args)?;
        let ctx = zmq::Context::new();
        let mut host = admin(&ctx, first.port)?;
        let blocks = scene(count, size);
        host.upload(&blocks, WAIT)?;
        drop(host);
        // Drop kills the process with SIGKILL.
        drop(first);
        let disk_bytes = std::fs::read_dir(&dir)?
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .filter(std::fs::Metadata::is_file)
            .map(|m| m.len())
            .sum();
        let started = Instant::now();
        let second = ServerProcess::start(&setup.binary, setup.first_port, &args)?;
        let serving_s = started.elapsed().as_secs_f64();
        let mut joiner = Client::connect_in(
            &ctx,
            server::client(ClientOptions::new(second.port, "joiner")),
        )?;
        joiner.authenticate(WAIT)?;
        let got = joiner.download(WAIT, |_, _| {})?;
        let joined_s = started.elapsed().as_secs_f64();
        if got.len() != count {
            bail!("restored {} of {count} datablocks", got.len());
        }
        Ok(Recovery {
            serving_s,
            joined_s,
            disk_bytes,
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
