//! `sockhive-bench soak` (issue 15): thousands of authenticated sockets that
//! keep coming and going while messages are published, for minutes, with each
//! worker's RSS and open file descriptors sampled.
//!
//! Why a soak and not a longer fan-out: a leak of a few hundred bytes or one
//! descriptor per connection never shows in a ten-second scenario, but it ends
//! a node that serves a day of reconnecting browsers. Churn is what leaks, so
//! every socket lives a random lifetime and its slot reconnects at once; the
//! verdict compares the samples taken once churn is steady (every slot has
//! reconnected at least once) with the last ones.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{watch, Semaphore};

use crate::client::{Outcome, Seen};
use crate::credentials::Login;
use crate::procstat;
use crate::redis_seed::{seed_sessions, SeedError};
use crate::servers::{Environment, LaunchError, Layout, ServerKind};
use crate::target::{CredentialBook, Target};

/// What a soak run does; every duration is bounded.
#[derive(Debug, Clone, Serialize)]
pub struct SoakParams {
    /// Sockets held at once (each slot reconnects when its socket ends).
    pub sockets: usize,
    /// How long the churn goes on.
    pub duration: Duration,
    /// Shortest and longest socket lifetime; lifetimes are uniform in between.
    pub lifetime: (Duration, Duration),
    /// Channels the sockets spread over (slot i subscribes to `soak-{i % channels}`).
    pub channels: usize,
    /// Publishes per second, spread over the channels.
    pub publishes_per_second: u32,
    /// Time between two samples.
    pub sample_every: Duration,
    /// Handshakes in flight at once.
    pub connect_concurrency: usize,
    /// RSS growth a worker may show between the first steady sample and the
    /// last one before the verdict is "not flat", as a fraction of the first.
    pub rss_tolerance: f64,
    /// The same in bytes: whichever of the two is larger counts.
    pub rss_tolerance_bytes: u64,
}

impl SoakParams {
    /// The soak: 10,000 sockets living 20-60 s for `minutes`.
    pub fn full(sockets: usize, minutes: f64) -> SoakParams {
        SoakParams {
            sockets,
            duration: Duration::from_secs_f64(minutes * 60.0),
            lifetime: (Duration::from_secs(20), Duration::from_secs(60)),
            channels: 100,
            publishes_per_second: 20,
            sample_every: Duration::from_secs(10),
            connect_concurrency: 100,
            rss_tolerance: 0.05,
            rss_tolerance_bytes: 4 << 20,
        }
    }

    /// The same code paths in about half a minute, so CI keeps the soak working.
    pub fn smoke() -> SoakParams {
        SoakParams {
            sockets: 200,
            duration: Duration::from_secs(24),
            lifetime: (Duration::from_secs(2), Duration::from_secs(6)),
            channels: 10,
            publishes_per_second: 20,
            sample_every: Duration::from_secs(2),
            connect_concurrency: 50,
            rss_tolerance: 0.10,
            rss_tolerance_bytes: 4 << 20,
        }
    }

    /// When churn is steady: every slot has had time to end its first socket.
    fn steady_after(&self) -> Duration {
        self.lifetime.1 + Duration::from_secs(5)
    }
}

/// Why a soak could not run.
#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    /// Sessions could not be written into Redis.
    #[error("seeding sessions: {0}")]
    Seed(#[from] SeedError),
    /// The server did not start.
    #[error("{0}")]
    Launch(#[from] LaunchError),
    /// The run is too short to see steady churn.
    #[error("a {duration:?} soak ends before churn is steady ({steady:?}): run it longer")]
    TooShort {
        /// The configured duration.
        duration: Duration,
        /// When churn would be steady.
        steady: Duration,
    },
}

/// One worker process at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerSample {
    /// Its pid (a new pid means the master replaced a worker).
    pub pid: u32,
    /// VmRSS, bytes.
    pub rss_bytes: u64,
    /// Open file descriptors (`/proc/<pid>/fd`).
    pub fds: usize,
}

/// The whole picture at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the churn started.
    pub at_s: f64,
    /// Sockets the generator holds open and subscribed.
    pub live: usize,
    /// Handshakes completed so far.
    pub connects: u64,
    /// Messages published so far.
    pub published: u64,
    /// Deliveries seen so far.
    pub delivered: u64,
    /// The master's VmRSS, bytes.
    pub master_rss_bytes: u64,
    /// Every worker, by pid.
    pub workers: Vec<WorkerSample>,
}

/// What the samples say.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Per worker: RSS at the first steady sample and at the last, bytes.
    pub rss_first_last: Vec<(u64, u64)>,
    /// Whether every worker's RSS stayed within the tolerance.
    pub rss_flat: bool,
    /// Descriptors beyond one per live socket, over the steady samples: (min, max).
    pub fd_overhead_range: (i64, i64),
    /// Whether that overhead stayed within 2 % of the sockets (plus 64).
    pub fds_flat: bool,
    /// Worker pids that changed during the run (a crash the master repaired).
    pub workers_replaced: usize,
    /// Handshakes that failed.
    pub connect_failures: u64,
    /// Sockets the server closed while held.
    pub server_closed: u64,
    /// Whether messages kept flowing in every steady interval.
    pub deliveries_flowed: bool,
}

impl Verdict {
    /// True when the soak found nothing wrong.
    pub fn passed(&self) -> bool {
        self.rss_flat
            && self.fds_flat
            && self.workers_replaced == 0
            && self.server_closed == 0
            && self.deliveries_flowed
    }
}

/// A finished soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakOutput {
    /// Machine and versions.
    pub meta: Value,
    /// What ran.
    pub params: SoakParams,
    /// How the server was deployed.
    pub server: String,
    /// Every sample, in order.
    pub samples: Vec<Sample>,
    /// The judgement.
    pub verdict: Verdict,
}

/// Counters the slot tasks update.
#[derive(Default)]
struct Counters {
    live: AtomicUsize,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    server_closed: AtomicU64,
    delivered: AtomicU64,
    published: AtomicU64,
    first_problem: Mutex<Option<String>>,
}

impl Counters {
    fn note(&self, problem: String) {
        if let Ok(mut slot) = self.first_problem.lock() {
            slot.get_or_insert(problem);
        }
    }
}

/// Reads the master and each of its workers.
fn sample(master: u32, at: Duration, counters: &Counters) -> Sample {
    let workers = procstat::descendants(master)
        .into_iter()
        .map(|pid| WorkerSample {
            pid,
            rss_bytes: procstat::rss_of(pid),
            fds: procstat::fd_count(pid),
        })
        .collect();
    Sample {
        at_s: at.as_secs_f64(),
        live: counters.live.load(Ordering::Relaxed),
        connects: counters.connects.load(Ordering::Relaxed),
        published: counters.published.load(Ordering::Relaxed),
        delivered: counters.delivered.load(Ordering::Relaxed),
        master_rss_bytes: procstat::rss_of(master),
        workers,
    }
}

/// Judges `samples` (those from `steady_after` on count).
pub fn judge(params: &SoakParams, samples: &[Sample], failures: u64, closed: u64) -> Verdict {
    let steady_from = params.steady_after().as_secs_f64();
    let steady: Vec<&Sample> = samples.iter().filter(|s| s.at_s >= steady_from).collect();
    let mut pids: BTreeMap<u32, ()> = BTreeMap::new();
    for s in samples {
        for w in &s.workers {
            pids.insert(w.pid, ());
        }
    }
    let worker_count = samples.first().map_or(0, |s| s.workers.len());
    let workers_replaced = pids.len().saturating_sub(worker_count);
    let (first, last) = match (steady.first(), steady.last()) {
        (Some(f), Some(l)) => (*f, *l),
        _ => {
            return Verdict {
                rss_first_last: Vec::new(),
                rss_flat: false,
                fd_overhead_range: (0, 0),
                fds_flat: false,
                workers_replaced,
                connect_failures: failures,
                server_closed: closed,
                deliveries_flowed: false,
            }
        }
    };
    let rss_first_last: Vec<(u64, u64)> = first
        .workers
        .iter()
        .map(|w| {
            let end = last
                .workers
                .iter()
                .find(|l| l.pid == w.pid)
                .map_or(0, |l| l.rss_bytes);
            (w.rss_bytes, end)
        })
        .collect();
    let rss_flat = !rss_first_last.is_empty()
        && rss_first_last.iter().all(|&(a, b)| {
            let allowed =
                ((a as f64 * params.rss_tolerance) as u64).max(params.rss_tolerance_bytes);
            b <= a + allowed
        });
    let overheads: Vec<i64> = steady
        .iter()
        .map(|s| s.workers.iter().map(|w| w.fds as i64).sum::<i64>() - s.live as i64)
        .collect();
    let fd_overhead_range = (
        overheads.iter().copied().min().unwrap_or(0),
        overheads.iter().copied().max().unwrap_or(0),
    );
    let fd_allowance = (params.sockets as i64) / 50 + 64;
    let fds_flat = fd_overhead_range.1 - fd_overhead_range.0 <= fd_allowance;
    let deliveries_flowed =
        steady.len() >= 2 && steady.windows(2).all(|w| w[1].delivered > w[0].delivered);
    Verdict {
        rss_first_last,
        rss_flat,
        fd_overhead_range,
        fds_flat,
        workers_replaced,
        connect_failures: failures,
        server_closed: closed,
        deliveries_flowed,
    }
}

/// One slot: connect, subscribe, hold for a random lifetime, close, again.
async fn slot(
    index: usize,
    target: Arc<Target>,
    book: Arc<CredentialBook>,
    counters: Arc<Counters>,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    params: SoakParams,
) {
    let channel = format!("soak-{}", index % params.channels);
    // The first lifetimes start anywhere in their range so that the slots do
    // not all reconnect in the same second.
    let mut first = true;
    while !*stop.borrow() {
        let Ok(permit) = gate.acquire().await else {
            return;
        };
        let credential = book.get(target.auth, index, false);
        let connected = target.connect(credential, Duration::from_secs(10)).await;
        drop(permit);
        let mut connection = match connected {
            Ok((Outcome::Accepted, Some(c))) => c,
            other => {
                counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                counters.note(format!("connect: {:?}", other.map(|(o, _)| o)));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if let Err(e) = connection.subscribe(&channel).await {
            counters.connect_failures.fetch_add(1, Ordering::Relaxed);
            counters.note(format!("subscribe: {e}"));
            continue;
        }
        counters.connects.fetch_add(1, Ordering::Relaxed);
        counters.live.fetch_add(1, Ordering::Relaxed);
        let (low, high) = params.lifetime;
        let lifetime = {
            let mut rng = rand::rng();
            let span = rng.random_range(low.as_secs_f64()..=high.as_secs_f64());
            if first {
                Duration::from_secs_f64(rng.random_range(0.0..=span))
            } else {
                Duration::from_secs_f64(span)
            }
        };
        first = false;
        let end = tokio::time::Instant::now() + lifetime;
        let mut closed_by_server = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(end) => break,
                changed = stop.changed() => if changed.is_err() || *stop.borrow() { break },
                seen = connection.next_seen() => match seen {
                    Ok(Seen::Delivery { .. }) => {
                        counters.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Seen::Other) => {}
                    Ok(Seen::Closed) | Err(_) => {
                        closed_by_server = true;
                        break;
                    }
                },
            }
        }
        counters.live.fetch_sub(1, Ordering::Relaxed);
        if closed_by_server {
            counters.server_closed.fetch_add(1, Ordering::Relaxed);
            counters.note(format!("the server closed slot {index}'s socket"));
        } else {
            connection.close().await;
        }
    }
}

/// Publishes on the channels in turn at the configured rate until told to stop.
async fn publisher(
    target: Arc<Target>,
    book: Arc<CredentialBook>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
    params: SoakParams,
    clock: Instant,
) {
    // The publisher is one more login, beyond the slots'.
    let credential = book.get(target.auth, params.sockets, false);
    let mut connection = match target.connect(credential, Duration::from_secs(10)).await {
        Ok((Outcome::Accepted, Some(c))) => c,
        other => {
            counters.note(format!("publisher: {:?}", other.map(|(o, _)| o)));
            return;
        }
    };
    let period = Duration::from_secs_f64(1.0 / f64::from(params.publishes_per_second.max(1)));
    let mut ticker = tokio::time::interval(period);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let channel = format!("soak-{}", seq as usize % params.channels);
                let stamp = clock.elapsed().as_micros() as u64;
                if connection.publish(&channel, stamp, seq).await.is_err() {
                    counters.note("the publisher's socket broke".into());
                    return;
                }
                seq += 1;
                counters.published.fetch_add(1, Ordering::Relaxed);
            }
            changed = stop.changed() => if changed.is_err() || *stop.borrow() { break },
            // Heartbeats and acks must be read, or the server drops the publisher.
            seen = connection.next_seen() => if matches!(seen, Ok(Seen::Closed) | Err(_)) {
                counters.note("the server closed the publisher".into());
                return;
            },
        }
    }
    connection.close().await;
}

/// Runs the soak against one sockhive node (2 workers, embedded broker,
/// cookie logins read from `redis`) and judges it.
pub async fn run(
    env: &Environment,
    params: &SoakParams,
    meta: Value,
) -> Result<SoakOutput, SoakError> {
    let steady = params.steady_after();
    if params.duration < steady + params.sample_every * 2 {
        return Err(SoakError::TooShort {
            duration: params.duration,
            steady,
        });
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let logins: Vec<Login> = (0..=params.sockets)
        .map(|i| Login::derive(&format!("sockhive-soak-{now}"), i))
        .collect();
    seed_sessions(env.redis, &logins).await?;
    let book = Arc::new(CredentialBook::new(
        &logins,
        &env.session_secret,
        &env.jwt_key,
        now,
    ));
    let running = env
        .start(ServerKind::SockhiveSc, Layout::Serving, &book)
        .await?;
    let target = running.target.clone();
    let master = target.roots[0];
    let counters = Arc::new(Counters::default());
    let gate = Arc::new(Semaphore::new(params.connect_concurrency.max(1)));
    let (stop, stopped) = watch::channel(false);
    let clock = Instant::now();
    let mut tasks: Vec<_> = (0..params.sockets)
        .map(|index| {
            tokio::spawn(slot(
                index,
                target.clone(),
                book.clone(),
                counters.clone(),
                gate.clone(),
                stopped.clone(),
                params.clone(),
            ))
        })
        .collect();
    tasks.push(tokio::spawn(publisher(
        target.clone(),
        book.clone(),
        counters.clone(),
        stopped.clone(),
        params.clone(),
        clock,
    )));
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(params.sample_every);
    while clock.elapsed() < params.duration {
        ticker.tick().await;
        let s = sample(master, clock.elapsed(), &counters);
        eprintln!(
            "[soak] {:>6.0} s: {} live, {} connects, {} delivered, workers {}",
            s.at_s,
            s.live,
            s.connects,
            s.delivered,
            s.workers
                .iter()
                .map(|w| format!(
                    "{} ({:.1} MiB, {} fds)",
                    w.pid,
                    w.rss_bytes as f64 / 1048576.0,
                    w.fds
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        samples.push(s);
    }
    let _ = stop.send(true);
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        futures_util::future::join_all(tasks),
    )
    .await;
    let verdict = judge(
        params,
        &samples,
        counters.connect_failures.load(Ordering::Relaxed),
        counters.server_closed.load(Ordering::Relaxed),
    );
    if let Some(problem) = counters.first_problem.lock().ok().and_then(|p| p.clone()) {
        eprintln!("[soak] first problem seen: {problem}");
    }
    Ok(SoakOutput {
        meta,
        params: params.clone(),
        server: running.description.clone(),
        samples,
        verdict,
    })
}

/// `sockhive-bench soak`'s flags (bench/run.sh soak passes the paths).
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    #[command(flatten)]
    paths: crate::RunPaths,
    /// 200 sockets for about half a minute: for CI, so the soak keeps working.
    #[arg(long)]
    smoke: bool,
    /// Sockets held at once.
    #[arg(long, default_value_t = 10_000)]
    sockets: usize,
    /// Minutes of churn.
    #[arg(long, default_value_t = 5.0)]
    minutes: f64,
}

/// Runs `sockhive-bench soak` and writes its table; fails when the verdict does.
pub fn main(args: SoakArgs) -> ExitCode {
    let params = if args.smoke {
        SoakParams::smoke()
    } else {
        SoakParams::full(args.sockets, args.minutes)
    };
    let fd_limit = procstat::raise_fd_limit();
    // The limit is per process: the generator holds every socket once.
    if fd_limit < params.sockets as u64 + 512 {
        eprintln!(
            "[soak] open-file limit {fd_limit} is too low for {} sockets",
            params.sockets
        );
        return ExitCode::FAILURE;
    }
    // The soak runs sockhive only: no bare server, no Node peers.
    let env = Environment::new(&args.paths, PathBuf::new(), PathBuf::new());
    let stamp = crate::utc_stamp();
    let meta = crate::outputs::run_meta(&stamp, &env.caps.version);
    let Some(runtime) = crate::outputs::generator_runtime("soak") else {
        return ExitCode::FAILURE;
    };
    let output = match runtime.block_on(run(&env, &params, meta)) {
        Ok(output) => output,
        Err(e) => {
            eprintln!("[soak] {e}");
            return ExitCode::FAILURE;
        }
    };
    let stem = if args.smoke {
        format!("smoke-soak-{stamp}")
    } else {
        format!("soak-{stamp}")
    };
    let md = markdown(&output);
    let json = serde_json::to_string_pretty(&output).unwrap_or_default();
    let files = [
        (args.paths.out.join(format!("{stem}.json")), json.as_str()),
        (args.paths.out.join(format!("{stem}.md")), md.as_str()),
    ];
    if !crate::outputs::write_files("soak", &files) {
        return ExitCode::FAILURE;
    }
    println!("{md}");
    if output.verdict.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1048576.0)
}

/// The soak as a Markdown table: one row per sample, then the verdict.
pub fn markdown(output: &SoakOutput) -> String {
    let p = &output.params;
    let mut md = format!(
        "# sockhive soak\n\n{}\n\n{} sockets living {}-{} s each (each slot reconnects at once), \
         {} channels, {} publishes/s, {} s; sampled every {} s. Server: {}.\n\n",
        output.meta["date"].as_str().unwrap_or("?"),
        p.sockets,
        p.lifetime.0.as_secs(),
        p.lifetime.1.as_secs(),
        p.channels,
        p.publishes_per_second,
        p.duration.as_secs(),
        p.sample_every.as_secs(),
        output.server,
    );
    md.push_str("| s | live | connects | published | delivered | master RSS, MiB | workers: RSS MiB / fds |\n|---|---|---|---|---|---|---|\n");
    for s in &output.samples {
        let workers = s
            .workers
            .iter()
            .map(|w| format!("{} / {}", mib(w.rss_bytes), w.fds))
            .collect::<Vec<_>>()
            .join(", ");
        md.push_str(&format!(
            "| {:.0} | {} | {} | {} | {} | {} | {} |\n",
            s.at_s,
            s.live,
            s.connects,
            s.published,
            s.delivered,
            mib(s.master_rss_bytes),
            workers
        ));
    }
    let v = &output.verdict;
    let rss = v
        .rss_first_last
        .iter()
        .map(|(a, b)| format!("{} → {} MiB", mib(*a), mib(*b)))
        .collect::<Vec<_>>()
        .join(", ");
    md.push_str(&format!(
        "\nFrom {} s on (churn steady): worker RSS {rss} ({}); descriptors beyond one per live socket {}..{} ({}); \
         workers replaced {}; handshakes failed {}; sockets the server closed {}; deliveries in every interval: {}.\n\n**{}**\n",
        p.steady_after().as_secs(),
        if v.rss_flat { "flat" } else { "GREW" },
        v.fd_overhead_range.0,
        v.fd_overhead_range.1,
        if v.fds_flat { "flat" } else { "GREW" },
        v.workers_replaced,
        v.connect_failures,
        v.server_closed,
        if v.deliveries_flowed { "yes" } else { "NO" },
        if v.passed() { "passed" } else { "FAILED" },
    ));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at_s: f64, live: usize, delivered: u64, workers: &[(u32, u64, usize)]) -> Sample {
        Sample {
            at_s,
            live,
            connects: 0,
            published: 0,
            delivered,
            master_rss_bytes: 0,
            workers: workers
                .iter()
                .map(|&(pid, rss_bytes, fds)| WorkerSample {
                    pid,
                    rss_bytes,
                    fds,
                })
                .collect(),
        }
    }

    fn params() -> SoakParams {
        let mut p = SoakParams::smoke();
        p.sockets = 1000;
        p
    }

    #[test]
    fn steady_memory_and_descriptors_pass() {
        let p = params();
        let mb = 1 << 20;
        let samples = [
            // Before steady churn, growth does not count.
            at(1.0, 500, 10, &[(7, 10 * mb, 300), (8, 10 * mb, 300)]),
            at(12.0, 1000, 100, &[(7, 40 * mb, 520), (8, 40 * mb, 520)]),
            at(14.0, 990, 200, &[(7, 41 * mb, 515), (8, 40 * mb, 515)]),
            at(16.0, 1000, 300, &[(7, 41 * mb, 521), (8, 42 * mb, 520)]),
        ];
        let v = judge(&p, &samples, 0, 0);
        assert!(v.rss_flat && v.fds_flat && v.deliveries_flowed, "{v:?}");
        assert!(v.passed());
    }

    #[test]
    fn a_growing_worker_or_leaking_descriptors_fail() {
        let p = params();
        let mb = 1 << 20;
        let growing = [
            at(12.0, 1000, 100, &[(7, 40 * mb, 520)]),
            at(20.0, 1000, 200, &[(7, 60 * mb, 520)]),
        ];
        assert!(!judge(&p, &growing, 0, 0).rss_flat);
        let leaking = [
            at(12.0, 1000, 100, &[(7, 40 * mb, 1040)]),
            at(20.0, 1000, 200, &[(7, 40 * mb, 1200)]),
        ];
        let v = judge(&p, &leaking, 0, 0);
        assert!(v.rss_flat && !v.fds_flat, "{v:?}");
        assert!(!v.passed());
    }

    #[test]
    fn a_replaced_worker_or_stalled_deliveries_fail() {
        let p = params();
        let replaced = [
            at(12.0, 1000, 100, &[(7, 1, 520)]),
            at(20.0, 1000, 200, &[(9, 1, 520)]),
        ];
        let v = judge(&p, &replaced, 0, 0);
        assert_eq!(v.workers_replaced, 1);
        assert!(!v.passed());
        let stalled = [
            at(12.0, 1000, 100, &[(7, 1, 520)]),
            at(20.0, 1000, 100, &[(7, 1, 520)]),
        ];
        assert!(!judge(&p, &stalled, 0, 0).deliveries_flowed);
    }
}
