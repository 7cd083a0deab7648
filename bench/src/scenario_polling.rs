//! `polling_fanout`: N Socket.IO subscribers over HTTP long-polling (no
//! upgrade), each holding one `GET` at a time and re-issuing it after every
//! answer, all joined to one channel; one more socket (a WebSocket) publishes
//! a burst of messages to it. (`polling_handshake` is the handshake loop of
//! `scenario_handshake` with `polling: true`.)
//!
//! Deliveries are counted per packet, wherever they arrive: a `GET` answer may
//! carry many of them (the server batches what the socket wrote while no
//! `GET` was held), which is the point of measuring polling at all.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore};

use crate::client::{delivery_stamp, Connection, Outcome, Seen, SEQ_KEY};
use crate::fleet::FleetState;
use crate::histogram::LatencySummary;
use crate::polling::Polled;
use crate::procstat::{own_cpu, sample_tree};
use crate::target::{CredentialBook, Target};

/// The channel every polling subscriber joins.
pub const CHANNEL: &str = "bench-polling";

/// Parameters of `polling_fanout`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct PollingParams {
    /// Polling subscribers.
    pub subscribers: usize,
    /// Polling handshakes in progress at once while connecting.
    pub connect_concurrency: usize,
    /// Messages published back to back.
    pub burst_messages: u64,
    /// Longest wait for deliveries after the last publish.
    pub delivery_timeout: Duration,
    /// Per-handshake limit.
    pub timeout: Duration,
}

impl Default for PollingParams {
    fn default() -> Self {
        PollingParams {
            subscribers: 1000,
            connect_concurrency: 50,
            burst_messages: 20,
            delivery_timeout: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }
}

/// What `polling_fanout` measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PollingFanoutResult {
    /// Subscribers asked for.
    pub requested: usize,
    /// Subscribers whose subscription was acknowledged.
    pub subscribers: usize,
    /// Seconds to connect and subscribe them all.
    pub connect_s: f64,
    /// Messages published.
    pub messages: u64,
    /// messages x subscribers.
    pub expected: u64,
    /// Deliveries received.
    pub delivered: u64,
    /// First publish to last delivery, seconds.
    pub elapsed_s: f64,
    /// delivered / elapsed.
    pub deliveries_per_s: f64,
    /// Publish-to-delivery latency.
    pub latency: LatencySummary,
    /// Server CPU per delivery, microseconds.
    pub server_cpu_us_per_delivery: f64,
    /// Generator CPU per delivery, microseconds.
    pub generator_cpu_us_per_delivery: f64,
    /// HTTP requests the subscribers made from the first publish to the last delivery.
    pub http_requests: u64,
    /// Deliveries per HTTP request (how much each `GET` answer batched).
    pub deliveries_per_request: f64,
    /// HTTP requests of the subscribers from their handshake to their close.
    pub http_requests_all: u64,
    /// Subscribers the server dropped while held.
    pub dropped: usize,
    /// The first thing that went wrong, if anything did.
    pub first_problem: Option<String>,
}

struct Counters {
    state: FleetState,
    subscribed: AtomicUsize,
    failed: AtomicUsize,
    dropped: AtomicUsize,
    requests: AtomicU64,
    requests_all: AtomicU64,
}

/// One polling subscriber: connect, subscribe, then hold `GET`s until told to stop.
async fn member(
    index: usize,
    target: Arc<Target>,
    book: Arc<CredentialBook>,
    counters: Arc<Counters>,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    timeout: Duration,
) {
    let permit = gate.acquire().await;
    let credential = book.get(target.auth, index, false);
    let mut socket = match target.connect_polling(credential, timeout).await {
        Ok((Outcome::Accepted, Some(socket))) => socket,
        Ok((outcome, _)) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            counters
                .state
                .note_problem(format!("polling login refused: {outcome:?}"));
            return;
        }
        Err(e) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            counters
                .state
                .note_problem(format!("polling connect failed: {e}"));
            return;
        }
    };
    let subscribed = tokio::time::timeout(timeout, socket.subscribe(CHANNEL)).await;
    drop(permit);
    match subscribed {
        Ok(Ok(())) => counters.subscribed.fetch_add(1, Ordering::Relaxed),
        Ok(Err(e)) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            counters
                .state
                .note_problem(format!("polling subscribe failed: {e}"));
            return;
        }
        Err(_) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            counters
                .state
                .note_problem("polling subscribe timed out".into());
            return;
        }
    };
    let mut counted = socket.requests;
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = stop.changed() => if changed.is_err() { break },
            polled = socket.next_packet() => {
                counters.requests.fetch_add(socket.requests - counted, Ordering::Relaxed);
                counted = socket.requests;
                match polled {
                    Ok(Polled::Packet(packet)) => {
                        if let Some(stamp) = delivery_stamp(&packet) {
                            let seq = crate::client::number_after(&packet, SEQ_KEY).unwrap_or(0);
                            counters.state.record(stamp, seq);
                        }
                    }
                    Ok(Polled::Closed(why)) => {
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        counters.state.note_problem(format!("server ended a polling session: {why}"));
                        return;
                    }
                    Err(e) => {
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        counters.state.note_problem(format!("polling GET failed: {e}"));
                        return;
                    }
                }
            }
        }
    }
    // The held GET was dropped with the select; end the session for good.
    counters
        .requests_all
        .fetch_add(socket.requests + 1, Ordering::Relaxed);
    socket.close().await;
}

/// Keeps the publisher answering heartbeats while the scenario waits.
async fn service_for(publisher: &mut Connection, wait: Duration) {
    let _ = tokio::time::timeout(wait, async {
        while !matches!(publisher.next_seen().await, Ok(Seen::Closed) | Err(_)) {}
        // Closed: wait out the time rather than spin.
        std::future::pending::<()>().await
    })
    .await;
}

/// Runs `polling_fanout` once.
pub async fn run_fanout(
    target: Arc<Target>,
    book: Arc<CredentialBook>,
    params: PollingParams,
    publisher_login: usize,
) -> PollingFanoutResult {
    let mut result = PollingFanoutResult {
        requested: params.subscribers,
        ..PollingFanoutResult::default()
    };
    let counters = Arc::new(Counters {
        state: FleetState::new(),
        subscribed: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        dropped: AtomicUsize::new(0),
        requests: AtomicU64::new(0),
        requests_all: AtomicU64::new(0),
    });
    let (stop, stopped) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(params.connect_concurrency.max(1)));
    let started = Instant::now();
    let tasks: Vec<_> = (0..params.subscribers)
        .map(|index| {
            tokio::spawn(member(
                index,
                target.clone(),
                book.clone(),
                counters.clone(),
                gate.clone(),
                stopped.clone(),
                params.timeout,
            ))
        })
        .collect();
    let deadline = started + params.timeout + Duration::from_secs(60);
    loop {
        let settled =
            counters.subscribed.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed);
        if settled >= params.subscribers || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    result.connect_s = started.elapsed().as_secs_f64();
    let subscribers = counters.subscribed.load(Ordering::Relaxed);
    result.subscribers = subscribers;

    let credential = book.get(target.auth, publisher_login, false);
    match target.connect(credential, params.timeout).await {
        Ok((Outcome::Accepted, Some(mut publisher))) => {
            let state = &counters.state;
            // Subscriptions on the other process may need a moment to reach the broker.
            service_for(&mut publisher, Duration::from_millis(500)).await;
            let cpu_before = sample_tree(&target.roots).cpu_seconds;
            let generator_before = own_cpu();
            let requests_before = counters.requests.load(Ordering::Relaxed);
            let first = state.now_us();
            for seq in 0..params.burst_messages {
                if publisher
                    .publish(CHANNEL, state.now_us(), seq)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let expected = params.burst_messages * subscribers as u64;
            let limit = Instant::now() + params.delivery_timeout;
            while state.delivered[0].load(Ordering::Relaxed) < expected && Instant::now() < limit {
                service_for(&mut publisher, Duration::from_millis(5)).await;
            }
            let server_cpu = sample_tree(&target.roots).cpu_seconds - cpu_before;
            let generator_cpu = (own_cpu() - generator_before).as_secs_f64();
            let delivered = state.delivered[0].load(Ordering::Relaxed);
            let last = state.last_delivery_us[0].load(Ordering::Relaxed);
            let elapsed = last.saturating_sub(first) as f64 / 1e6;
            let requests = counters.requests.load(Ordering::Relaxed) - requests_before;
            let per = |seconds: f64| {
                if delivered == 0 {
                    0.0
                } else {
                    seconds * 1e6 / delivered as f64
                }
            };
            result.messages = params.burst_messages;
            result.expected = expected;
            result.delivered = delivered;
            result.elapsed_s = elapsed;
            result.deliveries_per_s = if elapsed > 0.0 {
                delivered as f64 / elapsed
            } else {
                0.0
            };
            result.latency = state.latency[0].summary();
            result.server_cpu_us_per_delivery = per(server_cpu);
            result.generator_cpu_us_per_delivery = per(generator_cpu);
            result.http_requests = requests;
            result.deliveries_per_request = if requests > 0 {
                delivered as f64 / requests as f64
            } else {
                0.0
            };
            publisher.close().await;
        }
        Ok((outcome, _)) => {
            result.first_problem = Some(format!("publisher refused: {outcome:?}"));
        }
        Err(e) => result.first_problem = Some(format!("publisher failed: {e}")),
    }
    let _ = stop.send(true);
    let all = futures_util::future::join_all(tasks);
    let _ = tokio::time::timeout(Duration::from_secs(20), all).await;
    result.dropped = counters.dropped.load(Ordering::Relaxed);
    result.http_requests_all = counters.requests_all.load(Ordering::Relaxed);
    if result.first_problem.is_none() {
        result.first_problem = counters.state.first_problem();
    }
    result
}
