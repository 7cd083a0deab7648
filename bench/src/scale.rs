//! `sockhive-bench scale` (issue 19): one node holding 1,000, 10,000, 50,000
//! and 100,000 idle cookie-authenticated sockets, with the handshake rate and
//! the server's RSS at each size, then the RSS once every socket has left,
//! twice over.
//!
//! Why several generator processes: a process can hold no more sockets than
//! its open-file limit (20,000 hard on the machines this was written on, and
//! the bench cannot raise a hard limit), and one loopback source address has
//! about 28,000 ephemeral ports towards one server port. So the generator is
//! `holders` child processes (`sockhive-bench scale-holder`), each with its
//! own 127.0.0.x source address, steered over stdin and stdout; and the node
//! runs enough workers that none holds more sockets than its own limit.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::client::Protocol;
use crate::credentials::Login;
use crate::fleet::{Fleet, FleetParams};
use crate::procstat;
use crate::redis_seed::seed_sessions;
use crate::servers::{Environment, Layout, ServerKind};
use crate::target::{AuthMode, CredentialBook, Target};

/// The sockets each worker (and each holder) is planned to hold at most, as a
/// share of the open-file limit: the kernel spreads connections over the
/// workers' `SO_REUSEPORT` sockets by hash, so the busiest one gets a little
/// more than its share.
const LIMIT_SHARE: f64 = 0.75;

/// What a scale run does; every wait is bounded.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleParams {
    /// Sockets held after each growth step, ascending.
    pub steps: Vec<usize>,
    /// sockhive worker processes.
    pub workers: u16,
    /// Generator processes.
    pub holders: usize,
    /// Handshakes in flight at once over all holders.
    pub connect_concurrency: usize,
    /// How long the sockets sit idle before the RSS is read.
    pub settle: Duration,
    /// After every socket left, how much longer until the RSS is read again:
    /// allocators give memory back on a delay (jemalloc's decay, sockhive's
    /// heap trim, checked every 5 s).
    pub later: Duration,
    /// How long the server's idle CPU (heartbeats) is measured after each
    /// growth step: two of SocketCluster's 8 s ping intervals.
    pub idle_window: Duration,
    /// How long one handshake may take.
    pub connect_timeout: Duration,
}

impl ScaleParams {
    /// The plan for `steps` under a per-process open-file limit of `fd_limit`.
    pub fn plan(mut steps: Vec<usize>, fd_limit: u64, workers: Option<u16>) -> ScaleParams {
        steps.sort_unstable();
        steps.dedup();
        let most = steps.last().copied().unwrap_or(0);
        let per_process = ((fd_limit as f64 * LIMIT_SHARE) as usize).max(1);
        let needed = most.div_ceil(per_process);
        ScaleParams {
            steps,
            workers: workers.unwrap_or(needed.max(2) as u16),
            holders: needed.max(1),
            connect_concurrency: 256,
            settle: Duration::from_secs(5),
            later: Duration::from_secs(30),
            idle_window: Duration::from_secs(16),
            connect_timeout: Duration::from_secs(30),
        }
    }

    /// The same code paths in seconds, for CI.
    pub fn smoke(fd_limit: u64) -> ScaleParams {
        let mut params = ScaleParams::plan(vec![100, 400], fd_limit, Some(2));
        params.holders = 2;
        params.connect_concurrency = 32;
        params.settle = Duration::from_secs(1);
        params.later = Duration::from_secs(1);
        params.idle_window = Duration::from_secs(1);
        params
    }

    /// Logins each holder may use: enough for its share of the largest step.
    fn per_holder(&self) -> usize {
        self.steps
            .last()
            .copied()
            .unwrap_or(0)
            .div_ceil(self.holders.max(1))
    }
}

/// One line of the table: the node after a step.
#[derive(Debug, Clone, Serialize)]
pub struct StepRow {
    /// What the step did.
    pub label: String,
    /// Sockets the generator holds after it.
    pub sockets: usize,
    /// Handshakes completed in the step.
    pub handshakes: usize,
    /// Handshakes that failed in the step.
    pub failed: usize,
    /// How long the step's handshakes took, seconds.
    pub seconds: f64,
    /// Server CPU over the step (master and workers), seconds.
    pub server_cpu_seconds: f64,
    /// Generator CPU over the step (every holder), seconds.
    pub generator_cpu_seconds: f64,
    /// RSS of the master and its workers after the sockets settled, bytes.
    pub server_rss_bytes: u64,
    /// Open descriptors of each worker after the step.
    pub worker_fds: Vec<usize>,
    /// The kernel's slab memory (`Slab` in /proc/meminfo) after the step, bytes:
    /// socket structures live there, outside any process's RSS.
    pub kernel_slab_bytes: u64,
    /// Server CPU while the sockets sat idle (heartbeats only), as a share of one core.
    pub idle_cpu_share: Option<f64>,
    /// The RSS read again: on a growth step at the end of the idle window
    /// (the sockets still held; sockhive's heap trim after a crowd arrived
    /// has run by then), on a close step once `later` has passed, bytes.
    pub server_rss_later_bytes: Option<u64>,
    /// Held sockets the server closed so far.
    pub dropped: usize,
}

impl StepRow {
    /// Completed handshakes per second of the step.
    pub fn handshakes_per_second(&self) -> Option<f64> {
        (self.handshakes > 0 && self.seconds > 0.0).then(|| self.handshakes as f64 / self.seconds)
    }

    /// Server CPU per completed handshake, milliseconds.
    pub fn server_ms_per_handshake(&self) -> Option<f64> {
        (self.handshakes > 0).then(|| self.server_cpu_seconds * 1e3 / self.handshakes as f64)
    }
}

/// A finished scale run.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleOutput {
    /// Machine and versions.
    pub meta: Value,
    /// What ran.
    pub params: ScaleParams,
    /// How the server was deployed.
    pub server: String,
    /// RSS of the node before any socket, bytes.
    pub base_rss_bytes: u64,
    /// The kernel's slab memory before any socket, bytes.
    pub base_slab_bytes: u64,
    /// Every step, in order.
    pub rows: Vec<StepRow>,
    /// The first thing that went wrong, if anything did.
    pub problem: Option<String>,
}

impl ScaleOutput {
    /// RSS per held socket above the node's empty RSS, for rows holding sockets.
    pub fn rss_per_socket(&self, row: &StepRow) -> Option<f64> {
        (row.sockets > 0).then(|| {
            (row.server_rss_bytes as f64 - self.base_rss_bytes as f64) / row.sockets as f64
        })
    }

    /// [`ScaleOutput::rss_per_socket`] from the RSS read at the end of the
    /// idle window (growth steps only).
    pub fn rss_per_socket_later(&self, row: &StepRow) -> Option<f64> {
        let later = row.server_rss_later_bytes?;
        (row.sockets > 0)
            .then(|| (later as f64 - self.base_rss_bytes as f64) / row.sockets as f64)
    }

    /// Kernel slab memory per connection end (the generator's sockets are on
    /// the same kernel, so the growth is split over twice the sockets).
    pub fn slab_per_socket_end(&self, row: &StepRow) -> Option<f64> {
        (row.sockets > 0).then(|| {
            (row.kernel_slab_bytes as f64 - self.base_slab_bytes as f64) / (2 * row.sockets) as f64
        })
    }

    /// Server CPU per idle socket per second from the heartbeats, microseconds.
    pub fn idle_us_per_socket_second(&self, row: &StepRow) -> Option<f64> {
        let share = row.idle_cpu_share?;
        (row.sockets > 0).then(|| share * 1e6 / row.sockets as f64)
    }

    /// Whether every step got all its sockets and kept them.
    pub fn complete(&self) -> bool {
        self.problem.is_none() && self.rows.iter().all(|r| r.failed == 0 && r.dropped == 0)
    }
}

/// Why a scale run could not go on.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    /// Sessions could not be written into Redis.
    #[error("seeding sessions: {0}")]
    Seed(#[from] crate::redis_seed::SeedError),
    /// The server did not start.
    #[error("{0}")]
    Launch(#[from] crate::servers::LaunchError),
    /// A holder process failed or answered nonsense.
    #[error("holder {index}: {why}")]
    Holder {
        /// Which holder.
        index: usize,
        /// What happened.
        why: String,
    },
}

/// One generator process and its command pipe.
struct Holder {
    index: usize,
    child: Child,
    stdin: ChildStdin,
    replies: Lines<BufReader<ChildStdout>>,
    /// Sockets it holds now.
    held: usize,
}

impl Holder {
    fn spawn(
        index: usize,
        addr: SocketAddr,
        salt: &str,
        secret: &str,
        first: usize,
        capacity: usize,
    ) -> Result<Holder, ScaleError> {
        let fail = |why: String| ScaleError::Holder { index, why };
        let exe = std::env::current_exe().map_err(|e| fail(e.to_string()))?;
        let mut child = Command::new(exe)
            .arg("scale-holder")
            .args(["--addr", &addr.to_string()])
            .args(["--source", &holder_source(index).to_string()])
            .args(["--salt", salt])
            .args(["--secret", secret])
            .args(["--first", &first.to_string()])
            .args(["--capacity", &capacity.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(e.to_string()))?;
        let stdin = child.stdin.take().ok_or_else(|| fail("no stdin".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| fail("no stdout".into()))?;
        Ok(Holder {
            index,
            child,
            stdin,
            replies: BufReader::new(stdout).lines(),
            held: 0,
        })
    }

    async fn send(&mut self, command: &str) -> Result<(), ScaleError> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(|e| ScaleError::Holder {
                index: self.index,
                why: format!("cannot send {command:?}: {e}"),
            })
    }

    /// The next reply's numbers, within `limit`.
    async fn reply(&mut self, word: &str, limit: Duration) -> Result<Vec<usize>, ScaleError> {
        let index = self.index;
        let fail = |why: String| ScaleError::Holder { index, why };
        let line = tokio::time::timeout(limit, self.replies.next_line())
            .await
            .map_err(|_| fail(format!("no {word:?} reply within {limit:?}")))?
            .map_err(|e| fail(e.to_string()))?
            .ok_or_else(|| fail("exited".into()))?;
        parse_reply(&line, word).ok_or_else(|| fail(format!("unexpected reply {line:?}")))
    }
}

/// Holder `index`'s loopback source address: 127.0.1.x, apart from the
/// 127.0.0.1 the server and the rest of the bench use.
fn holder_source(index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, (index % 250 + 1) as u8))
}

/// `"<word> n1 n2 ..."` as its numbers.
fn parse_reply(line: &str, word: &str) -> Option<Vec<usize>> {
    let mut parts = line.split_whitespace();
    if parts.next()? != word {
        return None;
    }
    parts.map(|p| p.parse().ok()).collect()
}

/// How many sockets each of `holders` holders should hold for `total` at once.
fn shares(total: usize, holders: usize) -> Vec<usize> {
    let holders = holders.max(1);
    (0..holders)
        .map(|h| total / holders + usize::from(h < total % holders))
        .collect()
}

/// The node's processes right now.
struct NodeSample {
    cpu_seconds: f64,
    rss_bytes: u64,
    worker_fds: Vec<usize>,
    kernel_slab_bytes: u64,
}

fn sample_node(master: u32) -> NodeSample {
    let tree = procstat::sample_tree(&[master]);
    NodeSample {
        cpu_seconds: tree.cpu_seconds,
        rss_bytes: tree.rss_bytes,
        worker_fds: procstat::descendants(master)
            .into_iter()
            .map(procstat::fd_count)
            .collect(),
        kernel_slab_bytes: kernel_slab_bytes(),
    }
}

/// `Slab:` of /proc/meminfo in bytes (0 where it cannot be read).
fn kernel_slab_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("Slab:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The steered side of the run.
struct Run<'a> {
    params: &'a ScaleParams,
    master: u32,
    holders: Vec<Holder>,
    empty_fds: usize,
}

impl Run<'_> {
    fn generator_cpu(&self) -> f64 {
        let pids: Vec<u32> = self.holders.iter().filter_map(|h| h.child.id()).collect();
        procstat::sample_tree(&pids).cpu_seconds
    }

    /// Grows every holder to its share of `total` and returns the step's row.
    async fn grow_to(&mut self, total: usize, label: String) -> Result<StepRow, ScaleError> {
        let targets = shares(total, self.holders.len());
        let adding: usize = targets
            .iter()
            .zip(&self.holders)
            .map(|(t, h)| t.saturating_sub(h.held))
            .sum();
        let concurrency = (self.params.connect_concurrency / self.holders.len()).max(1);
        // Slow machines still finish: at least 60 s, or 2 ms per handshake.
        let limit = Duration::from_secs(60).max(Duration::from_millis(2 * adding as u64));
        let (node, generator) = (sample_node(self.master), self.generator_cpu());
        let started = Instant::now();
        for (holder, target) in self.holders.iter_mut().zip(&targets) {
            let more = target.saturating_sub(holder.held);
            holder
                .send(&format!(
                    "grow {more} {concurrency} {}",
                    self.params.connect_timeout.as_secs()
                ))
                .await?;
        }
        let replies = futures_util::future::join_all(
            self.holders
                .iter_mut()
                .map(|h| h.reply("grown", limit + Duration::from_secs(5))),
        )
        .await;
        let seconds = started.elapsed().as_secs_f64();
        let (after, generator_after) = (sample_node(self.master), self.generator_cpu());
        let (mut handshakes, mut failed, mut dropped) = (0, 0, 0);
        for (holder, reply) in self.holders.iter_mut().zip(replies) {
            let numbers = reply?;
            let (ok, bad, gone) = match numbers[..] {
                [ok, bad, gone] => (ok, bad, gone),
                _ => {
                    return Err(ScaleError::Holder {
                        index: holder.index,
                        why: format!("grown with {numbers:?}"),
                    })
                }
            };
            holder.held += ok;
            handshakes += ok;
            failed += bad;
            dropped += gone;
        }
        tokio::time::sleep(self.params.settle).await;
        let settled = sample_node(self.master);
        tokio::time::sleep(self.params.idle_window).await;
        let idle = sample_node(self.master);
        let idle_cpu_share = (idle.cpu_seconds - settled.cpu_seconds)
            / self.params.idle_window.as_secs_f64().max(1e-3);
        Ok(StepRow {
            label,
            sockets: self.holders.iter().map(|h| h.held).sum(),
            handshakes,
            failed,
            seconds,
            server_cpu_seconds: after.cpu_seconds - node.cpu_seconds,
            generator_cpu_seconds: generator_after - generator,
            server_rss_bytes: settled.rss_bytes,
            worker_fds: settled.worker_fds,
            kernel_slab_bytes: settled.kernel_slab_bytes,
            idle_cpu_share: Some(idle_cpu_share),
            server_rss_later_bytes: Some(idle.rss_bytes),
            dropped,
        })
    }

    /// Closes every held socket and returns the node once they have left.
    async fn close_all(&mut self, label: String) -> Result<StepRow, ScaleError> {
        let before = sample_node(self.master);
        let started = Instant::now();
        for holder in &mut self.holders {
            holder.send("close").await?;
        }
        let replies = futures_util::future::join_all(
            self.holders
                .iter_mut()
                .map(|h| h.reply("closed", Duration::from_secs(60))),
        )
        .await;
        let mut dropped = 0;
        for (holder, reply) in self.holders.iter_mut().zip(replies) {
            dropped += reply?.first().copied().unwrap_or(0);
            holder.held = 0;
        }
        // The server notices each close; wait (bounded) until its descriptors
        // are back where the empty node had them.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline
            && sample_node(self.master).worker_fds.iter().sum::<usize>() > self.empty_fds + 16
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        tokio::time::sleep(self.params.settle).await;
        let settled = sample_node(self.master);
        tokio::time::sleep(self.params.later).await;
        let later = sample_node(self.master);
        Ok(StepRow {
            label,
            sockets: 0,
            handshakes: 0,
            failed: 0,
            seconds,
            server_cpu_seconds: settled.cpu_seconds - before.cpu_seconds,
            generator_cpu_seconds: 0.0,
            server_rss_bytes: settled.rss_bytes,
            worker_fds: settled.worker_fds,
            kernel_slab_bytes: settled.kernel_slab_bytes,
            idle_cpu_share: None,
            server_rss_later_bytes: Some(later.rss_bytes),
            dropped,
        })
    }
}

/// Runs the steps against one sockhive node (cookie logins read from Redis,
/// embedded broker), then closes everything, grows straight to the largest
/// step again and closes again: the second round shows whether memory that
/// came back stays bounded.
pub async fn run(
    env: &Environment,
    params: &ScaleParams,
    meta: Value,
) -> Result<ScaleOutput, ScaleError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let salt = format!("sockhive-scale-{now}");
    let per_holder = params.per_holder();
    let logins: Vec<Login> = (0..params.holders * per_holder)
        .map(|i| Login::derive(&salt, i))
        .collect();
    eprintln!("[scale] seeding {} sessions", logins.len());
    seed_sessions(env.redis, &logins).await?;
    let probe = CredentialBook::new(&logins[..1], &env.session_secret, &env.jwt_key, now);
    let running = env
        .start_with_workers(
            ServerKind::SockhiveSc,
            Layout::Serving,
            &probe,
            params.workers,
        )
        .await?;
    let master = running.target.roots[0];
    let addr = running.target.addrs[0];
    tokio::time::sleep(params.settle).await;
    let empty = sample_node(master);
    let holders = (0..params.holders)
        .map(|h| {
            Holder::spawn(
                h,
                addr,
                &salt,
                &env.session_secret,
                h * per_holder,
                per_holder,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut run = Run {
        params,
        master,
        holders,
        empty_fds: empty.worker_fds.iter().sum(),
    };
    let mut rows = Vec::new();
    let mut problem = None;
    let mut steps = params
        .steps
        .iter()
        .map(|&n| (n, format!("grow to {n}")))
        .collect::<Vec<_>>();
    let most = params.steps.last().copied().unwrap_or(0);
    steps.push((0, "all closed".into()));
    steps.push((most, format!("round 2: straight to {most}")));
    steps.push((0, "round 2: all closed".into()));
    for (total, label) in steps {
        let row = if total == 0 {
            run.close_all(label).await
        } else {
            run.grow_to(total, label).await
        };
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                problem = Some(e.to_string());
                break;
            }
        };
        eprintln!(
            "[scale] {}: {} sockets, {} handshakes ({} failed) in {:.1} s, RSS {:.1} MiB, worker fds {:?}",
            row.label,
            row.sockets,
            row.handshakes,
            row.failed,
            row.seconds,
            row.server_rss_bytes as f64 / 1048576.0,
            row.worker_fds
        );
        let short = row.failed > 0 || row.dropped > 0;
        rows.push(row);
        if short {
            problem.get_or_insert_with(|| "handshakes failed or held sockets were dropped".into());
        }
    }
    for holder in &mut run.holders {
        let _ = holder.send("exit").await;
    }
    Ok(ScaleOutput {
        meta,
        params: params.clone(),
        server: running.description.clone(),
        base_rss_bytes: empty.rss_bytes,
        base_slab_bytes: empty.kernel_slab_bytes,
        rows,
        problem,
    })
}

/// `sockhive-bench scale`'s flags (bench/run.sh scale passes the paths).
#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    paths: crate::RunPaths,
    /// Two small steps on 2 workers and 2 holders: for CI, so the run keeps working.
    #[arg(long)]
    smoke: bool,
    /// Sockets held after each step.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000, 10_000, 50_000, 100_000])]
    steps: Vec<usize>,
    /// Worker processes [default: enough that each holds at most 3/4 of its open-file limit].
    #[arg(long)]
    workers: Option<u16>,
}

/// `sockhive-bench scale-holder`: one generator process (started by `scale`).
#[derive(Debug, clap::Args)]
pub struct HolderArgs {
    /// The node's public address.
    #[arg(long)]
    addr: SocketAddr,
    /// The local address to connect from.
    #[arg(long)]
    source: IpAddr,
    /// The salt the logins were derived with.
    #[arg(long)]
    salt: String,
    /// express-session's secret, to sign the cookies.
    #[arg(long)]
    secret: String,
    /// This holder's first login.
    #[arg(long)]
    first: usize,
    /// Logins this holder may use.
    #[arg(long)]
    capacity: usize,
}

/// Runs `scale` and writes its table; fails when a step came up short.
pub fn main(args: ScaleArgs) -> ExitCode {
    let fd_limit = procstat::raise_fd_limit();
    let params = if args.smoke {
        ScaleParams::smoke(fd_limit)
    } else {
        ScaleParams::plan(args.steps.clone(), fd_limit, args.workers)
    };
    eprintln!(
        "[scale] steps {:?}, {} workers, {} holders (open-file limit {fd_limit})",
        params.steps, params.workers, params.holders
    );
    let env = Environment::new(&args.paths, PathBuf::new(), PathBuf::new());
    let stamp = crate::utc_stamp();
    let mut meta = crate::outputs::run_meta(&stamp, &env.caps.version);
    meta["open_file_limit"] = fd_limit.into();
    meta["wrapper"] = std::env::var("BENCH_SOCKHIVE_WRAPPER")
        .unwrap_or_default()
        .into();
    let Some(runtime) = crate::outputs::generator_runtime("scale") else {
        return ExitCode::FAILURE;
    };
    let output = match runtime.block_on(run(&env, &params, meta)) {
        Ok(output) => output,
        Err(e) => {
            eprintln!("[scale] {e}");
            return ExitCode::FAILURE;
        }
    };
    let stem = if args.smoke {
        format!("smoke-scale-{stamp}")
    } else {
        format!("scale-{stamp}")
    };
    let md = markdown(&output);
    let json = serde_json::to_string_pretty(&output).unwrap_or_default();
    let files = [
        (args.paths.out.join(format!("{stem}.json")), json.as_str()),
        (args.paths.out.join(format!("{stem}.md")), md.as_str()),
    ];
    if !crate::outputs::write_files("scale", &files) {
        return ExitCode::FAILURE;
    }
    println!("{md}");
    if output.complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The holder's loop: `grow <n> <concurrency> <timeout s>` connects `n` more
/// sockets and answers `grown <ok> <failed> <dropped so far>`; `close` closes
/// them all and answers `closed <dropped>`; `exit` or the end of stdin ends it.
pub fn holder_main(args: HolderArgs) -> ExitCode {
    procstat::raise_fd_limit();
    let Some(runtime) = crate::outputs::generator_runtime("scale-holder") else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(hold(args));
    ExitCode::SUCCESS
}

async fn hold(args: HolderArgs) {
    let mut target = Target::new(
        "sockhive (sc)".into(),
        Protocol::SocketCluster,
        vec![args.addr],
        AuthMode::Cookie,
        Vec::new(),
    );
    target.source = Some(args.source);
    let target = Arc::new(target);
    let mut fleets: Vec<Fleet> = Vec::new();
    let mut next = 0usize;
    let mut stdout = tokio::io::stdout();
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = commands.next_line().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words[..] {
            ["grow", n, concurrency, timeout] => {
                let (Ok(n), Ok(concurrency), Ok(timeout)) =
                    (n.parse::<usize>(), concurrency.parse(), timeout.parse())
                else {
                    break;
                };
                let n = n.min(args.capacity.saturating_sub(next));
                let logins: Vec<Login> = (next..next + n)
                    .map(|i| Login::derive(&args.salt, args.first + i))
                    .collect();
                next += n;
                let book = Arc::new(CredentialBook::new(&logins, &args.secret, "unused", 0));
                let fleet = Fleet::start(
                    target.clone(),
                    book,
                    FleetParams {
                        sockets: n,
                        connect_concurrency: concurrency,
                        timeout: Duration::from_secs(timeout),
                    },
                    "scale",
                );
                let limit = Duration::from_secs(timeout) * (n as u32 / 1000 + 2);
                let connected = fleet.wait_connected(limit).await;
                if let Some(problem) = fleet.state.first_problem() {
                    eprintln!("[scale-holder {}] {problem}", args.source);
                }
                fleets.push(fleet);
                let dropped = dropped_in(&fleets);
                format!("grown {connected} {} {dropped}", n - connected)
            }
            ["close"] => {
                let dropped = dropped_in(&fleets);
                futures_util::future::join_all(fleets.drain(..).map(Fleet::stop)).await;
                next = 0;
                format!("closed {dropped}")
            }
            _ => break,
        };
        if stdout
            .write_all(format!("{answer}\n").as_bytes())
            .await
            .is_err()
            || stdout.flush().await.is_err()
        {
            break;
        }
    }
    futures_util::future::join_all(fleets.into_iter().map(Fleet::stop)).await;
}

fn dropped_in(fleets: &[Fleet]) -> usize {
    fleets
        .iter()
        .map(|f| f.state.dropped.load(std::sync::atomic::Ordering::Relaxed))
        .sum()
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1048576.0)
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The run as a Markdown table: one row per step.
pub fn markdown(output: &ScaleOutput) -> String {
    let p = &output.params;
    let mut md = format!(
        "# sockhive scale\n\n{} (commit {}), {} cores, open-file limit {}{}.\n\n\
         Server: {}. Generator: {} processes (`sockhive-bench scale-holder`), each from its own \
         127.0.1.x address, {} handshakes in flight in all; cookie logins (signed `connect.sid`, \
         session read from Redis), SocketCluster protocol, every socket answering heartbeats. \
         RSS is read {} s after each step. The empty node: {} MiB.\n\n",
        output.meta["date"].as_str().unwrap_or("?"),
        output.meta["commit"].as_str().unwrap_or("?"),
        output.meta["cores"],
        output.meta["open_file_limit"],
        match output.meta["wrapper"].as_str() {
            Some(w) if !w.is_empty() => format!(", sockhive run under `{w}`"),
            _ => String::new(),
        },
        output.server,
        p.holders,
        p.connect_concurrency,
        p.settle.as_secs(),
        mib(output.base_rss_bytes),
    );
    md.push_str(&format!(
        "| step | sockets held | handshakes | failed | handshakes/s | server CPU per handshake, ms | \
         server RSS, MiB | server RSS later, MiB (held: after the {} s idle window; closed: {} s later) | \
         RSS per socket, bytes | RSS per socket after the idle window, bytes | this step's RSS per added socket, bytes | \
         kernel slab per socket end, bytes | idle server CPU, µs per socket per second | \
         descriptors per worker |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        p.idle_window.as_secs(),
        p.later.as_secs(),
    ));
    let mut previous: Option<&StepRow> = None;
    for row in &output.rows {
        let per_socket = output
            .rss_per_socket(row)
            .map_or("—".into(), |b| thousands(b.round().max(0.0) as usize));
        let per_socket_later = output
            .rss_per_socket_later(row)
            .map_or("—".into(), |b| thousands(b.round().max(0.0) as usize));
        let marginal = match previous {
            Some(prev) if row.sockets > prev.sockets && row.handshakes > 0 => {
                let bytes = (row.server_rss_bytes as f64 - prev.server_rss_bytes as f64)
                    / (row.sockets - prev.sockets) as f64;
                thousands(bytes.round().max(0.0) as usize)
            }
            _ => "—".into(),
        };
        let slab = output
            .slab_per_socket_end(row)
            .map_or("—".into(), |b| thousands(b.round().max(0.0) as usize));
        let idle = output
            .idle_us_per_socket_second(row)
            .map_or("—".into(), |us| format!("{us:.2}"));
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            row.label,
            thousands(row.sockets),
            thousands(row.handshakes),
            row.failed,
            row.handshakes_per_second()
                .map_or("—".into(), |r| thousands(r.round() as usize)),
            row.server_ms_per_handshake()
                .map_or("—".into(), |ms| format!("{ms:.3}")),
            mib(row.server_rss_bytes),
            row.server_rss_later_bytes.map_or("—".into(), mib),
            per_socket,
            per_socket_later,
            marginal,
            slab,
            idle,
            row.worker_fds
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join(" / "),
        ));
        previous = Some(row);
    }
    md.push_str(&format!(
        "\n{}\n",
        match &output.problem {
            None => "**complete**: every handshake succeeded and no held socket was dropped."
                .to_string(),
            Some(p) => format!("**incomplete**: {p}"),
        }
    ));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_keeps_every_process_under_its_file_limit() {
        let p = ScaleParams::plan(vec![100_000, 1_000, 50_000, 10_000], 20_000, None);
        assert_eq!(p.steps, [1_000, 10_000, 50_000, 100_000]);
        // 15,000 sockets per process at most: 7 of each.
        assert_eq!((p.workers, p.holders), (7, 7));
        assert!(p.per_holder() * p.holders >= 100_000);
        assert!(p.per_holder() <= 15_000);
        let small = ScaleParams::plan(vec![1_000], 20_000, None);
        assert_eq!((small.workers, small.holders), (2, 1));
        assert_eq!(ScaleParams::plan(vec![1_000], 20_000, Some(4)).workers, 4);
    }

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        let s = shares(100_003, 7);
        assert_eq!(s.iter().sum::<usize>(), 100_003);
        assert!(s.iter().max().unwrap() - s.iter().min().unwrap() <= 1);
        assert_eq!(shares(0, 3), [0, 0, 0]);
    }

    #[test]
    fn replies_are_read_by_their_word() {
        assert_eq!(parse_reply("grown 10 0 0", "grown"), Some(vec![10, 0, 0]));
        assert_eq!(parse_reply("closed 2", "closed"), Some(vec![2]));
        assert_eq!(parse_reply("closed 2", "grown"), None);
        assert_eq!(parse_reply("grown x", "grown"), None);
    }

    #[test]
    fn per_socket_rss_is_above_the_empty_node() {
        let row = |sockets, rss| StepRow {
            label: String::new(),
            sockets,
            handshakes: sockets,
            failed: 0,
            seconds: 2.0,
            server_cpu_seconds: 0.5,
            generator_cpu_seconds: 0.0,
            server_rss_bytes: rss,
            worker_fds: Vec::new(),
            kernel_slab_bytes: 2_000_000 + 4_000 * sockets as u64,
            idle_cpu_share: Some(0.01),
            server_rss_later_bytes: None,
            dropped: 0,
        };
        let output = ScaleOutput {
            meta: Value::Null,
            params: ScaleParams::smoke(20_000),
            server: String::new(),
            base_rss_bytes: 10_000_000,
            base_slab_bytes: 2_000_000,
            rows: vec![row(1_000, 18_000_000), row(0, 12_000_000)],
            problem: None,
        };
        assert_eq!(output.rss_per_socket(&output.rows[0]), Some(8_000.0));
        assert_eq!(output.rss_per_socket(&output.rows[1]), None);
        assert_eq!(output.rows[0].handshakes_per_second(), Some(500.0));
        assert_eq!(output.rows[0].server_ms_per_handshake(), Some(0.5));
        assert_eq!(output.slab_per_socket_end(&output.rows[0]), Some(2_000.0));
        assert_eq!(
            output.idle_us_per_socket_second(&output.rows[0]),
            Some(10.0)
        );
        assert!(output.complete());
        let md = markdown(&output);
        assert!(md.contains("| 1,000 |"), "{md}");
        assert!(md.contains("| 8,000 |"), "{md}");
    }
}
