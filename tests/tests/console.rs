//! The admin console (`/console` on the admin port), driven in a real
//! Chromium: it lists the sockets of both nodes, filters by user, emits to
//! and kicks its selection (the real clients see it), publishes, and draws
//! its charts from `/metrics`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use sockhive_tests::http;
use sockhive_tests::node::{sign_token, ADMIN_TOKEN};
use sockhive_tests::redis::RedisServer;
use sockhive_tests::tempdir::TempDir;
use sockhive_tests::{eventually, repo_root, Driver, Node, NodeBuilder};

/// The browser the console check drives: Debian's package, which
/// tests/run.sh installs when missing.
const CHROMIUM: &str = "/usr/bin/chromium";

fn node(redis_url: &str, id: &str) -> Node {
    NodeBuilder::new(2)
        .args(["--redis-url", redis_url, "--node-id", id])
        .start()
}

fn token(sub: &str) -> String {
    sign_token(&json!({"sub": sub, "user": {"name": sub}}))
}

async fn sc_connect(driver: &mut Driver, node: &Node, client: &str, sub: &str) -> String {
    let status = driver
        .ok(
            "sc.connect",
            json!({"client": client, "url": node.sc_url(), "authToken": token(sub), "listen": ["note"]}),
        )
        .await;
    assert_eq!(status["isAuthenticated"], true, "{status}");
    status["id"].as_str().unwrap().to_string()
}

fn header<'a>(reply: &'a http::Reply, name: &str) -> Option<&'a str> {
    reply.head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn the_console_is_served_locked_down_and_only_under_its_paths() {
    let node = Node::start(1);
    let page = http::get(node.admin, "/console", &[]).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("/console/console.js"), "{}", page.body);
    assert!(header(&page, "content-type")
        .unwrap()
        .starts_with("text/html"));
    let csp = header(&page, "content-security-policy").unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert_eq!(header(&page, "cache-control"), Some("no-store"));
    let script = http::get(node.admin, "/console/console.js", &[]).await;
    assert_eq!(script.status, 200);
    assert!(header(&script, "content-type")
        .unwrap()
        .starts_with("text/javascript"));
    assert!(script.body.contains("sessionStorage"));
    let style = http::get(node.admin, "/console/console.css", &[]).await;
    assert_eq!(style.status, 200);
    assert_eq!(
        http::get(node.admin, "/console/missing.js", &[])
            .await
            .status,
        404
    );
    // The page is open; the data behind it is not.
    let api = http::post_json(node.admin, "/api/sockets/query", None, &json!({})).await;
    assert_eq!(api.status, 401);
}

#[tokio::test]
async fn the_console_lists_filters_kicks_emits_publishes_and_charts_in_chromium() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: `apt-get install chromium` (tests/run.sh installs it)"
    );
    let redis = RedisServer::start();
    let a = node(&redis.url(), "node-a");
    let b = node(&redis.url(), "node-b");
    let mut driver = Driver::start().await;
    sc_connect(&mut driver, &a, "alice", "alice").await;
    let bob_a = sc_connect(&mut driver, &a, "bob-a", "bob").await;
    let bob_b = sc_connect(&mut driver, &b, "bob-b", "bob").await;
    let bob_io = driver
        .ok(
            "io.connect",
            json!({"client": "bob-io", "url": format!("ws://{}", b.public),
                   "auth": {"token": token("bob")}, "listen": ["note"]}),
        )
        .await["socketId"]
        .as_str()
        .unwrap()
        .to_string();
    driver
        .ok(
            "sc.subscribe",
            json!({"client": "alice", "channel": "news"}),
        )
        .await;
    eventually(
        Duration::from_secs(5),
        "all four sockets visible from node A",
        async || {
            let reply = a
                .admin_post("/api/sockets/query", json!({"filter": {}}))
                .await
                .json();
            (reply["sockets"].as_array()?.len() == 4).then_some(())
        },
    )
    .await;

    let dir = TempDir::new("console");
    let screenshot = dir.path().join("console.png");
    let check = json!({
        "url": format!("http://{}/console", a.admin),
        "token": ADMIN_TOKEN,
        "screenshot": screenshot,
        "nodes": {"node-a": 2, "node-b": 2},
        "bob": [bob_a, bob_b, bob_io],
        "kick": bob_b,
        "emit": {"event": "note", "data": {"from": "console"}},
        "publish": {"channel": "news", "data": {"headline": "from the console"}},
        "sc_url": a.sc_url(),
        "connections": 2,
    });
    let run = tokio::process::Command::new("node")
        .arg("console_check.js")
        .arg(check.to_string())
        .current_dir(repo_root().join("tests/js"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("console_check.js finished within 2 minutes")
        .expect("run node tests/js/console_check.js");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let progress = String::from_utf8_lossy(&out.stderr);
    eprintln!("{progress}");
    assert!(
        out.status.success(),
        "console_check.js failed: {stdout}\n{progress}"
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("console_check.js printed no result ({e}): {stdout}"));
    assert_eq!(result["listedNodes"], json!(["node-a", "node-b"]));
    assert_eq!(
        result["protocols"],
        json!(["socketcluster", "socketcluster", "socketio"])
    );
    assert_eq!(result["emitted"], 3, "{result}");
    assert_eq!(result["kicked"], 1, "{result}");

    // What the page did reached the real clients.
    for client in ["bob-a", "bob-b"] {
        let note = driver
            .wait_event(Duration::from_secs(5), "the console's emit", |e| {
                e["client"] == client && e["event"] == "receive" && e["name"] == "note"
            })
            .await;
        assert_eq!(note["data"], json!({"from": "console"}));
    }
    let note = driver
        .wait_event(
            Duration::from_secs(5),
            "the console's emit on Socket.IO",
            |e| e["client"] == "bob-io" && e["event"] == "receive" && e["name"] == "note",
        )
        .await;
    assert_eq!(note["args"], json!([{"from": "console"}]));
    let closed = driver
        .wait_event(Duration::from_secs(5), "the console's kick", |e| {
            e["client"] == "bob-b" && e["event"] == "disconnect"
        })
        .await;
    assert_eq!(closed["code"], 4501, "{closed}");
    assert_eq!(closed["reason"], "kicked from the console");
    for client in ["alice", "bob-a"] {
        assert!(
            driver.events_of(client, "disconnect").is_empty(),
            "{client} was not selected"
        );
    }
    assert!(
        driver.events_of("alice", "receive").is_empty(),
        "alice was not selected"
    );
    let published = driver
        .wait_event(Duration::from_secs(5), "the console's publish", |e| {
            e["client"] == "alice" && e["event"] == "message"
        })
        .await;
    assert_eq!(published["channel"], "news");
    assert_eq!(published["data"], json!({"headline": "from the console"}));

    let png = std::fs::read(&screenshot).expect("the screenshot was saved");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    println!("console screenshot: {}", screenshot.display());
    // The temp dir goes with the test; SOCKHIVE_TEST_ARTIFACTS keeps a copy.
    if let Ok(keep) = std::env::var("SOCKHIVE_TEST_ARTIFACTS") {
        let kept = Path::new(&keep).join("console.png");
        std::fs::create_dir_all(&keep).expect("create the artifacts dir");
        std::fs::copy(&screenshot, &kept).expect("keep the screenshot");
        println!("console screenshot kept: {}", kept.display());
    }
    driver.shutdown().await;
}
