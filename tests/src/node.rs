//! A real `sockhive serve` process on port 0.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, Once};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::http::{self, Reply};
use crate::repo_root;

/// The admin token every test node uses.
pub const ADMIN_TOKEN: &str = "test-admin-token";
/// The JWT key every test node uses.
pub const AUTH_KEY: &str = "test-secret-key";

/// Path of the binary under test, built once per test process so it is never stale.
pub fn sockhive_bin() -> std::path::PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "sockhive-master", "--bin", "sockhive"])
            .current_dir(repo_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the sockhive binary failed");
    });
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    target.join("debug").join("sockhive")
}

/// A token from `sockhive token sign` with the test key: the code path operators use.
pub fn sign_token(claims: &serde_json::Value) -> String {
    let out = Command::new(sockhive_bin())
        .args([
            "token",
            "sign",
            "--auth-key",
            AUTH_KEY,
            "--claims",
            &claims.to_string(),
        ])
        .output()
        .expect("run sockhive token sign");
    assert!(
        out.status.success(),
        "token sign failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Options of a node to start.
#[derive(Debug, Clone, Default)]
pub struct NodeBuilder {
    workers: u16,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl NodeBuilder {
    /// A node with `workers` workers, the test admin token and JWT key.
    pub fn new(workers: u16) -> NodeBuilder {
        NodeBuilder {
            workers,
            ..NodeBuilder::default()
        }
    }

    /// Adds command-line arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> NodeBuilder {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the node.
    pub fn env(mut self, key: &str, value: &str) -> NodeBuilder {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts the node and waits until it prints its addresses (all workers ready).
    pub fn start(self) -> Node {
        let mut command = Command::new(sockhive_bin());
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--admin-token",
                ADMIN_TOKEN,
                "--auth-key",
                AUTH_KEY,
            ])
            .args(["--workers", &self.workers.to_string()])
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("SOCKHIVE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start sockhive");
        let logs = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("piped stderr");
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines_tx, lines_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut public, mut admin) = (None, None);
        while admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match lines_rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "sockhive did not become ready; logs:\n{}",
                        logs.lock().unwrap()
                    );
                }
            };
            if let Some(rest) = line.trim().strip_prefix("SocketCluster: ws://") {
                public = rest.trim_end_matches("/socketcluster/").parse().ok();
            }
            if let Some(rest) = line.trim().strip_prefix("admin:") {
                admin = rest
                    .trim()
                    .strip_prefix("http://")
                    .and_then(|r| r.split('/').next())
                    .and_then(|a| a.parse().ok());
            }
        }
        Node {
            child,
            public: public.expect("public address announced"),
            admin: admin.expect("admin address announced"),
            logs,
            known_workers: Mutex::new(Vec::new()),
        }
    }
}

/// A running node; killed (with its workers) when dropped.
pub struct Node {
    child: Child,
    /// The public port: WebSocket endpoints and `/healthz`.
    pub public: SocketAddr,
    /// The master's admin port.
    pub admin: SocketAddr,
    logs: Arc<Mutex<String>>,
    known_workers: Mutex<Vec<i32>>,
}

/// The direct children of a process.
pub fn children_of(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut children = Vec::new();
    for task in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            children.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    children.sort();
    children
}

/// True while `pid` exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

impl Node {
    /// Starts a node with `workers` workers and default settings.
    pub fn start(workers: u16) -> Node {
        NodeBuilder::new(workers).start()
    }

    /// The master's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The worker processes alive now.
    pub fn worker_pids(&self) -> Vec<i32> {
        let pids: Vec<i32> = children_of(self.pid())
            .into_iter()
            .filter(|p| is_alive(*p))
            .collect();
        let mut known = self.known_workers.lock().unwrap();
        for pid in &pids {
            if !known.contains(pid) {
                known.push(*pid);
            }
        }
        pids
    }

    /// Every worker pid this handle has seen (for the no-orphans checks).
    pub fn seen_workers(&self) -> Vec<i32> {
        self.worker_pids();
        self.known_workers.lock().unwrap().clone()
    }

    /// The summed VmRSS of the workers alive now, in KiB.
    pub fn workers_rss_kib(&self) -> u64 {
        self.worker_pids()
            .into_iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|status| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix("VmRSS:"))
                    .and_then(|rest| {
                        rest.trim()
                            .trim_end_matches("kB")
                            .trim()
                            .parse::<u64>()
                            .ok()
                    })
            })
            .sum()
    }

    /// Sends a signal to the master.
    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.pid()), signal);
    }

    /// Waits for the master to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the node logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// The SocketCluster URL.
    pub fn sc_url(&self) -> String {
        format!("ws://{}/socketcluster/", self.public)
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        http::get(self.admin, "/metrics", &[]).await.body
    }

    /// The value of one series, e.g. `sockhive_workers` or
    /// `sockhive_rejected_connections_total{worker="1",reason="origin"}`;
    /// with no labels given, sums every series of that name.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        sum_series(&text, series)
    }

    /// A socket's record and session from `GET /api/sockets/{id}` (panics unless 200).
    pub async fn record(&self, id: &str) -> serde_json::Value {
        let reply = http::get(
            self.admin,
            &format!("/api/sockets/{id}"),
            &[&format!("Authorization: Bearer {ADMIN_TOKEN}")],
        )
        .await;
        assert_eq!(reply.status, 200, "{id}: {}", reply.body);
        reply.json()
    }

    /// A call to the admin API with the test token.
    pub async fn admin_post(&self, path: &str, body: serde_json::Value) -> Reply {
        http::post_json(self.admin, path, Some(ADMIN_TOKEN), &body).await
    }
}

/// Splits `name{a="1",b="2"}` into the name and its label pairs.
fn parse_series(series: &str) -> (&str, Vec<(&str, &str)>) {
    let Some((name, rest)) = series.split_once('{') else {
        return (series, Vec::new());
    };
    let labels = rest
        .trim_end_matches('}')
        .split("\",")
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| pair.split_once("=\""))
        .map(|(k, v)| (k.trim_matches(','), v.trim_end_matches('"')))
        .collect();
    (name, labels)
}

/// Sums the samples of every series named like `series` that carries all of
/// its labels (in any order), so `x_total{reason="origin"}` adds up the workers.
pub fn sum_series(text: &str, series: &str) -> f64 {
    let (want_name, want_labels) = parse_series(series);
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(name, _)| {
            let (have_name, have_labels) = parse_series(name);
            have_name == want_name && want_labels.iter().all(|pair| have_labels.contains(pair))
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

impl Drop for Node {
    fn drop(&mut self) {
        let workers = self.seen_workers();
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The parent-death signal takes the workers down; make sure of it so
        // a failing test cannot leave processes behind for the next one.
        for pid in workers {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn series_match_by_label_subset_in_any_order() {
        let text = "# TYPE x counter\nx{worker=\"1\",reason=\"a\"} 2\nx{worker=\"2\",reason=\"a\"} 3\nx{worker=\"2\",reason=\"b\"} 5\nxy 7\n";
        assert_eq!(super::sum_series(text, "x{reason=\"a\"}"), 5.0);
        assert_eq!(super::sum_series(text, "x{reason=\"a\",worker=\"2\"}"), 3.0);
        assert_eq!(super::sum_series(text, "x"), 10.0);
        assert_eq!(super::sum_series(text, "xy"), 7.0);
    }
}
