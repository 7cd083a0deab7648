//! `query`: find one user's sockets among many, cluster-wide
//! (passport.socketio's `filterSocketsByUser`, across every node).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::fleet::{Fleet, FleetParams};
use crate::histogram::{Histogram, LatencySummary};
use crate::http::post_json;
use crate::procstat::sample_tree;
use crate::target::{CredentialBook, Target};

/// Parameters of one run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct QueryParams {
    /// Sockets held, one login each (users u0..u{n-1}).
    pub sockets: usize,
    /// Handshakes in progress at once while connecting.
    pub connect_concurrency: usize,
    /// Queries, one after another.
    pub queries: usize,
    /// Per-handshake limit.
    pub timeout: Duration,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct QueryResult {
    /// Sockets held while querying.
    pub sockets: usize,
    /// Queries answered with exactly the one socket of that user.
    pub ok: usize,
    /// Queries answered otherwise (wrong count, error status).
    pub wrong: usize,
    /// Latency of the answered queries.
    pub latency: LatencySummary,
    /// Server CPU per query, ms.
    pub server_cpu_ms_per_query: f64,
    /// The first thing that went wrong, if anything did.
    pub first_problem: Option<String>,
}

/// Asks for the sockets of `user`; returns how many came back.
async fn query_user(target: &Target, user: &str) -> Result<usize, String> {
    let admin = target.admin.ok_or("no admin endpoint")?;
    let body = serde_json::json!({"filter": {"user.id": user}}).to_string();
    let answer = post_json(admin, "/api/sockets/query", &target.admin_token, &body)
        .await
        .map_err(|e| e.to_string())?;
    if answer.status != 200 {
        return Err(format!("status {}: {}", answer.status, answer.body));
    }
    let value: serde_json::Value =
        serde_json::from_str(&answer.body).map_err(|e| format!("bad JSON: {e}"))?;
    value["sockets"]
        .as_array()
        .map(Vec::len)
        .ok_or_else(|| format!("no sockets array in {}", answer.body))
}

/// Holds the sockets, waits until the cluster sees them, then queries.
pub async fn run(
    target: Arc<Target>,
    book: Arc<CredentialBook>,
    params: QueryParams,
) -> QueryResult {
    let mut result = QueryResult::default();
    let fleet = Fleet::start(
        target.clone(),
        book.clone(),
        FleetParams {
            sockets: params.sockets,
            connect_concurrency: params.connect_concurrency,
            timeout: params.timeout,
        },
        "unused",
    );
    let connected = fleet
        .wait_connected(params.timeout + Duration::from_secs(60))
        .await;
    result.sockets = connected;
    // Registrations travel to the other node(s) asynchronously: wait until the
    // first and the last login (on different nodes when there are two) are found.
    let last = format!("u{}", params.sockets.saturating_sub(1));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let first_found = query_user(&target, "u0").await == Ok(1);
        let last_found = query_user(&target, &last).await == Ok(1);
        if (first_found && last_found) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let histogram = Histogram::new();
    let cpu_before = sample_tree(&target.roots).cpu_seconds;
    for q in 0..params.queries {
        // A spread of users over every node, deterministic so runs compare.
        let user = format!("u{}", (q * 7919) % params.sockets.max(1));
        let started = Instant::now();
        let answer = query_user(&target, &user).await;
        let micros = started.elapsed().as_micros() as u64;
        match answer {
            Ok(1) => {
                result.ok += 1;
                histogram.record(micros);
            }
            Ok(n) => {
                result.wrong += 1;
                result
                    .first_problem
                    .get_or_insert(format!("{user}: {n} sockets instead of 1"));
            }
            Err(e) => {
                result.wrong += 1;
                result.first_problem.get_or_insert(format!("{user}: {e}"));
            }
        }
    }
    let cpu = sample_tree(&target.roots).cpu_seconds - cpu_before;
    result.latency = histogram.summary();
    result.server_cpu_ms_per_query = if params.queries == 0 {
        0.0
    } else {
        cpu * 1000.0 / params.queries as f64
    };
    if result.first_problem.is_none() && connected < params.sockets {
        result.first_problem = fleet.state.first_problem();
    }
    fleet.stop().await;
    result
}
