//! The whole comparison: every scenario, every server, several runs, one
//! machine; raw records out as JSON, the table made by `report`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::credentials::Login;
use crate::pinning::Pinning;
use crate::redis_seed::seed_sessions;
use crate::scenario_handshake::{self, HandshakeParams, HandshakeResult, Load};
use crate::scenario_polling::{self, PollingParams};
use crate::scenario_query::{self, QueryParams};
use crate::scenario_rpc::{self, RpcParams};
use crate::scenario_sockets::{self, SocketsParams};
use crate::servers::{Environment, LaunchError, Layout, Running, ServerKind};
use crate::target::{AuthMode, CredentialBook, Target};

/// Every knob of a suite run; all of it goes into the JSON so a reader sees
/// exactly what was run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuiteParams {
    /// Runs per server.
    pub runs: usize,
    /// Tiny sizes and strict checks, for CI.
    pub smoke: bool,
    /// Clients in the closed-loop handshake.
    pub concurrency: usize,
    /// Unmeasured handshake warm-up.
    pub warmup: Duration,
    /// Measured handshake time.
    pub handshake_duration: Duration,
    /// The paced handshake runs at this fraction of the server's own peak.
    pub paced_fraction: f64,
    /// Measured paced time.
    pub paced_duration: Duration,
    /// Measured reject time.
    pub reject_duration: Duration,
    /// Idle and fan-out.
    pub sockets: SocketsParams,
    /// Query.
    pub query: QueryParams,
    /// Rpc (absent from suites run before it existed).
    #[serde(default)]
    pub rpc: RpcParams,
    /// Socket.IO over HTTP long-polling: `polling_handshake` (the closed
    /// loop of `handshake`, its concurrency and times) and `polling_fanout`
    /// (absent from suites run before it existed).
    #[serde(default)]
    pub polling: PollingParams,
    /// `--pin`: the fan-out phases and the closed-loop handshake run a
    /// second time with the server's processes on `server_cpus` and the
    /// generator on `generator_cpus` (absent: shared cores only, as every
    /// run before it existed).
    #[serde(default)]
    pub pin: Option<Pinning>,
    /// The shared redis-server, pinned with the server (not recorded: a pid).
    #[serde(skip)]
    pub redis_pid: Option<u32>,
    /// Scenario groups to run (`sockets` = idle + fan-out, `handshake` = closed + paced,
    /// `reject`, `query`, `rpc`, `polling` = polling handshake + fan-out); all when empty.
    #[serde(default)]
    pub only: Vec<String>,
}

impl SuiteParams {
    /// The committed run's sizes (the issue's).
    pub fn full(runs: usize, sockets: usize) -> SuiteParams {
        let timeout = Duration::from_secs(10);
        SuiteParams {
            runs,
            smoke: false,
            concurrency: 50,
            warmup: Duration::from_secs(2),
            handshake_duration: Duration::from_secs(10),
            paced_fraction: 0.5,
            paced_duration: Duration::from_secs(8),
            reject_duration: Duration::from_secs(6),
            sockets: SocketsParams {
                sockets,
                connect_concurrency: 100,
                hold: Duration::from_secs(10),
                // What a client does in issue 19: 50 publishes back to back.
                burst_messages: 50,
                paced_rate: 1.0,
                paced_duration: Duration::from_secs(8),
                delivery_timeout: Duration::from_secs(30),
                timeout,
            },
            query: QueryParams {
                sockets,
                connect_concurrency: 100,
                queries: 200,
                timeout,
            },
            rpc: RpcParams::default(),
            polling: PollingParams::default(),
            pin: None,
            redis_pid: None,
            only: Vec::new(),
        }
    }

    /// Seconds in total: a few connections per scenario, every code path.
    pub fn smoke() -> SuiteParams {
        let timeout = Duration::from_secs(5);
        SuiteParams {
            runs: 1,
            smoke: true,
            concurrency: 5,
            warmup: Duration::from_millis(200),
            handshake_duration: Duration::from_millis(700),
            paced_fraction: 0.5,
            paced_duration: Duration::from_millis(500),
            reject_duration: Duration::from_millis(500),
            sockets: SocketsParams {
                sockets: 50,
                connect_concurrency: 10,
                hold: Duration::from_millis(300),
                burst_messages: 3,
                paced_rate: 10.0,
                paced_duration: Duration::from_millis(500),
                delivery_timeout: Duration::from_secs(5),
                timeout,
            },
            query: QueryParams {
                sockets: 50,
                connect_concurrency: 10,
                queries: 10,
                timeout,
            },
            rpc: RpcParams {
                clients: 5,
                connect_concurrency: 5,
                warmup: Duration::from_millis(200),
                duration: Duration::from_millis(700),
                timeout,
            },
            polling: PollingParams {
                subscribers: 10,
                connect_concurrency: 5,
                burst_messages: 3,
                delivery_timeout: Duration::from_secs(5),
                timeout,
            },
            pin: None,
            redis_pid: None,
            only: Vec::new(),
        }
    }

    /// Whether scenario group `group` is to run.
    pub fn wants(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }

    fn logins_needed(&self) -> usize {
        self.sockets
            .sockets
            .max(self.query.sockets)
            .max(self.rpc.clients)
            .max(self.polling.subscribers)
            + 16
    }
}

/// How a scenario run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It ran and its figures count.
    Ok,
    /// It did not run or produced nothing usable.
    Failed,
    /// Not applicable or not available (with a reason).
    Skipped,
}

/// One scenario of one run of one server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// `ServerKind::key`.
    pub server: String,
    /// 1-based run number.
    pub run: usize,
    /// Scenario name.
    pub scenario: String,
    /// How it ended.
    pub status: Status,
    /// Why it failed or was skipped.
    pub reason: Option<String>,
    /// The scenario's measured figures.
    pub result: Value,
}

/// What the suite writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuiteOutput {
    /// Date, machine, versions.
    pub meta: Value,
    /// Parameters.
    pub params: SuiteParams,
    /// How each server was deployed and authenticated.
    pub servers: Vec<Value>,
    /// Every record.
    pub records: Vec<Record>,
}

fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn handshake_status(result: &HandshakeResult, smoke: bool) -> (Status, Option<String>) {
    if result.ok == 0 {
        return (
            Status::Failed,
            Some(
                result
                    .first_problem
                    .clone()
                    .unwrap_or_else(|| "no attempt completed".into()),
            ),
        );
    }
    if smoke && (result.wrong > 0 || result.errors > 0) {
        return (Status::Failed, result.first_problem.clone());
    }
    (Status::Ok, None)
}

/// sockhive's `sockhive_polling_forwards_total` (all scopes), from its admin
/// `/metrics`; `None` for a server without it (socket.io).
async fn polling_forwards(target: &Target) -> Option<u64> {
    let admin = target.admin?;
    let answer = crate::http::get(admin, "/metrics").await.ok()?;
    if answer.status != 200 {
        return None;
    }
    parse_forwards(&answer.body)
}

/// Sums the samples of `sockhive_polling_forwards_total` in a Prometheus text page.
fn parse_forwards(page: &str) -> Option<u64> {
    let mut found = None;
    for line in page.lines() {
        if !line.starts_with("sockhive_polling_forwards_total") {
            continue;
        }
        let value = line.rsplit(' ').next()?.parse::<f64>().ok()?;
        *found.get_or_insert(0) += value as u64;
    }
    found
}

async fn forwards_since(target: &Target, before: Option<u64>) -> Option<u64> {
    let after = polling_forwards(target).await?;
    Some(after.saturating_sub(before.unwrap_or(0)))
}

/// Adds how many polling requests sockhive forwarded to the session's worker.
fn note_forwards(value: &mut Value, forwards: Option<u64>, requests: u64) {
    if let Some(forwards) = forwards {
        value["forwarded_requests"] = Value::from(forwards);
        if requests > 0 {
            value["forwarded_pct"] = Value::from(100.0 * forwards as f64 / requests as f64);
        }
    }
}

struct Runner<'a> {
    env: &'a Environment,
    book: Arc<CredentialBook>,
    params: &'a SuiteParams,
    records: Vec<Record>,
    descriptions: Vec<Value>,
}

impl Runner<'_> {
    fn push(
        &mut self,
        kind: ServerKind,
        run: usize,
        scenario: &str,
        status: Status,
        reason: Option<String>,
        result: Value,
    ) {
        let line = match (&status, &reason) {
            (Status::Ok, _) => String::from("ok"),
            (_, Some(r)) => format!("{status:?}: {r}"),
            (_, None) => format!("{status:?}"),
        };
        eprintln!("[bench] {} run {run} {scenario}: {line}", kind.key());
        self.records.push(Record {
            server: kind.key().to_string(),
            run,
            scenario: scenario.to_string(),
            status,
            reason,
            result,
        });
    }

    fn skip_all(
        &mut self,
        kind: ServerKind,
        run: usize,
        scenarios: &[&str],
        status: Status,
        reason: &str,
    ) {
        for scenario in scenarios {
            self.push(
                kind,
                run,
                scenario,
                status,
                Some(reason.to_string()),
                Value::Null,
            );
        }
    }

    async fn serving_scenarios(&mut self, kind: ServerKind, run: usize, running: &Running) {
        let target = running.target.clone();
        let params = self.params;
        if params.wants("sockets") {
            self.sockets_scenarios(kind, run, &target).await;
        }
        if kind == ServerKind::SockhiveScRedis {
            // Only the fan-out depends on the broker; the rest is the SC column's.
            let reason =
                "n/a: measured in the sockhive (SC) column (this one differs only in the broker)";
            let mut rest = Vec::new();
            if params.wants("handshake") {
                rest.extend(["handshake", "handshake_paced"]);
                if params.pin.is_some() {
                    rest.push("handshake_pinned");
                }
            }
            if params.wants("reject") {
                rest.push("reject");
            }
            if params.wants("polling") {
                rest.extend(["polling_handshake", "polling_fanout"]);
            }
            self.skip_all(kind, run, &rest, Status::Skipped, reason);
            return;
        }
        if params.wants("handshake") || params.wants("reject") {
            self.handshake_scenarios(kind, run, &target).await;
        }
        if params.wants("polling") {
            self.polling_scenarios(kind, run, &target).await;
        }
    }

    /// `polling_handshake` and `polling_fanout`: Socket.IO over HTTP
    /// long-polling, for the two servers that speak it.
    async fn polling_scenarios(&mut self, kind: ServerKind, run: usize, target: &Arc<Target>) {
        const POLLING: [&str; 2] = ["polling_handshake", "polling_fanout"];
        let not_applicable = match kind {
            ServerKind::SockhiveSio | ServerKind::SioPeer => None,
            ServerKind::SockhiveSc | ServerKind::SockhiveScRedis => Some("n/a: SocketCluster has no long-polling transport (sockhive serves polling to Socket.IO clients: the SIO column)"),
            ServerKind::Bare => Some("n/a: the bare server speaks only WebSocket"),
            ServerKind::ScPeer => Some("n/a: socketcluster-server 20 has no long-polling transport"),
        };
        if let Some(reason) = not_applicable {
            self.skip_all(kind, run, &POLLING, Status::Skipped, reason);
            return;
        }
        let params = self.params;
        // A sockhive without the polling transport answers Engine.IO's
        // `Transport unknown` (400) to the handshake GET.
        let probe = target
            .connect_polling(self.book.get(target.auth, 0, false), Duration::from_secs(5))
            .await;
        match probe {
            Ok((crate::client::Outcome::Accepted, Some(socket))) => socket.close().await,
            Ok((crate::client::Outcome::Refused(crate::client::Refusal::Http(400)), _))
                if kind == ServerKind::SockhiveSio =>
            {
                let reason = "not available in this build: the polling handshake got 400 (no polling transport)";
                self.skip_all(kind, run, &POLLING, Status::Skipped, reason);
                return;
            }
            // Anything else shows in the scenarios' own results.
            _ => {}
        }
        let closed = HandshakeParams {
            load: Load::Closed {
                concurrency: params.concurrency,
            },
            warmup: params.warmup,
            duration: params.handshake_duration,
            forged: false,
            timeout: Duration::from_secs(10),
            polling: true,
            store_pid: None,
        };
        let forwards_before = polling_forwards(target).await;
        let result = scenario_handshake::run(target, &self.book, closed).await;
        let forwards = forwards_since(target, forwards_before).await;
        let (status, reason) = handshake_status(&result, params.smoke);
        let mut value = to_value(&result);
        value["concurrency"] = Value::from(params.concurrency);
        note_forwards(&mut value, forwards, result.http_requests_all);
        self.push(kind, run, "polling_handshake", status, reason, value);

        let publisher = params.polling.subscribers + 1;
        let forwards_before = polling_forwards(target).await;
        let result = scenario_polling::run_fanout(
            target.clone(),
            self.book.clone(),
            params.polling,
            publisher,
        )
        .await;
        let forwards = forwards_since(target, forwards_before).await;
        let complete = result.subscribers == params.polling.subscribers
            && result.delivered == result.expected
            && result.dropped == 0;
        let ok = result.delivered > 0 && (!params.smoke || complete);
        let reason = (!ok).then(|| {
            result
                .first_problem
                .clone()
                .unwrap_or_else(|| "nothing delivered".into())
        });
        let mut value = to_value(&result);
        note_forwards(&mut value, forwards, result.http_requests_all);
        self.push(
            kind,
            run,
            "polling_fanout",
            if ok { Status::Ok } else { Status::Failed },
            reason,
            value,
        );
    }

    async fn sockets_scenarios(&mut self, kind: ServerKind, run: usize, target: &Arc<Target>) {
        let params = self.params;
        let extra: Vec<u32> = params.redis_pid.into_iter().collect();
        let sockets = scenario_sockets::run(
            target.clone(),
            self.book.clone(),
            params.sockets,
            params.pin.as_ref(),
            &extra,
        )
        .await;
        let idle_ok = sockets.idle.connected > 0
            && (!params.smoke || sockets.idle.connected == params.sockets.sockets);
        let reason = |ok: bool| {
            (!ok).then(|| {
                sockets
                    .first_problem
                    .clone()
                    .unwrap_or_else(|| "incomplete".into())
            })
        };
        self.push(
            kind,
            run,
            "idle",
            if idle_ok { Status::Ok } else { Status::Failed },
            reason(idle_ok),
            to_value(&sockets.idle),
        );
        let mut phases = vec![
            ("fanout_burst", Some(&sockets.burst)),
            ("fanout_paced", Some(&sockets.paced)),
        ];
        if params.pin.is_some() {
            phases.push(("fanout_burst_pinned", sockets.burst_pinned.as_ref()));
            phases.push(("fanout_paced_pinned", sockets.paced_pinned.as_ref()));
        }
        for (name, phase) in phases {
            let Some(phase) = phase else {
                let why = sockets
                    .pin_problem
                    .clone()
                    .or_else(|| sockets.first_problem.clone())
                    .unwrap_or_else(|| "the pinned phases did not run".into());
                self.push(kind, run, name, Status::Failed, Some(why), Value::Null);
                continue;
            };
            let ok = phase.delivered > 0 && (!params.smoke || phase.delivered == phase.expected);
            self.push(
                kind,
                run,
                name,
                if ok { Status::Ok } else { Status::Failed },
                reason(ok),
                to_value(phase),
            );
        }
    }

    async fn handshake_scenarios(&mut self, kind: ServerKind, run: usize, target: &Arc<Target>) {
        let params = self.params;
        let target: &Target = target;
        let closed = HandshakeParams {
            load: Load::Closed {
                concurrency: params.concurrency,
            },
            warmup: params.warmup,
            duration: params.handshake_duration,
            forged: false,
            timeout: Duration::from_secs(10),
            polling: false,
            store_pid: params.redis_pid,
        };
        if !params.wants("handshake") {
            self.reject_scenario(kind, run, target, closed).await;
            return;
        }
        let peak = scenario_handshake::run(target, &self.book, closed).await;
        let (status, reason) = handshake_status(&peak, params.smoke);
        let mut value = to_value(&peak);
        value["concurrency"] = Value::from(params.concurrency);
        self.push(kind, run, "handshake", status, reason, value);

        if peak.rate_per_s > 0.0 {
            let rate = peak.rate_per_s * params.paced_fraction;
            let paced = HandshakeParams {
                load: Load::Paced {
                    rate,
                    max_in_flight: 1000,
                },
                warmup: Duration::ZERO,
                duration: params.paced_duration,
                ..closed
            };
            let result = scenario_handshake::run(target, &self.book, paced).await;
            let (status, reason) = handshake_status(&result, params.smoke);
            let mut value = to_value(&result);
            value["offered_rate_per_s"] = Value::from(rate);
            self.push(kind, run, "handshake_paced", status, reason, value);
        } else {
            self.push(
                kind,
                run,
                "handshake_paced",
                Status::Failed,
                Some("no peak to pace at".into()),
                Value::Null,
            );
        }

        if let Some(pinning) = params.pin.as_ref() {
            self.pinned_handshake(kind, run, target, pinning, closed)
                .await;
        }

        if params.wants("reject") {
            self.reject_scenario(kind, run, target, closed).await;
        }
    }

    /// `handshake_pinned`: the closed loop again, on the same server, with
    /// its processes and the shared redis-server on one CPU and the
    /// generator on the other (issue 19: the server's own cost per
    /// handshake, which the generator cannot hide or inflate), then every
    /// CPU back to everyone.
    async fn pinned_handshake(
        &mut self,
        kind: ServerKind,
        run: usize,
        target: &Target,
        pinning: &Pinning,
        closed: HandshakeParams,
    ) {
        let pids = crate::pinning::server_pids(&target.roots, self.params.redis_pid);
        let pinned = pinning.pin(&pids);
        let (status, reason, value) = match pinned {
            Ok(()) => {
                // Let the scheduler move everything before measuring (the
                // warm-up runs pinned too).
                tokio::time::sleep(Duration::from_millis(300)).await;
                let result = scenario_handshake::run(target, &self.book, closed).await;
                let (status, reason) = handshake_status(&result, self.params.smoke);
                let mut value = to_value(&result);
                value["concurrency"] = Value::from(self.params.concurrency);
                (status, reason, value)
            }
            Err(e) => (Status::Failed, Some(e), Value::Null),
        };
        pinning.unpin(&pids);
        self.push(kind, run, "handshake_pinned", status, reason, value);
    }

    async fn reject_scenario(
        &mut self,
        kind: ServerKind,
        run: usize,
        target: &Target,
        closed: HandshakeParams,
    ) {
        let params = self.params;
        if target.auth == AuthMode::None {
            self.push(
                kind,
                run,
                "reject",
                Status::Skipped,
                Some("n/a: the bare server authenticates nobody".into()),
                Value::Null,
            );
        } else {
            let reject = HandshakeParams {
                forged: true,
                warmup: params.warmup / 4,
                duration: params.reject_duration,
                ..closed
            };
            let result = scenario_handshake::run(target, &self.book, reject).await;
            let (status, reason) = handshake_status(&result, params.smoke);
            self.push(kind, run, "reject", status, reason, to_value(&result));
        }
    }

    /// `rpc` on a freshly started server (sockhive with its hook server).
    async fn rpc_scenario(&mut self, kind: ServerKind, run: usize) {
        let running = match self.env.start(kind, Layout::Rpc, &self.book).await {
            Ok(running) => running,
            Err(LaunchError::NotApplicable(why)) => {
                self.push(kind, run, "rpc", Status::Skipped, Some(why), Value::Null);
                return;
            }
            Err(e) => {
                let reason = Some(e.to_string());
                self.push(kind, run, "rpc", Status::Failed, reason, Value::Null);
                return;
            }
        };
        if run == 1 {
            self.descriptions.push(serde_json::json!({
                "server": kind.key(), "scenario": "rpc", "layout": running.description,
            }));
        }
        let params = self.params;
        let result = scenario_rpc::run(&running.target, &self.book, params.rpc).await;
        let complete = result.connected == params.rpc.clients && result.failed == 0;
        let ok = result.ok > 0 && (!params.smoke || complete);
        let reason = (!ok).then(|| {
            result
                .first_problem
                .clone()
                .unwrap_or_else(|| "no call answered".into())
        });
        self.push(
            kind,
            run,
            "rpc",
            if ok { Status::Ok } else { Status::Failed },
            reason,
            to_value(&result),
        );
    }

    async fn one_run(&mut self, kind: ServerKind, run: usize) {
        let serving = [
            "idle",
            "fanout_burst",
            "fanout_paced",
            "fanout_burst_pinned",
            "fanout_paced_pinned",
            "handshake",
            "handshake_paced",
            "handshake_pinned",
            "reject",
            "polling_handshake",
            "polling_fanout",
        ];
        let serving_wanted = ["sockets", "handshake", "reject", "polling"]
            .iter()
            .any(|g| self.params.wants(g));
        let wants_polling = self.params.wants("polling");
        let pinned = self.params.pin.is_some();
        let serving: Vec<&str> = serving
            .into_iter()
            .filter(|s| wants_polling || !s.starts_with("polling_"))
            .filter(|s| pinned || !s.ends_with("_pinned"))
            .collect();
        let started = if serving_wanted {
            Some(self.env.start(kind, Layout::Serving, &self.book).await)
        } else {
            None
        };
        match started {
            None => {}
            Some(Ok(running)) => {
                if run == 1 {
                    self.descriptions.push(serde_json::json!({
                        "server": kind.key(), "title": kind.title(), "layout": running.description,
                        "auth": running.target.auth, "protocol": kind.protocol().label(),
                    }));
                }
                self.serving_scenarios(kind, run, &running).await;
            }
            Some(Err(LaunchError::NotReady(name, why))) if kind == ServerKind::SockhiveSio => {
                let reason = format!(
                    "not available in this build: {name} did not accept a Socket.IO login ({why})"
                );
                self.skip_all(kind, run, &serving, Status::Skipped, &reason);
                self.skip_all(kind, run, &["query"], Status::Skipped, &reason);
                if self.params.wants("rpc") {
                    self.skip_all(kind, run, &["rpc"], Status::Skipped, &reason);
                }
                return;
            }
            Some(Err(e)) => {
                self.skip_all(kind, run, &serving, Status::Failed, &e.to_string());
            }
        }
        if self.params.wants("rpc") {
            self.rpc_scenario(kind, run).await;
        }
        if !self.params.wants("query") {
            return;
        }
        match self.env.start(kind, Layout::TwoNodes, &self.book).await {
            Ok(running) => {
                if run == 1 {
                    self.descriptions.push(serde_json::json!({
                        "server": kind.key(), "scenario": "query", "layout": running.description,
                    }));
                }
                let result = scenario_query::run(
                    running.target.clone(),
                    self.book.clone(),
                    self.params.query,
                )
                .await;
                let ok = result.ok > 0 && (!self.params.smoke || result.wrong == 0);
                let reason = (!ok).then(|| {
                    result
                        .first_problem
                        .clone()
                        .unwrap_or_else(|| "no query answered".into())
                });
                self.push(
                    kind,
                    run,
                    "query",
                    if ok { Status::Ok } else { Status::Failed },
                    reason,
                    to_value(&result),
                );
            }
            Err(LaunchError::NotApplicable(why)) => {
                self.push(kind, run, "query", Status::Skipped, Some(why), Value::Null);
            }
            Err(e) => self.push(
                kind,
                run,
                "query",
                Status::Failed,
                Some(e.to_string()),
                Value::Null,
            ),
        }
    }
}

/// Why the suite could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    /// Seeding Redis failed.
    #[error("seeding sessions: {0}")]
    Seed(#[from] crate::redis_seed::SeedError),
}

/// Seeds the sessions and runs every scenario on every server `params.runs` times.
pub async fn run(
    env: &Environment,
    servers: &[ServerKind],
    params: &SuiteParams,
    meta: Value,
    redis: SocketAddr,
) -> Result<SuiteOutput, SuiteError> {
    let started = Instant::now();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let salt = format!("sockhive-bench-{now}");
    let logins: Vec<Login> = (0..params.logins_needed())
        .map(|i| Login::derive(&salt, i))
        .collect();
    seed_sessions(redis, &logins).await?;
    let book = Arc::new(CredentialBook::new(
        &logins,
        &env.session_secret,
        &env.jwt_key,
        now,
    ));
    let mut runner = Runner {
        env,
        book,
        params,
        records: Vec::new(),
        descriptions: Vec::new(),
    };
    for run in 1..=params.runs {
        for &kind in servers {
            runner.one_run(kind, run).await;
        }
    }
    let mut meta = meta;
    meta["suite_seconds"] = Value::from(started.elapsed().as_secs_f64());
    Ok(SuiteOutput {
        meta,
        params: params.clone(),
        servers: runner.descriptions,
        records: runner.records,
    })
}

/// Whether every scenario that should have run did.
pub fn all_ran(output: &SuiteOutput) -> bool {
    output.records.iter().all(|r| r.status != Status::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_are_summed_over_scopes() {
        let page = "# HELP sockhive_polling_forwards_total x\n# TYPE sockhive_polling_forwards_total counter\nsockhive_polling_forwards_total{scope=\"node\"} 2\nsockhive_polling_forwards_total{scope=\"worker\"} 40\nother 7\n";
        assert_eq!(parse_forwards(page), Some(42));
        assert_eq!(parse_forwards("other 7\n"), None);
    }
}
