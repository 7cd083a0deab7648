//! The scale-out kit in `deploy/`: each file is checked by the tool that
//! reads it in production (`nginx -t`, `haproxy -c`, `systemd-analyze`,
//! `sockhive check-config`, a real YAML parser), the files are checked
//! against each other (names, ports, timeouts), and nginx and haproxy, each
//! rendered from the shipped config, run for real in front of two nodes.
//!
//! Tools CI installs with apt (tests/run.sh): nginx, haproxy, python3-yaml.
//! A missing one fails its test with the package to install, never a silent
//! pass.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use sockhive_tests::nginx::{self, Nginx};
use sockhive_tests::node::sockhive_bin;
use sockhive_tests::redis::free_port;
use sockhive_tests::tempdir::TempDir;
use sockhive_tests::{eventually, http, repo_root, ws, Node, NodeBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Flags the kit already passes that the CLI is still growing (issue 5's
/// Redis broker). They may be missing from `serve --help` until it lands;
/// every other flag and variable must exist today.
const NOT_YET_IN_CLI: &[&str] = &[];

// ---------------------------------------------------------------- helpers

fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

fn read_deploy(relative: &str) -> String {
    let path = deploy_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `name` on PATH or in the sbin directories (nginx and haproxy live there).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The tool, or a failure that says which apt package CI must install.
fn require_tool(name: &str, apt_package: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed, so this check cannot run. Install it with \
             `apt-get install {apt_package}`; CI gets it from tests/run.sh \
             (`command -v {name} >/dev/null 2>&1 || need_apt+=({apt_package})`)"
        )
    })
}

/// What a finished command said.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn describe(&self) -> String {
        format!(
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs a command to completion, killing it if it outlives `timeout`.
fn run_bounded(command: Command, timeout: Duration) -> Finished {
    let program = format!("{command:?}");
    try_run_bounded(command, timeout).unwrap_or_else(|| panic!("cannot start {program}"))
}

/// Like [`run_bounded`], `None` when the program cannot be started at all.
fn try_run_bounded(mut command: Command, timeout: Duration) -> Option<Finished> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Some(Finished {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// `10s`, `20s`, `1h`, `500ms` as a duration (the kit's own spellings).
fn parse_duration(text: &str) -> Duration {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("duration `{text}`"));
    match unit {
        "ms" => Duration::from_millis(number),
        "" | "s" => Duration::from_secs(number),
        "m" | "min" => Duration::from_secs(number * 60),
        "h" => Duration::from_secs(number * 3600),
        _ => panic!("duration `{text}`: unknown unit"),
    }
}

/// The value of `Key=` in a systemd unit (the last one wins, as in systemd).
fn unit_setting<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
}

// ------------------------------------------------------------------- YAML

/// Loads YAML with PyYAML (libyaml-backed) and hands it over as JSON.
const YAML_TO_JSON: &str = "import json, sys, yaml\n\
print(json.dumps([list(yaml.safe_load_all(open(p))) for p in sys.argv[1:]], default=str))";

/// A python3 that can `import yaml`: the one on PATH, else Debian's (where
/// apt's python3-yaml installs).
fn python_with_yaml() -> PathBuf {
    for python in ["python3", "/usr/bin/python3"] {
        let mut command = Command::new(python);
        command.args(["-c", "import yaml"]);
        if try_run_bounded(command, Duration::from_secs(20)).is_some_and(|f| f.status.success()) {
            return PathBuf::from(python);
        }
    }
    panic!(
        "no python3 with PyYAML, so the YAML cannot be parsed. Install it with \
         `apt-get install python3-yaml`; CI gets it from tests/run.sh \
         (`python3 -c 'import yaml' 2>/dev/null || /usr/bin/python3 -c 'import yaml' 2>/dev/null || need_apt+=(python3-yaml)`)"
    )
}

/// Every document of each YAML file, parsed by a real YAML parser.
fn yaml_files(paths: &[PathBuf]) -> Vec<Vec<Value>> {
    let mut command = Command::new(python_with_yaml());
    command.arg("-c").arg(YAML_TO_JSON).args(paths);
    let finished = run_bounded(command, Duration::from_secs(30));
    assert!(
        finished.status.success(),
        "YAML did not parse: {}",
        finished.describe()
    );
    let parsed: Vec<Vec<Value>> = serde_json::from_str(&finished.stdout)
        .unwrap_or_else(|e| panic!("parser output is not JSON ({e}): {}", finished.stdout));
    assert_eq!(parsed.len(), paths.len());
    parsed
}

fn yaml_file(path: PathBuf) -> Vec<Value> {
    yaml_files(&[path]).remove(0)
}

/// The string at a JSON pointer, or a failure naming what is missing.
fn string_at<'a>(value: &'a Value, pointer: &str, what: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{what}: no string at {pointer}"))
}

// ------------------------------------------------------------------ nginx

/// Runs `nginx -t` on a main config file, with every path inside `prefix`.
fn nginx_t(prefix: &Path, conf: &Path) -> Finished {
    let mut command = Command::new(nginx::program());
    command
        .arg("-t")
        .arg("-p")
        .arg(prefix)
        .arg("-e")
        .arg(prefix.join("error.log"))
        .arg("-c")
        .arg(conf);
    run_bounded(command, Duration::from_secs(20))
}

/// The main-context lines that keep nginx's pid, logs and temp files inside
/// the test's directory instead of /run and /var.
fn nginx_sandbox_http_paths(prefix: &Path) -> String {
    let p = prefix.display();
    format!(
        "access_log {p}/access.log;\n\
         client_body_temp_path {p}/client_body_temp;\n\
         proxy_temp_path {p}/proxy_temp;\n\
         fastcgi_temp_path {p}/fastcgi_temp;\n\
         uwsgi_temp_path {p}/uwsgi_temp;\n\
         scgi_temp_path {p}/scgi_temp;\n"
    )
}

/// The status line of a WebSocket upgrade sent with `Host` and `Origin`
/// (read up to the end of the head: nginx keeps the client connection open).
async fn upgrade_status(addr: SocketAddr, path: &str, host: &str, origin: &str) -> u16 {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&head)
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// Waits until nothing listens on `addr` any more: a killed node's workers
/// may hold its port for a few milliseconds after the kill, and a connection
/// accepted then is reset (a 502 from the balancer, not a retried connect).
async fn wait_until_refused(addr: SocketAddr) {
    eventually(
        Duration::from_secs(5),
        "the dead node's port to refuse",
        async || {
            tokio::net::TcpStream::connect(addr)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
}

/// Waits until two nodes hold `total` sockets between them and returns each
/// one's count, to judge how evenly the balancer in front spread them.
async fn split_between(node_a: &Node, node_b: &Node, total: u32) -> (f64, f64) {
    eventually(
        Duration::from_secs(5),
        &format!("{total} sockets on the two nodes"),
        async || {
            let a = node_a.metric("sockhive_connections").await;
            let b = node_b.metric("sockhive_connections").await;
            (a + b == f64::from(total)).then_some((a, b))
        },
    )
    .await
}

#[test]
fn nginx_production_config_passes_nginx_t() {
    let dir = TempDir::new("nginx-prod");
    let production = read_deploy("nginx/sockhive.conf");
    // Outside Docker the node names do not resolve (nginx -t resolves
    // upstream hosts) and port 8080 may be taken: point them at loopback.
    let mut rendered = production.clone();
    for node in ["node1", "node2"] {
        let from = format!("server {node}:8000 ");
        assert_eq!(
            rendered.matches(&from).count(),
            1,
            "sockhive.conf lists `{from}` once"
        );
        rendered = rendered.replace(&from, &format!("server 127.0.0.1:{} ", free_port()));
    }
    assert_eq!(rendered.matches("listen 8080;").count(), 1);
    let rendered = rendered.replace(
        "listen 8080;",
        &format!("listen 127.0.0.1:{};", free_port()),
    );
    dir.write("conf.d/sockhive.conf", &rendered);
    // The relative include resolves against the main file's directory, as
    // /etc/nginx/snippets/ does in the nginx image.
    assert!(production.contains("include snippets/sockhive-locations.conf;"));
    dir.write(
        "snippets/sockhive-locations.conf",
        &read_deploy("nginx/sockhive-locations.conf"),
    );
    let p = dir.path().display();
    let main = format!(
        "pid {p}/nginx.pid;\nerror_log {p}/error.log;\nevents {{}}\nhttp {{\n{}include {p}/conf.d/*.conf;\n}}\n",
        nginx_sandbox_http_paths(dir.path())
    );
    let conf = dir.write("nginx.conf", &main);
    let finished = nginx_t(dir.path(), &conf);
    assert!(
        finished.status.success(),
        "nginx -t refused sockhive.conf: {}",
        finished.describe()
    );

    // What the comments promise, in the directives themselves.
    let locations = read_deploy("nginx/sockhive-locations.conf");
    for needle in [
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header Host $http_host;",
        "proxy_read_timeout 1h;",
    ] {
        assert!(locations.contains(needle), "locations lack `{needle}`");
    }
    for needle in [
        "map $http_upgrade $connection_upgrade",
        "least_conn;",
        "zone sockhive",
        "location = /healthz",
        "location / {",
    ] {
        assert!(
            production.contains(needle),
            "sockhive.conf lacks `{needle}`"
        );
    }
    assert!(
        production.contains("no active health checks"),
        "sockhive.conf says open-source nginx only checks passively"
    );
}

/// The top-level statements of an nginx file (outside any block), each with
/// the block it opens, comments dropped: `("location ^~ /socket.io/", true)`.
fn nginx_top_level(conf: &str) -> Vec<(String, bool)> {
    let mut statements = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    for line in conf.lines() {
        let line = line.split('#').next().unwrap_or_default();
        for c in line.chars() {
            match c {
                '{' => {
                    if depth == 0 {
                        statements.push((current.trim().to_string(), true));
                        current.clear();
                    }
                    depth += 1;
                }
                '}' => depth -= 1,
                ';' if depth == 0 => {
                    statements.push((current.trim().to_string(), false));
                    current.clear();
                }
                _ if depth == 0 => current.push(c),
                _ => {}
            }
        }
        if depth == 0 {
            current.push(' ');
        }
    }
    assert_eq!(depth, 0, "balanced braces");
    statements
}

#[test]
fn the_locations_snippet_holds_only_sockhives_paths() {
    // Included in the app's own server block, it must take sockhive's three
    // paths and nothing else: no `location /`, no server-level directive
    // that would change the app's locations.
    let locations = read_deploy("nginx/sockhive-locations.conf");
    let mut top = nginx_top_level(&locations);
    top.sort();
    assert_eq!(
        top,
        vec![
            ("location = /negotiate".to_string(), true),
            ("location ^~ /socket.io/".to_string(), true),
            ("location ^~ /socketcluster/".to_string(), true),
        ],
        "the snippet's top level"
    );
    // Each WebSocket location carries the whole upgrade on its own.
    for path in ["/socketcluster/", "/socket.io/"] {
        let block = locations
            .split_once(&format!("location ^~ {path} {{"))
            .and_then(|(_, rest)| rest.split_once('}'))
            .map(|(block, _)| block)
            .unwrap_or_else(|| panic!("location {path}"));
        for needle in [
            "proxy_pass http://sockhive;",
            "proxy_http_version 1.1;",
            "proxy_set_header Upgrade $http_upgrade;",
            "proxy_set_header Connection $connection_upgrade;",
            "proxy_set_header Host $http_host;",
            "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            "proxy_read_timeout 1h;",
            "proxy_buffering off;",
        ] {
            assert!(block.contains(needle), "location {path} lacks `{needle}`");
        }
    }
}

/// app-with-sockhive.conf pointed at loopback, in `dir` with the snippet
/// where its relative include finds it; returns the main config's path.
fn render_one_origin(dir: &TempDir) -> PathBuf {
    let shipped = read_deploy("nginx/app-with-sockhive.conf");
    let mut rendered = shipped.clone();
    for from in [
        "server node1:8000 ",
        "server node2:8000 ",
        "server app:3000",
    ] {
        assert_eq!(
            shipped.matches(from).count(),
            1,
            "app-with-sockhive.conf lists `{from}` once"
        );
        let to = format!("server 127.0.0.1:{}", free_port());
        rendered = rendered.replace(from.trim_end(), &to);
    }
    assert_eq!(rendered.matches("listen 8080;").count(), 1);
    let rendered = rendered.replace(
        "listen 8080;",
        &format!("listen 127.0.0.1:{};", free_port()),
    );
    dir.write("conf.d/default.conf", &rendered);
    dir.write(
        "snippets/sockhive-locations.conf",
        &read_deploy("nginx/sockhive-locations.conf"),
    );
    let p = dir.path().display();
    let main = format!(
        "pid {p}/nginx.pid;\nerror_log {p}/error.log;\nevents {{}}\nhttp {{\n{}include {p}/conf.d/*.conf;\n}}\n",
        nginx_sandbox_http_paths(dir.path())
    );
    dir.write("nginx.conf", &main)
}

#[test]
fn nginx_one_origin_config_passes_nginx_t_and_includes_the_snippet_beside_the_app() {
    let dir = TempDir::new("nginx-one-origin");
    let conf = render_one_origin(&dir);
    let finished = nginx_t(dir.path(), &conf);
    assert!(
        finished.status.success(),
        "nginx -t refused app-with-sockhive.conf: {}",
        finished.describe()
    );
    // http context: the map, sockhive's upstream and the app's; one server
    // block that includes the snippet next to the app's `location /`.
    let conf = read_deploy("nginx/app-with-sockhive.conf");
    let top = nginx_top_level(&conf);
    let opened: Vec<&str> = top
        .iter()
        .filter(|(_, block)| *block)
        .map(|(s, _)| s.as_str())
        .collect();
    assert_eq!(
        opened,
        [
            "map $http_upgrade $connection_upgrade",
            "upstream sockhive",
            "upstream app",
            "server"
        ]
    );
    let server = conf
        .split_once("\nserver {")
        .map(|(_, rest)| rest)
        .expect("a server block");
    let mut inside = nginx_top_level(server.rsplit_once('}').expect("server block end").0);
    inside.sort();
    assert_eq!(
        inside,
        vec![
            (
                "include snippets/sockhive-locations.conf".to_string(),
                false
            ),
            ("listen 8080".to_string(), false),
            ("location /".to_string(), true),
            ("location ^~ /sockhive/".to_string(), true),
        ],
        "the app's server block"
    );
    let app_location = server
        .split_once("location / {")
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(block, _)| block)
        .expect("location /");
    assert!(app_location.contains("proxy_pass http://app;"));
    // Same balancing as sockhive.conf.
    let production = read_deploy("nginx/sockhive.conf");
    assert_eq!(
        nginx::upstream_servers(&conf),
        nginx::upstream_servers(&production),
        "both configs list the same nodes with the same checks"
    );
}

#[test]
fn nginx_test_template_passes_nginx_t() {
    let dir = TempDir::new("nginx-template");
    let upstreams: Vec<SocketAddr> = (0..2)
        .map(|_| ([127, 0, 0, 1], free_port()).into())
        .collect();
    let conf = nginx::render_test_conf(&dir, ([127, 0, 0, 1], free_port()).into(), &upstreams);
    let finished = nginx_t(dir.path(), &conf);
    assert!(
        finished.status.success(),
        "nginx -t refused the rendered test.conf.template: {}",
        finished.describe()
    );
    // Same balancing as production, so the real test below measures it.
    let template = read_deploy("nginx/test.conf.template");
    assert!(template.contains("least_conn;") && template.contains("daemon off;"));
}

#[tokio::test]
async fn nginx_in_front_of_two_nodes_spreads_sockets_and_skips_a_dead_node() {
    let node_a = NodeBuilder::new(2).start();
    let node_b = NodeBuilder::new(2).start();
    let nginx = Nginx::start(&[node_a.public, node_b.public]);
    let front = nginx.listen;

    let mut sockets = Vec::new();
    for _ in 0..20 {
        let (socket, handshake) = ws::sc_open(front, None).await;
        assert!(
            handshake["id"].is_string(),
            "handshake through nginx: {handshake}"
        );
        sockets.push(socket);
    }
    let (on_a, on_b) = split_between(&node_a, &node_b, 20).await;
    // least_conn: each new socket goes to the node with fewer open ones.
    assert!(
        (on_a - on_b).abs() <= 2.0,
        "least_conn should split 20 sockets evenly, got {on_a} and {on_b}"
    );

    let health = http::get(front, "/healthz", &[]).await;
    assert_eq!(
        health.status, 200,
        "/healthz through nginx: {}",
        health.body
    );
    // The admin surface is not reachable through the balancer.
    assert_eq!(http::get(front, "/metrics", &[]).await.status, 404);
    assert_eq!(http::get(front, "/readyz", &[]).await.status, 404);

    // A browser on the balancer's own address passes sockhive's default
    // origin check (Host reaches the node with its port); a foreign one not.
    let own = format!("http://{front}");
    assert_eq!(
        upgrade_status(front, "/socketcluster/", &front.to_string(), &own).await,
        101,
        "same-site Origin through nginx"
    );
    assert_eq!(
        upgrade_status(
            front,
            "/socketcluster/",
            &front.to_string(),
            "http://evil.test"
        )
        .await,
        403,
        "foreign Origin through nginx"
    );

    // Node B dies: nginx retries the refused connect on node A, so every new
    // socket still lands (passive checks then skip B for fail_timeout).
    let dead = node_b.public;
    drop(node_b);
    wait_until_refused(dead).await;
    drop(sockets);
    eventually(
        Duration::from_secs(5),
        "node A back to 0 sockets",
        async || (node_a.metric("sockhive_connections").await == 0.0).then_some(()),
    )
    .await;
    let mut survivors = Vec::new();
    for _ in 0..6 {
        survivors.push(ws::sc_open(front, None).await.0);
    }
    eventually(
        Duration::from_secs(5),
        "6 new sockets on node A",
        async || (node_a.metric("sockhive_connections").await == 6.0).then_some(()),
    )
    .await;
    drop(survivors);
    drop(nginx);
}

// ---------------------------------------------------------------- haproxy

#[test]
fn haproxy_config_passes_haproxy_c() {
    let haproxy = require_tool("haproxy", "haproxy");
    let path = deploy_dir().join("haproxy/haproxy.cfg");
    let mut command = Command::new(haproxy);
    command.arg("-c").arg("-f").arg(&path);
    let finished = run_bounded(command, Duration::from_secs(20));
    assert!(
        finished.status.success(),
        "haproxy -c refused haproxy.cfg: {}",
        finished.describe()
    );
    // The only acceptable warnings: compose's service names do not resolve here.
    let unexpected: Vec<&str> = finished
        .stderr
        .lines()
        .chain(finished.stdout.lines())
        .filter(|l| l.contains("[WARNING]") || l.contains("[ALERT]"))
        .filter(|l| {
            !l.contains("could not resolve address 'node")
                && !l.contains("could not resolve address 'app'")
        })
        .collect();
    assert!(unexpected.is_empty(), "haproxy warnings: {unexpected:#?}");

    let config = read_deploy("haproxy/haproxy.cfg");
    for needle in [
        "balance leastconn",
        "timeout tunnel",
        "option httpchk",
        "uri /readyz",
        "http-check expect status 200",
        "option forwardfor",
        // One origin: sockhive's paths to the nodes, the rest to the app.
        "acl sockhive_path path_beg /socketcluster/ /socket.io/",
        "acl sockhive_path path /negotiate",
        "use_backend sockhive_nodes if sockhive_path",
        "default_backend app",
        "server app app:3000 check",
    ] {
        assert!(config.contains(needle), "haproxy.cfg lacks `{needle}`");
    }
    // Checks go to the admin port the nodes listen on.
    let compose = yaml_file(deploy_dir().join("docker-compose.yml")).remove(0);
    let admin = string_at(
        &compose,
        "/services/node1/environment/SOCKHIVE_ADMIN_LISTEN",
        "compose",
    );
    let admin_port = admin.rsplit(':').next().expect("admin port");
    assert!(
        config.contains(&format!("check port {admin_port}")),
        "haproxy checks the admin port {admin_port}"
    );
    let nodes: Vec<&String> = compose["services"]
        .as_object()
        .expect("services")
        .iter()
        .filter(|(_, s)| s["command"].get(0).and_then(Value::as_str) == Some("serve"))
        .map(|(name, _)| name)
        .collect();
    assert_eq!(nodes.len(), 2);
    for node in &nodes {
        assert!(
            config.contains(&format!("server {node} {node}:8000")),
            "haproxy lists {node}"
        );
    }
    assert_eq!(
        config.matches("    server node").count(),
        nodes.len(),
        "haproxy lists exactly the compose nodes"
    );
}

/// The production haproxy.cfg pointed at loopback nodes: `(public, admin)`
/// per node, in place of node1, node2...; the stats socket lets the test read
/// each server's check result.
fn render_haproxy(
    dir: &TempDir,
    listen: SocketAddr,
    app: SocketAddr,
    nodes: &[(SocketAddr, SocketAddr)],
) -> PathBuf {
    let production = read_deploy("haproxy/haproxy.cfg");
    assert_eq!(production.matches("bind :8080").count(), 1);
    assert_eq!(production.matches("server app app:3000 ").count(), 1);
    assert_eq!(production.matches("\nglobal\n").count(), 1);
    assert_eq!(production.matches("maxconn 50000").count(), 1);
    let rendered = production
        .replace("bind :8080", &format!("bind {listen}"))
        .replace(
            "\nglobal\n",
            &format!(
                "\nglobal\n    stats socket {}/admin.sock mode 600 level admin\n",
                dir.path().display()
            ),
        )
        // Loopback addresses need no DNS (Docker's resolver is not here).
        .replace(" resolvers docker", "")
        .replace("server app app:3000 ", &format!("server app {app} "))
        // The test's file limit, not production's.
        .replace("maxconn 50000", "maxconn 2000");
    let mut lines = Vec::new();
    for line in rendered.lines() {
        let node = (1..=2).find(|n| line.trim() == format!("server node{n} node{n}:8000"));
        match node {
            None => lines.push(line.to_string()),
            // The admin port differs per node here, so each server names its own.
            Some(n) => {
                if let Some((public, admin)) = nodes.get(n - 1) {
                    lines.push(format!("    server node{n} {public} port {}", admin.port()));
                }
            }
        }
    }
    let rendered = lines.join("\n") + "\n";
    assert_eq!(
        rendered.matches("    server node").count(),
        nodes.len(),
        "every node rendered into haproxy.cfg"
    );
    dir.write("haproxy.cfg", &rendered)
}

/// haproxy in the foreground, started by the test; stopped by its pid on drop.
struct Haproxy {
    child: Child,
    listen: SocketAddr,
    dir: TempDir,
}

impl Haproxy {
    fn start(app: SocketAddr, nodes: &[(SocketAddr, SocketAddr)]) -> Haproxy {
        let haproxy = require_tool("haproxy", "haproxy");
        let dir = TempDir::new("haproxy");
        let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let conf = render_haproxy(&dir, listen, app, nodes);
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("log file");
        let child = Command::new(haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start haproxy");
        let mut haproxy = Haproxy { child, listen, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = haproxy.child.try_wait() {
                panic!("haproxy exited at start ({status}):\n{}", haproxy.logs());
            }
            if std::net::TcpStream::connect(listen).is_ok() {
                return haproxy;
            }
            if Instant::now() >= deadline {
                panic!("haproxy did not listen on {listen}:\n{}", haproxy.logs());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// `(server, status, check_status, check_code)` of each node.
    fn server_checks(&self) -> Vec<(String, String, String, String)> {
        self.checks_of("sockhive_nodes")
    }

    /// `(server, status, check_status, check_code)` of each server of `backend`.
    fn checks_of(&self, backend: &str) -> Vec<(String, String, String, String)> {
        use std::io::Write;
        let Ok(mut socket) =
            std::os::unix::net::UnixStream::connect(self.dir.path().join("admin.sock"))
        else {
            return Vec::new();
        };
        let _ = socket.set_read_timeout(Some(Duration::from_secs(5)));
        let mut csv = String::new();
        if socket.write_all(b"show stat\n").is_err() || socket.read_to_string(&mut csv).is_err() {
            return Vec::new();
        }
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = |name: &str| header.iter().position(|h| *h == name);
        let (Some(px), Some(sv), Some(st), Some(cs), Some(cc)) = (
            column("pxname"),
            column("svname"),
            column("status"),
            column("check_status"),
            column("check_code"),
        ) else {
            return Vec::new();
        };
        lines
            .map(|l| l.split(',').collect::<Vec<&str>>())
            .filter(|f| {
                f.get(px) == Some(&backend)
                    && f.get(sv)
                        .is_some_and(|s| *s != "BACKEND" && *s != "FRONTEND")
            })
            .map(|f| {
                let get = |i: usize| f.get(i).copied().unwrap_or_default().to_string();
                (get(sv), get(st), get(cs), get(cc))
            })
            .collect()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stand-in for the web app: answers every request with 200 and a body
/// naming itself, until the test ends.
fn fake_app() -> SocketAddr {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fake app");
    let addr = listener.local_addr().expect("fake app address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "the app";
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

#[tokio::test]
async fn haproxy_checks_readyz_on_the_admin_port_and_spreads_sockets() {
    let node_a = NodeBuilder::new(2).start();
    let node_b = NodeBuilder::new(2).start();
    let app = fake_app();
    let haproxy = Haproxy::start(
        app,
        &[(node_a.public, node_a.admin), (node_b.public, node_b.admin)],
    );

    // One origin: the app answers everything but sockhive's paths, once its
    // own check passes; the hook routes are not public.
    eventually(
        Duration::from_secs(10),
        "the app checked L7OK",
        async || {
            haproxy
                .checks_of("app")
                .iter()
                .any(|(_, status, check, _)| status == "UP" && check == "L7OK")
                .then_some(())
        },
    )
    .await;
    let page = http::get(haproxy.listen, "/login", &[]).await;
    assert_eq!((page.status, page.body.as_str()), (200, "the app"));
    assert_eq!(
        http::get(haproxy.listen, "/sockhive/rpc", &[]).await.status,
        404
    );
    let negotiate = http::get(haproxy.listen, "/negotiate", &[]).await;
    assert_ne!(negotiate.body, "the app", "/negotiate is sockhive's");

    // The active check really reaches /readyz and reads its 200.
    eventually(
        Duration::from_secs(10),
        "both servers checked L7OK/200",
        async || {
            let checks = haproxy.server_checks();
            (checks.len() == 2
                && checks.iter().all(|(_, status, check, code)| {
                    status == "UP" && check == "L7OK" && code == "200"
                }))
            .then_some(())
        },
    )
    .await;

    let mut sockets = Vec::new();
    for _ in 0..10 {
        sockets.push(ws::sc_open(haproxy.listen, None).await.0);
    }
    let (on_a, on_b) = split_between(&node_a, &node_b, 10).await;
    assert!(
        (on_a - on_b).abs() <= 2.0,
        "leastconn should split 10 sockets evenly, got {on_a} and {on_b}"
    );

    // Node B dies: its check fails and it goes DOWN; meanwhile a refused
    // connect is redispatched, so new sockets still land.
    let dead = node_b.public;
    drop(node_b);
    wait_until_refused(dead).await;
    for _ in 0..4 {
        sockets.push(ws::sc_open(haproxy.listen, None).await.0);
    }
    eventually(Duration::from_secs(15), "node2 marked DOWN", async || {
        haproxy
            .server_checks()
            .iter()
            .any(|(server, status, _, _)| server == "node2" && status.starts_with("DOWN"))
            .then_some(())
    })
    .await;
    drop(sockets);
    drop(haproxy);
}

// ----------------------------------------------------------------- docker

/// The `${NAME:?...}` / `${NAME:-...}` variable a compose value reads, if any.
fn compose_variable(value: &str) -> Option<&str> {
    let inner = value.strip_prefix("${")?.split('}').next()?;
    Some(inner.split([':', '-', '?']).next().unwrap_or(inner))
}

#[test]
fn docker_compose_runs_the_demo_app_redis_two_nodes_and_nginx_on_one_origin() {
    let compose = yaml_file(deploy_dir().join("docker-compose.yml")).remove(0);
    let services = compose["services"]
        .as_object()
        .expect("compose has services");
    for name in ["redis", "app", "nginx", "node1", "node2"] {
        assert!(services.contains_key(name), "compose lacks service {name}");
    }
    let nodes: Vec<(&String, &Value)> = services
        .iter()
        .filter(|(_, s)| s["command"].get(0).and_then(Value::as_str) == Some("serve"))
        .collect();
    assert_eq!(nodes.len(), 2, "two sockhive nodes");

    // The variables of .env.example: every required one compose reads is there.
    let env_example = read_deploy(".env.example");
    let example_vars: Vec<&str> = env_example
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    for var in [
        "SESSION_SECRET",
        "HOOK_SECRET",
        "ALLOWED_ORIGIN",
        "SOCKHIVE_ADMIN_TOKEN",
        "SOCKHIVE_AUTH_KEY",
    ] {
        assert!(example_vars.contains(&var), ".env.example lacks {var}");
    }
    let compose_text = read_deploy("docker-compose.yml");
    for required in compose_text.split("${").skip(1) {
        let var = required
            .split([':', '}', '-', '?'])
            .next()
            .unwrap_or_default();
        assert!(
            example_vars.contains(&var),
            "compose reads ${{{var}}}, which .env.example does not set"
        );
    }

    let app = &services["app"];
    let app_env = &app["environment"];
    let mut node_ids = Vec::new();
    for (name, node) in &nodes {
        let command: Vec<&str> = node["command"]
            .as_array()
            .expect("command list")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let flag = |f: &str| {
            command
                .windows(2)
                .find(|w| w[0] == f)
                .map(|w| w[1])
                .unwrap_or_else(|| panic!("{name}: no {f}"))
        };
        node_ids.push(flag("--node-id"));
        // One Redis: the app's sessions and sockhive's broker and session reads.
        assert_eq!(flag("--redis-url"), "redis://redis:6379", "{name}");
        assert_eq!(
            app_env["REDIS_URL"], "redis://redis:6379",
            "the app's Redis"
        );
        assert!(node.get("ports").is_none(), "{name} publishes no port");
        let env = &node["environment"];
        let env_str = |key: &str| {
            env[key]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no {key}"))
        };
        for secret in [
            "SOCKHIVE_ADMIN_TOKEN",
            "SOCKHIVE_AUTH_KEY",
            "SOCKHIVE_SESSION_SECRET",
            "SOCKHIVE_HOOK_SECRET",
        ] {
            let value = env_str(secret);
            assert!(
                value.starts_with("${") && value.contains(":?"),
                "{name}: {secret} comes from the environment and is required, not a literal"
            );
        }
        // The app and sockhive hold the same session and hook secrets.
        for (node_key, app_key) in [
            ("SOCKHIVE_SESSION_SECRET", "SESSION_SECRET"),
            ("SOCKHIVE_HOOK_SECRET", "HOOK_SECRET"),
        ] {
            let app_value = app_env[app_key].as_str().unwrap_or_default();
            assert_eq!(
                compose_variable(env_str(node_key)),
                compose_variable(app_value),
                "{name}: {node_key} and the app's {app_key} read the same variable"
            );
            assert!(compose_variable(app_value).is_some(), "app {app_key}");
        }
        assert_eq!(
            compose_variable(env_str("SOCKHIVE_ALLOWED_ORIGIN")),
            Some("ALLOWED_ORIGIN"),
            "{name}"
        );
        // Hooks go straight to the app on the private network.
        assert_eq!(env_str("SOCKHIVE_HOOK_URL"), "http://app:3000/sockhive");
        assert_eq!(env_str("SOCKHIVE_HOOKS"), "rpc");
        // The demo's channel rules, mounted where SOCKHIVE_CONFIG points.
        let config = env_str("SOCKHIVE_CONFIG");
        let mounts = node["volumes"].to_string();
        assert!(
            mounts.contains(&format!("./demo/sockhive.toml:{config}:ro")),
            "{name} mounts the demo's sockhive.toml at {config}: {mounts}"
        );
        assert_eq!(env_str("SOCKHIVE_LISTEN"), "0.0.0.0:8000", "{name}");
        let drain = parse_duration(env_str("SOCKHIVE_DRAIN_TIMEOUT"));
        let grace = parse_duration(
            node["stop_grace_period"]
                .as_str()
                .expect("stop_grace_period"),
        );
        assert!(
            grace > drain,
            "{name}: stop_grace_period {grace:?} > drain {drain:?}"
        );
        assert!(
            node["depends_on"].get("redis").is_some(),
            "{name} starts after redis"
        );
        assert_eq!(node["networks"], serde_json::json!(["backend"]), "{name}");
        let build = &node["build"];
        let dockerfile = deploy_dir()
            .join(build["context"].as_str().expect("build context"))
            .join(build["dockerfile"].as_str().expect("dockerfile"));
        assert!(dockerfile.is_file(), "{}", dockerfile.display());
    }
    node_ids.sort();
    node_ids.dedup();
    assert_eq!(node_ids.len(), 2, "every node has its own id");

    // The app: the demo, built from deploy/demo, on the private network.
    assert_eq!(app["build"], "./demo");
    assert!(deploy_dir().join("demo/Dockerfile").is_file());
    assert!(deploy_dir().join("demo/package-lock.json").is_file());
    assert_eq!(app["expose"], serde_json::json!(["3000"]));
    assert_eq!(app_env["PORT"], "3000");
    assert_eq!(app["networks"], serde_json::json!(["backend"]));
    assert!(app.get("ports").is_none(), "the app publishes no port");

    // Only the balancers publish; the nodes' network is internal.
    assert_eq!(services["redis"].get("ports"), None);
    assert_eq!(
        services["nginx"]["ports"].as_array().map(Vec::len),
        Some(1),
        "nginx publishes one port"
    );
    assert_eq!(compose["networks"]["backend"]["internal"], true);

    // nginx runs the one-origin config: the app's server block with the
    // snippet included, both mounted where the config expects them.
    let mounts: Vec<&str> = services["nginx"]["volumes"]
        .as_array()
        .expect("nginx volumes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for (file, target) in [
        (
            "./nginx/app-with-sockhive.conf",
            "/etc/nginx/conf.d/default.conf",
        ),
        (
            "./nginx/sockhive-locations.conf",
            "/etc/nginx/snippets/sockhive-locations.conf",
        ),
    ] {
        assert!(
            mounts.contains(&format!("{file}:{target}:ro").as_str()),
            "nginx mounts {file} at {target}: {mounts:?}"
        );
        assert!(deploy_dir().join(file).is_file(), "{file} exists");
    }
    let one_origin = read_deploy("nginx/app-with-sockhive.conf");
    assert!(one_origin.contains("include snippets/sockhive-locations.conf;"));
    // Its upstreams are exactly the compose nodes and the app.
    let mut upstream: Vec<&str> = nginx::upstream_servers(&one_origin)
        .into_iter()
        .filter_map(|line| line.split_whitespace().nth(1))
        .collect();
    upstream.sort();
    let mut expected: Vec<String> = nodes.iter().map(|(n, _)| format!("{n}:8000")).collect();
    expected.sort();
    assert_eq!(upstream, expected, "nginx upstream = compose nodes");
    assert!(one_origin.contains("upstream app {\n    server app:3000;"));
    let nginx_waits = services["nginx"]["depends_on"]
        .as_object()
        .expect("depends_on");
    for service in ["app", "node1", "node2"] {
        assert!(
            nginx_waits.contains_key(service),
            "nginx waits for {service}"
        );
    }
    // The haproxy profile mounts the checked config.
    let haproxy_mounts = services["haproxy"]["volumes"].to_string();
    assert!(haproxy_mounts.contains("./haproxy/haproxy.cfg:"));
}

#[test]
fn dockerfile_builds_a_non_root_image_that_drains_on_sigterm() {
    let dockerfile = read_deploy("Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let from: Vec<&str> = instructions
        .iter()
        .copied()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(from.len(), 2, "two stages: {from:?}");
    assert!(from[0].starts_with("FROM rust:") && from[0].ends_with(" AS builder"));
    assert!(from[1].starts_with("FROM debian:") && from[1].contains("-slim"));
    assert!(dockerfile.contains("cargo build --release --locked -p sockhive-master"));
    assert!(dockerfile.contains("COPY --from=builder"));
    let user = instructions
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER instruction");
    assert!(
        !matches!(user.split(':').next(), Some("root" | "0")),
        "runs as a non-root user, got {user}"
    );
    assert!(instructions.contains(&"STOPSIGNAL SIGTERM"));
    let healthcheck = instructions
        .iter()
        .position(|l| l.starts_with("HEALTHCHECK"))
        .expect("a HEALTHCHECK");
    let healthcheck: Vec<&str> = instructions
        .iter()
        .skip(healthcheck)
        .take(2)
        .copied()
        .collect();
    assert!(
        healthcheck.join(" ").contains("/healthz"),
        "the HEALTHCHECK probes /healthz"
    );
    // Every member the workspace needs is copied into the builder.
    let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).expect("Cargo.toml");
    let members = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("members = "))
        .expect("workspace members");
    for member in members.trim_matches(['[', ']']).split(',') {
        let member = member.trim().trim_matches('"');
        assert!(
            dockerfile.contains(&format!("COPY {member} ./{member}")),
            "the builder copies workspace member {member}"
        );
    }
    let ignore = read_deploy("Dockerfile.dockerignore");
    assert!(ignore.contains("**/target") && ignore.contains("**/node_modules"));
}

// ------------------------------------------------------------- kubernetes

#[test]
fn kubernetes_manifests_probe_the_right_endpoints() {
    let dir = deploy_dir().join("k8s");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/k8s")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    let files = yaml_files(&paths);
    let objects: Vec<(String, &Value)> = paths
        .iter()
        .zip(&files)
        .flat_map(|(path, docs)| {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            docs.iter().map(move |doc| (name.clone(), doc))
        })
        .collect();
    for (file, object) in &objects {
        assert!(object["apiVersion"].is_string(), "{file}: apiVersion");
        assert!(object["kind"].is_string(), "{file}: kind");
        if object["kind"] != "Kustomization" {
            assert!(
                object["metadata"]["name"].is_string(),
                "{file}: metadata.name"
            );
        }
    }
    let find = |kind: &str, name: &str| -> &Value {
        objects
            .iter()
            .map(|(_, o)| *o)
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };

    // kustomization.yaml applies every manifest but the secret example.
    let kustomization = find_kustomization(&objects);
    let mut resources: Vec<&str> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    resources.sort();
    let mut manifests: Vec<String> = paths
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n != "kustomization.yaml" && n != "secret.example.yaml")
        .collect();
    manifests.sort();
    assert_eq!(resources, manifests, "kustomization lists every manifest");

    let deployment = find("Deployment", "sockhive");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let pod = &deployment["spec"]["template"];
    let pod_labels = &pod["metadata"]["labels"];
    assert_eq!(deployment["spec"]["selector"]["matchLabels"], *pod_labels);
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    let container = &pod["spec"]["containers"][0];
    let port_of = |name: &str| -> u64 {
        container["ports"]
            .as_array()
            .and_then(|ports| ports.iter().find(|p| p["name"] == name))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("container port {name}"))
    };
    let env = |name: &str| -> Option<&str> {
        container["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)?["value"]
            .as_str()
    };
    let admin_port = port_of("admin");
    let public_port = port_of("public");
    let admin_listen = env("SOCKHIVE_ADMIN_LISTEN").expect("SOCKHIVE_ADMIN_LISTEN");
    assert_eq!(
        admin_listen,
        format!("0.0.0.0:{admin_port}"),
        "probes reach the admin port"
    );
    assert_eq!(
        env("SOCKHIVE_LISTEN"),
        Some(format!("0.0.0.0:{public_port}").as_str())
    );
    assert_eq!(
        container["env"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["name"] == "SOCKHIVE_NODE_ID"))
            .map(|e| &e["valueFrom"]["fieldRef"]["fieldPath"]),
        Some(&Value::from("metadata.name")),
        "each pod is its own node"
    );
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        let port = &get["port"];
        assert!(
            *port == "admin" || port.as_u64() == Some(admin_port),
            "{probe} on the admin port, got {port}"
        );
    }
    let drain = parse_duration(env("SOCKHIVE_DRAIN_TIMEOUT").expect("SOCKHIVE_DRAIN_TIMEOUT"));
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        Duration::from_secs(grace) > drain,
        "grace {grace}s > drain {drain:?}"
    );
    // Secrets arrive from the Secret, never as literals in the Deployment.
    let secret_ref = string_at(container, "/envFrom/0/secretRef/name", "envFrom");
    let secret = find("Secret", secret_ref);
    for key in ["SOCKHIVE_ADMIN_TOKEN", "SOCKHIVE_AUTH_KEY"] {
        assert!(secret["stringData"].get(key).is_some(), "Secret has {key}");
        assert!(
            env(key).is_none(),
            "{key} is not a literal in the Deployment"
        );
    }

    // Public Service → public port; metrics Service → admin port, annotated.
    let public = find("Service", "sockhive");
    assert_eq!(public["spec"]["selector"], *pod_labels);
    assert_eq!(public["spec"]["ports"][0]["targetPort"], "public");
    let metrics = find("Service", "sockhive-metrics");
    assert_eq!(metrics["spec"]["selector"], *pod_labels);
    assert_eq!(metrics["spec"]["ports"][0]["targetPort"], "admin");
    for annotations in [
        &metrics["metadata"]["annotations"],
        &pod["metadata"]["annotations"],
    ] {
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations["prometheus.io/port"], admin_port.to_string());
        assert_eq!(annotations["prometheus.io/path"], "/metrics");
    }

    let pdb = find("PodDisruptionBudget", "sockhive");
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], *pod_labels);
    assert!(
        pdb["spec"]["maxUnavailable"]
            .as_u64()
            .is_some_and(|n| n < 3)
            || pdb["spec"]["minAvailable"].as_u64().is_some_and(|n| n >= 1),
        "the PDB keeps nodes up"
    );

    // The Redis the nodes are pointed at exists as a Service.
    let redis_url = env("SOCKHIVE_REDIS_URL").expect("SOCKHIVE_REDIS_URL");
    let redis_host = redis_url
        .trim_start_matches("redis://")
        .split([':', '/'])
        .next()
        .unwrap_or_default();
    find("Service", redis_host);
    find("StatefulSet", redis_host);
}

fn find_kustomization<'a>(objects: &[(String, &'a Value)]) -> &'a Value {
    objects
        .iter()
        .map(|(_, o)| *o)
        .find(|o| o["kind"] == "Kustomization")
        .expect("a kustomization.yaml")
}

// ---------------------------------------------------------------- systemd

#[test]
fn systemd_unit_verifies_and_stops_after_the_drain() {
    let unit = read_deploy("systemd/sockhive.service");
    let exec_start = unit_setting(&unit, "ExecStart").expect("ExecStart");
    assert_eq!(
        exec_start,
        "/usr/local/bin/sockhive serve --config /etc/sockhive/sockhive.toml"
    );
    assert!(matches!(
        unit_setting(&unit, "Type"),
        Some("exec" | "simple")
    ));
    assert_eq!(
        unit_setting(&unit, "ExecReload"),
        Some("/bin/kill -HUP $MAINPID")
    );
    assert_eq!(unit_setting(&unit, "KillMode"), Some("mixed"));
    assert_eq!(unit_setting(&unit, "LimitNOFILE"), Some("1048576"));
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(unit_setting(&unit, key), Some(value), "{key}");
    }
    let stop = parse_duration(unit_setting(&unit, "TimeoutStopSec").expect("TimeoutStopSec"));
    let config = read_deploy("sockhive.example.toml");
    let drain = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("drain_timeout = "))
        .map(|v| parse_duration(v.trim_matches('"')))
        .expect("drain_timeout in the example config");
    assert!(
        stop > drain,
        "TimeoutStopSec {stop:?} > drain_timeout {drain:?}"
    );

    let Some(analyze) = find_tool("systemd-analyze") else {
        eprintln!("systemd-analyze not installed: structural checks only");
        return;
    };
    // verify checks that ExecStart's binary exists: use the one under test.
    let dir = TempDir::new("systemd");
    let rendered = unit.replace(
        "/usr/local/bin/sockhive",
        &sockhive_bin().display().to_string(),
    );
    let path = dir.write("sockhive.service", &rendered);
    let mut command = Command::new(&analyze);
    command.arg("verify").arg(&path);
    let finished = run_bounded(command, Duration::from_secs(30));
    assert!(
        finished.status.success() && !finished.stderr.contains("sockhive.service:"),
        "systemd-analyze verify: {}",
        finished.describe()
    );
    // The hardening stays in place: the exposure systemd prints as 0.0 (best)
    // to 10.0 (worst) stays at 2.5 or below (the threshold counts tenths).
    let mut command = Command::new(&analyze);
    command
        .args(["security", "--offline=yes", "--threshold=25", "--no-pager"])
        .arg(&path);
    let finished = run_bounded(command, Duration::from_secs(30));
    assert!(
        finished.status.success(),
        "systemd-analyze security: {}",
        finished.describe()
    );
}

// ------------------------------------------------------- sockhive itself

/// `sockhive check-config` with no `SOCKHIVE_*` variable of the caller's.
fn check_config(path: &Path) -> Finished {
    let mut command = Command::new(sockhive_bin());
    command.arg("check-config").arg("--config").arg(path);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SOCKHIVE_") {
            command.env_remove(key);
        }
    }
    run_bounded(command, Duration::from_secs(30))
}

#[test]
fn the_example_config_passes_check_config() {
    let finished = check_config(&deploy_dir().join("sockhive.example.toml"));
    assert!(
        finished.status.success(),
        "check-config refused sockhive.example.toml: {}",
        finished.describe()
    );
    // The effective config is the example's, not the defaults.
    for line in [
        "channel_auth = \"claims\"",
        "require_auth = true",
        "log_format = \"json\"",
        "admin_listen = \"127.0.0.1:9000\"",
    ] {
        assert!(
            finished.stdout.contains(line),
            "effective config lacks {line}:\n{}",
            finished.stdout
        );
    }
}

#[test]
fn the_demo_config_passes_check_config_and_pins_the_tested_packages() {
    let finished = check_config(&deploy_dir().join("demo/sockhive.toml"));
    assert!(
        finished.status.success(),
        "check-config refused demo/sockhive.toml: {}",
        finished.describe()
    );
    for line in [
        "channel_auth = \"rules\"",
        "user_lookup = \"redis:user:{id}\"",
        "pattern = \"user:{name}\"",
        "\"user.username\" = \"{name}\"",
        "pattern = \"room:*\"",
        "logged_in = true",
    ] {
        assert!(
            finished.stdout.contains(line),
            "effective config lacks {line}:\n{}",
            finished.stdout
        );
    }
    assert_eq!(
        finished.stdout.matches("publish = false").count(),
        2,
        "nobody publishes to a room or a private channel directly"
    );

    // The demo runs on the packages the tests run: the same versions, and a
    // lockfile whose every entry is tests/js's at the same path.
    let json = |path: PathBuf| -> Value {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let demo = json(deploy_dir().join("demo/package.json"));
    let tested = json(repo_root().join("tests/js/package.json"));
    let dependencies = demo["dependencies"].as_object().expect("dependencies");
    for (name, version) in dependencies {
        assert_eq!(
            tested["dependencies"][name], *version,
            "demo's {name} is the tested version"
        );
    }
    let demo_lock = json(deploy_dir().join("demo/package-lock.json"));
    let tested_lock = json(repo_root().join("tests/js/package-lock.json"));
    assert_eq!(
        demo_lock["packages"][""]["dependencies"], demo["dependencies"],
        "the lockfile is package.json's"
    );
    for (path, entry) in demo_lock["packages"].as_object().expect("packages") {
        if path.is_empty() {
            continue;
        }
        let tested_entry = &tested_lock["packages"][path];
        for field in ["version", "resolved", "integrity"] {
            assert_eq!(entry[field], tested_entry[field], "{path} {field}");
        }
    }
    for name in dependencies.keys() {
        assert!(
            demo_lock["packages"]
                .get(format!("node_modules/{name}"))
                .is_some(),
            "the lockfile has {name}"
        );
    }
}

#[test]
fn every_setting_the_kit_passes_is_a_real_flag() {
    let mut command = Command::new(sockhive_bin());
    command.args(["serve", "--help"]);
    let help = run_bounded(command, Duration::from_secs(30));
    assert!(help.status.success(), "{}", help.describe());
    let known =
        |flag: &str| help.stdout.contains(&format!("--{flag} ")) || NOT_YET_IN_CLI.contains(&flag);
    let flag_of_env = |var: &str| {
        var.trim_start_matches("SOCKHIVE_")
            .to_lowercase()
            .replace('_', "-")
    };

    // (where, flag) for every setting handed to `sockhive serve`.
    let mut used: Vec<(String, String)> = Vec::new();
    let mut add_args = |origin: &str, args: &[&str]| {
        for arg in args {
            if let Some(flag) = arg.strip_prefix("--") {
                used.push((origin.to_string(), flag.to_string()));
            }
        }
    };
    let compose = yaml_file(deploy_dir().join("docker-compose.yml")).remove(0);
    let deployment = yaml_file(deploy_dir().join("k8s/deployment.yaml")).remove(0);
    let secret = yaml_file(deploy_dir().join("k8s/secret.example.yaml")).remove(0);
    let strings = |list: &Value| -> Vec<String> {
        list.as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut env_names: Vec<(String, String)> = Vec::new();
    for (name, service) in compose["services"].as_object().expect("services") {
        let command = strings(&service["command"]);
        if command.first().map(String::as_str) == Some("serve") {
            let args: Vec<&str> = command.iter().map(String::as_str).collect();
            add_args(&format!("compose {name}"), &args);
            for key in service["environment"]
                .as_object()
                .expect("environment")
                .keys()
            {
                env_names.push((format!("compose {name}"), key.clone()));
            }
        }
    }
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args = strings(&container["args"]);
    add_args(
        "k8s args",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let k8s_env = container["env"].as_array().expect("env");
    for env in k8s_env {
        let name = string_at(env, "/name", "env");
        // A helper variable only feeds another one (`$(POD_IP):8000`).
        let substituted = format!("$({name})");
        let helper = !name.starts_with("SOCKHIVE_")
            && k8s_env.iter().any(|other| {
                other["value"]
                    .as_str()
                    .is_some_and(|v| v.contains(&substituted))
            });
        if helper {
            continue;
        }
        env_names.push(("k8s env".into(), name.into()));
    }
    for key in secret["stringData"].as_object().expect("stringData").keys() {
        env_names.push(("k8s secret".into(), key.clone()));
    }
    let unit = read_deploy("systemd/sockhive.service");
    let exec_start: Vec<&str> = unit_setting(&unit, "ExecStart")
        .expect("ExecStart")
        .split_whitespace()
        .collect();
    add_args("systemd ExecStart", &exec_start);
    for (origin, text) in [
        ("Dockerfile", read_deploy("Dockerfile")),
        (".env.example", read_deploy(".env.example")),
    ] {
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("SOCKHIVE_") {
                env_names.push((origin.into(), word.into()));
            }
        }
    }
    // The demo README's command lines: `sockhive serve` and its continuations.
    let demo_readme = read_deploy("demo/README.md");
    let mut in_serve = false;
    for line in demo_readme.lines() {
        in_serve = in_serve || line.contains("sockhive serve");
        if in_serve {
            let words: Vec<&str> = line.split_whitespace().collect();
            add_args("demo/README.md", &words);
            in_serve = line.trim_end().ends_with('\\');
        }
    }
    assert!(
        used.iter()
            .any(|(o, f)| o == "demo/README.md" && f == "hook-secret"),
        "the scan sees the demo README's command line"
    );
    for (origin, var) in &env_names {
        assert!(
            var.starts_with("SOCKHIVE_"),
            "{origin}: {var} is not sockhive's"
        );
        used.push((origin.clone(), flag_of_env(var)));
    }
    assert!(
        used.iter().any(|(_, f)| f == "admin-token") && used.iter().any(|(_, f)| f == "node-id"),
        "the scan sees the kit's settings: {used:?}"
    );
    let unknown: Vec<&(String, String)> = used.iter().filter(|(_, flag)| !known(flag)).collect();
    assert!(unknown.is_empty(), "not sockhive settings: {unknown:?}");
}
