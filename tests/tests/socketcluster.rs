//! SocketCluster acceptance with the real `socketcluster-client@20`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use futures_util::SinkExt;
use serde_json::{json, Value};
use sockhive_tests::node::{sockhive_bin, ADMIN_TOKEN, AUTH_KEY};
use sockhive_tests::{http, ws, Driver, Node, NodeBuilder};
use tokio_tungstenite::tungstenite::Message;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token from `sockhive token sign`, the CLI operators use.
fn cli_token(claims: Value) -> String {
    sockhive_tests::node::sign_token(&claims)
}

/// A token from the npm `jsonwebtoken` package (what Node apps mint).
async fn npm_token(driver: &mut Driver, payload: Value, key: &str, options: Value) -> String {
    driver
        .ok(
            "jwt.sign",
            json!({"payload": payload, "key": key, "options": options}),
        )
        .await
        .as_str()
        .unwrap()
        .to_string()
}

fn b64(value: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

async fn connect(
    driver: &mut Driver,
    node: &Node,
    client: &str,
    token: Option<&str>,
) -> Result<Value, Value> {
    let mut fields =
        json!({"client": client, "url": node.sc_url(), "listen": ["note", "#publish"]});
    if let Some(token) = token {
        fields["authToken"] = json!(token);
    }
    driver.call("sc.connect", fields).await
}

#[tokio::test]
async fn handshakes_with_and_without_tokens() {
    let node = Node::start(2);
    let mut driver = Driver::start().await;
    let anonymous = connect(&mut driver, &node, "anon", None).await.unwrap();
    assert_eq!(anonymous["isAuthenticated"], false);
    assert_eq!(anonymous["pingTimeout"], 30000);

    let token = cli_token(json!({"sub": "alice", "role": "admin"}));
    let cli = connect(&mut driver, &node, "cli", Some(&token))
        .await
        .unwrap();
    assert_eq!(cli["isAuthenticated"], true);
    let state = driver.ok("sc.state", json!({"client": "cli"})).await;
    assert_eq!(state["authState"], "authenticated");
    assert_eq!(state["authToken"]["sub"], "alice");
    assert_eq!(state["authToken"]["role"], "admin");

    let token = npm_token(
        &mut driver,
        json!({"sub": "bob", "user": {"name": "Bob"}}),
        AUTH_KEY,
        json!({"expiresIn": 600}),
    )
    .await;
    let npm = connect(&mut driver, &node, "npm", Some(&token))
        .await
        .unwrap();
    assert_eq!(npm["isAuthenticated"], true);
    let record = http::get(
        node.admin,
        &format!("/api/sockets/{}", npm["id"].as_str().unwrap()),
        &[&format!("Authorization: Bearer {ADMIN_TOKEN}")],
    )
    .await;
    assert_eq!(record.status, 200, "{}", record.body);
    assert_eq!(record.json()["user"], json!({"id": "bob", "name": "Bob"}));
    assert_eq!(record.json()["logged_in"], true);
    driver.shutdown().await;
}

#[tokio::test]
async fn bad_tokens_are_refused_with_the_clients_auth_error() {
    let node = Node::start(1);
    let mut driver = Driver::start().await;
    let later = now() + 600;
    let wrong_key = npm_token(
        &mut driver,
        json!({"sub": "mallory"}),
        "not-the-key",
        json!({"expiresIn": 600}),
    )
    .await;
    let expired = npm_token(
        &mut driver,
        json!({"sub": "alice", "exp": now() - 120}),
        AUTH_KEY,
        json!({}),
    )
    .await;
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&json!({"sub": "alice", "exp": later}))
    );
    let confused = format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(&json!({"alg": "RS256", "typ": "JWT"})),
        b64(&json!({"sub": "alice", "exp": later}))
    );
    let no_exp = npm_token(
        &mut driver,
        json!({"sub": "alice"}),
        AUTH_KEY,
        json!({"noTimestamp": true}),
    )
    .await;
    for (name, token, error) in [
        ("wrong-key", wrong_key, "AuthTokenInvalidError"),
        ("expired", expired, "AuthTokenExpiredError"),
        ("alg-none", none, "AuthTokenInvalidError"),
        ("key-confusion", confused, "AuthTokenInvalidError"),
        ("no-exp", no_exp, "AuthTokenError"),
    ] {
        let status = connect(&mut driver, &node, name, Some(&token))
            .await
            .unwrap();
        assert_eq!(status["isAuthenticated"], false, "{name}: {status}");
        assert_eq!(status["authError"]["name"], error, "{name}: {status}");
        driver
            .wait_event(Duration::from_secs(5), "the bad token removed", |e| {
                e["client"] == name && e["event"] == "removeAuthToken"
            })
            .await;
        assert_eq!(
            driver.ok("sc.state", json!({"client": name})).await["authState"],
            "unauthenticated"
        );
    }
    let failed = node
        .metric("sockhive_handshakes_total{worker=\"1\",outcome=\"failed\",method=\"jwt\"}")
        .await;
    assert_eq!(failed, 5.0, "{}", node.metrics().await);
    driver.shutdown().await;
}

#[tokio::test]
async fn a_token_expiring_while_connected_deauthenticates_the_socket() {
    let node = NodeBuilder::new(1).args(["--jwt-leeway", "0s"]).start();
    let mut driver = Driver::start().await;
    let token = npm_token(
        &mut driver,
        json!({"sub": "shortlived"}),
        AUTH_KEY,
        json!({"expiresIn": 2}),
    )
    .await;
    let status = connect(&mut driver, &node, "c", Some(&token))
        .await
        .unwrap();
    assert_eq!(status["isAuthenticated"], true);
    driver
        .wait_event(Duration::from_secs(5), "deauthenticate at expiry", |e| {
            e["client"] == "c" && e["event"] == "deauthenticate"
        })
        .await;
    assert_eq!(
        driver.ok("sc.state", json!({"client": "c"})).await["authState"],
        "unauthenticated"
    );
    let record = node
        .admin_post(
            "/api/sockets/query",
            json!({"filter": {"user.id": "shortlived"}}),
        )
        .await;
    assert_eq!(
        record.json()["sockets"],
        json!([]),
        "the record lost its user"
    );
    driver.shutdown().await;
}

#[tokio::test]
async fn with_renewal_the_token_is_replaced_before_expiry() {
    let node = NodeBuilder::new(1)
        .args(["--jwt-leeway", "0s", "--token-renew-before", "2s"])
        .start();
    let mut driver = Driver::start().await;
    let token = npm_token(
        &mut driver,
        json!({"sub": "renewed"}),
        AUTH_KEY,
        json!({"expiresIn": 3}),
    )
    .await;
    connect(&mut driver, &node, "c", Some(&token))
        .await
        .unwrap();
    let renewed = driver
        .wait_event(Duration::from_secs(5), "a renewed token", |e| {
            e["client"] == "c"
                && e["event"] == "authenticate"
                && e["signedAuthToken"] != json!(token)
        })
        .await;
    assert!(renewed["authToken"]["exp"].as_u64().unwrap() > now() + 3600);
    // Past the original expiry the socket is still authenticated.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let state = driver.ok("sc.state", json!({"client": "c"})).await;
    assert_eq!(state["authState"], "authenticated");
    assert!(driver.events_of("c", "deauthenticate").is_empty());
    driver.shutdown().await;
}

#[tokio::test]
async fn twenty_clients_over_three_workers_get_a_thousand_messages_in_order() {
    let node = Node::start(3);
    let mut driver = Driver::start().await;
    for i in 0..20 {
        let client = format!("c{i}");
        connect(&mut driver, &node, &client, None).await.unwrap();
        driver
            .ok("sc.subscribe", json!({"client": client, "channel": "room"}))
            .await;
    }
    let sockets = node
        .admin_post(
            "/api/sockets/query",
            json!({"filter": {"channels": "room"}}),
        )
        .await
        .json();
    let workers: std::collections::HashSet<u64> = sockets["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["worker"].as_u64().unwrap())
        .collect();
    assert_eq!(sockets["sockets"].as_array().unwrap().len(), 20);
    assert_eq!(workers.len(), 3, "the subscribers span every worker");
    assert_eq!(
        node.metric("sockhive_broker_routes").await,
        3.0,
        "one broker subscription per worker, not per socket"
    );
    for n in 0..1000 {
        driver
            .ok(
                "sc.transmitPublish",
                json!({"client": "c0", "channel": "room", "data": {"n": n}}),
            )
            .await;
    }
    for i in 0..20 {
        let client = format!("c{i}");
        let got = driver
            .wait_count(
                Duration::from_secs(30),
                &format!("1000 messages at {client}"),
                1000,
                |e| e["client"] == client && e["event"] == "message",
            )
            .await;
        let order: Vec<u64> = got
            .iter()
            .map(|e| e["data"]["n"].as_u64().unwrap())
            .collect();
        assert_eq!(
            order,
            (0..1000).collect::<Vec<u64>>(),
            "{client} got every message in order"
        );
    }
    driver.shutdown().await;
}

#[tokio::test]
async fn channel_rules_refuse_channels_the_token_does_not_list() {
    let node = NodeBuilder::new(2)
        .args(["--channel-auth", "claims", "--public-channel", "public:*"])
        .start();
    let mut driver = Driver::start().await;
    let token = cli_token(json!({"sub": "carol", "channels": ["room:1", "team:*"]}));
    connect(&mut driver, &node, "c", Some(&token))
        .await
        .unwrap();
    for channel in ["room:1", "team:red", "public:news"] {
        driver
            .ok("sc.subscribe", json!({"client": "c", "channel": channel}))
            .await;
    }
    let refused = driver
        .call("sc.subscribe", json!({"client": "c", "channel": "room:2"}))
        .await
        .unwrap_err();
    assert_eq!(refused["name"], "ChannelForbiddenError", "{refused}");
    let refused = driver
        .call(
            "sc.publish",
            json!({"client": "c", "channel": "room:2", "data": 1}),
        )
        .await
        .unwrap_err();
    assert_eq!(refused["name"], "ChannelForbiddenError", "{refused}");
    connect(&mut driver, &node, "anon", None).await.unwrap();
    let refused = driver
        .call(
            "sc.subscribe",
            json!({"client": "anon", "channel": "room:1"}),
        )
        .await
        .unwrap_err();
    assert_eq!(refused["name"], "ChannelForbiddenError");
    driver
        .ok(
            "sc.subscribe",
            json!({"client": "anon", "channel": "public:news"}),
        )
        .await;
    driver.shutdown().await;
}

#[tokio::test]
async fn invoke_of_an_unknown_procedure_errors_and_emit_works_both_ways() {
    let node = Node::start(1);
    let mut driver = Driver::start().await;
    let status = connect(
        &mut driver,
        &node,
        "c",
        Some(&cli_token(json!({"sub": "dave"}))),
    )
    .await
    .unwrap();
    let error = driver
        .call(
            "sc.invoke",
            json!({"client": "c", "event": "getProfile", "data": 1}),
        )
        .await
        .unwrap_err();
    assert_eq!(error["name"], "UnknownProcedureError", "{error}");
    assert!(error["message"].as_str().unwrap().contains("getProfile"));
    // Client to server: a transmit is received and counted.
    let before = node
        .metric("sockhive_messages_total{worker=\"1\",direction=\"in\"}")
        .await;
    driver
        .ok(
            "sc.transmit",
            json!({"client": "c", "event": "chat", "data": {"text": "hi"}}),
        )
        .await;
    sockhive_tests::eventually(Duration::from_secs(3), "the transmit counted", async || {
        (node
            .metric("sockhive_messages_total{worker=\"1\",direction=\"in\"}")
            .await
            > before)
            .then_some(())
    })
    .await;
    // Server to client: an admin emit arrives as a server event.
    let reply = node
        .admin_post(
            "/api/sockets/emit",
            json!({"filter": {"id": status["id"]}, "event": "note", "data": {"x": 1}}),
        )
        .await;
    assert_eq!(reply.json()["delivered"], 1);
    let event = driver
        .wait_event(Duration::from_secs(5), "the emitted event", |e| {
            e["client"] == "c" && e["event"] == "receive" && e["name"] == "note"
        })
        .await;
    assert_eq!(event["data"], json!({"x": 1}));
    driver.shutdown().await;
}

#[tokio::test]
async fn admin_queries_find_emit_and_kick_exactly_the_matching_sockets() {
    let node = Node::start(3);
    let mut driver = Driver::start().await;
    let mut ids = std::collections::HashMap::new();
    for (client, sub, role) in [
        ("a1", "alice", "admin"),
        ("b1", "bob", "user"),
        ("b2", "bob", "user"),
        ("e1", "erin", "user"),
        ("x1", "", ""),
    ] {
        let token = (!sub.is_empty()).then(|| cli_token(json!({"sub": sub, "role": role})));
        let status = connect(&mut driver, &node, client, token.as_deref())
            .await
            .unwrap();
        ids.insert(client, status["id"].as_str().unwrap().to_string());
    }
    let query = node
        .admin_post(
            "/api/sockets/query",
            json!({"filter": {"auth.role": "user", "user.id": {"$ne": "erin"}}}),
        )
        .await;
    assert_eq!(query.status, 200, "{}", query.body);
    let reply = query.json();
    let mut found: Vec<String> = reply["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    found.sort();
    let mut expected = vec![ids["b1"].clone(), ids["b2"].clone()];
    expected.sort();
    assert_eq!(found, expected);
    assert_eq!(reply["nodes_answered"], 1);
    assert_eq!(reply["nodes_expected"], 1);
    assert_eq!(reply["workers_answered"], 3);

    // The CLI goes through the same API.
    let out = std::process::Command::new(sockhive_bin())
        .args([
            "sockets",
            "list",
            "--admin",
            &format!("http://{}", node.admin),
            "--admin-token",
            ADMIN_TOKEN,
            "--filter",
            r#"{"user.id":"alice"}"#,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["sockets"][0]["id"], ids["a1"].as_str());

    let emit = node
        .admin_post(
            "/api/sockets/emit",
            json!({"filter": {"user.id": "bob"}, "event": "note", "data": "for bob"}),
        )
        .await;
    assert_eq!(emit.json()["delivered"], 2);
    for client in ["b1", "b2"] {
        driver
            .wait_event(Duration::from_secs(5), "bob's note", |e| {
                e["client"] == client && e["name"] == "note"
            })
            .await;
    }
    let kick = node
        .admin_post(
            "/api/sockets/kick",
            json!({"filter": {"user.id": "bob"}, "reason": "maintenance"}),
        )
        .await;
    assert_eq!(kick.json()["disconnected"], 2);
    for client in ["b1", "b2"] {
        let closed = driver
            .wait_event(Duration::from_secs(5), "bob kicked", |e| {
                e["client"] == client && e["event"] == "disconnect"
            })
            .await;
        assert_eq!(closed["code"], 4501);
        assert_eq!(closed["reason"], "maintenance");
    }
    assert!(
        driver.events_of("a1", "receive").is_empty(),
        "alice got nothing"
    );
    assert!(
        driver.events_of("a1", "disconnect").is_empty(),
        "alice stays"
    );
    let out = std::process::Command::new(sockhive_bin())
        .args([
            "sockets",
            "kick",
            "--admin",
            &format!("http://{}", node.admin),
            "--admin-token",
            ADMIN_TOKEN,
            "--filter",
            r#"{"user.id":"erin"}"#,
        ])
        .output()
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["disconnected"],
        1
    );

    let bad = node
        .admin_post(
            "/api/sockets/query",
            json!({"filter": {"user.id": {"$regex": "b.*"}}}),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.json()["error"]
            .as_str()
            .unwrap()
            .contains("unknown operator `$regex`"),
        "{}",
        bad.body
    );
    let garbage = http::raw(node.admin, b"POST /api/sockets/query HTTP/1.1\r\nAuthorization: Bearer test-admin-token\r\nContent-Length: 5\r\n\r\n{oops").await;
    assert_eq!(garbage.status, 400);
    let unauthorized =
        http::post_json(node.admin, "/api/sockets/query", Some("wrong"), &json!({})).await;
    assert_eq!(unauthorized.status, 401);
    let cli = std::process::Command::new(sockhive_bin())
        .args([
            "sockets",
            "list",
            "--admin",
            &format!("http://{}", node.admin),
            "--admin-token",
            "wrong",
        ])
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(1));
    driver.shutdown().await;
}

#[tokio::test]
async fn bad_input_closes_only_that_socket_with_the_right_code() {
    let node = NodeBuilder::new(1)
        .args(["--handshake-timeout", "1s"])
        .start();
    let worker = node.worker_pids();
    let (mut bystander, _) = ws::sc_open(node.public, None).await;

    // Garbage before the handshake: 4009.
    let mut garbage = ws::connect(node.public, "/socketcluster/").await;
    garbage
        .send(Message::text("{\"event\": not json"))
        .await
        .unwrap();
    assert_eq!(
        ws::close_code(&mut garbage, Duration::from_secs(3))
            .await
            .map(|c| c.0),
        Some(4009)
    );
    // Garbage after the handshake is counted and ignored, like the real server's raw messages.
    let (mut chatty, _) = ws::sc_open(node.public, None).await;
    chatty.send(Message::text("[[[[{\"broken\"")).await.unwrap();
    chatty
        .send(Message::text(
            r##"{"event":"#subscribe","data":{"channel":"ok"},"cid":2}"##,
        ))
        .await
        .unwrap();
    assert_eq!(
        ws::next_json(&mut chatty, Duration::from_secs(3)).await,
        Some(json!({"rid": 2}))
    );
    // A handshake that never comes: 4005.
    let mut silent = ws::connect(node.public, "/socketcluster/").await;
    assert_eq!(
        ws::close_code(&mut silent, Duration::from_secs(3))
            .await
            .map(|c| c.0),
        Some(4005)
    );
    // A 10 MiB frame: 1009.
    let (mut huge, _) = ws::sc_open(node.public, None).await;
    let _ = huge.send(Message::text("x".repeat(10 << 20))).await;
    assert_eq!(
        ws::close_code(&mut huge, Duration::from_secs(5))
            .await
            .map(|c| c.0),
        Some(1009)
    );

    let metrics = node.metrics().await;
    for reason in ["bad_json", "handshake_timeout", "too_big"] {
        let count = sockhive_tests::node::sum_series(&metrics, &format!("sockhive_protocol_errors_total{{worker=\"1\",protocol=\"socketcluster\",reason=\"{reason}\"}}"));
        assert!(count >= 1.0, "{reason} counted:\n{metrics}");
    }
    assert_eq!(node.worker_pids(), worker, "the worker lives");
    bystander
        .send(Message::text(
            r##"{"event":"#subscribe","data":{"channel":"fine"},"cid":2}"##,
        ))
        .await
        .unwrap();
    assert_eq!(
        ws::next_json(&mut bystander, Duration::from_secs(3)).await,
        Some(json!({"rid": 2}))
    );
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_closed_with_4001() {
    let node = NodeBuilder::new(1)
        .args(["--ping-interval", "200ms", "--ping-timeout", "1s"])
        .start();
    let (mut mute, data) = ws::sc_open(node.public, None).await;
    assert_eq!(data["pingTimeout"], 1000);
    let started = std::time::Instant::now();
    // Read frames without answering the pings.
    let close = loop {
        use futures_util::StreamExt;
        match tokio::time::timeout(Duration::from_secs(5), mute.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            _ => break None,
        }
    };
    assert_eq!(close, Some(4001));
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A client that answers is kept.
    let mut driver = Driver::start().await;
    connect(&mut driver, &node, "polite", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(
        driver.ok("sc.state", json!({"client": "polite"})).await["state"],
        "open"
    );
    driver.shutdown().await;
}

#[tokio::test]
async fn subscriptions_beyond_the_limit_are_refused() {
    let node = NodeBuilder::new(1)
        .args(["--max-subscriptions", "2"])
        .start();
    let mut driver = Driver::start().await;
    connect(&mut driver, &node, "c", None).await.unwrap();
    driver
        .ok("sc.subscribe", json!({"client": "c", "channel": "one"}))
        .await;
    driver
        .ok("sc.subscribe", json!({"client": "c", "channel": "two"}))
        .await;
    let refused = driver
        .call("sc.subscribe", json!({"client": "c", "channel": "three"}))
        .await
        .unwrap_err();
    assert_eq!(refused["name"], "BrokerError", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("limit of 2"));
    driver
        .ok("sc.unsubscribe", json!({"client": "c", "channel": "one"}))
        .await;
    driver
        .ok("sc.subscribe", json!({"client": "c", "channel": "three"}))
        .await;
    driver.shutdown().await;
}
