//! Latency histogram shared by thousands of connection tasks.
//!
//! Why not a `Vec` of samples: a fan-out run records millions of deliveries, and
//! ten thousand tasks must record without a lock. Buckets are log-linear (1024
//! sub-buckets per power of two), so any reported percentile is within 0.1 % of
//! the true sample.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Values below this are their own bucket (exact).
const LINEAR: u64 = 2048;
/// Sub-buckets per power of two above `LINEAR`.
const SUB_BITS: u32 = 10;
const SUB: u64 = 1 << SUB_BITS;
/// Enough buckets for values up to 2^40 microseconds (about 12 days).
const BUCKETS: usize = (LINEAR + 30 * SUB) as usize;

/// A lock-free histogram of microsecond values.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    max: AtomicU64,
}

/// Percentiles of a histogram, in milliseconds, as they go into the report.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Largest sample, ms (exact).
    pub max_ms: f64,
}

fn bucket_of(value: u64) -> usize {
    if value < LINEAR {
        return value as usize;
    }
    let shift = 63 - value.leading_zeros() - SUB_BITS;
    let index = LINEAR + u64::from(shift - 1) * SUB + ((value >> shift) - SUB);
    (index as usize).min(BUCKETS - 1)
}

/// The smallest value that falls in bucket `index`.
fn bucket_floor(index: usize) -> u64 {
    let index = index as u64;
    if index < LINEAR {
        return index;
    }
    let shift = (index - LINEAR) / SUB + 1;
    let sub = (index - LINEAR) % SUB;
    (SUB + sub) << shift
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    /// Records one sample, in microseconds.
    pub fn record(&self, micros: u64) {
        self.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(micros, Ordering::Relaxed);
    }

    /// Samples recorded so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The value at quantile `q` (0..=1), in microseconds; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= rank {
                return bucket_floor(index).min(self.max.load(Ordering::Relaxed));
            }
        }
        self.max.load(Ordering::Relaxed)
    }

    /// p50, p99 and max in milliseconds.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.count(),
            p50_ms: self.quantile(0.50) as f64 / 1000.0,
            p99_ms: self.quantile(0.99) as f64 / 1000.0,
            max_ms: self.max.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_exact() {
        let h = Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 50);
        assert_eq!(h.quantile(0.99), 99);
        assert_eq!(h.quantile(1.0), 100);
    }

    #[test]
    fn large_values_are_within_a_tenth_of_a_percent() {
        let h = Histogram::new();
        for v in [5_000u64, 123_456, 9_876_543, 3_000_000_000] {
            let h1 = Histogram::new();
            h1.record(v);
            let got = h1.quantile(0.5);
            assert!(
                got <= v && (v - got) as f64 / v as f64 <= 0.001,
                "{v} -> {got}"
            );
            h.record(v);
        }
        assert_eq!(h.summary().max_ms, 3_000_000.0);
    }

    #[test]
    fn buckets_round_trip_floor() {
        for index in [0usize, 2047, 2048, 2049, 3000, 10_000, BUCKETS - 1] {
            assert_eq!(bucket_of(bucket_floor(index)), index);
        }
    }

    #[test]
    fn empty_is_zero() {
        let h = Histogram::new();
        assert_eq!(h.summary(), LatencySummary::default());
    }
}
