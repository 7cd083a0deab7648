//! Metric families in a form that crosses the IPC channel.
//!
//! Each worker keeps its own Prometheus registry (no cross-process atomics);
//! on a scrape the master asks every worker for a [`FamilySnapshot`] list,
//! labels each series with its `worker`, and merges same-named families into
//! one exposition.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{IntCounter, IntCounterVec};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The kinds of metric sockhive uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FamilyKind {
    /// Monotonic count.
    Counter,
    /// Current level.
    Gauge,
    /// Distribution in cumulative buckets.
    Histogram,
}

/// One series of a family.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeriesSnapshot {
    /// Label pairs in registry order.
    pub labels: Vec<(String, String)>,
    /// Counter or gauge value; the sample sum for histograms.
    pub value: f64,
    /// Histogram sample count.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub count: u64,
    /// Histogram buckets as (upper bound, cumulative count); +Inf is implied by `count`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<(f64, u64)>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A metric family with every series.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FamilySnapshot {
    /// Metric name, e.g. `sockhive_connections`.
    pub name: String,
    /// HELP text.
    pub help: String,
    /// TYPE.
    pub kind: FamilyKind,
    /// The series.
    pub series: Vec<SeriesSnapshot>,
}

impl FamilySnapshot {
    /// Captures a gathered family; summaries and untyped families are not used by sockhive and are skipped.
    pub fn capture(family: &MetricFamily) -> Option<FamilySnapshot> {
        let kind = match family.get_field_type() {
            MetricType::COUNTER => FamilyKind::Counter,
            MetricType::GAUGE => FamilyKind::Gauge,
            MetricType::HISTOGRAM => FamilyKind::Histogram,
            _ => return None,
        };
        let series = family
            .get_metric()
            .iter()
            .map(|metric| {
                let labels = metric
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_string(), l.value().to_string()))
                    .collect();
                match kind {
                    FamilyKind::Counter => SeriesSnapshot {
                        labels,
                        value: metric.get_counter().get_value(),
                        count: 0,
                        buckets: Vec::new(),
                    },
                    FamilyKind::Gauge => SeriesSnapshot {
                        labels,
                        value: metric.get_gauge().get_value(),
                        count: 0,
                        buckets: Vec::new(),
                    },
                    FamilyKind::Histogram => {
                        let h = metric.get_histogram();
                        SeriesSnapshot {
                            labels,
                            value: h.get_sample_sum(),
                            count: h.get_sample_count(),
                            buckets: h
                                .get_bucket()
                                .iter()
                                .filter(|b| b.upper_bound().is_finite())
                                .map(|b| (b.upper_bound(), b.cumulative_count()))
                                .collect(),
                        }
                    }
                }
            })
            .collect();
        Some(FamilySnapshot {
            name: family.name().to_string(),
            help: family.help().to_string(),
            kind,
            series,
        })
    }

    /// Rebuilds the family, adding `extra` as a leading label on every series.
    pub fn restore(&self, extra: Option<(&str, &str)>) -> MetricFamily {
        let mut family = MetricFamily::default();
        family.set_name(self.name.clone());
        family.set_help(self.help.clone());
        family.set_field_type(match self.kind {
            FamilyKind::Counter => MetricType::COUNTER,
            FamilyKind::Gauge => MetricType::GAUGE,
            FamilyKind::Histogram => MetricType::HISTOGRAM,
        });
        let metrics = self
            .series
            .iter()
            .map(|series| {
                let mut metric = Metric::default();
                let labels = extra
                    .into_iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .chain(series.labels.iter().cloned())
                    .map(|(name, value)| {
                        let mut pair = LabelPair::default();
                        pair.set_name(name);
                        pair.set_value(value);
                        pair
                    })
                    .collect();
                metric.set_label(labels);
                match self.kind {
                    FamilyKind::Counter => {
                        let mut c = Counter::default();
                        c.set_value(series.value);
                        metric.set_counter(c);
                    }
                    FamilyKind::Gauge => {
                        let mut g = Gauge::default();
                        g.set_value(series.value);
                        metric.set_gauge(g);
                    }
                    FamilyKind::Histogram => {
                        let mut h = Histogram::default();
                        h.set_sample_sum(series.value);
                        h.set_sample_count(series.count);
                        h.set_bucket(
                            series
                                .buckets
                                .iter()
                                .map(|&(bound, count)| {
                                    let mut b = Bucket::default();
                                    b.set_upper_bound(bound);
                                    b.set_cumulative_count(count);
                                    b
                                })
                                .collect(),
                        );
                        metric.set_histogram(h);
                    }
                }
                metric
            })
            .collect();
        family.set_metric(metrics);
        family
    }
}

/// Merges families of the same name (from different workers) into one, keeping first-seen order.
pub fn merge_families(families: Vec<MetricFamily>) -> Vec<MetricFamily> {
    let mut merged: Vec<MetricFamily> = Vec::new();
    for mut family in families {
        match merged.iter_mut().find(|f| f.name() == family.name()) {
            Some(existing) => existing.mut_metric().append(&mut family.take_metric()),
            None => merged.push(family),
        }
    }
    merged
}

/// The series of one family for every label set known in advance, resolved
/// once: counting an event is a short scan of static names, where
/// `with_label_values` hashes the values and locks the family every time
/// (issue 19: several per handshake). Label sets are one or two values
/// (`""` for the second of a one-label family).
#[derive(Clone)]
pub struct SeriesTable<M> {
    entries: Arc<[(&'static str, &'static str, M)]>,
}

impl<M> SeriesTable<M> {
    /// Resolves `make(labels)` for every label set.
    pub fn new(
        sets: impl IntoIterator<Item = (&'static str, &'static str)>,
        make: impl Fn(&[&str]) -> M,
    ) -> SeriesTable<M> {
        let entries = sets
            .into_iter()
            .map(|(a, b)| {
                let series = if b.is_empty() {
                    make(&[a])
                } else {
                    make(&[a, b])
                };
                (a, b, series)
            })
            .collect();
        SeriesTable { entries }
    }

    /// The series of a label set resolved at start, if it was.
    pub fn get(&self, a: &str, b: &str) -> Option<&M> {
        self.entries
            .iter()
            .find(|(x, y, _)| *x == a && *y == b)
            .map(|(_, _, series)| series)
    }
}

/// A counter family with its known series resolved; an unknown label set
/// (none is counted today) still counts, through the family.
#[derive(Clone)]
pub struct CounterTable {
    family: IntCounterVec,
    known: SeriesTable<IntCounter>,
}

impl CounterTable {
    /// Resolves (and so exports at 0) every series in `sets`.
    pub fn new(
        family: &IntCounterVec,
        sets: impl IntoIterator<Item = (&'static str, &'static str)>,
    ) -> CounterTable {
        CounterTable {
            family: family.clone(),
            known: SeriesTable::new(sets, |labels| family.with_label_values(labels)),
        }
    }

    /// Counts one event of label set (`a`, `b`); `b` is `""` for a one-label family.
    pub fn inc(&self, a: &str, b: &str) {
        match self.known.get(a, b) {
            Some(counter) => counter.inc(),
            None if b.is_empty() => self.family.with_label_values(&[a]).inc(),
            None => self.family.with_label_values(&[a, b]).inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{
        Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
    };

    #[test]
    fn worker_families_merge_with_a_worker_label() {
        let mut all = Vec::new();
        for worker in ["1", "2"] {
            let registry = Registry::new();
            let counter =
                IntCounterVec::new(Opts::new("sockhive_test_total", "test"), &["reason"]).unwrap();
            let histogram = HistogramVec::new(
                HistogramOpts::new("sockhive_test_seconds", "test"),
                &["kind"],
            )
            .unwrap();
            registry.register(Box::new(counter.clone())).unwrap();
            registry.register(Box::new(histogram.clone())).unwrap();
            counter.with_label_values(&["origin"]).inc_by(3);
            histogram.with_label_values(&["a"]).observe(0.002);
            for family in registry.gather() {
                let snapshot = FamilySnapshot::capture(&family).unwrap();
                let json = serde_json::to_string(&snapshot).unwrap();
                let back: FamilySnapshot = serde_json::from_str(&json).unwrap();
                all.push(back.restore(Some(("worker", worker))));
            }
        }
        let merged = merge_families(all);
        assert_eq!(merged.len(), 2);
        let mut text = Vec::new();
        TextEncoder::new().encode(&merged, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("sockhive_test_total{worker=\"1\",reason=\"origin\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("sockhive_test_total{worker=\"2\",reason=\"origin\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("sockhive_test_seconds_bucket{worker=\"2\",kind=\"a\",le=\"+Inf\"} 1"),
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE sockhive_test_total counter").count(),
            1
        );
    }
}
