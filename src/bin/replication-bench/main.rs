//! `replication-bench`: runs load scenarios against a real `replication-serve`
//! process and prints a table of results (median and spread over several
//! runs, server CPU and memory from /proc), beside the limits of the machine
//! measured in the same run with bare programs: one TCP stream, a relay to
//! N readers, and a libzmq forwarder.

mod big;
mod ceiling;
mod child;
mod guesses;
mod large_join;
mod limits;
mod proxy;
mod python;
mod relay;
mod scenarios;
mod server;
mod stats;
mod stream;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use limits::{RelayLimits, StreamLimits};
use scenarios::{Batching, Join, Setup, Storage};
use stats::Spread;

#[derive(Parser)]
#[command(version, about = "Benchmarks for replication-serve")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// The server binary (default: replication-serve next to this tool).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Runs of each scenario; the table shows the median and the spread.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Tiny sizes, one run: checks that every scenario works, measures
    /// nothing meaningful.
    #[arg(long)]
    quick: bool,
    /// Only these scenarios (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// First base port to try.
    #[arg(long, default_value_t = 42000)]
    port: u16,
    /// Servers encrypt (CURVE on all four ports, --encryption required) and
    /// every client does too: what encryption costs, against a run without.
    #[arg(long)]
    encryption: bool,
    /// The Python interpreter with the Python client installed, for the late
    /// joins also made with it (default: $REPLICATION_PYTHON, else the
    /// repository's .venv that scripts/test.sh makes).
    #[arg(long)]
    python: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// The bare libzmq forwarder used for the ceiling (started by the tool).
    #[command(hide = true)]
    Forwarder {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        readers: usize,
    },
    /// The writer of one bare TCP stream (started by the tool).
    #[command(hide = true)]
    Stream,
    /// The bare TCP relay to N readers (started by the tool).
    #[command(hide = true)]
    Relay {
        #[arg(long)]
        readers: usize,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    LateJoin,
    LateJoinDelay,
    Fanout,
    Latency,
    BigPatch,
    Idle,
    Crowd,
    /// Fan-out and latency with the session in memory, recorded, and
    /// recorded strictly: what recording costs.
    Durability,
    /// Password guesses per second from one address, for each password
    /// (four minutes in full: run only when named with --only).
    Guesses,
    /// Small updates in one room while another room uploads a large scene,
    /// has it joined late and takes a large UPDATE, in memory and recorded,
    /// with the disk's own speed (dd) measured in the same run.
    Big,
    /// A late joiner of a 1 GiB scene (64 datablocks of 16 MiB) alone,
    /// against one bare TCP stream of the same bytes in the same run.
    LargeJoin,
}

/// Sizes of every scenario.
struct Plan {
    join_blocks: usize,
    fanout_updates: u64,
    readers: usize,
    slow_rate: f64,
    fast_rate: f64,
    latency_seconds: f64,
    patch_mb: usize,
    patches: u64,
    idle_seconds: f64,
    crowd_clients: usize,
    crowd_writers: usize,
    crowd_seconds: f64,
    guess_seconds: f64,
    big: big::BigPlan,
    /// Bytes of the one-stream throughput measure.
    stream_bytes: u64,
    large_join: large_join::Scene,
}

impl Plan {
    fn full() -> Self {
        Self {
            join_blocks: 10_000,
            fanout_updates: 200_000,
            readers: 8,
            slow_rate: 1_000.0,
            fast_rate: 50_000.0,
            latency_seconds: 3.0,
            patch_mb: 10,
            patches: 100,
            idle_seconds: 10.0,
            crowd_clients: 64,
            crowd_writers: 8,
            crowd_seconds: 5.0,
            guess_seconds: 60.0,
            big: big::BigPlan {
                upload_blocks: 64,
                upload_block_bytes: 16 << 20,
                update_bytes: 256 << 20,
            },
            stream_bytes: 1 << 30,
            large_join: large_join::Scene {
                blocks: 64,
                block_bytes: 16 << 20,
            },
        }
    }

    fn quick() -> Self {
        Self {
            join_blocks: 200,
            fanout_updates: 2_000,
            readers: 2,
            slow_rate: 500.0,
            fast_rate: 2_000.0,
            latency_seconds: 0.5,
            patch_mb: 1,
            patches: 5,
            idle_seconds: 0.5,
            crowd_clients: 6,
            crowd_writers: 2,
            crowd_seconds: 0.5,
            guess_seconds: 0.5,
            big: big::BigPlan {
                upload_blocks: 4,
                upload_block_bytes: 2 << 20,
                update_bytes: 4 << 20,
            },
            stream_bytes: 16 << 20,
            large_join: large_join::Scene {
                blocks: 4,
                block_bytes: 1 << 20,
            },
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Forwarder { port, readers }) => return ceiling::serve_forwarder(port, readers),
        Some(Cmd::Stream) => return stream::serve(),
        Some(Cmd::Relay { readers }) => return relay::serve(readers),
        None => {}
    }
    if cli.encryption {
        server::encrypt();
    }
    let binary = match cli.server {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("no directory for the server binary")?
            .join("replication-serve"),
    };
    anyhow::ensure!(
        binary.exists(),
        "server binary {} not found (build it, or pass --server)",
        binary.display()
    );
    let mut setup = Setup {
        binary,
        first_port: cli.port,
        storage: Storage::InMemory,
        python: python::interpreter(cli.python),
    };
    let (plan, runs) = if cli.quick {
        (Plan::quick(), 1)
    } else {
        (Plan::full(), cli.runs.max(1))
    };
    let wanted = |s: Scenario| cli.only.is_empty() || cli.only.contains(&s);
    let mut table = Table::default();
    let started = std::time::Instant::now();
    let stolen_before = server::stolen();

    if wanted(Scenario::LateJoin) || wanted(Scenario::LateJoinDelay) {
        let join = Join {
            count: plan.join_blocks,
            size: 1024,
            delay: None,
            batches: true,
            count_bytes: false,
            python: false,
        };
        let mut single = Vec::new();
        let mut plain = Vec::new();
        let mut python = Vec::new();
        let mut delayed = Vec::new();
        let mut rss = (0, 0);
        let mut limits = StreamLimits::default();
        let mut stream = if wanted(Scenario::LateJoin) {
            Some(stream::OneStream::start()?)
        } else {
            None
        };
        for _ in 0..runs {
            if let Some(stream) = &mut stream {
                // The joiner of the version before DATABLOCKS, as a baseline
                // in the same run.
                let r = scenarios::late_join(
                    &setup,
                    Join {
                        batches: false,
                        ..join
                    },
                )?;
                single.push(r.seconds * 1e3);
                let r = scenarios::late_join(
                    &setup,
                    Join {
                        count_bytes: true,
                        python: true,
                        ..join
                    },
                )?;
                plain.push(r.seconds * 1e3);
                python.extend(r.python.map(|p| (p.seconds * 1e3, p.cpu_seconds * 1e3)));
                rss = (r.rss_empty, r.rss_loaded);
                limits.measure(stream, &r, plan.stream_bytes)?;
            }
            if wanted(Scenario::LateJoinDelay) {
                let r = scenarios::late_join(
                    &setup,
                    Join {
                        delay: Some(Duration::from_millis(10)),
                        ..join
                    },
                )?;
                delayed.push(r.seconds * 1e3);
            }
        }
        let n = plan.join_blocks;
        if !plain.is_empty() {
            table.row(
                &format!("late join, {n} x 1 KB, loopback, one message per datablock"),
                "ms",
                "",
                Spread::of(&single).show(1),
            );
            table.row(
                &format!("late join, {n} x 1 KB, loopback"),
                "ms",
                "< 50",
                Spread::of(&plain).show(1),
            );
            limits.rows(&mut table, plan.stream_bytes);
            python_rows(
                &mut table,
                &format!("late join, {n} x 1 KB, loopback, Python client"),
                &python,
            );
            table.row("server RSS, empty", "MiB", "", mib(rss.0));
            table.row(
                &format!("server RSS, {n} x 1 KB"),
                "MiB",
                "< 30",
                mib(rss.1),
            );
        }
        if !delayed.is_empty() {
            table.row(
                &format!("late join, {n} x 1 KB, +20 ms round trip"),
                "ms",
                "< 300",
                Spread::of(&delayed).show(1),
            );
        }
    }

    if wanted(Scenario::Fanout) {
        // The same fan-out three ways, in one session: messages one by one
        // (the readers do not read batches), the readers taking the
        // server's batches, and the writer sending batches of 32 too.
        let variants = [
            (
                "one message per update",
                Batching {
                    writer: 1,
                    readers: false,
                },
                "",
            ),
            ("readers take batches", Batching::READERS, ">= 250000"),
            (
                "writer sends UPDATES of 32",
                Batching {
                    writer: 32,
                    readers: true,
                },
                "",
            ),
        ];
        let mut ours: Vec<(Vec<f64>, Vec<f64>, u64)> = variants
            .iter()
            .map(|_| (Vec::new(), Vec::new(), 0))
            .collect();
        let mut raw = (Vec::new(), Vec::new());
        let mut relay = RelayLimits::default();
        for _ in 0..runs {
            for ((_, batching, _), results) in variants.iter().zip(&mut ours) {
                let r = scenarios::fanout(
                    &setup,
                    plan.fanout_updates,
                    1024,
                    plan.readers,
                    None,
                    *batching,
                )?;
                results.0.push(r.rate);
                results.1.push(r.cpu_us);
                results.2 += r.lost;
                if batching.readers && batching.writer == 1 {
                    relay.measure(plan.fanout_updates, plan.readers, &r)?;
                }
            }
            let c = ceiling::measure(
                plan.fanout_updates,
                1024,
                plan.readers,
                None,
                setup.first_port,
            )?;
            raw.0.push(c.rate);
            raw.1.push(c.cpu_us);
        }
        let readers = plan.readers;
        for ((name, _, target), (rate, cpu, lost)) in variants.iter().zip(&ours) {
            table.row(
                &format!("fan-out 1 -> {readers}, 1 KB, {name}, updates/s"),
                "/s",
                target,
                Spread::of(rate).show(0),
            );
            table.row(
                "  server CPU per update",
                "us",
                if target.is_empty() { "" } else { "<= 3" },
                Spread::of(cpu).show(2),
            );
            table.row("  updates lost", "", "0", lost.to_string());
        }
        table.row(
            &format!("libzmq ceiling 1 -> {readers}, 1 KB, msgs/s"),
            "/s",
            "",
            Spread::of(&raw.0).show(0),
        );
        table.row(
            "  forwarder CPU per message",
            "us",
            "",
            Spread::of(&raw.1).show(2),
        );
        relay.rows(&mut table, readers);
        let ceiling = Spread::of(&raw.0).median;
        let single = Spread::of(&ours[0].0).median;
        let batched = Spread::of(&ours[1].0).median;
        table.row(
            "  ceiling / ours, one message per update",
            "x",
            "<= 2",
            format!("{:.2}", ceiling / single),
        );
        table.row(
            "  ceiling / ours, readers take batches",
            "x",
            "<= 2",
            format!("{:.2}", ceiling / batched),
        );
    }

    if wanted(Scenario::Latency) {
        // At 50,000/s the forwarder itself runs at or past its most (40,000
        // to 75,000 messages/s here) and falls behind: its p99 is no floor.
        for (rate, target, compared) in [
            (plan.slow_rate, "< 0.5", true),
            (plan.fast_rate, "< 5", false),
        ] {
            let (mut p50, mut p99, mut raw_p50, mut raw_p99, mut ratio) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let mut lost = 0;
            for _ in 0..runs {
                let updates = (rate * plan.latency_seconds) as u64;
                let r = scenarios::fanout(
                    &setup,
                    updates,
                    1024,
                    plan.readers,
                    Some(rate),
                    Batching::READERS,
                )?;
                p50.push(r.p50_us / 1e3);
                p99.push(r.p99_us / 1e3);
                lost += r.lost;
                // The same paced load through the bare forwarder, right
                // after: the floor this machine puts under any server.
                let c =
                    ceiling::measure(updates, 1024, plan.readers, Some(rate), setup.first_port)?;
                raw_p50.push(c.p50_us / 1e3);
                raw_p99.push(c.p99_us / 1e3);
                ratio.push(r.p99_us / c.p99_us);
            }
            let readers = plan.readers;
            table.row(
                &format!("latency p50 at {rate:.0}/s, 1 -> {readers}"),
                "ms",
                "",
                Spread::of(&p50).show(3),
            );
            table.row(
                &format!("latency p99 at {rate:.0}/s, 1 -> {readers}"),
                "ms",
                target,
                Spread::of(&p99).show(3),
            );
            table.row("  updates lost", "", "0", lost.to_string());
            table.row(
                "  libzmq ceiling, same load: p50",
                "ms",
                "",
                Spread::of(&raw_p50).show(3),
            );
            table.row(
                "  libzmq ceiling, same load: p99",
                "ms",
                "",
                Spread::of(&raw_p99).show(3),
            );
            if compared {
                table.row(
                    "  p99 ours / libzmq ceiling's, run by run",
                    "x",
                    "<= 1.2",
                    Spread::of(&ratio).show(2),
                );
            }
        }
    }

    if wanted(Scenario::BigPatch) {
        let (mut p50, mut p99, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let r = scenarios::big_patch(&setup, plan.patch_mb, plan.patches)?;
            p50.push(r.p50_us / 1e3);
            p99.push(r.p99_us / 1e3);
            cpu.push(r.cpu_us);
        }
        let mb = plan.patch_mb;
        table.row(
            &format!("one-value patch to {mb} MB, delivered, p50"),
            "ms",
            "< 1",
            Spread::of(&p50).show(3),
        );
        table.row(
            &format!("one-value patch to {mb} MB, delivered, p99"),
            "ms",
            "",
            Spread::of(&p99).show(3),
        );
        table.row("  server CPU per patch", "us", "", Spread::of(&cpu).show(1));
    }

    if wanted(Scenario::Idle) {
        let mut share = Vec::new();
        for _ in 0..runs {
            share.push(scenarios::idle(&setup, 4, plan.idle_seconds)? * 100.0);
        }
        table.row(
            "idle, 4 clients, server CPU",
            "% core",
            "< 0.2",
            Spread::of(&share).show(3),
        );
    }

    if wanted(Scenario::Crowd) {
        for stalled in [false, true] {
            let (mut p99, mut rss, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
            let mut missing = 0;
            for _ in 0..runs {
                let r = scenarios::crowd(
                    &setup,
                    plan.crowd_clients,
                    plan.crowd_writers,
                    60.0,
                    plan.crowd_seconds,
                    stalled,
                )?;
                missing += r.expected - r.delivered.min(r.expected);
                p99.push(r.p99_us / 1e3);
                rss.push(r.rss as f64 / (1 << 20) as f64);
                cpu.push(r.cpu_share * 100.0);
            }
            let label = format!(
                "{} clients, {} writing 60/s{}",
                plan.crowd_clients,
                plan.crowd_writers,
                if stalled { ", + 1 stalled" } else { "" }
            );
            table.row(&format!("{label}: p99"), "ms", "", Spread::of(&p99).show(3));
            table.row("  deliveries missing", "", "0", missing.to_string());
            table.row("  server RSS", "MiB", "", Spread::of(&rss).show(1));
            table.row("  server CPU", "% core", "", Spread::of(&cpu).show(2));
        }
    }

    if wanted(Scenario::Durability) {
        for storage in [Storage::InMemory, Storage::Normal, Storage::Strict] {
            setup.storage = storage;
            let (mut rate, mut cpu, mut p50, mut p99, mut lost) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0);
            for _ in 0..runs {
                let r = scenarios::fanout(
                    &setup,
                    plan.fanout_updates / 2,
                    1024,
                    plan.readers,
                    None,
                    Batching::READERS,
                )?;
                rate.push(r.rate);
                cpu.push(r.cpu_us);
                lost += r.lost;
                let updates = (plan.slow_rate * plan.latency_seconds) as u64;
                let r = scenarios::fanout(
                    &setup,
                    updates,
                    1024,
                    plan.readers,
                    Some(plan.slow_rate),
                    Batching::READERS,
                )?;
                p50.push(r.p50_us / 1e3);
                p99.push(r.p99_us / 1e3);
                lost += r.lost;
            }
            let name = storage.name();
            let readers = plan.readers;
            table.row(
                &format!("{name}: fan-out 1 -> {readers}, 1 KB, updates/s"),
                "/s",
                "",
                Spread::of(&rate).show(0),
            );
            table.row(
                "  server CPU per update",
                "us",
                "",
                Spread::of(&cpu).show(2),
            );
            table.row(
                &format!("  latency p50 / p99 at {:.0}/s", plan.slow_rate),
                "ms",
                "",
                format!(
                    "{} / {}",
                    Spread::of(&p50).show(3),
                    Spread::of(&p99).show(3)
                ),
            );
            table.row("  updates lost", "", "0", lost.to_string());
        }
        setup.storage = Storage::InMemory;
        let n = plan.join_blocks;
        for durability in ["normal", "strict"] {
            let (mut serving, mut joined, mut disk) = (Vec::new(), Vec::new(), 0);
            for _ in 0..runs {
                let r = scenarios::recovery(&setup, durability, n, 1024)?;
                serving.push(r.serving_s * 1e3);
                joined.push(r.joined_s * 1e3);
                disk = r.disk_bytes;
            }
            table.row(
                &format!("restart after kill -9, {n} x 1 KB, {durability}: serving"),
                "ms",
                "",
                Spread::of(&serving).show(1),
            );
            table.row(
                "  until a late joiner has the scene",
                "ms",
                "",
                Spread::of(&joined).show(1),
            );
            table.row("  data directory at the kill", "MiB", "", mib(disk));
        }
    }

    if cli.only.contains(&Scenario::Guesses) {
        for attack in guesses::Attack::ALL {
            let (mut checked, mut refused) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                let r = guesses::run(&setup.binary, setup.first_port, attack, plan.guess_seconds)?;
                checked.push(r.checked as f64 / r.seconds);
                refused.push(r.refused as f64 / r.seconds);
            }
            table.row(
                &format!(
                    "{}: guesses checked per second from one address, over {} s",
                    attack.name(),
                    plan.guess_seconds
                ),
                "/s",
                "",
                Spread::of(&checked).show(3),
            );
            table.row(
                "  attempts refused unchecked (locked out)",
                "/s",
                "",
                Spread::of(&refused).show(1),
            );
        }
    }

    if wanted(Scenario::Big) {
        big_rows(&mut setup, &plan, runs, &mut table)?;
    }

    if wanted(Scenario::LargeJoin) {
        large_join::rows(&setup, plan.large_join, runs, &mut table)?;
    }

    // On a virtual machine the host may take the cores away for a while:
    // figures measured then say more about the host than the server.
    if let (Some(before), Some(after)) = (stolen_before, server::stolen()) {
        table.row(
            &format!(
                "CPU time the host took from this machine in these {:.0} s (steal)",
                started.elapsed().as_secs_f64()
            ),
            "s",
            "",
            format!("{:.2}", after.saturating_sub(before).as_secs_f64()),
        );
    }
    print!("{}", table.render(runs));
    Ok(())
}

/// The big-payload scenario, in memory and recorded, with the disk's own
/// speed measured before each recorded run.
fn big_rows(setup: &mut Setup, plan: &Plan, runs: usize, table: &mut Table) -> anyhow::Result<()> {
    let total_mb = (plan.big.upload_blocks * plan.big.upload_block_bytes) >> 20;
    let mut disk = Vec::new();
    for storage in [Storage::InMemory, Storage::Normal] {
        setup.storage = storage;
        let mut results: Vec<big::BigRun> = Vec::new();
        for _ in 0..runs {
            if storage != Storage::InMemory {
                disk.push(big::disk_speed(total_mb)?);
            }
            results.push(big::run(setup, plan.big)?);
        }
        let name = storage.name();
        let Some(first) = results.first() else {
            continue;
        };
        for (i, op) in first.ops.iter().enumerate() {
            let of = |f: &dyn Fn(&big::BigOp) -> f64| -> Vec<f64> {
                results.iter().filter_map(|r| r.ops.get(i)).map(f).collect()
            };
            let mb = op.bytes as f64 / 1e6;
            if op.name == big::CLOSING {
                table.row(
                    &format!("{name}: room B closed, its scene removed, until the server no longer lists it"),
                    "ms",
                    "",
                    Spread::of(&of(&|o| o.seconds * 1e3)).show(1),
                );
            } else if op.bytes == 0 {
                table.row(
                    &format!("{name}: {} in room B (the floor)", op.name),
                    "",
                    "",
                    String::new(),
                );
            } else {
                table.row(
                    &format!("{name}: {} of {mb:.0} MB, room B", op.name),
                    "MB/s",
                    "",
                    Spread::of(&of(&|o| o.bytes as f64 / 1e6 / o.seconds)).show(0),
                );
            }
            table.row(
                "  room A's small updates meanwhile: p50 / p99 / max",
                "ms",
                "max < 20",
                format!(
                    "{} / {} / {}",
                    Spread::of(&of(&|o| o.p50_ms)).show(2),
                    Spread::of(&of(&|o| o.p99_ms)).show(2),
                    Spread::of(&of(&|o| o.max_ms)).show(2)
                ),
            );
            let total = |f: fn(&big::BigOp) -> usize| -> usize {
                results.iter().filter_map(|r| r.ops.get(i)).map(f).sum()
            };
            table.row(
                "  small updates sent meanwhile",
                "",
                "",
                total(|o| o.small_sent).to_string(),
            );
            table.row(
                "  small updates lost meanwhile",
                "",
                "0",
                total(|o| o.small_lost).to_string(),
            );
            table.row(
                "  longest wait between two PINGs in room A",
                "ms",
                "< 1500",
                Spread::of(&of(&|o| o.ping_gap_ms)).show(0),
            );
        }
        let peak: Vec<f64> = results
            .iter()
            .map(|r| r.peak_rss as f64 / (1 << 20) as f64)
            .collect();
        table.row(
            &format!(
                "{name}: server peak RSS, scene of {:.0} MiB and a replacement of {:.0} MiB on its way",
                first.scene_bytes as f64 / (1 << 20) as f64,
                plan.big.update_bytes as f64 / (1 << 20) as f64
            ),
            "MiB",
            "",
            Spread::of(&peak).show(0),
        );
    }
    setup.storage = Storage::InMemory;
    if !disk.is_empty() {
        table.row(
            &format!("disk: dd bs=1M count={total_mb} conv=fdatasync, before each recorded run"),
            "MB/s",
            "",
            Spread::of(&disk).show(0),
        );
    }
    Ok(())
}

/// The Python client's late joins: (time, CPU time), in ms.
fn python_rows(table: &mut Table, label: &str, joins: &[(f64, f64)]) {
    if joins.is_empty() {
        table.row(label, "ms", "", python::missing());
        return;
    }
    let times: Vec<f64> = joins.iter().map(|j| j.0).collect();
    let cpu: Vec<f64> = joins.iter().map(|j| j.1).collect();
    table.row(label, "ms", "", Spread::of(&times).show(1));
    table.row(
        "  its CPU time (all threads)",
        "ms",
        "",
        Spread::of(&cpu).show(1),
    );
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1 << 20) as f64)
}

/// The results, as a Markdown table.
#[derive(Default)]
struct Table {
    rows: Vec<[String; 4]>,
}

impl Table {
    fn row(&mut self, what: &str, unit: &str, target: &str, value: String) {
        self.rows
            .push([what.to_owned(), unit.to_owned(), target.to_owned(), value]);
    }

    fn render(&self, runs: usize) -> String {
        let mut out = format!(
            "| measure | unit | target | median (min-max) of {runs} run(s) |\n| --- | --- | --- | --- |\n"
        );
        for [what, unit, target, value] in &self.rows {
            out.push_str(&format!("| {what} | {unit} | {target} | {value} |\n"));
        }
        out
    }
}
