//! Socket.IO acceptance with the real `socket.io-client@4` (websocket
//! transport), the real express/passport app, and a raw client for the input
//! the npm client never sends.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sockhive_tests::app::WebApp;
use sockhive_tests::node::{sum_series, AUTH_KEY};
use sockhive_tests::redis::RedisServer;
use sockhive_tests::ws::{self, RawWs};
use sockhive_tests::{http, Driver, Node, NodeBuilder};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "app-session-secret";
const WAIT: Duration = Duration::from_secs(5);

fn token(claims: Value) -> String {
    sockhive_tests::node::sign_token(&claims)
}

fn io_url(node: &Node) -> String {
    format!("ws://{}", node.public)
}

/// `io.connect` with `transports: ['websocket']` (the driver's default) plus `extra` fields.
async fn io_connect(
    driver: &mut Driver,
    node: &Node,
    client: &str,
    extra: Value,
) -> Result<Value, Value> {
    let mut fields = json!({"client": client, "url": io_url(node), "listen": ["publish", "note", "deauthenticated", "authenticated"]});
    if let (Value::Object(fields), Value::Object(extra)) = (&mut fields, extra) {
        fields.extend(extra);
    }
    driver.call("io.connect", fields).await
}

async fn emit_ack(driver: &mut Driver, client: &str, event: &str, args: Value) -> Value {
    driver
        .ok(
            "io.emit",
            json!({"client": client, "event": event, "args": args, "ack": true, "timeoutMs": 3000}),
        )
        .await
}

async fn record_of(node: &Node, id: &str) -> Value {
    node.record(id).await
}

fn metric_of(metrics: &str, reason: &str) -> f64 {
    sum_series(
        metrics,
        &format!("sockhive_protocol_errors_total{{protocol=\"socketio\",reason=\"{reason}\"}}"),
    )
}

/// Opens a raw Engine.IO connection; returns it with the open packet's JSON.
async fn raw_open(addr: SocketAddr) -> (RawWs, Value) {
    raw_open_at(addr, "/socket.io/?EIO=4&transport=websocket").await
}

async fn raw_open_at(addr: SocketAddr, path: &str) -> (RawWs, Value) {
    let mut ws = ws::connect(addr, path).await;
    let open = next_text(&mut ws).await.expect("the open packet");
    let handshake = open
        .strip_prefix('0')
        .unwrap_or_else(|| panic!("open packet: {open}"));
    (ws, serde_json::from_str(handshake).unwrap())
}

/// A raw connection that completed CONNECT to `/`; returns it with the socket id.
async fn raw_connected(addr: SocketAddr) -> (RawWs, String) {
    let (mut ws, _) = raw_open(addr).await;
    ws.send(Message::text("40")).await.unwrap();
    let reply = next_text(&mut ws).await.expect("the CONNECT reply");
    let sid: Value = serde_json::from_str(reply.strip_prefix("40").unwrap()).unwrap();
    (ws, sid["sid"].as_str().unwrap().to_string())
}

/// The next text frame other than a ping; `None` on close or after 5 s.
async fn next_text(ws: &mut RawWs) -> Option<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.ok()?? {
            Ok(Message::Text(text)) if text.as_str() == "2" => continue,
            Ok(Message::Text(text)) => return Some(text.to_string()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn clients_connect_with_or_without_tokens_and_acks_round_trip() {
    let node = Node::start(2);
    let mut driver = Driver::start().await;
    let anonymous = io_connect(&mut driver, &node, "anon", json!({}))
        .await
        .unwrap();
    let record = record_of(&node, anonymous["socketId"].as_str().unwrap()).await;
    assert_eq!(record["protocol"], "socketio");
    assert_eq!(record["logged_in"], false);
    assert_eq!(record["user"], Value::Null);

    let bob = token(json!({"sub": "bob", "user": {"name": "Bob"}}));
    let connected = io_connect(&mut driver, &node, "bob", json!({"auth": {"token": bob}}))
        .await
        .unwrap();
    let record = record_of(&node, connected["socketId"].as_str().unwrap()).await;
    assert_eq!(record["logged_in"], true);
    assert_eq!(record["user"], json!({"id": "bob", "name": "Bob"}));
    assert_eq!(record["auth"]["sub"], "bob");

    // Bad tokens: connect_error with a readable message, and no retry.
    let wrong_key = driver
        .ok(
            "jwt.sign",
            json!({"payload": {"sub": "mallory"}, "key": "not-the-key", "options": {"expiresIn": 600}}),
        )
        .await;
    let expired = driver
        .ok(
            "jwt.sign",
            json!({"payload": {"sub": "bob", "exp": 1_000_000_000}, "key": AUTH_KEY}),
        )
        .await;
    for (client, bad, name) in [
        ("wrong-key", wrong_key, "AuthTokenInvalidError"),
        ("expired", expired, "AuthTokenExpiredError"),
        ("not-a-string", json!(42), "AuthTokenInvalidError"),
    ] {
        let error = io_connect(&mut driver, &node, client, json!({"auth": {"token": bad}}))
            .await
            .unwrap_err();
        assert_eq!(error["name"], "ConnectError", "{client}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("{name}: ")),
            "{client}: {message}"
        );
        assert_eq!(error["data"]["name"], name, "{client}: {error}");
        let state = driver.ok("io.state", json!({"client": client})).await;
        assert_eq!(state["active"], false, "{client}: {state}");
    }

    // Channel events answer through their acks.
    assert_eq!(
        emit_ack(&mut driver, "anon", "subscribe", json!(["room"])).await,
        json!([{"ok": true}])
    );
    assert_eq!(
        emit_ack(
            &mut driver,
            "bob",
            "publish",
            json!([{"channel": "room", "data": {"n": 1}}])
        )
        .await,
        json!([{"ok": true}])
    );
    let delivered = driver
        .wait_event(WAIT, "the publish delivered", |e| {
            e["client"] == "anon" && e["event"] == "receive" && e["name"] == "publish"
        })
        .await;
    assert_eq!(
        delivered["args"],
        json!([{"channel": "room", "data": {"n": 1}}])
    );
    let record = record_of(&node, anonymous["socketId"].as_str().unwrap()).await;
    assert_eq!(record["channels"], json!(["room"]));
    assert_eq!(
        emit_ack(&mut driver, "anon", "unsubscribe", json!(["room"])).await,
        json!([{"ok": true}])
    );
    let again = emit_ack(&mut driver, "anon", "unsubscribe", json!(["room"])).await;
    assert_eq!(again[0]["error"]["name"], "BrokerError", "{again}");
    let malformed = emit_ack(&mut driver, "anon", "subscribe", json!([42])).await;
    assert_eq!(
        malformed,
        json!([{"error": {"name": "InvalidActionError", "message": "Subscribe channel name was malformatted"}}])
    );
    // An app event with an ack is answered at once: sockhive has no handlers.
    assert_eq!(
        emit_ack(&mut driver, "bob", "getProfile", json!([1])).await,
        json!([{"error": {"name": "UnknownProcedureError", "message": "No handler for event \"getProfile\""}}])
    );
    driver
        .ok(
            "io.emit",
            json!({"client": "bob", "event": "chat", "args": ["no ack wanted"]}),
        )
        .await;

    let metrics = node.metrics().await;
    let handshakes = |outcome: &str, method: &str| {
        sum_series(
            &metrics,
            &format!("sockhive_handshakes_total{{outcome=\"{outcome}\",method=\"{method}\"}}"),
        )
    };
    assert_eq!(handshakes("anonymous", "none"), 1.0, "{metrics}");
    assert_eq!(handshakes("ok", "jwt"), 1.0, "{metrics}");
    assert_eq!(handshakes("failed", "jwt"), 3.0, "{metrics}");
    assert_eq!(
        sum_series(&metrics, "sockhive_connections{protocol=\"socketio\"}"),
        2.0,
        "{metrics}"
    );
    driver.shutdown().await;
}

#[tokio::test]
async fn the_apps_cookie_and_the_negotiate_flow_carry_the_logged_in_user() {
    let redis = RedisServer::start();
    let app = WebApp::start(&redis.url(), &[("SESSION_SECRETS", SECRET)]);
    let node = NodeBuilder::new(2)
        .args([
            "--session-secret",
            SECRET,
            "--redis-url",
            &redis.url(),
            "--user-lookup",
            "redis:user:{id}",
        ])
        .start();
    let cookie = app.login("alice", "alice-password").await;
    let mut driver = Driver::start().await;

    let connected = io_connect(
        &mut driver,
        &node,
        "cookie",
        json!({"extraHeaders": {"Cookie": cookie}}),
    )
    .await
    .unwrap();
    let cookie_id = connected["socketId"].as_str().unwrap().to_string();
    let record = record_of(&node, &cookie_id).await;
    assert_eq!(record["logged_in"], true, "{record}");
    assert_eq!(record["user"]["id"], "u-alice");
    assert_eq!(record["user"]["username"], "alice");
    assert_eq!(record["user"]["role"], "admin");
    assert_eq!(record["auth"]["sub"], "u-alice");
    // The client learns who it is: `authenticated` {user, token}, the
    // session's token, which logs it in again as a CONNECT `auth.token`.
    let told = driver
        .wait_event(WAIT, "authenticated", |e| {
            e["client"] == "cookie" && e["event"] == "receive" && e["name"] == "authenticated"
        })
        .await;
    let told = &told["args"][0];
    assert_eq!(told["user"], record["user"], "{told}");
    let token = told["token"].as_str().expect("a token").to_string();
    let again = io_connect(
        &mut driver,
        &node,
        "by-token",
        json!({"auth": {"token": token}}),
    )
    .await
    .unwrap();
    let record = record_of(&node, again["socketId"].as_str().unwrap()).await;
    assert_eq!(record["user"]["id"], "u-alice", "{record}");
    let told = driver
        .wait_event(WAIT, "authenticated by token", |e| {
            e["client"] == "by-token" && e["event"] == "receive" && e["name"] == "authenticated"
        })
        .await;
    assert_eq!(told["args"][0]["token"], token.as_str());

    // Azure Web PubSub's flow: the page trades its cookie for {endpoint, path, token}.
    let negotiate = http::get(node.public, "/negotiate", &[&format!("Cookie: {cookie}")]).await;
    assert_eq!(negotiate.status, 200, "{}", negotiate.body);
    let negotiated = negotiate.json();
    let connected = driver
        .ok(
            "io.connect",
            json!({
                "client": "negotiated",
                "url": negotiated["endpoint"].as_str().unwrap().replace("http://", "ws://"),
                "path": negotiated["path"],
                "query": {"access_token": negotiated["token"]},
            }),
        )
        .await;
    let record = record_of(&node, connected["socketId"].as_str().unwrap()).await;
    assert_eq!(record["logged_in"], true, "{record}");
    assert_eq!(record["user"]["id"], "u-alice");
    assert_eq!(record["user"]["username"], "alice");

    // A tampered cookie is refused readably.
    let tampered = format!("{}x", cookie);
    let error = io_connect(
        &mut driver,
        &node,
        "tampered",
        json!({"extraHeaders": {"Cookie": tampered}}),
    )
    .await
    .unwrap_err();
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("SessionCookieInvalidError: "),
        "{error}"
    );

    // Logging out in the app takes the cookie socket's login away.
    app.logout(&cookie).await;
    let event = driver
        .wait_event(WAIT, "deauthenticated", |e| {
            e["client"] == "cookie" && e["event"] == "receive" && e["name"] == "deauthenticated"
        })
        .await;
    assert_eq!(event["args"][0]["name"], "SessionNotFoundError", "{event}");
    let record = record_of(&node, &cookie_id).await;
    assert_eq!(record["logged_in"], false, "{record}");
    assert_eq!(
        driver.ok("io.state", json!({"client": "cookie"})).await["connected"],
        true
    );
    driver.shutdown().await;
}

#[tokio::test]
async fn require_auth_refuses_with_connect_error_and_the_client_does_not_retry() {
    let node = NodeBuilder::new(1).args(["--require-auth"]).start();
    let mut driver = Driver::start().await;
    let error = io_connect(&mut driver, &node, "nobody", json!({"reconnection": true}))
        .await
        .unwrap_err();
    assert_eq!(
        error["message"], "AuthTokenError: a valid credential is required",
        "{error}"
    );
    // Past the client's first reconnection delay (1 s, +50% jitter): no retry.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let state = driver.ok("io.state", json!({"client": "nobody"})).await;
    assert_eq!(state["active"], false, "{state}");
    assert_eq!(driver.events_of("nobody", "connect_error").len(), 1);
    let metrics = node.metrics().await;
    assert_eq!(
        sum_series(
            &metrics,
            "sockhive_handshakes_total{outcome=\"rejected\",method=\"none\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sum_series(
            &metrics,
            "sockhive_rejected_connections_total{reason=\"auth\"}"
        ),
        1.0
    );

    // The server ends the connection itself right after the CONNECT_ERROR.
    let (mut raw, _) = raw_open(node.public).await;
    raw.send(Message::text("40")).await.unwrap();
    let refusal = next_text(&mut raw).await.unwrap();
    assert!(
        refusal.starts_with("44{\"message\":\"AuthTokenError: "),
        "{refusal}"
    );
    let (code, reason) = ws::close_code(&mut raw, WAIT).await.unwrap();
    assert_eq!(code, 1008);
    assert!(reason.starts_with("AuthTokenError"), "{reason}");
    assert_eq!(
        node.admin_post("/api/sockets/query", json!({"filter": {}}))
            .await
            .json()["sockets"],
        json!([]),
        "no socket was registered"
    );

    let alice = token(json!({"sub": "alice"}));
    io_connect(
        &mut driver,
        &node,
        "alice",
        json!({"auth": {"token": alice}}),
    )
    .await
    .unwrap();
    driver.shutdown().await;
}

#[tokio::test]
async fn admin_emit_and_kick_reach_socketio_and_socketcluster_sockets_alike() {
    let node = Node::start(2);
    let mut driver = Driver::start().await;
    let mut ids = std::collections::HashMap::new();
    for (client, sub) in [("io-bob", "bob"), ("io-alice", "alice")] {
        let auth = json!({"auth": {"token": token(json!({"sub": sub}))}});
        let status = io_connect(&mut driver, &node, client, auth).await.unwrap();
        ids.insert(client, status["socketId"].as_str().unwrap().to_string());
    }
    for (client, sub) in [("sc-bob", "bob"), ("sc-alice", "alice")] {
        let status = driver
            .ok(
                "sc.connect",
                json!({"client": client, "url": node.sc_url(), "authToken": token(json!({"sub": sub})), "listen": ["note"]}),
            )
            .await;
        ids.insert(client, status["id"].as_str().unwrap().to_string());
    }
    let found = node
        .admin_post(
            "/api/sockets/query",
            json!({"filter": {"protocol": "socketio"}}),
        )
        .await
        .json();
    let mut found: Vec<&str> = found["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    found.sort();
    let mut expected = vec![ids["io-bob"].as_str(), ids["io-alice"].as_str()];
    expected.sort();
    assert_eq!(found, expected, "records carry the client's socket.id");

    let emit = node
        .admin_post(
            "/api/sockets/emit",
            json!({"filter": {"user.id": "bob"}, "event": "note", "data": {"x": 1}}),
        )
        .await;
    assert_eq!(emit.json()["delivered"], 2, "{}", emit.body);
    let io = driver
        .wait_event(WAIT, "the note at io-bob", |e| {
            e["client"] == "io-bob" && e["event"] == "receive" && e["name"] == "note"
        })
        .await;
    assert_eq!(io["args"], json!([{"x": 1}]));
    let sc = driver
        .wait_event(WAIT, "the note at sc-bob", |e| {
            e["client"] == "sc-bob" && e["event"] == "receive" && e["name"] == "note"
        })
        .await;
    assert_eq!(sc["data"], json!({"x": 1}));

    let kick = node
        .admin_post(
            "/api/sockets/kick",
            json!({"filter": {"user.id": "bob"}, "reason": "maintenance"}),
        )
        .await;
    assert_eq!(kick.json()["disconnected"], 2);
    let gone = driver
        .wait_event(WAIT, "io-bob disconnected", |e| {
            e["client"] == "io-bob" && e["event"] == "disconnect"
        })
        .await;
    assert_eq!(gone["reason"], "io server disconnect");
    let gone = driver
        .wait_event(WAIT, "sc-bob disconnected", |e| {
            e["client"] == "sc-bob" && e["event"] == "disconnect"
        })
        .await;
    assert_eq!(gone["code"], 4501);
    let state = driver.ok("io.state", json!({"client": "io-bob"})).await;
    assert_eq!(state["active"], false, "a kicked client does not retry");
    for client in ["io-alice", "sc-alice"] {
        // Nothing but the login's own `authenticated` event reached them.
        let received = driver.events_of(client, "receive");
        assert!(
            received.iter().all(|e| e["name"] == "authenticated"),
            "{client}: {received:?}"
        );
        assert!(
            driver.events_of(client, "disconnect").is_empty(),
            "{client}"
        );
    }
    assert_eq!(
        driver.ok("io.state", json!({"client": "io-alice"})).await["connected"],
        true
    );
    driver.shutdown().await;
}

#[tokio::test]
async fn channel_messages_cross_protocols_binary_included() {
    let node = Node::start(2);
    let mut driver = Driver::start().await;
    io_connect(&mut driver, &node, "io", json!({}))
        .await
        .unwrap();
    driver
        .ok("sc.connect", json!({"client": "sc", "url": node.sc_url()}))
        .await;
    assert_eq!(
        emit_ack(&mut driver, "io", "subscribe", json!(["room"])).await,
        json!([{"ok": true}])
    );
    driver
        .ok("sc.subscribe", json!({"client": "sc", "channel": "room"}))
        .await;

    // SocketCluster -> Socket.IO.
    driver
        .ok(
            "sc.publish",
            json!({"client": "sc", "channel": "room", "data": {"from": "sc"}}),
        )
        .await;
    let at_io = driver
        .wait_event(WAIT, "the SC message at io", |e| {
            e["client"] == "io" && e["name"] == "publish" && e["args"][0]["data"]["from"] == "sc"
        })
        .await;
    assert_eq!(
        at_io["args"],
        json!([{"channel": "room", "data": {"from": "sc"}}])
    );
    // Socket.IO -> SocketCluster.
    emit_ack(
        &mut driver,
        "io",
        "publish",
        json!([{"channel": "room", "data": {"from": "io"}}]),
    )
    .await;
    driver
        .wait_event(WAIT, "the IO message at sc", |e| {
            e["client"] == "sc" && e["event"] == "message" && e["data"] == json!({"from": "io"})
        })
        .await;

    // A `forceBase64` client (b64=1) gets attachments as `b<base64>` text.
    let (mut b64, _) =
        raw_open_at(node.public, "/socket.io/?EIO=4&transport=websocket&b64=1").await;
    b64.send(Message::text("40")).await.unwrap();
    assert!(next_text(&mut b64).await.unwrap().starts_with("40{"));
    b64.send(Message::text(r#"421["subscribe","room"]"#))
        .await
        .unwrap();
    assert_eq!(
        next_text(&mut b64).await.as_deref(),
        Some(r#"431[{"ok":true}]"#)
    );

    // A binary publish: the Socket.IO subscriber gets the bytes back as a
    // Buffer, the SocketCluster one gets SocketCluster's Buffer encoding.
    let (mut raw, _) = raw_connected(node.public).await;
    raw.send(Message::text(
        r#"451-7["publish",{"channel":"room","data":{"file":{"_placeholder":true,"num":0},"name":"f"}}]"#,
    ))
    .await
    .unwrap();
    raw.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        next_text(&mut raw).await.as_deref(),
        Some(r#"437[{"ok":true}]"#)
    );
    let at_io = driver
        .wait_event(WAIT, "the binary message at io", |e| {
            e["client"] == "io" && e["name"] == "publish" && e["args"][0]["data"]["name"] == "f"
        })
        .await;
    assert_eq!(
        at_io["args"][0]["data"]["file"],
        json!({"$base64": "AQID"}),
        "{at_io}"
    );
    let at_sc = driver
        .wait_event(WAIT, "the binary message at sc", |e| {
            e["client"] == "sc" && e["event"] == "message" && e["data"]["name"] == "f"
        })
        .await;
    assert_eq!(
        at_sc["data"]["file"],
        json!({"base64": true, "data": "AQID"})
    );
    assert_eq!(
        next_text(&mut b64).await.as_deref(),
        Some(
            r#"451-["publish",{"channel":"room","data":{"file":{"_placeholder":true,"num":0},"name":"f"}}]"#
        )
    );
    assert_eq!(next_text(&mut b64).await.as_deref(), Some("bAQID"));
    // And a SocketCluster-encoded Buffer reaches Socket.IO as binary.
    driver
        .ok(
            "sc.publish",
            json!({"client": "sc", "channel": "room", "data": {"blob": {"base64": true, "data": "aGk="}}}),
        )
        .await;
    let at_io = driver
        .wait_event(WAIT, "the SC buffer at io", |e| {
            e["client"] == "io"
                && e["name"] == "publish"
                && e["args"][0]["data"]["blob"].is_object()
        })
        .await;
    assert_eq!(at_io["args"][0]["data"]["blob"], json!({"$base64": "aGk="}));
    driver.shutdown().await;
}

#[tokio::test]
async fn hostile_input_closes_only_that_connection_with_a_reason_and_a_metric() {
    let node = NodeBuilder::new(1)
        .args(["--handshake-timeout", "1s"])
        .start();
    let worker = node.worker_pids();
    let mut driver = Driver::start().await;
    io_connect(&mut driver, &node, "bystander", json!({}))
        .await
        .unwrap();

    // Malformed packets after CONNECT: the parser's refusal closes the connection.
    for (frame, reason) in [
        (r#"42["chat","#, "does not parse as JSON"),
        ("42{\"a\":1}", "EVENT payload must be"),
        ("9", "unknown Engine.IO packet type"),
        ("2", "invalid heartbeat direction"),
        (r#"42["disconnect"]"#, "reserved"),
    ] {
        let (mut raw, _) = raw_connected(node.public).await;
        raw.send(Message::text(frame)).await.unwrap();
        let (code, text) = ws::close_code(&mut raw, WAIT).await.unwrap();
        assert_eq!(code, 1002, "{frame}: {text}");
        assert!(text.contains(reason), "{frame}: {text}");
    }
    // An event before CONNECT.
    let (mut raw, _) = raw_open(node.public).await;
    raw.send(Message::text(r#"42["early"]"#)).await.unwrap();
    let (code, text) = ws::close_code(&mut raw, WAIT).await.unwrap();
    assert_eq!((code, text.contains("not joined")), (1002, true), "{text}");
    // An unknown namespace is refused as the real server does.
    let (mut raw, _) = raw_open(node.public).await;
    raw.send(Message::text("40/nope,")).await.unwrap();
    assert_eq!(
        next_text(&mut raw).await.as_deref(),
        Some(r#"44/nope,{"message":"Invalid namespace"}"#)
    );
    let error = driver
        .call(
            "io.connect",
            json!({"client": "nope", "url": format!("{}/nope", io_url(&node))}),
        )
        .await
        .unwrap_err();
    assert_eq!(error["message"], "Invalid namespace", "{error}");
    // A frame over --max-payload: 1009.
    let (mut raw, _) = raw_connected(node.public).await;
    let huge = format!(r#"42["chat","{}"]"#, "x".repeat(2 << 20));
    let _ = raw.send(Message::text(huge)).await;
    let (code, _) = ws::close_code(&mut raw, WAIT).await.unwrap();
    assert_eq!(code, 1009);
    // A client that never sends CONNECT is closed at the handshake timeout.
    let started = Instant::now();
    let (mut raw, _) = raw_open(node.public).await;
    let (code, text) = ws::close_code(&mut raw, WAIT).await.unwrap();
    assert_eq!(code, 1008);
    assert!(text.starts_with("handshake timeout"), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(900));

    let metrics = node.metrics().await;
    for reason in [
        "bad_json",
        "bad_packet",
        "bad_namespace",
        "too_big",
        "handshake_timeout",
    ] {
        assert!(metric_of(&metrics, reason) >= 1.0, "{reason}:\n{metrics}");
    }
    assert_eq!(node.worker_pids(), worker, "the worker lives");
    assert_eq!(
        emit_ack(&mut driver, "bystander", "subscribe", json!(["fine"])).await,
        json!([{"ok": true}]),
        "the bystander noticed nothing"
    );
    assert!(driver.events_of("bystander", "disconnect").is_empty());
    driver.shutdown().await;
}

#[tokio::test]
async fn an_unknown_transport_or_engine_io_version_is_refused_with_the_real_servers_400() {
    let node = Node::start(1);
    let unknown = http::get(node.public, "/socket.io/?EIO=4&transport=flash", &[]).await;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.json()["code"], 0, "{}", unknown.body);
    let upgrade = [
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ];
    let old = http::get(
        node.public,
        "/socket.io/?EIO=3&transport=websocket",
        &upgrade,
    )
    .await;
    assert_eq!(old.status, 400);
    assert!(
        old.body.contains("Unsupported protocol version"),
        "{}",
        old.body
    );
    let metrics = node.metrics().await;
    assert_eq!(
        sum_series(
            &metrics,
            "sockhive_rejected_connections_total{reason=\"bad_upgrade\"}"
        ),
        2.0,
        "{metrics}"
    );
}

/// Engine.IO's heartbeat at its real defaults: a first ping 25 s after the
/// open packet, and a client that does not answer it is closed 20 s later.
#[tokio::test]
async fn the_open_packet_and_the_server_driven_heartbeat_follow_engine_io() {
    let node = Node::start(1);
    let (mut raw, open) = raw_open(node.public).await;
    let opened = Instant::now();
    assert_eq!(open["upgrades"], json!([]));
    assert_eq!(open["pingInterval"], 25000);
    assert_eq!(open["pingTimeout"], 20000);
    assert_eq!(open["maxPayload"], 1 << 20, "the enforced --max-payload");
    assert_eq!(open["sid"].as_str().unwrap().len(), 20);
    raw.send(Message::text("40")).await.unwrap();
    assert!(next_text(&mut raw)
        .await
        .unwrap()
        .starts_with("40{\"sid\":"));
    // A real client alongside answers its pings and stays.
    let mut driver = Driver::start().await;
    io_connect(&mut driver, &node, "polite", json!({}))
        .await
        .unwrap();
    let ping = tokio::time::timeout(Duration::from_secs(30), raw.next())
        .await
        .expect("a ping in time");
    assert!(
        matches!(&ping, Some(Ok(Message::Text(text))) if text.as_str() == "2"),
        "{ping:?}"
    );
    assert!(opened.elapsed() >= Duration::from_millis(24_500));
    // No pong: closed once pingTimeout has passed.
    let (code, reason) = ws::close_code(&mut raw, Duration::from_secs(25))
        .await
        .expect("closed after the ping timeout");
    assert_eq!((code, reason.as_str()), (1008, "ping timeout"));
    assert!(opened.elapsed() >= Duration::from_millis(44_500));
    assert_eq!(
        driver.ok("io.state", json!({"client": "polite"})).await["connected"],
        true
    );
    assert!(driver.events_of("polite", "disconnect").is_empty());
    driver.shutdown().await;
}

#[tokio::test]
async fn a_drain_closes_socketio_sockets_with_1001_and_the_client_reconnects_elsewhere() {
    let mut node = Node::start(1);
    let mut driver = Driver::start().await;
    io_connect(&mut driver, &node, "c", json!({}))
        .await
        .unwrap();
    let (mut raw, _) = raw_connected(node.public).await;
    node.signal(nix::sys::signal::Signal::SIGTERM);
    let close = ws::close_code(&mut raw, WAIT).await;
    assert_eq!(close.map(|c| c.0), Some(1001));
    let gone = driver
        .wait_event(WAIT, "the client disconnected", |e| {
            e["client"] == "c" && e["event"] == "disconnect"
        })
        .await;
    // Not `io server disconnect`: a draining node's clients are meant to reconnect.
    assert_eq!(gone["reason"], "transport close", "{gone}");
    assert!(node.wait_exit(Duration::from_secs(10)).is_some());
    driver.shutdown().await;
}
