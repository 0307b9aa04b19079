//! What the server counts for an admin's tools: Prometheus metrics, and the
//! HTTP listener ([`http`], `--metrics ADDRESS:PORT`) that serves them with
//! a JSON status.
//!
//! The core and the transport only add to counters and observe histograms
//! (atomic operations, no lock and no lookup: each labelled counter is
//! resolved once, here). Everything that describes the state (clients,
//! rooms, datablocks, locks) is asked of the core when a scraper asks, the
//! way the console asks it.

pub mod http;

use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::core::Report;
use crate::protocol::{Channel, ErrorCode};

/// Why the metrics could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// Messages and bytes that crossed one channel, each way.
#[derive(Clone)]
struct ChannelTraffic {
    messages_in: IntCounter,
    bytes_in: IntCounter,
    messages_out: IntCounter,
    bytes_out: IntCounter,
}

/// The transport's counters, by channel.
#[derive(Clone)]
pub struct Traffic {
    channels: [ChannelTraffic; 4],
}

impl Traffic {
    /// A message of `bytes` (its frames after the routing one) arrived.
    pub fn received(&self, channel: Channel, bytes: usize) {
        let c = &self.channels[channel as usize];
        c.messages_in.inc();
        c.bytes_in.inc_by(bytes as u64);
    }

    /// A message of `bytes` was handed to libzmq for one client.
    pub fn sent(&self, channel: Channel, bytes: usize) {
        let c = &self.channels[channel as usize];
        c.messages_out.inc();
        c.bytes_out.inc_by(bytes as u64);
    }
}

/// Every metric, and the registry that writes them out.
pub struct Metrics {
    registry: Registry,
    pub traffic: Traffic,
    /// Updates applied (each of an UPDATES counts).
    pub updates: IntCounter,
    refusals: IntCounterVec,
    pub slow_disconnects: IntCounter,
    pub heartbeat_timeouts: IntCounter,
    pub streams_started: IntCounter,
    stream_seconds: Histogram,
    commit_seconds: Histogram,
    clients: IntGauge,
    rooms: IntGauge,
    datablocks: IntGauge,
    data_bytes: IntGauge,
    locks: IntGauge,
    room_users: IntGaugeVec,
    room_datablocks: IntGaugeVec,
    room_bytes: IntGaugeVec,
    uptime: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> Result<IntCounter, MetricsError> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let counters =
            |name: &str, help: &str, label: &str| -> Result<IntCounterVec, MetricsError> {
                let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, MetricsError> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let room_gauge = |name: &str, help: &str| -> Result<IntGaugeVec, MetricsError> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["room"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let histogram =
            |name: &str, help: &str, buckets: &[f64]| -> Result<Histogram, MetricsError> {
                let h =
                    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };

        let messages_in = counters(
            "replication_messages_received_total",
            "Messages received from clients, by channel",
            "channel",
        )?;
        let bytes_in = counters(
            "replication_received_bytes_total",
            "Bytes of messages received from clients (header and data frames), by channel",
            "channel",
        )?;
        let messages_out = counters(
            "replication_messages_sent_total",
            "Messages handed to the network for a client (one per recipient), by channel",
            "channel",
        )?;
        let bytes_out = counters(
            "replication_sent_bytes_total",
            "Bytes of messages handed to the network (header and data frames, per recipient), by channel",
            "channel",
        )?;
        let channel = |c: Channel| ChannelTraffic {
            messages_in: messages_in.with_label_values(&[c.name()]),
            bytes_in: bytes_in.with_label_values(&[c.name()]),
            messages_out: messages_out.with_label_values(&[c.name()]),
            bytes_out: bytes_out.with_label_values(&[c.name()]),
        };
        let traffic = Traffic {
            channels: Channel::ALL.map(channel),
        };

        let metrics = Self {
            traffic,
            updates: counter(
                "replication_updates_total",
                "Updates applied to datablocks (full data and patches)",
            )?,
            refusals: counters(
                "replication_refusals_total",
                "Requests and logins refused, by error code",
                "code",
            )?,
            slow_disconnects: counter(
                "replication_slow_consumer_disconnects_total",
                "Clients disconnected because they could not keep up with the traffic",
            )?,
            heartbeat_timeouts: counter(
                "replication_heartbeat_timeouts_total",
                "Clients disconnected because they were silent longer than the timeout",
            )?,
            streams_started: counter(
                "replication_snapshot_streams_total",
                "Snapshot streams started (a joiner downloading a scene)",
            )?,
            stream_seconds: histogram(
                "replication_snapshot_stream_seconds",
                "How long snapshot streams took, from the capture to the last message sent",
                &[
                    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                ],
            )?,
            commit_seconds: histogram(
                "replication_storage_commit_seconds",
                "How long each commit of recorded changes to the data directory took",
                &[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0,
                ],
            )?,
            clients: gauge("replication_clients", "Users connected, in all rooms")?,
            rooms: gauge("replication_rooms", "Rooms, the default room included")?,
            datablocks: gauge("replication_datablocks", "Datablocks, in all rooms")?,
            data_bytes: gauge(
                "replication_data_bytes",
                "Bytes of datablock data, in all rooms",
            )?,
            locks: gauge(
                "replication_locks",
                "Datablocks held by a user (not COMMON), in all rooms",
            )?,
            room_users: room_gauge("replication_room_users", "Users in the room")?,
            room_datablocks: room_gauge("replication_room_datablocks", "Datablocks in the room")?,
            room_bytes: room_gauge(
                "replication_room_data_bytes",
                "Bytes of datablock data in the room",
            )?,
            uptime: gauge(
                "replication_uptime_seconds",
                "Seconds since the server started",
            )?,
            registry,
        };
        metrics.register_process()?;
        Ok(metrics)
    }

    /// The standard process_* metrics (resident memory, CPU time, open
    /// descriptors), read from /proc at each scrape.
    #[cfg(target_os = "linux")]
    fn register_process(&self) -> Result<(), MetricsError> {
        let process = prometheus::process_collector::ProcessCollector::for_self();
        self.registry.register(Box::new(process))?;
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn register_process(&self) -> Result<(), MetricsError> {
        Ok(())
    }

    /// Counts a refused request or login.
    pub fn refused(&self, code: ErrorCode) {
        self.refusals
            .with_label_values(&[code_name(code).as_str()])
            .inc();
    }

    /// A snapshot stream finished after `took`.
    pub fn stream_finished(&self, took: Duration) {
        self.stream_seconds.observe(took.as_secs_f64());
    }

    /// A commit to the data directory took `took`.
    pub fn committed(&self, took: Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
    }

    /// Sets the gauges that describe the state from the core's report.
    pub fn describe(&self, report: &Report) {
        let mut totals = (0, 0, 0);
        self.room_users.reset();
        self.room_datablocks.reset();
        self.room_bytes.reset();
        for room in &report.rooms {
            let labels = [room.name.as_str()];
            self.room_users
                .with_label_values(&labels)
                .set(gauge_value(room.users_online));
            self.room_datablocks
                .with_label_values(&labels)
                .set(gauge_value(room.datablocks));
            self.room_bytes
                .with_label_values(&labels)
                .set(gauge_value(room.bytes));
            totals.0 += room.users_online;
            totals.1 += room.datablocks;
            totals.2 += room.bytes;
        }
        self.clients.set(gauge_value(totals.0));
        self.rooms.set(gauge_value(report.rooms.len() as u64));
        self.datablocks.set(gauge_value(totals.1));
        self.data_bytes.set(gauge_value(totals.2));
        self.locks.set(gauge_value(report.lock_count as u64));
        self.uptime.set(gauge_value(report.uptime.as_secs()));
    }

    /// Every metric in Prometheus's text format.
    pub fn text(&self) -> Result<String, MetricsError> {
        Ok(TextEncoder::new().encode_to_string(&self.registry.gather())?)
    }
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The code as the protocol spells it (`not_owner`), from its own serde
/// names so the two never differ.
fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{code:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_the_protocols() {
        assert_eq!(code_name(ErrorCode::NotOwner), "not_owner");
        assert_eq!(
            code_name(ErrorCode::AlreadyInitialised),
            "already_initialised"
        );
    }

    #[test]
    fn counters_reach_the_text() {
        let metrics = Metrics::new().expect("metrics");
        metrics.traffic.received(Channel::Publisher, 100);
        metrics.traffic.sent(Channel::Subscriber, 40);
        metrics.traffic.sent(Channel::Subscriber, 2);
        metrics.refused(ErrorCode::NotOwner);
        metrics.committed(Duration::from_millis(2));
        let text = metrics.text().expect("text");
        for line in [
            "replication_received_bytes_total{channel=\"publisher\"} 100",
            "replication_messages_sent_total{channel=\"subscriber\"} 2",
            "replication_sent_bytes_total{channel=\"subscriber\"} 42",
            "replication_refusals_total{code=\"not_owner\"} 1",
            "replication_storage_commit_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}:\n{text}");
        }
    }
}
