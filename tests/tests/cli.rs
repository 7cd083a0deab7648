//! The command line as a new user meets it: `check-config` agreeing with
//! `serve`, errors that name the flag and the reason, host names in addresses,
//! `sockets publish`, and the start-up banner and log file of a real node.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sockhive_tests::node::{children_of, sockhive_bin, ADMIN_TOKEN, AUTH_KEY};
use sockhive_tests::redis::RedisServer;
use sockhive_tests::tempdir::TempDir;
use sockhive_tests::{http, Driver, Node};

/// `sockhive` without any `SOCKHIVE_*` variable of the caller's, so only the
/// test's own settings count.
fn command(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut command = Command::new(sockhive_bin());
    command.args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SOCKHIVE_") {
            command.env_remove(key);
        }
    }
    for (key, value) in envs {
        command.env(key, value);
    }
    command
}

/// How a bounded run ended: `code` is `None` when it had to be killed.
#[derive(Debug)]
struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `sockhive args...` to its end, or kills it after `limit` (a `serve`
/// that accepted its flags would otherwise run forever).
fn run_bounded(args: &[&str], envs: &[(&str, &str)], limit: Duration) -> Finished {
    let dir = TempDir::new("cli-run");
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = command(args, envs)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("run sockhive");
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() >= deadline {
            kill_with_workers(&mut child);
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished {
        code,
        stdout: std::fs::read_to_string(out).unwrap_or_default(),
        stderr: std::fs::read_to_string(err).unwrap_or_default(),
    }
}

fn kill_with_workers(child: &mut Child) {
    let workers = children_of(child.id() as i32);
    let _ = child.kill();
    let _ = child.wait();
    for pid in workers {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A `sockhive serve` started with exactly the given flags (no test defaults,
/// so a test can leave the admin token out or spell addresses its own way),
/// its stderr going to a log file as under a process manager.
struct Served {
    child: Child,
    public: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

impl Served {
    fn start(args: &[&str]) -> Served {
        let dir = TempDir::new("cli-serve");
        let log = dir.path().join("sockhive.log");
        let mut child = command(&[&["serve"], args].concat(), &[("RUST_LOG", "info")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start sockhive serve");
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut public, mut admin) = (None, None);
        while admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                kill_with_workers(&mut child);
                panic!(
                    "sockhive serve {args:?} did not become ready; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            };
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("SocketCluster: ws://") {
                public = rest.trim_end_matches("/socketcluster/").parse().ok();
            }
            if let Some(rest) = line.strip_prefix("admin:") {
                admin = rest
                    .trim()
                    .strip_prefix("http://")
                    .and_then(|r| r.split('/').next())
                    .and_then(|a| a.parse().ok());
            }
        }
        Served {
            child,
            public: public.expect("public address announced"),
            admin: admin.expect("admin address announced"),
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        kill_with_workers(&mut self.child);
    }
}

// ------------------------------------------------------------ check-config

#[test]
fn check_config_output_reads_back_as_the_same_config() {
    let dir = TempDir::new("cli-roundtrip");
    let file = dir.write(
        "node.toml",
        "[server]\nworkers = 2\nlisten = \"localhost:8123\"\nallowed_origin = [\"https://app.example.com\"]\n\
         [limits]\nmax_payload = \"2MiB\"\nmax_header_bytes = 32768\nmax_connections = 500\n\
         [auth]\nrequire_auth = true\ntoken_renew_before = \"1h\"\n\
         [channels]\nchannel_auth = \"claims\"\npublic_channel = [\"public:*\"]\n\
         [session]\nsession_cookie = \"app.sid\"\nuser_lookup = \"redis:user:{id}\"\nsession_recheck = \"2s\"\n",
    );
    // Secrets come from the environment, as the README advises; the printed
    // file leaves them out, so the same environment is given again.
    let secrets = [
        ("SOCKHIVE_AUTH_KEY", "jwt-key-not-printed"),
        ("SOCKHIVE_ADMIN_TOKEN", "admin-token-not-printed"),
        (
            "SOCKHIVE_SESSION_SECRET",
            "cookie-secret-one,cookie-secret-two",
        ),
        (
            "SOCKHIVE_USER_LOOKUP_HEADER",
            "Authorization: Bearer lookup-secret-not-printed",
        ),
        (
            "SOCKHIVE_REDIS_URL",
            "redis://app:redis-pass-not-printed@127.0.0.1:6379",
        ),
    ];
    let first = command(
        &["check-config", "--config", file.to_str().unwrap()],
        &secrets,
    )
    .output()
    .unwrap();
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let printed = String::from_utf8(first.stdout).unwrap();
    for secret in [
        "jwt-key-not-printed",
        "admin-token-not-printed",
        "cookie-secret-one",
        "redis-pass-not-printed",
        "lookup-secret-not-printed",
        "<redacted>\"",
        "auth_key_is_random",
    ] {
        assert!(!printed.contains(secret), "{secret} in:\n{printed}");
    }
    assert!(
        printed.contains("listen = \"127.0.0.1:8123\""),
        "the resolved address: {printed}"
    );
    let again = dir.write("printed.toml", &printed);
    let second = command(
        &["check-config", "--config", again.to_str().unwrap()],
        &secrets,
    )
    .output()
    .unwrap();
    assert_eq!(
        second.status.code(),
        Some(0),
        "check-config refused its own output: {}\n{printed}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(String::from_utf8(second.stdout).unwrap(), printed);
}

/// Runs `check-config` and `serve` with the same bad settings and returns
/// both; `serve` gets free ports so that, were it to accept them, it would
/// start (and be killed at the deadline) rather than collide with anything.
fn both_refuse(args: &[&str]) -> (Finished, Finished) {
    let check = run_bounded(
        &[&["check-config"], args].concat(),
        &[],
        Duration::from_secs(20),
    );
    let mut serve_args = vec!["serve"];
    for (flag, value) in [
        ("--listen", "127.0.0.1:0"),
        ("--admin-listen", "127.0.0.1:0"),
        ("--workers", "1"),
    ] {
        if !args.contains(&flag) {
            serve_args.extend([flag, value]);
        }
    }
    serve_args.extend(args);
    let serve = run_bounded(&serve_args, &[], Duration::from_secs(20));
    (check, serve)
}

#[test]
fn check_config_refuses_exactly_what_serve_refuses() {
    let dir = TempDir::new("cli-parity");
    let garbage = dir.write("garbage.pem", "not a key\n");
    let garbage = garbage.to_str().unwrap();
    let redis = "redis://127.0.0.1:1";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--user-lookup", "none2"], "--user-lookup"),
        (
            vec![
                "--session-secret",
                "s",
                "--redis-url",
                redis,
                "--user-lookup",
                "none2",
            ],
            "--user-lookup",
        ),
        (
            vec![
                "--session-secret",
                "s",
                "--redis-url",
                redis,
                "--user-lookup",
                "http://app:99999/users/{id}",
            ],
            "--user-lookup",
        ),
        (
            vec![
                "--session-secret",
                "s",
                "--redis-url",
                redis,
                "--session-cookie",
                "a;b",
            ],
            "--session-cookie",
        ),
        (
            vec!["--redis-url", "redis://127.0.0.1:6379/notadb"],
            "--redis-url",
        ),
        (
            // `=`: a value starting with `-` would read as a flag.
            vec!["--auth-key=-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----"],
            "--auth-key",
        ),
        (
            vec!["--auth-algorithm", "RS256", "--auth-public-key", garbage],
            "--auth-public-key",
        ),
    ];
    for (args, flag) in cases {
        let (check, serve) = both_refuse(&args);
        assert_eq!(check.code, Some(2), "check-config {args:?}: {check:?}");
        assert_eq!(serve.code, Some(2), "serve {args:?}: {serve:?}");
        assert_eq!(
            check.stderr, serve.stderr,
            "{args:?}: the same words from both"
        );
        assert!(
            check.stderr.contains(flag) && !check.stderr.contains("panicked"),
            "{args:?}: {}",
            check.stderr
        );
        assert!(check.stdout.is_empty(), "{args:?}: {}", check.stdout);
    }
}

#[test]
fn every_bad_flag_is_refused_with_the_flag_and_the_reason() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--drain-timeout", "10 sec"],
            &["--drain-timeout", "write 10s"],
        ),
        (
            &["--handshake-timeout", "10"],
            &["--handshake-timeout", "needs a unit"],
        ),
        (
            &["--upgrade-timeout", "1.5s"],
            &["--upgrade-timeout", "write 1500ms"],
        ),
        (
            &["--max-payload", "2 MB"],
            &["--max-payload", "use 2MiB (2097152 bytes) or 2000000"],
        ),
        (
            &["--max-send-queue", "8mb"],
            &["--max-send-queue", "ambiguous"],
        ),
        (
            &["--max-header-bytes", "lots"],
            &["--max-header-bytes", "KiB, MiB or GiB"],
        ),
        (
            &["--max-header-bytes", "512"],
            &["--max-header-bytes", "at least 1KiB"],
        ),
        (
            &["--listen", "nosuch.invalid:8000"],
            &["--listen", "cannot resolve host `nosuch.invalid`"],
        ),
        (
            &["--listen", "127.0.0.1:99999"],
            &["--listen", "port `99999`"],
        ),
        (
            &["--admin-listen", "localhost"],
            &["--admin-listen", "not host:port"],
        ),
        (
            &["--accept-mode", "roundrobin"],
            &["--accept-mode", "roundrobin", "reuseport"],
        ),
        (&["--log-format", "xml"], &["--log-format", "xml", "json"]),
        (
            &["--channel-auth", "everyone"],
            &["--channel-auth", "everyone", "claims"],
        ),
        (
            &["--on-logout", "explode"],
            &["--on-logout", "explode", "kick"],
        ),
        (
            &["--duplicate-cookie", "last"],
            &["--duplicate-cookie", "refuse"],
        ),
        (
            &["--auth-algorithm", "HS512"],
            &["--auth-algorithm", "HS512", "RS256"],
        ),
        (&["--workers", "0"], &["--workers", "0"]),
        (&["--workers", "many"], &["--workers", "many"]),
        (&["--workers", "1000"], &["--workers", "1000"]),
        (
            &["--max-connections", "0"],
            &["--max-connections", "above zero"],
        ),
        (&["--max-connections=-5"], &["--max-connections", "-5"]),
        (
            &["--reject-at-upgrade"],
            &["--reject-at-upgrade", "require_auth"],
        ),
        (&["--require-auth", "maybe"], &["--require-auth", "maybe"]),
        (
            &["--allowed-origin", "example.com"],
            &["--allowed-origin", "http://"],
        ),
        (&["--public-channel", "a*b"], &["--public-channel", "'*'"]),
        (&["--jwt-leeway", "2m"], &["--jwt-leeway", "at most 60s"]),
        (
            &["--token-expiry", "30d"],
            &["--token-expiry", "max_token_lifetime"],
        ),
        (
            &["--token-renew-before", "2d"],
            &["--token-renew-before", "shorter than"],
        ),
        (
            &["--ping-interval", "40s"],
            &["--ping-interval", "ping_timeout"],
        ),
        (&["--admin-token", ""], &["--admin-token", "empty"]),
        (&["--node-id", "a b"], &["--node-id", "spaces"]),
        (&["--redis-url", "localhost"], &["--redis-url", "redis://"]),
        (
            &["--session-secret", "s"],
            &["--session-redis-url", "--redis-url"],
        ),
        (
            &["--user-lookup", "ldap://x/{id}"],
            &["--user-lookup", "redis-hash:"],
        ),
        (
            &[
                "--auth-algorithm",
                "RS256",
                "--auth-public-key",
                "/nonexistent/key.pem",
            ],
            &["--auth-public-key", "cannot read /nonexistent/key.pem"],
        ),
        (
            &["--auth-algorithm", "RS256"],
            &["--auth-public-key", "required with RS256"],
        ),
        (
            &["--config", "/nonexistent/sockhive.toml"],
            &["/nonexistent/sockhive.toml", "cannot read"],
        ),
    ];
    for (args, wanted) in cases {
        let mut serve_args = vec!["serve"];
        for (flag, value) in [
            ("--listen", "127.0.0.1:0"),
            ("--admin-listen", "127.0.0.1:0"),
            ("--workers", "1"),
        ] {
            if !args.contains(&flag) {
                serve_args.extend([flag, value]);
            }
        }
        serve_args.extend(args.iter());
        let finished = run_bounded(&serve_args, &[], Duration::from_secs(20));
        assert_eq!(finished.code, Some(2), "serve {args:?}: {finished:?}");
        for text in *wanted {
            assert!(
                finished.stderr.contains(text),
                "serve {args:?}: stderr lacks {text:?}:\n{}",
                finished.stderr
            );
        }
        assert!(
            !finished.stderr.contains("panicked"),
            "{args:?}: {}",
            finished.stderr
        );
    }
}

// ------------------------------------------------------------ serve

#[tokio::test]
async fn serve_resolves_host_names_in_its_addresses() {
    let node = Served::start(&[
        "--listen",
        "localhost:0",
        "--admin-listen",
        "localhost:0",
        "--workers",
        "1",
        "--auth-key",
        AUTH_KEY,
    ]);
    assert!(node.public.ip().is_loopback(), "{}", node.public);
    assert!(node.admin.ip().is_loopback(), "{}", node.admin);
    assert_eq!(http::get(node.public, "/healthz", &[]).await.status, 200);
    assert_eq!(http::get(node.admin, "/readyz", &[]).await.status, 200);
    let (_socket, handshake) = sockhive_tests::ws::sc_open(node.public, None).await;
    assert_eq!(handshake["isAuthenticated"], false);
}

#[tokio::test]
async fn the_banner_says_what_is_on_and_the_log_file_has_no_colour_codes() {
    let plain = Served::start(&[
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--auth-key",
        AUTH_KEY,
    ]);
    let log = plain.log();
    for line in [
        "auth: JWT (HS256 --auth-key); login optional".to_string(),
        "broker: embedded (this node alone)".to_string(),
        "hooks: off".to_string(),
        "admin API: off (no --admin-token: /api/* refused)".to_string(),
        format!("metrics: http://{}/metrics", plain.admin),
    ] {
        assert!(log.contains(&line), "banner lacks {line:?}:\n{log}");
    }
    assert!(!log.contains("session cookie"), "{log}");
    assert!(
        log.contains("worker accepting"),
        "workers log here too: {log}"
    );
    assert!(
        !log.contains("\x1b["),
        "a log file gets no colour codes:\n{log:?}"
    );

    let redis = RedisServer::start();
    // Set after the start: the fixture's readiness PING has no password.
    redis.cli(&["CONFIG", "SET", "requirepass", "redis-pass-not-logged"]);
    let url = format!("redis://:redis-pass-not-logged@127.0.0.1:{}", redis.port);
    let redacted = format!("redis://:<redacted>@127.0.0.1:{}", redis.port);
    let full = Served::start(&[
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--auth-key",
        AUTH_KEY,
        "--admin-token",
        ADMIN_TOKEN,
        "--redis-url",
        &url,
        "--session-secret",
        "cookie-secret-not-logged",
        "--session-cookie",
        "app.sid",
        "--accept-query-session-id",
        "--require-auth",
    ]);
    let log = full.log();
    for line in [
        format!("session cookie `app.sid` (store {redacted}, prefix sess:, user lookup none)"),
        "session_id query parameter (signed values)".to_string(),
        "login required (refused after the upgrade)".to_string(),
        format!("broker: redis {redacted}"),
        "hooks: off".to_string(),
        format!(
            "admin API: on at http://{}/api/ (bearer token set)",
            full.admin
        ),
        format!("metrics: http://{}/metrics", full.admin),
    ] {
        assert!(log.contains(&line), "banner lacks {line:?}:\n{log}");
    }
    for secret in [
        "redis-pass-not-logged",
        "cookie-secret-not-logged",
        ADMIN_TOKEN,
    ] {
        assert!(!log.contains(secret), "{secret} logged:\n{log}");
    }
    assert!(!log.contains("\x1b["), "{log:?}");
}

// ------------------------------------------------------------ sockets publish

/// Runs a CLI command off the async runtime (it blocks on its own request).
async fn cli(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        command(&args, &[]).output().expect("run sockhive")
    })
    .await
    .unwrap()
}

fn publish_args(admin: &str, token: &str, channel: &str, data: &str) -> Vec<String> {
    [
        "sockets",
        "publish",
        "--admin",
        admin,
        "--admin-token",
        token,
        "--channel",
        channel,
        "--data",
        data,
    ]
    .map(String::from)
    .to_vec()
}

#[tokio::test]
async fn sockets_publish_reaches_subscribers_and_fails_with_the_right_exit_code() {
    let node = Node::start(2);
    let mut driver = Driver::start().await;
    driver
        .ok("sc.connect", json!({"client": "sub", "url": node.sc_url()}))
        .await;
    driver
        .ok("sc.subscribe", json!({"client": "sub", "channel": "news"}))
        .await;
    let admin = format!("http://{}", node.admin);

    let out = cli(publish_args(
        &admin,
        ADMIN_TOKEN,
        "news",
        r#"{"headline":"hello"}"#,
    ))
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(reply, json!({"ok": true}));
    let got = driver
        .wait_event(Duration::from_secs(10), "the published message", |e| {
            e["client"] == "sub" && e["event"] == "message" && e["channel"] == "news"
        })
        .await;
    assert_eq!(got["data"], json!({"headline": "hello"}));

    // A refused request: exit 1, the answer on stderr, nothing on stdout.
    let out = cli(publish_args(&admin, "wrong-token", "news", "1")).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let long = "c".repeat(300);
    let out = cli(publish_args(&admin, ADMIN_TOKEN, &long, "1")).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-channel-length"));

    // Bad usage: exit 2 before any request.
    for args in [
        publish_args(&admin, ADMIN_TOKEN, "news", "{not json"),
        publish_args("ftp://127.0.0.1:1", ADMIN_TOKEN, "news", "1"),
        [
            "sockets",
            "publish",
            "--admin",
            &admin,
            "--admin-token",
            ADMIN_TOKEN,
            "--data",
            "1",
        ]
        .map(String::from)
        .to_vec(),
    ] {
        let out = cli(args.clone()).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    assert_eq!(
        driver.events_of("sub", "message").len(),
        1,
        "refused publishes delivered nothing"
    );
    driver.shutdown().await;
}
