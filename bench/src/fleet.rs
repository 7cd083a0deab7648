//! Thousands of authenticated sockets held open at once, each its own task,
//! steered together through phases (hold, subscribe, stop).
//!
//! Each socket answers the server's heartbeats for as long as it is held, so a
//! held socket costs the server exactly what an idle real client costs.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::client::{Outcome, Seen};
use crate::histogram::Histogram;
use crate::target::{CredentialBook, Target};

/// Sequence numbers of fan-out phase `k` start at `k * PHASE_SEQ_BASE`
/// (0 burst, 1 paced, 2 burst pinned, 3 paced pinned), so each delivery is
/// counted in its own phase even if it arrives late.
pub const PHASE_SEQ_BASE: u64 = 1_000_000;

/// Fan-out phases counted apart.
pub const PHASES: usize = 4;

/// What every socket of the fleet should be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Stay connected, answer heartbeats, count deliveries.
    Hold,
    /// Subscribe to the channel (once), then hold.
    Subscribe,
    /// Close and end.
    Stop,
}

/// Counters the socket tasks update and the scenario reads.
pub struct FleetState {
    /// The clock publish stamps are taken from.
    pub clock: Instant,
    /// Sockets that completed their authenticated handshake.
    pub connected: AtomicUsize,
    /// Sockets that did not.
    pub failed: AtomicUsize,
    /// Sockets whose subscription was acknowledged.
    pub subscribed: AtomicUsize,
    /// Sockets whose subscription failed.
    pub subscribe_failed: AtomicUsize,
    /// Held sockets the server closed.
    pub dropped: AtomicUsize,
    /// Deliveries per phase (see [`PHASE_SEQ_BASE`]).
    pub delivered: [AtomicU64; PHASES],
    /// Clock time of the latest delivery per phase, microseconds.
    pub last_delivery_us: [AtomicU64; PHASES],
    /// Publish-to-delivery latency per phase.
    pub latency: [Histogram; PHASES],
    first_problem: Mutex<Option<String>>,
}

impl FleetState {
    /// Zeroed counters, the clock started now.
    pub fn new() -> FleetState {
        FleetState {
            clock: Instant::now(),
            connected: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            subscribed: AtomicUsize::new(0),
            subscribe_failed: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            delivered: std::array::from_fn(|_| AtomicU64::new(0)),
            last_delivery_us: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| Histogram::new()),
            first_problem: Mutex::new(None),
        }
    }

    /// Microseconds since the fleet's clock started.
    pub fn now_us(&self) -> u64 {
        self.clock.elapsed().as_micros() as u64
    }

    /// Counts one delivery of message `seq` sent at `stamp`.
    pub fn record(&self, stamp: u64, seq: u64) {
        let now = self.now_us();
        let phase = ((seq / PHASE_SEQ_BASE) as usize).min(PHASES - 1);
        self.latency[phase].record(now.saturating_sub(stamp));
        self.delivered[phase].fetch_add(1, Ordering::Relaxed);
        self.last_delivery_us[phase].fetch_max(now, Ordering::Relaxed);
    }

    /// Keeps the first problem reported.
    pub fn note_problem(&self, text: String) {
        if let Ok(mut slot) = self.first_problem.lock() {
            slot.get_or_insert(text);
        }
    }

    /// The first thing that went wrong, if anything did.
    pub fn first_problem(&self) -> Option<String> {
        self.first_problem.lock().ok().and_then(|s| s.clone())
    }
}

/// A held set of sockets.
pub struct Fleet {
    /// Shared counters.
    pub state: Arc<FleetState>,
    phase: watch::Sender<Phase>,
    tasks: Vec<JoinHandle<()>>,
    size: usize,
}

/// How a fleet connects.
#[derive(Debug, Clone, Copy)]
pub struct FleetParams {
    /// Sockets.
    pub sockets: usize,
    /// Handshakes in progress at once while connecting.
    pub connect_concurrency: usize,
    /// Per-handshake limit.
    pub timeout: Duration,
}

impl Fleet {
    /// Starts connecting `params.sockets` sockets (logins 0..n) to `target`.
    pub fn start(
        target: Arc<Target>,
        book: Arc<CredentialBook>,
        params: FleetParams,
        channel: &'static str,
    ) -> Fleet {
        let state = Arc::new(FleetState::new());
        let (phase, receiver) = watch::channel(Phase::Hold);
        let gate = Arc::new(Semaphore::new(params.connect_concurrency.max(1)));
        let tasks = (0..params.sockets)
            .map(|index| {
                let member = Member {
                    index,
                    target: target.clone(),
                    book: book.clone(),
                    state: state.clone(),
                    gate: gate.clone(),
                    phase: receiver.clone(),
                    channel,
                    timeout: params.timeout,
                };
                tokio::spawn(member.run())
            })
            .collect();
        Fleet {
            state,
            phase,
            tasks,
            size: params.sockets,
        }
    }

    /// Waits until every socket connected or failed, or `limit` passed; returns the connected count.
    pub async fn wait_connected(&self, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let connected = self.state.connected.load(Ordering::Relaxed);
            let failed = self.state.failed.load(Ordering::Relaxed);
            if connected + failed >= self.size || Instant::now() >= deadline {
                return connected;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks every socket to subscribe and waits until all answered, or `limit` passed.
    pub async fn subscribe_all(&self, limit: Duration) -> usize {
        let _ = self.phase.send(Phase::Subscribe);
        let deadline = Instant::now() + limit;
        let connected = self.state.connected.load(Ordering::Relaxed);
        loop {
            let done = self.state.subscribed.load(Ordering::Relaxed);
            let failed = self.state.subscribe_failed.load(Ordering::Relaxed)
                + self.state.dropped.load(Ordering::Relaxed);
            if done + failed >= connected || Instant::now() >= deadline {
                return done;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes every socket and waits (bounded) for the tasks to end.
    pub async fn stop(self) {
        let _ = self.phase.send(Phase::Stop);
        let all = futures_util::future::join_all(self.tasks);
        let _ = tokio::time::timeout(Duration::from_secs(20), all).await;
    }
}

struct Member {
    index: usize,
    target: Arc<Target>,
    book: Arc<CredentialBook>,
    state: Arc<FleetState>,
    gate: Arc<Semaphore>,
    phase: watch::Receiver<Phase>,
    channel: &'static str,
    timeout: Duration,
}

impl Member {
    async fn run(mut self) {
        let permit = self.gate.acquire().await;
        let credential = self.book.get(self.target.auth, self.index, false);
        let mut connection = match self.target.connect(credential, self.timeout).await {
            Ok((Outcome::Accepted, Some(connection))) => connection,
            Ok((outcome, _)) => {
                self.state.failed.fetch_add(1, Ordering::Relaxed);
                self.state
                    .note_problem(format!("login refused: {outcome:?}"));
                return;
            }
            Err(e) => {
                self.state.failed.fetch_add(1, Ordering::Relaxed);
                self.state.note_problem(format!("connect failed: {e}"));
                return;
            }
        };
        drop(permit);
        self.state.connected.fetch_add(1, Ordering::Relaxed);
        let mut subscribed = false;
        loop {
            let wanted = *self.phase.borrow_and_update();
            match wanted {
                Phase::Stop => break,
                Phase::Subscribe if !subscribed => {
                    subscribed = true;
                    match connection.subscribe(self.channel).await {
                        Ok(()) => self.state.subscribed.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            self.state.note_problem(format!("subscribe failed: {e}"));
                            self.state.subscribe_failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    continue;
                }
                _ => {}
            }
            tokio::select! {
                changed = self.phase.changed() => if changed.is_err() { break },
                seen = connection.next_seen() => match seen {
                    Ok(Seen::Delivery { stamp, seq }) => self.state.record(stamp, seq),
                    Ok(Seen::Other) => {}
                    Ok(Seen::Closed) | Err(_) => {
                        self.state.dropped.fetch_add(1, Ordering::Relaxed);
                        self.state.note_problem("server closed a held socket".into());
                        return;
                    }
                },
            }
        }
        connection.close().await;
    }
}
