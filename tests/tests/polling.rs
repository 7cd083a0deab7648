//! Socket.IO over HTTP long-polling with the real `socket.io-client@4` and
//! its default options (polling first, then the upgrade), the real app's
//! session cookie, several workers without sticky sessions, and Engine.IO's
//! own refusals checked with raw HTTP.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use sockhive_tests::app::WebApp;
use sockhive_tests::node::sum_series;
use sockhive_tests::redis::RedisServer;
use sockhive_tests::{http, Driver, Node, NodeBuilder};

const SECRET: &str = "app-session-secret";
const WAIT: Duration = Duration::from_secs(10);

fn io_url(node: &Node) -> String {
    format!("http://{}", node.public)
}

/// The client's default transports.
fn defaults() -> Value {
    json!(["polling", "websocket"])
}

async fn connect(driver: &mut Driver, node: &Node, client: &str, extra: Value) -> Value {
    let mut fields = json!({
        "client": client,
        "url": io_url(node),
        "listen": ["publish", "authenticated"],
    });
    if let (Value::Object(fields), Value::Object(extra)) = (&mut fields, extra) {
        fields.extend(extra);
    }
    driver.ok("io.connect", fields).await
}

/// The `publish` deliveries one client received on `channel`, as their `n`.
fn numbers(driver: &Driver, client: &str, channel: &str) -> Vec<u64> {
    driver
        .events_of(client, "receive")
        .iter()
        .filter(|e| e["name"] == "publish" && e["args"][0]["channel"] == channel)
        .filter_map(|e| e["args"][0]["data"]["n"].as_u64())
        .collect()
}

/// A loopback proxy in front of `upstream` that holds back WebSocket
/// upgrades for `delay` (and passes everything else at once), so a client's
/// switch from polling happens in the middle of what it is doing.
async fn slow_upgrades(upstream: SocketAddr, delay: Duration) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut first = vec![0u8; 16 * 1024];
                let Ok(read) = client.read(&mut first).await else {
                    return;
                };
                first.truncate(read);
                if String::from_utf8_lossy(&first).contains("transport=websocket") {
                    tokio::time::sleep(delay).await;
                }
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                if server.write_all(&first).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn default_options_log_in_by_cookie_over_polling_and_upgrade_without_losing_a_message() {
    let redis = RedisServer::start();
    let app = WebApp::start(&redis.url(), &[("SESSION_SECRETS", SECRET)]);
    let node = NodeBuilder::new(1)
        .args([
            "--session-secret",
            SECRET,
            "--session-redis-url",
            &redis.url(),
        ])
        .start();
    let cookie = app.login("alice", "alice-password").await;
    // Alice's WebSocket takes 1.5 s to open: her stream starts on polling
    // and finishes on the WebSocket.
    let proxy = slow_upgrades(node.public, Duration::from_millis(1500)).await;
    let mut driver = Driver::start().await;
    let connected = driver
        .ok(
            "io.connect",
            json!({
                "client": "alice",
                "url": format!("http://{proxy}"),
                "transports": defaults(),
                "extraHeaders": {"Cookie": cookie},
                "listen": ["publish", "authenticated"],
            }),
        )
        .await;
    assert_eq!(connected["transport"], "polling", "{connected}");
    // The socket is the app's user, told over the transport it started on.
    let told = driver
        .wait_event(WAIT, "authenticated", |e| {
            e["client"] == "alice" && e["event"] == "receive" && e["name"] == "authenticated"
        })
        .await;
    assert_eq!(told["args"][0]["user"]["id"], "u-alice", "{told}");
    let record = node.record(connected["socketId"].as_str().unwrap()).await;
    assert_eq!(record["user"]["id"], "u-alice", "{record}");
    // A second subscriber on a WebSocket sees what alice sends, in order.
    connect(&mut driver, &node, "watcher", json!({})).await;
    for client in ["alice", "watcher"] {
        driver
            .ok(
                "io.emitWithAck",
                json!({"client": client, "event": "subscribe", "args": ["stream"]}),
            )
            .await;
    }
    let burst = driver
        .ok(
            "io.publishBurst",
            json!({"client": "alice", "channel": "stream", "count": 150, "intervalMs": 20}),
        )
        .await;
    assert_eq!(burst["acked"], 150, "{burst}");
    driver
        .wait_event(WAIT, "the upgrade", |e| {
            e["client"] == "alice" && e["event"] == "upgrade"
        })
        .await;
    let expected: Vec<u64> = (1..=150).collect();
    for client in ["alice", "watcher"] {
        driver
            .wait_count(WAIT, "150 deliveries", 150, |e| {
                e["client"] == client && e["event"] == "receive" && e["name"] == "publish"
            })
            .await;
        assert_eq!(numbers(&driver, client, "stream"), expected, "{client}");
    }
    // The stream crossed the switch both ways: alice sent on both transports
    // and received on both.
    let sent = burst["transports"].as_array().unwrap();
    assert!(
        sent.iter().any(|t| t == "polling") && sent.iter().any(|t| t == "websocket"),
        "{burst}"
    );
    let received: Vec<Value> = driver
        .events_of("alice", "receive")
        .into_iter()
        .filter(|e| e["name"] == "publish")
        .map(|e| e["transport"].clone())
        .collect();
    assert!(
        received.contains(&json!("polling")) && received.contains(&json!("websocket")),
        "{received:?}"
    );
    let state = driver.ok("io.state", json!({"client": "alice"})).await;
    assert_eq!(state["transport"], "websocket", "{state}");
    driver.shutdown().await;
}

/// One Engine.IO polling request; the body of the answer.
async fn poll(addr: SocketAddr, method: &str, sid: &str, body: &str) -> String {
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let reply = request(addr, method, &path, &[], body).await;
    assert_eq!(reply.status, 200, "{method} {body}: {}", reply.body);
    reply.body
}

/// A polling session past its CONNECT (`40` posted, its reply fetched): its sid.
async fn connected_session(addr: SocketAddr) -> String {
    let open = request(addr, "GET", "/socket.io/?EIO=4&transport=polling", &[], "").await;
    let sid = sid_of(&open.body);
    assert_eq!(poll(addr, "POST", &sid, "40").await, "ok");
    assert!(poll(addr, "GET", &sid, "").await.starts_with("40{"));
    sid
}

/// The WebSocket a client opens to upgrade session `sid`.
async fn upgrade_socket(
    addr: SocketAddr,
    sid: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket&sid={sid}");
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    ws
}

/// After the switch, polling the session is refused as on the real server.
async fn assert_polling_refused(addr: SocketAddr, sid: &str) {
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let late = request(addr, "GET", &path, &[], "").await;
    assert_eq!(engine_code(&late), (400, json!(3)));
}

/// Exactly what crosses the switch, packet by packet: packets posted before
/// the client's `5` are read before anything sent on the WebSocket, and what
/// the socket wrote while the client had paused polling goes out first on the
/// WebSocket, in order.
#[tokio::test]
async fn nothing_is_lost_or_reordered_across_the_upgrade_in_either_direction() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let node = NodeBuilder::new(1).start();
    let addr = node.public;
    let sid = connected_session(addr).await;
    poll(addr, "POST", &sid, r#"420["subscribe","s"]"#).await;
    assert_eq!(poll(addr, "GET", &sid, "").await, r#"430[{"ok":true}]"#);
    // The probe, while a GET is held: the GET is released with a noop.
    let held_sid = sid.clone();
    let held = tokio::spawn(async move { poll(addr, "GET", &held_sid, "").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ws = upgrade_socket(addr, &sid).await;
    ws.send(Message::text("2probe")).await.unwrap();
    let text = |m: Option<Result<Message, _>>| match m {
        Some(Ok(Message::Text(t))) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    };
    assert_eq!(text(ws.next().await), "3probe");
    assert_eq!(held.await.unwrap(), "6");
    // Paused: two publishes posted, and one from the admin API; their
    // deliveries wait for the socket's next transport.
    let publish = |n: u32| format!(r#"42["publish",{{"channel":"s","data":{{"n":{n}}}}}]"#);
    let both = format!("{}\u{1e}{}", publish(1), publish(2));
    poll(addr, "POST", &sid, &both).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let admin = node
        .admin_post("/api/publish", json!({"channel": "s", "data": {"n": 3}}))
        .await;
    assert_eq!(admin.status, 200, "{}", admin.body);
    tokio::time::sleep(Duration::from_millis(100)).await;
    ws.send(Message::text("5")).await.unwrap();
    ws.send(Message::text(publish(4))).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time");
        let frame = text(frame);
        if let Some(event) = frame.strip_prefix("42") {
            let event: Value = serde_json::from_str(event).unwrap();
            seen.push(event[1]["data"]["n"].as_u64().unwrap());
        }
    }
    assert_eq!(seen, [1, 2, 3, 4]);
    // The session answers polling no more.
    assert_polling_refused(addr, &sid).await;
}

/// The held GET's noop and the WebSocket's `3probe` race on two
/// connections. When the noop wins, the client polls again before it knows
/// the probe succeeded, then pauses and waits for that GET before sending
/// `5`: the GET must come back within the real server's check interval, not
/// after the 25 s ping interval (which stalled every buffered emit; the chat
/// demo's test caught it behind nginx).
#[tokio::test]
async fn a_get_sent_after_the_upgrade_noop_is_released_too() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let node = NodeBuilder::new(1).start();
    let addr = node.public;
    let sid = connected_session(addr).await;
    let held_sid = sid.clone();
    let held = tokio::spawn(async move { poll(addr, "GET", &held_sid, "").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ws = upgrade_socket(addr, &sid).await;
    ws.send(Message::text("2probe")).await.unwrap();
    assert_eq!(held.await.unwrap(), "6");
    // The client has not seen `3probe` yet: it polls again.
    let again = tokio::time::timeout(Duration::from_secs(2), poll(addr, "GET", &sid, ""))
        .await
        .expect("a GET during the upgrade comes back within the check interval");
    assert_eq!(again, "6");
    match ws.next().await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "3probe"),
        other => panic!("expected 3probe, got {other:?}"),
    }
    ws.send(Message::text("5")).await.unwrap();
    ws.send(Message::text(r#"420["subscribe","s"]"#))
        .await
        .unwrap();
    let reply = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("the ack in time");
    match reply {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), r#"430[{"ok":true}]"#),
        other => panic!("expected the ack, got {other:?}"),
    }
    // Switched: polling is refused, not released.
    assert_polling_refused(addr, &sid).await;
}

/// A client that answers the probe and never sends `5`: the probe is closed
/// after the real server's `upgradeTimeout` (10 s), GETs are held again
/// instead of released every 100 ms, and the session goes on over polling.
#[tokio::test]
async fn a_probe_never_switched_to_is_closed_after_the_upgrade_timeout() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let node = NodeBuilder::new(1).start();
    let addr = node.public;
    let sid = connected_session(addr).await;
    let mut ws = upgrade_socket(addr, &sid).await;
    let opened = std::time::Instant::now();
    ws.send(Message::text("2probe")).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "3probe"),
        other => panic!("expected 3probe, got {other:?}"),
    }
    assert_eq!(
        poll(addr, "GET", &sid, "").await,
        "6",
        "released while the probe is open"
    );
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        // Anything but a frame (a close, an error, the end) means closed.
        while let Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) = ws.next().await
        {
        }
    })
    .await;
    assert!(ended.is_ok(), "the probe is closed");
    let took = opened.elapsed();
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(14)).contains(&took),
        "closed after the upgrade timeout, not {took:?}"
    );
    // Polling again, held as usual: the subscribe's ack, not a noop.
    let held_sid = sid.clone();
    let held = tokio::spawn(async move { poll(addr, "GET", &held_sid, "").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !held.is_finished(),
        "a GET is held again after the probe ended"
    );
    poll(addr, "POST", &sid, r#"420["subscribe","s"]"#).await;
    assert_eq!(held.await.unwrap(), r#"430[{"ok":true}]"#);
}

#[tokio::test]
async fn polling_alone_stays_up_through_many_heartbeats_and_carries_channel_messages() {
    // Time-compressed: 40 heartbeats of 100 ms + 300 ms stand for ten
    // minutes at the defaults (25 s + 20 s).
    let node = NodeBuilder::new(1)
        .args([
            "--socketio-ping-interval",
            "100ms",
            "--socketio-ping-timeout",
            "300ms",
        ])
        .start();
    let mut driver = Driver::start().await;
    let connected = connect(
        &mut driver,
        &node,
        "poller",
        json!({"transports": ["polling"]}),
    )
    .await;
    assert_eq!(connected["transport"], "polling");
    driver
        .ok(
            "io.emitWithAck",
            json!({"client": "poller", "event": "subscribe", "args": ["news"]}),
        )
        .await;
    for n in 1..=8u64 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let published = node
            .admin_post("/api/publish", json!({"channel": "news", "data": {"n": n}}))
            .await;
        assert_eq!(published.status, 200, "{}", published.body);
    }
    driver
        .wait_count(WAIT, "8 deliveries", 8, |e| {
            e["client"] == "poller" && e["event"] == "receive" && e["name"] == "publish"
        })
        .await;
    assert_eq!(
        numbers(&driver, "poller", "news"),
        (1..=8).collect::<Vec<_>>()
    );
    let state = driver.ok("io.state", json!({"client": "poller"})).await;
    assert_eq!(
        (state["connected"].clone(), state["transport"].clone()),
        (json!(true), json!("polling"))
    );
    assert!(driver.events_of("poller", "disconnect").is_empty());
    driver.shutdown().await;
}

#[tokio::test]
async fn without_sticky_sessions_every_worker_answers_for_every_session() {
    let node = NodeBuilder::new(2).start();
    let mut driver = Driver::start().await;
    for i in 0..12 {
        let client = format!("c{i}");
        connect(
            &mut driver,
            &node,
            &client,
            json!({"transports": ["polling"]}),
        )
        .await;
        driver
            .ok(
                "io.emitWithAck",
                json!({"client": client, "event": "subscribe", "args": ["all"]}),
            )
            .await;
    }
    let published = node
        .admin_post("/api/publish", json!({"channel": "all", "data": {"n": 1}}))
        .await;
    assert_eq!(published.status, 200, "{}", published.body);
    every_client_hears_one_publish(&driver, "c", 12).await;
    // Both workers own sessions, and requests crossed between them.
    let records = node
        .admin_post("/api/sockets/query", json!({"filter": {}}))
        .await
        .json();
    let workers: std::collections::BTreeSet<u64> = records["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["worker"].as_u64())
        .collect();
    assert_eq!(workers.len(), 2, "{records}");
    driver.shutdown().await;
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> http::Reply {
    let mut text = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for header in headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    text.push_str(body);
    http::raw(addr, text.as_bytes()).await
}

fn engine_code(reply: &http::Reply) -> (u16, Value) {
    (reply.status, reply.json()["code"].clone())
}

#[tokio::test]
async fn engine_io_refusals_are_the_real_servers_and_cors_follows_the_allowed_origin() {
    let node = NodeBuilder::new(1)
        .args([
            "--allowed-origin",
            "http://app.example",
            "--max-payload",
            "2KiB",
        ])
        .start();
    let addr = node.public;
    let base = "/socket.io/?EIO=4&transport=polling";
    assert_eq!(
        engine_code(&request(addr, "GET", "/socket.io/?EIO=4&transport=carrier", &[], "").await),
        (400, json!(0))
    );
    assert_eq!(
        engine_code(&request(addr, "GET", &format!("{base}&sid=nope"), &[], "").await),
        (400, json!(1))
    );
    assert_eq!(
        engine_code(&request(addr, "POST", base, &[], "40").await),
        (400, json!(2))
    );
    assert_eq!(
        engine_code(&request(addr, "GET", "/socket.io/?EIO=3&transport=polling", &[], "").await),
        (400, json!(5))
    );
    // A listed origin gets CORS with credentials; a preflight is answered.
    let origin = "Origin: http://app.example";
    let open = request(addr, "GET", base, &[origin], "").await;
    assert_eq!(open.status, 200, "{}", open.body);
    assert!(
        open.head
            .contains("Access-Control-Allow-Origin: http://app.example"),
        "{}",
        open.head
    );
    assert!(
        open.head.contains("Access-Control-Allow-Credentials: true"),
        "{}",
        open.head
    );
    let handshake: Value = serde_json::from_str(open.body.strip_prefix('0').unwrap()).unwrap();
    assert_eq!(handshake["upgrades"], json!(["websocket"]));
    assert_eq!(handshake["maxPayload"], 2048);
    let sid = handshake["sid"].as_str().unwrap().to_owned();
    let preflight = request(
        addr,
        "OPTIONS",
        &format!("{base}&sid={sid}"),
        &[origin, "Access-Control-Request-Method: POST"],
        "",
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert!(preflight
        .head
        .contains("Access-Control-Allow-Methods: GET, POST, OPTIONS"));
    let refused = request(addr, "GET", base, &["Origin: http://evil.example"], "").await;
    assert_eq!(refused.status, 403);
    // The session takes a CONNECT, answers it on the next GET.
    let polled = format!("{base}&sid={sid}");
    let ok = request(addr, "POST", &polled, &[origin], "40").await;
    assert_eq!((ok.status, ok.body.as_str()), (200, "ok"));
    let connect = request(addr, "GET", &polled, &[origin], "").await;
    assert!(connect.body.starts_with("40{\"sid\":"), "{}", connect.body);
    // Broken framing is a Bad request; a body over --max-payload a 413.
    assert_eq!(
        engine_code(&request(addr, "POST", &polled, &[], "42[\"a\"]\u{1e}\u{1e}").await),
        (400, json!(3))
    );
    let huge = format!("42[\"{}\"]", "x".repeat(4096));
    assert_eq!(request(addr, "POST", &polled, &[], &huge).await.status, 413);
    let metrics = node.metrics().await;
    assert!(
        sum_series(
            &metrics,
            "sockhive_protocol_errors_total{protocol=\"socketio\",reason=\"too_big\"}"
        ) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_polling_socket_logs_in_by_token_and_a_second_get_or_silence_ends_its_session() {
    let node = NodeBuilder::new(1)
        .args([
            "--socketio-ping-interval",
            "200ms",
            "--socketio-ping-timeout",
            "400ms",
        ])
        .start();
    let mut driver = Driver::start().await;
    let token = sockhive_tests::node::sign_token(&json!({"sub": "dora"}));
    for (client, extra) in [
        ("query", json!({"query": {"access_token": token}})),
        ("auth", json!({"auth": {"token": token}})),
    ] {
        let mut fields = json!({"transports": ["polling"]});
        if let (Value::Object(fields), Value::Object(extra)) = (&mut fields, extra) {
            fields.extend(extra);
        }
        let connected = connect(&mut driver, &node, client, fields).await;
        let record = node.record(connected["socketId"].as_str().unwrap()).await;
        assert_eq!(record["user"]["id"], "dora", "{client}: {record}");
    }
    driver.shutdown().await;

    // Raw: a second GET while one is held is a Bad request and ends the session.
    let addr = node.public;
    let open = request(addr, "GET", "/socket.io/?EIO=4&transport=polling", &[], "").await;
    let sid = sid_of(&open.body);
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let held_path = path.clone();
    let held = tokio::spawn(async move { request(addr, "GET", &held_path, &[], "").await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = request(addr, "GET", &path, &[], "").await;
    assert_eq!(engine_code(&second), (400, json!(3)));
    held.await.unwrap();
    // The session is gone soon after (it ended; a silent one would too, at its ping timeout).
    let mut gone = false;
    for _ in 0..40 {
        let reply = request(addr, "GET", &path, &[], "").await;
        if reply.status == 400 && reply.json()["code"] == 1 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the session outlived a protocol violation");
    // A client that never polls again is dropped at its ping timeout.
    let open = request(addr, "GET", "/socket.io/?EIO=4&transport=polling", &[], "").await;
    let silent_path = format!(
        "/socket.io/?EIO=4&transport=polling&sid={}",
        sid_of(&open.body)
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let late = request(addr, "GET", &silent_path, &[], "").await;
    assert_eq!(engine_code(&late), (400, json!(1)), "{}", late.body);
}

/// Two nodes on one Redis, 2 workers each, behind nginx with plain round
/// robin (no `ip_hash`, no cookie stickiness): every polling request may land
/// on any worker of any node, and is answered by the session's owner.
#[tokio::test]
async fn behind_a_balancer_without_stickiness_polling_clients_of_two_nodes_hear_each_other() {
    let redis = RedisServer::start();
    let app = WebApp::start(&redis.url(), &[("SESSION_SECRETS", SECRET)]);
    let node = |id: &str| {
        NodeBuilder::new(2)
            .args([
                "--node-id",
                id,
                "--redis-url",
                &redis.url(),
                "--session-secret",
                SECRET,
            ])
            .start()
    };
    let (a, b) = (node("poll-a"), node("poll-b"));
    // A session of node a, asked for on node b: forwarded through Redis.
    let open = request(
        a.public,
        "GET",
        "/socket.io/?EIO=4&transport=polling",
        &[],
        "",
    )
    .await;
    let sid = sid_of(&open.body);
    assert_eq!(poll(b.public, "POST", &sid, "40").await, "ok");
    assert!(poll(b.public, "GET", &sid, "").await.starts_with("40{"));
    // Its upgrade, sent to node b, is relayed to node a and probes fine.
    {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let stream = tokio::net::TcpStream::connect(b.public).await.unwrap();
        let url = format!(
            "ws://{}/socket.io/?EIO=4&transport=websocket&sid={sid}",
            b.public
        );
        let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
            .await
            .expect("the relayed upgrade in time")
            .expect("101 through node b");
        ws.send(Message::text("2probe")).await.unwrap();
        let answer = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
        assert!(
            matches!(&answer, Some(Ok(Message::Text(t))) if t.as_str() == "3probe"),
            "{answer:?}"
        );
    }
    // A forged owner is nobody's session.
    let forged = format!("{}{}", "0badc0de01", &sid[10..]);
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={forged}");
    assert_eq!(
        engine_code(&request(b.public, "GET", &path, &[], "").await),
        (400, json!(1))
    );

    let nginx = sockhive_tests::nginx::Nginx::start_balancing(
        &[a.public, b.public],
        sockhive_tests::nginx::Balancing::RoundRobin,
    );
    let cookie = app.login("bob", "bob-password").await;
    let mut driver = Driver::start().await;
    let url = format!("http://{}", nginx.listen);
    for i in 0..50 {
        let client = format!("p{i}");
        driver
            .ok(
                "io.connect",
                json!({
                    "client": client,
                    "url": url,
                    "transports": ["polling"],
                    "extraHeaders": {"Cookie": cookie},
                    "listen": ["publish"],
                }),
            )
            .await;
        driver
            .ok(
                "io.emitWithAck",
                json!({"client": client, "event": "subscribe", "args": ["everyone"]}),
            )
            .await;
    }
    let records = a
        .admin_post(
            "/api/sockets/query",
            json!({"filter": {"user.id": "u-bob"}}),
        )
        .await
        .json();
    assert!(
        records["sockets"].as_array().unwrap().len() >= 50,
        "{records}"
    );
    let published = b
        .admin_post(
            "/api/publish",
            json!({"channel": "everyone", "data": {"n": 1}}),
        )
        .await;
    assert_eq!(published.status, 200, "{}", published.body);
    every_client_hears_one_publish(&driver, "p", 50).await;
    // Requests crossed between the nodes (the balancer keeps no client on one).
    let mut crossed = 0.0;
    for node in [&a, &b] {
        crossed += sum_series(
            &node.metrics().await,
            "sockhive_polling_forwards_total{scope=\"node\"}",
        );
    }
    assert!(crossed > 0.0, "no request crossed nodes");
    driver.shutdown().await;
}

/// Clients `{prefix}0..count` each received a `publish`, and none saw a
/// connection error or a disconnect.
async fn every_client_hears_one_publish(driver: &Driver, prefix: &str, count: usize) {
    for i in 0..count {
        let client = format!("{prefix}{i}");
        driver
            .wait_count(WAIT, "a publish", 1, |e| {
                e["client"] == client.as_str() && e["event"] == "receive" && e["name"] == "publish"
            })
            .await;
    }
    let errors: Vec<Value> = driver
        .events()
        .into_iter()
        .filter(|e| e["event"] == "connect_error" || e["event"] == "disconnect")
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}

fn sid_of(open: &str) -> String {
    let handshake: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
    handshake["sid"].as_str().unwrap().to_owned()
}

/// The WebSocket of an upgrade lands on any worker; it is handed to the
/// worker that holds the session (the connection itself moves, through the
/// master), so every client upgrades.
#[tokio::test]
async fn every_upgrade_reaches_the_worker_of_its_session() {
    let node = NodeBuilder::new(2).start();
    let mut driver = Driver::start().await;
    for i in 0..16 {
        connect(
            &mut driver,
            &node,
            &format!("u{i}"),
            json!({"transports": defaults()}),
        )
        .await;
    }
    for i in 0..16 {
        let client = format!("u{i}");
        driver
            .wait_event(WAIT, "the upgrade", |e| {
                e["client"] == client.as_str() && e["event"] == "upgrade"
            })
            .await;
        let state = driver.ok("io.state", json!({"client": client})).await;
        assert_eq!(state["transport"], "websocket", "{state}");
    }
    // With two workers, some of the 16 WebSockets landed on the other one.
    let moved = sum_series(
        &node.metrics().await,
        "sockhive_polling_forwards_total{scope=\"worker\"}",
    );
    assert!(moved > 0.0, "no WebSocket was handed over");
    driver.shutdown().await;
}

/// Lets this test process (and the node it starts, which inherits it) hold
/// a few thousand descriptors where the soft limit is lower.
fn raise_open_files(wanted: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let target = wanted.min(hard);
        if soft < target {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, target, hard);
        }
    }
}

/// 2,000 sessions each holding a GET at once: every GET is answered (by the
/// next ping), a WebSocket client still connects meanwhile, and the worker's
/// memory grows by a bounded amount per held session.
#[tokio::test]
async fn two_thousand_held_gets_are_answered_and_cost_bounded_memory() {
    use futures_util::StreamExt;
    raise_open_files(8192);
    let node = NodeBuilder::new(1)
        .args([
            "--socketio-ping-interval",
            "2s",
            "--socketio-ping-timeout",
            "10s",
        ])
        .start();
    let addr = node.public;
    let before = node.workers_rss_kib();
    let sids: Vec<String> = futures_util::stream::iter(0..2000)
        .map(|_| async move {
            let open = request(addr, "GET", "/socket.io/?EIO=4&transport=polling", &[], "").await;
            sid_of(&open.body)
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let held: Vec<_> = sids
        .iter()
        .map(|sid| {
            let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
            tokio::spawn(async move { request(addr, "GET", &path, &[], "").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let during = node.workers_rss_kib();
    // The node still takes new sockets while 2,000 GETs are held.
    let mut driver = Driver::start().await;
    connect(&mut driver, &node, "ws", json!({})).await;
    driver.shutdown().await;
    let mut answered = 0;
    for get in held {
        let reply = tokio::time::timeout(WAIT, get)
            .await
            .expect("every held GET is answered by the next ping")
            .unwrap();
        if reply.status == 200 && reply.body == "2" {
            answered += 1;
        }
    }
    assert_eq!(answered, 2000);
    let per_session = during.saturating_sub(before) * 1024 / 2000;
    eprintln!("worker RSS: {before} KiB before, {during} KiB with 2,000 held GETs ({per_session} bytes per session)");
    assert!(
        per_session < 32 * 1024,
        "{per_session} bytes per held session"
    );
}

#[tokio::test]
async fn polling_sessions_count_against_max_connections() {
    let node = NodeBuilder::new(1).args(["--max-connections", "1"]).start();
    let first = request(
        node.public,
        "GET",
        "/socket.io/?EIO=4&transport=polling",
        &[],
        "",
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let second = request(
        node.public,
        "GET",
        "/socket.io/?EIO=4&transport=polling",
        &[],
        "",
    )
    .await;
    assert_eq!(second.status, 503, "{}", second.body);
    // Nor does a WebSocket get in while the polling session holds the place.
    let upgrade = http::get(
        node.public,
        "/socketcluster/",
        &[
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ],
    )
    .await;
    assert_eq!(upgrade.status, 503);
}
