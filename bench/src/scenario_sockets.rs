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
use crate::fleet::{Fleet, FleetParams, FleetState, PHASE_SEQ_BASE};
use crate::histogram::LatencySummary;
use crate::pinning::Pinning;
use crate::procstat::{descendants, own_cpu, sample_tree};
use crate::syscalls::{self, Syscalls};
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
    /// System calls of the server's processes per delivery (`perf stat`
    /// on their syscall tracepoints; absent without a usable perf): writes
    /// per delivery near 1 means every frame was written alone.
    pub server_syscalls_per_delivery: Option<SyscallsPerDelivery>,
}

/// [`Syscalls`] divided by the deliveries.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct SyscallsPerDelivery {
    /// Write-like calls (`sendto`, `write`, ...).
    pub writes: f64,
    /// Read-like calls.
    pub reads: f64,
    /// `epoll_wait`s (wake-ups).
    pub waits: f64,
    /// The raw counts.
    pub counted: Syscalls,
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
    /// The burst again with the server on one core and the generator on
    /// another (`--pin`).
    pub burst_pinned: Option<FanoutResult>,
    /// The paced phase, pinned.
    pub paced_pinned: Option<FanoutResult>,
    /// Why the pinned phases did not run, when `--pin` asked for them.
    pub pin_problem: Option<String>,
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

/// What a phase cost, measured around it.
struct Costs {
    /// Seconds of CPU of the server's processes.
    server_cpu: f64,
    /// Seconds of CPU of the generator.
    generator_cpu: f64,
    /// The server's system calls, when perf could count them.
    syscalls: Option<Syscalls>,
}

fn fanout_result(
    state: &FleetState,
    phase: usize,
    subscribers: usize,
    messages: u64,
    first_send_us: u64,
    costs: Costs,
) -> FanoutResult {
    let Costs {
        server_cpu,
        generator_cpu,
        syscalls,
    } = costs;
    let delivered = state.delivered[phase].load(Ordering::Relaxed);
    let last = state.last_delivery_us[phase].load(Ordering::Relaxed);
    let elapsed = last.saturating_sub(first_send_us) as f64 / 1e6;
    let per_delivery = |count: f64| {
        if delivered == 0 {
            0.0
        } else {
            count / delivered as f64
        }
    };
    let per = |seconds: f64| per_delivery(seconds * 1e6);
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
        server_syscalls_per_delivery: syscalls.map(|counted| SyscallsPerDelivery {
            writes: per_delivery(counted.writes as f64),
            reads: per_delivery(counted.reads as f64),
            waits: per_delivery(counted.waits as f64),
            counted,
        }),
    }
}

/// Runs idle, burst and paced on one fleet.
///
/// With `pin`, the burst and the paced phase run a second time with the
/// server's processes (and `extra_pids`, the shared redis-server) on one core
/// and the generator on another.
pub async fn run(
    target: Arc<Target>,
    book: Arc<CredentialBook>,
    params: SocketsParams,
    pin: Option<&Pinning>,
    extra_pids: &[u32],
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
        let (burst, paced) =
            fanout_phases(&target, &state, &mut publisher, &params, subscribers, 0).await;
        result.burst = burst;
        result.paced = paced;
        if let Some(pinning) = pin {
            // The server's whole tree (workers included) and the shared
            // redis-server on one core, the generator on the other.
            let mut pids = extra_pids.to_vec();
            pids.extend(tree_pids(&target));
            match pinning.pin(&pids) {
                Ok(()) => {
                    // Let the scheduler move everything before measuring.
                    service_until(&mut publisher, Instant::now() + Duration::from_millis(300))
                        .await;
                    let (burst, paced) =
                        fanout_phases(&target, &state, &mut publisher, &params, subscribers, 2)
                            .await;
                    result.burst_pinned = Some(burst);
                    result.paced_pinned = Some(paced);
                }
                Err(e) => result.pin_problem = Some(e),
            }
            pinning.unpin(&pids);
        }
        publisher.close().await;
    }
    if result.first_problem.is_none() {
        result.first_problem = fleet.state.first_problem();
    }
    fleet.stop().await;
    result
}

/// A burst, then the paced phase, counted in phases `first` and `first + 1`.
///
/// The burst is what a user's client does: one socket sends
/// `burst_messages` publishes back to back (each a WebSocket frame of its
/// own), without waiting for answers.
async fn fanout_phases(
    target: &Target,
    state: &FleetState,
    publisher: &mut Connection,
    params: &SocketsParams,
    subscribers: usize,
    first: usize,
) -> (FanoutResult, FanoutResult) {
    let (burst_phase, paced_phase) = (first, first + 1);
    let cpu_before = sample_tree(&target.roots).cpu_seconds;
    let counting = syscalls::start(&tree_pids(target));
    let generator_cpu = own_cpu();
    let start_us = state.now_us();
    let base = PHASE_SEQ_BASE * burst_phase as u64;
    for seq in 0..params.burst_messages {
        if publisher
            .publish(CHANNEL, state.now_us(), base + seq)
            .await
            .is_err()
        {
            break;
        }
    }
    let expected = params.burst_messages * subscribers as u64;
    wait_deliveries(
        state,
        burst_phase,
        expected,
        publisher,
        params.delivery_timeout,
    )
    .await;
    let burst = fanout_result(
        state,
        burst_phase,
        subscribers,
        params.burst_messages,
        start_us,
        Costs {
            server_cpu: sample_tree(&target.roots).cpu_seconds - cpu_before,
            generator_cpu: (own_cpu() - generator_cpu).as_secs_f64(),
            syscalls: counting.and_then(syscalls::Counting::stop),
        },
    );

    let cpu_before = sample_tree(&target.roots).cpu_seconds;
    let counting = syscalls::start(&tree_pids(target));
    let generator_cpu = own_cpu();
    let start = Instant::now();
    let start_us = state.now_us();
    let base = PHASE_SEQ_BASE * paced_phase as u64;
    let interval = Duration::from_secs_f64(1.0 / params.paced_rate.max(0.001));
    let mut sent = 0u64;
    while start + interval * sent as u32 <= start + params.paced_duration {
        let due = start + interval * sent as u32;
        service_until(publisher, due).await;
        if publisher
            .publish(CHANNEL, state.now_us(), base + sent)
            .await
            .is_err()
        {
            break;
        }
        sent += 1;
    }
    let expected = sent * subscribers as u64;
    wait_deliveries(
        state,
        paced_phase,
        expected,
        publisher,
        params.delivery_timeout,
    )
    .await;
    // Paced throughput is the offered rate; elapsed ends at the last delivery.
    let paced = fanout_result(
        state,
        paced_phase,
        subscribers,
        sent,
        start_us,
        Costs {
            server_cpu: sample_tree(&target.roots).cpu_seconds - cpu_before,
            generator_cpu: (own_cpu() - generator_cpu).as_secs_f64(),
            syscalls: counting.and_then(syscalls::Counting::stop),
        },
    );
    (burst, paced)
}

/// The server's processes: its roots and every process below them.
fn tree_pids(target: &Target) -> Vec<u32> {
    let mut pids = Vec::new();
    for &root in &target.roots {
        pids.push(root);
        pids.extend(descendants(root));
    }
    pids
}
