//! A test-only echo endpoint over the production WebSocket path, for the
//! Autobahn|Testsuite (`tests/autobahn/`).
//!
//! Conformance is only worth measuring on the code that serves clients, so
//! only the application layer is swapped: a connection goes through the same
//! head reading (the front door's `read_request`: head time and size limits),
//! upgrade checks and 101 (its `upgrade`: origin, handshake headers,
//! `--max-connections`, the credential step, and `ws_limits`'
//! production frame and message limits), the same socket core
//! ([`run_socket`]: its read loop, its mapping of read errors to endings, its
//! close and lingering close through
//! [`Wire::end`](crate::transport::Wire::end)); the protocol adapter is
//! `Echo`, which sends every text and binary message back.
//!
//! No production route leads here: `sockhive serve` never calls [`serve`];
//! the `autobahn_echo` example does.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use serde_json::value::RawValue;
use serde_json::Value;
use sockhive_shared::channel_rules::ChannelRules;
use sockhive_shared::config::{Config, Limits};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use crate::auth::{Credentials, Refusal};
use crate::hub::channels::{DeliveryEncoder, LocalChannels, MAX_ENCODERS};
use crate::hub::registry::SocketRegistry;
use crate::master_link::MasterLink;
use crate::socket::heartbeat::{HeartbeatPolicy, HeartbeatStyle};
use crate::socket::writer::Out;
use crate::socket::{
    run_socket, CloseReason, HandshakeLogin, Protocol, ReplyError, ReplyTo, SocketEvent,
};
use crate::transport::Upgraded;
use crate::{Worker, WorkerMetrics};

/// Serves one accepted TCP connection as an echo WebSocket, at any path.
///
/// Why a separate entry and not a route: the route table is what production
/// exposes, and an echo endpoint must never be reachable there.
pub async fn serve(ctx: Arc<Worker>, mut stream: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    let Some((head, rest)) = super::read_request(&ctx, &mut stream).await else {
        return;
    };
    let upgraded = Upgraded {
        head,
        peer,
        started,
    };
    let protocol = Echo::new(&ctx.config.limits);
    let Some((ws, _open, admission)) =
        super::upgrade(&ctx, stream, rest, &upgraded, &protocol).await
    else {
        return;
    };
    run_socket(ctx, ws, super::slimmed(upgraded), admission, protocol).await
}

/// A worker with no master, broker or app, for [`serve`]: the echo needs
/// only the configuration's limits and the front door's counters.
///
/// The caller's `config` should keep the production WebSocket limits (the
/// point of the exercise); see the `autobahn_echo` example.
pub fn standalone_worker(config: Config) -> anyhow::Result<Arc<Worker>> {
    let (master, to_master) = MasterLink::new();
    // Nothing reads the "master": its messages (none are expected, an echo
    // socket never registers) are dropped as they come.
    drop(to_master);
    let metrics = WorkerMetrics::new();
    let credentials = Credentials::new(&config, None, metrics.session_logins.clone())?;
    let node = config.server.node_id.clone();
    Ok(Arc::new(Worker {
        slot: 1,
        credentials: Arc::new(credentials),
        sockets: SocketRegistry::new(node.clone(), 1, master.clone(), None),
        channels: LocalChannels::new(master.clone(), None),
        channel_rules: ChannelRules::compile(&config.channels.rule)?,
        metrics,
        node_tag: sockhive_shared::ipc::node_tag(&node),
        config,
        master,
        shutdown: CancellationToken::new(),
        open_connections: AtomicUsize::new(0),
        polling: Arc::default(),
        poll_forwards: Default::default(),
        node_addresses: Default::default(),
        handoff: None,
        app: None,
    }))
}

/// The echo never subscribes; the core still wants an encoder, so it gets
/// the last slot, which no real protocol uses.
static DELIVERY: DeliveryEncoder = DeliveryEncoder {
    slot: MAX_ENCODERS - 1,
    encode: |_, data| data.to_string(),
};

/// The application layer of [`serve`]: every text and binary message back,
/// unchanged. It has no handshake, so the socket core never registers it
/// (no heartbeat, no registry entry); everything else is the core's.
#[derive(Debug)]
struct Echo {
    /// The SocketCluster heartbeat of the configuration: never started (no
    /// handshake), but its timeout still bounds a write that makes no progress.
    heartbeat: HeartbeatPolicy,
}

impl Echo {
    /// An echo with `limits`' heartbeat, as SocketCluster would have.
    fn new(limits: &Limits) -> Echo {
        Echo {
            heartbeat: HeartbeatPolicy {
                style: HeartbeatStyle::Periodic,
                interval: limits.ping_interval,
                timeout: limits.ping_timeout,
            },
        }
    }
}

impl Protocol for Echo {
    const NAME: &'static str = "echo";
    const DELIVERY: &'static DeliveryEncoder = &DELIVERY;

    fn new_socket_id(&self) -> String {
        String::from("echo")
    }

    fn heartbeat(&self) -> HeartbeatPolicy {
        self.heartbeat
    }

    fn decode(
        &mut self,
        message: Message,
        _registered: bool,
        out: &mut Out,
        _events: &mut Vec<SocketEvent>,
    ) {
        match message {
            Message::Text(text) => out.text(text),
            Message::Binary(bytes) => out.binary(bytes.to_vec()),
            // Pings are answered and closes replied to by the WebSocket layer.
            _ => {}
        }
    }

    fn accept_handshake(&mut self, _: &mut Out, _: ReplyTo, _: &HandshakeLogin<'_>) -> bool {
        false
    }

    fn reject_handshake(&mut self, _: &mut Out, _: ReplyTo, refusal: &Refusal) -> CloseReason {
        CloseReason::HandshakeRejected(refusal.message.clone())
    }

    fn reply(&mut self, _: &mut Out, _: ReplyTo, _: Result<(), &ReplyError>) {}

    fn call_result(&mut self, _: &mut Out, _: ReplyTo, _: Result<&Value, &ReplyError>) {}

    fn authenticate_reply(&mut self, _: &mut Out, _: ReplyTo, _: Result<(), &Refusal>) {}

    fn token_issued(&mut self, _: &mut Out, _: &str, _: Option<&crate::auth::Claims>) {}

    fn deauthenticated(&mut self, _: &mut Out, _: &str, _: &str) {}

    fn kicked_out(&mut self, _: &mut Out, _: &str, _: &str) {}

    fn event(&mut self, _: &mut Out, _: &str, _: &RawValue) {}

    fn delivery(&mut self, _: &mut Out, _: Utf8Bytes) {}

    fn ping(&mut self, _: &mut Out) {}

    fn close(&mut self, _: &mut Out, reason: &CloseReason) -> Option<(u16, String)> {
        // The WebSocket-level endings as both real adapters send them.
        let code = match reason {
            CloseReason::TooBig { .. } => CloseCode::Size,
            CloseReason::BadUtf8 => CloseCode::Invalid,
            CloseReason::BadFrame(why) => return Some((CloseCode::Protocol.into(), why.clone())),
            CloseReason::GoingAway => CloseCode::Away,
            CloseReason::NotReading => CloseCode::Policy,
            _ => CloseCode::Normal,
        };
        Some((code.into(), String::new()))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use sockhive_shared::config::ConfigLayer;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    use super::*;

    /// The echo behind the production front door, on a free port.
    async fn start() -> (SocketAddr, usize) {
        let mut layer = ConfigLayer::default();
        layer.server.node_id = Some("echo-test".into());
        let ctx = standalone_worker(Config::resolve(layer).unwrap()).unwrap();
        let max = ctx.config.limits.max_payload as usize;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                tokio::spawn(serve(ctx.clone(), stream, peer));
            }
        });
        (addr, max)
    }

    #[tokio::test]
    async fn echoes_up_to_the_payload_limit_and_refuses_past_it_with_1009() {
        let (addr, max) = start().await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), stream)
            .await
            .unwrap();
        ws.send(Message::text("héllo")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("héllo"));
        let at_limit = vec![7u8; max];
        ws.send(Message::binary(at_limit.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(at_limit));
        ws.send(Message::binary(vec![7u8; max + 1])).await.unwrap();
        let Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) = ws.next().await else {
            panic!("expected a close frame");
        };
        assert_eq!(u16::from(code), 1009);
    }

    #[tokio::test]
    async fn a_plain_http_request_gets_the_front_doors_refusal() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addr, _) = start().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
}
