//! `bare-ws`: the ceiling. A tokio-tungstenite server that accepts every
//! upgrade with no authentication and speaks the least SocketCluster a client
//! needs: a `#handshake` reply, `#subscribe` acks and `#publish` fan-out.
//!
//! Why it exists: "auth costs nothing" is only checkable against a server that
//! does everything but auth, built from the same WebSocket stack as sockhive.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Subscribers = Vec<(u64, mpsc::UnboundedSender<Utf8Bytes>)>;

/// Channel name to its subscribers.
#[derive(Default)]
struct Channels {
    map: Mutex<HashMap<String, Subscribers>>,
}

impl Channels {
    fn subscribe(&self, channel: &str, id: u64, sender: &mpsc::UnboundedSender<Utf8Bytes>) {
        if let Ok(mut map) = self.map.lock() {
            map.entry(channel.to_string())
                .or_default()
                .push((id, sender.clone()));
        }
    }

    fn publish(&self, channel: &str, frame: Utf8Bytes) {
        if let Ok(map) = self.map.lock() {
            for (_, sender) in map.get(channel).into_iter().flatten() {
                let _ = sender.send(frame.clone());
            }
        }
    }

    fn forget(&self, id: u64, channels: &[String]) {
        if let Ok(mut map) = self.map.lock() {
            for channel in channels {
                if let Some(list) = map.get_mut(channel) {
                    list.retain(|(member, _)| *member != id);
                }
            }
        }
    }
}

struct Args {
    listen: SocketAddr,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut listen = None;
    let mut threads = 2;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse().map_err(|e| format!("--listen: {e}"))?),
            "--threads" => threads = value.parse().map_err(|e| format!("--threads: {e}"))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen ADDR is required")?,
        threads,
    })
}

/// The reply to one inbound frame, if any.
fn answer(
    text: &str,
    socket_id: u64,
    channels: &Channels,
    subscriptions: &mut Vec<String>,
    outbox: &mpsc::UnboundedSender<Utf8Bytes>,
) -> Option<String> {
    if text.is_empty() {
        return None; // a pong
    }
    let packet: Value = serde_json::from_str(text).ok()?;
    let cid = packet["cid"].as_u64();
    match packet["event"].as_str()? {
        "#handshake" => Some(format!(
            r#"{{"rid":{},"data":{{"id":"bare-{socket_id}","pingTimeout":30000,"isAuthenticated":false}}}}"#,
            cid?
        )),
        "#subscribe" => {
            let channel = packet["data"]["channel"].as_str()?.to_string();
            channels.subscribe(&channel, socket_id, outbox);
            subscriptions.push(channel);
            Some(format!(r#"{{"rid":{}}}"#, cid?))
        }
        "#publish" => {
            let channel = packet["data"]["channel"].as_str()?;
            let frame =
                serde_json::json!({"event": "#publish", "data": packet["data"]}).to_string();
            channels.publish(channel, frame.into());
            cid.map(|cid| format!(r#"{{"rid":{cid}}}"#))
        }
        _ => None,
    }
}

async fn serve_socket(stream: TcpStream, socket_id: u64, channels: Arc<Channels>) {
    let _ = stream.set_nodelay(true);
    // tungstenite's default 128 KiB read buffer is touched per socket; 4 KiB
    // keeps this server a fair lower bound for memory per socket too.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(mut socket) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
    else {
        return;
    };
    let (outbox, mut inbox) = mpsc::unbounded_channel::<Utf8Bytes>();
    let mut subscriptions = Vec::new();
    loop {
        tokio::select! {
            frame = socket.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    if let Some(reply) = answer(&text, socket_id, &channels, &mut subscriptions, &outbox) {
                        if socket.send(Message::text(reply)).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            Some(frame) = inbox.recv() => {
                // Whatever else is queued goes out in the same write, as a
                // plain server that batches does: the ceiling should not pay
                // a flush (a syscall) per frame of a burst.
                if socket.feed(Message::Text(frame)).await.is_err() {
                    break;
                }
                let mut fed = true;
                while let Ok(frame) = inbox.try_recv() {
                    fed = socket.feed(Message::Text(frame)).await.is_ok();
                    if !fed {
                        break;
                    }
                }
                if !fed || socket.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    channels.forget(socket_id, &subscriptions);
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("bare-ws: {e}\nusage: bare-ws --listen 127.0.0.1:PORT [--threads N]");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bare-ws: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("bare-ws: bind {}: {e}", args.listen);
                return std::process::ExitCode::FAILURE;
            }
        };
        let channels = Arc::new(Channels::default());
        let next_id = AtomicU64::new(1);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(serve_socket(stream, id, channels.clone()));
                    }
                }
                _ = tokio::signal::ctrl_c() => return std::process::ExitCode::SUCCESS,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_handshake_subscribe_and_publish() {
        let channels = Channels::default();
        let (outbox, mut inbox) = mpsc::unbounded_channel();
        let mut subs = Vec::new();
        let reply = answer(
            r##"{"event":"#handshake","data":{"authToken":null},"cid":3}"##,
            9,
            &channels,
            &mut subs,
            &outbox,
        );
        let reply: Value = serde_json::from_str(&reply.expect("reply")).expect("json");
        assert_eq!(reply["rid"], 3);
        assert_eq!(reply["data"]["pingTimeout"], 30000);
        let ack = answer(
            r##"{"event":"#subscribe","data":{"channel":"c"},"cid":4}"##,
            9,
            &channels,
            &mut subs,
            &outbox,
        );
        assert_eq!(ack.as_deref(), Some(r#"{"rid":4}"#));
        assert_eq!(
            answer(
                r##"{"event":"#publish","data":{"channel":"c","data":1}}"##,
                9,
                &channels,
                &mut subs,
                &outbox
            ),
            None
        );
        let delivered: Value =
            serde_json::from_str(&inbox.try_recv().expect("delivery")).expect("json");
        assert_eq!(delivered["data"]["data"], 1);
        channels.forget(9, &subs);
        answer(
            r##"{"event":"#publish","data":{"channel":"c","data":2}}"##,
            9,
            &channels,
            &mut subs,
            &outbox,
        );
        assert!(inbox.try_recv().is_err());
        assert_eq!(answer("", 9, &channels, &mut subs, &outbox), None);
        assert_eq!(answer("not json", 9, &channels, &mut subs, &outbox), None);
    }
}
