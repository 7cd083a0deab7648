//! The Markdown table: median [min..max] per figure and server, the
//! sockhive/peer ratios, and the issue's targets checked against them.

use std::fmt::Write as _;

use serde_json::Value;

use crate::servers::ServerKind;
use crate::suite::{Record, Status, SuiteOutput};

/// One row of the table.
struct Figure {
    scenario: &'static str,
    label: &'static str,
    /// JSON pointer into the record's result.
    pointer: &'static str,
    higher_is_better: bool,
}

const FIGURES: &[Figure] = &[
    Figure {
        scenario: "handshake",
        label: "authenticated handshakes/s",
        pointer: "/rate_per_s",
        higher_is_better: true,
    },
    Figure {
        scenario: "handshake",
        label: "latency p50, ms",
        pointer: "/latency/p50_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "handshake",
        label: "latency p99, ms",
        pointer: "/latency/p99_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "handshake",
        label: "latency max, ms",
        pointer: "/latency/max_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "handshake",
        label: "server CPU per handshake, ms",
        pointer: "/server_cpu_ms_per_op",
        higher_is_better: false,
    },
    Figure {
        scenario: "handshake",
        label: "generator CPU per handshake, ms",
        pointer: "/generator_cpu_ms_per_op",
        higher_is_better: false,
    },
    Figure {
        scenario: "handshake",
        label: "failed attempts",
        pointer: "/errors",
        higher_is_better: false,
    },
    Figure {
        scenario: "handshake",
        label: "redis-server CPU per handshake, ms",
        pointer: "/store_cpu_ms_per_op",
        higher_is_better: false,
    },
    Figure {
        scenario: "handshake_paced",
        label: "offered rate (half of own peak)/s",
        pointer: "/offered_rate_per_s",
        higher_is_better: true,
    },
    Figure {
        scenario: "handshake_paced",
        label: "latency p50, ms",
        pointer: "/latency/p50_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "handshake_paced",
        label: "latency p99, ms",
        pointer: "/latency/p99_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "handshake_pinned",
        label: "authenticated handshakes/s",
        pointer: "/rate_per_s",
        higher_is_better: true,
    },
    Figure {
        scenario: "handshake_pinned",
        label: "latency p50, ms",
        pointer: "/latency/p50_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "handshake_pinned",
        label: "latency p99, ms",
        pointer: "/latency/p99_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "handshake_pinned",
        label: "server CPU per handshake, ms",
        pointer: "/server_cpu_ms_per_op",
        higher_is_better: false,
    },
    Figure {
        scenario: "handshake_pinned",
        label: "generator CPU per handshake, ms",
        pointer: "/generator_cpu_ms_per_op",
        higher_is_better: false,
    },
    Figure {
        scenario: "handshake_pinned",
        label: "redis-server CPU per handshake, ms",
        pointer: "/store_cpu_ms_per_op",
        higher_is_better: false,
    },
    Figure {
        scenario: "handshake_pinned",
        label: "failed attempts",
        pointer: "/errors",
        higher_is_better: false,
    },
    Figure {
        scenario: "reject",
        label: "forged-cookie rejections/s",
        pointer: "/rate_per_s",
        higher_is_better: true,
    },
    Figure {
        scenario: "reject",
        label: "latency p99, ms",
        pointer: "/latency/p99_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "reject",
        label: "server CPU per rejection, ms",
        pointer: "/server_cpu_ms_per_op",
        higher_is_better: false,
    },
    Figure {
        scenario: "reject",
        label: "forged logins accepted",
        pointer: "/wrong",
        higher_is_better: false,
    },
    Figure {
        scenario: "idle",
        label: "sockets held",
        pointer: "/connected",
        higher_is_better: true,
    },
    Figure {
        scenario: "idle",
        label: "server RSS per socket, bytes",
        pointer: "/rss_per_socket",
        higher_is_better: false,
    },
    Figure {
        scenario: "idle",
        label: "server RSS held, MiB",
        pointer: "/rss_held_mib",
        higher_is_better: false,
    },
    Figure {
        scenario: "fanout_burst",
        label: "deliveries/s",
        pointer: "/deliveries_per_s",
        higher_is_better: true,
    },
    Figure {
        scenario: "fanout_burst",
        label: "latency p50, ms",
        pointer: "/latency/p50_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "fanout_burst",
        label: "latency p99, ms",
        pointer: "/latency/p99_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "fanout_burst",
        label: "delivered / expected, %",
        pointer: "/delivered_pct",
        higher_is_better: true,
    },
    Figure {
        scenario: "fanout_burst",
        label: "server CPU per delivery, µs",
        pointer: "/server_cpu_us_per_delivery",
        higher_is_better: false,
    },
    Figure {
        scenario: "fanout_burst",
        label: "generator CPU per delivery, µs",
        pointer: "/generator_cpu_us_per_delivery",
        higher_is_better: false,
    },
    Figure {
        scenario: "fanout_burst",
        label: "server write syscalls per delivery",
        pointer: "/server_syscalls_per_delivery/writes",
        higher_is_better: false,
    },
    Figure {
        scenario: "fanout_burst",
        label: "server epoll_waits per delivery",
        pointer: "/server_syscalls_per_delivery/waits",
        higher_is_better: false,
    },
    Figure {
        scenario: "fanout_paced",
        label: "deliveries/s offered",
        pointer: "/offered_per_s",
        higher_is_better: true,
    },
    Figure {
        scenario: "fanout_paced",
        label: "latency p50, ms",
        pointer: "/latency/p50_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "fanout_paced",
        label: "latency p99, ms",
        pointer: "/latency/p99_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "fanout_paced",
        label: "server CPU per delivery, µs",
        pointer: "/server_cpu_us_per_delivery",
        higher_is_better: false,
    },
    Figure {
        scenario: "fanout_burst_pinned",
        label: "deliveries/s",
        pointer: "/deliveries_per_s",
        higher_is_better: true,
    },
    Figure {
        scenario: "fanout_burst_pinned",
        label: "latency p50, ms",
        pointer: "/latency/p50_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "fanout_burst_pinned",
        label: "latency p99, ms",
        pointer: "/latency/p99_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "fanout_burst_pinned",
        label: "delivered / expected, %",
        pointer: "/delivered_pct",
        higher_is_better: true,
    },
    Figure {
        scenario: "fanout_burst_pinned",
        label: "server CPU per delivery, µs",
        pointer: "/server_cpu_us_per_delivery",
        higher_is_better: false,
    },
    Figure {
        scenario: "fanout_burst_pinned",
        label: "generator CPU per delivery, µs",
        pointer: "/generator_cpu_us_per_delivery",
        higher_is_better: false,
    },
    Figure {
        scenario: "fanout_burst_pinned",
        label: "server write syscalls per delivery",
        pointer: "/server_syscalls_per_delivery/writes",
        higher_is_better: false,
    },
    Figure {
        scenario: "fanout_burst_pinned",
        label: "server epoll_waits per delivery",
        pointer: "/server_syscalls_per_delivery/waits",
        higher_is_better: false,
    },
    Figure {
        scenario: "fanout_paced_pinned",
        label: "latency p50, ms",
        pointer: "/latency/p50_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "fanout_paced_pinned",
        label: "latency p99, ms",
        pointer: "/latency/p99_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "polling_handshake",
        label: "authenticated polling connects/s",
        pointer: "/rate_per_s",
        higher_is_better: true,
    },
    Figure {
        scenario: "polling_handshake",
        label: "latency p50, ms",
        pointer: "/latency/p50_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "polling_handshake",
        label: "latency p99, ms",
        pointer: "/latency/p99_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "polling_handshake",
        label: "server CPU per handshake, ms",
        pointer: "/server_cpu_ms_per_op",
        higher_is_better: false,
    },
    Figure {
        scenario: "polling_handshake",
        label: "generator CPU per handshake, ms",
        pointer: "/generator_cpu_ms_per_op",
        higher_is_better: false,
    },
    Figure {
        scenario: "polling_handshake",
        label: "HTTP requests per handshake (incl. close)",
        pointer: "/requests_per_attempt",
        higher_is_better: false,
    },
    Figure {
        scenario: "polling_handshake",
        label: "requests forwarded to the session's worker, %",
        pointer: "/forwarded_pct",
        higher_is_better: false,
    },
    Figure {
        scenario: "polling_handshake",
        label: "failed attempts",
        pointer: "/errors",
        higher_is_better: false,
    },
    Figure {
        scenario: "polling_fanout",
        label: "polling subscribers",
        pointer: "/subscribers",
        higher_is_better: true,
    },
    Figure {
        scenario: "polling_fanout",
        label: "deliveries/s",
        pointer: "/deliveries_per_s",
        higher_is_better: true,
    },
    Figure {
        scenario: "polling_fanout",
        label: "latency p50, ms",
        pointer: "/latency/p50_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "polling_fanout",
        label: "latency p99, ms",
        pointer: "/latency/p99_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "polling_fanout",
        label: "delivered / expected, %",
        pointer: "/delivered_pct",
        higher_is_better: true,
    },
    Figure {
        scenario: "polling_fanout",
        label: "server CPU per delivery, µs",
        pointer: "/server_cpu_us_per_delivery",
        higher_is_better: false,
    },
    Figure {
        scenario: "polling_fanout",
        label: "generator CPU per delivery, µs",
        pointer: "/generator_cpu_us_per_delivery",
        higher_is_better: false,
    },
    Figure {
        scenario: "polling_fanout",
        label: "deliveries per HTTP request",
        pointer: "/deliveries_per_request",
        higher_is_better: true,
    },
    Figure {
        scenario: "polling_fanout",
        label: "requests forwarded to the session's worker, %",
        pointer: "/forwarded_pct",
        higher_is_better: false,
    },
    Figure {
        scenario: "query",
        label: "filterSocketsByUser p50, ms",
        pointer: "/latency/p50_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "query",
        label: "filterSocketsByUser p99, ms",
        pointer: "/latency/p99_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "query",
        label: "server CPU per query, ms",
        pointer: "/server_cpu_ms_per_query",
        higher_is_better: false,
    },
    Figure {
        scenario: "rpc",
        label: "round trips/s",
        pointer: "/rate_per_s",
        higher_is_better: true,
    },
    Figure {
        scenario: "rpc",
        label: "latency p50, ms",
        pointer: "/latency/p50_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "rpc",
        label: "latency p99, ms",
        pointer: "/latency/p99_ms",
        higher_is_better: false,
    },
    Figure {
        scenario: "rpc",
        label: "server CPU per call, µs (sockhive: with its hook server)",
        pointer: "/server_cpu_us_per_call",
        higher_is_better: false,
    },
    Figure {
        scenario: "rpc",
        label: "of which the hook server, µs",
        pointer: "/hook_cpu_us_per_call",
        higher_is_better: false,
    },
    Figure {
        scenario: "rpc",
        label: "generator CPU per call, µs",
        pointer: "/generator_cpu_us_per_call",
        higher_is_better: false,
    },
    Figure {
        scenario: "rpc",
        label: "failed calls",
        pointer: "/failed",
        higher_is_better: false,
    },
];

/// Adds derived figures that are easier to read than the raw ones.
fn derived(record: &Record) -> Value {
    let mut value = record.result.clone();
    if let Some(held) = value["rss_held"].as_f64() {
        value["rss_held_mib"] = Value::from(held / 1048576.0);
    }
    if let (Some(d), Some(e)) = (value["delivered"].as_f64(), value["expected"].as_f64()) {
        if e > 0.0 {
            value["delivered_pct"] = Value::from(100.0 * d / e);
        }
    }
    if record.scenario == "polling_handshake" {
        if let (Some(r), Some(a)) = (
            value["http_requests_all"].as_f64(),
            value["attempts_all"].as_f64(),
        ) {
            if a > 0.0 && r > 0.0 {
                value["requests_per_attempt"] = Value::from(r / a);
            }
        }
    }
    if record.scenario.starts_with("fanout_paced") {
        if let (Some(m), Some(s), Some(el)) = (
            value["messages"].as_f64(),
            value["subscribers"].as_f64(),
            value["elapsed_s"].as_f64(),
        ) {
            if el > 0.0 {
                value["offered_per_s"] = Value::from(m * s / el);
            }
        }
    }
    value
}

/// median, min, max of the successful runs' values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// How many runs.
    pub runs: usize,
}

/// The spread of `values`; `None` when empty.
pub fn spread(values: &[f64]) -> Option<Spread> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: sorted[0],
        max: sorted[n - 1],
        runs: n,
    })
}

fn values(output: &SuiteOutput, server: &str, figure: &Figure) -> Vec<f64> {
    output
        .records
        .iter()
        .filter(|r| r.server == server && r.scenario == figure.scenario && r.status == Status::Ok)
        .filter_map(|r| derived(r).pointer(figure.pointer).and_then(Value::as_f64))
        .collect()
}

fn reason_for(output: &SuiteOutput, server: &str, scenario: &str) -> Option<String> {
    output
        .records
        .iter()
        .find(|r| r.server == server && r.scenario == scenario && r.status != Status::Ok)
        .map(|r| match r.status {
            Status::Skipped => r.reason.clone().unwrap_or_else(|| "n/a".into()),
            _ => format!("failed: {}", r.reason.clone().unwrap_or_default()),
        })
}

/// A number with a sensible number of digits for its size.
pub fn number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 || value == value.trunc() && magnitude < 1e15 {
        let rounded = value.round() as i64;
        let digits = rounded.abs().to_string();
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        if rounded < 0 {
            grouped.insert(0, '-');
        }
        grouped
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 0.1 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

fn cell(spread: Option<Spread>) -> String {
    match spread {
        None => "—".into(),
        Some(s) if s.runs == 1 => number(s.median),
        Some(s) => format!(
            "{} [{}..{}]",
            number(s.median),
            number(s.min),
            number(s.max)
        ),
    }
}

fn ratio(a: Option<Spread>, b: Option<Spread>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.median != 0.0 => format!("{:.2}x", a.median / b.median),
        (Some(a), Some(_)) if a.median != 0.0 => "∞".into(),
        _ => "—".into(),
    }
}

/// Median of a figure for a server, looked up by scenario and pointer.
fn median_of(
    output: &SuiteOutput,
    server: ServerKind,
    scenario: &str,
    pointer: &str,
) -> Option<f64> {
    let figure = FIGURES
        .iter()
        .find(|f| f.scenario == scenario && f.pointer == pointer)?;
    spread(&values(output, server.key(), figure)).map(|s| s.median)
}

/// One target of the issue, checked.
struct Check {
    what: String,
    measured: String,
    verdict: &'static str,
}

fn verdict(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

fn targets(output: &SuiteOutput) -> Vec<Check> {
    let sockhive = ServerKind::SockhiveSc;
    let best_peer = |scenario: &str, pointer: &str, higher: bool| {
        [ServerKind::ScPeer, ServerKind::SioPeer]
            .iter()
            .filter_map(|&p| median_of(output, p, scenario, pointer).map(|v| (p, v)))
            .reduce(|a, b| if (b.1 > a.1) == higher { b } else { a })
    };
    let mut checks = Vec::new();

    let hs = median_of(output, sockhive, "handshake", "/rate_per_s");
    let peer = best_peer("handshake", "/rate_per_s", true);
    checks.push(Check {
        what: "handshakes/s ≥ 10x the best Node peer".into(),
        measured: match (hs, peer) {
            (Some(h), Some((p, v))) => format!(
                "{} vs {} {} = {:.2}x",
                number(h),
                p.title(),
                number(v),
                h / v
            ),
            _ => "—".into(),
        },
        verdict: verdict(hs.zip(peer).map(|(h, (_, v))| h >= 10.0 * v)),
    });
    let bare = median_of(output, ServerKind::Bare, "handshake", "/rate_per_s");
    checks.push(Check {
        what: "handshakes/s ≥ 0.8x the bare tokio-tungstenite server".into(),
        measured: match (hs, bare) {
            (Some(h), Some(b)) => format!("{} vs {} = {:.2}x", number(h), number(b), h / b),
            _ => "—".into(),
        },
        verdict: verdict(hs.zip(bare).map(|(h, b)| h >= 0.8 * b)),
    });
    let cpu = median_of(output, sockhive, "handshake", "/server_cpu_ms_per_op");
    checks.push(Check {
        what: "server CPU per authenticated handshake ≤ 0.1 ms".into(),
        measured: cpu.map_or("—".into(), |c| format!("{} ms", number(c))),
        verdict: verdict(cpu.map(|c| c <= 0.1)),
    });
    let p99 = median_of(output, sockhive, "handshake_paced", "/latency/p99_ms");
    let peer = best_peer("handshake_paced", "/latency/p99_ms", false);
    checks.push(Check {
        what: "p99 at half of peak ≤ 1/10 of the best peer's".into(),
        measured: match (p99, peer) {
            (Some(h), Some((p, v))) => {
                format!("{} ms vs {} {} ms", number(h), p.title(), number(v))
            }
            _ => "—".into(),
        },
        verdict: verdict(p99.zip(peer).map(|(h, (_, v))| h * 10.0 <= v)),
    });
    let rss = median_of(output, sockhive, "idle", "/rss_per_socket");
    checks.push(Check {
        what: "≤ 5 KB server RSS per idle authenticated socket".into(),
        measured: rss.map_or("—".into(), |r| format!("{} bytes", number(r))),
        verdict: verdict(rss.map(|r| r <= 5000.0)),
    });
    let fan = median_of(output, sockhive, "fanout_burst", "/deliveries_per_s");
    let peer = best_peer("fanout_burst", "/deliveries_per_s", true);
    checks.push(Check {
        what: "fan-out ≥ 10x the best peer's deliveries/s".into(),
        measured: match (fan, peer) {
            (Some(h), Some((p, v))) => format!(
                "{} vs {} {} = {:.2}x",
                number(h),
                p.title(),
                number(v),
                h / v
            ),
            _ => "—".into(),
        },
        verdict: verdict(fan.zip(peer).map(|(h, (_, v))| h >= 10.0 * v)),
    });
    // Issue 19: the burst costs the server no more per delivery than the
    // bare server, through either broker, shared and pinned.
    for scenario in ["fanout_burst", "fanout_burst_pinned"] {
        let bare = median_of(
            output,
            ServerKind::Bare,
            scenario,
            "/server_cpu_us_per_delivery",
        );
        for kind in [ServerKind::SockhiveSc, ServerKind::SockhiveScRedis] {
            let ours = median_of(output, kind, scenario, "/server_cpu_us_per_delivery");
            if ours.is_none() && bare.is_none() {
                continue;
            }
            checks.push(Check {
                what: format!(
                    "{scenario}: {} server CPU per delivery ≤ the bare server's (issue 19)",
                    kind.title()
                ),
                measured: match (ours, bare) {
                    (Some(a), Some(b)) => format!("{} µs vs {} µs", number(a), number(b)),
                    _ => "—".into(),
                },
                verdict: verdict(ours.zip(bare).map(|(a, b)| a <= b)),
            });
        }
    }
    // Issue 19: a cookie-authenticated SocketCluster handshake costs the
    // server at most 1.2x the CPU of the bare server's unauthenticated one
    // (the same protocol handshake), shared and pinned.
    for scenario in ["handshake", "handshake_pinned"] {
        let cpu = |kind| median_of(output, kind, scenario, "/server_cpu_ms_per_op");
        let (ours, bare) = (cpu(sockhive), cpu(ServerKind::Bare));
        if ours.is_none() && bare.is_none() {
            continue;
        }
        checks.push(Check {
            what: format!(
                "{scenario}: {} server CPU per cookie handshake ≤ 1.2x the bare server's (issue 19)",
                sockhive.title()
            ),
            measured: match (ours, bare) {
                (Some(a), Some(b)) if b > 0.0 => {
                    format!("{} ms vs {} ms = {:.2}x", number(a), number(b), a / b)
                }
                _ => "—".into(),
            },
            verdict: verdict(
                ours.zip(bare)
                    .filter(|(_, b)| *b > 0.0)
                    .map(|(a, b)| a <= 1.2 * b),
            ),
        });
    }
    let query = median_of(output, sockhive, "query", "/latency/p99_ms");
    checks.push(Check {
        what: "query p99 ≤ 2 ms".into(),
        measured: query.map_or("—".into(), |q| format!("{} ms", number(q))),
        verdict: verdict(query.map(|q| q <= 2.0)),
    });
    checks
}

/// Issue 13's targets for `rpc`, each sockhive protocol against the Node peer
/// speaking it: CPU per call (sockhive + its hook server) ≤ 1.5x, p99 ≤ the peer's.
fn rpc_targets(output: &SuiteOutput) -> Vec<Check> {
    let mut checks = Vec::new();
    for (sockhive, peer) in [
        (ServerKind::SockhiveSc, ServerKind::ScPeer),
        (ServerKind::SockhiveSio, ServerKind::SioPeer),
    ] {
        let cpu = |kind| median_of(output, kind, "rpc", "/server_cpu_us_per_call");
        let (ours, theirs) = (cpu(sockhive), cpu(peer));
        checks.push(Check {
            what: format!(
                "{} + hook server CPU per call ≤ 1.5x {}'s",
                sockhive.title(),
                peer.title()
            ),
            measured: match (ours, theirs) {
                (Some(a), Some(b)) if b > 0.0 => {
                    format!("{} µs vs {} µs = {:.2}x", number(a), number(b), a / b)
                }
                _ => "—".into(),
            },
            verdict: verdict(
                ours.zip(theirs)
                    .filter(|(_, b)| *b > 0.0)
                    .map(|(a, b)| a <= 1.5 * b),
            ),
        });
        let p99 = |kind| median_of(output, kind, "rpc", "/latency/p99_ms");
        let (ours, theirs) = (p99(sockhive), p99(peer));
        checks.push(Check {
            what: format!("{} rpc p99 ≤ {}'s", sockhive.title(), peer.title()),
            measured: match (ours, theirs) {
                (Some(a), Some(b)) => format!("{} ms vs {} ms", number(a), number(b)),
                _ => "—".into(),
            },
            verdict: verdict(ours.zip(theirs).map(|(a, b)| a <= b)),
        });
    }
    checks
}

/// Renders the whole report.
pub fn markdown(output: &SuiteOutput) -> String {
    let mut md = String::new();
    let meta = &output.meta;
    let text = |key: &str| meta[key].as_str().unwrap_or("?").to_string();
    let _ = writeln!(md, "# sockhive benchmark, {}\n", text("date"));
    let _ = writeln!(
        md,
        "Machine: {} cores ({}), {}, kernel {}. Load generator on the same machine.  ",
        meta["cores"],
        text("cpu"),
        text("memory"),
        text("kernel")
    );
    let _ = writeln!(md, "Versions: {}.  ", text("versions"));
    let _ = writeln!(
        md,
        "Mode: {}; {} run(s) per server; suite took {:.0} s. Cells are median [min..max] over the runs.\n",
        match (output.params.smoke, &output.params.pin) {
            (true, _) => "**smoke** (tiny sizes: figures mean nothing)".to_string(),
            (false, None) => "full, shared cores (servers and generator on every core)".to_string(),
            (false, Some(pin)) => format!(
                "full; fan-out and closed-loop handshake measured on shared cores, then pinned (`*_pinned` rows: the server's processes and redis-server on CPU {}, the generator on CPU {})",
                pin.server_cpus, pin.generator_cpus
            ),
        },
        output.params.runs,
        meta["suite_seconds"].as_f64().unwrap_or(0.0)
    );
    let p = &output.params;
    let _ = writeln!(
        md,
        "Parameters: handshake closed loop, concurrency {}, {:?} measured after {:?} warm-up; paced handshake at {:.0}% of each server's own peak for {:?}; reject {:?}; {} idle sockets held {:?}, then all subscribed to one channel: burst of {} messages, then {} msg/s for {:?}; query: {} sockets, {} sequential queries.\n",
        p.concurrency, p.handshake_duration, p.warmup, p.paced_fraction * 100.0, p.paced_duration,
        p.reject_duration, p.sockets.sockets, p.sockets.hold, p.sockets.burst_messages,
        p.sockets.paced_rate, p.sockets.paced_duration, p.query.sockets, p.query.queries
    );
    if output.records.iter().any(|r| r.scenario == "rpc") {
        let _ = writeln!(
            md,
            "rpc: {} sockets each calling `echo` in a closed loop, {:?} measured after {:?} warm-up.\n",
            p.rpc.clients, p.rpc.duration, p.rpc.warmup
        );
    }

    if output
        .records
        .iter()
        .any(|r| r.scenario.starts_with("polling_"))
    {
        let _ = writeln!(
            md,
            "Polling (Socket.IO over Engine.IO v4 HTTP long-polling, no upgrade): the generator makes one HTTP/1.1 request per TCP connection (`Connection: close`) on both servers, the session cookie on every request; sockhive closes after every answer anyway. polling_handshake: the closed loop above (concurrency {}, same times): handshake `GET` (cookie login), `POST 40`, `GET`s until the CONNECT reply (latency ends there), then `POST 41\\x1e1` to close. polling_fanout: {} polling subscribers (`420[\"subscribe\",..]`, one `GET` held each, re-issued after every answer, pings answered by `POST 3`), a burst of {} messages published by one more socket over WebSocket. socket.io 4 needs sticky sessions for polling: each client talks to one of its two ports (chosen round-robin at the handshake) for its whole session. sockhive: one port, 2 workers, no stickiness: the kernel hands each request to either worker, and one for the other worker's session is forwarded through the master (the forwarded share is sockhive's own `sockhive_polling_forwards_total`).\n",
            p.concurrency, p.polling.subscribers, p.polling.burst_messages
        );
    }

    let servers: Vec<ServerKind> = ServerKind::ALL
        .iter()
        .copied()
        .filter(|k| output.records.iter().any(|r| r.server == k.key()))
        .collect();
    let _ = write!(md, "| scenario | figure | better |");
    for s in &servers {
        let _ = write!(md, " {} |", s.title());
    }
    let _ = writeln!(
        md,
        " sockhive÷SC | sockhive÷SIO | sockhive÷bare | sockhive (Redis)÷bare |"
    );
    let _ = write!(md, "|---|---|---|");
    for _ in &servers {
        let _ = write!(md, "---|");
    }
    let _ = writeln!(md, "---|---|---|---|");
    // A targeted run (`--only`) shows only the rows of the scenarios it ran.
    let ran = |scenario: &str| output.records.iter().any(|r| r.scenario == scenario);
    for figure in FIGURES.iter().filter(|f| ran(f.scenario)) {
        let _ = write!(
            md,
            "| {} | {} | {} |",
            figure.scenario,
            figure.label,
            if figure.higher_is_better {
                "↑"
            } else {
                "↓"
            }
        );
        let spread_of = |kind: ServerKind| spread(&values(output, kind.key(), figure));
        for &s in &servers {
            let value = spread_of(s);
            let shown = match (value, reason_for(output, s.key(), figure.scenario)) {
                (None, Some(reason)) if reason.starts_with("n/a") => "n/a".to_string(),
                (None, Some(reason)) if reason.starts_with("not available") => {
                    "not in build".to_string()
                }
                (None, Some(_)) => "failed (see notes)".to_string(),
                (v, _) => cell(v),
            };
            let _ = write!(md, " {shown} |");
        }
        let _ = writeln!(
            md,
            " {} | {} | {} | {} |",
            ratio(
                spread_of(ServerKind::SockhiveSc),
                spread_of(ServerKind::ScPeer)
            ),
            ratio(
                spread_of(ServerKind::SockhiveSio),
                spread_of(ServerKind::SioPeer)
            ),
            ratio(
                spread_of(ServerKind::SockhiveSc),
                spread_of(ServerKind::Bare)
            ),
            ratio(
                spread_of(ServerKind::SockhiveScRedis),
                spread_of(ServerKind::Bare)
            ),
        );
    }

    let issue_7 = [
        "handshake",
        "handshake_paced",
        "idle",
        "fanout_burst",
        "query",
    ];
    if issue_7.iter().any(|scenario| ran(scenario)) {
        let _ = writeln!(md, "\n## Targets (issue 7), sockhive over SocketCluster\n");
        let _ = writeln!(md, "| target | measured | verdict |\n|---|---|---|");
        for check in targets(output) {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                check.what, check.measured, check.verdict
            );
        }
    }

    if ran("rpc") {
        let _ = writeln!(md, "\n## Targets (issue 13), rpc through the app's hooks\n");
        let _ = writeln!(md, "| target | measured | verdict |\n|---|---|---|");
        for check in rpc_targets(output) {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                check.what, check.measured, check.verdict
            );
        }
    }

    let _ = writeln!(md, "\n## How each server ran\n");
    for server in &output.servers {
        let scenario = server["scenario"]
            .as_str()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        let auth = server["auth"]
            .as_str()
            .map(|a| format!(", auth: {a}"))
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "- {}{}: {}{}",
            server["title"]
                .as_str()
                .or(server["server"].as_str())
                .unwrap_or("?"),
            scenario,
            server["layout"].as_str().unwrap_or("?"),
            auth
        );
    }
    let notes: Vec<&Record> = output
        .records
        .iter()
        .filter(|r| r.status != Status::Ok)
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(md, "\n## Skipped and failed\n");
        let mut seen = std::collections::BTreeSet::new();
        for r in notes {
            let line = format!(
                "- {} / {}: {:?}: {}",
                r.server,
                r.scenario,
                r.status,
                r.reason.clone().unwrap_or_default()
            );
            if seen.insert(line.clone()) {
                let _ = writeln!(md, "{line}");
            }
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_median_min_max() {
        let s = spread(&[3.0, 1.0, 2.0]).expect("some");
        assert_eq!((s.median, s.min, s.max, s.runs), (2.0, 1.0, 3.0, 3));
        assert_eq!(spread(&[1.0, 3.0]).map(|s| s.median), Some(2.0));
        assert_eq!(spread(&[]), None);
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(15234.4), "15,234");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(number(0.456), "0.46");
        assert_eq!(number(0.0123), "0.012");
        assert_eq!(number(3.0), "3");
    }

    #[test]
    fn the_auth_cost_target_compares_server_cpu_with_the_bare_servers() {
        let record = |server: &str, scenario: &str, cpu: f64| Record {
            server: server.into(),
            run: 1,
            scenario: scenario.into(),
            status: Status::Ok,
            reason: None,
            result: serde_json::json!({ "server_cpu_ms_per_op": cpu }),
        };
        let output = SuiteOutput {
            meta: serde_json::json!({}),
            params: crate::suite::SuiteParams::smoke(),
            servers: Vec::new(),
            records: vec![
                record("sockhive-sc", "handshake", 0.11),
                record("bare", "handshake", 0.1),
                record("sockhive-sc", "handshake_pinned", 0.13),
                record("bare", "handshake_pinned", 0.1),
            ],
        };
        let checks = targets(&output);
        let find = |scenario: &str| {
            checks
                .iter()
                .find(|c| c.what.starts_with(&format!("{scenario}: ")) && c.what.contains("1.2x"))
                .map(|c| (c.measured.clone(), c.verdict))
                .expect("a target row")
        };
        assert_eq!(
            find("handshake"),
            ("0.11 ms vs 0.10 ms = 1.10x".into(), "met")
        );
        assert_eq!(
            find("handshake_pinned"),
            ("0.13 ms vs 0.10 ms = 1.30x".into(), "**missed**")
        );
        assert!(markdown(&output).contains("| handshake_pinned | server CPU per handshake, ms |"));
    }

    #[test]
    fn ratios_need_both_sides() {
        let a = spread(&[10.0]);
        let b = spread(&[4.0]);
        assert_eq!(ratio(a, b), "2.50x");
        assert_eq!(ratio(a, None), "—");
        assert_eq!(ratio(spread(&[0.0]), spread(&[0.0])), "—");
        assert_eq!(ratio(a, spread(&[0.0])), "∞");
    }
}
