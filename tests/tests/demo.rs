//! The chat demo of `deploy/demo`, booted the way its README runs it: Redis
//! shared by the app's sessions and sockhive, the express app
//! (`node deploy/demo/server.js`), two sockhive nodes with the demo's
//! `sockhive.toml` and hook flags, and nginx running the shipped one-origin
//! config (`deploy/nginx/app-with-sockhive.conf` + the locations snippet) in
//! front of all of it. `tests/js/demo_check.js` then drives it in Debian's
//! Chromium: two users log in, chat in a room over both clients, one is
//! refused the other's private channel, and a logout takes its channels away.
//! The screenshots land in `deploy/demo/screenshots/`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use sockhive_tests::node::children_of;
use sockhive_tests::redis::{free_port, RedisServer};
use sockhive_tests::tempdir::TempDir;
use sockhive_tests::{http, nginx, repo_root, Node, NodeBuilder};

/// The browser the check drives: Debian's package, which tests/run.sh
/// installs when missing.
const CHROMIUM: &str = "/usr/bin/chromium";
const SESSION_SECRET: &str = "demo-session-secret";
const HOOK_SECRET: &str = "demo-hook-secret";

fn demo_dir() -> PathBuf {
    repo_root().join("deploy/demo")
}

/// What a child process wrote to its log file so far.
fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The status of a plain `GET path` (0 when nothing answers within 2 s);
/// blocking, so the fixtures can wait without a runtime of their own.
fn get_status(addr: SocketAddr, path: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return 0;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return 0;
    }
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).unwrap_or(0);
    String::from_utf8_lossy(&head[..n])
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Waits until `addr` answers `GET path` with 200, failing early (with the
/// log) if `child` exits first.
fn wait_for_200(child: &mut Child, addr: SocketAddr, path: &str, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited at start ({status}):\n{}", read_log(log));
        }
        if get_status(addr, path) == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not answer GET {path} on {addr} with 200:\n{}",
            read_log(log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `node deploy/demo/server.js`, with the packages of tests/js.
struct DemoApp {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl DemoApp {
    fn start(dir: &TempDir, redis_url: &str) -> DemoApp {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = dir.path().join("app.log");
        let out = std::fs::File::create(&log).expect("app log");
        let mut child = Command::new("node")
            .arg(demo_dir().join("server.js"))
            .env("NODE_PATH", repo_root().join("tests/js/node_modules"))
            .env("REDIS_URL", redis_url)
            .env("HOST", "127.0.0.1")
            .env("PORT", addr.port().to_string())
            .env("SESSION_SECRET", SESSION_SECRET)
            .env("HOOK_SECRET", HOOK_SECRET)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("app log"))
            .stderr(out)
            .spawn()
            .expect("start node deploy/demo/server.js (needs `npm ci` in tests/js)");
        wait_for_200(&mut child, addr, "/healthz", "the demo app", &log);
        DemoApp { child, addr, log }
    }

    fn logs(&self) -> String {
        read_log(&self.log)
    }
}

impl Drop for DemoApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node as the demo's README starts one.
fn demo_node(redis: &RedisServer, app: &DemoApp, origin: &str, id: &str) -> Node {
    let config = demo_dir().join("sockhive.toml");
    NodeBuilder::new(1)
        .args(["--config", config.to_str().expect("utf-8 path")])
        .args(["--node-id", id, "--redis-url", &redis.url()])
        .args(["--session-secret", SESSION_SECRET])
        .args([
            "--hook-url",
            &format!("http://{}/sockhive", app.addr),
            "--hook-secret",
            HOOK_SECRET,
            "--hooks",
            "rpc",
        ])
        .args(["--allowed-origin", origin])
        .start()
}

/// nginx running the shipped one-origin config: the app's server block with
/// sockhive's locations included, pointed at loopback.
struct OneOrigin {
    child: Child,
    dir: TempDir,
}

impl OneOrigin {
    fn start(listen: SocketAddr, nodes: &[SocketAddr], app: SocketAddr) -> OneOrigin {
        let dir = TempDir::new("demo-nginx");
        let shipped =
            std::fs::read_to_string(repo_root().join("deploy/nginx/app-with-sockhive.conf"))
                .expect("deploy/nginx/app-with-sockhive.conf");
        let mut rendered = shipped.replace("listen 8080;", &format!("listen {listen};"));
        for (i, node) in nodes.iter().enumerate() {
            let from = format!("server node{}:8000 ", i + 1);
            assert_eq!(
                shipped.matches(&from).count(),
                1,
                "the config lists `{from}`"
            );
            rendered = rendered.replace(&from, &format!("server {node} "));
        }
        assert_eq!(shipped.matches("server app:3000;").count(), 1);
        rendered = rendered.replace("server app:3000;", &format!("server {app};"));
        dir.write("conf.d/app.conf", &rendered);
        // The relative include resolves against the main file's directory.
        dir.write(
            "snippets/sockhive-locations.conf",
            &std::fs::read_to_string(repo_root().join("deploy/nginx/sockhive-locations.conf"))
                .expect("deploy/nginx/sockhive-locations.conf"),
        );
        let p = dir.path().display();
        let main = format!(
            "daemon off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             access_log {p}/access.log;\n\
             client_body_temp_path {p}/client_body_temp;\n\
             proxy_temp_path {p}/proxy_temp;\n\
             fastcgi_temp_path {p}/fastcgi_temp;\n\
             uwsgi_temp_path {p}/uwsgi_temp;\n\
             scgi_temp_path {p}/scgi_temp;\n\
             include {p}/conf.d/*.conf;\n}}\n"
        );
        let conf = dir.write("nginx.conf", &main);
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr file");
        let child = Command::new(nginx::program())
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
        let mut nginx = OneOrigin { child, dir };
        let log = nginx.dir.path().join("error.log");
        wait_for_200(&mut nginx.child, listen, "/login", "nginx", &log);
        nginx
    }

    fn logs(&self) -> String {
        ["stderr.log", "error.log"]
            .iter()
            .map(|f| read_log(&self.dir.path().join(f)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for OneOrigin {
    fn drop(&mut self) {
        let master = self.child.id() as i32;
        let workers = children_of(master);
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
        for pid in workers {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

#[tokio::test]
async fn the_chat_demo_logs_in_chats_guards_private_channels_and_logs_out_in_chromium() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: `apt-get install chromium` (tests/run.sh installs it)"
    );
    let redis = RedisServer::start();
    let dir = TempDir::new("demo");
    let app = DemoApp::start(&dir, &redis.url());
    let front: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let origin = format!("http://{front}");
    let a = demo_node(&redis, &app, &origin, "demo-a");
    let b = demo_node(&redis, &app, &origin, "demo-b");
    let nginx = OneOrigin::start(front, &[a.public, b.public], app.addr);

    // One origin: the app's pages and sockhive's endpoints through one port,
    // the hook routes not at all.
    let login = http::get(front, "/login", &[]).await;
    assert!(login.body.contains("action=\"/login\""), "{}", login.body);
    let home = http::get(front, "/", &[]).await;
    assert_eq!(home.status, 302, "/ without a session: {}", home.head);
    assert_eq!(http::get(front, "/sockhive/rpc", &[]).await.status, 404);
    let negotiate = http::get(front, "/negotiate", &[]).await;
    assert_eq!(
        negotiate.status, 401,
        "sockhive's /negotiate: {}",
        negotiate.body
    );

    let screenshots = demo_dir().join("screenshots");
    std::fs::create_dir_all(&screenshots).expect("deploy/demo/screenshots");
    let check = json!({
        "url": format!("{origin}/"),
        "users": [
            {"username": "alice", "password": "wonderland"},
            {"username": "bob", "password": "builder"},
        ],
        "room": "demo",
        "screenshots": screenshots,
    });
    let started = Instant::now();
    let run = tokio::process::Command::new("node")
        .arg("demo_check.js")
        .arg(check.to_string())
        .current_dir(repo_root().join("tests/js"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("demo_check.js finished within 4 minutes")
        .expect("run node tests/js/demo_check.js");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let progress = String::from_utf8_lossy(&out.stderr);
    eprintln!("{progress}");
    eprintln!("demo_check.js took {:?}", started.elapsed());
    assert!(
        out.status.success(),
        "demo_check.js failed: {stdout}\n{progress}\n--- app:\n{}\n--- node demo-a:\n{}\n--- node demo-b:\n{}\n--- nginx:\n{}",
        app.logs(),
        a.logs(),
        b.logs(),
        nginx.logs()
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("demo_check.js printed no result ({e}): {stdout}"));

    // Every socket of both users saw both messages, each with its sender.
    let expected = json!([
        {"from": "alice", "text": "hello from alice over Socket.IO"},
        {"from": "bob", "text": "hi alice, bob here over SocketCluster"},
    ]);
    for socket in ["alice.sc", "alice.io", "bob.sc", "bob.io"] {
        assert_eq!(result["seen"][socket], expected, "{socket}: {result}");
    }
    for pane in ["sc", "io"] {
        assert_eq!(
            result["forbidden"][pane]["error"], "ChannelForbiddenError",
            "{pane}: {result}"
        );
        assert_eq!(
            result["kicked"][pane],
            json!(["room:demo", "user:alice"]),
            "{pane}: {result}"
        );
    }
    assert_eq!(result["refusedAfterLogout"], "NotLoggedInError", "{result}");
    for png in result["screenshots"].as_array().expect("screenshots") {
        let path = PathBuf::from(png.as_str().expect("a path"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(bytes.starts_with(b"\x89PNG"), "{} is a PNG", path.display());
        println!("screenshot: {}", path.display());
    }

    // Both nodes served cookie logins (nginx spread the four sockets), and
    // the chat went through the app's rpc hook.
    for node in [&a, &b] {
        let logins = node
            .metric("sockhive_session_logins_total{result=\"ok\"}")
            .await;
        assert!(
            logins >= 1.0,
            "a node with no cookie login:\n{}",
            node.logs()
        );
    }
    let rpc_ok = a
        .metric("sockhive_hook_calls_total{hook=\"rpc\",outcome=\"ok\"}")
        .await
        + b.metric("sockhive_hook_calls_total{hook=\"rpc\",outcome=\"ok\"}")
            .await;
    // alice's and bob's two messages, and bob's after the logout.
    assert!(rpc_ok >= 3.0, "rpc hook calls answered: {rpc_ok}");
    drop(nginx);
}
