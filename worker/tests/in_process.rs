//! A worker booted in-process: the test plays the master over a socket pair
//! and owns the shutdown, as `worker::serve` takes it as a value.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sockhive_shared::config::{Config, ConfigLayer};
use sockhive_shared::ipc::{self, ToMaster, ToWorker};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UnixStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_worker_serves_until_its_shutdown_is_cancelled_then_closes_sockets_with_1001() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (mut master, worker_end) = UnixStream::pair().unwrap();
    let mut layer = ConfigLayer::default();
    layer.server.node_id = Some("in-process".into());
    layer.auth.auth_key = Some("k".into());
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
    let worker = tokio::spawn(sockhive_worker::worker::serve(
        listener,
        worker_end,
        shutdown.clone(),
    ));
    let ready: Option<ToMaster> =
        tokio::time::timeout(Duration::from_secs(5), ipc::read_message(&mut master))
            .await
            .expect("the worker reports ready")
            .unwrap();
    assert!(matches!(ready, Some(ToMaster::Ready)), "{ready:?}");

    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://{addr}/socketcluster/"), stream)
            .await
            .unwrap();
    ws.send(Message::text(
        r##"{"event":"#handshake","data":{},"cid":1}"##,
    ))
    .await
    .unwrap();
    let reply = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(text) if !text.is_empty() => break text.to_string(),
            _ => continue,
        }
    };
    assert!(reply.contains("\"isAuthenticated\":false"), "{reply}");

    shutdown.cancel();
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
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("the worker drains and returns")
        .unwrap()
        .unwrap();
}
