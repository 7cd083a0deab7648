//! Several nodes on one Redis (or a Redis Cluster) behave as one server.
//! Redis outages under traffic (publishes refused and resuming, logins
//! failing closed) are in faults.rs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use sockhive_tests::nginx::Nginx;
use sockhive_tests::redis::{RedisCluster, RedisServer};
use sockhive_tests::{eventually, http, Driver, Node, NodeBuilder};

fn token(sub: &str) -> String {
    sockhive_tests::node::sign_token(&json!({"sub": sub, "user": {"name": sub}}))
}

fn node(redis_url: &str, id: &str, workers: u16) -> Node {
    NodeBuilder::new(workers)
        .args(["--redis-url", redis_url, "--node-id", id])
        .start()
}

async fn connect(driver: &mut Driver, url: &str, client: &str, sub: &str) -> String {
    let status = driver
        .ok(
            "sc.connect",
            json!({"client": client, "url": url, "authToken": token(sub), "listen": ["note"]}),
        )
        .await;
    assert_eq!(status["isAuthenticated"], true);
    status["id"].as_str().unwrap().to_string()
}

/// Socket id -> node, as node `at` sees the cluster.
async fn placement(at: &Node) -> (HashMap<String, String>, Value) {
    let reply = at
        .admin_post("/api/sockets/query", json!({"filter": {}}))
        .await
        .json();
    let map = reply["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["node"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (map, reply)
}

#[tokio::test]
async fn two_nodes_behind_nginx_act_as_one_server() {
    let redis = RedisServer::start();
    let a = node(&redis.url(), "node-a", 2);
    let b = node(&redis.url(), "node-b", 2);
    let nginx = Nginx::start(&[a.public, b.public]);
    let url = format!("ws://{}/socketcluster/", nginx.listen);
    let mut driver = Driver::start().await;
    let mut clients = HashMap::new();
    for i in 0..8 {
        let client = format!("c{i}");
        let id = connect(&mut driver, &url, &client, &format!("user-{i}")).await;
        clients.insert(client, id);
    }
    let (where_, reply) = eventually(
        Duration::from_secs(5),
        "every socket visible from node A",
        async || {
            let (map, reply) = placement(&a).await;
            (map.len() == 8).then_some((map, reply))
        },
    )
    .await;
    assert_eq!(reply["nodes_expected"], 2);
    assert_eq!(reply["nodes_answered"], 2);
    let on = |node: &str| {
        clients
            .iter()
            .filter(|(_, id)| where_[*id] == node)
            .map(|(c, _)| c.clone())
            .collect::<Vec<_>>()
    };
    let (on_a, on_b) = (on("node-a"), on("node-b"));
    assert!(
        !on_a.is_empty() && !on_b.is_empty(),
        "nginx spread the clients over both nodes: {where_:?}"
    );
    // The records carry the users.
    let b_user = reply["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["node"] == "node-b")
        .unwrap()["user"]
        .clone();
    assert!(
        b_user["id"].as_str().unwrap().starts_with("user-"),
        "{b_user}"
    );

    // A publish from a client on node A reaches subscribers on node B.
    for client in clients.keys() {
        driver
            .ok("sc.subscribe", json!({"client": client, "channel": "news"}))
            .await;
    }
    driver
        .ok(
            "sc.publish",
            json!({"client": on_a[0], "channel": "news", "data": {"from": "a"}}),
        )
        .await;
    for client in &on_b {
        driver
            .wait_event(Duration::from_secs(5), "the message on node B", |e| {
                e["client"] == client.as_str() && e["event"] == "message"
            })
            .await;
    }
    // Admin emit and kick on node A reach a socket on node B.
    let target = &on_b[0];
    let target_user = reply["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == clients[target].as_str())
        .unwrap()["user"]["id"]
        .clone();
    let emitted = a
        .admin_post(
            "/api/sockets/emit",
            json!({"filter": {"user.id": target_user}, "event": "note", "data": 7}),
        )
        .await
        .json();
    assert_eq!(emitted["delivered"], 1, "{emitted}");
    driver
        .wait_event(Duration::from_secs(5), "the note", |e| {
            e["client"] == target.as_str() && e["name"] == "note"
        })
        .await;
    let kicked = a
        .admin_post(
            "/api/sockets/kick",
            json!({"filter": {"user.id": target_user}}),
        )
        .await
        .json();
    assert_eq!(kicked["disconnected"], 1, "{kicked}");
    let closed = driver
        .wait_event(Duration::from_secs(5), "the kick", |e| {
            e["client"] == target.as_str() && e["event"] == "disconnect"
        })
        .await;
    assert_eq!(closed["code"], 4501);
    // A socket's record and session from any node.
    let other = &on_b[1.min(on_b.len() - 1)];
    if other != target {
        let id = &clients[other];
        let patched = b
            .admin_post(&format!("/api/sockets/{id}/session"), json!({}))
            .await;
        assert!(patched.status == 200 || patched.status == 404);
    }
    driver.shutdown().await;
}

#[tokio::test]
async fn a_killed_node_drops_out_within_five_seconds_with_its_records() {
    let redis = RedisServer::start();
    let a = node(&redis.url(), "node-a", 1);
    let mut b = node(&redis.url(), "node-b", 2);
    let mut driver = Driver::start().await;
    connect(&mut driver, &a.sc_url(), "on-a", "alice").await;
    connect(&mut driver, &b.sc_url(), "on-b1", "bob").await;
    connect(&mut driver, &b.sc_url(), "on-b2", "bob").await;
    eventually(
        Duration::from_secs(5),
        "3 sockets across 2 nodes",
        async || (placement(&a).await.0.len() == 3).then_some(()),
    )
    .await;
    eventually(
        Duration::from_secs(3),
        "node B's records in redis",
        async || (redis.cli(&["HLEN", "sockhive:sockets:node-b"]) == "2").then_some(()),
    )
    .await;

    // Each node announces itself and its workers, with an expiry.
    let announced = eventually(
        Duration::from_secs(3),
        "node B's announcement",
        async || {
            let info: Value =
                serde_json::from_str(&redis.cli(&["GET", "sockhive:node:node-b"])).ok()?;
            (info["workers_ready"] == 2).then_some(info)
        },
    )
    .await;
    assert_eq!(announced["worker_pids"].as_array().unwrap().len(), 2);
    b.signal(Signal::SIGKILL);
    b.wait_exit(Duration::from_secs(2))
        .expect("node B's master died");
    let killed = Instant::now();
    eventually(
        Duration::from_secs(5),
        "node B gone from queries",
        async || {
            let started = Instant::now();
            let reply = a
                .admin_post("/api/sockets/query", json!({"filter": {}}))
                .await
                .json();
            let quick = started.elapsed() < Duration::from_millis(1500);
            (reply["nodes_expected"] == 1
                && reply["sockets"].as_array().unwrap().len() == 1
                && quick)
                .then_some(())
        },
    )
    .await;
    assert!(killed.elapsed() < Duration::from_secs(5));
    eventually(
        Duration::from_secs(5),
        "node B's announcement expired",
        async || (redis.cli(&["EXISTS", "sockhive:node:node-b"]) == "0").then_some(()),
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "node B's records expired",
        async || (redis.cli(&["EXISTS", "sockhive:sockets:node-b"]) == "0").then_some(()),
    )
    .await;
    driver.shutdown().await;
}

#[tokio::test]
async fn a_redis_cluster_carries_publishes_and_queries() {
    let cluster = RedisCluster::start();
    let seeds = cluster.seeds();
    let a = node(&seeds, "node-a", 1);
    let b = node(&seeds, "node-b", 1);
    let mut driver = Driver::start().await;
    connect(&mut driver, &a.sc_url(), "pub", "p").await;
    let mut subs = Vec::new();
    for i in 0..4 {
        let client = format!("sub{i}");
        connect(&mut driver, &b.sc_url(), &client, &format!("u{i}")).await;
        // Several channels, so sharded pub/sub spreads them over the shards.
        driver
            .ok(
                "sc.subscribe",
                json!({"client": client, "channel": format!("room:{i}")}),
            )
            .await;
        subs.push(client);
    }
    for i in 0..4 {
        driver
            .ok(
                "sc.publish",
                json!({"client": "pub", "channel": format!("room:{i}"), "data": i}),
            )
            .await;
    }
    for (i, client) in subs.iter().enumerate() {
        driver
            .wait_event(Duration::from_secs(5), "the sharded message", |e| {
                e["client"] == client.as_str() && e["data"] == i
            })
            .await;
    }
    let reply = eventually(
        Duration::from_secs(5),
        "node B's sockets from node A",
        async || {
            let reply = a
                .admin_post(
                    "/api/sockets/query",
                    json!({"filter": {"user.id": {"$in": ["u1", "u2"]}}}),
                )
                .await
                .json();
            (reply["sockets"].as_array().unwrap().len() == 2).then_some(reply)
        },
    )
    .await;
    assert!(reply["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["node"] == "node-b"));
    driver.shutdown().await;
}

#[tokio::test]
async fn socket_records_and_sessions_are_reachable_from_any_node() {
    let redis = RedisServer::start();
    let a = node(&redis.url(), "node-a", 1);
    let b = node(&redis.url(), "node-b", 1);
    let mut driver = Driver::start().await;
    let id = connect(&mut driver, &b.sc_url(), "c", "frank").await;
    let auth = format!(
        "Authorization: Bearer {}",
        sockhive_tests::node::ADMIN_TOKEN
    );
    let record = eventually(
        Duration::from_secs(5),
        "the record from node A",
        async || {
            let reply =
                sockhive_tests::http::get(a.admin, &format!("/api/sockets/{id}"), &[&auth]).await;
            (reply.status == 200).then(|| reply.json())
        },
    )
    .await;
    assert_eq!(record["node"], "node-b");
    assert_eq!(record["user"]["id"], "frank");
    assert_eq!(record["session"], json!({}));
    let body = r#"{"cart":3,"plan":"pro","x":null}"#;
    let request = format!(
        "PATCH /api/sockets/{id}/session HTTP/1.1\r\n{auth}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let patched = sockhive_tests::http::raw(a.admin, request.as_bytes()).await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.json(), json!({"cart": 3, "plan": "pro"}));
    let found = a
        .admin_post(
            "/api/sockets/query",
            json!({"filter": {"session.plan": "pro"}}),
        )
        .await
        .json();
    assert_eq!(found["sockets"].as_array().unwrap().len(), 1, "{found}");
    // Records reach Redis in batches, behind the worker's own Redis
    // connection: node A may have answered (over the cluster bus) first.
    eventually(Duration::from_secs(5), "the record in redis", async || {
        (redis.cli(&["HEXISTS", "sockhive:sockets:node-b", &id]) == "1").then_some(())
    })
    .await;
    driver.ok("sc.disconnect", json!({"client": "c"})).await;
    eventually(
        Duration::from_secs(5),
        "the record gone with the socket",
        async || (redis.cli(&["HEXISTS", "sockhive:sockets:node-b", &id]) == "0").then_some(()),
    )
    .await;
    let gone = sockhive_tests::http::get(a.admin, &format!("/api/sockets/{id}"), &[&auth]).await;
    assert_eq!(gone.status, 404);
    driver.shutdown().await;
}

/// Opens `count` anonymous SocketCluster sockets on `addr`, `parallel` at a time.
async fn open_many(
    addr: std::net::SocketAddr,
    count: usize,
    parallel: usize,
) -> Vec<sockhive_tests::ws::RawWs> {
    let mut sockets = Vec::with_capacity(count);
    let mut pending = Vec::new();
    for _ in 0..count {
        pending.push(tokio::spawn(async move {
            sockhive_tests::ws::sc_open(addr, None).await.0
        }));
        if pending.len() == parallel {
            for task in pending.drain(..) {
                sockets.push(task.await.unwrap());
            }
        }
    }
    for task in pending {
        sockets.push(task.await.unwrap());
    }
    sockets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_for_one_user_among_ten_thousand_sockets_asks_only_its_worker() {
    // 10,000 client sockets here plus their server ends in the workers.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.max(65_536), hard.max(65_536));
    let redis = RedisServer::start();
    let a = node(&redis.url(), "node-a", 2);
    let b = node(&redis.url(), "node-b", 2);
    let mut hay = open_many(a.public, 5_000, 200).await;
    hay.extend(open_many(b.public, 4_999, 200).await);
    let (mut needle, status) = sockhive_tests::ws::sc_open(b.public, Some(&token("needle"))).await;
    assert_eq!(status["isAuthenticated"], true);
    eventually(
        Duration::from_secs(10),
        "all 10,000 sockets registered",
        async || {
            let total =
                a.metric("sockhive_connections").await + b.metric("sockhive_connections").await;
            (total == 10_000.0).then_some(())
        },
    )
    .await;
    let (asked_a, asked_b) = (
        a.metric("sockhive_cluster_query_workers_total").await,
        b.metric("sockhive_cluster_query_workers_total").await,
    );
    let started = Instant::now();
    let reply = a
        .admin_post(
            "/api/sockets/query",
            json!({"filter": {"user.id": "needle"}}),
        )
        .await
        .json();
    let took = started.elapsed();
    assert_eq!(reply["sockets"].as_array().unwrap().len(), 1, "{reply}");
    assert_eq!(reply["sockets"][0]["node"], "node-b");
    assert_eq!(reply["nodes_answered"], reply["nodes_expected"]);
    assert_eq!(
        a.metric("sockhive_cluster_query_workers_total").await - asked_a,
        0.0,
        "node A holds no socket of the user: none of its workers is asked"
    );
    assert_eq!(
        b.metric("sockhive_cluster_query_workers_total").await - asked_b,
        1.0,
        "only the worker holding the user is asked"
    );
    eprintln!("indexed query among 10,000 sockets took {took:?}");
    // A query that pins no user asks every worker of both nodes.
    let everyone = a
        .admin_post("/api/sockets/query", json!({"filter": {"logged_in": true}}))
        .await
        .json();
    assert_eq!(everyone["sockets"].as_array().unwrap().len(), 1);
    assert_eq!(everyone["workers_expected"], 4);
    let _ = futures_util::SinkExt::close(&mut needle).await;
    drop(hay);
}

/// interface.md: `/readyz` answers 503 within 2 s of the broker's Redis
/// becoming unreachable and 200 again within 2 s of it answering (the
/// balancers in deploy/ take nodes out and back by it).
#[tokio::test]
async fn readyz_follows_the_brokers_redis_within_two_seconds() {
    let mut redis = RedisServer::start();
    let node = node(&redis.url(), "node-r", 1);
    let status = async || http::get(node.admin, "/readyz", &[]).await;
    eventually(Duration::from_secs(5), "ready with redis", async || {
        (status().await.status == 200).then_some(())
    })
    .await;
    let ready = status().await.json();
    assert_eq!(ready["broker"], "redis", "{ready}");
    assert_eq!(ready["broker_connected"], true, "{ready}");

    for outage in ["killed", "frozen"] {
        let started = Instant::now();
        match outage {
            "killed" => redis.stop(),
            _ => redis.pause(),
        }
        eventually(
            Duration::from_secs(4),
            "503 while redis is away",
            async || (status().await.status == 503).then_some(()),
        )
        .await;
        let down = started.elapsed();
        let body = status().await.json();
        assert_eq!(body["broker_connected"], false, "{body}");
        let started = Instant::now();
        match outage {
            "killed" => redis.restart(),
            _ => redis.resume(),
        }
        eventually(
            Duration::from_secs(6),
            "200 once redis is back",
            async || (status().await.status == 200).then_some(()),
        )
        .await;
        let up = started.elapsed();
        eprintln!("redis {outage}: /readyz 503 after {down:?}, 200 again {up:?} after it answered");
        assert!(
            down <= Duration::from_secs(2),
            "{outage}: 503 only after {down:?}"
        );
        assert!(
            up <= Duration::from_secs(2),
            "{outage}: 200 only after {up:?}"
        );
    }
}

/// Issue 19: a client's burst of unacknowledged publishes is not held back
/// by a Redis round trip per message, and it still arrives whole and in
/// order on this node (through the master) and on another (through Redis,
/// where the publishing worker's queue sends it as pipelines), as one Redis
/// message per publish.
#[tokio::test]
async fn a_burst_of_publishes_arrives_whole_and_in_order_on_every_node() {
    use futures_util::SinkExt;
    use sockhive_tests::ws::{next_json, sc_open, RawWs};
    use tokio_tungstenite::tungstenite::Message;

    let redis = RedisServer::start();
    let a = node(&redis.url(), "node-a", 1);
    let b = node(&redis.url(), "node-b", 1);
    let mut subscribers: Vec<RawWs> = Vec::new();
    for at in [&a, &b] {
        let (mut ws, _) = sc_open(at.public, Some(&token("listener"))).await;
        let subscribe = json!({"event": "#subscribe", "data": {"channel": "burst"}, "cid": 2});
        ws.send(Message::text(subscribe.to_string())).await.unwrap();
        let ack = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
        assert_eq!(ack["rid"], 2, "{ack}");
        subscribers.push(ws);
    }
    let (mut publisher, _) = sc_open(a.public, Some(&token("publisher"))).await;
    let redis_publishes = || {
        let stats = redis.cli(&["INFO", "commandstats"]);
        stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_publish:calls="))
            .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = redis_publishes();
    const BURST: u64 = 50;
    for n in 0..BURST {
        let publish = json!({"event": "#publish", "data": {"channel": "burst", "data": {"n": n}}});
        publisher
            .feed(Message::text(publish.to_string()))
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    for (ws, node) in subscribers.iter_mut().zip(["node-a", "node-b"]) {
        for n in 0..BURST {
            let delivery = next_json(ws, Duration::from_secs(5))
                .await
                .unwrap_or_else(|| panic!("delivery {n} on {node}"));
            assert_eq!(delivery["event"], "#publish", "{delivery}");
            assert_eq!(delivery["data"]["data"]["n"], n, "order on {node}");
        }
    }
    // One Redis message per publish, however many workers and sockets listen.
    assert_eq!(redis_publishes() - before, BURST);
}
