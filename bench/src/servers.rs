//! Starting and stopping the servers under test, each exactly as the report
//! describes it: same machine, same Redis, two processes (or two workers) each.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{Outcome, Protocol, Refusal};
use crate::target::{AuthMode, CredentialBook, Target};

/// The servers the suite knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum ServerKind {
    /// sockhive, SocketCluster protocol.
    #[value(name = "sockhive-sc")]
    SockhiveSc,
    /// sockhive, SocketCluster protocol, its 2 workers joined by the Redis
    /// broker (`--redis-url`) instead of the master's embedded one: what a
    /// user with several nodes runs. Measured on the fan-out only.
    #[value(name = "sockhive-sc-redis")]
    SockhiveScRedis,
    /// sockhive, Socket.IO protocol.
    #[value(name = "sockhive-sio")]
    SockhiveSio,
    /// The bare tokio-tungstenite server (no auth): the ceiling.
    #[value(name = "bare")]
    Bare,
    /// socketcluster-server 20 with a passport.socketcluster-style handshake middleware.
    #[value(name = "sc-peer")]
    ScPeer,
    /// socket.io 4 with express-session + connect-redis + passport on the engine.
    #[value(name = "sio-peer")]
    SioPeer,
}

impl ServerKind {
    /// Every server, in report column order.
    pub const ALL: [ServerKind; 6] = [
        ServerKind::SockhiveSc,
        ServerKind::SockhiveScRedis,
        ServerKind::SockhiveSio,
        ServerKind::Bare,
        ServerKind::ScPeer,
        ServerKind::SioPeer,
    ];

    /// Stable key used in the JSON.
    pub fn key(self) -> &'static str {
        match self {
            ServerKind::SockhiveSc => "sockhive-sc",
            ServerKind::SockhiveScRedis => "sockhive-sc-redis",
            ServerKind::SockhiveSio => "sockhive-sio",
            ServerKind::Bare => "bare",
            ServerKind::ScPeer => "sc-peer",
            ServerKind::SioPeer => "sio-peer",
        }
    }

    /// Column title in the report.
    pub fn title(self) -> &'static str {
        match self {
            ServerKind::SockhiveSc => "sockhive (SC)",
            ServerKind::SockhiveScRedis => "sockhive (SC, Redis broker)",
            ServerKind::SockhiveSio => "sockhive (SIO)",
            ServerKind::Bare => "bare tokio-tungstenite",
            ServerKind::ScPeer => "socketcluster-server 20",
            ServerKind::SioPeer => "socket.io 4",
        }
    }

    /// The wire protocol its clients speak.
    pub fn protocol(self) -> Protocol {
        match self {
            ServerKind::SockhiveSio | ServerKind::SioPeer => Protocol::SocketIo,
            _ => Protocol::SocketCluster,
        }
    }
}

/// What the installed sockhive binary supports (read from `serve --help`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SockhiveCaps {
    /// `--session-secret` exists: cookie logins can be measured.
    pub cookie_auth: bool,
    /// `--redis-url` exists: two nodes can share a broker.
    pub redis_broker: bool,
    /// `--session-redis-url` exists: sessions from Redis with the embedded broker.
    pub session_redis: bool,
    /// `--hook-url` exists: app hooks (the `rpc` scenario).
    pub hooks: bool,
    /// `sockhive --version`.
    pub version: String,
}

impl SockhiveCaps {
    /// Asks the binary.
    pub fn probe(binary: &PathBuf) -> SockhiveCaps {
        let help = Command::new(binary)
            .args(["serve", "--help"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let version = Command::new(binary)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        SockhiveCaps {
            cookie_auth: help.contains("--session-secret"),
            redis_broker: help.contains("--redis-url"),
            session_redis: help.contains("--session-redis-url"),
            hooks: help.contains("--hook-url"),
            version,
        }
    }
}

/// Everything needed to start any server.
pub struct Environment {
    /// The sockhive binary.
    pub sockhive: PathBuf,
    /// The bare-ws binary.
    pub bare: PathBuf,
    /// bench/peers (with node_modules installed).
    pub peers: PathBuf,
    /// Where server logs go.
    pub logs: PathBuf,
    /// The one Redis every server uses.
    pub redis: SocketAddr,
    /// express-session secret.
    pub session_secret: String,
    /// JWT key (sockhive's --auth-key).
    pub jwt_key: String,
    /// Admin bearer token.
    pub admin_token: String,
    /// sockhive's `--hook-secret`, which the hook server checks.
    pub hook_secret: String,
    /// What sockhive supports.
    pub caps: SockhiveCaps,
}

impl Environment {
    /// The run's environment with the bench's fixed secrets (every server and
    /// the generator use the same ones); creates the output and log
    /// directories and asks the sockhive binary what it supports.
    pub fn new(paths: &crate::RunPaths, bare: PathBuf, peers: PathBuf) -> Environment {
        let _ = std::fs::create_dir_all(&paths.out);
        let _ = std::fs::create_dir_all(&paths.logs);
        Environment {
            sockhive: paths.sockhive.clone(),
            bare,
            peers,
            logs: paths.logs.clone(),
            redis: paths.redis,
            session_secret: "bench keyboard cat".into(),
            jwt_key: "bench-jwt-key".into(),
            admin_token: "bench-admin-token".into(),
            hook_secret: "bench-hook-secret".into(),
            caps: SockhiveCaps::probe(&paths.sockhive),
        }
    }
}

/// Which shape of deployment to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The server as it serves sockets: one node with two workers, or two Node processes.
    Serving,
    /// For `query`: two nodes sharing a broker, each with its admin API.
    TwoNodes,
    /// For `rpc`: as `Serving`; sockhive calls the app's hook server
    /// (`peers/hook-server.js`), started with it and counted with it.
    Rpc,
}

/// Why a server could not be started or measured.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The process did not start.
    #[error("could not start {0}: {1}")]
    Spawn(String, std::io::Error),
    /// It started but never accepted a login.
    #[error("{0} not ready: {1}")]
    NotReady(String, String),
    /// The combination is not measured (e.g. no auth on the bare server).
    #[error("{0}")]
    NotApplicable(String),
}

/// A started server; dropping it stops the processes.
pub struct Running {
    children: Vec<Child>,
    /// What the scenarios measure.
    pub target: Arc<Target>,
    /// How it was deployed, for the report.
    pub description: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        stop_children(&mut self.children);
    }
}

fn stop_children(children: &mut [Child]) {
    for child in children.iter() {
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    // Under a profiler wrapper, exiting (and writing the profile) takes longer.
    let grace = if std::env::var_os("BENCH_SOCKHIVE_WRAPPER").is_some() {
        60
    } else {
        5
    };
    let deadline = Instant::now() + Duration::from_secs(grace);
    for child in children.iter_mut() {
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Environment {
    fn spawn(&self, label: &str, mut command: Command) -> Result<Child, LaunchError> {
        let log = |suffix: &str| {
            std::fs::File::create(self.logs.join(format!("{label}.{suffix}.log")))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null())
        };
        command
            .stdin(Stdio::null())
            .stdout(log("out"))
            .stderr(log("err"));
        command
            .spawn()
            .map_err(|e| LaunchError::Spawn(label.to_string(), e))
    }

    fn redis_url(&self) -> String {
        format!("redis://{}", self.redis)
    }

    /// How `kind`'s sockets authenticate.
    pub fn auth_of(&self, kind: ServerKind) -> AuthMode {
        match kind {
            ServerKind::Bare => AuthMode::None,
            ServerKind::ScPeer | ServerKind::SioPeer => AuthMode::Cookie,
            _ if self.caps.cookie_auth => AuthMode::Cookie,
            _ => AuthMode::Jwt,
        }
    }

    /// One node serves with its embedded broker (reading sessions from Redis),
    /// or with the Redis broker when `redis_broker`; `node` names a node of a
    /// two-node cluster, which shares the Redis broker; `hook` is the app's
    /// hook server, if calls go to one.
    fn sockhive_command(
        &self,
        port: u16,
        admin: u16,
        workers: u16,
        node: Option<&str>,
        hook: Option<SocketAddr>,
        redis_broker: bool,
    ) -> Command {
        // BENCH_SOCKHIVE_WRAPPER="valgrind --tool=callgrind --trace-children=yes"
        // runs sockhive under a profiler (see README, "Profiles").
        let wrapper = std::env::var("BENCH_SOCKHIVE_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut command = Command::new(program);
                command.args(words).arg(&self.sockhive);
                command
            }
            None => Command::new(&self.sockhive),
        };
        command
            .env("RUST_LOG", "warn")
            .arg("serve")
            .args(["--workers", &workers.to_string()])
            .args(["--listen", &loopback(port).to_string()])
            .args(["--admin-listen", &loopback(admin).to_string()])
            .args(["--admin-token", &self.admin_token])
            .args(["--auth-key", &self.jwt_key])
            .args(["--drain-timeout", "2s"])
            .arg("--require-auth");
        if self.caps.cookie_auth {
            command.args(["--session-secret", &self.session_secret]);
        }
        let cluster = (node.is_some() || redis_broker) && self.caps.redis_broker;
        if cluster || (self.caps.cookie_auth && !self.caps.session_redis) {
            command.args(["--redis-url", &self.redis_url()]);
        } else if self.caps.cookie_auth {
            command.args(["--session-redis-url", &self.redis_url()]);
        }
        if let Some(node) = node {
            command.args(["--node-id", node]);
        }
        if let Some(hook) = hook {
            command
                .args(["--hook-url", &format!("http://{hook}{HOOK_BASE}")])
                .args(["--hook-secret", &self.hook_secret]);
        }
        command
    }

    fn hook_server_command(&self, port: u16) -> Command {
        let mut command = Command::new("node");
        command
            .current_dir(&self.peers)
            .env("NODE_ENV", "production")
            .env("PORT", port.to_string())
            .env("HOOK_SECRET", &self.hook_secret)
            .env("HOOK_BASE", HOOK_BASE)
            .arg("hook-server.js");
        command
    }

    /// Starts the app's hook server and waits until it answers a signed call
    /// and refuses an unsigned one.
    async fn start_hook_server(&self, label: &str) -> Result<(Child, SocketAddr), LaunchError> {
        let port = free_port().map_err(|e| LaunchError::Spawn(label.into(), e))?;
        let mut child = self.spawn(label, self.hook_server_command(port))?;
        let addr = loopback(port);
        match wait_hook_server(&mut child, addr, &self.hook_secret).await {
            Ok(()) => Ok((child, addr)),
            Err(why) => {
                stop_children(std::slice::from_mut(&mut child));
                Err(LaunchError::NotReady(label.into(), why))
            }
        }
    }

    fn node_command(&self, script: &str, port: u16, admin: u16, instance: usize) -> Command {
        let mut command = Command::new("node");
        command
            .current_dir(&self.peers)
            .env("NODE_ENV", "production")
            .env("PORT", port.to_string())
            .env("ADMIN_PORT", admin.to_string())
            .env("ADMIN_TOKEN", &self.admin_token)
            .env("REDIS_URL", self.redis_url())
            .env("SESSION_SECRET", &self.session_secret)
            .env("INSTANCE", instance.to_string())
            .arg(script);
        command
    }

    /// Starts `kind` in `layout` and waits until it accepts a login.
    pub async fn start(
        &self,
        kind: ServerKind,
        layout: Layout,
        book: &CredentialBook,
    ) -> Result<Running, LaunchError> {
        self.start_with_workers(kind, layout, book, 2).await
    }

    /// As [`Environment::start`], with `workers` worker processes where a
    /// sockhive node serves (`Layout::Serving`): the scale run needs more than
    /// two because each process's open-file limit caps the sockets it holds.
    pub async fn start_with_workers(
        &self,
        kind: ServerKind,
        layout: Layout,
        book: &CredentialBook,
        workers: u16,
    ) -> Result<Running, LaunchError> {
        let port = |_: ()| free_port().map_err(|e| LaunchError::Spawn(kind.key().into(), e));
        let mut children = Vec::new();
        let mut addrs = Vec::new();
        let mut hook_roots = Vec::new();
        let mut admin = None;
        let description;
        match kind {
            ServerKind::SockhiveScRedis if layout != Layout::Serving => {
                return Err(LaunchError::NotApplicable(
                    "n/a: measured in the sockhive (SC) column (this one differs only in the broker)".into(),
                ));
            }
            ServerKind::SockhiveScRedis if !self.caps.redis_broker => {
                return Err(LaunchError::NotApplicable(
                    "not available in this build: sockhive serve has no --redis-url".into(),
                ));
            }
            ServerKind::SockhiveSc | ServerKind::SockhiveSio if layout == Layout::Rpc => {
                if !self.caps.hooks {
                    return Err(LaunchError::NotApplicable(
                        "not available in this build: sockhive serve has no --hook-url".into(),
                    ));
                }
                let label = format!("{}-hook-server", kind.key());
                let (hook, hook_addr) = self.start_hook_server(&label).await?;
                hook_roots.push(hook.id());
                children.push(hook);
                let (p, a) = (port(())?, port(())?);
                let command = self.sockhive_command(p, a, 2, None, Some(hook_addr), false);
                match self.spawn(kind.key(), command) {
                    Ok(child) => children.push(child),
                    Err(e) => {
                        stop_children(&mut children);
                        return Err(e);
                    }
                }
                addrs.push(loopback(p));
                admin = Some(loopback(a));
                description = format!(
                    "one node, 2 worker processes, embedded broker; rpc answered by the app's hook server (peers/hook-server.js: one node process, node:http keep-alive, signature checked) at --hook-url http://{hook_addr}{HOOK_BASE}, its CPU counted with sockhive's"
                );
            }
            ServerKind::SockhiveSc | ServerKind::SockhiveScRedis | ServerKind::SockhiveSio => {
                let redis_broker = kind == ServerKind::SockhiveScRedis;
                if layout == Layout::TwoNodes && self.caps.redis_broker {
                    for node in 1..=2 {
                        let (p, a) = (port(())?, port(())?);
                        let name = format!("bench-node-{node}");
                        let command = self.sockhive_command(p, a, 1, Some(&name), None, true);
                        children.push(self.spawn(&format!("{}-{name}", kind.key()), command)?);
                        addrs.push(loopback(p));
                        admin.get_or_insert(loopback(a));
                    }
                    description = "two nodes (1 worker each) sharing the Redis broker".to_string();
                } else {
                    let (p, a) = (port(())?, port(())?);
                    let command = self.sockhive_command(p, a, workers, None, None, redis_broker);
                    children.push(self.spawn(kind.key(), command)?);
                    addrs.push(loopback(p));
                    admin = Some(loopback(a));
                    description = if layout == Layout::TwoNodes {
                        format!("one node with {workers} workers (this build has no --redis-url, so no second node can join)")
                    } else if redis_broker {
                        format!("one node, {workers} worker processes sharing the port, Redis broker (--redis-url: every publish also goes through redis-server), sessions read from the Redis")
                    } else {
                        format!("one node, {workers} worker processes sharing the port, embedded broker, sessions read from the Redis")
                    };
                }
            }
            ServerKind::Bare => {
                if layout == Layout::TwoNodes {
                    return Err(LaunchError::NotApplicable(
                        "n/a: the bare server has no users to query".into(),
                    ));
                }
                if layout == Layout::Rpc {
                    return Err(LaunchError::NotApplicable(
                        "n/a: the bare server has no procedures to call".into(),
                    ));
                }
                let p = port(())?;
                let mut command = Command::new(&self.bare);
                command.args(["--listen", &loopback(p).to_string(), "--threads", "2"]);
                children.push(self.spawn(kind.key(), command)?);
                addrs.push(loopback(p));
                description = "one process, 2 runtime threads".to_string();
            }
            ServerKind::ScPeer | ServerKind::SioPeer => {
                if kind == ServerKind::ScPeer && layout == Layout::TwoNodes {
                    return Err(LaunchError::NotApplicable(
                        "n/a: socketcluster-server 20 offers no cross-process socket query (each process sees only its own clients)".into(),
                    ));
                }
                let script = if kind == ServerKind::ScPeer {
                    "sc-peer.js"
                } else {
                    "sio-peer.js"
                };
                for instance in 1..=2 {
                    let (p, a) = (port(())?, port(())?);
                    let command = self.node_command(script, p, a, instance);
                    children.push(self.spawn(&format!("{}-{instance}", kind.key()), command)?);
                    addrs.push(loopback(p));
                    if kind == ServerKind::SioPeer {
                        admin.get_or_insert(loopback(a));
                    }
                }
                description = if kind == ServerKind::ScPeer {
                    "two node processes, a port each, pub/sub relayed through Redis".to_string()
                } else {
                    "two node processes, a port each, @socket.io/redis-adapter".to_string()
                };
            }
        }
        let roots = children.iter().map(Child::id).collect();
        let mut target = Target::new(
            kind.title().to_string(),
            kind.protocol(),
            addrs,
            self.auth_of(kind),
            roots,
        );
        target.admin = admin;
        target.admin_token = self.admin_token.clone();
        target.hook_roots = hook_roots;
        let mut running = Running {
            children,
            target: Arc::new(target),
            description,
        };
        wait_ready(&mut running, book).await?;
        Ok(running)
    }
}

/// The path sockhive's `--hook-url` ends with; calls go to `{HOOK_BASE}/{hook}`.
const HOOK_BASE: &str = "/sockhive";

/// Waits until the hook server answers a signed `echo` and refuses the same
/// call unsigned (so the measured app does the signature check an honest one does).
async fn wait_hook_server(child: &mut Child, addr: SocketAddr, secret: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let body =
        r#"{"hook":"rpc","socket":{"id":"probe"},"name":"echo","data":{"k":7},"args":[{"k":7}]}"#;
    let path = format!("{HOOK_BASE}/rpc");
    let signature = crate::credentials::hook_signature(secret, body);
    let last = loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the hook server exited ({status}); see results/tmp logs"
            ));
        }
        let signed = [
            ("X-Sockhive-Signature", signature.as_str()),
            ("X-Sockhive-Event-Id", "probe-1"),
        ];
        let last = match crate::http::post(addr, &path, &signed, body).await {
            Ok(answer) if answer.status == 200 && answer.body == r#"{"result":{"k":7}}"# => {
                break None
            }
            Ok(answer) => format!("signed probe answered {} {}", answer.status, answer.body),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            break Some(last);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if let Some(last) = last {
        return Err(last);
    }
    let forged = crate::credentials::hook_signature("not-the-secret", body);
    match crate::http::post(addr, &path, &[("X-Sockhive-Signature", &forged)], body).await {
        Ok(answer) if answer.status == 401 => Ok(()),
        Ok(answer) => Err(format!(
            "a forged signature got {} {}",
            answer.status, answer.body
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Waits until every address accepts a login (the Node peers also need their Redis clients up).
async fn wait_ready(running: &mut Running, book: &CredentialBook) -> Result<(), LaunchError> {
    // A profiler wrapper makes start-up many times slower.
    let patience = if std::env::var_os("BENCH_SOCKHIVE_WRAPPER").is_some() {
        300
    } else {
        30
    };
    let deadline = Instant::now() + Duration::from_secs(patience);
    let target = running.target.clone();
    let mut last;
    for _ in 0..target.addrs.len() {
        loop {
            if let Some(child) = running
                .children
                .iter_mut()
                .find_map(|c| match c.try_wait() {
                    Ok(Some(status)) => Some(status),
                    _ => None,
                })
            {
                return Err(LaunchError::NotReady(
                    target.name.clone(),
                    format!("a process exited ({child}); see results/tmp logs"),
                ));
            }
            let credential = book.get(target.auth, 0, false);
            match target.connect(credential, Duration::from_secs(3)).await {
                Ok((Outcome::Accepted, Some(connection))) => {
                    connection.close().await;
                    break;
                }
                // The server is up but has no such endpoint: waiting will not help.
                Ok((Outcome::Refused(Refusal::Http(404)), _)) => {
                    return Err(LaunchError::NotReady(
                        target.name.clone(),
                        format!("HTTP 404 at {}", target.protocol.path()),
                    ))
                }
                Ok((outcome, _)) => last = format!("{outcome:?}"),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(LaunchError::NotReady(target.name.clone(), last));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    if let Some(admin) = target.admin {
        while crate::http::get(admin, "/healthz").await.is_err() {
            if Instant::now() >= deadline {
                return Err(LaunchError::NotReady(
                    target.name.clone(),
                    "admin port".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts `peers/hook-server.js` and runs the readiness probe (a signed
    /// call answered, a forged one refused). Needs node: `cargo test -- --ignored`.
    #[test]
    #[ignore = "needs node"]
    fn hook_server_checks_signatures() {
        let peers = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers");
        let logs = std::env::temp_dir();
        let env = Environment {
            sockhive: PathBuf::from("sockhive"),
            bare: PathBuf::from("bare-ws"),
            peers,
            logs,
            redis: loopback(6379),
            session_secret: String::new(),
            jwt_key: String::new(),
            admin_token: String::new(),
            hook_secret: "test-hook-secret".into(),
            caps: SockhiveCaps {
                cookie_auth: false,
                redis_broker: false,
                session_redis: false,
                hooks: true,
                version: String::new(),
            },
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (mut child, _addr) = runtime
            .block_on(env.start_hook_server("test-hook-server"))
            .expect("the hook server answers signed calls and refuses forged ones");
        stop_children(std::slice::from_mut(&mut child));
    }
}
