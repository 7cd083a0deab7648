//! `idle` and `fanout` on one set of sockets: hold N authenticated sockets and
//! read the server's memory, then subscribe them all to one channel and publish
//! to it, first in a burst (throughput) and then paced (latency below saturation).
//!
//! Why one set for both: connecting ten thousand sockets to a Node server takes
//! several seconds, and the idle reading must come from a freshly started
//! server (memory freed by earlier work would hide the per-socket cost), so
//! the idle reading is taken first and the same sockets then carry the fan-out.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::client::{Connection, Outcome, Seen};
use crate::fleet::{Fleet, FleetParams, FleetState, PACED_SEQ_BASE};
use crate::histogram::LatencySummary;
use crate::procstat::{own_cpu, sample_tree};
use crate::target::{CredentialBook, Target};

/// The channel every subscriber joins.
pub const CHANNEL: &str = "bench";

/// Parameters of one run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SocketsParams {
    /// Sockets held (and subscribers).
    pub sockets: usize,
    /// Handshakes in progress at once while connecting.
    pub connect_concurrency: usize,
    /// Time the sockets are held idle before memory is read.
    pub hold: Duration,
    /// Messages published back to back in the burst.
    pub burst_messages: u64,
    /// Messages per second in the paced phase.
    pub paced_rate: f64,
    /// Length of the paced phase.
    pub paced_duration: Duration,
    /// Longest wait for deliveries after the last publish.
    pub delivery_timeout: Duration,
    /// Per-handshake limit.
    pub timeout: Duration,
}

/// Memory of idle authenticated sockets.
#[derive(Debug, Clone, Serialize, Default)]
pub struct IdleResult {
    /// Sockets asked for.
    pub requested: usize,
    /// Sockets that connected and authenticated.
    pub connected: usize,
    /// Seconds to connect them all.
    pub connect_s: f64,
    /// Server RSS (all its processes) before connecting, bytes.
    pub rss_before: u64,
    /// Server RSS while holding them, bytes.
    pub rss_held: u64,
    /// (held - before) / connected.
    pub rss_per_socket: f64,
    /// The generator's own RSS per held socket, bytes.
    pub generator_rss_per_socket: f64,
    /// Server processes counted.
    pub server_processes: usize,
}

/// One fan-out phase.
#[derive(Debug, Clone, Serialize, Default)]
pub struct FanoutResult {
    /// Subscribers acknowledged.
    pub subscribers: usize,
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
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SocketsResult {
    /// The idle reading.
    pub idle: IdleResult,
    /// The burst.
    pub burst: FanoutResult,
    /// The paced phase.
    pub paced: FanoutResult,
    /// The first thing that went wrong, if anything did.
    pub first_problem: Option<String>,
}

fn own_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// Keeps the publisher answering heartbeats while the scenario waits.
async fn service_until(publisher: &mut Connection, until: Instant) -> bool {
    loop {
        let now = Instant::now();
        if now >= until {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(until.into()) => return true,
            seen = publisher.next_seen() => {
                if matches!(seen, Ok(Seen::Closed) | Err(_)) {
                    return false;
                }
            }
        }
    }
}

async fn wait_deliveries(
    state: &FleetState,
    phase: usize,
    expected: u64,
    publisher: &mut Connection,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    while state.delivered[phase].load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        if !service_until(publisher, Instant::now() + Duration::from_millis(5)).await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn fanout_result(
    state: &FleetState,
    phase: usize,
    subscribers: usize,
    messages: u64,
    first_send_us: u64,
    server_cpu: f64,
    generator_cpu: f64,
) -> FanoutResult {
    let delivered = state.delivered[phase].load(Ordering::Relaxed);
    let last = state.last_delivery_us[phase].load(Ordering::Relaxed);
    let elapsed = last.saturating_sub(first_send_us) as f64 / 1e6;
    let per = |seconds: f64| {
        if delivered == 0 {
            0.0
        } else {
            seconds * 1e6 / delivered as f64
        }
    };
    FanoutResult {
        subscribers,
        messages,
        expected: messages * subscribers as u64,
        delivered,
        elapsed_s: elapsed,
        deliveries_per_s: if elapsed > 0.0 {
            delivered as f64 / elapsed
        } else {
            0.0
        },
        latency: state.latency[phase].summary(),
        server_cpu_us_per_delivery: per(server_cpu),
        generator_cpu_us_per_delivery: per(generator_cpu),
    }
}

/// Runs idle, burst and paced on one fleet.
pub async fn run(
    target: Arc<Target>,
    book: Arc<CredentialBook>,
    params: SocketsParams,
) -> SocketsResult {
    let mut result = SocketsResult::default();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = sample_tree(&target.roots);
    let generator_before = own_rss();
    let started = Instant::now();
    let fleet = Fleet::start(
        target.clone(),
        book.clone(),
        FleetParams {
            sockets: params.sockets,
            connect_concurrency: params.connect_concurrency,
            timeout: params.timeout,
        },
        CHANNEL,
    );
    let connected = fleet
        .wait_connected(params.timeout + Duration::from_secs(60))
        .await;
    let connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(params.hold).await;
    let held = sample_tree(&target.roots);
    let per_socket = |bytes: u64, base: u64| {
        if connected == 0 {
            0.0
        } else {
            bytes.saturating_sub(base) as f64 / connected as f64
        }
    };
    result.idle = IdleResult {
        requested: params.sockets,
        connected,
        connect_s,
        rss_before: before.rss_bytes,
        rss_held: held.rss_bytes,
        rss_per_socket: per_socket(held.rss_bytes, before.rss_bytes),
        generator_rss_per_socket: per_socket(own_rss(), generator_before),
        server_processes: held.processes,
    };

    let subscribers = fleet
        .subscribe_all(params.timeout + Duration::from_secs(60))
        .await;
    // The publisher is one more login, not subscribed.
    let credential = book.get(target.auth, params.sockets, false);
    let publisher = match target.connect(credential, params.timeout).await {
        Ok((Outcome::Accepted, Some(connection))) => Some(connection),
        Ok((outcome, _)) => {
            result.first_problem = Some(format!("publisher refused: {outcome:?}"));
            None
        }
        Err(e) => {
            result.first_problem = Some(format!("publisher failed: {e}"));
            None
        }
    };
    if let Some(mut publisher) = publisher {
        let state = fleet.state.clone();
        // Subscriptions on other processes may need a moment to reach the broker.
        service_until(&mut publisher, Instant::now() + Duration::from_millis(500)).await;

        let cpu_before = sample_tree(&target.roots).cpu_seconds;
        let generator_cpu = own_cpu();
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
        wait_deliveries(&state, 0, expected, &mut publisher, params.delivery_timeout).await;
        result.burst = fanout_result(
            &state,
            0,
            subscribers,
            params.burst_messages,
            first,
            sample_tree(&target.roots).cpu_seconds - cpu_before,
            (own_cpu() - generator_cpu).as_secs_f64(),
        );

        let cpu_before = sample_tree(&target.roots).cpu_seconds;
        let generator_cpu = own_cpu();
        let start = Instant::now();
        let first = state.now_us();
        let interval = Duration::from_secs_f64(1.0 / params.paced_rate.max(0.001));
        let mut sent = 0u64;
        while start + interval * sent as u32 <= start + params.paced_duration {
            let due = start + interval * sent as u32;
            service_until(&mut publisher, due).await;
            if publisher
                .publish(CHANNEL, state.now_us(), PACED_SEQ_BASE + sent)
                .await
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        let expected = sent * subscribers as u64;
        wait_deliveries(&state, 1, expected, &mut publisher, params.delivery_timeout).await;
        result.paced = fanout_result(
            &state,
            1,
            subscribers,
            sent,
            first,
            sample_tree(&target.roots).cpu_seconds - cpu_before,
            (own_cpu() - generator_cpu).as_secs_f64(),
        );
        // Paced throughput is the offered rate; elapsed ends at the last delivery.
        publisher.close().await;
    }
    if result.first_problem.is_none() {
        result.first_problem = fleet.state.first_problem();
    }
    fleet.stop().await;
    result
}
