//! Medians, spreads, percentiles, and payloads that carry their send time.

use std::sync::OnceLock;
use std::time::Instant;

/// One clock for every thread of the benchmark.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the benchmark's epoch.
pub fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A datablock payload of about `size` bytes whose first element is the
/// send time: the MessagePack array `[u64 nanoseconds, bin filler]`. The
/// time sits at a fixed offset so readers find it without decoding.
pub struct TimedPayload {
    bytes: Vec<u8>,
}

const TIME_AT: std::ops::Range<usize> = 2..10;

impl TimedPayload {
    pub fn new(size: usize) -> Self {
        let filler = size.saturating_sub(16);
        let mut bytes = vec![0x92, 0xcf, 0, 0, 0, 0, 0, 0, 0, 0];
        bytes.push(0xc6);
        bytes.extend_from_slice(&u32::try_from(filler).unwrap_or(u32::MAX).to_be_bytes());
        bytes.resize(bytes.len() + filler, 0x5a);
        Self { bytes }
    }

    /// The payload stamped with the current time.
    pub fn stamped(&mut self) -> &[u8] {
        self.bytes[TIME_AT].copy_from_slice(&now_ns().to_be_bytes());
        &self.bytes
    }

    /// The send time in a received payload, if it is one of ours.
    pub fn sent_at(payload: &[u8]) -> Option<u64> {
        if payload.get(..2) != Some(&[0x92, 0xcf]) {
            return None;
        }
        let raw: [u8; 8] = payload.get(TIME_AT)?.try_into().ok()?;
        Some(u64::from_be_bytes(raw))
    }
}

/// Median and spread of repeated measurements.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Self {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        let mid = v.len() / 2;
        let median = if v.len().is_multiple_of(2) {
            (v[mid - 1] + v[mid]) / 2.0
        } else {
            v[mid]
        };
        Self {
            median,
            min: v[0],
            max: v[v.len() - 1],
        }
    }

    /// "median (min-max)" with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        if self.min == self.max {
            return format!("{:.*}", digits, self.median);
        }
        format!(
            "{:.*} ({:.*}-{:.*})",
            digits, self.median, digits, self.min, digits, self.max
        )
    }
}

/// The `q` quantile (0..=1) of samples, which are sorted in place.
pub fn quantile(samples: &mut [u64], q: f64) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    samples.sort_unstable();
    let rank = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_and_quantiles() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 2.0, 3.0, 4.0]).median, 2.5);
        let mut v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&mut v, 0.5), 51);
        assert_eq!(quantile(&mut v, 0.99), 99);
    }

    #[test]
    fn payload_time_round_trips_and_is_valid_msgpack() {
        let mut p = TimedPayload::new(1024);
        let bytes = p.stamped().to_vec();
        assert!(TimedPayload::sent_at(&bytes).is_some());
        replication_serve::protocol::validate_value(&bytes).unwrap();
        assert!((1000..1100).contains(&bytes.len()));
    }
}
