//! The master's own metrics and the node-wide exposition.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Registry, TextEncoder};
use sockhive_shared::ipc::ToMaster;
use sockhive_shared::metrics::merge_families;

/// Every `scope` of `sockhive_cluster_queries_total`: only the workers the
/// user index names, or all of them.
pub const CLUSTER_QUERY_SCOPES: [&str; 2] = ["indexed", "all"];

/// Metrics only the master can know.
pub struct MasterMetrics {
    registry: Registry,
    /// Ready workers serving a slot.
    pub workers: IntGauge,
    /// Workers respawned after dying unexpectedly.
    pub worker_restarts: IntCounter,
    /// Workers that did not answer a scrape in time.
    pub scrape_misses: IntCounter,
    /// Embedded-broker routes: one per worker per channel it has subscribers on.
    pub broker_routes: IntGauge,
    /// Cluster commands run on this node, by scope (`indexed`: only the workers holding the pinned users).
    pub cluster_queries: IntCounterVec,
    /// Workers asked by cluster commands on this node.
    pub query_workers: IntCounter,
}

impl MasterMetrics {
    /// Creates and registers the master's metrics.
    pub fn new() -> MasterMetrics {
        let registry = Registry::new();
        let workers = IntGauge::new(
            "sockhive_workers",
            "Worker processes that are up and accepting.",
        )
        .expect("valid metric");
        let worker_restarts = IntCounter::new(
            "sockhive_worker_restarts_total",
            "Workers respawned after an unexpected exit.",
        )
        .expect("valid metric");
        let scrape_misses = IntCounter::new(
            "sockhive_worker_scrape_misses_total",
            "Workers that did not answer a metrics scrape in time.",
        )
        .expect("valid metric");
        let broker_routes = IntGauge::new(
            "sockhive_broker_routes",
            "Channel subscriptions the broker holds: one per worker per channel, not per socket.",
        )
        .expect("valid metric");
        let cluster_queries = IntCounterVec::new(
            prometheus::Opts::new(
                "sockhive_cluster_queries_total",
                "Cluster commands run on this node's workers, by scope (indexed or all).",
            ),
            &["scope"],
        )
        .expect("valid metric");
        let query_workers = IntCounter::new(
            "sockhive_cluster_query_workers_total",
            "Workers asked by cluster commands on this node (the user index keeps it low).",
        )
        .expect("valid metric");
        // Present at 0 from the start, like the workers' series.
        for scope in CLUSTER_QUERY_SCOPES {
            cluster_queries.with_label_values(&[scope]);
        }
        for metric in [
            Box::new(cluster_queries.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(query_workers.clone()),
            Box::new(workers.clone()),
            Box::new(worker_restarts.clone()),
            Box::new(scrape_misses.clone()),
            Box::new(broker_routes.clone()),
        ] {
            registry.register(metric).expect("metric registered once");
        }
        MasterMetrics {
            registry,
            workers,
            worker_restarts,
            scrape_misses,
            broker_routes,
            cluster_queries,
            query_workers,
        }
    }

    /// The text exposition: the master's families, then every worker's with a `worker` label.
    pub fn render(&self, replies: Vec<(u16, ToMaster)>) -> String {
        let mut families = self.registry.gather();
        for (slot, reply) in replies {
            if let ToMaster::Metrics {
                families: snapshots,
                ..
            } = reply
            {
                let slot = slot.to_string();
                families.extend(snapshots.iter().map(|s| s.restore(Some(("worker", &slot)))));
            }
        }
        let mut text = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&merge_families(families), &mut text) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(text).unwrap_or_default()
    }
}

impl Default for MasterMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_series_exist_at_zero_before_any_event() {
        let text = MasterMetrics::new().render(Vec::new());
        for series in [
            "sockhive_workers 0",
            "sockhive_worker_restarts_total 0",
            "sockhive_worker_scrape_misses_total 0",
            "sockhive_broker_routes 0",
            "sockhive_cluster_queries_total{scope=\"indexed\"} 0",
            "sockhive_cluster_queries_total{scope=\"all\"} 0",
            "sockhive_cluster_query_workers_total 0",
        ] {
            assert!(text.lines().any(|line| line == series), "{series}:\n{text}");
        }
    }
}
