//! Steady, bounded traffic over a cluster, recorded so a fault test can say
//! exactly what a fault cost: which messages each subscriber missed, which
//! handshakes were refused, how `/readyz` answered, and when.
//!
//! One [`Traffic`] runs, on its own thread and runtime (a test blocking its
//! thread on a process must not pause the clients it measures):
//! - subscribers: cookie-authenticated SocketCluster sockets on one channel,
//!   spread so that every worker of every node holds some;
//! - a publisher: numbered messages (`{"n": 1}`, `{"n": 2}`, ...) at a steady
//!   rate through one node, each publish's reply recorded;
//! - a prober: fresh cookie handshakes, one after another, each recorded as
//!   accepted or refused with its latency;
//! - a `/readyz` poller per node.
//!
//! Every loop ends on [`Traffic::stop`] or at the plan's time limit, whichever
//! comes first; every network wait has its own timeout.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::ws::RawWs;

mod report;
pub use report::{missing_ranges, Ack, Connection, Probe, Published, Report, SubscriberLog};

/// A node as the traffic sees it.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    /// Its public port.
    pub public: SocketAddr,
    /// Its admin port (for `/readyz` and socket records).
    pub admin: SocketAddr,
    /// How many workers it runs (the subscribers cover each).
    pub workers: u16,
}

impl Endpoint {
    /// The endpoint of a started node.
    pub fn of(node: &crate::Node, workers: u16) -> Endpoint {
        Endpoint {
            public: node.public,
            admin: node.admin,
            workers,
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The nodes; the indexes below refer to this list.
    pub nodes: Vec<Endpoint>,
    /// `connect.sid=...` of a logged-in session: every socket logs in with it.
    pub cookie: String,
    /// The channel every subscriber listens on and the publisher publishes to.
    pub channel: String,
    /// Subscribers on each worker of each node.
    pub per_worker: usize,
    /// The node the publisher publishes through.
    pub publisher: usize,
    /// Messages per second.
    pub rate: u32,
    /// The nodes the prober opens handshakes on (in turn); empty: no prober.
    pub probe: Vec<usize>,
    /// Pause between two probes.
    pub probe_every: Duration,
    /// A client whose node refuses it tries the other nodes (as a client
    /// behind a balancer would); otherwise it retries its own node.
    pub failover: bool,
    /// The longest the traffic may run; it stops itself then.
    pub limit: Duration,
}

impl Plan {
    /// Two subscribers per worker, 20 messages/s through node 0, probing
    /// every node, no failover, at most 60 s.
    pub fn new(nodes: Vec<Endpoint>, cookie: String) -> Plan {
        let probe = (0..nodes.len()).collect();
        Plan {
            nodes,
            cookie,
            channel: "traffic".into(),
            per_worker: 2,
            publisher: 0,
            rate: 20,
            probe,
            probe_every: Duration::from_millis(50),
            failover: false,
            limit: Duration::from_secs(60),
        }
    }
}

/// What the clients record, shared between their tasks and the test.
#[derive(Debug, Default)]
struct Log {
    published: Vec<Published>,
    subscribers: Vec<SubscriberLog>,
    probes: Vec<Probe>,
    readyz: Vec<Vec<(Instant, u16)>>,
}

type Shared = Arc<Mutex<Log>>;

fn lock(log: &Shared) -> std::sync::MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

/// Traffic running in the background.
pub struct Traffic {
    log: Shared,
    started: Instant,
    stop_publisher: watch::Sender<bool>,
    stop_all: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How long one connect, handshake or subscribe may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits before it reconnects.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

impl Traffic {
    /// Connects every client, starts publishing, and returns once every
    /// subscriber has received a message (the traffic is steady).
    pub fn start(plan: Plan) -> Traffic {
        let log: Shared = Arc::default();
        lock(&log).readyz = vec![Vec::new(); plan.nodes.len()];
        let (stop_publisher, publisher_stopped) = watch::channel(false);
        let (stop_all, all_stopped) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let started = Instant::now();
        let shared = log.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("traffic runtime");
            runtime.block_on(run(plan, shared, publisher_stopped, all_stopped, ready_tx));
        });
        let traffic = Traffic {
            log,
            started,
            stop_publisher,
            stop_all,
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => traffic,
            Ok(Err(why)) => panic!("traffic did not start: {why}"),
            Err(_) => panic!("traffic did not start within 30 s"),
        }
    }

    /// What was recorded so far (the traffic goes on).
    pub fn report(&self) -> Report {
        let log = lock(&self.log);
        Report {
            started: self.started,
            published: log.published.clone(),
            subscribers: log.subscribers.clone(),
            probes: log.probes.clone(),
            readyz: log.readyz.clone(),
        }
    }

    /// Waits (bounded) until `check` holds for the report.
    pub async fn until(&self, timeout: Duration, what: &str, check: impl Fn(&Report) -> bool) {
        crate::eventually(timeout, what, async || check(&self.report()).then_some(())).await;
    }

    /// Stops publishing, lets the last messages arrive (up to 3 s), stops
    /// every client and returns the whole record.
    pub fn stop(mut self) -> Report {
        let _ = self.stop_publisher.send(true);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && !self.report().settled() {
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.stop_all.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.report()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        let _ = self.stop_publisher.send(true);
        let _ = self.stop_all.send(true);
    }
}

async fn run(
    plan: Plan,
    log: Shared,
    publisher_stopped: watch::Receiver<bool>,
    mut stopped: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let plan = Arc::new(plan);
    let subscribers = match place_subscribers(&plan, &log).await {
        Ok(sockets) => sockets,
        Err(why) => {
            let _ = ready.send(Err(why));
            return;
        }
    };
    let mut tasks = Vec::new();
    for (index, ws) in subscribers.into_iter().enumerate() {
        tasks.push(tokio::spawn(subscriber(
            plan.clone(),
            log.clone(),
            index,
            ws,
            stopped.clone(),
        )));
    }
    for node in 0..plan.nodes.len() {
        tasks.push(tokio::spawn(watch_readyz(
            plan.nodes[node].admin,
            log.clone(),
            node,
            stopped.clone(),
        )));
    }
    tasks.push(tokio::spawn(publisher(
        plan.clone(),
        log.clone(),
        publisher_stopped,
        stopped.clone(),
    )));
    let warm = Instant::now() + Duration::from_secs(10);
    loop {
        if lock(&log)
            .subscribers
            .iter()
            .all(|s| !s.received.is_empty())
        {
            break;
        }
        if Instant::now() >= warm {
            let _ = ready.send(Err("a subscriber got no message within 10 s".into()));
            let _ = stopped_signal(&mut stopped).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !plan.probe.is_empty() {
        tasks.push(tokio::spawn(prober(
            plan.clone(),
            log.clone(),
            stopped.clone(),
        )));
    }
    let _ = ready.send(Ok(()));
    let _ = tokio::time::timeout(plan.limit, stopped_signal(&mut stopped)).await;
    for task in tasks {
        task.abort();
    }
}

/// Resolves once `flag` is set (or its sender is gone); unlike `wait_for`
/// it holds no borrow, so a `select!` arm around it stays `Send`.
async fn stopped_signal(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}

/// An authenticated, subscribed socket: the handshake reply's socket id and
/// the moment the subscription was confirmed.
struct Subscribed {
    ws: RawWs,
    id: String,
    at: Instant,
}

/// Opens subscribers on each node until each worker holds `per_worker` of
/// them (the kernel picks the worker; extras are closed).
async fn place_subscribers(plan: &Plan, log: &Shared) -> Result<Vec<(usize, Subscribed)>, String> {
    let mut placed = Vec::new();
    for (node, endpoint) in plan.nodes.iter().enumerate() {
        let mut per_worker = vec![0usize; endpoint.workers as usize + 1];
        let wanted = plan.per_worker * endpoint.workers as usize;
        let mut kept = 0;
        for _ in 0..wanted * 10 {
            if kept == wanted {
                break;
            }
            let socket = subscribe(endpoint.public, &plan.cookie, &plan.channel)
                .await
                .map_err(|e| format!("node {node}: {e}"))?;
            let worker = worker_of(endpoint.admin, &socket.id).await?;
            if per_worker[worker as usize] < plan.per_worker {
                per_worker[worker as usize] += 1;
                kept += 1;
                lock(log).subscribers.push(SubscriberLog {
                    home: node,
                    received: Vec::new(),
                    connections: vec![Connection {
                        node,
                        id: socket.id.clone(),
                        worker: Some(worker),
                        subscribed_at: socket.at,
                        closed: None,
                    }],
                });
                placed.push((node, socket));
            }
        }
        if kept < wanted {
            return Err(format!(
                "node {node}: could not place {wanted} subscribers over its workers: {per_worker:?}"
            ));
        }
    }
    Ok(placed)
}

/// The worker slot holding socket `id`, from the admin API.
async fn worker_of(admin: SocketAddr, id: &str) -> Result<u16, String> {
    let reply = crate::http::get(
        admin,
        &format!("/api/sockets/{id}"),
        &[&format!(
            "Authorization: Bearer {}",
            crate::node::ADMIN_TOKEN
        )],
    )
    .await;
    if reply.status != 200 {
        return Err(format!("record of {id}: {} {}", reply.status, reply.body));
    }
    reply.json()["worker"]
        .as_u64()
        .map(|w| w as u16)
        .ok_or_else(|| format!("record of {id} names no worker"))
}

/// Opens a socket with the session cookie (no protocol handshake yet).
pub async fn connect_with_cookie(addr: SocketAddr, cookie: &str) -> Result<RawWs, String> {
    let mut request = format!("ws://{addr}/socketcluster/")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "Cookie",
        cookie.parse().map_err(|_| "bad cookie".to_string())?,
    );
    match tokio::time::timeout(STEP_TIMEOUT, tokio_tungstenite::connect_async(request)).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err("connect: timed out".into()),
    }
}

/// Sends `#handshake` and returns the socket id, or why the login was refused
/// (an error reply, an `authError`, a close).
pub async fn handshake(ws: &mut RawWs) -> Result<String, String> {
    let hello = json!({"event": "#handshake", "data": {"authToken": null}, "cid": 1});
    ws.send(Message::text(hello.to_string()))
        .await
        .map_err(|e| format!("send handshake: {e}"))?;
    let reply = reply_to(ws, 1).await?;
    if !reply["error"].is_null() {
        return Err(name_of(&reply["error"]));
    }
    if !reply["data"]["authError"].is_null() {
        return Err(name_of(&reply["data"]["authError"]));
    }
    reply["data"]["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("handshake reply without id: {reply}"))
}

/// `name: message` of an error reply (a refused handshake's message names
/// the credential's error, e.g. `SessionStoreUnavailableError`).
fn name_of(error: &Value) -> String {
    let name = error["name"].as_str().unwrap_or("error");
    match error["message"].as_str() {
        Some(message) => format!("{name}: {message}"),
        None => name.to_string(),
    }
}

/// Reads until the reply to `cid`, answering pings; an error names a close.
async fn reply_to(ws: &mut RawWs, cid: u64) -> Result<Value, String> {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let frame = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err(format!("no reply to {cid} within {STEP_TIMEOUT:?}")),
            Ok(None) => return Err("connection ended".into()),
            Ok(Some(Err(e))) => return Err(format!("connection failed: {e}")),
            Ok(Some(Ok(frame))) => frame,
        };
        match frame {
            Message::Text(text) if text.is_empty() => {
                let _ = ws.send(Message::text("")).await;
            }
            Message::Text(text) => {
                let Ok(value) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if value["rid"] == cid {
                    return Ok(value);
                }
            }
            Message::Close(frame) => {
                return Err(format!(
                    "closed {}",
                    frame.map(|f| u16::from(f.code)).unwrap_or(1005)
                ))
            }
            _ => {}
        }
    }
}

/// Connects, logs in by cookie and subscribes to `channel`.
async fn subscribe(addr: SocketAddr, cookie: &str, channel: &str) -> Result<Subscribed, String> {
    let mut ws = connect_with_cookie(addr, cookie).await?;
    let id = handshake(&mut ws).await?;
    let request = json!({"event": "#subscribe", "data": {"channel": channel}, "cid": 2});
    ws.send(Message::text(request.to_string()))
        .await
        .map_err(|e| format!("send subscribe: {e}"))?;
    let reply = reply_to(&mut ws, 2).await?;
    if !reply["error"].is_null() {
        return Err(format!("subscribe refused: {}", reply["error"]));
    }
    Ok(Subscribed {
        ws,
        id,
        at: Instant::now(),
    })
}

/// The nodes a client tries, in order, when it (re)connects.
fn candidates(plan: &Plan, home: usize) -> Vec<usize> {
    let mut nodes = vec![home];
    if plan.failover {
        nodes.extend((0..plan.nodes.len()).filter(|n| *n != home));
    }
    nodes
}

/// One subscriber: counts what it receives; when its socket ends it records
/// how, reconnects (after a pause) and subscribes again.
async fn subscriber(
    plan: Arc<Plan>,
    log: Shared,
    index: usize,
    (home, first): (usize, Subscribed),
    mut stopped: watch::Receiver<bool>,
) {
    let mut socket = Some(first);
    let mut attempt = 0usize;
    loop {
        let Some(Subscribed { mut ws, .. }) = socket.take() else {
            // Reconnect: the next candidate node, in turn.
            let nodes = candidates(&plan, home);
            let node = nodes[attempt % nodes.len()];
            attempt += 1;
            tokio::select! {
                _ = stopped_signal(&mut stopped) => return,
                _ = tokio::time::sleep(RECONNECT_DELAY) => {}
            }
            let outcome = tokio::select! {
                _ = stopped_signal(&mut stopped) => return,
                outcome = subscribe(plan.nodes[node].public, &plan.cookie, &plan.channel) => outcome,
            };
            if let Ok(subscribed) = outcome {
                attempt = 0;
                lock(&log).subscribers[index].connections.push(Connection {
                    node,
                    id: subscribed.id.clone(),
                    worker: None,
                    subscribed_at: subscribed.at,
                    closed: None,
                });
                socket = Some(subscribed);
            }
            continue;
        };
        let code = loop {
            let frame = tokio::select! {
                _ = stopped_signal(&mut stopped) => return,
                frame = ws.next() => frame,
            };
            match frame {
                Some(Ok(Message::Text(text))) if text.is_empty() => {
                    let _ = ws.send(Message::text("")).await;
                }
                Some(Ok(Message::Text(text))) => {
                    if let Some(n) = delivery(&text, &plan.channel) {
                        lock(&log).subscribers[index]
                            .received
                            .push((n, Instant::now()));
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    break Some(frame.map(|f| u16::from(f.code)).unwrap_or(1005))
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break None,
            }
        };
        if let Some(connection) = lock(&log).subscribers[index].connections.last_mut() {
            connection.closed = Some((Instant::now(), code));
        }
    }
}

/// The message number of a channel delivery, if `text` is one.
fn delivery(text: &str, channel: &str) -> Option<u64> {
    let value: Value = serde_json::from_str(text).ok()?;
    (value["event"] == "#publish" && value["data"]["channel"] == channel)
        .then(|| value["data"]["data"]["n"].as_u64())
        .flatten()
}

/// Publishes `{"n": 1}`, `{"n": 2}`, ... at the plan's rate through its node,
/// without waiting for replies (they are matched by cid); reconnects when its
/// socket ends. A message counts as published once it was written.
async fn publisher(
    plan: Arc<Plan>,
    log: Shared,
    mut stop: watch::Receiver<bool>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut n = 0u64;
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / plan.rate);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let nodes = candidates(&plan, plan.publisher);
    let mut attempt = 0usize;
    loop {
        let node = nodes[attempt % nodes.len()];
        let connected = async {
            let mut ws = connect_with_cookie(plan.nodes[node].public, &plan.cookie).await?;
            handshake(&mut ws).await?;
            Ok::<_, String>(ws)
        };
        let connected = tokio::select! {
            _ = stopped_signal(&mut stopped) => return,
            ws = connected => ws,
        };
        let Ok(mut ws) = connected else {
            attempt += 1;
            tokio::time::sleep(RECONNECT_DELAY).await;
            continue;
        };
        attempt = 0;
        loop {
            let publishing = !*stop.borrow_and_update();
            tokio::select! {
                _ = stopped_signal(&mut stopped) => return,
                // Once told to stop, it only reads the last replies.
                _ = stop.changed(), if publishing => {}
                _ = ticks.tick(), if publishing => {
                    // The tick may have raced the stop: nothing is sent after it.
                    if *stop.borrow() {
                        continue;
                    }
                    n += 1;
                    let cid = n + 10;
                    let message = json!({"event": "#publish", "data": {"channel": plan.channel, "data": {"n": n}}, "cid": cid});
                    let sent_at = Instant::now();
                    if ws.send(Message::text(message.to_string())).await.is_err() {
                        // Not written: not published. The number is skipped.
                        break;
                    }
                    lock(&log).published.push(Published { n, node, sent_at, ack: Ack::Pending });
                }
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) if text.is_empty() => {
                        let _ = ws.send(Message::text("")).await;
                    }
                    Some(Ok(Message::Text(text))) => {
                        let Ok(reply) = serde_json::from_str::<Value>(&text) else { continue };
                        let Some(cid) = reply["rid"].as_u64().filter(|c| *c > 10) else { continue };
                        let ack = if reply["error"].is_null() {
                            Ack::Ok(Instant::now())
                        } else {
                            Ack::Error(name_of(&reply["error"]), Instant::now())
                        };
                        if let Some(entry) = lock(&log).published.iter_mut().rev().find(|p| p.n == cid - 10) {
                            entry.ack = ack;
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
            }
        }
        // The socket ended: replies that never came will not come.
        for entry in lock(&log).published.iter_mut() {
            if matches!(entry.ack, Ack::Pending) {
                entry.ack = Ack::Lost;
            }
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// Opens fresh logged-in sockets one after another on the probed nodes,
/// recording each outcome; a probe that outlasts its timeout is recorded as
/// hung, not waited for.
async fn prober(plan: Arc<Plan>, log: Shared, mut stopped: watch::Receiver<bool>) {
    let mut turn = 0usize;
    loop {
        let node = plan.probe[turn % plan.probe.len()];
        turn += 1;
        let started = Instant::now();
        let attempt = async {
            let mut ws = connect_with_cookie(plan.nodes[node].public, &plan.cookie).await?;
            let outcome = handshake(&mut ws).await;
            let _ = ws.close(None).await;
            outcome
        };
        let outcome = tokio::select! {
            _ = stopped_signal(&mut stopped) => return,
            outcome = tokio::time::timeout(STEP_TIMEOUT * 2, attempt) => match outcome {
                Ok(outcome) => outcome.map(|_| ()),
                Err(_) => Err("hung".to_string()),
            },
        };
        lock(&log).probes.push(Probe {
            node,
            started,
            latency: started.elapsed(),
            refused: outcome.err(),
        });
        tokio::select! {
            _ = stopped_signal(&mut stopped) => return,
            _ = tokio::time::sleep(plan.probe_every) => {}
        }
    }
}

/// Polls `GET /readyz` every 100 ms; a node that does not answer within 1 s
/// is recorded with status 0.
async fn watch_readyz(
    admin: SocketAddr,
    log: Shared,
    node: usize,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let status = tokio::time::timeout(Duration::from_secs(1), readyz_status(admin))
            .await
            .unwrap_or(0);
        lock(&log).readyz[node].push((Instant::now(), status));
        tokio::select! {
            _ = stopped_signal(&mut stopped) => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// The status of `/readyz`, 0 when the node cannot be reached (unlike
/// [`crate::http::get`], which treats that as a test failure).
async fn readyz_status(admin: SocketAddr) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(admin).await else {
        return 0;
    };
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return 0;
    }
    let mut head = [0u8; 16];
    let Ok(read) = stream.read(&mut head).await else {
        return 0;
    };
    std::str::from_utf8(&head[..read])
        .ok()
        .and_then(|h| h.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
