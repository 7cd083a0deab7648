//! The web app's own passport login authenticates the socket: the real
//! express + express-session + connect-redis + passport app writes the
//! sessions, the real `socketcluster-client@20` connects with its cookie.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sockhive_tests::app::WebApp;
use sockhive_tests::redis::{RedisCluster, RedisServer};
use sockhive_tests::{eventually, http, Driver, Node, NodeBuilder};

const SECRET: &str = "app-session-secret";

fn node_for(redis: &RedisServer, workers: u16, extra: &[&str]) -> Node {
    NodeBuilder::new(workers)
        .args([
            "--session-secret",
            SECRET,
            "--session-redis-url",
            &redis.url(),
        ])
        .args(extra.iter().copied())
        .start()
}

async fn connect(
    driver: &mut Driver,
    node: &Node,
    client: &str,
    cookie: Option<&str>,
    extra: Value,
) -> Result<Value, Value> {
    let mut fields = json!({"client": client, "url": node.sc_url()});
    if let Some(cookie) = cookie {
        fields["headers"] = json!({"Cookie": cookie});
    }
    if let (Value::Object(fields), Value::Object(extra)) = (&mut fields, extra) {
        fields.extend(extra);
    }
    driver.call("sc.connect", fields).await
}

async fn record_of(node: &Node, id: &str) -> Value {
    node.record(id).await
}

/// Whether the socket of this `sc.connect` result is logged in (a cookie login
/// says so in its record: its reply's `isAuthenticated` is about the client's
/// own token).
async fn logged_in(node: &Node, status: &Value) -> bool {
    status["authError"].is_null()
        && record_of(node, status["id"].as_str().unwrap()).await["logged_in"] == true
}

#[tokio::test]
async fn a_passport_login_authenticates_the_socket() {
    let redis = RedisServer::start();
    let app = WebApp::start(&redis.url(), &[("SESSION_SECRETS", SECRET)]);
    let node = node_for(&redis, 2, &[]);
    let cookie = app.login("alice", "alice-password").await;
    let mut driver = Driver::start().await;
    let status = connect(&mut driver, &node, "alice", Some(&cookie), json!({}))
        .await
        .unwrap();
    // As on socketcluster-server, the reply says whether the client's own
    // token was accepted (it sent none); the session's token follows.
    assert_eq!(status["isAuthenticated"], false, "{status}");
    // The minted token arrives after the handshake (and survives the client's handshake handling).
    let minted = driver
        .wait_event(Duration::from_secs(5), "the session's token", |e| {
            e["client"] == "alice" && e["event"] == "authenticate" && e["authToken"].is_object()
        })
        .await;
    assert_eq!(minted["authToken"]["sub"], "u-alice");
    let state = driver.ok("sc.state", json!({"client": "alice"})).await;
    assert_eq!(state["authState"], "authenticated");
    assert_eq!(state["authToken"]["sub"], "u-alice");
    // The client never held the authenticated state with a null token.
    for event in driver.events_of("alice", "authenticate") {
        assert!(event["authToken"].is_object(), "{event}");
    }
    let record = record_of(&node, status["id"].as_str().unwrap()).await;
    assert_eq!(record["logged_in"], true);
    assert_eq!(record["user"]["id"], "u-alice");
    assert_eq!(record["auth"]["sub"], "u-alice");
    let found = node
        .admin_post(
            "/api/sockets/query",
            json!({"filter": {"user.id": "u-alice"}}),
        )
        .await
        .json();
    assert_eq!(found["sockets"].as_array().unwrap().len(), 1);
    assert_eq!(
        node.metric("sockhive_session_logins_total{result=\"ok\"}")
            .await,
        1.0
    );
    // Reconnecting with the token it was handed (and the cookie): the reply
    // says the client's own token was accepted, and no new token is pushed.
    let returning = connect(
        &mut driver,
        &node,
        "alice-again",
        Some(&cookie),
        json!({"authToken": minted["signedAuthToken"]}),
    )
    .await
    .unwrap();
    assert_eq!(returning["isAuthenticated"], true, "{returning}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pushed = driver.events_of("alice-again", "authenticate");
    assert!(
        pushed
            .iter()
            .all(|e| e["signedAuthToken"] == minted["signedAuthToken"]),
        "{pushed:?}"
    );
    driver.shutdown().await;
}

#[tokio::test]
async fn a_user_lookup_resolves_the_whole_user() {
    let redis = RedisServer::start();
    let app = WebApp::start(&redis.url(), &[("SESSION_SECRETS", SECRET)]);
    let cookie = app.login("carol", "carol-password").await;
    let mut driver = Driver::start().await;
    for lookup in [
        "redis:user:{id}".to_string(),
        format!("http://{}/users/{{id}}", app.addr),
    ] {
        let node = node_for(&redis, 1, &["--user-lookup", &lookup]);
        let status = connect(&mut driver, &node, "carol", Some(&cookie), json!({}))
            .await
            .unwrap();
        assert_eq!(status["isAuthenticated"], false, "{lookup}: {status}");
        let record = record_of(&node, status["id"].as_str().unwrap()).await;
        assert_eq!(record["logged_in"], true, "{lookup}: {record}");
        assert_eq!(record["user"]["username"], "carol", "{lookup}: {record}");
        assert_eq!(
            record["user"]["id"], 7,
            "a numeric passport id stays a number"
        );
        assert_eq!(record["auth"]["user"]["displayName"], "Carol Numeric");
    }
    driver.shutdown().await;
}

/// Cookies that must not log anyone in, with the error the client must see.
async fn bad_cookies(
    redis: &RedisServer,
    app: &WebApp,
) -> Vec<(&'static str, String, &'static str)> {
    let good = app.login("bob", "bob-password").await;
    let (name, value) = good.split_once('=').unwrap();
    let mut tampered = value.to_string();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let other_app = WebApp::start(&redis.url(), &[("SESSION_SECRETS", "some-other-secret")]);
    let wrong_secret = other_app.login("bob", "bob-password").await;
    let sid = value
        .trim_start_matches("s%3A")
        .split('.')
        .next()
        .unwrap()
        .to_string();
    let unsigned = format!("{name}={sid}");
    let unknown = app.login("alice", "alice-password").await;
    let unknown_sid = unknown
        .split_once('=')
        .unwrap()
        .1
        .trim_start_matches("s%3A")
        .split('.')
        .next()
        .unwrap()
        .to_string();
    redis.cli(&["DEL", &format!("sess:{unknown_sid}")]);
    let logged_out = app.login("alice", "alice-password").await;
    assert_eq!(
        app.post("/logout-keep-session", Some(&logged_out), &json!({}))
            .await
            .status,
        200
    );
    vec![
        (
            "tampered",
            format!("{name}={tampered}"),
            "SessionCookieInvalidError",
        ),
        ("wrong-secret", wrong_secret, "SessionCookieInvalidError"),
        ("unsigned", unsigned, "SessionCookieInvalidError"),
        ("unknown-sid", unknown, "SessionNotFoundError"),
        ("logged-out", logged_out, "SessionNotFoundError"),
    ]
}

#[tokio::test]
async fn bad_cookies_connect_unauthenticated_with_the_reason_in_soft_mode() {
    let redis = RedisServer::start();
    let app = WebApp::start(&redis.url(), &[("SESSION_SECRETS", SECRET)]);
    let node = node_for(&redis, 1, &[]);
    let mut driver = Driver::start().await;
    for (case, cookie, error) in bad_cookies(&redis, &app).await {
        let status = connect(&mut driver, &node, case, Some(&cookie), json!({}))
            .await
            .unwrap();
        assert_eq!(status["isAuthenticated"], false, "{case}: {status}");
        assert_eq!(status["authError"]["name"], error, "{case}: {status}");
        let record = record_of(&node, status["id"].as_str().unwrap()).await;
        assert_eq!(record["logged_in"], false);
    }
    let metrics = node.metrics().await;
    for reason in ["bad_signature", "unsigned", "no_session", "not_logged_in"] {
        let count = sockhive_tests::node::sum_series(
            &metrics,
            &format!("sockhive_session_logins_total{{result=\"{reason}\"}}"),
        );
        assert!(count >= 1.0, "{reason} counted:\n{metrics}");
    }
    driver.shutdown().await;
}

#[tokio::test]
async fn require_auth_rejects_finally_and_reject_at_upgrade_answers_401() {
    let redis = RedisServer::start();
    let app = WebApp::start(&redis.url(), &[("SESSION_SECRETS", SECRET)]);
    let cases = bad_cookies(&redis, &app).await;
    let node = node_for(&redis, 1, &["--require-auth"]);
    let mut driver = Driver::start().await;
    for (case, cookie, error) in &cases {
        let refused = connect(
            &mut driver,
            &node,
            case,
            Some(cookie),
            json!({"autoReconnect": true}),
        )
        .await
        .unwrap_err();
        assert_eq!(refused["code"], 4500, "{case}: {refused}");
        assert!(
            refused["reason"].as_str().unwrap().contains(error),
            "{case}: the reason names the error: {refused}"
        );
    }
    // No anonymous socket either.
    let refused = connect(
        &mut driver,
        &node,
        "anonymous",
        None,
        json!({"autoReconnect": true}),
    )
    .await
    .unwrap_err();
    assert_eq!(refused["code"], 4500);
    // Final: none of the clients retried.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rejected = node
        .metric("sockhive_handshakes_total{outcome=\"rejected\"}")
        .await;
    assert_eq!(
        rejected,
        cases.len() as f64 + 1.0,
        "one attempt each, no retries"
    );
    assert_eq!(
        node.metric("sockhive_connections").await,
        0.0,
        "no socket was registered"
    );
    driver.shutdown().await;

    let strict = node_for(&redis, 1, &["--require-auth", "--reject-at-upgrade"]);
    for (case, cookie, _) in &cases {
        let request = format!("GET /socketcluster/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: {cookie}\r\n\r\n");
        let reply = http::raw(strict.public, request.as_bytes()).await;
        assert_eq!(reply.status, 401, "{case}: {}", reply.head);
    }
    let good = app.login("alice", "alice-password").await;
    let request = format!("GET /socketcluster/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: {good}\r\n\r\n");
    assert_eq!(
        http::raw(strict.public, request.as_bytes()).await.status,
        101
    );
}

#[tokio::test]
async fn a_cookie_signed_with_a_rotated_out_secret_still_works_while_listed() {
    let redis = RedisServer::start();
    let app = WebApp::start(&redis.url(), &[("SESSION_SECRETS", "old-secret")]);
    let cookie = app.login("alice", "alice-password").await;
    let node = NodeBuilder::new(1)
        .args([
            "--session-secret",
            "new-secret",
            "--session-secret",
            "old-secret",
            "--session-redis-url",
            &redis.url(),
        ])
        .start();
    let mut driver = Driver::start().await;
    let status = connect(&mut driver, &node, "c", Some(&cookie), json!({}))
        .await
        .unwrap();
    assert_eq!(
        record_of(&node, status["id"].as_str().unwrap()).await["logged_in"],
        true
    );
    let retired = NodeBuilder::new(1)
        .args([
            "--session-secret",
            "new-secret",
            "--session-redis-url",
            &redis.url(),
        ])
        .start();
    let status = connect(&mut driver, &retired, "d", Some(&cookie), json!({}))
        .await
        .unwrap();
    assert_eq!(status["authError"]["name"], "SessionCookieInvalidError");
    driver.shutdown().await;
}

#[tokio::test]
async fn negotiate_trades_the_cookie_for_an_access_token() {
    let redis = RedisServer::start();
    let app = WebApp::start(&redis.url(), &[("SESSION_SECRETS", SECRET)]);
    let node = node_for(&redis, 1, &[]);
    let cookie = app.login("bob", "bob-password").await;
    let reply = http::get(node.public, "/negotiate", &[&format!("Cookie: {cookie}")]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let negotiated = reply.json();
    assert_eq!(negotiated["path"], "/socket.io/");
    assert!(negotiated["endpoint"]
        .as_str()
        .unwrap()
        .starts_with("http://"));
    assert!(negotiated["expires_in"].as_u64().unwrap() > 0);
    let token = negotiated["token"].as_str().unwrap();
    let mut driver = Driver::start().await;
    let url = format!("{}?access_token={token}", node.sc_url());
    let status = driver
        .ok("sc.connect", json!({"client": "c", "url": url}))
        .await;
    // Logged in by the ticket, not by a token the client sent: its own token follows.
    assert_eq!(status["isAuthenticated"], false);
    let record = record_of(&node, status["id"].as_str().unwrap()).await;
    assert_eq!(
        record["user"]["id"], "u-bob",
        "the same user as the cookie gives"
    );
    // The short-lived ticket is exchanged for a token of the socket's own...
    let own = driver
        .wait_event(Duration::from_secs(5), "a token of its own", |e| {
            e["client"] == "c" && e["event"] == "authenticate" && e["authToken"].is_object()
        })
        .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        own["authToken"]["exp"].as_u64().unwrap() > now + 3600,
        "{own}"
    );
    // ...and the socket still ends with the web session.
    app.logout(&cookie).await;
    driver
        .wait_event(Duration::from_secs(2), "deauthenticate after logout", |e| {
            e["client"] == "c" && e["event"] == "deauthenticate"
        })
        .await;
    let without = http::get(node.public, "/negotiate", &[]).await;
    assert_eq!(without.status, 401);
    assert_eq!(without.json()["error"], "SessionNotFoundError");
    driver.shutdown().await;
}

#[tokio::test]
async fn a_wrong_origin_is_refused_before_the_session_is_read() {
    let redis = RedisServer::start();
    let app = WebApp::start(&redis.url(), &[("SESSION_SECRETS", SECRET)]);
    let node = node_for(&redis, 1, &["--allowed-origin", "https://app.example"]);
    let cookie = app.login("alice", "alice-password").await;
    let request = format!("GET /socketcluster/ HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://evil.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: {cookie}\r\n\r\n");
    assert_eq!(http::raw(node.public, request.as_bytes()).await.status, 403);
    let negotiate = http::get(
        node.public,
        "/negotiate",
        &[&format!("Cookie: {cookie}"), "Origin: https://evil.example"],
    )
    .await;
    assert_eq!(negotiate.status, 403);
    assert_eq!(
        node.metric("sockhive_session_logins_total").await,
        0.0,
        "the session was never touched"
    );
}

#[tokio::test]
async fn redis_stopping_fails_new_logins_closed_and_they_recover_without_a_restart() {
    let redis = RedisServer::start();
    let app = WebApp::start(&redis.url(), &[("SESSION_SECRETS", SECRET)]);
    let node = node_for(&redis, 1, &[]);
    let cookie = app.login("alice", "alice-password").await;
    let mut driver = Driver::start().await;
    let before = connect(&mut driver, &node, "before", Some(&cookie), json!({}))
        .await
        .unwrap();
    assert!(logged_in(&node, &before).await, "{before}");

    redis.pause();
    let started = Instant::now();
    let status = connect(&mut driver, &node, "during", Some(&cookie), json!({}))
        .await
        .unwrap();
    assert_eq!(status["isAuthenticated"], false);
    assert_eq!(status["authError"]["name"], "SessionStoreUnavailableError");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "fails fast: {:?}",
        started.elapsed()
    );
    assert_eq!(
        driver.ok("sc.state", json!({"client": "before"})).await["state"],
        "open",
        "existing sockets stay"
    );

    redis.resume();
    let resumed = Instant::now();
    let mut attempt = 0;
    eventually(Duration::from_secs(5), "logins to work again", async || {
        attempt += 1;
        let status = connect(
            &mut driver,
            &node,
            &format!("after{attempt}"),
            Some(&cookie),
            json!({}),
        )
        .await
        .ok()?;
        logged_in(&node, &status).await.then_some(())
    })
    .await;
    assert!(
        resumed.elapsed() < Duration::from_secs(3),
        "recovered after {:?}",
        resumed.elapsed()
    );
    assert!(
        node.metric("sockhive_session_logins_total{result=\"store_unavailable\"}")
            .await
            >= 1.0
    );
    driver.shutdown().await;
}

#[tokio::test]
async fn logging_out_deauthenticates_the_sessions_sockets_on_every_worker_within_a_second() {
    let redis = RedisServer::start();
    let app = WebApp::start(&redis.url(), &[("SESSION_SECRETS", SECRET)]);
    let node = node_for(&redis, 2, &[]);
    let cookie = app.login("alice", "alice-password").await;
    let bystander = app.login("bob", "bob-password").await;
    let mut driver = Driver::start().await;
    let mut workers = std::collections::HashSet::new();
    // The kernel hashes connections over the workers: connect until both hold
    // some of alice's sockets (bounded; six or more in any case).
    let mut count = 0;
    while count < 6 || (workers.len() < 2 && count < 40) {
        let i = count;
        count += 1;
        let status = connect(
            &mut driver,
            &node,
            &format!("a{i}"),
            Some(&cookie),
            json!({}),
        )
        .await
        .unwrap();
        workers.insert(record_of(&node, status["id"].as_str().unwrap()).await["worker"].clone());
        driver
            .wait_event(Duration::from_secs(5), "the minted token", |e| {
                e["client"] == format!("a{i}")
                    && e["event"] == "authenticate"
                    && e["authToken"].is_object()
            })
            .await;
    }
    assert_eq!(workers.len(), 2, "alice's sockets sit on both workers");
    connect(&mut driver, &node, "bob", Some(&bystander), json!({}))
        .await
        .unwrap();
    let minted = driver.ok("sc.state", json!({"client": "a0"})).await["signedAuthToken"]
        .as_str()
        .unwrap()
        .to_string();
    // A socket that came back with the minted token (no cookie) is bound to the session too.
    let returning = driver
        .ok(
            "sc.connect",
            json!({"client": "returning", "url": node.sc_url(), "authToken": minted}),
        )
        .await;
    assert_eq!(returning["isAuthenticated"], true);

    let logged_out = Instant::now();
    app.logout(&cookie).await;
    for client in (0..count)
        .map(|i| format!("a{i}"))
        .chain(["returning".to_string()])
    {
        driver
            .wait_event(Duration::from_secs(2), "deauthenticate after logout", |e| {
                e["client"] == client.as_str() && e["event"] == "deauthenticate"
            })
            .await;
    }
    let took = logged_out.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "all of alice's sockets lost their login after {took:?}"
    );
    assert!(
        driver.events_of("bob", "deauthenticate").is_empty(),
        "bob is not affected"
    );
    let found = node
        .admin_post(
            "/api/sockets/query",
            json!({"filter": {"user.id": "u-alice"}}),
        )
        .await
        .json();
    assert_eq!(found["sockets"], json!([]));
    // A token minted from that session is refused from now on.
    let status = driver
        .ok(
            "sc.connect",
            json!({"client": "replay", "url": node.sc_url(), "authToken": minted}),
        )
        .await;
    assert_eq!(status["isAuthenticated"], false);
    assert_eq!(status["authError"]["name"], "SessionNotFoundError");
    driver.shutdown().await;
}

#[tokio::test]
async fn a_session_handshake_costs_one_redis_round_trip() {
    // Sessions in their own Redis (no broker Redis), so its command counts are the handshake's alone.
    let redis = RedisServer::start();
    let app = WebApp::start(&redis.url(), &[("SESSION_SECRETS", SECRET)]);
    let node = node_for(&redis, 1, &[]);
    let cookie = app.login("alice", "alice-password").await;
    let mut driver = Driver::start().await;
    // Let start-up traffic (the logout watcher's CONFIG and SUBSCRIBE) settle, then count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.cli(&["CONFIG", "RESETSTAT"]);
    let status = connect(&mut driver, &node, "c", Some(&cookie), json!({}))
        .await
        .unwrap();
    assert!(status["id"].is_string(), "{status}");
    let stats = redis.cli(&["INFO", "commandstats"]);
    let calls = |command: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        calls("get"),
        1,
        "one GET of the session, nothing else before the reply:\n{stats}"
    );
    for line in stats.lines().filter(|l| l.starts_with("cmdstat_")) {
        let command = line
            .trim_start_matches("cmdstat_")
            .split([':', '|'])
            .next()
            .unwrap();
        assert!(
            ["get", "set", "info", "config"].contains(&command),
            "unexpected command on the handshake: {line}"
        );
    }
    driver.shutdown().await;
}

/// The `s%3A...` value of a `connect.sid=...` pair, as the browser holds it.
fn cookie_value(cookie: &str) -> &str {
    cookie.split_once('=').unwrap().1
}

/// The raw session id inside a signed cookie pair.
fn session_id_of(cookie: &str) -> String {
    cookie_value(cookie)
        .trim_start_matches("s%3A")
        .split('.')
        .next()
        .unwrap()
        .to_string()
}

/// Waits for the token the server mints for a session login and checks the socket is logged in.
async fn minted_token_of(driver: &mut Driver, node: &Node, client: &str, id: &str) -> Value {
    let minted = driver
        .wait_event(Duration::from_secs(5), "the session's token", |e| {
            e["client"] == client && e["event"] == "authenticate" && e["authToken"].is_object()
        })
        .await;
    let record = record_of(node, id).await;
    assert_eq!(record["logged_in"], true, "{client}: {record}");
    minted
}

#[tokio::test]
async fn a_signed_session_id_in_the_query_logs_in_only_with_accept_query_session_id() {
    let redis = RedisServer::start();
    let app = WebApp::start(&redis.url(), &[("SESSION_SECRETS", SECRET)]);
    let cookie = app.login("alice", "alice-password").await;
    let signed = cookie_value(&cookie).to_string();
    assert!(signed.starts_with("s%3A"), "{signed}");
    let raw = session_id_of(&cookie);
    let accepting = node_for(&redis, 1, &["--accept-query-session-id"]);
    let default = node_for(&redis, 1, &[]);
    let mut driver = Driver::start().await;

    // passport.socketio's cross-origin workaround: the cookie's own value in the URL, no cookie.
    let url = format!("{}?session_id={signed}", accepting.sc_url());
    let status = driver
        .ok("sc.connect", json!({"client": "signed", "url": url}))
        .await;
    let id = status["id"].as_str().unwrap().to_string();
    let minted = minted_token_of(&mut driver, &accepting, "signed", &id).await;
    assert_eq!(minted["authToken"]["sub"], "u-alice");
    let record = record_of(&accepting, &id).await;
    assert_eq!(record["user"]["id"], "u-alice", "{record}");

    // A raw id is never a credential, even with the flag.
    let url = format!("{}?session_id={raw}", accepting.sc_url());
    let status = driver
        .ok("sc.connect", json!({"client": "raw", "url": url}))
        .await;
    assert_eq!(status["isAuthenticated"], false, "{status}");
    assert_eq!(
        status["authError"]["name"], "SessionCookieInvalidError",
        "{status}"
    );
    let record = record_of(&accepting, status["id"].as_str().unwrap()).await;
    assert_eq!(record["logged_in"], false);

    // Without the flag even the signed value logs nobody in.
    for (client, value) in [("off-signed", &signed), ("off-raw", &raw)] {
        let url = format!("{}?session_id={value}", default.sc_url());
        let status = driver
            .ok("sc.connect", json!({"client": client, "url": url}))
            .await;
        assert_eq!(status["isAuthenticated"], false, "{client}: {status}");
        assert_eq!(
            status["authError"]["name"], "SessionCookieInvalidError",
            "{client}: {status}"
        );
        let record = record_of(&default, status["id"].as_str().unwrap()).await;
        assert_eq!(record["logged_in"], false, "{client}: {record}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for client in ["raw", "off-signed", "off-raw"] {
        assert!(
            driver.events_of(client, "authenticate").is_empty(),
            "{client} got a token"
        );
    }
    assert_eq!(
        default
            .metric("sockhive_session_logins_total{result=\"query_session_id\"}")
            .await,
        2.0
    );
    driver.shutdown().await;
}

/// Rewrites the session's `passport.user` in Redis, keeping its TTL, as another login would.
fn set_passport_user(redis: &RedisServer, sid: &str, user: Value) {
    let key = format!("sess:{sid}");
    let mut session: Value = serde_json::from_str(&redis.cli(&["GET", &key])).unwrap();
    session["passport"]["user"] = user;
    let ttl = redis.cli(&["PTTL", &key]);
    assert!(
        ttl.parse::<i64>().unwrap() > 0,
        "the session has a TTL: {ttl}"
    );
    assert_eq!(
        redis.cli(&["SET", &key, &session.to_string(), "PX", &ttl]),
        "OK"
    );
}

#[tokio::test]
async fn a_minted_token_ends_when_its_session_logs_in_someone_else() {
    let redis = RedisServer::start();
    let app = WebApp::start(&redis.url(), &[("SESSION_SECRETS", SECRET)]);
    let node = node_for(&redis, 1, &[]);
    let cookie = app.login("alice", "alice-password").await;
    let sid = session_id_of(&cookie);
    let mut driver = Driver::start().await;
    let status = connect(&mut driver, &node, "cookie", Some(&cookie), json!({}))
        .await
        .unwrap();
    minted_token_of(&mut driver, &node, "cookie", status["id"].as_str().unwrap()).await;
    let minted = driver.ok("sc.state", json!({"client": "cookie"})).await["signedAuthToken"]
        .as_str()
        .unwrap()
        .to_string();
    driver
        .ok("sc.disconnect", json!({"client": "cookie"}))
        .await;

    // Control: the unchanged session honours the token (no cookie sent).
    let with_token =
        |client: &str| json!({"client": client, "url": node.sc_url(), "authToken": minted.clone()});
    let status = driver.ok("sc.connect", with_token("control")).await;
    assert_eq!(status["isAuthenticated"], true, "{status}");
    let record = record_of(&node, status["id"].as_str().unwrap()).await;
    assert_eq!(record["user"]["id"], "u-alice");
    driver
        .ok("sc.disconnect", json!({"client": "control"}))
        .await;

    // The same session now logs in bob: alice's token is no longer backed by it.
    set_passport_user(&redis, &sid, json!("u-bob"));
    let status = driver.ok("sc.connect", with_token("switched")).await;
    assert_eq!(status["isAuthenticated"], false, "{status}");
    assert_eq!(
        status["authError"]["name"], "SessionNotFoundError",
        "{status}"
    );
    let record = record_of(&node, status["id"].as_str().unwrap()).await;
    assert_eq!(record["logged_in"], false);

    // A session without passport.user is logged out: refused too.
    let reply = app
        .post("/logout-keep-session", Some(&cookie), &json!({}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let session: Value =
        serde_json::from_str(&redis.cli(&["GET", &format!("sess:{sid}")])).unwrap();
    assert!(session["passport"].get("user").is_none(), "{session}");
    let status = driver.ok("sc.connect", with_token("logged-out")).await;
    assert_eq!(
        status["authError"]["name"], "SessionNotFoundError",
        "{status}"
    );

    // Alice back in the same session: the token is honoured again (the check compares users,
    // it does not merely notice a rewrite).
    set_passport_user(&redis, &sid, json!("u-alice"));
    let status = driver.ok("sc.connect", with_token("back")).await;
    assert_eq!(status["isAuthenticated"], true, "{status}");
    driver.shutdown().await;
}

/// `connect.sid=<value>` for `sid`, signed as express-session signs it (cookie-signature, run
/// by node from the tests' own node_modules) and URL-encoded as the browser holds it.
fn signed_cookie(sid: &str) -> String {
    let script = "const c = require('module').createRequire(process.argv[1])('cookie-signature'); \
                  process.stdout.write(encodeURIComponent('s:' + c.sign(process.argv[2], process.argv[3])))";
    let package = sockhive_tests::repo_root().join("tests/js/package.json");
    let out = std::process::Command::new("node")
        .args(["-e", script])
        .arg(&package)
        .args([sid, SECRET])
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("connect.sid={}", String::from_utf8(out.stdout).unwrap())
}

#[tokio::test]
async fn on_a_redis_cluster_a_minted_token_also_follows_passport_user() {
    // The minted-token index and the session sit in different slots: two reads, same verdicts.
    let cluster = RedisCluster::start();
    let ports: Vec<u16> = cluster.servers.iter().map(|s| s.port).collect();
    let url = format!(
        "redis-cluster://127.0.0.1:{}?node=127.0.0.1:{}&node=127.0.0.1:{}",
        ports[0], ports[1], ports[2]
    );
    let cli = |args: &[&str]| {
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        sockhive_tests::redis::redis_cli(ports[0], &all)
    };
    let sid = "cluster-session-1";
    let key = format!("sess:{sid}");
    let session = |user: &str| {
        json!({"cookie": {"originalMaxAge": null, "httpOnly": true, "path": "/"},
               "passport": {"user": user}})
        .to_string()
    };
    assert_eq!(cli(&["SET", &key, &session("u-alice"), "EX", "600"]), "OK");
    let node = NodeBuilder::new(1)
        .args(["--session-secret", SECRET, "--session-redis-url", &url])
        .start();
    let mut driver = Driver::start().await;
    let status = connect(
        &mut driver,
        &node,
        "cookie",
        Some(&signed_cookie(sid)),
        json!({}),
    )
    .await
    .unwrap();
    minted_token_of(&mut driver, &node, "cookie", status["id"].as_str().unwrap()).await;
    let minted = driver.ok("sc.state", json!({"client": "cookie"})).await["signedAuthToken"]
        .as_str()
        .unwrap()
        .to_string();
    driver
        .ok("sc.disconnect", json!({"client": "cookie"}))
        .await;
    let with_token =
        |client: &str| json!({"client": client, "url": node.sc_url(), "authToken": minted.clone()});
    // The token is filed in the background: allow it a moment to land.
    let mut attempt = 0;
    eventually(
        Duration::from_secs(3),
        "the minted token to be honoured",
        async || {
            attempt += 1;
            let status = driver
                .ok("sc.connect", with_token(&format!("control{attempt}")))
                .await;
            (status["isAuthenticated"] == true).then_some(())
        },
    )
    .await;

    assert_eq!(cli(&["SET", &key, &session("u-bob"), "KEEPTTL"]), "OK");
    let status = driver.ok("sc.connect", with_token("switched")).await;
    assert_eq!(status["isAuthenticated"], false, "{status}");
    assert_eq!(
        status["authError"]["name"], "SessionNotFoundError",
        "{status}"
    );

    assert_eq!(cli(&["DEL", &key]), "1");
    let status = driver.ok("sc.connect", with_token("deleted")).await;
    assert_eq!(
        status["authError"]["name"], "SessionNotFoundError",
        "{status}"
    );
    driver.shutdown().await;
}

#[tokio::test]
async fn a_user_records_channels_become_the_minted_tokens_channels_claim() {
    let redis = RedisServer::start();
    let users = json!([
        {"id": "u-dana", "username": "dana", "password": "dana-password",
         "channels": ["room:1", "team:*"]},
        {"id": "u-erin", "username": "erin", "password": "erin-password"},
    ])
    .to_string();
    // The whole user object in the session (no lookup), and an id resolved by a Redis lookup.
    let whole = WebApp::start(
        &redis.url(),
        &[
            ("SESSION_SECRETS", SECRET),
            ("SERIALIZE", "object"),
            ("USERS", &users),
        ],
    );
    let by_id = WebApp::start(
        &redis.url(),
        &[("SESSION_SECRETS", SECRET), ("USERS", &users)],
    );
    let mut driver = Driver::start().await;
    for (round, app, lookup) in [(0, &whole, None), (1, &by_id, Some("redis:user:{id}"))] {
        let (dana, erin) = (format!("dana{round}"), format!("erin{round}"));
        let mut extra = vec!["--channel-auth", "claims"];
        extra.extend(lookup.iter().flat_map(|l| ["--user-lookup", *l]));
        let node = node_for(&redis, 1, &extra);
        let what = format!("lookup {lookup:?}");

        let cookie = app.login("dana", "dana-password").await;
        let status = connect(&mut driver, &node, &dana, Some(&cookie), json!({}))
            .await
            .unwrap();
        let minted =
            minted_token_of(&mut driver, &node, &dana, status["id"].as_str().unwrap()).await;
        assert_eq!(
            minted["authToken"]["channels"],
            json!(["room:1", "team:*"]),
            "{what}: {minted}"
        );
        for channel in ["room:1", "team:red"] {
            driver
                .ok("sc.subscribe", json!({"client": dana, "channel": channel}))
                .await;
        }
        let refused = driver
            .call("sc.subscribe", json!({"client": dana, "channel": "room:2"}))
            .await
            .unwrap_err();
        assert_eq!(
            refused["name"], "ChannelForbiddenError",
            "{what}: {refused}"
        );

        // A user whose record lists no channels gets no claim, and no channel.
        let cookie = app.login("erin", "erin-password").await;
        let status = connect(&mut driver, &node, &erin, Some(&cookie), json!({}))
            .await
            .unwrap();
        let minted =
            minted_token_of(&mut driver, &node, &erin, status["id"].as_str().unwrap()).await;
        assert!(
            minted["authToken"].get("channels").is_none(),
            "{what}: {minted}"
        );
        let refused = driver
            .call("sc.subscribe", json!({"client": erin, "channel": "room:1"}))
            .await
            .unwrap_err();
        assert_eq!(
            refused["name"], "ChannelForbiddenError",
            "{what}: {refused}"
        );
    }
    driver.shutdown().await;
}
