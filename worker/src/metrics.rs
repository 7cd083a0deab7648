//! The worker's own Prometheus registry.
//!
//! Every worker counts into its own registry (no shared memory across
//! processes); the master gathers and labels them on each scrape. Label values
//! are small fixed sets: never a user, a socket id or a channel.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use sockhive_shared::metrics::{CounterTable, FamilySnapshot, SeriesTable};

use crate::auth::passport::SessionAuthError;

/// Every `protocol` label value: the adapters' `SocketProtocol::NAME`s.
pub const PROTOCOLS: [&str; 2] = ["socketcluster", "socketio"];

/// Every `outcome` of `sockhive_handshakes_total` at the protocol handshake.
pub const HANDSHAKE_OUTCOMES: [&str; 4] = ["ok", "anonymous", "rejected", "failed"];

/// Every `method` of `sockhive_handshakes_total` at the protocol handshake
/// (`none`, then each `auth::Method::label`).
pub const HANDSHAKE_METHODS: [&str; 4] = ["none", "access_token", "session", "jwt"];

/// The `method` label of a login after the handshake (SocketCluster `#authenticate`).
pub const AUTHENTICATE_METHOD: &str = "authenticate";

/// The outcomes an `#authenticate` can have.
pub const AUTHENTICATE_OUTCOMES: [&str; 2] = ["ok", "failed"];

/// Every `direction` of `sockhive_messages_total`.
pub const MESSAGE_DIRECTIONS: [&str; 2] = ["in", "out"];

/// Every `reason` of `sockhive_rejected_connections_total`: the front door's
/// `Rejection::metric_reason` values (Engine.IO's refusals count as `bad_upgrade`;
/// `auth` also counts `--require-auth` refusals at the protocol handshake).
pub const REJECTION_REASONS: [&str; 7] = [
    "origin",
    "upgrade_timeout",
    "header_too_large",
    "bad_upgrade",
    "not_found",
    "max_connections",
    "auth",
];

/// The `reason`s of `sockhive_protocol_errors_total` every protocol can count:
/// the codecs' `metric_reason`s (`bad_json`, `bad_packet`, `too_big`), the
/// socket core's endings (`CloseReason::metric_reason`) and refusals
/// (`ChannelRefusal::metric_reason`).
pub const PROTOCOL_ERROR_REASONS: [&str; 9] = [
    "bad_json",
    "bad_packet",
    "too_big",
    "bad_utf8",
    "bad_frame",
    "handshake_timeout",
    "ping_timeout",
    "name_too_long",
    "max_subscriptions",
];

/// Reasons only one protocol counts, as (protocol, reason).
pub const PROTOCOL_SPECIFIC_ERRORS: [(&str, &str); 1] = [("socketio", "bad_namespace")];

/// Every `outcome` of `sockhive_hook_calls_total`: answered (`ok`), answered
/// with the app's error (`error`), no answer in time, no answer at all, or
/// refused because the socket's queue of calls was full (`queue_full`).
pub const HOOK_OUTCOMES: [&str; 5] = ["ok", "error", "timeout", "unavailable", "queue_full"];

/// The `result` of `sockhive_session_logins_total` for a login that worked;
/// the others are [`SessionAuthError::REASONS`].
pub const SESSION_LOGIN_OK: &str = "ok";

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
    /// Long-polling requests handed to their session's owner, by where it
    /// lives (`worker`: another worker of this node; `node`: another node).
    pub polling_forwards: IntCounterVec,
    /// Calls to the application's hooks, by hook and outcome.
    pub hook_calls: IntCounterVec,
    /// Time from starting a hook call to its answer, by hook.
    pub hook_duration: HistogramVec,
    /// `handshakes`, resolved for every (outcome, method).
    handshake_counts: CounterTable,
    /// `messages{direction="in"}`.
    messages_in: IntCounter,
    /// `messages{direction="out"}`.
    messages_out: IntCounter,
    /// `connections` and `handshake_duration`, resolved per protocol.
    per_protocol: SeriesTable<(IntGauge, Histogram)>,
    /// `rejected_connections`, resolved per reason.
    rejections: CounterTable,
    /// `protocol_errors`, resolved per (protocol, reason).
    protocol_error_counts: CounterTable,
    /// `hook_calls` and `hook_duration`, resolved per (hook, outcome).
    hook_series: SeriesTable<(IntCounter, Histogram)>,
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
        let hook_calls = IntCounterVec::new(
            Opts::new(
                "sockhive_hook_calls_total",
                "Calls to the application's hooks, by hook and outcome.",
            ),
            &["hook", "outcome"],
        )
        .expect("valid metric");
        let hook_duration = HistogramVec::new(
            HistogramOpts::new(
                "sockhive_hook_duration_seconds",
                "Time from starting a hook call to the application's answer, by hook.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["hook"],
        )
        .expect("valid metric");
        let polling_forwards = IntCounterVec::new(
            Opts::new(
                "sockhive_polling_forwards_total",
                "Long-polling requests handed to their session's owner, by where it lives.",
            ),
            &["scope"],
        )
        .expect("valid metric");
        // Every known series exists from the start with 0, so a dashboard
        // or an alert can tell "none yet" from "not exported"; resolving
        // them here creates them.
        for scope in ["worker", "node"] {
            polling_forwards.with_label_values(&[scope]);
        }
        let hook_series = SeriesTable::new(
            sockhive_shared::config::HookKind::ALL
                .iter()
                .flat_map(|hook| HOOK_OUTCOMES.map(|outcome| (hook.as_str(), outcome))),
            |labels| {
                (
                    hook_calls.with_label_values(labels),
                    hook_duration.with_label_values(&labels[..1]),
                )
            },
        );
        let per_protocol = SeriesTable::new(PROTOCOLS.map(|p| (p, "")), |labels| {
            (
                connections.with_label_values(labels),
                handshake_duration.with_label_values(labels),
            )
        });
        let protocol_error_counts = CounterTable::new(
            &protocol_errors,
            PROTOCOLS
                .iter()
                .flat_map(|&protocol| PROTOCOL_ERROR_REASONS.map(|reason| (protocol, reason)))
                .chain(PROTOCOL_SPECIFIC_ERRORS),
        );
        let handshake_counts = CounterTable::new(
            &handshakes,
            HANDSHAKE_OUTCOMES
                .iter()
                .flat_map(|&outcome| HANDSHAKE_METHODS.map(|method| (outcome, method)))
                .chain(AUTHENTICATE_OUTCOMES.map(|outcome| (outcome, AUTHENTICATE_METHOD))),
        );
        let [messages_in, messages_out] =
            MESSAGE_DIRECTIONS.map(|direction| messages.with_label_values(&[direction]));
        let rejections =
            CounterTable::new(&rejected_connections, REJECTION_REASONS.map(|r| (r, "")));
        for result in std::iter::once(SESSION_LOGIN_OK).chain(SessionAuthError::REASONS) {
            session_logins.with_label_values(&[result]);
        }
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
            Box::new(hook_calls.clone()),
            Box::new(hook_duration.clone()),
            Box::new(polling_forwards.clone()),
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
            hook_calls,
            hook_duration,
            polling_forwards,
            handshake_counts,
            messages_in,
            messages_out,
            per_protocol,
            rejections,
            protocol_error_counts,
            hook_series,
        }
    }

    /// Counts one finished hook call.
    pub fn hook_call(&self, hook: &str, outcome: &str, took: std::time::Duration) {
        let observe = outcome != "queue_full";
        match self.hook_series.get(hook, outcome) {
            Some((calls, duration)) => {
                calls.inc();
                if observe {
                    duration.observe(took.as_secs_f64());
                }
            }
            None => {
                self.hook_calls.with_label_values(&[hook, outcome]).inc();
                if observe {
                    self.hook_duration
                        .with_label_values(&[hook])
                        .observe(took.as_secs_f64());
                }
            }
        }
    }

    /// Counts a protocol handshake (or `#authenticate`) by outcome and method.
    pub fn handshake(&self, outcome: &str, method: &str) {
        self.handshake_counts.inc(outcome, method);
    }

    /// Counts one protocol message read from a client.
    pub fn message_in(&self) {
        self.messages_in.inc();
    }

    /// The counter of protocol messages written (a socket's writer holds it).
    pub fn messages_out(&self) -> IntCounter {
        self.messages_out.clone()
    }

    /// A protocol's open-socket gauge (a socket's task holds it).
    pub fn connections_of(&self, protocol: &str) -> IntGauge {
        match self.per_protocol.get(protocol, "") {
            Some((gauge, _)) => gauge.clone(),
            None => self.connections.with_label_values(&[protocol]),
        }
    }

    /// Records how long a protocol handshake took from the upgrade request.
    pub fn handshake_took(&self, protocol: &str, seconds: f64) {
        match self.per_protocol.get(protocol, "") {
            Some((_, histogram)) => histogram.observe(seconds),
            None => self
                .handshake_duration
                .with_label_values(&[protocol])
                .observe(seconds),
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
        self.rejections.inc(reason, "");
    }

    /// Counts a protocol error.
    pub fn protocol_error(&self, protocol: &str, reason: &str) {
        self.protocol_error_counts.inc(protocol, reason);
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Method;
    use crate::front_door::upgrade::Rejection;
    use crate::protocol::socketio::request::RequestRefusal;
    use crate::socket::ending::CloseReason;
    use crate::socket::membership::ChannelRefusal;
    use sockhive_shared::metrics::FamilyKind;

    /// The value of the series of `family` with exactly these label values
    /// (in any order: the registry sorts labels by name).
    fn value(metrics: &WorkerMetrics, family: &str, labels: &[&str]) -> Option<f64> {
        let mut wanted = labels.to_vec();
        wanted.sort_unstable();
        metrics
            .snapshot()
            .into_iter()
            .find(|f| f.name == family)?
            .series
            .into_iter()
            .find(|s| {
                let mut have: Vec<&str> = s.labels.iter().map(|(_, v)| v.as_str()).collect();
                have.sort_unstable();
                have == wanted
            })
            .map(|s| s.value)
    }

    #[test]
    fn every_known_series_exists_at_zero_before_any_event() {
        let metrics = WorkerMetrics::new();
        let mut expected: Vec<(&str, Vec<&str>)> = Vec::new();
        for protocol in PROTOCOLS {
            expected.push(("sockhive_connections", vec![protocol]));
            for reason in PROTOCOL_ERROR_REASONS {
                expected.push(("sockhive_protocol_errors_total", vec![protocol, reason]));
            }
        }
        expected.push((
            "sockhive_protocol_errors_total",
            vec!["socketio", "bad_namespace"],
        ));
        for reason in REJECTION_REASONS {
            expected.push(("sockhive_rejected_connections_total", vec![reason]));
        }
        for outcome in HANDSHAKE_OUTCOMES {
            for method in HANDSHAKE_METHODS {
                expected.push(("sockhive_handshakes_total", vec![outcome, method]));
            }
        }
        expected.push(("sockhive_handshakes_total", vec!["ok", "authenticate"]));
        expected.push(("sockhive_messages_total", vec!["in"]));
        expected.push(("sockhive_messages_total", vec!["out"]));
        expected.push(("sockhive_session_logins_total", vec!["ok"]));
        expected.push(("sockhive_session_logins_total", vec!["store_unavailable"]));
        for (family, labels) in expected {
            assert_eq!(
                value(&metrics, family, &labels),
                Some(0.0),
                "{family}{labels:?}"
            );
        }
        let histogram = metrics
            .snapshot()
            .into_iter()
            .find(|f| f.name == "sockhive_handshake_duration_seconds")
            .expect("handshake histogram exported before any handshake");
        assert_eq!(histogram.kind, FamilyKind::Histogram);
        assert_eq!(histogram.series.len(), PROTOCOLS.len());
    }

    #[test]
    fn the_label_lists_cover_every_reason_the_code_counts() {
        for rejection in [
            Rejection::UpgradeTimeout,
            Rejection::HeaderTooLarge,
            Rejection::Malformed(String::new()),
            Rejection::NotFound(String::new()),
            Rejection::BadUpgrade(""),
            Rejection::UnsupportedVersion(String::new()),
            Rejection::Origin(String::new()),
            Rejection::Unauthorized("".into(), String::new()),
            Rejection::MaxConnections,
        ] {
            assert!(REJECTION_REASONS.contains(&rejection.metric_reason()));
        }
        for refusal in [
            RequestRefusal::NotAnUpgrade,
            RequestRefusal::TransportUnknown,
            RequestRefusal::UnsupportedVersion,
            RequestRefusal::SessionIdUnknown,
        ] {
            assert!(REJECTION_REASONS.contains(&refusal.metric_reason()));
        }
        for ending in [
            CloseReason::HandshakeTimeout,
            CloseReason::PongTimeout,
            CloseReason::TooBig { size: 2, max: 1 },
            CloseReason::BadUtf8,
            CloseReason::BadFrame(String::new()),
            CloseReason::NotReading,
            CloseReason::GoingAway,
        ] {
            if let Some(reason) = ending.metric_reason() {
                assert!(PROTOCOL_ERROR_REASONS.contains(&reason), "{reason}");
            }
        }
        for refusal in [
            ChannelRefusal::NameTooLong { len: 2, max: 1 },
            ChannelRefusal::TooMany { max: 1 },
            ChannelRefusal::Forbidden,
        ] {
            if let Some(reason) = refusal.metric_reason() {
                assert!(PROTOCOL_ERROR_REASONS.contains(&reason), "{reason}");
            }
        }
        for method in [Method::AccessToken, Method::Session, Method::Token] {
            assert!(HANDSHAKE_METHODS.contains(&method.label()));
        }
    }

    #[test]
    fn counting_moves_the_pre_created_series() {
        let metrics = WorkerMetrics::new();
        metrics.reject("origin");
        metrics.protocol_error("socketio", "bad_json");
        assert_eq!(
            value(&metrics, "sockhive_rejected_connections_total", &["origin"]),
            Some(1.0)
        );
        assert_eq!(
            value(
                &metrics,
                "sockhive_protocol_errors_total",
                &["socketio", "bad_json"]
            ),
            Some(1.0)
        );
    }
}
