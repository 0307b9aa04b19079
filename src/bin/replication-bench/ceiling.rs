//! The physical ceiling: the same message sizes and fan-out through a bare
//! libzmq forwarder (PULL in, ROUTER out, no server logic), in its own
//! process so that its CPU is measured like the server's.

use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::child::KillOnDrop;
use crate::server::{CpuMeter, free_base};
use crate::stats::{TimedPayload, now_ns, quantile};

/// Runs the forwarder: reads [token, header, payload] on base+2 and sends
/// [identity, header, payload] to every DEALER that said hello on base+1.
pub fn serve_forwarder(base: u16, readers: usize) -> anyhow::Result<()> {
    let ctx = zmq::Context::new();
    let pull = ctx.socket(zmq::PULL)?;
    pull.bind(&format!("tcp://127.0.0.1:{}", base + 2))?;
    let router = ctx.socket(zmq::ROUTER)?;
    router.set_router_mandatory(true)?;
    router.bind(&format!("tcp://127.0.0.1:{}", base + 1))?;
    let mut peers = Vec::new();
    while peers.len() < readers {
        let frames = router.recv_multipart(0)?;
        if let Some(id) = frames.into_iter().next() {
            router.send(&id[..], zmq::SNDMORE)?;
            router.send("ready", 0)?;
            peers.push(id);
        }
    }
    loop {
        let frames = pull.recv_multipart(0)?;
        let (Some(header), Some(payload)) = (frames.get(1), frames.get(2)) else {
            continue;
        };
        for id in &peers {
            router.send(&id[..], zmq::SNDMORE)?;
            router.send(&header[..], zmq::SNDMORE)?;
            router.send(&payload[..], 0)?;
        }
    }
}

/// Throughput, CPU per message and delivery latency of the bare forwarder.
pub struct Ceiling {
    pub rate: f64,
    pub cpu_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Sends `updates` messages of `size` bytes through the forwarder to
/// `readers` readers, as fast as it takes them (`rate` None) or paced at
/// `rate` per second, exactly as the fan-out and latency scenarios pace
/// the server.
pub fn measure(
    updates: u64,
    size: usize,
    readers: usize,
    rate: Option<f64>,
    first_port: u16,
) -> anyhow::Result<Ceiling> {
    let base = free_base(first_port);
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .args([
            "forwarder",
            "--port",
            &base.to_string(),
            "--readers",
            &readers.to_string(),
        ])
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start the forwarder")?;
    let child = KillOnDrop(child);
    let ctx = zmq::Context::new();
    let ready = Arc::new(Barrier::new(2));
    // One thread watches every reader, as the scenarios' readers are watched.
    let watcher = {
        let (ctx, ready) = (ctx.clone(), ready.clone());
        std::thread::spawn(move || -> anyhow::Result<Vec<(u64, u64, Vec<u64>)>> {
            let dealers = (0..readers)
                .map(|_| -> anyhow::Result<zmq::Socket> {
                    let dealer = ctx.socket(zmq::DEALER)?;
                    dealer.connect(&format!("tcp://127.0.0.1:{}", base + 1))?;
                    dealer.send("hello", 0)?;
                    dealer.recv_msg(0)?;
                    Ok(dealer)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            ready.wait();
            let capacity = usize::try_from(updates).unwrap_or(0).min(1 << 22);
            let mut seen: Vec<(u64, u64, Vec<u64>)> = (0..readers)
                .map(|_| (0, 0, Vec::with_capacity(capacity)))
                .collect();
            // Like the scenarios' readers: one message from each reader in
            // turn, and a poll only when none has one waiting.
            while seen.iter().any(|(count, _, _)| *count < updates) {
                let mut any = false;
                for (dealer, (count, last, latencies)) in dealers.iter().zip(&mut seen) {
                    let Ok(frames) = dealer.recv_multipart(zmq::DONTWAIT) else {
                        continue;
                    };
                    any = true;
                    if let Some(sent) = frames.get(1).and_then(|p| TimedPayload::sent_at(p)) {
                        *count += 1;
                        *last = now_ns();
                        latencies.push(last.saturating_sub(sent));
                    }
                }
                if any {
                    continue;
                }
                let mut items: Vec<zmq::PollItem<'_>> = dealers
                    .iter()
                    .map(|d| d.as_poll_item(zmq::POLLIN))
                    .collect();
                if zmq::poll(&mut items, 10_000)? == 0 {
                    break;
                }
            }
            Ok(seen)
        })
    };
    ready.wait();
    let meter = CpuMeter::start(child.pid());
    let push = ctx.socket(zmq::PUSH)?;
    push.connect(&format!("tcp://127.0.0.1:{}", base + 2))?;
    let mut payload = TimedPayload::new(size);
    let header = b"\x81\xa4type\xa6UPDATE";
    let start = now_ns();
    let started = Instant::now();
    for i in 0..updates {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        push.send("token", zmq::SNDMORE)?;
        push.send(&header[..], zmq::SNDMORE)?;
        push.send(payload.stamped(), 0)?;
    }
    let mut last = start;
    let mut latencies = Vec::new();
    let seen = watcher
        .join()
        .map_err(|_| anyhow::anyhow!("the readers' thread panicked"))??;
    for (count, at, seen) in seen {
        if count < updates {
            bail!("the forwarder lost {} updates", updates - count);
        }
        last = last.max(at);
        latencies.extend(seen);
    }
    let (cpu, _) = meter.read();
    Ok(Ceiling {
        rate: updates as f64
            / ((last - start) as f64 / 1e9).max(Duration::from_nanos(1).as_secs_f64()),
        cpu_us: cpu.as_secs_f64() * 1e6 / updates as f64,
        p50_us: quantile(&mut latencies, 0.5) as f64 / 1e3,
        p99_us: quantile(&mut latencies, 0.99) as f64 / 1e3,
    })
}
