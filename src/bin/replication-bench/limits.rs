//! The server's figures read against the machine's own limits, measured in
//! the same run: each late join against one bare TCP stream of the bytes
//! it moved, and the fan-out against a bare relay to the same readers.

use std::time::Duration;

use anyhow::Context;

use crate::Table;
use crate::relay;
use crate::scenarios::{Fanout, LateJoin};
use crate::stats::Spread;
use crate::stream::OneStream;

/// Transfers of the late join's bytes in each run, of which the fastest
/// counts.
const TRIES: usize = 5;

/// One stream beside each run's late join (DATABLOCKS).
#[derive(Default)]
pub struct StreamLimits {
    /// Bytes the server sent a joiner, as last counted.
    wire_bytes: u64,
    /// One stream of those bytes, connection included, in ms: the fastest
    /// of [`TRIES`] in each run.
    raw_ms: Vec<f64>,
    /// The late join's time over the stream's, run by run.
    ratio: Vec<f64>,
    /// The stream's throughput, in GB/s.
    gbps: Vec<f64>,
}

impl StreamLimits {
    /// Moves the bytes `join` counted over one stream, then `stream_bytes`
    /// for the throughput.
    pub fn measure(
        &mut self,
        stream: &mut OneStream,
        join: &LateJoin,
        stream_bytes: u64,
    ) -> anyhow::Result<()> {
        let bytes = join
            .wire_bytes
            .context("the late join's bytes were not counted")?;
        // Noise only ever slows a transfer: the fastest of a few is the
        // machine's figure.
        let mut raw = f64::INFINITY;
        for _ in 0..TRIES {
            raw = raw.min(stream.transfer(bytes)?.as_secs_f64());
        }
        self.wire_bytes = bytes;
        self.raw_ms.push(raw * 1e3);
        self.ratio.push(join.seconds / raw);
        self.gbps
            .push(gbps(stream_bytes, stream.transfer(stream_bytes)?));
        Ok(())
    }

    pub fn rows(&self, table: &mut Table, stream_bytes: u64) {
        table.row(
            "  bytes from the server to the joiner (a second join, through a counting proxy)",
            "MB",
            "",
            format!("{:.2}", self.wire_bytes as f64 / 1e6),
        );
        table.row(
            &format!(
                "one stream, bare loopback TCP: those bytes, connection included (fastest of {TRIES})"
            ),
            "ms",
            "",
            Spread::of(&self.raw_ms).show(2),
        );
        table.row(
            "  late join's time (DATABLOCKS) / one stream's",
            "x",
            "<= 2",
            Spread::of(&self.ratio).show(2),
        );
        table.row(
            &format!("one stream, bare loopback TCP, {}", size(stream_bytes)),
            "GB/s",
            "",
            Spread::of(&self.gbps).show(2),
        );
    }
}

/// A bare relay beside each run's fan-out with the readers taking batches.
#[derive(Default)]
pub struct RelayLimits {
    rate: Vec<f64>,
    cpu_us: Vec<f64>,
    /// Ours over the relay's, run by run.
    share: Vec<f64>,
    cpu_ratio: Vec<f64>,
}

impl RelayLimits {
    /// Relays as many 1 KiB messages as the fan-out sent to as many
    /// readers, and compares `ours` with it.
    pub fn measure(&mut self, messages: u64, readers: usize, ours: &Fanout) -> anyhow::Result<()> {
        let r = relay::measure(messages, 1024, readers)?;
        self.rate.push(r.rate);
        self.cpu_us.push(r.cpu_us);
        self.share.push(ours.rate / r.rate);
        self.cpu_ratio.push(ours.cpu_us / r.cpu_us);
        Ok(())
    }

    pub fn rows(&self, table: &mut Table, readers: usize) {
        table.row(
            &format!("bare TCP relay 1 -> {readers}, 1 KiB, msgs/s to each reader"),
            "/s",
            "",
            Spread::of(&self.rate).show(0),
        );
        table.row(
            "  relay CPU per message",
            "us",
            "",
            Spread::of(&self.cpu_us).show(2),
        );
        table.row(
            "  ours / relay, readers take batches: updates/s",
            "x",
            "",
            Spread::of(&self.share).show(2),
        );
        table.row(
            "  ours / relay, readers take batches: CPU per update",
            "x",
            "",
            Spread::of(&self.cpu_ratio).show(2),
        );
    }
}

/// `bytes` moved in `time`, in GB/s.
pub fn gbps(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64().max(1e-9) / 1e9
}

/// "1 GiB", "16 MiB".
pub fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}
