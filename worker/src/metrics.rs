//! The worker's own Prometheus registry.
//!
//! Every worker counts into its own registry (no shared memory across
//! processes); the master gathers and labels them on each scrape. Label values
//! are small fixed sets: never a user, a socket id or a channel.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use sockhive_shared::metrics::FamilySnapshot;

/// Handles to every metric a worker records.
#[derive(Clone)]
pub struct WorkerMetrics {
    registry: Registry,
    /// Open sockets by protocol.
    pub connections: IntGaugeVec,
    /// Handshakes by outcome (`ok`, `anonymous`, `rejected`, `failed`) and method (`none`, `jwt`, `session`, ...).
    pub handshakes: IntCounterVec,
    /// Time from the first request byte to the protocol handshake reply.
    pub handshake_duration: HistogramVec,
    /// Protocol messages by direction (`in`, `out`).
    pub messages: IntCounterVec,
    /// Connections refused before they became sockets, by reason.
    pub rejected_connections: IntCounterVec,
    /// Malformed or over-limit client input, by protocol and reason.
    pub protocol_errors: IntCounterVec,
    /// Session-cookie logins by result: `ok` or the refusal reason (`bad_signature`, `no_session`, `not_logged_in`, `store_unavailable`, ...).
    pub session_logins: IntCounterVec,
    /// Sockets deauthenticated or closed because their web session logged out.
    pub logouts: IntCounter,
    /// Sockets closed because the client did not read fast enough.
    pub slow_consumers: IntCounter,
    /// Time for a message to go to the broker and back (publish acknowledged).
    pub broker_roundtrip: Histogram,
}

impl WorkerMetrics {
    /// Creates and registers every metric.
    pub fn new() -> WorkerMetrics {
        let registry = Registry::new();
        let connections = IntGaugeVec::new(
            Opts::new("sockhive_connections", "Open sockets by protocol."),
            &["protocol"],
        )
        .expect("valid metric");
        let handshakes = IntCounterVec::new(
            Opts::new(
                "sockhive_handshakes_total",
                "Protocol handshakes by outcome and credential method.",
            ),
            &["outcome", "method"],
        )
        .expect("valid metric");
        let handshake_duration = HistogramVec::new(
            HistogramOpts::new(
                "sockhive_handshake_duration_seconds",
                "Time from the upgrade request to the protocol handshake reply.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["protocol"],
        )
        .expect("valid metric");
        let messages = IntCounterVec::new(
            Opts::new("sockhive_messages_total", "Protocol messages by direction."),
            &["direction"],
        )
        .expect("valid metric");
        let rejected_connections = IntCounterVec::new(
            Opts::new(
                "sockhive_rejected_connections_total",
                "Connections refused before becoming a socket, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let protocol_errors = IntCounterVec::new(
            Opts::new(
                "sockhive_protocol_errors_total",
                "Malformed or over-limit client input, by protocol and reason.",
            ),
            &["protocol", "reason"],
        )
        .expect("valid metric");
        let session_logins = IntCounterVec::new(
            Opts::new(
                "sockhive_session_logins_total",
                "Session-cookie logins by result (ok or the refusal reason).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let logouts = IntCounter::new(
            "sockhive_session_logouts_total",
            "Sockets whose web session logged out while connected.",
        )
        .expect("valid metric");
        let slow_consumers = IntCounter::new(
            "sockhive_slow_consumer_disconnects_total",
            "Sockets closed because their send queue exceeded max_send_queue.",
        )
        .expect("valid metric");
        let broker_roundtrip = Histogram::with_opts(
            HistogramOpts::new(
                "sockhive_broker_roundtrip_seconds",
                "Time from handing a publish to the broker to its acknowledgement.",
            )
            .buckets(vec![
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25,
            ]),
        )
        .expect("valid metric");
        for collector in [
            Box::new(connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(handshakes.clone()),
            Box::new(handshake_duration.clone()),
            Box::new(messages.clone()),
            Box::new(rejected_connections.clone()),
            Box::new(protocol_errors.clone()),
            Box::new(slow_consumers.clone()),
            Box::new(session_logins.clone()),
            Box::new(logouts.clone()),
            Box::new(broker_roundtrip.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        WorkerMetrics {
            registry,
            connections,
            handshakes,
            handshake_duration,
            messages,
            rejected_connections,
            protocol_errors,
            slow_consumers,
            broker_roundtrip,
            session_logins,
            logouts,
        }
    }

    /// Every family, ready to cross the IPC channel.
    pub fn snapshot(&self) -> Vec<FamilySnapshot> {
        self.registry
            .gather()
            .iter()
            .filter_map(FamilySnapshot::capture)
            .collect()
    }

    /// Counts a connection refused before the upgrade.
    pub fn reject(&self, reason: &str) {
        self.rejected_connections.with_label_values(&[reason]).inc();
    }

    /// Counts a protocol error.
    pub fn protocol_error(&self, protocol: &str, reason: &str) {
        self.protocol_errors
            .with_label_values(&[protocol, reason])
            .inc();
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}
