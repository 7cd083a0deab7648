//! `handshake` and `reject`: connect, authenticate (or be refused), close.
//!
//! A closed loop (a fixed number of clients, each starting its next attempt
//! when the last ends) finds the peak rate; the paced variant starts attempts
//! on a fixed schedule and measures latency from the scheduled start, so a
//! slow server cannot hide its queueing (no coordinated omission).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::client::{Connection, Outcome};
use crate::histogram::{Histogram, LatencySummary};
use crate::polling::PollingSocket;
use crate::procstat::{own_cpu, sample_tree};
use crate::target::{AuthMode, CredentialBook, Target};

/// How attempts are started.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Load {
    /// This many clients in a closed loop.
    Closed {
        /// Clients.
        concurrency: usize,
    },
    /// Attempts started at this rate, at most `max_in_flight` at once.
    Paced {
        /// Attempts per second.
        rate: f64,
        /// Cap on attempts in progress (beyond it the schedule slips and it shows).
        max_in_flight: usize,
    },
}

/// Parameters of one run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct HandshakeParams {
    /// How attempts are started.
    pub load: Load,
    /// Unmeasured time first, so JITs and caches are warm.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
    /// Present a forged credential and expect a refusal.
    pub forged: bool,
    /// Per-attempt limit.
    pub timeout: Duration,
    /// Socket.IO over HTTP long-polling instead of a WebSocket (absent from
    /// suites run before it existed).
    #[serde(default)]
    pub polling: bool,
    /// The shared redis-server, whose CPU is reported beside the server's:
    /// a cookie login's session read costs Redis CPU that the server's own
    /// figure does not show (not recorded: a pid).
    #[serde(skip)]
    pub store_pid: Option<u32>,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct HandshakeResult {
    /// Attempts that ended as expected (accepted, or refused when forged).
    pub ok: u64,
    /// Attempts that ended the other way (a forged login accepted, a valid one refused).
    pub wrong: u64,
    /// Attempts that failed (i/o, timeout, protocol).
    pub errors: u64,
    /// Measured seconds.
    pub elapsed_s: f64,
    /// `ok` per second.
    pub rate_per_s: f64,
    /// Latency of the `ok` attempts.
    pub latency: LatencySummary,
    /// Server CPU per `ok` attempt, ms.
    pub server_cpu_ms_per_op: f64,
    /// Generator CPU per `ok` attempt, ms.
    pub generator_cpu_ms_per_op: f64,
    /// The shared redis-server's CPU per `ok` attempt, ms (absent without its
    /// pid, and for a server whose logins do not use Redis).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_cpu_ms_per_op: Option<f64>,
    /// One example of a wrong outcome or error, for the log.
    pub first_problem: Option<String>,
    /// Attempts started, warm-up included.
    pub attempts_all: u64,
    /// HTTP requests of polling attempts, warm-up included (0 for WebSockets).
    pub http_requests_all: u64,
}

/// An accepted socket, to be closed after the attempt.
// Short-lived, on the attempt's stack: boxing the WebSocket would add an
// allocation to every WebSocket handshake the generator makes.
#[allow(clippy::large_enum_variant)]
enum Held {
    WebSocket(Connection),
    Polling(PollingSocket),
}

impl Held {
    async fn close(self) {
        match self {
            Held::WebSocket(connection) => connection.close().await,
            Held::Polling(socket) => socket.close().await,
        }
    }
}

struct Shared<'a> {
    target: &'a Target,
    book: &'a CredentialBook,
    params: HandshakeParams,
    next_login: AtomicUsize,
    histogram: Histogram,
    ok: AtomicU64,
    wrong: AtomicU64,
    errors: AtomicU64,
    first_problem: Mutex<Option<String>>,
    http_requests: AtomicU64,
}

impl Shared<'_> {
    fn note_problem(&self, text: String) {
        if let Ok(mut slot) = self.first_problem.lock() {
            slot.get_or_insert(text);
        }
    }

    /// One attempt; latency counts from `scheduled` (the attempt's intended start).
    async fn attempt(&self, scheduled: Instant, record: bool) {
        let index = self.next_login.fetch_add(1, Ordering::Relaxed);
        let credential = self.book.get(self.target.auth, index, self.params.forged);
        let result = if self.params.polling {
            self.target
                .connect_polling(credential, self.params.timeout)
                .await
                .map(|(outcome, socket)| (outcome, socket.map(Held::Polling)))
        } else {
            self.target
                .connect(credential, self.params.timeout)
                .await
                .map(|(outcome, connection)| (outcome, connection.map(Held::WebSocket)))
        };
        let latency = scheduled.elapsed();
        let expected = match &result {
            Ok((Outcome::Accepted, _)) => !self.params.forged,
            // A soft-mode server accepts the socket unauthenticated: still a refusal of the login.
            Ok((Outcome::Refused(_), _)) => self.params.forged,
            Err(_) => false,
        };
        let connection = match result {
            Ok((outcome, connection)) => {
                if !expected && record {
                    self.wrong.fetch_add(1, Ordering::Relaxed);
                    self.note_problem(format!("unexpected outcome {outcome:?}"));
                }
                connection
            }
            Err(e) => {
                if record {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    self.note_problem(e.to_string());
                }
                None
            }
        };
        if expected && record {
            self.ok.fetch_add(1, Ordering::Relaxed);
            self.histogram.record(latency.as_micros() as u64);
        }
        match connection {
            Some(Held::Polling(socket)) => {
                // Its requests so far and the closing POST.
                let requests = socket.requests + 1;
                socket.close().await;
                self.http_requests.fetch_add(requests, Ordering::Relaxed);
            }
            Some(held) => held.close().await,
            None => {}
        }
    }
}

async fn closed_loop(shared: &Shared<'_>, concurrency: usize, until: Instant, record: bool) {
    let clients = (0..concurrency).map(|_| async {
        while Instant::now() < until {
            shared.attempt(Instant::now(), record).await;
        }
    });
    futures_util::future::join_all(clients).await;
}

async fn paced_loop(
    shared: &Shared<'_>,
    rate: f64,
    max_in_flight: usize,
    until: Instant,
    record: bool,
) {
    let gate = Semaphore::new(max_in_flight.max(1));
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut attempts = futures_util::stream::FuturesUnordered::new();
    let mut k: u32 = 0;
    use futures_util::StreamExt;
    loop {
        let due = start + interval * k;
        if due >= until {
            break;
        }
        // Drive running attempts while waiting for the next start.
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            Some(()) = attempts.next(), if !attempts.is_empty() => continue,
        }
        k += 1;
        let gate = &gate;
        attempts.push(async move {
            let Ok(_permit) = gate.acquire().await else {
                return;
            };
            shared.attempt(due, record).await;
        });
    }
    while attempts.next().await.is_some() {}
}

/// Runs one handshake (or, with `forged`, reject) measurement.
pub async fn run(
    target: &Target,
    book: &CredentialBook,
    params: HandshakeParams,
) -> HandshakeResult {
    let shared = Shared {
        target,
        book,
        params,
        next_login: AtomicUsize::new(0),
        histogram: Histogram::new(),
        ok: AtomicU64::new(0),
        wrong: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_problem: Mutex::new(None),
        http_requests: AtomicU64::new(0),
    };
    let phase = |until: Instant, record: bool| {
        let shared = &shared;
        async move {
            match params.load {
                Load::Closed { concurrency } => {
                    closed_loop(shared, concurrency, until, record).await
                }
                Load::Paced {
                    rate,
                    max_in_flight,
                } => paced_loop(shared, rate, max_in_flight, until, record).await,
            }
        }
    };
    if !params.warmup.is_zero() {
        phase(Instant::now() + params.warmup, false).await;
    }
    let store: Vec<u32> = params.store_pid.into_iter().collect();
    let store_before = sample_tree(&store).cpu_seconds;
    let server_before = sample_tree(&target.roots);
    let generator_before = own_cpu();
    let started = Instant::now();
    phase(started + params.duration, true).await;
    let elapsed = started.elapsed().as_secs_f64();
    let server_cpu = sample_tree(&target.roots).cpu_seconds - server_before.cpu_seconds;
    let generator_cpu = (own_cpu() - generator_before).as_secs_f64();
    let store_cpu = sample_tree(&store).cpu_seconds - store_before;
    let ok = shared.ok.load(Ordering::Relaxed);
    let per_op = |seconds: f64| {
        if ok == 0 {
            0.0
        } else {
            seconds * 1000.0 / ok as f64
        }
    };
    HandshakeResult {
        ok,
        wrong: shared.wrong.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        elapsed_s: elapsed,
        rate_per_s: ok as f64 / elapsed.max(1e-9),
        latency: shared.histogram.summary(),
        server_cpu_ms_per_op: per_op(server_cpu),
        generator_cpu_ms_per_op: per_op(generator_cpu),
        // A server whose logins never touch Redis (the bare one) gets no
        // figure: what redis-server did meanwhile is not its cost.
        store_cpu_ms_per_op: params
            .store_pid
            .filter(|_| target.auth != AuthMode::None)
            .map(|_| per_op(store_cpu)),
        first_problem: shared.first_problem.lock().ok().and_then(|s| s.clone()),
        attempts_all: shared.next_login.load(Ordering::Relaxed) as u64,
        http_requests_all: shared.http_requests.load(Ordering::Relaxed),
    }
}
