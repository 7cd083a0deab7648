//! The runtime's acceptance: processes, supervision, signals, the front
//! door's limits and the configuration, all against the real binary.
//! Killed workers and masters, SIGTERM drains and SIGHUP rolls are tested
//! under traffic, with their losses counted, in faults.rs.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use nix::sys::signal::Signal;
use sockhive_tests::node::{is_alive, sockhive_bin, NodeBuilder};
use sockhive_tests::{eventually, http, ws, Node};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn three_workers_run_and_metrics_count_them() {
    let node = Node::start(3);
    assert_eq!(node.worker_pids().len(), 3);
    assert_eq!(node.metric("sockhive_workers").await, 3.0);
    let ready = http::get(node.admin, "/readyz", &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(http::get(node.admin, "/healthz", &[]).await.status, 200);
    assert_eq!(http::get(node.public, "/healthz", &[]).await.status, 200);
}

/// The scheduling policy (`/proc/PID/stat`, field 41) of a process.
fn policy_of(pid: i32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which may hold spaces: it ends at the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(41 - 3).unwrap().parse().unwrap()
}

/// Issue 19: master and workers run under SCHED_BATCH unless told to keep
/// the policy they were started with (bench/README.md, "Burst fan-out").
#[tokio::test]
async fn master_and_workers_run_under_sched_batch_unless_told_otherwise() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_BATCH: u32 = 3;
    let node = Node::start(2);
    assert_eq!(policy_of(node.pid()), SCHED_BATCH);
    let workers = node.worker_pids();
    assert_eq!(workers.len(), 2);
    for pid in workers {
        assert_eq!(policy_of(pid), SCHED_BATCH, "worker {pid}");
    }
    let inherit = NodeBuilder::new(1)
        .args(["--cpu-scheduling", "inherit"])
        .start();
    assert_eq!(policy_of(inherit.pid()), SCHED_OTHER);
    for pid in inherit.worker_pids() {
        assert_eq!(policy_of(pid), SCHED_OTHER, "worker {pid}");
    }
}

#[tokio::test]
async fn a_burst_of_300_connections_spreads_over_all_workers() {
    let node = Node::start(3);
    let mut sockets = Vec::new();
    let mut pending = Vec::new();
    for _ in 0..300 {
        pending.push(tokio::spawn(ws::connect(node.public, "/socketcluster/")));
    }
    for task in pending {
        sockets.push(task.await.unwrap());
    }
    let metrics = node.metrics().await;
    let per_worker: Vec<f64> = (1..=3)
        .map(|w| {
            sockhive_tests::node::sum_series(
                &metrics,
                &format!("sockhive_connections{{worker=\"{w}\",protocol=\"socketcluster\"}}"),
            )
        })
        .collect();
    assert_eq!(per_worker.iter().sum::<f64>(), 300.0, "{per_worker:?}");
    for (worker, count) in per_worker.iter().enumerate() {
        assert!(
            *count >= 45.0,
            "worker {} got {count} of 300 (< 15%): {per_worker:?}",
            worker + 1
        );
    }
    drop(sockets);
}

#[tokio::test]
async fn the_drain_deadline_is_enforced_and_logged() {
    // A socket that never completes its close handshake keeps its worker busy;
    // the master must still exit at the deadline and say the deadline won.
    let mut node = NodeBuilder::new(1).args(["--drain-timeout", "1s"]).start();
    let workers = node.worker_pids();
    // Upgraded but never handshaken: the socket may finish its handshake
    // during the drain, which outlasts the 1 s deadline.
    let socket = ws::connect(node.public, "/socketcluster/").await;
    let started = Instant::now();
    node.signal(Signal::SIGTERM);
    node.wait_exit(Duration::from_secs(4))
        .expect("master exits at the deadline");
    assert!(started.elapsed() < Duration::from_secs(4));
    eventually(Duration::from_secs(2), "workers gone", async || {
        workers.iter().all(|p| !is_alive(*p)).then_some(())
    })
    .await;
    assert!(
        node.logs().contains("worker drain deadline reached"),
        "{}",
        node.logs()
    );
    drop(socket);
}

#[tokio::test]
async fn a_stalled_upgrade_is_cut_at_the_timeout_while_others_are_served() {
    let node = NodeBuilder::new(1)
        .args(["--upgrade-timeout", "1s"])
        .start();
    let mut stalled = tokio::net::TcpStream::connect(node.public).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stalled
        .write_all(b"GET /socketcluster/ HTTP/1.1\r\nHost: x\r\nUpgrade: web")
        .await
        .unwrap();
    let started = Instant::now();
    // Meanwhile the same worker serves everyone else.
    assert_eq!(http::get(node.public, "/healthz", &[]).await.status, 200);
    let (_socket, data) = ws::sc_open(node.public, None).await;
    assert_eq!(data["isAuthenticated"], false);
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(3), stalled.read(&mut buf))
        .await
        .expect("cut in time");
    assert!(matches!(read, Ok(0) | Err(_)), "connection closed");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed < Duration::from_millis(2500),
        "cut after {elapsed:?}"
    );
    assert_eq!(
        node.metric("sockhive_rejected_connections_total{worker=\"1\",reason=\"upgrade_timeout\"}")
            .await,
        1.0
    );
}

fn upgrade_request(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n")
}

#[tokio::test]
async fn bad_upgrades_get_their_http_status_and_a_metric() {
    let node = NodeBuilder::new(1)
        .args(["--max-header-bytes", "2KiB"])
        .start();
    let cases = [
        (upgrade_request("/socketcluster/", "Sec-WebSocket-Version: 13\r\nOrigin: http://evil.example\r\n"), 403, "origin"),
        (upgrade_request("/socketcluster/", "Sec-WebSocket-Version: 8\r\n"), 426, "bad_upgrade"),
        ("GET /socketcluster/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n".to_string(), 400, "bad_upgrade"),
        (format!("GET /socketcluster/ HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n", "a".repeat(4096)), 431, "header_too_large"),
        (upgrade_request("/nowhere", "Sec-WebSocket-Version: 13\r\n"), 404, "not_found"),
    ];
    for (request, status, _) in &cases {
        let reply = http::raw(node.public, request.as_bytes()).await;
        assert_eq!(reply.status, *status, "{request:?} -> {}", reply.head);
    }
    let version = http::raw(node.public, cases[1].0.as_bytes()).await;
    assert!(
        version.head.contains("Sec-WebSocket-Version: 13"),
        "426 names the supported version: {}",
        version.head
    );
    let metrics = node.metrics().await;
    for reason in ["origin", "bad_upgrade", "header_too_large"] {
        let count = sockhive_tests::node::sum_series(
            &metrics,
            &format!("sockhive_rejected_connections_total{{worker=\"1\",reason=\"{reason}\"}}"),
        );
        assert!(count >= 1.0, "{reason} counted: {metrics}");
    }
    // A same-host Origin and an allowed one pass.
    let same = upgrade_request(
        "/socketcluster/",
        "Sec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1\r\n",
    );
    assert_eq!(http::raw(node.public, same.as_bytes()).await.status, 101);
}

#[tokio::test]
async fn the_origin_allow_list_is_configurable() {
    let node = NodeBuilder::new(1)
        .args(["--allowed-origin", "https://app.example"])
        .start();
    let allowed = upgrade_request(
        "/socketcluster/",
        "Sec-WebSocket-Version: 13\r\nOrigin: https://app.example\r\n",
    );
    assert_eq!(http::raw(node.public, allowed.as_bytes()).await.status, 101);
    let other = upgrade_request(
        "/socketcluster/",
        "Sec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1\r\n",
    );
    assert_eq!(http::raw(node.public, other.as_bytes()).await.status, 403);
}

#[tokio::test]
async fn an_oversized_frame_gets_1009_and_the_worker_serves_others() {
    let node = NodeBuilder::new(1).args(["--max-payload", "64KiB"]).start();
    let (mut big, _) = ws::sc_open(node.public, None).await;
    let (mut bystander, _) = ws::sc_open(node.public, None).await;
    big.send(Message::text("x".repeat(100 * 1024)))
        .await
        .unwrap();
    let close = ws::close_code(&mut big, Duration::from_secs(5)).await;
    assert_eq!(close.map(|c| c.0), Some(1009));
    // The other socket on the same worker is untouched.
    bystander
        .send(Message::text(
            r##"{"event":"#subscribe","data":{"channel":"still-here"},"cid":2}"##,
        ))
        .await
        .unwrap();
    let reply = ws::next_json(&mut bystander, Duration::from_secs(5))
        .await
        .expect("bystander answered");
    assert_eq!(reply, serde_json::json!({"rid": 2}));
    assert_eq!(node.metric("sockhive_protocol_errors_total{worker=\"1\",protocol=\"socketcluster\",reason=\"too_big\"}").await, 1.0);
    assert_eq!(node.worker_pids().len(), 1);
}

#[tokio::test]
async fn max_connections_refuses_with_503() {
    let node = NodeBuilder::new(1).args(["--max-connections", "2"]).start();
    let _a = ws::connect(node.public, "/socketcluster/").await;
    let _b = ws::connect(node.public, "/socketcluster/").await;
    let third = upgrade_request("/socketcluster/", "Sec-WebSocket-Version: 13\r\n");
    assert_eq!(http::raw(node.public, third.as_bytes()).await.status, 503);
    assert_eq!(
        node.metric("sockhive_rejected_connections_total{worker=\"1\",reason=\"max_connections\"}")
            .await,
        1.0
    );
}

fn sockhive(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(sockhive_bin());
    command.args(args);
    for key in std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("SOCKHIVE_"))
    {
        command.env_remove(key);
    }
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().expect("run sockhive")
}

#[test]
fn an_unknown_toml_key_is_refused_with_its_name() {
    let dir = std::env::temp_dir().join(format!("sockhive-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[server]\nworkers = 2\nwrokers = 3\n").unwrap();
    let out = sockhive(&["check-config", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("wrokers") && stderr.contains("unknown field"),
        "{stderr}"
    );
    std::fs::write(&file, "[server]\ndrain_timeout = 10\n").unwrap();
    let out = sockhive(&["check-config", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("drain_timeout"));
}

#[test]
fn a_bad_flag_value_is_refused_with_the_flag_and_reason() {
    let out = sockhive(&["serve", "--workers", "many"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--workers") && stderr.contains("many"),
        "{stderr}"
    );
    let out = sockhive(&["check-config", "--drain-timeout", "10"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--drain-timeout") && stderr.contains("unit"),
        "{stderr}"
    );
    let out = sockhive(&["check-config", "--reject-at-upgrade"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.reject_at_upgrade"));
}

#[test]
fn flags_beat_environment_beat_the_file() {
    let dir = std::env::temp_dir().join(format!("sockhive-precedence-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("node.toml");
    std::fs::write(&file, "[server]\nworkers = 3\ndrain_timeout = \"7s\"\nnode_id = \"from-file\"\n[limits]\nmax_payload = \"2MiB\"\n").unwrap();
    let path = file.to_str().unwrap();
    let out = sockhive(
        &["check-config", "--config", path, "--node-id", "from-flag"],
        &[("SOCKHIVE_WORKERS", "2"), ("SOCKHIVE_NODE_ID", "from-env")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let effective = String::from_utf8_lossy(&out.stdout);
    assert!(
        effective.contains("workers = 2"),
        "env over file: {effective}"
    );
    assert!(
        effective.contains("node_id = \"from-flag\""),
        "flag over env: {effective}"
    );
    assert!(
        effective.contains("drain_timeout = \"7s\""),
        "file over default: {effective}"
    );
    assert!(effective.contains("max_payload = \"2MiB\""), "{effective}");
    assert!(
        !effective.contains("test-secret"),
        "secrets are not printed"
    );
}

/// How evenly each accept mode spreads a burst over 3 workers: the smallest
/// worker's share of 300 connections (the README quotes these figures).
async fn smallest_share(mode: &str) -> f64 {
    let node = NodeBuilder::new(3).args(["--accept-mode", mode]).start();
    let tasks: Vec<_> = (0..300)
        .map(|_| tokio::spawn(ws::connect(node.public, "/socketcluster/")))
        .collect();
    let mut sockets = Vec::new();
    for task in tasks {
        sockets.push(task.await.unwrap());
    }
    let metrics = node.metrics().await;
    let counts: Vec<f64> = (1..=3)
        .map(|w| {
            sockhive_tests::node::sum_series(
                &metrics,
                &format!("sockhive_connections{{worker=\"{w}\",protocol=\"socketcluster\"}}"),
            )
        })
        .collect();
    eprintln!("accept mode {mode}: connections per worker {counts:?}");
    counts.iter().cloned().fold(f64::MAX, f64::min) / 300.0
}

#[tokio::test]
async fn both_accept_modes_serve_and_reuseport_spreads_evenly() {
    let reuseport = smallest_share("reuseport").await;
    let shared = smallest_share("shared").await;
    eprintln!("smallest share: reuseport {reuseport:.2}, shared {shared:.2}");
    assert!(reuseport >= 0.15, "reuseport smallest share {reuseport}");
}
