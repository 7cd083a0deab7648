//! A bare WebSocket client for tests that need to misbehave on purpose
//! (oversized frames, garbage, silence), which the npm clients never do.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A raw client socket.
pub type RawWs = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket to `path` on `addr` (no protocol handshake yet).
pub async fn connect(addr: SocketAddr, path: &str) -> RawWs {
    let config = WebSocketConfig::default()
        .max_frame_size(None)
        .max_message_size(None);
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_with_config(url, Some(config), false),
    )
    .await
    .expect("upgrade in time")
    .expect("upgrade accepted");
    ws
}

/// Opens a SocketCluster socket and completes `#handshake`; returns the reply's `data`.
pub async fn sc_open(addr: SocketAddr, token: Option<&str>) -> (RawWs, Value) {
    let mut ws = connect(addr, "/socketcluster/").await;
    let handshake =
        serde_json::json!({"event": "#handshake", "data": {"authToken": token}, "cid": 1});
    ws.send(Message::text(handshake.to_string()))
        .await
        .expect("send handshake");
    let reply = next_json(&mut ws, Duration::from_secs(10))
        .await
        .expect("handshake reply");
    assert_eq!(reply["rid"], 1, "handshake reply: {reply}");
    (ws, reply["data"].clone())
}

/// The next JSON text frame, answering pings (empty frames) on the way; `None` on close.
pub async fn next_json(ws: &mut RawWs, timeout: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        match frame {
            Ok(Message::Text(text)) if text.is_empty() => {
                let _ = ws.send(Message::text("")).await;
            }
            Ok(Message::Text(text)) => return serde_json::from_str(&text).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Reads until the server's close frame; its code and reason, or `None` if
/// the connection ended without one (or `timeout` passed).
pub async fn close_code(ws: &mut RawWs, timeout: Duration) -> Option<(u16, String)> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        match frame {
            Ok(Message::Close(Some(frame))) => {
                return Some((frame.code.into(), frame.reason.to_string()))
            }
            Ok(Message::Close(None)) => return Some((1005, String::new())),
            Ok(Message::Text(text)) if text.is_empty() => {
                let _ = ws.send(Message::text("")).await;
            }
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}
