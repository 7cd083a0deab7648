//! What operators meet first: every metric series is there from the start,
//! the admin API reads the bodies and tokens HTTP clients send, and the HTTP
//! user lookup can authenticate to the app and is re-read with the session.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use sockhive_tests::app::WebApp;
use sockhive_tests::node::ADMIN_TOKEN;
use sockhive_tests::redis::RedisServer;
use sockhive_tests::{eventually, http, Driver, Node, NodeBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The samples of `name` whose labels include every pair of `labels`.
fn samples(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, value)| value.parse().ok())
        .collect()
}

#[tokio::test]
async fn a_fresh_node_exports_every_series_at_zero() {
    let node = Node::start(2);
    // Scraped before any connection: nothing has been counted yet.
    let text = node.metrics().await;
    let mut per_worker: Vec<(&str, Vec<(&str, &str)>)> = Vec::new();
    for reason in [
        "origin",
        "upgrade_timeout",
        "header_too_large",
        "bad_upgrade",
        "max_connections",
        "auth",
    ] {
        per_worker.push((
            "sockhive_rejected_connections_total",
            vec![("reason", reason)],
        ));
    }
    for protocol in ["socketcluster", "socketio"] {
        per_worker.push(("sockhive_connections", vec![("protocol", protocol)]));
        per_worker.push((
            "sockhive_handshake_duration_seconds_count",
            vec![("protocol", protocol)],
        ));
        for reason in [
            "bad_json",
            "bad_packet",
            "too_big",
            "bad_utf8",
            "handshake_timeout",
        ] {
            per_worker.push((
                "sockhive_protocol_errors_total",
                vec![("protocol", protocol), ("reason", reason)],
            ));
        }
    }
    per_worker.push((
        "sockhive_protocol_errors_total",
        vec![("protocol", "socketio"), ("reason", "bad_namespace")],
    ));
    for (outcome, method) in [
        ("ok", "jwt"),
        ("ok", "session"),
        ("ok", "access_token"),
        ("anonymous", "none"),
        ("rejected", "none"),
        ("failed", "session"),
        ("failed", "authenticate"),
    ] {
        per_worker.push((
            "sockhive_handshakes_total",
            vec![("outcome", outcome), ("method", method)],
        ));
    }
    for direction in ["in", "out"] {
        per_worker.push(("sockhive_messages_total", vec![("direction", direction)]));
    }
    for result in ["ok", "bad_signature", "no_session", "store_unavailable"] {
        per_worker.push(("sockhive_session_logins_total", vec![("result", result)]));
    }
    per_worker.push(("sockhive_broker_roundtrip_seconds_count", vec![]));
    per_worker.push(("sockhive_session_logouts_total", vec![]));
    for worker in ["1", "2"] {
        for (name, labels) in &per_worker {
            let mut labels = labels.clone();
            labels.push(("worker", worker));
            assert_eq!(
                samples(&text, name, &labels),
                vec![0.0],
                "{name}{labels:?} missing or not 0 in:\n{text}"
            );
        }
    }
    for (name, labels) in [
        ("sockhive_worker_restarts_total", vec![]),
        ("sockhive_cluster_queries_total", vec![("scope", "all")]),
        ("sockhive_cluster_queries_total", vec![("scope", "indexed")]),
    ] {
        assert_eq!(
            samples(&text, name, &labels),
            vec![0.0],
            "{name}{labels:?} in:\n{text}"
        );
    }
    assert_eq!(samples(&text, "sockhive_workers", &[]), vec![2.0]);
}

/// A POST to the admin port with a chunked body sent in the given pieces.
async fn post_chunked(admin: SocketAddr, path: &str, chunks: &[&str]) -> http::Reply {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    for chunk in chunks {
        request.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    request.push_str("0\r\n\r\n");
    http::raw(admin, request.as_bytes()).await
}

#[tokio::test]
async fn a_chunked_admin_body_is_decoded() {
    let node = Node::start(1);
    let (_ws, reply) = sockhive_tests::ws::sc_open(node.public, None).await;
    let id = reply["id"].as_str().expect("socket id").to_string();
    let reply = post_chunked(
        node.admin,
        "/api/sockets/query",
        &[
            "{\"filter\": {\"id\"",
            &format!(": \"{id}\"}}, "),
            "\"limit\": 5}",
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let sockets = reply.json()["sockets"].clone();
    assert_eq!(sockets.as_array().map(Vec::len), Some(1), "{sockets}");
    assert_eq!(sockets[0]["id"], id.as_str());
    // Broken framing is a 400, an oversized body a 413, as with Content-Length.
    let broken = format!(
        "POST /api/sockets/query HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"
    );
    assert_eq!(http::raw(node.admin, broken.as_bytes()).await.status, 400);
    let huge = format!(
        "POST /api/sockets/query HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n200000\r\n"
    );
    assert_eq!(http::raw(node.admin, huge.as_bytes()).await.status, 413);
}

#[tokio::test]
async fn the_admin_api_takes_bearer_in_any_case() {
    let node = Node::start(1);
    for authorization in [
        format!("Authorization: bearer {ADMIN_TOKEN}"),
        format!("Authorization: BEARER {ADMIN_TOKEN}"),
        format!("Authorization: Bearer   {ADMIN_TOKEN} "),
    ] {
        // Authorized: the unknown socket is a 404, not a 401.
        let reply = http::get(node.admin, "/api/sockets/nobody", &[&authorization]).await;
        assert_eq!(reply.status, 404, "{authorization}: {}", reply.body);
    }
    for authorization in [
        format!("Authorization: Basic {ADMIN_TOKEN}"),
        "Authorization: Bearer wrong-token".to_string(),
        format!("Authorization: Bearer{ADMIN_TOKEN}"),
    ] {
        let reply = http::get(node.admin, "/api/sockets/nobody", &[&authorization]).await;
        assert_eq!(reply.status, 401, "{authorization}: {}", reply.body);
    }
}

#[test]
fn a_malformed_user_lookup_header_is_refused_at_start() {
    let out = std::process::Command::new(sockhive_tests::node::sockhive_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--user-lookup",
            "http://127.0.0.1:9/users/{id}",
            "--user-lookup-header",
            "Authorization Bearer s3cret",
        ])
        .output()
        .expect("run sockhive");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("session.user_lookup_header"),
        "stderr: {stderr}"
    );
}

/// The app's internal user endpoint as a team would guard it: `GET
/// /users/{id}` answers 401 unless `Authorization: Bearer s3cret` is sent.
/// The real app (tests/app/app.js) serves the same route without a guard.
struct GuardedUsers {
    url_template: String,
    /// Users by id; the test edits them as the app would.
    users: Arc<Mutex<Vec<Value>>>,
    /// The `Authorization` value of every request (`None`: not sent).
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

impl GuardedUsers {
    async fn start(users: Vec<Value>) -> GuardedUsers {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let users = Arc::new(Mutex::new(users));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (table, log) = (users.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (table, log) = (table.clone(), log.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let authorization = head.lines().skip(1).find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("authorization")
                            .then(|| value.trim().to_string())
                    });
                    log.lock().unwrap().push(authorization.clone());
                    let path = head.split(' ').nth(1).unwrap_or("");
                    let id = path.strip_prefix("/users/").unwrap_or("");
                    let user = table
                        .lock()
                        .unwrap()
                        .iter()
                        .find(|u| u["id"].as_str() == Some(id))
                        .cloned();
                    let (status, body) = match (authorization.as_deref(), user) {
                        (Some("Bearer s3cret"), Some(user)) => ("200 OK", user.to_string()),
                        (Some("Bearer s3cret"), None) => ("404 Not Found", "{}".to_string()),
                        _ => ("401 Unauthorized", "{}".to_string()),
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        GuardedUsers {
            url_template: format!("http://{addr}/users/{{id}}"),
            users,
            seen,
        }
    }
}

const SECRET: &str = "app-session-secret";

fn lookup_node(redis: &RedisServer, users: &GuardedUsers, header: &str) -> Node {
    NodeBuilder::new(1)
        .args([
            "--session-secret",
            SECRET,
            "--session-redis-url",
            &redis.url(),
            "--session-recheck",
            "200ms",
            "--user-lookup",
            &users.url_template,
            "--user-lookup-header",
            header,
        ])
        .start()
}

async fn connect_with_cookie(
    driver: &mut Driver,
    node: &Node,
    client: &str,
    cookie: &str,
) -> Value {
    driver
        .call(
            "sc.connect",
            json!({"client": client, "url": node.sc_url(), "headers": {"Cookie": cookie}}),
        )
        .await
        .unwrap_or_else(|e| panic!("{client}: {e}"))
}

#[tokio::test]
async fn the_http_user_lookup_authenticates_to_the_app_and_is_reread() {
    // CONFIG renamed: the watcher polls, re-reading sessions (and users) every 200 ms.
    let redis = RedisServer::start_with(&["--rename-command", "CONFIG", ""]);
    let app = WebApp::start(&redis.url(), &[("SESSION_SECRETS", SECRET)]);
    let cookie = app.login("alice", "alice-password").await;
    let users = GuardedUsers::start(vec![json!({"id": "u-alice", "role": "reader"})]).await;
    let mut driver = Driver::start().await;

    // A wrong credential: the app refuses the lookup, the login is refused
    // as the lookup being unavailable.
    let refused = lookup_node(&redis, &users, "Authorization: Bearer wrong");
    let status = connect_with_cookie(&mut driver, &refused, "refused", &cookie).await;
    assert_eq!(
        status["authError"]["name"], "SessionStoreUnavailableError",
        "{status}"
    );
    assert_eq!(
        refused
            .metric("sockhive_session_logins_total{result=\"user_lookup_unavailable\"}")
            .await,
        1.0
    );
    drop(refused);

    let node = lookup_node(&redis, &users, "Authorization: Bearer s3cret");
    let status = connect_with_cookie(&mut driver, &node, "alice", &cookie).await;
    assert!(status["authError"].is_null(), "{status}");
    let id = status["id"].as_str().unwrap().to_string();
    let record = node.record(&id).await;
    assert_eq!(record["user"]["role"], "reader", "{record}");
    assert!(users
        .seen
        .lock()
        .unwrap()
        .contains(&Some("Bearer s3cret".to_string())));

    // The app changes the user: the next re-check reads it, and the socket's
    // login follows in place (still logged in, now as the new record), with
    // a token of the new user pushed to the client.
    users.users.lock().unwrap()[0] = json!({"id": "u-alice", "role": "admin"});
    eventually(
        Duration::from_secs(3),
        "the changed user is noticed",
        async || {
            let record = node.record(&id).await;
            (record["user"]["role"] == "admin").then_some(())
        },
    )
    .await;
    let record = node.record(&id).await;
    assert_eq!(record["logged_in"], true, "{record}");
    assert_eq!(record["auth"]["user"]["role"], "admin", "{record}");
    driver
        .wait_event(Duration::from_secs(3), "the new user's token", |e| {
            e["client"] == "alice"
                && e["event"] == "authenticate"
                && e["authToken"]["user"]["role"] == "admin"
        })
        .await;
    driver.shutdown().await;
}
