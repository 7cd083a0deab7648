//! A real nginx in front of sockhive nodes, on loopback, stopped on drop.
//!
//! It runs the shipped config, not one of its own: `deploy/nginx/test.conf.template`
//! rendered around `deploy/nginx/sockhive-locations.conf`, with the upstream
//! parameters of `deploy/nginx/sockhive.conf`. So every test through it also
//! tests production's proxy settings (e.g. `Host $http_host`, which keeps the
//! port that sockhive's default same-host Origin check compares).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::node::children_of;
use crate::redis::free_port;
use crate::repo_root;
use crate::tempdir::TempDir;

/// How the test nginx picks an upstream for each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balancing {
    /// As shipped (`least_conn`).
    Shipped,
    /// nginx's plain round robin: no stickiness of any kind.
    RoundRobin,
}

/// A non-daemon nginx started by the test; stopped by its pid on drop.
pub struct Nginx {
    child: Child,
    /// Where clients connect.
    pub listen: SocketAddr,
    dir: TempDir,
}

impl Nginx {
    /// Starts nginx in front of `upstreams` on a free loopback port and waits
    /// until it accepts; fails with nginx's own logs if it exits instead.
    pub fn start(upstreams: &[SocketAddr]) -> Nginx {
        Nginx::start_balancing(upstreams, Balancing::Shipped)
    }

    /// [`Nginx::start`] with the shipped config's balancing replaced as asked.
    pub fn start_balancing(upstreams: &[SocketAddr], balancing: Balancing) -> Nginx {
        let dir = TempDir::new("nginx");
        let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut conf = render_test_conf(&dir, listen, upstreams);
        if balancing == Balancing::RoundRobin {
            let text = std::fs::read_to_string(&conf).expect("rendered config");
            assert!(
                text.contains("least_conn;"),
                "the shipped config balances by least_conn"
            );
            conf = dir.write("nginx.conf", &text.replace("least_conn;", ""));
        }
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr file");
        let child = Command::new(program())
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx { child, listen, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited at start ({status}):\n{}", nginx.logs());
            }
            if std::net::TcpStream::connect(listen).is_ok() {
                return nginx;
            }
            if Instant::now() >= deadline {
                panic!("nginx did not listen on {listen}:\n{}", nginx.logs());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// What nginx said so far (its stderr and error log), for failure messages.
    pub fn logs(&self) -> String {
        ["stderr.log", "error.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let master = self.child.id() as i32;
        let workers = children_of(master);
        // SIGTERM is nginx's fast shutdown: the master stops its workers.
        let _ = kill(Pid::from_raw(master), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // nginx workers have no parent-death signal: make sure none is left.
        for pid in workers {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// The nginx program. Debian installs it in /usr/sbin, which a user's PATH
/// may lack; a missing one fails with the package to install, never a skip.
pub fn program() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`nginx` is not installed, so this check cannot run. Install it with \
                 `apt-get install nginx`; CI gets it from tests/run.sh \
                 (`command -v nginx >/dev/null 2>&1 || need_apt+=(nginx)`)"
            )
        })
}

/// Renders the shipped test.conf.template into `dir` for real loopback
/// ports and returns the config's path; public so the deploy checks can run
/// `nginx -t` on exactly what [`Nginx::start`] runs.
pub fn render_test_conf(dir: &TempDir, listen: SocketAddr, upstreams: &[SocketAddr]) -> PathBuf {
    let template = shipped("test.conf.template");
    let parameters = production_server_parameters();
    let servers: Vec<String> = upstreams
        .iter()
        .map(|addr| format!("server {addr} {parameters};"))
        .collect();
    let locations = shipped_path("sockhive-locations.conf");
    let rendered = template
        .replace("{{PREFIX}}", &dir.path().display().to_string())
        .replace("{{LISTEN}}", &listen.to_string())
        .replace("{{UPSTREAM_SERVERS}}", &servers.join("\n        "))
        .replace("{{LOCATIONS}}", &locations.display().to_string());
    let leftover: Vec<&str> = rendered.lines().filter(|l| l.contains("{{")).collect();
    assert!(leftover.is_empty(), "unrendered placeholders: {leftover:?}");
    dir.write("nginx.conf", &rendered)
}

/// The `server ...;` lines of the `sockhive` upstream block; public so the
/// deploy checks compare the same lines this fixture takes parameters from.
pub fn upstream_servers(conf: &str) -> Vec<&str> {
    let block = conf
        .split_once("upstream sockhive {")
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(block, _)| block)
        .expect("an `upstream sockhive { ... }` block");
    block
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("server "))
        .collect()
}

/// The parameters production gives its upstream servers (`max_fails=...`),
/// so the loopback nginx runs with the same passive checks.
fn production_server_parameters() -> String {
    let conf = shipped("sockhive.conf");
    let parameters: Vec<String> = upstream_servers(&conf)
        .iter()
        .map(|line| {
            let parameters: Vec<&str> = line
                .trim_end_matches(';')
                .split_whitespace()
                .skip(2)
                .collect();
            assert!(
                parameters.iter().any(|p| p.starts_with("max_fails="))
                    && parameters.iter().any(|p| p.starts_with("fail_timeout=")),
                "passive health checks (max_fails, fail_timeout) on every server: {line}"
            );
            parameters.join(" ")
        })
        .collect();
    assert!(
        !parameters.is_empty() && parameters.iter().all(|p| *p == parameters[0]),
        "every server has the same parameters: {parameters:?}"
    );
    parameters[0].clone()
}

fn shipped_path(file: &str) -> PathBuf {
    repo_root().join("deploy/nginx").join(file)
}

fn shipped(file: &str) -> String {
    let path = shipped_path(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
