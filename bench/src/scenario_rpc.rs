//! `rpc`: authenticated sockets calling a procedure of the application in a
//! closed loop (issue 13).
//!
//! Each of C sockets calls `echo` with a small object and waits for it to come
//! back before calling again: SocketCluster's `invoke('echo', data)`, Socket.IO's
//! `emitWithAck('echo', data)`. The Node peers answer in-process (a
//! `socket.procedure('echo')` consumer, a `socket.on('echo', (data, ack) => ..)`
//! handler); sockhive answers through its hook call to the app
//! (`peers/hook-server.js`), whose CPU is counted with sockhive's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::client::{call_data, CallReply, Connection, Outcome};
use crate::histogram::{Histogram, LatencySummary};
use crate::procstat::{own_cpu, sample_tree};
use crate::target::{CredentialBook, Target};

/// The procedure every server answers with the data it was given.
pub const PROCEDURE: &str = "echo";

/// Parameters of one run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RpcParams {
    /// Sockets, each with one call in flight.
    pub clients: usize,
    /// Handshakes in progress at once while connecting.
    pub connect_concurrency: usize,
    /// Unmeasured calls first (JIT, connection pools).
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
    /// Per-call (and per-handshake) limit.
    pub timeout: Duration,
}

impl Default for RpcParams {
    /// The full run's sizes.
    fn default() -> Self {
        RpcParams {
            clients: 100,
            connect_concurrency: 50,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RpcResult {
    /// Sockets asked for.
    pub clients: usize,
    /// Sockets that connected and authenticated.
    pub connected: usize,
    /// Calls answered with the data sent, in the measured time.
    pub ok: u64,
    /// Calls answered with an error or other data (warm-up included).
    pub wrong: u64,
    /// Calls that got no answer: timeout, socket closed (warm-up included).
    pub errors: u64,
    /// `wrong + errors`.
    pub failed: u64,
    /// Measured seconds.
    pub elapsed_s: f64,
    /// Round trips per second (`ok / elapsed`).
    pub rate_per_s: f64,
    /// Call-to-answer latency of the `ok` calls.
    pub latency: LatencySummary,
    /// CPU of the server's processes per `ok` call, µs (sockhive: with its hook server).
    pub server_cpu_us_per_call: f64,
    /// Of that, the hook server's, µs (sockhive only).
    pub hook_cpu_us_per_call: Option<f64>,
    /// Generator CPU per `ok` call, µs.
    pub generator_cpu_us_per_call: f64,
    /// One example of what went wrong, for the log.
    pub first_problem: Option<String>,
}

struct Shared {
    params: RpcParams,
    next_seq: AtomicU64,
    histogram: Histogram,
    ok: AtomicU64,
    wrong: AtomicU64,
    errors: AtomicU64,
    first_problem: Mutex<Option<String>>,
}

impl Shared {
    fn note_problem(&self, text: String) {
        if let Ok(mut slot) = self.first_problem.lock() {
            slot.get_or_insert(text);
        }
    }

    /// Calls in a loop until `until`; drops the connection when it breaks.
    async fn client_loop(&self, slot: &mut Option<Connection>, until: Instant, record: bool) {
        let Some(connection) = slot.as_mut() else {
            return;
        };
        while Instant::now() < until {
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            let data = call_data(seq);
            let sent = Instant::now();
            let answer =
                tokio::time::timeout(self.params.timeout, connection.call(PROCEDURE, &data, seq))
                    .await;
            match answer {
                Ok(Ok(CallReply::Echoed)) => {
                    if record {
                        self.ok.fetch_add(1, Ordering::Relaxed);
                        self.histogram.record(sent.elapsed().as_micros() as u64);
                    }
                }
                Ok(Ok(CallReply::Wrong(text))) => {
                    self.wrong.fetch_add(1, Ordering::Relaxed);
                    self.note_problem(text);
                }
                Ok(Err(e)) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    self.note_problem(format!("call failed: {e}"));
                    *slot = None;
                    return;
                }
                Err(_) => {
                    // A late answer carries an old id and is skipped by the next call.
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    self.note_problem(format!("no answer within {:?}", self.params.timeout));
                }
            }
        }
    }
}

async fn connect_all(
    target: &Target,
    book: &CredentialBook,
    params: RpcParams,
    shared: &Shared,
) -> Vec<Option<Connection>> {
    let gate = Semaphore::new(params.connect_concurrency.max(1));
    let attempts = (0..params.clients).map(|index| {
        let gate = &gate;
        async move {
            let _permit = gate.acquire().await.ok()?;
            let credential = book.get(target.auth, index, false);
            match target.connect(credential, params.timeout).await {
                Ok((Outcome::Accepted, Some(connection))) => Some(connection),
                Ok((outcome, _)) => {
                    shared.note_problem(format!("login refused: {outcome:?}"));
                    None
                }
                Err(e) => {
                    shared.note_problem(format!("connect failed: {e}"));
                    None
                }
            }
        }
    });
    futures_util::future::join_all(attempts).await
}

/// Every socket calling in a closed loop until `until`.
async fn phase(
    shared: &Shared,
    connections: &mut [Option<Connection>],
    until: Instant,
    record: bool,
) {
    let loops = connections
        .iter_mut()
        .map(|slot| shared.client_loop(slot, until, record));
    futures_util::future::join_all(loops).await;
}

/// Runs one `rpc` measurement. `target.hook_roots` (the hook server, already
/// part of `target.roots`) is also reported apart.
pub async fn run(target: &Target, book: &CredentialBook, params: RpcParams) -> RpcResult {
    let shared = Shared {
        params,
        next_seq: AtomicU64::new(0),
        histogram: Histogram::new(),
        ok: AtomicU64::new(0),
        wrong: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_problem: Mutex::new(None),
    };
    let mut connections = connect_all(target, book, params, &shared).await;
    let connected = connections.iter().filter(|c| c.is_some()).count();
    if !params.warmup.is_zero() {
        phase(
            &shared,
            &mut connections,
            Instant::now() + params.warmup,
            false,
        )
        .await;
    }
    let server_before = sample_tree(&target.roots);
    let hook_before = sample_tree(&target.hook_roots);
    let generator_before = own_cpu();
    let started = Instant::now();
    phase(&shared, &mut connections, started + params.duration, true).await;
    let elapsed = started.elapsed().as_secs_f64();
    let server_cpu = sample_tree(&target.roots).cpu_seconds - server_before.cpu_seconds;
    let hook_cpu = sample_tree(&target.hook_roots).cpu_seconds - hook_before.cpu_seconds;
    let generator_cpu = (own_cpu() - generator_before).as_secs_f64();
    let closing = connections.into_iter().flatten().map(Connection::close);
    futures_util::future::join_all(closing).await;

    let ok = shared.ok.load(Ordering::Relaxed);
    let per_call = |seconds: f64| {
        if ok == 0 {
            0.0
        } else {
            seconds * 1e6 / ok as f64
        }
    };
    let wrong = shared.wrong.load(Ordering::Relaxed);
    let errors = shared.errors.load(Ordering::Relaxed);
    let mut first_problem = shared.first_problem.lock().ok().and_then(|s| s.clone());
    if connected < params.clients && first_problem.is_none() {
        first_problem = Some(format!(
            "{connected} of {} sockets connected",
            params.clients
        ));
    }
    RpcResult {
        clients: params.clients,
        connected,
        ok,
        wrong,
        errors,
        failed: wrong + errors,
        elapsed_s: elapsed,
        rate_per_s: ok as f64 / elapsed.max(1e-9),
        latency: shared.histogram.summary(),
        server_cpu_us_per_call: per_call(server_cpu),
        hook_cpu_us_per_call: (!target.hook_roots.is_empty()).then(|| per_call(hook_cpu)),
        generator_cpu_us_per_call: per_call(generator_cpu),
        first_problem,
    }
}
