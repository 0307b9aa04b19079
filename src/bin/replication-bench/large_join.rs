//! A late joiner of a large scene, alone: the library's Rust client
//! downloads 1 GiB (64 datablocks of 16 MiB, the big scenario's scene
//! without the other room's traffic) with DATABLOCKS, against one bare TCP
//! stream of as many bytes in the same run; then the Python client joins
//! it too (`python`).

use crate::Table;
use crate::limits::{gbps, size};
use crate::python;
use crate::scenarios::{self, Join, Setup};
use crate::stats::Spread;
use crate::stream::OneStream;

/// The large scene.
#[derive(Debug, Clone, Copy)]
pub struct Scene {
    pub blocks: usize,
    pub block_bytes: usize,
}

/// Joins the scene late `runs` times, each followed by one stream of its
/// bytes, and adds their rows.
pub fn rows(setup: &Setup, scene: Scene, runs: usize, table: &mut Table) -> anyhow::Result<()> {
    let bytes = (scene.blocks * scene.block_bytes) as u64;
    let mut stream = OneStream::start()?;
    let (mut ours, mut raw, mut share) = (Vec::new(), Vec::new(), Vec::new());
    let mut python = Vec::new();
    for _ in 0..runs {
        let r = scenarios::late_join(
            setup,
            Join {
                count: scene.blocks,
                size: scene.block_bytes,
                delay: None,
                batches: true,
                count_bytes: false,
                python: true,
            },
        )?;
        python.extend(r.python.map(|p| bytes as f64 / p.seconds / 1e9));
        let joined = bytes as f64 / r.seconds / 1e9;
        let limit = gbps(bytes, stream.transfer(bytes)?);
        ours.push(joined);
        raw.push(limit);
        share.push(joined / limit);
    }
    table.row(
        &format!(
            "late join of {} ({} x {}), loopback, Rust client",
            size(bytes),
            scene.blocks,
            size(scene.block_bytes as u64)
        ),
        "GB/s",
        ">= 1",
        Spread::of(&ours).show(2),
    );
    let label = "  the same, Python client";
    if python.is_empty() {
        table.row(label, "GB/s", ">= 1", python::missing());
    } else {
        table.row(label, "GB/s", ">= 1", Spread::of(&python).show(2));
    }
    table.row(
        &format!("one stream, bare loopback TCP, {}", size(bytes)),
        "GB/s",
        "",
        Spread::of(&raw).show(2),
    );
    table.row(
        "  late join's throughput / one stream's",
        "x",
        "",
        Spread::of(&share).show(2),
    );
    Ok(())
}
