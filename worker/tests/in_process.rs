//! A worker booted in-process: the test plays the master over a socket pair
//! and owns the shutdown, as `worker::serve` takes it as a value; and a Rust
//! program answering the app hooks in-process, as the `app` module documents.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sockhive_shared::config::{Config, ConfigLayer};
use sockhive_shared::ipc::{self, ToMaster, ToWorker};
use sockhive_worker::app::{
    AppHooks, Effect, HookAnswer, HookCall, HookFailure, HookFuture, HookKind,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// A booted worker: its address, the master's end of the IPC pair, its shutdown.
struct Booted {
    addr: SocketAddr,
    _master: UnixStream,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

async fn boot(hooks: Option<Arc<dyn AppHooks>>) -> Booted {
    boot_with(hooks, |_| {}).await
}

async fn boot_with(
    hooks: Option<Arc<dyn AppHooks>>,
    tune: impl FnOnce(&mut ConfigLayer),
) -> Booted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (mut master, worker_end) = UnixStream::pair().unwrap();
    let mut layer = ConfigLayer::default();
    layer.server.node_id = Some("in-process".into());
    layer.auth.auth_key = Some("k".into());
    tune(&mut layer);
    let config = Config::resolve(layer).unwrap();
    let hello = ToWorker::Hello {
        slot: 1,
        config: Box::new(config),
    };
    master
        .write_all(&ipc::encode(&hello).unwrap())
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(sockhive_worker::worker::serve_with_hooks(
        listener,
        worker_end,
        shutdown.clone(),
        hooks,
    ));
    let ready: Option<ToMaster> =
        tokio::time::timeout(Duration::from_secs(5), ipc::read_message(&mut master))
            .await
            .expect("the worker reports ready")
            .unwrap();
    assert!(matches!(ready, Some(ToMaster::Ready)), "{ready:?}");
    Booted {
        addr,
        _master: master,
        shutdown,
        handle,
    }
}

type Client = WebSocketStream<TcpStream>;

async fn handshake(addr: SocketAddr) -> (Client, Value) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://{addr}/socketcluster/"), stream)
            .await
            .unwrap();
    ws.send(Message::text(
        r##"{"event":"#handshake","data":{},"cid":1}"##,
    ))
    .await
    .unwrap();
    let reply = next_json(&mut ws).await;
    (ws, reply)
}

async fn next_json(ws: &mut Client) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame in time")
            .unwrap()
            .unwrap()
        {
            Message::Text(text) if !text.is_empty() => return serde_json::from_str(&text).unwrap(),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn a_worker_serves_until_its_shutdown_is_cancelled_then_closes_sockets_with_1001() {
    let worker = boot(None).await;
    let (mut ws, reply) = handshake(worker.addr).await;
    assert_eq!(reply["data"]["isAuthenticated"], false, "{reply}");

    worker.shutdown.cancel();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close, Some(1001));
    drop(ws);
    tokio::time::timeout(Duration::from_secs(10), worker.handle)
        .await
        .expect("the worker drains and returns")
        .unwrap()
        .unwrap();
}

/// The application, in Rust and in-process: `login` logs the socket in,
/// anything else echoes its data with who asked.
struct InProcessApp;

impl AppHooks for InProcessApp {
    fn call(&self, call: HookCall) -> HookFuture {
        Box::pin(async move {
            let data: Value = call
                .data
                .as_ref()
                .map_or(Value::Null, |d| serde_json::from_str(d.get()).unwrap());
            Ok(match call.name.as_deref() {
                Some("login") => HookAnswer::result(json!("welcome")).with_effect(
                    Effect::parse(json!({"set_auth_token": {"sub": data["username"]}})).unwrap(),
                ),
                _ => HookAnswer::result(json!({"echo": data, "user": call.socket["user"]})),
            })
        })
    }
}

#[tokio::test]
async fn an_embedding_program_answers_the_hooks_in_process() {
    let worker = boot(Some(Arc::new(InProcessApp))).await;
    let (mut ws, _) = handshake(worker.addr).await;
    ws.send(Message::text(
        r#"{"event":"login","data":{"username":"ada"},"cid":2}"#,
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["event"], "#setAuthToken");
    assert_eq!(
        next_json(&mut ws).await,
        json!({"rid": 2, "data": "welcome"})
    );
    ws.send(Message::text(r#"{"event":"ask","data":[1],"cid":3}"#))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut ws).await,
        json!({"rid": 3, "data": {"echo": [1], "user": {"id": "ada"}}})
    );
    worker.shutdown.cancel();
}

/// An app whose `connect` hook refuses `mallory` and is down for `dave`.
struct Gatekeeper;

impl AppHooks for Gatekeeper {
    fn call(&self, call: HookCall) -> HookFuture {
        Box::pin(async move {
            match call.socket["user"]["id"].as_str() {
                Some("mallory") => Ok(HookAnswer::error("BannedError", "not today")),
                Some("dave") => Err(HookFailure::Unavailable("the app is restarting".into())),
                _ => Ok(HookAnswer::result(Value::Null)),
            }
        })
    }
}

/// The raw HTTP answer to an upgrade with `?access_token=` for `user`.
async fn upgrade_as(addr: SocketAddr, user: &str) -> String {
    use tokio::io::AsyncReadExt;
    let keys = sockhive_shared::jwt::JwtKeys::hs256("k").unwrap();
    let Value::Object(claims) = json!({"sub": user}) else {
        unreachable!()
    };
    let token = sockhive_shared::jwt::TokenSigner::new(&keys)
        .unwrap()
        .sign(
            claims,
            Duration::from_secs(60),
            sockhive_worker::auth::now_unix(),
        )
        .unwrap();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /socketcluster/?access_token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&answer[..read]).into_owned()
}

#[tokio::test]
async fn at_the_upgrade_the_connect_hook_refuses_with_401_or_503_when_the_app_is_down() {
    let worker = boot_with(Some(Arc::new(Gatekeeper)), |layer| {
        layer.auth.require_auth = Some(true);
        layer.auth.reject_at_upgrade = Some(true);
        layer.hooks.hooks = Some(vec![HookKind::Connect]);
    })
    .await;
    let refused = upgrade_as(worker.addr, "mallory").await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(refused.contains("BannedError"), "{refused}");
    let down = upgrade_as(worker.addr, "dave").await;
    assert!(down.starts_with("HTTP/1.1 503"), "{down}");
    assert!(down.contains("Retry-After: 1"), "{down}");
    assert!(down.contains("HookUnavailableError"), "{down}");
    let welcome = upgrade_as(worker.addr, "alice").await;
    assert!(welcome.starts_with("HTTP/1.1 101"), "{welcome}");
    worker.shutdown.cancel();
}

#[tokio::test]
async fn under_require_auth_an_app_that_cannot_answer_is_a_503_and_its_refusal_stays_readable() {
    let worker = boot_with(Some(Arc::new(Gatekeeper)), |layer| {
        layer.auth.require_auth = Some(true);
        layer.hooks.hooks = Some(vec![HookKind::Connect]);
    })
    .await;
    // The app is down: a retryable 503 before the upgrade, not a final close.
    let down = upgrade_as(worker.addr, "dave").await;
    assert!(down.starts_with("HTTP/1.1 503"), "{down}");
    assert!(down.contains("Retry-After: 1"), "{down}");
    // The app refuses: the protocol's own, readable rejection after the upgrade.
    let refused = upgrade_as(worker.addr, "mallory").await;
    assert!(refused.starts_with("HTTP/1.1 101"), "{refused}");
    worker.shutdown.cancel();
}
