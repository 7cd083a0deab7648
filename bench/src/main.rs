//! `sockhive-bench`: the load generator and comparison harness of issue 7.
//!
//! `sockhive-bench suite` starts each server (sockhive, the bare
//! tokio-tungstenite ceiling, socketcluster-server 20, socket.io 4), runs every
//! scenario against it several times, and writes raw JSON plus a Markdown
//! table. `bench/run.sh` installs what this needs and calls it.

mod client;
mod credentials;
mod fleet;
mod histogram;
mod http;
mod outputs;
mod pinning;
mod polling;
mod procstat;
mod redis_ceiling;
mod redis_seed;
mod report;
mod scale;
mod scenario_handshake;
mod scenario_polling;
mod scenario_query;
mod scenario_rpc;
mod scenario_sockets;
mod servers;
mod soak;
mod suite;
mod syscalls;
mod target;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::servers::{Environment, ServerKind, SockhiveCaps};
use crate::suite::SuiteParams;

/// Load generator and comparison harness for sockhive.
#[derive(Debug, Parser)]
#[command(name = "sockhive-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run every scenario on every server and write bench/results.
    Suite(Box<SuiteArgs>),
    /// Soak: sockets churning for minutes under publishes, each worker's RSS and descriptors sampled.
    Soak(Box<soak::SoakArgs>),
    /// Scale: one node holding 1k, 10k, 50k and 100k idle sockets, handshakes/s and RSS at each.
    Scale(Box<scale::ScaleArgs>),
    /// One generator process of `scale` (started by it, steered over stdin).
    #[command(hide = true)]
    ScaleHolder(Box<scale::HolderArgs>),
    /// Redis's pub/sub ceiling: PUBLISHes/s one redis-server relays, by subscriber connections.
    RedisCeiling(Box<redis_ceiling::CeilingArgs>),
    /// Re-render the Markdown table from a suite's JSON.
    Report {
        /// The JSON a suite wrote.
        json: PathBuf,
    },
}

/// Where a run's server binary, Redis and files are (`run.sh` passes them).
#[derive(Debug, clap::Args)]
pub struct RunPaths {
    /// The sockhive binary.
    #[arg(long)]
    pub sockhive: PathBuf,
    /// The Redis every server shares (loopback).
    #[arg(long)]
    pub redis: SocketAddr,
    /// Directory for the results (JSON and Markdown).
    #[arg(long)]
    pub out: PathBuf,
    /// Directory for server logs.
    #[arg(long)]
    pub logs: PathBuf,
}

#[derive(Debug, clap::Args)]
struct SuiteArgs {
    #[command(flatten)]
    paths: RunPaths,
    /// The bare-ws binary.
    #[arg(long)]
    bare: PathBuf,
    /// bench/peers, with `npm ci` done.
    #[arg(long)]
    peers: PathBuf,
    /// Tiny sizes, strict checks, one run: for CI.
    #[arg(long)]
    smoke: bool,
    /// Runs per server.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Sockets for idle, fan-out and query.
    #[arg(long, default_value_t = 10_000)]
    sockets: usize,
    /// Closed-loop handshake clients.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Measured handshake seconds.
    #[arg(long)]
    handshake_seconds: Option<f64>,
    /// Sockets calling `echo` in the rpc closed loop.
    #[arg(long)]
    rpc_clients: Option<usize>,
    /// Measured rpc seconds.
    #[arg(long)]
    rpc_seconds: Option<f64>,
    /// Messages in the fan-out burst [default: 50; smoke: 3].
    #[arg(long)]
    burst_messages: Option<u64>,
    /// Also run the fan-out and the closed-loop handshake pinned: the
    /// server's processes (and the shared redis-server, `--redis-pid`) on the
    /// first CPU, the generator on the second; the shared-core figures are
    /// taken first on the same server.
    #[arg(long)]
    pin: bool,
    /// The shared redis-server's pid, pinned with the servers (run.sh passes it).
    #[arg(long)]
    redis_pid: Option<u32>,
    /// Scenario groups to run: sockets (idle + fan-out), handshake (closed + paced), reject, query, rpc [default: all].
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Servers to measure (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    servers: Option<Vec<ServerKind>>,
}

/// Now, UTC, as result files are named (`2026-12-05T033744Z`).
pub fn utc_stamp() -> String {
    command_output("date", &["-u", "+%Y-%m-%dT%H%M%SZ"])
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn package_version(peers: &std::path::Path, package: &str) -> String {
    std::fs::read_to_string(
        peers
            .join("node_modules")
            .join(package)
            .join("package.json"),
    )
    .ok()
    .and_then(|t| serde_json::from_str::<Value>(&t).ok())
    .and_then(|v| v["version"].as_str().map(str::to_string))
    .unwrap_or_else(|| "?".into())
}

fn machine_meta(args: &SuiteArgs, caps: &SockhiveCaps) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_string(), |(_, m)| m.trim().to_string());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kib: f64 = m.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.0} GiB RAM", kib / 1048576.0))
        })
        .unwrap_or_default();
    let sockhive_dir = args
        .paths
        .sockhive
        .parent()
        .and_then(|p| p.parent())
        .and_then(|p| p.parent())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| ".".into());
    // run.sh names the source (and whether it had uncommitted edits).
    let commit = std::env::var("BENCH_SOCKHIVE_COMMIT").unwrap_or_else(|_| {
        command_output(
            "git",
            &["-C", &sockhive_dir, "rev-parse", "--short", "HEAD"],
        )
    });
    let redis = command_output("redis-server", &["--version"]);
    let redis = redis
        .split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .unwrap_or("?")
        .to_string();
    let versions = format!(
        "{} (commit {commit}), node {}, socketcluster-server {}, socket.io {}, express-session {}, connect-redis {}, passport {}, redis-server {redis}, sockhive-bench {}",
        caps.version,
        command_output("node", &["--version"]),
        package_version(&args.peers, "socketcluster-server"),
        package_version(&args.peers, "socket.io"),
        package_version(&args.peers, "express-session"),
        package_version(&args.peers, "connect-redis"),
        package_version(&args.peers, "passport"),
        env!("CARGO_PKG_VERSION"),
    );
    serde_json::json!({
        "date": command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu,
        "memory": memory,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "versions": versions,
        "sockhive_caps": serde_json::to_value(caps).unwrap_or(Value::Null),
    })
}

fn run_suite(args: SuiteArgs) -> ExitCode {
    let fd_limit = procstat::raise_fd_limit();
    let mut params = if args.smoke {
        SuiteParams::smoke()
    } else {
        SuiteParams::full(args.runs, args.sockets)
    };
    params.only = args.only.clone();
    if let Some(c) = args.concurrency {
        params.concurrency = c;
    }
    if let Some(s) = args.handshake_seconds {
        params.handshake_duration = std::time::Duration::from_secs_f64(s);
    }
    if let Some(c) = args.rpc_clients {
        params.rpc.clients = c;
    }
    if let Some(s) = args.rpc_seconds {
        params.rpc.duration = std::time::Duration::from_secs_f64(s);
    }
    if let Some(n) = args.burst_messages {
        params.sockets.burst_messages = n;
    }
    params.redis_pid = args.redis_pid;
    if args.pin {
        match pinning::Pinning::plan() {
            Some(plan) => params.pin = Some(plan),
            None => {
                eprintln!("[bench] --pin needs at least two CPUs this process may use");
                return ExitCode::FAILURE;
            }
        }
    }
    if fd_limit < (params.sockets.sockets as u64) + 512 {
        eprintln!(
            "[bench] open-file limit {fd_limit} is too low for {} sockets",
            params.sockets.sockets
        );
        return ExitCode::FAILURE;
    }
    let env = Environment::new(&args.paths, args.bare.clone(), args.peers.clone());
    let caps = env.caps.clone();
    eprintln!("[bench] sockhive: {caps:?}");
    let servers = args
        .servers
        .clone()
        .unwrap_or_else(|| ServerKind::ALL.to_vec());
    let meta = machine_meta(&args, &caps);
    let Some(runtime) = crate::outputs::generator_runtime("bench") else {
        return ExitCode::FAILURE;
    };
    let output = match runtime.block_on(suite::run(&env, &servers, &params, meta, args.paths.redis))
    {
        Ok(output) => output,
        Err(e) => {
            eprintln!("[bench] {e}");
            return ExitCode::FAILURE;
        }
    };
    let stamp = utc_stamp();
    let stem = if args.smoke {
        format!("smoke-{stamp}")
    } else {
        stamp
    };
    let json = serde_json::to_string_pretty(&output).unwrap_or_default();
    let md = report::markdown(&output);
    let writes = [
        (args.paths.out.join(format!("{stem}.json")), json.as_str()),
        (args.paths.out.join(format!("{stem}.md")), md.as_str()),
        (
            args.paths.out.join(if args.smoke {
                "smoke-latest.md"
            } else {
                "latest.md"
            }),
            md.as_str(),
        ),
    ];
    if !outputs::write_files("bench", &writes) {
        return ExitCode::FAILURE;
    }
    println!("{md}");
    if suite::all_ran(&output) {
        ExitCode::SUCCESS
    } else {
        eprintln!("[bench] some scenarios failed (see the table's notes)");
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Suite(args) => run_suite(*args),
        Cmd::Soak(args) => soak::main(*args),
        Cmd::Scale(args) => scale::main(*args),
        Cmd::RedisCeiling(args) => redis_ceiling::main(*args),
        Cmd::ScaleHolder(args) => scale::holder_main(*args),
        Cmd::Report { json } => {
            let parsed = std::fs::read_to_string(&json)
                .map_err(|e| e.to_string())
                .and_then(|t| {
                    serde_json::from_str::<suite::SuiteOutput>(&t).map_err(|e| e.to_string())
                });
            match parsed {
                Ok(output) => {
                    println!("{}", report::markdown(&output));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cannot read {}: {e}", json.display());
                    ExitCode::from(2)
                }
            }
        }
    }
}
