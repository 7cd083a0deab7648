//! App hooks, end to end: the real express + passport app in tests/app answers
//! sockhive's signed hook calls (`POST /sockhive/<hook>`), and the real
//! `socketcluster-client@20` / `socket.io-client@4` see the results — the
//! SocketCluster login procedure, a socket.io chat across two nodes, private
//! channels under rules, effects, and every failure a client must survive.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use sockhive_tests::app::WebApp;
use sockhive_tests::redis::{free_port, RedisServer};
use sockhive_tests::tempdir::TempDir;
use sockhive_tests::{eventually, http, Driver, Node, NodeBuilder};

const SECRET: &str = "app-session-secret";
const HOOK_SECRET: &str = "hook-secret-for-tests";
const WAIT: Duration = Duration::from_secs(10);

/// The app, knowing `hook_secrets` (comma-separated) and the session secret.
fn app_with(redis: &RedisServer, hook_secrets: &str) -> WebApp {
    WebApp::start(
        &redis.url(),
        &[("SESSION_SECRETS", SECRET), ("HOOK_SECRETS", hook_secrets)],
    )
}

/// A node calling `app`'s hooks with the test secret, plus `extra` flags.
fn hooked_node(workers: u16, app: &WebApp, extra: &[&str]) -> Node {
    NodeBuilder::new(workers)
        .args(["--hook-url", &app.hook_url(), "--hook-secret", HOOK_SECRET])
        .args(extra.iter().copied())
        .start()
}

/// `sc.connect` that must succeed (every `#publish` frame reported as `rawPublish`).
async fn sc_connect(driver: &mut Driver, node: &Node, client: &str, extra: Value) -> Value {
    let mut fields = json!({"client": client, "url": node.sc_url(), "rawPublish": true});
    if let (Value::Object(fields), Value::Object(extra)) = (&mut fields, extra) {
        fields.extend(extra);
    }
    driver.ok("sc.connect", fields).await
}

/// `io.connect` over websocket, listening to the events the hooks produce.
async fn io_connect(
    driver: &mut Driver,
    node: &Node,
    client: &str,
    extra: Value,
) -> Result<Value, Value> {
    let mut fields = json!({
        "client": client,
        "url": format!("ws://{}", node.public),
        "listen": ["chat message", "notice", "authenticated", "deauthenticated", "publish", "kickout"],
    });
    if let (Value::Object(fields), Value::Object(extra)) = (&mut fields, extra) {
        fields.extend(extra);
    }
    driver.call("io.connect", fields).await
}

/// `socket.timeout(ms).emitWithAck(event, ...args)`: the ack's first argument.
async fn io_rpc(driver: &mut Driver, client: &str, event: &str, args: Value) -> Value {
    driver
        .ok(
            "io.emitWithAck",
            json!({"client": client, "event": event, "args": args, "timeoutMs": 15000}),
        )
        .await
}

/// `socket.invoke(event, data)` with a generous ack timeout.
async fn invoke(
    driver: &mut Driver,
    client: &str,
    event: &str,
    data: Value,
) -> Result<Value, Value> {
    driver
        .call(
            "sc.invoke",
            json!({"client": client, "event": event, "data": data, "timeoutMs": 15000}),
        )
        .await
}

/// An invoke that must fail; its error.
async fn invoke_err(driver: &mut Driver, client: &str, event: &str, data: Value) -> Value {
    match invoke(driver, client, event, data.clone()).await {
        Ok(result) => {
            panic!("invoke {event} {data} succeeded with {result}; an error was expected")
        }
        Err(error) => error,
    }
}

/// A client-side event of `kind` for `client` whose fields satisfy `matches`.
async fn client_event(
    driver: &Driver,
    client: &str,
    kind: &str,
    what: &str,
    matches: impl Fn(&Value) -> bool,
) -> Value {
    driver
        .wait_event(WAIT, what, |e| {
            e["client"] == client && e["event"] == kind && matches(e)
        })
        .await
}

/// A server-side emit `name` received by `client` (SocketCluster `receiver`,
/// Socket.IO `on`); its data (Socket.IO: the first argument).
async fn received(
    driver: &Driver,
    client: &str,
    name: &str,
    matches: impl Fn(&Value) -> bool,
) -> Value {
    let event = driver
        .wait_event(WAIT, &format!("{client} to receive {name}"), |e| {
            e["client"] == client
                && e["event"] == "receive"
                && e["name"] == name
                && matches(if e["args"].is_array() {
                    &e["args"][0]
                } else {
                    &e["data"]
                })
        })
        .await;
    if event["args"].is_array() {
        event["args"][0].clone()
    } else {
        event["data"].clone()
    }
}

/// The app's record of the hook calls (`GET /hook-requests?hook=...`).
async fn hook_requests(app: &WebApp, hook: &str) -> Vec<Value> {
    app.get_json(&format!("/hook-requests?hook={hook}"))
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The notes (`event` hook calls named `note`) the app got from one socket, in arrival order.
async fn notes_of(app: &WebApp, socket: &str) -> Vec<Value> {
    app.get_json("/hook-log")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["socket"] == socket)
        .map(|n| n["data"].clone())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
fn signature(secret: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body.as_bytes());
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

/// A hook call posted straight to the app, bypassing sockhive.
async fn post_hook(app: &WebApp, hook: &str, body: &str, signature: Option<&str>) -> http::Reply {
    let signature = signature
        .map(|s| format!("X-Sockhive-Signature: {s}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST /sockhive/{hook} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{signature}X-Sockhive-Event-Id: test-1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        app.addr,
        body.len()
    );
    http::raw(app.addr, request.as_bytes()).await
}

// ------------------------------------------------------------ SocketCluster login

#[tokio::test]
async fn socketcluster_login_procedure_sets_the_token_and_logout_removes_it() {
    let redis = RedisServer::start();
    let app = app_with(&redis, HOOK_SECRET);
    let node = hooked_node(2, &app, &[]);
    let mut driver = Driver::start().await;
    let status = sc_connect(&mut driver, &node, "sc", json!({})).await;
    assert_eq!(status["isAuthenticated"], false, "{status}");

    // A wrong password: the invoke rejects with the app's error name.
    let error = driver
        .call(
            "sc.login",
            json!({"client": "sc", "data": {"username": "alice", "password": "nope"}, "timeoutMs": 15000}),
        )
        .await
        .expect_err("a wrong password must not log in");
    assert_eq!(error["name"], "LoginFailedError", "{error}");
    assert_eq!(error["message"], "Invalid username or password", "{error}");
    let state = driver.ok("sc.state", json!({"client": "sc"})).await;
    assert_eq!(state["authState"], "unauthenticated", "{state}");

    // SocketCluster's own login pattern: invoke + the `authenticate` it causes.
    let login = driver
        .ok(
            "sc.login",
            json!({"client": "sc", "data": {"username": "alice", "password": "alice-password"}, "timeoutMs": 15000}),
        )
        .await;
    assert_eq!(login["result"], json!({"username": "alice"}), "{login}");
    assert_eq!(login["authToken"]["username"], "alice", "{login}");
    assert_eq!(login["authToken"]["sub"], "u-alice", "{login}");
    assert!(
        login["authToken"]["exp"].is_number(),
        "sockhive signs with an expiry: {login}"
    );
    let state = driver.ok("sc.state", json!({"client": "sc"})).await;
    assert_eq!(state["authState"], "authenticated", "{state}");
    assert_eq!(state["authToken"]["username"], "alice", "{state}");

    // The record follows at once: user = the token's `user` claim.
    let id = status["id"].as_str().unwrap().to_string();
    let record = node.record(&id).await;
    assert_eq!(record["logged_in"], true, "{record}");
    assert_eq!(record["user"]["id"], "u-alice", "{record}");
    assert_eq!(record["user"]["username"], "alice", "{record}");
    assert_eq!(record["auth"]["username"], "alice", "{record}");
    // ... and so does what the app is told about the socket.
    let me = invoke(&mut driver, "sc", "whoami", json!(null))
        .await
        .unwrap();
    assert_eq!(me["id"], id.as_str(), "{me}");
    assert_eq!(me["logged_in"], true, "{me}");
    assert_eq!(me["user"]["id"], "u-alice", "{me}");
    assert_eq!(me["protocol"], "socketcluster", "{me}");

    // transmit → `event` hook, one socket's calls in the order sent; an rpc
    // after them sees them all.
    for n in 1..=20 {
        driver
            .ok(
                "sc.transmit",
                json!({"client": "sc", "event": "note", "data": n}),
            )
            .await;
    }
    let counted = invoke(&mut driver, "sc", "count-notes", json!(null))
        .await
        .unwrap();
    assert_eq!(counted, 20, "the rpc overtook the events sent before it");
    assert_eq!(
        notes_of(&app, &id).await,
        (1..=20).map(|n| json!(n)).collect::<Vec<_>>()
    );

    // The token survives a reconnect (possibly to the other worker).
    let again = driver
        .ok("sc.reconnect", json!({"client": "sc", "timeoutMs": 15000}))
        .await;
    assert_eq!(again["isAuthenticated"], true, "{again}");
    // The `connect` status carries the signed token the client sent.
    assert_eq!(again["authToken"], login["signedAuthToken"], "{again}");
    let state = driver.ok("sc.state", json!({"client": "sc"})).await;
    assert_eq!(state["authState"], "authenticated", "{state}");
    assert_eq!(state["authToken"]["username"], "alice", "{state}");
    let new_id = again["id"].as_str().unwrap().to_string();
    let record = node.record(&new_id).await;
    assert_eq!(record["logged_in"], true, "{record}");
    assert_eq!(record["user"]["username"], "alice", "{record}");

    // An unknown procedure is the app's to answer.
    let error = invoke_err(&mut driver, "sc", "no-such-procedure", json!({})).await;
    assert_eq!(error["name"], "UnknownProcedureError", "{error}");

    // logout → deauthenticate effect: the client drops its token.
    assert_eq!(
        invoke(&mut driver, "sc", "logout", json!(null))
            .await
            .unwrap(),
        true
    );
    client_event(&driver, "sc", "deauthenticate", "deauthenticate", |_| true).await;
    let state = driver.ok("sc.state", json!({"client": "sc"})).await;
    assert_eq!(state["authState"], "unauthenticated", "{state}");
    assert!(state["authToken"].is_null(), "{state}");
    let record = node.record(&new_id).await;
    assert_eq!(record["logged_in"], false, "{record}");

    // Every call was signed with the secret, as JSON, with an event id of its own.
    let calls = hook_requests(&app, "rpc").await;
    assert!(calls.len() >= 6, "{calls:?}");
    let mut ids = std::collections::HashSet::new();
    for call in &calls {
        assert_eq!(call["status"], 200, "{call}");
        assert!(
            call["contentType"]
                .as_str()
                .unwrap_or("")
                .starts_with("application/json"),
            "{call}"
        );
        let raw = call["raw"].as_str().expect("raw body recorded");
        assert_eq!(call["signature"], signature(HOOK_SECRET, raw), "{call}");
        let event_id = call["eventId"].as_str().expect("an event id");
        assert!(
            ids.insert(event_id.to_string()),
            "event id {event_id} sent twice"
        );
    }
    driver.shutdown().await;
}

// ------------------------------------------------------------ socket.io chat, two nodes

#[tokio::test]
async fn socketio_chat_reaches_every_room_member_on_both_nodes() {
    let redis = RedisServer::start();
    let app = app_with(&redis, HOOK_SECRET);
    let flags = [
        "--redis-url",
        &redis.url(),
        "--session-secret",
        SECRET,
        "--user-lookup",
        "redis:user:{id}",
    ];
    let node1 = hooked_node(1, &app, &flags);
    let node2 = hooked_node(1, &app, &flags);
    let alice_cookie = app.login("alice", "alice-password").await;
    let bob_cookie = app.login("bob", "bob-password").await;
    let mut driver = Driver::start().await;

    let alice = io_connect(
        &mut driver,
        &node1,
        "alice",
        json!({"extraHeaders": {"Cookie": alice_cookie}}),
    )
    .await
    .unwrap();
    let alice_id = alice["socketId"].as_str().unwrap().to_string();
    io_connect(
        &mut driver,
        &node2,
        "bob",
        json!({"extraHeaders": {"Cookie": bob_cookie}}),
    )
    .await
    .unwrap();
    // A SocketCluster member of the room too, on the other node.
    sc_connect(
        &mut driver,
        &node2,
        "watcher",
        json!({"listen": ["chat message"]}),
    )
    .await;
    driver
        .ok(
            "sc.subscribe",
            json!({"client": "watcher", "channel": "room:lobby"}),
        )
        .await;

    // Alice subscribes herself; bob is put in the room by the app (join effect).
    let ack = driver
        .ok(
            "io.emit",
            json!({"client": "alice", "event": "subscribe", "args": ["room:lobby"], "ack": true, "timeoutMs": 10000}),
        )
        .await;
    assert_eq!(ack, json!([{"ok": true}]));
    let joined = io_rpc(&mut driver, "bob", "join-room", json!([{"room": "lobby"}])).await;
    assert_eq!(joined, json!({"joined": "room:lobby"}));

    // emitWithAck('chat message', text): the app's result is the ack.
    let acked = io_rpc(&mut driver, "alice", "chat message", json!(["hi"])).await;
    assert_eq!(acked, json!({"ok": true, "id": 1}));
    let expected = json!({"from": "u-alice", "text": "hi"});
    for member in ["alice", "bob", "watcher"] {
        let got = received(&driver, member, "chat message", |_| true).await;
        assert_eq!(got, expected, "{member}");
    }
    // The app saw who sent it: socket.user from the cookie, every argument.
    let messages = app.get_json("/messages").await;
    assert_eq!(
        messages,
        json!([{"id": 1, "from": "u-alice", "text": "hi"}])
    );
    let calls = hook_requests(&app, "rpc").await;
    let chat = calls
        .iter()
        .find(|c| c["body"]["name"] == "chat message")
        .expect("the chat message call");
    assert_eq!(
        chat["body"]["socket"]["user"]["username"], "alice",
        "{chat}"
    );
    assert_eq!(chat["body"]["socket"]["protocol"], "socketio", "{chat}");
    assert_eq!(chat["body"]["data"], "hi", "{chat}");
    assert_eq!(chat["body"]["args"], json!(["hi"]), "{chat}");

    // Several arguments all reach the app; `data` is the first.
    let echoed = io_rpc(&mut driver, "bob", "echo", json!(["a", 2, {"b": 3}])).await;
    assert_eq!(echoed, json!({"data": "a", "args": ["a", 2, {"b": 3}]}));

    // An anonymous socket.io client is refused by the app, in the ack.
    io_connect(&mut driver, &node2, "anon", json!({}))
        .await
        .unwrap();
    let refused = io_rpc(&mut driver, "anon", "chat message", json!(["spam"])).await;
    assert_eq!(refused["error"]["name"], "NotLoggedInError", "{refused}");

    // Emits without an ack reach the app, in order.
    for n in 1..=30 {
        driver
            .ok(
                "io.emit",
                json!({"client": "alice", "event": "note", "args": [n]}),
            )
            .await;
    }
    let counted = io_rpc(&mut driver, "alice", "count-notes", json!([])).await;
    assert_eq!(counted, 30, "the ack overtook the emits sent before it");
    assert_eq!(
        notes_of(&app, &alice_id).await,
        (1..=30).map(|n| json!(n)).collect::<Vec<_>>()
    );
    driver.shutdown().await;
}

// ------------------------------------------------------------ private channels under rules

const RULES: &str = r#"
[channels]
channel_auth = "rules"

[[channels.rule]]
pattern = "user:{name}"
subscribe = { "user.username" = "{name}" }
publish = false

[[channels.rule]]
pattern = "room:*"
subscribe = "hook"
publish = "hook"
"#;

#[tokio::test]
async fn private_channels_follow_the_rules_and_the_apps_hooks_until_logout() {
    let redis = RedisServer::start();
    let app = app_with(&redis, HOOK_SECRET);
    let dir = TempDir::new("hook-rules");
    let config = dir.write("sockhive.toml", RULES);
    let node = hooked_node(
        1,
        &app,
        &[
            "--config",
            config.to_str().unwrap(),
            "--hooks",
            "rpc,event,subscribe,publish",
            "--session-secret",
            SECRET,
            "--session-redis-url",
            &redis.url(),
            "--user-lookup",
            "redis:user:{id}",
        ],
    );
    let cookie = app.login("alice", "alice-password").await;
    let mut driver = Driver::start().await;
    sc_connect(
        &mut driver,
        &node,
        "alice",
        json!({"headers": {"Cookie": cookie}}),
    )
    .await;
    client_event(
        &driver,
        "alice",
        "authenticate",
        "the session's token",
        |e| e["authToken"].is_object(),
    )
    .await;

    driver
        .ok(
            "sc.subscribe",
            json!({"client": "alice", "channel": "user:alice"}),
        )
        .await;
    let error = driver
        .call(
            "sc.subscribe",
            json!({"client": "alice", "channel": "user:bob"}),
        )
        .await
        .expect_err("bob's private channel");
    assert_eq!(error["name"], "ChannelForbiddenError", "{error}");
    let error = driver
        .call(
            "sc.publish",
            json!({"client": "alice", "channel": "user:alice", "data": 1}),
        )
        .await
        .expect_err("publish = false");
    assert_eq!(error["name"], "ChannelForbiddenError", "{error}");

    // room:* asks the app: logged in may, and a publish carries its sender.
    driver
        .ok(
            "sc.subscribe",
            json!({"client": "alice", "channel": "room:lobby"}),
        )
        .await;
    driver
        .ok(
            "sc.publish",
            json!({"client": "alice", "channel": "room:lobby", "data": "hello", "timeoutMs": 15000}),
        )
        .await;
    let message = client_event(&driver, "alice", "message", "the room message", |e| {
        e["channel"] == "room:lobby"
    })
    .await;
    assert_eq!(message["data"], json!({"from": "u-alice", "text": "hello"}));
    let asked = hook_requests(&app, "subscribe").await;
    assert!(
        asked.iter().any(|c| c["body"]["channel"] == "room:lobby"
            && c["body"]["socket"]["user"]["username"] == "alice"),
        "{asked:?}"
    );
    // An anonymous socket is refused by the app, with its error name.
    sc_connect(&mut driver, &node, "anon", json!({})).await;
    let error = driver
        .call(
            "sc.subscribe",
            json!({"client": "anon", "channel": "room:lobby"}),
        )
        .await
        .expect_err("the app refuses anonymous sockets");
    assert_eq!(error["name"], "ChannelForbiddenError", "{error}");
    let error = driver
        .call(
            "sc.subscribe",
            json!({"client": "anon", "channel": "user:alice"}),
        )
        .await
        .expect_err("alice's private channel");
    assert_eq!(error["name"], "ChannelForbiddenError", "{error}");

    // Logging out of the web app takes the private channel away.
    let started = Instant::now();
    app.logout(&cookie).await;
    client_event(&driver, "alice", "kickOut", "kickOut of user:alice", |e| {
        e["channel"] == "user:alice"
    })
    .await;
    let took = started.elapsed();
    eprintln!("kickOut {took:?} after the web logout");
    assert!(took < Duration::from_secs(3), "kickOut took {took:?}");
    let state = driver.ok("sc.state", json!({"client": "alice"})).await;
    assert!(
        !state["subscriptions"]
            .as_array()
            .unwrap()
            .contains(&json!("user:alice")),
        "{state}"
    );
    driver.shutdown().await;
}

// ------------------------------------------------------------ effects

#[tokio::test]
async fn effects_reach_the_socket_its_user_and_its_channels() {
    let redis = RedisServer::start();
    let app = app_with(&redis, HOOK_SECRET);
    let node = hooked_node(2, &app, &[]);
    let mut driver = Driver::start().await;
    let alice = sc_connect(&mut driver, &node, "alice", json!({"listen": ["notice"]})).await;
    let alice_id = alice["id"].as_str().unwrap().to_string();
    driver
        .ok(
            "sc.login",
            json!({"client": "alice", "data": {"username": "alice", "password": "alice-password"}}),
        )
        .await;
    sc_connect(&mut driver, &node, "bob-sc", json!({"listen": ["notice"]})).await;
    driver
        .ok(
            "sc.login",
            json!({"client": "bob-sc", "data": {"username": "bob", "password": "bob-password"}}),
        )
        .await;
    // Socket.IO logs in through the same procedure: `authenticated` {token, user}.
    let bob_io = io_connect(&mut driver, &node, "bob-io", json!({}))
        .await
        .unwrap();
    let bob_io_id = bob_io["socketId"].as_str().unwrap().to_string();
    let login = io_rpc(
        &mut driver,
        "bob-io",
        "login",
        json!([{"username": "bob", "password": "bob-password"}]),
    )
    .await;
    assert_eq!(login, json!({"username": "bob"}));
    let told = received(&driver, "bob-io", "authenticated", |_| true).await;
    assert!(told["token"].is_string(), "{told}");
    assert_eq!(told["user"]["username"], "bob", "{told}");
    let record = node.record(&bob_io_id).await;
    assert_eq!(record["logged_in"], true, "{record}");
    assert_eq!(record["user"]["id"], "u-bob", "{record}");

    // emit to self, and to a user (every socket of bob's, both protocols).
    invoke(
        &mut driver,
        "alice",
        "emit-self",
        json!({"event": "notice", "data": {"n": 1}}),
    )
    .await
    .unwrap();
    assert_eq!(
        received(&driver, "alice", "notice", |_| true).await,
        json!({"n": 1})
    );
    invoke(
        &mut driver,
        "alice",
        "emit-user",
        json!({"user": "u-bob", "event": "notice", "data": {"n": 2}}),
    )
    .await
    .unwrap();
    assert_eq!(
        received(&driver, "bob-sc", "notice", |d| d["n"] == 2).await,
        json!({"n": 2})
    );
    assert_eq!(
        received(&driver, "bob-io", "notice", |d| d["n"] == 2).await,
        json!({"n": 2})
    );
    invoke(
        &mut driver,
        "alice",
        "emit-filter",
        json!({"filter": {"user.role": "admin"}, "event": "notice", "data": {"n": 3}}),
    )
    .await
    .unwrap();
    received(&driver, "alice", "notice", |d| d["n"] == 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leaked: Vec<Value> = driver
        .events()
        .into_iter()
        .filter(|e| e["event"] == "receive" && e["name"] == "notice")
        .filter(|e| {
            (e["client"] == "alice" && e["data"]["n"] == 2)
                || (e["client"] != "alice" && (e["data"]["n"] == 3 || e["args"][0]["n"] == 3))
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "emits reached sockets they were not for: {leaked:?}"
    );

    // set_session: the socket's own key-value session, in its record.
    invoke(
        &mut driver,
        "alice",
        "set-session",
        json!({"theme": "dark", "lang": "en"}),
    )
    .await
    .unwrap();
    assert_eq!(node.record(&alice_id).await["session"]["theme"], "dark");
    invoke(&mut driver, "alice", "set-session", json!({"theme": null}))
        .await
        .unwrap();
    let me = invoke(&mut driver, "alice", "whoami", json!(null))
        .await
        .unwrap();
    assert_eq!(me["session"], json!({"lang": "en"}), "{me}");

    // join / leave: server-side membership.
    invoke(&mut driver, "alice", "join-room", json!({"room": "x"}))
        .await
        .unwrap();
    io_rpc(&mut driver, "bob-io", "join-room", json!([{"room": "x"}])).await;
    let channels = node.record(&alice_id).await["channels"].clone();
    assert!(
        channels.as_array().unwrap().contains(&json!("room:x")),
        "{channels}"
    );
    let published = node
        .admin_post(
            "/api/publish",
            json!({"channel": "room:x", "data": {"n": 4}}),
        )
        .await;
    assert_eq!(published.status, 200, "{}", published.body);
    client_event(&driver, "alice", "rawPublish", "room:x for alice", |e| {
        e["channel"] == "room:x" && e["data"]["n"] == 4
    })
    .await;
    received(&driver, "bob-io", "publish", |d| d["channel"] == "room:x").await;
    invoke(&mut driver, "alice", "leave-room", json!({"room": "x"}))
        .await
        .unwrap();
    let channels = node.record(&alice_id).await["channels"].clone();
    assert!(
        !channels.as_array().unwrap().contains(&json!("room:x")),
        "{channels}"
    );

    // set_auth_token with an expiry of the app's choosing.
    invoke(
        &mut driver,
        "alice",
        "set-token",
        json!({"claims": {"sub": "u-alice", "username": "alice", "scope": "chat"}, "expires_in": "30m"}),
    )
    .await
    .unwrap();
    let token = client_event(&driver, "alice", "authenticate", "the new token", |e| {
        e["authToken"]["scope"] == "chat"
    })
    .await;
    let claims = &token["authToken"];
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap_or(0);
    assert!(
        (1700..=1900).contains(&lifetime) || claims["iat"].is_null(),
        "{claims}"
    );
    let record = node.record(&alice_id).await;
    assert_eq!(
        record["user"],
        json!({"id": "u-alice"}),
        "no user claim: user = {{id: sub}}: {record}"
    );

    // disconnect: the code and reason reach the client.
    let _ = invoke(
        &mut driver,
        "alice",
        "kick-me",
        json!({"code": 4000, "reason": "bye"}),
    )
    .await;
    let closed = client_event(&driver, "alice", "disconnect", "alice disconnected", |_| {
        true
    })
    .await;
    assert_eq!(closed["code"], 4000, "{closed}");
    assert_eq!(closed["reason"], "bye", "{closed}");
    let _ = driver
        .call(
            "io.emit",
            json!({"client": "bob-io", "event": "kick-me", "args": [{}], "ack": true, "timeoutMs": 3000}),
        )
        .await;
    let gone = client_event(
        &driver,
        "bob-io",
        "disconnect",
        "bob-io disconnected",
        |_| true,
    )
    .await;
    assert_eq!(gone["reason"], "io server disconnect", "{gone}");
    driver.shutdown().await;
}

// ------------------------------------------------------------ failures

#[tokio::test]
async fn a_stopped_or_slow_app_gives_hook_errors_and_the_socket_stays() {
    let redis = RedisServer::start();
    let app = app_with(&redis, HOOK_SECRET);
    let node = hooked_node(1, &app, &["--hook-timeout", "1s"]);
    let mut driver = Driver::start().await;
    sc_connect(&mut driver, &node, "sc", json!({})).await;
    io_connect(&mut driver, &node, "io", json!({}))
        .await
        .unwrap();
    invoke(&mut driver, "sc", "whoami", json!(null))
        .await
        .unwrap();

    // Past --hook-timeout: HookTimeoutError, near the timeout, not the app's answer.
    let started = Instant::now();
    let error = invoke_err(&mut driver, "sc", "sleep", json!({"ms": 4000})).await;
    let took = started.elapsed();
    assert_eq!(error["name"], "HookTimeoutError", "{error}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3500),
        "HookTimeoutError after {took:?}"
    );
    let acked = io_rpc(&mut driver, "io", "sleep", json!([{"ms": 4000}])).await;
    assert_eq!(acked["error"]["name"], "HookTimeoutError", "{acked}");
    // The next call is not held up by the one that timed out.
    let started = Instant::now();
    invoke(&mut driver, "sc", "whoami", json!(null))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // The app stops: HookUnavailableError within the timeout, the socket stays.
    drop(app);
    let started = Instant::now();
    let error = invoke_err(&mut driver, "sc", "whoami", json!(null)).await;
    let took = started.elapsed();
    assert_eq!(error["name"], "HookUnavailableError", "{error}");
    eprintln!("HookUnavailableError as the client sees it: {error}");
    assert!(
        took < Duration::from_secs(3),
        "HookUnavailableError after {took:?}"
    );
    let acked = io_rpc(&mut driver, "io", "whoami", json!([])).await;
    assert_eq!(acked["error"]["name"], "HookUnavailableError", "{acked}");
    // Events are dropped without harm.
    driver
        .ok(
            "sc.transmit",
            json!({"client": "sc", "event": "note", "data": 1}),
        )
        .await;
    let state = driver.ok("sc.state", json!({"client": "sc"})).await;
    assert_eq!(state["state"], "open", "{state}");
    driver
        .ok("sc.subscribe", json!({"client": "sc", "channel": "news"}))
        .await;
    let ack = driver
        .ok(
            "io.emit",
            json!({"client": "io", "event": "subscribe", "args": ["news"], "ack": true, "timeoutMs": 10000}),
        )
        .await;
    assert_eq!(ack, json!([{"ok": true}]));
    assert_eq!(
        driver.ok("io.state", json!({"client": "io"})).await["connected"],
        true
    );

    // A hook URL where nothing listens at all.
    let nowhere = NodeBuilder::new(1)
        .args([
            "--hook-url",
            &format!("http://127.0.0.1:{}/sockhive", free_port()),
            "--hook-secret",
            HOOK_SECRET,
        ])
        .start();
    sc_connect(&mut driver, &nowhere, "lonely", json!({})).await;
    let started = Instant::now();
    let error = invoke_err(&mut driver, "lonely", "whoami", json!(null)).await;
    assert_eq!(error["name"], "HookUnavailableError", "{error}");
    eprintln!("HookUnavailableError as the client sees it: {error}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    driver
        .ok(
            "sc.subscribe",
            json!({"client": "lonely", "channel": "news"}),
        )
        .await;

    assert!(
        node.metric("sockhive_hook_calls_total{hook=\"rpc\",outcome=\"timeout\"}")
            .await
            >= 2.0
    );
    assert!(
        node.metric("sockhive_hook_calls_total{hook=\"rpc\",outcome=\"unavailable\"}")
            .await
            >= 2.0
    );
    driver.shutdown().await;
}

#[tokio::test]
async fn the_app_verifies_signatures_and_secrets_rotate() {
    let redis = RedisServer::start();
    let app = app_with(&redis, "old-secret");
    // The app itself: unsigned or wrongly signed calls are refused with 401.
    let body = json!({"hook": "rpc", "socket": {"id": "x", "logged_in": false}, "name": "whoami", "data": null}).to_string();
    assert_eq!(post_hook(&app, "rpc", &body, None).await.status, 401);
    let wrong = signature("not-the-secret", &body);
    assert_eq!(
        post_hook(&app, "rpc", &body, Some(&wrong)).await.status,
        401
    );
    let tampered = signature("old-secret", &body.replace("whoami", "whoam1"));
    assert_eq!(
        post_hook(&app, "rpc", &body, Some(&tampered)).await.status,
        401
    );
    let right = signature("old-secret", &body);
    let reply = post_hook(&app, "rpc", &body, Some(&right)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(app.get_json("/hook-stats").await["refused"], 3);

    let mut driver = Driver::start().await;
    // sockhive with a secret the app does not know: refused, HookUnavailableError.
    let wrong_node = NodeBuilder::new(1)
        .args([
            "--hook-url",
            &app.hook_url(),
            "--hook-secret",
            "a-wrong-secret",
        ])
        .start();
    sc_connect(&mut driver, &wrong_node, "wrong", json!({})).await;
    let error = invoke_err(&mut driver, "wrong", "whoami", json!(null)).await;
    assert_eq!(error["name"], "HookUnavailableError", "{error}");
    eprintln!("HookUnavailableError as the client sees it: {error}");
    let stats = app.get_json("/hook-stats").await;
    assert_eq!(stats["refused"], 4, "{stats}");
    io_connect(&mut driver, &wrong_node, "wrong-io", json!({}))
        .await
        .unwrap();
    let acked = io_rpc(&mut driver, "wrong-io", "whoami", json!([])).await;
    assert_eq!(acked["error"]["name"], "HookUnavailableError", "{acked}");
    assert_eq!(app.get_json("/hook-stats").await["refused"], 5);

    // Rotation: sockhive signs with the new secret and still sends the old one's
    // signature, so the app that only knows the old one keeps working.
    let rotating = NodeBuilder::new(1)
        .args([
            "--hook-url",
            &app.hook_url(),
            "--hook-secret",
            "new-secret",
            "--hook-secret",
            "old-secret",
        ])
        .start();
    sc_connect(&mut driver, &rotating, "rotating", json!({})).await;
    let me = invoke(&mut driver, "rotating", "whoami", json!(null))
        .await
        .unwrap();
    assert_eq!(me["logged_in"], false, "{me}");
    assert_eq!(app.get_json("/hook-stats").await["refused"], 5);
    let calls = hook_requests(&app, "rpc").await;
    let last = calls.last().expect("the rotating node's call");
    assert_eq!(last["status"], 200, "{last}");
    let raw = last["raw"].as_str().unwrap();
    assert_eq!(
        last["signature"],
        format!(
            "{},{}",
            signature("new-secret", raw),
            signature("old-secret", raw)
        ),
        "the first secret signs, every secret's signature is sent"
    );
    driver.shutdown().await;
}

#[tokio::test]
async fn ten_thousand_calls_to_a_slow_app_are_bounded_and_counted() {
    const COUNT: u64 = 10_000;
    let redis = RedisServer::start();
    let app = app_with(&redis, HOOK_SECRET);
    let node = hooked_node(1, &app, &["--hook-timeout", "30s", "--hook-queue", "64"]);
    let mut driver = Driver::start().await;
    sc_connect(&mut driver, &node, "burst", json!({"ackTimeout": 60000})).await;
    invoke(&mut driver, "burst", "whoami", json!(null))
        .await
        .unwrap();
    let rss_before = node.workers_rss_kib();

    // Each call carries 8 KB: kept for every queued call, 10,000 would be 80 MB.
    let pad = "a".repeat(8 * 1024);
    // Every invoke waits up to 60 s for its reply: without a bounded queue,
    // 10,000 x 20 ms in order would end in client-side TimeoutErrors.
    let tally = driver
        .call_within(
            "sc.invokeBurst",
            json!({"client": "burst", "event": "sleep", "count": COUNT, "data": {"ms": 20, "pad": pad}, "timeoutMs": 60000}),
            Duration::from_secs(90),
        )
        .await
        .expect("the burst settles");
    let rss_after = node.workers_rss_kib();
    eprintln!("burst: {tally}; worker RSS {rss_before} KiB -> {rss_after} KiB");
    let ok = tally["ok"].as_u64().unwrap();
    let unavailable = tally["errors"]["HookUnavailableError"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(
        ok + unavailable,
        COUNT,
        "every call is answered, by the app or with HookUnavailableError: {tally}"
    );
    assert!(ok >= 64, "the queue's calls are served: {tally}");
    assert!(
        unavailable >= COUNT / 2,
        "most calls are refused at once: {tally}"
    );
    // Refusals come as fast as the calls arrive; the last one well before the
    // first client-side timeout could fire.
    assert!(
        tally["lastErrorMs"].as_u64().unwrap() < 45_000,
        "a full queue refuses at once: {tally}"
    );
    let grown = rss_after.saturating_sub(rss_before);
    assert!(grown < 30 * 1024, "worker RSS grew by {grown} KiB");

    // Counted: every refusal is a queue_full outcome.
    let counted = eventually(WAIT, "the queue_full count", async || {
        let n = node
            .metric("sockhive_hook_calls_total{hook=\"rpc\",outcome=\"queue_full\"}")
            .await;
        (n >= unavailable as f64).then_some(n)
    })
    .await;
    assert_eq!(counted, unavailable as f64);
    // The app saw only what was queued.
    let served = app.get_json("/hook-stats").await["calls"]["rpc"]
        .as_u64()
        .unwrap();
    assert_eq!(
        served,
        ok + 1,
        "the app got the queued calls and the first whoami"
    );
    // And the socket is still usable.
    let me = invoke(&mut driver, "burst", "whoami", json!(null))
        .await
        .unwrap();
    assert_eq!(me["logged_in"], false, "{me}");

    // Events beyond the queue are dropped and counted, never reordered.
    const EVENTS: u64 = 2_000;
    let delayed = app.post("/hook-delay", None, &json!({"ms": 20})).await;
    assert_eq!(delayed.status, 200, "{}", delayed.body);
    let chatty = sc_connect(&mut driver, &node, "chatty", json!({})).await;
    let chatty_id = chatty["id"].as_str().unwrap().to_string();
    driver
        .ok(
            "sc.transmitMany",
            json!({"client": "chatty", "event": "note", "count": EVENTS}),
        )
        .await;
    let (delivered, dropped) = eventually(
        Duration::from_secs(30),
        "every note delivered or dropped",
        async || {
            let dropped = node
                .metric("sockhive_hook_calls_total{hook=\"event\",outcome=\"queue_full\"}")
                .await as u64;
            let delivered = notes_of(&app, &chatty_id).await;
            (delivered.len() as u64 + dropped == EVENTS).then_some((delivered, dropped))
        },
    )
    .await;
    eprintln!("events: {} delivered, {dropped} dropped", delivered.len());
    assert!(dropped > 0, "a slow app must make the queue overflow");
    let numbers: Vec<u64> = delivered.iter().map(|d| d["n"].as_u64().unwrap()).collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "events reached the app out of order: {numbers:?}"
    );
    assert_eq!(numbers.first(), Some(&1), "{numbers:?}");
    let grown = node.workers_rss_kib().saturating_sub(rss_before);
    assert!(grown < 30 * 1024, "worker RSS grew by {grown} KiB");
    driver.shutdown().await;
}

// ------------------------------------------------------------ connect, lifecycle, metrics

#[tokio::test]
async fn connect_and_lifecycle_hooks_and_their_metrics() {
    let redis = RedisServer::start();
    let app = app_with(&redis, HOOK_SECRET);
    let node = hooked_node(
        1,
        &app,
        &[
            "--hooks",
            "rpc,event,connect,lifecycle",
            "--session-secret",
            SECRET,
            "--session-redis-url",
            &redis.url(),
        ],
    );
    let alice_cookie = app.login("alice", "alice-password").await;
    let carol_cookie = app.login("carol", "carol-password").await;
    let mut driver = Driver::start().await;

    // alice passes the connect hook.
    let alice = sc_connect(
        &mut driver,
        &node,
        "alice",
        json!({"headers": {"Cookie": alice_cookie}}),
    )
    .await;
    assert!(alice["authError"].is_null(), "{alice}");
    let alice_id = alice["id"].as_str().unwrap().to_string();
    assert_eq!(node.record(&alice_id).await["logged_in"], true);

    // carol is banned by the app: refused like a bad credential (soft mode).
    let carol = sc_connect(
        &mut driver,
        &node,
        "carol",
        json!({"headers": {"Cookie": carol_cookie}}),
    )
    .await;
    assert_eq!(carol["isAuthenticated"], false, "{carol}");
    assert_eq!(carol["authError"]["name"], "BannedError", "{carol}");
    let carol_id = carol["id"].as_str().unwrap().to_string();
    assert_eq!(node.record(&carol_id).await["logged_in"], false);
    let error = io_connect(
        &mut driver,
        &node,
        "carol-io",
        json!({"extraHeaders": {"Cookie": carol_cookie}}),
    )
    .await
    .expect_err("CONNECT_ERROR for a banned user");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or("")
            .contains("BannedError"),
        "{error}"
    );
    let asked = hook_requests(&app, "connect").await;
    assert!(
        asked.iter().any(|c| c["body"]["socket"]["user"]["id"] == 7),
        "the connect hook is told the resolved user: {asked:?}"
    );

    // lifecycle: connected, then disconnected, batched to the app.
    driver.ok("sc.disconnect", json!({"client": "alice"})).await;
    let events = eventually(
        WAIT,
        "alice's connected and disconnected records",
        async || {
            let all = app.get_json("/hook-lifecycle").await;
            let mine: Vec<Value> = all
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["socket"]["id"] == alice_id.as_str())
                .cloned()
                .collect();
            (mine.len() >= 2).then_some(mine)
        },
    )
    .await;
    assert_eq!(events[0]["type"], "connected", "{events:?}");
    assert_eq!(events[1]["type"], "disconnected", "{events:?}");
    assert_eq!(events[0]["socket"]["user"]["id"], "u-alice", "{events:?}");
    assert!(
        events[0]["at"].as_str().unwrap_or("").contains('T'),
        "{events:?}"
    );

    // An rpc the app answers with an error.
    sc_connect(&mut driver, &node, "anon", json!({})).await;
    let error = invoke_err(&mut driver, "anon", "fail", json!({"name": "NopeError"})).await;
    assert_eq!(error["name"], "NopeError", "{error}");
    invoke(&mut driver, "anon", "whoami", json!(null))
        .await
        .unwrap();

    let metrics = node.metrics().await;
    for series in [
        "sockhive_hook_calls_total{hook=\"connect\",outcome=\"ok\"}",
        "sockhive_hook_calls_total{hook=\"connect\",outcome=\"error\"}",
        "sockhive_hook_calls_total{hook=\"rpc\",outcome=\"ok\"}",
        "sockhive_hook_calls_total{hook=\"rpc\",outcome=\"error\"}",
        "sockhive_hook_calls_total{hook=\"lifecycle\",outcome=\"ok\"}",
        "sockhive_hook_duration_seconds_count{hook=\"rpc\"}",
        "sockhive_hook_duration_seconds_count{hook=\"connect\"}",
    ] {
        assert!(
            sockhive_tests::node::sum_series(&metrics, series) >= 1.0,
            "{series} missing or zero in:\n{}",
            metrics
                .lines()
                .filter(|l| l.contains("hook"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert!(
        metrics.contains("sockhive_hook_duration_seconds_bucket{"),
        "a histogram"
    );
    driver.shutdown().await;
}

// ------------------------------------------------------------ more of the contract

#[tokio::test]
async fn with_channel_hooks_on_in_open_mode_the_app_decides_every_channel() {
    let redis = RedisServer::start();
    let app = app_with(&redis, HOOK_SECRET);
    let node = hooked_node(1, &app, &["--hooks", "rpc,event,subscribe,publish"]);
    let mut driver = Driver::start().await;
    io_connect(&mut driver, &node, "io", json!({}))
        .await
        .unwrap();
    let refused = driver
        .ok(
            "io.emit",
            json!({"client": "io", "event": "subscribe", "args": ["room:lobby"], "ack": true, "timeoutMs": 10000}),
        )
        .await;
    assert_eq!(
        refused[0]["error"]["name"], "ChannelForbiddenError",
        "{refused}"
    );
    // A Socket.IO socket logs in through the app; its new identity counts at once.
    let login = io_rpc(
        &mut driver,
        "io",
        "login",
        json!([{"username": "bob", "password": "bob-password"}]),
    )
    .await;
    assert_eq!(login, json!({"username": "bob"}));
    let ack = driver
        .ok(
            "io.emit",
            json!({"client": "io", "event": "subscribe", "args": ["room:lobby"], "ack": true, "timeoutMs": 10000}),
        )
        .await;
    assert_eq!(ack, json!([{"ok": true}]));
    let ack = driver
        .ok(
            "io.emit",
            json!({"client": "io", "event": "publish", "args": [{"channel": "room:lobby", "data": "yo"}], "ack": true, "timeoutMs": 10000}),
        )
        .await;
    assert_eq!(ack, json!([{"ok": true}]));
    let message = received(&driver, "io", "publish", |d| d["channel"] == "room:lobby").await;
    assert_eq!(
        message["data"],
        json!({"from": "u-bob", "text": "yo"}),
        "{message}"
    );
    // Not a room: the app refuses, whoever asks.
    let ack = driver
        .ok(
            "io.emit",
            json!({"client": "io", "event": "subscribe", "args": ["elsewhere"], "ack": true, "timeoutMs": 10000}),
        )
        .await;
    assert_eq!(ack[0]["error"]["name"], "ChannelForbiddenError", "{ack}");
    // SocketCluster the same way.
    sc_connect(&mut driver, &node, "sc", json!({})).await;
    let error = driver
        .call(
            "sc.subscribe",
            json!({"client": "sc", "channel": "room:lobby"}),
        )
        .await
        .expect_err("anonymous");
    assert_eq!(error["name"], "ChannelForbiddenError", "{error}");
    driver
        .ok(
            "sc.login",
            json!({"client": "sc", "data": {"username": "alice", "password": "alice-password"}}),
        )
        .await;
    driver
        .ok(
            "sc.subscribe",
            json!({"client": "sc", "channel": "room:lobby"}),
        )
        .await;
    driver
        .ok(
            "sc.publish",
            json!({"client": "sc", "channel": "room:lobby", "data": "hey"}),
        )
        .await;
    let message = received(&driver, "io", "publish", |d| {
        d["channel"] == "room:lobby" && d["data"]["text"] == "hey"
    })
    .await;
    assert_eq!(message["data"]["from"], "u-alice", "{message}");
    driver.shutdown().await;
}

#[tokio::test]
async fn an_identity_set_by_the_app_opens_and_closes_private_channels() {
    let redis = RedisServer::start();
    let app = app_with(&redis, HOOK_SECRET);
    let dir = TempDir::new("hook-identity");
    let config = dir.write("sockhive.toml", RULES);
    let node = hooked_node(1, &app, &["--config", config.to_str().unwrap()]);
    let mut driver = Driver::start().await;
    let status = sc_connect(&mut driver, &node, "sc", json!({})).await;
    let id = status["id"].as_str().unwrap().to_string();
    let error = driver
        .call(
            "sc.subscribe",
            json!({"client": "sc", "channel": "user:alice"}),
        )
        .await
        .expect_err("anonymous");
    assert_eq!(error["name"], "ChannelForbiddenError", "{error}");
    driver
        .ok(
            "sc.login",
            json!({"client": "sc", "data": {"username": "alice", "password": "alice-password"}}),
        )
        .await;
    driver
        .ok(
            "sc.subscribe",
            json!({"client": "sc", "channel": "user:alice"}),
        )
        .await;
    // The user index follows too: an emit to the user reaches this socket.
    driver
        .ok("sc.listen", json!({"client": "sc", "event": "notice"}))
        .await;
    let emitted = node
        .admin_post(
            "/api/sockets/emit",
            json!({"filter": {"user.username": "alice"}, "event": "notice", "data": {"n": 1}}),
        )
        .await;
    assert_eq!(emitted.json()["delivered"], 1, "{}", emitted.body);
    received(&driver, "sc", "notice", |d| d["n"] == 1).await;
    // The app's logout: deauthenticate, and the private channel is left.
    invoke(&mut driver, "sc", "logout", json!(null))
        .await
        .unwrap();
    client_event(&driver, "sc", "kickOut", "kickOut of user:alice", |e| {
        e["channel"] == "user:alice"
    })
    .await;
    eventually(WAIT, "the record to drop the channel", async || {
        let record = node.record(&id).await;
        (record["channels"] == json!([]) && record["logged_in"] == false).then_some(())
    })
    .await;
    driver.shutdown().await;
}

#[tokio::test]
async fn the_connect_hook_under_require_auth_rejects_finally_or_answers_503() {
    let redis = RedisServer::start();
    let app = app_with(&redis, HOOK_SECRET);
    let node = hooked_node(
        1,
        &app,
        &[
            "--hooks",
            "rpc,event,connect",
            "--require-auth",
            "--session-secret",
            SECRET,
            "--session-redis-url",
            &redis.url(),
        ],
    );
    let alice_cookie = app.login("alice", "alice-password").await;
    let carol_cookie = app.login("carol", "carol-password").await;
    let mut driver = Driver::start().await;
    sc_connect(
        &mut driver,
        &node,
        "alice",
        json!({"headers": {"Cookie": alice_cookie}}),
    )
    .await;
    let refused = driver
        .call(
            "sc.connect",
            json!({"client": "carol", "url": node.sc_url(), "headers": {"Cookie": carol_cookie}, "autoReconnect": true}),
        )
        .await
        .expect_err("carol is banned");
    assert!(refused["code"].as_u64().unwrap_or(0) >= 4500, "{refused}");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap_or("")
            .contains("BannedError"),
        "{refused}"
    );
    let error = io_connect(
        &mut driver,
        &node,
        "carol-io",
        json!({"extraHeaders": {"Cookie": carol_cookie}}),
    )
    .await
    .expect_err("CONNECT_ERROR");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or("")
            .contains("BannedError"),
        "{error}"
    );

    // The app is gone: no connect hook answer, so no socket, and a 503 to retry.
    drop(app);
    let request = format!("GET /socketcluster/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: {alice_cookie}\r\n\r\n");
    let reply = http::raw(node.public, request.as_bytes()).await;
    assert_eq!(
        reply.status, 503,
        "contract: a connect hook that cannot answer under --require-auth is HTTP 503 with Retry-After before the upgrade (a 4500 close is final: the client never retries)\n{}\n{}",
        reply.head, reply.body
    );
    assert!(
        reply.head.to_ascii_lowercase().contains("retry-after:"),
        "{}",
        reply.head
    );
    driver.shutdown().await;
}

#[tokio::test]
async fn lifecycle_events_are_retried_until_the_app_is_back() {
    let redis = RedisServer::start();
    let port = free_port();
    let port_text = port.to_string();
    let env = [
        ("SESSION_SECRETS", SECRET),
        ("HOOK_SECRETS", HOOK_SECRET),
        ("PORT", port_text.as_str()),
    ];
    let app = WebApp::start(&redis.url(), &env);
    let node = hooked_node(1, &app, &["--hooks", "rpc,event,lifecycle"]);
    let mut driver = Driver::start().await;
    drop(app);
    // Connected and gone while the app is down.
    let status = sc_connect(&mut driver, &node, "sc", json!({})).await;
    let id = status["id"].as_str().unwrap().to_string();
    driver.ok("sc.disconnect", json!({"client": "sc"})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let app = WebApp::start(&redis.url(), &env);
    let types = eventually(
        Duration::from_secs(30),
        "the retried lifecycle batch",
        async || {
            let all = app.get_json("/hook-lifecycle").await;
            let mine: Vec<Value> = all
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["socket"]["id"] == id.as_str())
                .map(|e| e["type"].clone())
                .collect();
            (mine.len() >= 2).then_some(mine)
        },
    )
    .await;
    assert_eq!(types, vec![json!("connected"), json!("disconnected")]);
    driver.shutdown().await;
}
