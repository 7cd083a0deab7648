//! A socket's core lifecycle, with the real clients: losing auth loses
//! channels, a client that does not read is dropped (and costs the worker
//! bounded memory), an oversized frame's 1009 reaches the client, and names
//! beyond the length limits are refused without being echoed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sockhive_tests::app::WebApp;
use sockhive_tests::node::{ADMIN_TOKEN, AUTH_KEY};
use sockhive_tests::redis::RedisServer;
use sockhive_tests::{eventually, http, Driver, Node, NodeBuilder};

const SECRET: &str = "app-session-secret";
const ROOM: &str = "room:1";

/// A long-lived token from `sockhive token sign`.
fn token(claims: Value) -> String {
    sockhive_tests::node::sign_token(&claims)
}

/// A token that expires `secs` after its whole-second `iat`, i.e. in `secs - 1 .. secs` seconds.
async fn short_token(driver: &mut Driver, claims: Value, secs: u64) -> String {
    driver
        .ok(
            "jwt.sign",
            json!({"payload": claims, "key": AUTH_KEY, "options": {"expiresIn": secs}}),
        )
        .await
        .as_str()
        .unwrap()
        .to_string()
}

/// `sc.connect` that must succeed; every `#publish` frame is reported (`rawPublish`).
async fn sc_connect(
    driver: &mut Driver,
    node: &Node,
    client: &str,
    token: Option<&str>,
    extra: Value,
) -> Value {
    let mut fields =
        json!({"client": client, "url": node.sc_url(), "rawPublish": true, "elide": 1024});
    if let Some(token) = token {
        fields["authToken"] = json!(token);
    }
    if let (Value::Object(fields), Value::Object(extra)) = (&mut fields, extra) {
        fields.extend(extra);
    }
    driver.ok("sc.connect", fields).await
}

/// `io.connect` (websocket transport) that must succeed, listening to the channel events.
async fn io_connect(driver: &mut Driver, node: &Node, client: &str, extra: Value) -> Value {
    let mut fields = json!({
        "client": client,
        "url": format!("ws://{}", node.public),
        "listen": ["publish", "kickout", "deauthenticated", "authenticated"],
        "elide": 1024,
    });
    if let (Value::Object(fields), Value::Object(extra)) = (&mut fields, extra) {
        fields.extend(extra);
    }
    driver.ok("io.connect", fields).await
}

/// A Socket.IO emit with an ack; the ack's arguments.
async fn io_ack(driver: &mut Driver, client: &str, event: &str, args: Value) -> Value {
    driver
        .ok(
            "io.emit",
            json!({"client": client, "event": event, "args": args, "ack": true, "timeoutMs": 5000}),
        )
        .await
}

/// `POST /api/publish`.
async fn admin_publish(node: &Node, channel: &str, data: Value) {
    let reply = node
        .admin_post("/api/publish", json!({"channel": channel, "data": data}))
        .await;
    assert_eq!(reply.status, 200, "admin publish: {}", reply.body);
}

/// The status of `GET /api/sockets/{id}` (200 while the socket lives, 404 once it is gone).
async fn record_status(admin: SocketAddr, id: &str) -> u16 {
    http::get(
        admin,
        &format!("/api/sockets/{id}"),
        &[&format!("Authorization: Bearer {ADMIN_TOKEN}")],
    )
    .await
    .status
}

/// Whether `event` is a delivery of `channel` message number `n` to `client`,
/// whatever the protocol: SocketCluster `message` / raw `#publish` frames,
/// Socket.IO `publish` events.
fn is_delivery(event: &Value, client: &str, channel: &str, n: Option<u64>) -> bool {
    if event["client"] != client {
        return false;
    }
    let (got_channel, data) = match event["event"].as_str() {
        Some("message") | Some("rawPublish") => (&event["channel"], &event["data"]),
        Some("receive") if event["name"] == "publish" => {
            (&event["args"][0]["channel"], &event["args"][0]["data"])
        }
        _ => return false,
    };
    got_channel == channel && n.is_none_or(|n| data["n"] == n)
}

/// Publishes messages `first..first + 3` on `room:1` through the admin API after the
/// kick, waits until `control` has them all, and asserts `kicked` got none:
/// not as a channel message and not even as a raw frame the client dropped.
async fn assert_no_delivery_after_kick(
    driver: &Driver,
    node: &Node,
    kicked: &str,
    control: &str,
    first: u64,
) {
    for n in first..first + 3 {
        admin_publish(node, ROOM, json!({"n": n})).await;
    }
    driver
        .wait_count(
            Duration::from_secs(5),
            "the control subscriber's copies",
            3,
            |e| {
                is_delivery(e, control, ROOM, None) && e["event"] != "rawPublish" && after(e, first)
            },
        )
        .await;
    // Same worker, same fan-out: had the kicked socket been sent them, they would be here.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leaked: Vec<Value> = driver
        .events()
        .into_iter()
        .filter(|e| is_delivery(e, kicked, ROOM, None) && after(e, first))
        .collect();
    assert!(
        leaked.is_empty(),
        "{kicked} still received {ROOM} after losing it: {leaked:#?}"
    );
}

/// Whether a delivery's number is at least `first`.
fn after(event: &Value, first: u64) -> bool {
    let data = if event["event"] == "receive" {
        &event["args"][0]["data"]
    } else {
        &event["data"]
    };
    data["n"].as_u64().is_some_and(|n| n >= first)
}

/// Publishes message `n` and waits until every client in `clients` has it.
async fn publish_and_expect(driver: &Driver, node: &Node, n: u64, clients: &[&str]) {
    admin_publish(node, ROOM, json!({"n": n})).await;
    for client in clients {
        driver
            .wait_event(
                Duration::from_secs(5),
                &format!("{ROOM} #{n} at {client}"),
                |e| is_delivery(e, client, ROOM, Some(n)) && e["event"] != "rawPublish",
            )
            .await;
    }
}

/// A SocketCluster control subscriber of `room:1` that keeps its rights.
async fn sc_control(driver: &mut Driver, node: &Node) {
    let control = token(json!({"sub": "control", "channels": [ROOM]}));
    sc_connect(driver, node, "control", Some(&control), json!({})).await;
    driver
        .ok(
            "sc.subscribe",
            json!({"client": "control", "channel": ROOM}),
        )
        .await;
}

/// A Socket.IO control subscriber of `room:1` that keeps its rights.
async fn io_control(driver: &mut Driver, node: &Node) {
    let control = token(json!({"sub": "control", "channels": [ROOM]}));
    io_connect(driver, node, "control", json!({"auth": {"token": control}})).await;
    assert_eq!(
        io_ack(driver, "control", "subscribe", json!([ROOM])).await,
        json!([{"ok": true}])
    );
}

/// After a kick: `kicked` gets nothing more published on `room:1` (while
/// `control` does) and its record holds no channel.
async fn assert_left(driver: &Driver, node: &Node, kicked: &str, id: &str) {
    assert_no_delivery_after_kick(driver, node, kicked, "control", 100).await;
    assert_channels(node, id, json!([])).await;
}

/// A SocketCluster `alice` logged in with `token`, subscribed to `room:1`, and
/// seen to receive message 1 there (as `control` does); its connect status.
async fn sc_alice_in_room(driver: &mut Driver, node: &Node, token: &str) -> Value {
    let status = sc_connect(driver, node, "alice", Some(token), json!({})).await;
    driver
        .ok("sc.subscribe", json!({"client": "alice", "channel": ROOM}))
        .await;
    publish_and_expect(driver, node, 1, &["alice", "control"]).await;
    status
}

/// Waits for the SocketCluster `kickOut` of `room:1` at `client`.
async fn sc_kick_out(driver: &Driver, client: &str, timeout: Duration) -> Value {
    let kick = driver
        .wait_event(timeout, &format!("kickOut of {ROOM} at {client}"), |e| {
            e["client"] == client && e["event"] == "kickOut"
        })
        .await;
    assert_eq!(kick["channel"], ROOM, "{kick}");
    kick
}

/// Waits for the Socket.IO `kickout` event of `room:1` at `client`.
async fn io_kick_out(driver: &Driver, client: &str, timeout: Duration) -> Value {
    let kick = driver
        .wait_event(timeout, &format!("kickout of {ROOM} at {client}"), |e| {
            e["client"] == client && e["event"] == "receive" && e["name"] == "kickout"
        })
        .await;
    assert_eq!(kick["args"][0]["channel"], ROOM, "{kick}");
    assert!(
        kick["args"][0].get("message").is_some(),
        "kickout carries {{channel, message}}: {kick}"
    );
    kick
}

/// A value for a failure message, cut short (names here can be 900 KB).
fn brief(value: &impl std::fmt::Display) -> String {
    let text = value.to_string();
    if text.len() <= 400 {
        return text;
    }
    let cut: String = text.chars().take(400).collect();
    format!("{cut}... ({} bytes)", text.len())
}

/// The error of an op that must fail, shown briefly if it succeeded.
fn refused(outcome: Result<Value, Value>, what: &str) -> Value {
    match outcome {
        Ok(result) => panic!("{what} was accepted: {}", brief(&result)),
        Err(error) => error,
    }
}

/// Asserts the channels in a socket's admin record.
async fn assert_channels(node: &Node, id: &str, expected: Value) {
    let channels = node.record(id).await["channels"].clone();
    assert!(
        channels == expected,
        "{id} holds {}, expected {expected}",
        brief(&channels)
    );
}

/// The app's users for the logout cases: one whose record grants `room:1`.
fn app_with_channel_user(redis: &RedisServer) -> WebApp {
    let users = json!([{
        "id": "u-dana",
        "username": "dana",
        "password": "dana-password",
        "role": "user",
        "channels": [ROOM],
    }]);
    WebApp::start(
        &redis.url(),
        &[
            ("SESSION_SECRETS", SECRET),
            ("SERIALIZE", "object"),
            ("USERS", &users.to_string()),
        ],
    )
}

fn node_with_sessions(redis: &RedisServer) -> Node {
    NodeBuilder::new(1)
        .args([
            "--session-secret",
            SECRET,
            "--session-redis-url",
            &redis.url(),
            "--channel-auth",
            "claims",
        ])
        .start()
}

// ---------------------------------------------------------------- losing auth loses channels

#[tokio::test]
async fn a_protected_channel_is_left_when_the_token_expires() {
    let node = NodeBuilder::new(1)
        .args(["--channel-auth", "claims", "--jwt-leeway", "0s"])
        .start();
    let mut driver = Driver::start().await;
    sc_control(&mut driver, &node).await;
    let short = short_token(&mut driver, json!({"sub": "alice", "channels": [ROOM]}), 3).await;
    let status = sc_alice_in_room(&mut driver, &node, &short).await;
    assert_eq!(status["isAuthenticated"], true, "{status}");

    let kick = sc_kick_out(&driver, "alice", Duration::from_secs(6)).await;
    eprintln!("kickOut at expiry: {kick}");
    driver
        .wait_event(Duration::from_secs(3), "deauthenticate at expiry", |e| {
            e["client"] == "alice" && e["event"] == "deauthenticate"
        })
        .await;
    assert_eq!(
        driver.ok("sc.state", json!({"client": "alice"})).await["authState"],
        "unauthenticated"
    );
    assert_left(&driver, &node, "alice", status["id"].as_str().unwrap()).await;
    driver.shutdown().await;
}

#[tokio::test]
async fn a_protected_channel_is_left_when_the_client_removes_its_token() {
    let node = NodeBuilder::new(1)
        .args(["--channel-auth", "claims"])
        .start();
    let mut driver = Driver::start().await;
    sc_control(&mut driver, &node).await;
    let alice = token(json!({"sub": "alice", "channels": [ROOM]}));
    let status = sc_alice_in_room(&mut driver, &node, &alice).await;

    driver
        .ok("sc.deauthenticate", json!({"client": "alice"}))
        .await;
    let kick = sc_kick_out(&driver, "alice", Duration::from_secs(3)).await;
    eprintln!("kickOut after #removeAuthToken: {kick}");
    assert_left(&driver, &node, "alice", status["id"].as_str().unwrap()).await;
    driver.shutdown().await;
}

#[tokio::test]
async fn a_protected_channel_is_left_when_the_socket_reauthenticates_without_it() {
    let node = NodeBuilder::new(1)
        .args(["--channel-auth", "claims"])
        .start();
    let mut driver = Driver::start().await;
    sc_control(&mut driver, &node).await;
    let alice = token(json!({"sub": "alice", "channels": [ROOM]}));
    let status = sc_alice_in_room(&mut driver, &node, &alice).await;
    let id = status["id"].as_str().unwrap().to_string();

    // A new token that still grants the channel (by prefix) keeps it.
    let still = token(json!({"sub": "alice", "channels": ["room:*"]}));
    let reply = driver
        .ok(
            "sc.authenticate",
            json!({"client": "alice", "token": still}),
        )
        .await;
    assert_eq!(reply["isAuthenticated"], true, "{reply}");
    publish_and_expect(&driver, &node, 2, &["alice", "control"]).await;
    assert!(
        driver.events_of("alice", "kickOut").is_empty(),
        "a token that still lists the channel keeps it: {:#?}",
        driver.events_of("alice", "kickOut")
    );
    assert_channels(&node, &id, json!([ROOM])).await;

    // A token for a user without the channel loses it.
    let other = token(json!({"sub": "mallory", "channels": ["room:2"]}));
    let reply = driver
        .ok(
            "sc.authenticate",
            json!({"client": "alice", "token": other}),
        )
        .await;
    assert_eq!(reply["isAuthenticated"], true, "{reply}");
    let kick = sc_kick_out(&driver, "alice", Duration::from_secs(3)).await;
    eprintln!("kickOut after #authenticate without rights: {kick}");
    assert_left(&driver, &node, "alice", &id).await;
    driver.shutdown().await;
}

#[tokio::test]
async fn a_protected_channel_is_left_when_the_user_logs_out_of_the_web_app() {
    let redis = RedisServer::start();
    let app = app_with_channel_user(&redis);
    let node = node_with_sessions(&redis);
    let cookie = app.login("dana", "dana-password").await;
    let mut driver = Driver::start().await;
    sc_control(&mut driver, &node).await;
    let status = sc_connect(
        &mut driver,
        &node,
        "dana",
        None,
        json!({"headers": {"Cookie": cookie}}),
    )
    .await;
    let minted = driver
        .wait_event(Duration::from_secs(5), "the session's token", |e| {
            e["client"] == "dana" && e["event"] == "authenticate" && e["authToken"].is_object()
        })
        .await;
    eprintln!("token minted for the cookie login: {}", minted["authToken"]);
    let id = status["id"].as_str().unwrap().to_string();
    let subscribed = driver
        .call("sc.subscribe", json!({"client": "dana", "channel": ROOM}))
        .await;
    assert!(
        subscribed.is_ok(),
        "the user record's channels grant {ROOM} to the cookie login: {subscribed:?}"
    );
    publish_and_expect(&driver, &node, 1, &["dana", "control"]).await;

    let started = Instant::now();
    app.logout(&cookie).await;
    let kick = sc_kick_out(&driver, "dana", Duration::from_secs(3)).await;
    eprintln!(
        "kickOut {:?} after the web logout: {kick}",
        started.elapsed()
    );
    assert_left(&driver, &node, "dana", &id).await;
    driver.shutdown().await;
}

#[tokio::test]
async fn a_socketio_protected_channel_is_left_when_the_token_expires() {
    let node = NodeBuilder::new(1)
        .args(["--channel-auth", "claims", "--jwt-leeway", "0s"])
        .start();
    let mut driver = Driver::start().await;
    io_control(&mut driver, &node).await;
    let short = short_token(&mut driver, json!({"sub": "alice", "channels": [ROOM]}), 3).await;
    let connected = io_connect(
        &mut driver,
        &node,
        "alice",
        json!({"auth": {"token": short}}),
    )
    .await;
    let id = connected["socketId"].as_str().unwrap().to_string();
    assert_eq!(
        io_ack(&mut driver, "alice", "subscribe", json!([ROOM])).await,
        json!([{"ok": true}])
    );
    publish_and_expect(&driver, &node, 1, &["alice", "control"]).await;

    let kick = io_kick_out(&driver, "alice", Duration::from_secs(6)).await;
    eprintln!("kickout at expiry: {kick}");
    assert_left(&driver, &node, "alice", &id).await;
    // Still connected, only without the channel.
    assert_eq!(
        driver.ok("io.state", json!({"client": "alice"})).await["connected"],
        true
    );
    driver.shutdown().await;
}

#[tokio::test]
async fn a_socketio_protected_channel_is_left_when_the_user_logs_out_of_the_web_app() {
    let redis = RedisServer::start();
    let app = app_with_channel_user(&redis);
    let node = node_with_sessions(&redis);
    let cookie = app.login("dana", "dana-password").await;
    let mut driver = Driver::start().await;
    io_control(&mut driver, &node).await;
    let connected = io_connect(
        &mut driver,
        &node,
        "dana",
        json!({"extraHeaders": {"Cookie": cookie}}),
    )
    .await;
    let id = connected["socketId"].as_str().unwrap().to_string();
    let ack = io_ack(&mut driver, "dana", "subscribe", json!([ROOM])).await;
    assert_eq!(
        ack,
        json!([{"ok": true}]),
        "the user record's channels grant {ROOM} to the cookie login"
    );
    publish_and_expect(&driver, &node, 1, &["dana", "control"]).await;

    let started = Instant::now();
    app.logout(&cookie).await;
    let kick = io_kick_out(&driver, "dana", Duration::from_secs(3)).await;
    eprintln!(
        "kickout {:?} after the web logout: {kick}",
        started.elapsed()
    );
    assert_left(&driver, &node, "dana", &id).await;
    driver.shutdown().await;
}

// ---------------------------------------------------------------- a client that does not read

/// The summed VmRSS of the node's workers, in KiB.
fn workers_rss_kib(node: &Node) -> u64 {
    node.worker_pids()
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

/// Polls the admin API until socket `id` is gone; the time since `since`,
/// or `None` if it is still there after `limit`.
fn watch_until_gone(
    admin: SocketAddr,
    id: String,
    since: Instant,
    limit: Duration,
) -> tokio::task::JoinHandle<Option<Duration>> {
    tokio::spawn(async move {
        while since.elapsed() < limit {
            if record_status(admin, &id).await == 404 {
                return Some(since.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    })
}

/// The pause must hold: a paused client's socket reads next to nothing more.
async fn assert_still_paused(driver: &mut Driver, op: &str, client: &str, at_pause: &Value) {
    let now = driver.ok(op, json!({"client": client})).await;
    let grew = now["bytesRead"].as_u64().unwrap() - at_pause["bytesRead"].as_u64().unwrap();
    eprintln!("{client} read {grew} bytes while paused");
    assert!(
        grew < 1 << 20,
        "{client} kept reading while paused ({grew} bytes): {now}"
    );
}

#[tokio::test]
async fn a_socketcluster_client_that_stops_reading_is_dropped_within_the_ping_timeout() {
    let node = NodeBuilder::new(1)
        .args(["--ping-interval", "1s", "--ping-timeout", "3s"])
        .start();
    let mut driver = Driver::start().await;
    sc_connect(&mut driver, &node, "polite", None, json!({})).await;
    let status = sc_connect(&mut driver, &node, "slow", None, json!({})).await;
    let id = status["id"].as_str().unwrap().to_string();
    assert_eq!(status["pingTimeout"], 3000);

    // Thirty large invokes go out, then the client stops reading.
    driver
        .ok(
            "sc.invokeMany",
            json!({"client": "slow", "event": "upload", "count": 30, "bytes": 200_000}),
        )
        .await;
    let at_pause = driver
        .ok("sc.pauseReading", json!({"client": "slow"}))
        .await;
    let paused = Instant::now();
    let gone = watch_until_gone(node.admin, id.clone(), paused, Duration::from_secs(10));
    // The server has plenty to write to it: its writes back up.
    let pad = "e".repeat(200_000);
    for n in 0..30 {
        let reply = node
            .admin_post(
                "/api/sockets/emit",
                json!({"filter": {"id": id}, "event": "bulk", "data": {"n": n, "pad": pad}}),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        if reply.json()["delivered"] == 0 {
            break; // already dropped
        }
    }
    let elapsed = gone
        .await
        .unwrap()
        .expect("the paused client is still registered 10 s after it stopped reading");
    eprintln!("a non-reading SocketCluster client was dropped {elapsed:?} after it paused");
    assert!(
        elapsed <= Duration::from_millis(4500),
        "dropped after {elapsed:?}, more than ping-timeout (3 s) + 1 s"
    );
    assert_still_paused(&mut driver, "sc.readStats", "slow", &at_pause).await;
    // The record goes at once; the connection itself (its fd and gauge) may
    // take the close grace and the lingering close, but not forever.
    let released = eventually(
        Duration::from_secs(10),
        "the dropped connection released (sockhive_connections back to 1)",
        async || (node.metric("sockhive_connections").await == 1.0).then(|| paused.elapsed()),
    )
    .await;
    eprintln!("its connection was released {released:?} after it paused");
    assert_eq!(
        driver.ok("sc.state", json!({"client": "polite"})).await["state"],
        "open",
        "the client that reads stays"
    );
    // What the client sees once it reads again: the server ended it, not the client (4000).
    driver
        .ok("sc.resumeReading", json!({"client": "slow"}))
        .await;
    let closed = driver
        .wait_event(Duration::from_secs(5), "the dropped client's close", |e| {
            e["client"] == "slow" && (e["event"] == "disconnect" || e["event"] == "close")
        })
        .await;
    eprintln!("the dropped client saw: {closed}");
    assert_ne!(
        closed["code"], 4000,
        "the client did not time out by itself"
    );
    driver.shutdown().await;
}

#[tokio::test]
async fn a_paused_subscriber_of_a_busy_channel_is_dropped_and_the_others_get_every_message() {
    let node = NodeBuilder::new(1)
        .args(["--ping-interval", "1s", "--ping-timeout", "3s"])
        .start();
    let mut driver = Driver::start().await;
    let mut slow_id = String::new();
    for client in ["a", "b", "slow"] {
        let status = sc_connect(&mut driver, &node, client, None, json!({})).await;
        driver
            .ok("sc.subscribe", json!({"client": client, "channel": "busy"}))
            .await;
        slow_id = status["id"].as_str().unwrap().to_string();
    }
    sc_connect(&mut driver, &node, "publisher", None, json!({})).await;
    let rss_before = workers_rss_kib(&node);

    let at_pause = driver
        .ok("sc.pauseReading", json!({"client": "slow"}))
        .await;
    let paused = Instant::now();
    let gone = watch_until_gone(node.admin, slow_id, paused, Duration::from_secs(20));
    const COUNT: u64 = 200;
    let pad = "p".repeat(100_000);
    let publishing = Instant::now();
    for n in 0..COUNT {
        driver
            .ok(
                "sc.publish",
                json!({"client": "publisher", "channel": "busy", "data": {"n": n, "pad": pad}}),
            )
            .await;
    }
    eprintln!("{COUNT} x 100 KB published in {:?}", publishing.elapsed());
    for client in ["a", "b"] {
        let got = driver
            .wait_count(
                Duration::from_secs(20),
                &format!("{COUNT} messages at {client}"),
                COUNT as usize,
                |e| e["client"] == client && e["event"] == "message" && e["channel"] == "busy",
            )
            .await;
        let order: Vec<u64> = got
            .iter()
            .map(|e| e["data"]["n"].as_u64().unwrap())
            .collect();
        assert_eq!(
            order,
            (0..COUNT).collect::<Vec<u64>>(),
            "{client} got every message, in order"
        );
        assert_eq!(got[0]["data"]["pad"], json!({"$elided": 100_000}));
    }
    let rss_after = workers_rss_kib(&node);
    let grown = rss_after.saturating_sub(rss_before);
    eprintln!(
        "worker RSS: {rss_before} KiB before, {rss_after} KiB after {COUNT} x 100 KB to a paused subscriber (+{grown} KiB)"
    );
    let elapsed = gone
        .await
        .unwrap()
        .expect("the paused subscriber is still registered 20 s after it stopped reading");
    eprintln!("the paused subscriber was dropped {elapsed:?} after it paused");
    assert!(
        elapsed <= Duration::from_millis(4500),
        "dropped after {elapsed:?}, more than ping-timeout (3 s) + 1 s"
    );
    assert_still_paused(&mut driver, "sc.readStats", "slow", &at_pause).await;
    assert!(
        grown < 64 * 1024,
        "the worker's RSS grew by {grown} KiB (>= 64 MiB) serving a client that does not read"
    );
    assert!(driver.events_of("a", "disconnect").is_empty());
    assert!(driver.events_of("b", "disconnect").is_empty());
    driver.shutdown().await;
}

#[tokio::test]
async fn a_socketio_client_that_stops_reading_is_dropped_within_ping_interval_and_timeout() {
    let node = NodeBuilder::new(1)
        .args([
            "--socketio-ping-interval",
            "1s",
            "--socketio-ping-timeout",
            "2s",
        ])
        .start();
    let mut driver = Driver::start().await;
    let mut slow_id = String::new();
    for client in ["reader", "slow"] {
        let connected = io_connect(&mut driver, &node, client, json!({})).await;
        assert_eq!(
            io_ack(&mut driver, client, "subscribe", json!(["busy"])).await,
            json!([{"ok": true}])
        );
        slow_id = connected["socketId"].as_str().unwrap().to_string();
    }
    io_connect(&mut driver, &node, "publisher", json!({})).await;

    let at_pause = driver
        .ok("io.pauseReading", json!({"client": "slow"}))
        .await;
    let paused = Instant::now();
    let gone = watch_until_gone(node.admin, slow_id, paused, Duration::from_secs(20));
    const COUNT: u64 = 100;
    let pad = "p".repeat(100_000);
    for n in 0..COUNT {
        let ack = io_ack(
            &mut driver,
            "publisher",
            "publish",
            json!([{"channel": "busy", "data": {"n": n, "pad": pad}}]),
        )
        .await;
        assert_eq!(ack, json!([{"ok": true}]), "publish #{n}");
    }
    let got = driver
        .wait_count(
            Duration::from_secs(20),
            "every message at the reader",
            COUNT as usize,
            |e| is_delivery(e, "reader", "busy", None),
        )
        .await;
    let order: Vec<u64> = got
        .iter()
        .map(|e| e["args"][0]["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(order, (0..COUNT).collect::<Vec<u64>>(), "in order");
    let elapsed = gone
        .await
        .unwrap()
        .expect("the paused Socket.IO client is still registered 20 s after it stopped reading");
    eprintln!("a non-reading Socket.IO client was dropped {elapsed:?} after it paused");
    assert!(
        elapsed <= Duration::from_millis(4500),
        "dropped after {elapsed:?}, more than ping interval (1 s) + timeout (2 s) + 1 s"
    );
    assert_still_paused(&mut driver, "io.readStats", "slow", &at_pause).await;
    assert_eq!(
        driver.ok("io.state", json!({"client": "reader"})).await["connected"],
        true
    );
    driver.shutdown().await;
}

// ---------------------------------------------------------------- 1009 reaches the client

/// Waits for a raw ws client's next text message that satisfies `matches`.
async fn ws_message(driver: &Driver, client: &str, what: &str, matches: impl Fn(&str) -> bool) {
    driver
        .wait_event(Duration::from_secs(5), what, |e| {
            e["client"] == client
                && e["event"] == "ws.message"
                && e["data"].as_str().is_some_and(&matches)
        })
        .await;
}

/// Sends a 10 MiB text frame and returns the close code the client saw.
async fn close_code_after_huge_frame(driver: &mut Driver, client: &str) -> Value {
    driver
        .ok("ws.send", json!({"client": client, "bytes": 10 << 20}))
        .await;
    let closed = driver
        .wait_event(Duration::from_secs(8), &format!("{client} closed"), |e| {
            e["client"] == client && e["event"] == "ws.close"
        })
        .await;
    closed["code"].clone()
}

#[tokio::test]
async fn a_ten_mebibyte_frame_gets_a_1009_close_the_client_sees_every_time() {
    let node = Node::start(1);
    let mut driver = Driver::start().await;
    for round in 0..10 {
        let client = format!("sc{round}");
        driver
            .ok(
                "ws.connect",
                json!({"client": client, "url": node.sc_url()}),
            )
            .await;
        driver
            .ok(
                "ws.send",
                json!({"client": client, "text": r##"{"event":"#handshake","data":{"authToken":null},"cid":1}"##}),
            )
            .await;
        ws_message(&driver, &client, "the #handshake reply", |text| {
            text.contains("\"rid\":1")
        })
        .await;
        let code = close_code_after_huge_frame(&mut driver, &client).await;
        let events: Vec<Value> = driver
            .events()
            .into_iter()
            .filter(|e| e["client"] == client.as_str() && e["event"] != "ws.message")
            .collect();
        assert_eq!(
            code, 1009,
            "round {round}: the client saw {code}, not 1009: {events:#?}"
        );
    }

    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", node.public);
    driver
        .ok("ws.connect", json!({"client": "io", "url": url}))
        .await;
    ws_message(&driver, "io", "the Engine.IO open packet", |text| {
        text.starts_with('0')
    })
    .await;
    driver
        .ok("ws.send", json!({"client": "io", "text": "40"}))
        .await;
    ws_message(&driver, "io", "the CONNECT reply", |text| {
        text.starts_with("40")
    })
    .await;
    let code = close_code_after_huge_frame(&mut driver, "io").await;
    let events: Vec<Value> = driver
        .events()
        .into_iter()
        .filter(|e| e["client"] == "io" && e["event"] != "ws.message")
        .collect();
    assert_eq!(code, 1009, "Socket.IO: {events:#?}");
    let metrics = node.metrics().await;
    assert!(
        sockhive_tests::node::sum_series(
            &metrics,
            "sockhive_protocol_errors_total{reason=\"too_big\"}"
        ) >= 11.0,
        "{metrics}"
    );
    driver.shutdown().await;
}

// ---------------------------------------------------------------- name limits

/// A name of exactly `len` bytes starting with `prefix`.
fn name_of(prefix: &str, len: usize) -> String {
    format!("{prefix}{}", "x".repeat(len - prefix.len()))
}

/// The error is `InvalidArgumentsError` and does not echo `name` in full.
fn assert_invalid_arguments(error: &Value, name: &str, what: &str) {
    assert_eq!(
        error["name"],
        "InvalidArgumentsError",
        "{what}: {}",
        brief(error)
    );
    assert!(
        !error.to_string().contains(name),
        "{what}: the error echoes the whole {}-byte name: {}",
        name.len(),
        brief(error)
    );
}

#[tokio::test]
async fn names_longer_than_the_limits_are_refused_with_invalid_arguments() {
    let node = NodeBuilder::new(1)
        .args(["--max-channel-length", "32", "--max-event-length", "32"])
        .start();
    let mut driver = Driver::start().await;
    let long_channel = name_of("room:", 33);
    let fits_channel = name_of("room:", 32);
    let long_event = name_of("proc:", 33);
    let fits_event = name_of("proc:", 32);

    // SocketCluster.
    let status = sc_connect(&mut driver, &node, "sc", None, json!({})).await;
    let sc_id = status["id"].as_str().unwrap().to_string();
    let error = refused(
        driver
            .call(
                "sc.subscribe",
                json!({"client": "sc", "channel": long_channel}),
            )
            .await,
        "a 33-byte channel is refused",
    );
    assert_invalid_arguments(&error, &long_channel, "SocketCluster #subscribe");
    driver
        .ok(
            "sc.subscribe",
            json!({"client": "sc", "channel": fits_channel}),
        )
        .await;
    let error = refused(
        driver
            .call(
                "sc.publish",
                json!({"client": "sc", "channel": long_channel, "data": 1}),
            )
            .await,
        "a publish to a 33-byte channel is refused",
    );
    assert_invalid_arguments(&error, &long_channel, "SocketCluster #publish");
    let error = refused(
        driver
            .call(
                "sc.invoke",
                json!({"client": "sc", "event": long_event, "data": 1, "timeoutMs": 5000}),
            )
            .await,
        "a 33-byte procedure is refused",
    );
    assert_invalid_arguments(&error, &long_event, "SocketCluster invoke");
    let error = refused(
        driver
            .call(
                "sc.invoke",
                json!({"client": "sc", "event": fits_event, "data": 1, "timeoutMs": 5000}),
            )
            .await,
        "no such procedure",
    );
    assert_eq!(error["name"], "UnknownProcedureError", "{error}");
    assert_channels(&node, &sc_id, json!([fits_channel])).await;

    // Socket.IO.
    let connected = io_connect(&mut driver, &node, "io", json!({})).await;
    let io_id = connected["socketId"].as_str().unwrap().to_string();
    let ack = io_ack(&mut driver, "io", "subscribe", json!([long_channel])).await;
    assert_invalid_arguments(&ack[0]["error"], &long_channel, "Socket.IO subscribe");
    let ack = io_ack(
        &mut driver,
        "io",
        "publish",
        json!([{"channel": long_channel, "data": 1}]),
    )
    .await;
    assert_invalid_arguments(&ack[0]["error"], &long_channel, "Socket.IO publish");
    let ack = io_ack(&mut driver, "io", &long_event, json!([1])).await;
    assert_invalid_arguments(&ack[0]["error"], &long_event, "Socket.IO event with an ack");
    let ack = io_ack(&mut driver, "io", &fits_event, json!([1])).await;
    assert_eq!(ack[0]["error"]["name"], "UnknownProcedureError", "{ack}");
    assert_channels(&node, &io_id, json!([])).await;
    driver.shutdown().await;
}

#[tokio::test]
async fn a_900_kb_channel_name_is_refused_and_never_recorded() {
    let node = Node::start(1);
    let mut driver = Driver::start().await;
    let huge = name_of("room:", 900_000);

    let status = sc_connect(&mut driver, &node, "sc", None, json!({})).await;
    let sc_id = status["id"].as_str().unwrap().to_string();
    let error = refused(
        driver
            .call("sc.subscribe", json!({"client": "sc", "channel": huge}))
            .await,
        "a 900 KB channel name is refused",
    );
    assert_invalid_arguments(&error, &huge, "SocketCluster #subscribe");
    let error = refused(
        driver
            .call(
                "sc.publish",
                json!({"client": "sc", "channel": huge, "data": 1}),
            )
            .await,
        "a publish to a 900 KB channel name is refused",
    );
    assert_invalid_arguments(&error, &huge, "SocketCluster #publish");
    assert_channels(&node, &sc_id, json!([])).await;

    let connected = io_connect(&mut driver, &node, "io", json!({})).await;
    let io_id = connected["socketId"].as_str().unwrap().to_string();
    let ack = io_ack(&mut driver, "io", "subscribe", json!([huge])).await;
    assert_invalid_arguments(&ack[0]["error"], &huge, "Socket.IO subscribe");
    assert_channels(&node, &io_id, json!([])).await;

    // The admin API refuses names over the limits too, without echoing them.
    let long = name_of("room:", 257);
    let reply = node
        .admin_post("/api/publish", json!({"channel": long, "data": 1}))
        .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.contains("max-channel-length") && !reply.body.contains(&long));
    let event = name_of("event:", 257);
    let reply = node
        .admin_post(
            "/api/sockets/emit",
            json!({"filter": {}, "event": event, "data": 1}),
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.contains("max-event-length") && !reply.body.contains(&event));

    // Nobody holds it cluster-wide either.
    let found = node
        .admin_post("/api/sockets/query", json!({"filter": {}}))
        .await
        .json();
    for socket in found["sockets"].as_array().unwrap() {
        assert!(
            socket["channels"] == json!([]),
            "{} holds {}",
            socket["id"],
            brief(&socket["channels"])
        );
    }
    driver.shutdown().await;
}

// ---------------------------------------------------------------- channel rules

/// The contract's example: a private channel per user, admin-only announcements.
const RULES: &str = r#"
[channels]
channel_auth = "rules"

[[channels.rule]]
pattern = "user:{id}"
subscribe = { "user.id" = "{id}" }
publish = false

[[channels.rule]]
pattern = "news:*"
subscribe = { "logged_in" = true }
publish = { "user.role" = "admin" }
"#;

#[tokio::test]
async fn channel_rules_give_cookie_logins_a_private_channel_until_they_log_out() {
    let redis = RedisServer::start();
    let app = WebApp::start(&redis.url(), &[("SESSION_SECRETS", SECRET)]);
    let dir = sockhive_tests::tempdir::TempDir::new("rules");
    let config = dir.write("sockhive.toml", RULES);
    let node = NodeBuilder::new(1)
        .args([
            "--config",
            config.to_str().unwrap(),
            "--session-secret",
            SECRET,
            "--session-redis-url",
            &redis.url(),
            "--user-lookup",
            "redis:user:{id}",
        ])
        .start();
    let cookie = app.login("alice", "alice-password").await;
    let mut driver = Driver::start().await;
    let status = sc_connect(
        &mut driver,
        &node,
        "sc-alice",
        None,
        json!({"headers": {"Cookie": cookie}}),
    )
    .await;
    let sc_id = status["id"].as_str().unwrap().to_string();
    driver
        .ok(
            "sc.subscribe",
            json!({"client": "sc-alice", "channel": "user:u-alice"}),
        )
        .await;
    let error = refused(
        driver
            .call(
                "sc.subscribe",
                json!({"client": "sc-alice", "channel": "user:u-bob"}),
            )
            .await,
        "another user's private channel",
    );
    assert_eq!(error["name"], "ChannelForbiddenError", "{error}");
    driver
        .ok(
            "sc.subscribe",
            json!({"client": "sc-alice", "channel": "news:today"}),
        )
        .await;
    // Alice is an admin in the app's user records: she may announce.
    driver
        .ok(
            "sc.publish",
            json!({"client": "sc-alice", "channel": "news:today", "data": 1}),
        )
        .await;

    let connected = io_connect(
        &mut driver,
        &node,
        "io-alice",
        json!({"extraHeaders": {"Cookie": cookie}}),
    )
    .await;
    let io_id = connected["socketId"].as_str().unwrap().to_string();
    assert_eq!(
        io_ack(
            &mut driver,
            "io-alice",
            "subscribe",
            json!(["user:u-alice"])
        )
        .await,
        json!([{"ok": true}])
    );
    let ack = io_ack(&mut driver, "io-alice", "subscribe", json!(["user:u-bob"])).await;
    assert_eq!(ack[0]["error"]["name"], "ChannelForbiddenError", "{ack}");

    // Logging out in the web app takes the private channel away on both
    // protocols; the rules are applied again to the anonymous sockets.
    app.logout(&cookie).await;
    driver
        .wait_event(
            Duration::from_secs(3),
            "kickOut of the private channel",
            |e| {
                e["client"] == "sc-alice"
                    && e["event"] == "kickOut"
                    && e["channel"] == "user:u-alice"
            },
        )
        .await;
    driver
        .wait_event(
            Duration::from_secs(3),
            "kickout of the private channel",
            |e| {
                e["client"] == "io-alice"
                    && e["event"] == "receive"
                    && e["name"] == "kickout"
                    && e["args"][0]["channel"] == "user:u-alice"
            },
        )
        .await;
    eventually(
        Duration::from_secs(3),
        "the records to follow",
        async || {
            let sc = node.record(&sc_id).await["channels"].clone();
            let io = node.record(&io_id).await["channels"].clone();
            (sc == json!([]) && io == json!([])).then_some(())
        },
    )
    .await;
    driver.shutdown().await;
}
