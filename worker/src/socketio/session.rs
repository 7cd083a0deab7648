//! One Socket.IO socket, from the upgrade to the close.
//!
//! Shaped like the SocketCluster session: a single task owns the WebSocket,
//! and inbound frames, queued outbound items (channel deliveries, admin emits
//! and kicks, logouts), the Engine.IO heartbeat, the CONNECT deadline and the
//! token's expiry all meet in one `select!`, so no lock is held across an
//! await and the socket's own state needs none.
//!
//! sockhive serves the main namespace `/` only; it runs no application
//! handlers, so an event is either one of the channel events of interface.md
//! (`subscribe`, `unsubscribe`, `publish`) or answered at once with an
//! `UnknownProcedureError` ack (when the client asked for an ack).
//!
//! Binary data crosses protocols in SocketCluster's own encoding of a Buffer,
//! `{"base64": true, "data": "<base64>"}`: a Socket.IO binary `publish` is
//! published that way (so SocketCluster subscribers get what a SocketCluster
//! client publishing a Buffer would send), and a channel message holding such
//! objects reaches Socket.IO subscribers as a BINARY_EVENT with the bytes as
//! attachments (see [`encode_channel_delivery`]).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use sockhive_shared::http::{RequestHead, Response};
use tokio::io::AsyncWriteExt;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::codec::{
    self, close_code, event_name, BinaryAssembler, BinaryKind, BinaryPacket, ChannelRequest,
    DecodeLimits, EnginePacket, OpenHandshake, PacketKind, MAIN_NAMESPACE,
};
use crate::auth::now_unix;
use crate::channels::{channel_allowed, Wire};
use crate::credentials::{self, Credential, Identity, Method, PendingCredential, Refusal};
use crate::front_door::{Upgraded, Ws};
use crate::outbox::{outbox, Inbox, Outbound, Outbox};
use crate::passport::SessionLogin;
use crate::sockets::SocketEntry;
use crate::WorkerContext;

/// Label of this protocol in metrics and records.
pub const PROTOCOL: &str = "socketio";

/// The path `socket.io-client` connects to by default (it always appends the slash).
pub const PATH: &str = "/socket.io/";

/// Engine.IO heartbeat: the server pings this often (counted from the last pong)...
const PING_INTERVAL: Duration = Duration::from_millis(codec::DEFAULT_PING_INTERVAL_MS as u64);

/// ...and closes a connection whose pong has not come back within this.
const PING_TIMEOUT: Duration = Duration::from_millis(codec::DEFAULT_PING_TIMEOUT_MS as u64);

/// How long a connection caught mid-handshake by a drain may take to finish it.
const DRAIN_HANDSHAKE_GRACE: Duration = Duration::from_secs(2);

/// How long a closing socket waits for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Close code for input the Socket.IO parser refuses. The client ignores close
/// codes (it reports `transport close`); the code and reason are for raw
/// clients and logs.
const PROTOCOL_ERROR: u16 = 1002;

/// Close code for a client that broke a rule in time rather than in form:
/// no CONNECT in time, no pong, a send queue it does not drain.
const POLICY_VIOLATION: u16 = 1008;

/// Low bits of Engine.IO and socket ids, as the real server's per-process counter.
static ID_COUNTER: AtomicU32 = AtomicU32::new(0);

/// SocketCluster's encoding of a Buffer in JSON, which binary channel data travels as.
const BINARY_MARK: &str = "\"base64\":true";

/// How a session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    /// Send this close code and reason.
    Close(u16, String),
    /// Send a close frame without status code, Socket.IO's normal close (spec 9).
    Plain,
    /// The peer is gone or closed itself; nothing to send.
    Gone,
}

/// Why a request to [`PATH`] is answered with 400 instead of being upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestRefusal {
    /// `transport=polling`, or a plain HTTP request: long-polling is not served.
    #[error("Transport unknown: sockhive serves Socket.IO over the websocket transport only; create the client with io(url, {{ transports: [\"websocket\"] }})")]
    Polling,
    /// No `transport`, or an unknown one.
    #[error("Transport unknown: use transport=websocket; with socket.io-client, io(url, {{ transports: [\"websocket\"] }})")]
    TransportUnknown,
    /// `EIO` other than 4 (a Socket.IO v2 client, or none).
    #[error(
        "Unsupported protocol version: sockhive speaks Engine.IO 4 (socket.io-client 3 and 4)"
    )]
    UnsupportedVersion,
    /// A `sid`: sockhive never issues polling sessions to upgrade from.
    #[error("Session ID unknown")]
    SessionIdUnknown,
}

impl RequestRefusal {
    /// Engine.IO's error code for this refusal (the real server's JSON error body).
    fn code(self) -> u8 {
        match self {
            RequestRefusal::Polling | RequestRefusal::TransportUnknown => 0,
            RequestRefusal::SessionIdUnknown => 1,
            RequestRefusal::UnsupportedVersion => 5,
        }
    }

    /// The 400 the client is sent: the real server's `{"code", "message"}` body.
    /// The npm client only shows the status; curl users and logs see the text.
    pub fn response(self) -> Response {
        Response::json(
            400,
            &json!({"code": self.code(), "message": self.to_string()}),
        )
    }

    /// The `reason` label of `sockhive_rejected_connections_total`.
    pub fn metric_reason(self) -> &'static str {
        "bad_upgrade"
    }
}

/// Checks the Engine.IO query of an upgrade request before any WebSocket check,
/// so a polling client learns why instead of seeing a generic upgrade error.
pub fn check_request(head: &RequestHead) -> Result<(), RequestRefusal> {
    match head.query_param("transport").as_deref() {
        Some("websocket") => {}
        Some("polling") => return Err(RequestRefusal::Polling),
        _ => return Err(RequestRefusal::TransportUnknown),
    }
    if !head.header_has_token("upgrade", "websocket") {
        return Err(RequestRefusal::Polling);
    }
    if head.query_param("EIO").as_deref() != Some(codec::ENGINE_IO_VERSION) {
        return Err(RequestRefusal::UnsupportedVersion);
    }
    if head.query_param("sid").is_some() {
        return Err(RequestRefusal::SessionIdUnknown);
    }
    Ok(())
}

/// A verified JWT on this socket.
struct Authenticated {
    claims: Map<String, Value>,
    /// When the login stops being valid, for tokens whose `exp` bounds it.
    expires_at: Option<Instant>,
}

struct Session {
    ctx: Arc<WorkerContext>,
    /// The Socket.IO socket id: what the client shows as `socket.id` and records as `id`.
    id: Arc<str>,
    ws: Ws,
    outbox: Outbox,
    /// Connected to `/` and in the registry.
    registered: bool,
    auth: Option<Authenticated>,
    channels: BTreeSet<String>,
    /// The upgrade's credential, resolved at CONNECT.
    upgrade_credential: Option<PendingCredential>,
    /// The web session this socket logged in with, watched for logout.
    session_login: Option<SessionLogin>,
    /// Holds a binary packet until its attachments are in.
    assembler: BinaryAssembler,
    /// The client asked for attachments as `b<base64>` text frames (`b64=1`).
    base64_attachments: bool,
    /// When the next ping is due (only while no pong is awaited).
    next_ping: Instant,
    /// When an unanswered ping times out.
    pong_deadline: Option<Instant>,
}

/// Serves one upgraded Socket.IO connection to its end.
pub async fn serve(
    ctx: Arc<WorkerContext>,
    ws: Ws,
    upgraded: Upgraded,
    credential: PendingCredential,
) {
    let (outbox, inbox) = outbox(ctx.config.limits.max_send_queue as usize);
    let max_payload = ctx.config.limits.max_payload as usize;
    let mut session = Session {
        ctx: ctx.clone(),
        id: new_id().into(),
        ws,
        outbox,
        registered: false,
        auth: None,
        channels: BTreeSet::new(),
        upgrade_credential: Some(credential),
        session_login: None,
        assembler: BinaryAssembler::new(
            max_payload.saturating_mul(codec::DEFAULT_MAX_ATTACHMENTS + 1),
        ),
        base64_attachments: upgraded.head.query_param("b64").as_deref() == Some("1"),
        next_ping: Instant::now() + PING_INTERVAL,
        pong_deadline: None,
    };
    ctx.metrics.connections.with_label_values(&[PROTOCOL]).inc();
    let ending = session.run(inbox, &upgraded).await;
    // Boxed like the other rare states: the close handshake should not
    // enlarge every idle socket.
    Box::pin(session.finish(ending)).await;
    ctx.metrics.connections.with_label_values(&[PROTOCOL]).dec();
}

fn new_id() -> String {
    codec::session_id(rand::random(), ID_COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn going_away() -> Ending {
    Ending::Close(close_code::GOING_AWAY, "server shutting down".into())
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// At most `max` bytes of `text`, cut at a character boundary (close reasons are capped at 123).
fn truncated(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// The ack outcome of a channel event: `{"ok":true}` or `{"error":{name,message}}`.
type AckResult = Result<(), (&'static str, String)>;

impl Session {
    async fn run(&mut self, mut inbox: Inbox, upgraded: &Upgraded) -> Ending {
        let limits = self.ctx.config.limits.clone();
        let engine_sid = new_id();
        let open = codec::encode_open(&OpenHandshake {
            sid: &engine_sid,
            ping_interval_ms: codec::DEFAULT_PING_INTERVAL_MS,
            ping_timeout_ms: codec::DEFAULT_PING_TIMEOUT_MS,
            max_payload_bytes: limits.max_payload,
        });
        if let Err(ending) = self.send_str(open).await {
            return ending;
        }
        // The real server's first ping is due one interval after the open packet.
        self.next_ping = Instant::now() + PING_INTERVAL;
        let handshake_deadline = sleep_until(Instant::now() + limits.handshake_timeout);
        tokio::pin!(handshake_deadline);
        let overflow = inbox.overflow.clone();
        let shutdown = self.ctx.shutdown.clone();
        let mut drain_grace = false;
        loop {
            let auth_deadline = self
                .auth
                .as_ref()
                .and_then(|a| a.expires_at)
                .unwrap_or_else(far_future);
            let pong_deadline = self.pong_deadline;
            tokio::select! {
                biased;
                _ = overflow.cancelled() => {
                    self.ctx.metrics.slow_consumers.inc();
                    return Ending::Close(POLICY_VIOLATION, "send queue overflow: the client is not reading".into());
                }
                _ = shutdown.cancelled(), if self.registered => return going_away(),
                // A connection accepted just before the drain still completes
                // its CONNECT (briefly), as on SocketCluster; then 1001 like all.
                _ = shutdown.cancelled(), if !self.registered && !drain_grace => {
                    drain_grace = true;
                    let grace = Instant::now() + DRAIN_HANDSHAKE_GRACE;
                    if grace < handshake_deadline.deadline() {
                        handshake_deadline.as_mut().reset(grace);
                    }
                }
                _ = &mut handshake_deadline, if !self.registered => {
                    if drain_grace {
                        return going_away();
                    }
                    self.ctx.metrics.protocol_error(PROTOCOL, "handshake_timeout");
                    let reason = format!("handshake timeout: no CONNECT within {:?}", limits.handshake_timeout);
                    return Ending::Close(POLICY_VIOLATION, reason);
                }
                _ = sleep_until(auth_deadline), if self.auth.as_ref().is_some_and(|a| a.expires_at.is_some()) => {
                    if let Some(ending) = self.deauthenticate("AuthTokenExpiredError", "jwt expired").await {
                        return ending;
                    }
                }
                _ = sleep_until(pong_deadline.unwrap_or_else(far_future)), if pong_deadline.is_some() => {
                    self.ctx.metrics.protocol_error(PROTOCOL, "ping_timeout");
                    return Ending::Close(POLICY_VIOLATION, codec::disconnect_reason::PING_TIMEOUT.into());
                }
                _ = sleep_until(self.next_ping), if pong_deadline.is_none() => {
                    if let Err(ending) = self.send(Utf8Bytes::from_static(codec::PING_FRAME)).await {
                        return ending;
                    }
                    self.pong_deadline = Some(Instant::now() + PING_TIMEOUT);
                }
                item = inbox.recv() => {
                    let Some(item) = item else { return Ending::Gone };
                    if let Some(ending) = self.on_outbound(item).await {
                        return ending;
                    }
                }
                frame = self.ws.next() => {
                    let ending = match frame {
                        None => return Ending::Gone,
                        Some(Ok(Message::Text(text))) => {
                            self.ctx.metrics.messages.with_label_values(&["in"]).inc();
                                                        // Boxed, as in the SocketCluster session: an idle
                            // socket should not carry the handling state.
                            Box::pin(self.on_text(&text, upgraded)).await
                        }
                        Some(Ok(Message::Binary(bytes))) => {
                            self.ctx.metrics.messages.with_label_values(&["in"]).inc();
                                                        Box::pin(self.on_attachment(bytes.to_vec())).await
                        }
                        Some(Ok(_)) => None,
                        Some(Err(e)) => return self.on_read_error(e),
                    };
                    if let Some(ending) = ending {
                        return ending;
                    }
                }
            }
        }
    }

    fn on_read_error(&self, error: WsError) -> Ending {
        match error {
            WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                self.ctx.metrics.protocol_error(PROTOCOL, "too_big");
                Ending::Close(
                    close_code::MESSAGE_TOO_BIG,
                    format!("message of {size} bytes exceeds maxPayload {max_size}"),
                )
            }
            WsError::Capacity(_) => {
                self.ctx.metrics.protocol_error(PROTOCOL, "too_big");
                Ending::Close(close_code::MESSAGE_TOO_BIG, String::new())
            }
            WsError::Utf8(_) => {
                self.ctx.metrics.protocol_error(PROTOCOL, "bad_utf8");
                Ending::Close(close_code::INVALID_PAYLOAD, String::new())
            }
            WsError::Protocol(e) => {
                self.ctx.metrics.protocol_error(PROTOCOL, "bad_frame");
                Ending::Close(PROTOCOL_ERROR, truncated(&e.to_string(), 100))
            }
            _ => Ending::Gone,
        }
    }

    /// Counts a refused input and ends the connection, as the real server does
    /// for anything its parser refuses (spec 5), with the reason in the close frame.
    fn violation(&self, reason: &'static str, what: &str) -> Ending {
        self.ctx.metrics.protocol_error(PROTOCOL, reason);
        tracing::debug!(socket = %self.id, reason, "closing a Socket.IO connection: {what}");
        Ending::Close(
            PROTOCOL_ERROR,
            truncated(&format!("parse error: {what}"), 120),
        )
    }

    async fn send(&mut self, text: Utf8Bytes) -> Result<(), Ending> {
        self.ctx.metrics.messages.with_label_values(&["out"]).inc();
        self.ws
            .send(Message::Text(text))
            .await
            .map_err(|_| Ending::Gone)
    }

    async fn send_str(&mut self, text: String) -> Result<(), Ending> {
        self.send(Utf8Bytes::from(text)).await
    }

    /// One attachment, as the client asked for them: a binary frame, or `b<base64>` text.
    async fn send_attachment(&mut self, bytes: Vec<u8>) -> Result<(), Ending> {
        if self.base64_attachments {
            return self.send_str(codec::encode_base64_message(&bytes)).await;
        }
        self.ctx.metrics.messages.with_label_values(&["out"]).inc();
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .map_err(|_| Ending::Gone)
    }

    async fn on_outbound(&mut self, item: Outbound) -> Option<Ending> {
        let sent = match item {
            Outbound::Frame(frame) if frame.as_str().starts_with(BINARY_DELIVERY_PREFIX) => {
                self.send_binary_delivery(&frame).await
            }
            Outbound::Frame(frame) => self.send(frame).await,
            Outbound::Event { event, data } => {
                self.send_str(codec::encode_event_json(
                    MAIN_NAMESPACE,
                    &event,
                    &[data.get()],
                    None,
                ))
                .await
            }
            // Admin kick (and a logout under --require-auth): DISCONNECT, so
            // the client reports `io server disconnect` and does not retry.
            Outbound::Close(code, reason) => {
                if let Err(ending) = self
                    .send(Utf8Bytes::from_static(codec::DISCONNECT_FRAME))
                    .await
                {
                    return Some(ending);
                }
                return Some(Ending::Close(code, truncated(&reason, 120)));
            }
            Outbound::Deauthenticate => {
                return self
                    .deauthenticate("SessionNotFoundError", "the web session logged out")
                    .await
            }
        };
        sent.err()
    }

    /// Sends a delivery built by [`encode_channel_delivery`] with attachments:
    /// the header frame, then each attachment.
    async fn send_binary_delivery(&mut self, frame: &str) -> Result<(), Ending> {
        let mut parts = frame.split('\n');
        let header = parts.next().unwrap_or_default().to_string();
        let mut attachments = Vec::new();
        for part in parts {
            match base64::engine::general_purpose::STANDARD.decode(part) {
                Ok(bytes) => attachments.push(bytes),
                Err(e) => {
                    // Built by this module from bytes it decoded itself; never expected.
                    tracing::error!(socket = %self.id, error = %e, "dropping a malformed binary delivery");
                    return Ok(());
                }
            }
        }
        self.send_str(header).await?;
        for bytes in attachments {
            self.send_attachment(bytes).await?;
        }
        Ok(())
    }

    async fn on_text(&mut self, text: &str, upgraded: &Upgraded) -> Option<Ending> {
        let packet = match codec::decode_engine_frame(text) {
            Ok(packet) => packet,
            Err(e) => return Some(self.violation(e.metric_reason(), &e.to_string())),
        };
        match packet {
            EnginePacket::Pong(_) => {
                // The next ping is one interval after the pong, not free-running.
                self.pong_deadline = None;
                self.next_ping = Instant::now() + PING_INTERVAL;
                None
            }
            EnginePacket::Ping(_) => {
                Some(self.violation("bad_packet", "invalid heartbeat direction"))
            }
            EnginePacket::Open(_) => {
                Some(self.violation("bad_packet", "open packet from a client"))
            }
            // Meaningless on a websocket-only connection; the real server ignores them too.
            EnginePacket::Close | EnginePacket::Upgrade | EnginePacket::Noop => None,
            EnginePacket::BinaryMessage(bytes) => self.on_attachment(bytes).await,
            EnginePacket::Message(text) => {
                let packet = match codec::decode_packet(text, &DecodeLimits::default()) {
                    Ok(packet) => packet,
                    Err(e) => return Some(self.violation(e.metric_reason(), &e.to_string())),
                };
                let packet = match self.assembler.accept_packet(packet) {
                    Ok(Some(packet)) => packet,
                    Ok(None) => return None,
                    Err(e) => return Some(self.violation(e.metric_reason(), &e.to_string())),
                };
                self.on_packet(packet.namespace, packet.kind, upgraded)
                    .await
            }
        }
    }

    async fn on_attachment(&mut self, bytes: Vec<u8>) -> Option<Ending> {
        match self.assembler.accept_attachment(bytes) {
            Ok(None) => None,
            Ok(Some(packet)) => self.on_binary(packet).await,
            Err(e) => Some(self.violation(e.metric_reason(), &e.to_string())),
        }
    }

    async fn on_packet(
        &mut self,
        namespace: &str,
        kind: PacketKind<'_>,
        upgraded: &Upgraded,
    ) -> Option<Ending> {
        if let PacketKind::Connect { auth } = kind {
            if namespace != MAIN_NAMESPACE {
                // As the real server: refused, the connection stays (the
                // client closes it when no namespace of it is left).
                self.ctx.metrics.protocol_error(PROTOCOL, "bad_namespace");
                let refusal =
                    codec::encode_connect_error(namespace, codec::INVALID_NAMESPACE_MESSAGE, None);
                return self.send_str(refusal).await.err();
            }
            if self.registered {
                return Some(self.violation("bad_packet", "second CONNECT to a joined namespace"));
            }
            return self.on_connect(auth, upgraded).await;
        }
        if namespace != MAIN_NAMESPACE || !self.registered {
            return Some(self.violation("bad_packet", "packet for a namespace not joined"));
        }
        let result = match kind {
            // The client left; it closes the WebSocket itself.
            PacketKind::Disconnect => return Some(Ending::Plain),
            PacketKind::Event(event) => {
                self.on_event(&event.name, &event.args, event.ack_id, None)
                    .await
            }
            // sockhive never emits with an ack id; unknown ids are ignored (spec 7).
            PacketKind::Ack(_) => Ok(()),
            PacketKind::ConnectError { .. } => {
                return Some(self.violation("bad_packet", "CONNECT_ERROR from a client"))
            }
            // The assembler keeps binary headers; nothing reaches here.
            PacketKind::Binary(_) | PacketKind::Connect { .. } => Ok(()),
        };
        result.err()
    }

    async fn on_binary(&mut self, packet: BinaryPacket) -> Option<Ending> {
        if packet.namespace != MAIN_NAMESPACE || !self.registered {
            return Some(self.violation("bad_packet", "packet for a namespace not joined"));
        }
        let BinaryKind::Event { name, ack_id } = &packet.kind else {
            return None;
        };
        let args = match packet.args() {
            Ok(args) => args,
            Err(e) => return Some(self.violation(e.metric_reason(), &e.to_string())),
        };
        self.on_event(name, &args, *ack_id, Some(&packet.attachments))
            .await
            .err()
    }

    /// A client event: a channel request, or an app event nobody handles.
    async fn on_event(
        &mut self,
        name: &str,
        args: &[&str],
        ack_id: Option<u64>,
        attachments: Option<&[Vec<u8>]>,
    ) -> Result<(), Ending> {
        let outcome = match ChannelRequest::from_event(name, args) {
            // sockhive runs no application handlers (the app reaches its
            // sockets through channels and the admin API): answer at once so
            // `emitWithAck` resolves instead of waiting forever.
            None => match ack_id {
                Some(_) => Err((
                    "UnknownProcedureError",
                    format!("No handler for event \"{name}\""),
                )),
                None => return Ok(()),
            },
            Some(Err(e)) => {
                self.ctx.metrics.protocol_error(PROTOCOL, e.metric_reason());
                Err((codec::INVALID_ACTION_ERROR, e.message()))
            }
            Some(Ok(ChannelRequest::Subscribe { channel })) => self.on_subscribe(channel).await,
            Some(Ok(ChannelRequest::Unsubscribe { channel })) => self.on_unsubscribe(channel),
            Some(Ok(ChannelRequest::Publish { channel, data_json })) => {
                let data = match attachments {
                    Some(attachments) => inline_attachments(data_json, attachments),
                    None => data_json.unwrap_or("null").to_string(),
                };
                self.on_publish(channel, data).await
            }
        };
        let Some(ack_id) = ack_id else {
            return Ok(());
        };
        let ack = match outcome {
            Ok(()) => codec::encode_channel_ack_ok(MAIN_NAMESPACE, ack_id),
            Err((error_name, message)) => {
                codec::encode_channel_ack_error(MAIN_NAMESPACE, ack_id, error_name, &message)
            }
        };
        self.send_str(ack).await
    }

    async fn on_connect(
        &mut self,
        auth: Option<Map<String, Value>>,
        upgraded: &Upgraded,
    ) -> Option<Ending> {
        let ctx = self.ctx.clone();
        // The upgrade's credential (access token, cookie) decides when
        // present; otherwise the CONNECT packet's `auth.token`.
        let credential = match self.upgrade_credential.take() {
            Some(pending) => pending.resolve().await,
            None => Credential::Absent,
        };
        let credential = match (credential, auth.as_ref().and_then(|a| a.get("token"))) {
            (Credential::Absent, Some(Value::String(token))) => {
                credentials::from_token(&ctx, token, Method::Token).await
            }
            (Credential::Absent, Some(Value::Null) | None) => Credential::Absent,
            (Credential::Absent, Some(_)) => Credential::Refused(malformed_token()),
            (credential, _) => credential,
        };
        let (method, refusal) = match credential {
            Credential::Absent => ("none", None),
            Credential::Accepted(identity) => {
                let method = identity.method.label();
                self.accept(*identity);
                (method, None)
            }
            Credential::Refused(refusal) => (refusal.method.label(), Some(refusal)),
        };
        let require_auth = ctx.config.auth.require_auth;
        let refusal = match refusal {
            Some(refusal) => Some((refusal.name, refusal.message.clone(), refusal.to_wire())),
            None if require_auth && self.auth.is_none() => {
                let message = "a valid credential is required".to_string();
                let wire = json!({"message": message, "name": "AuthTokenError"});
                Some(("AuthTokenError", message, wire))
            }
            None => None,
        };
        // Socket.IO has no "connected but refused": a bad credential is a
        // CONNECT_ERROR, which the client surfaces and does not retry.
        if let Some((name, message, wire)) = refusal {
            let text = codec::auth_refusal_message(name, &message);
            let outcome = if require_auth { "rejected" } else { "failed" };
            ctx.metrics
                .handshakes
                .with_label_values(&[outcome, method])
                .inc();
            if let Err(ending) = self
                .send_str(codec::encode_connect_error(
                    MAIN_NAMESPACE,
                    &text,
                    Some(&wire.to_string()),
                ))
                .await
            {
                return Some(ending);
            }
            if require_auth {
                ctx.metrics.reject("auth");
                return Some(Ending::Close(POLICY_VIOLATION, truncated(&text, 120)));
            }
            return None;
        }
        let outcome = if self.auth.is_some() {
            "ok"
        } else {
            "anonymous"
        };
        ctx.metrics
            .handshakes
            .with_label_values(&[outcome, method])
            .inc();
        self.register(upgraded);
        ctx.metrics
            .handshake_duration
            .with_label_values(&[PROTOCOL])
            .observe(upgraded.started.elapsed().as_secs_f64());
        self.send_str(codec::encode_connect_ok(MAIN_NAMESPACE, &self.id))
            .await
            .err()
    }

    /// Takes on a verified identity: claims and, for a session login, the logout watch.
    fn accept(&mut self, identity: Identity) {
        if let (Some(login), Some(sessions)) = (&identity.session, self.ctx.sessions.as_ref()) {
            sessions.watcher.watch(&login.sid, &login.passport_user);
        }
        self.unwatch_session();
        // A token the client presented is its login's lifetime, as on
        // SocketCluster. A session login lasts as long as the session (the
        // watch ends it), and an `access_token` is a ticket checked at connect
        // (Azure Web PubSub's negotiate semantics), so the socket is not
        // dropped when a five-minute negotiate token runs out.
        let expires_at = match identity.method {
            Method::Token => identity
                .claims
                .get("exp")
                .and_then(Value::as_f64)
                .map(|exp| {
                    let left = Duration::from_secs_f64((exp - now_unix() as f64).clamp(0.0, 1e10));
                    Instant::now() + left + self.ctx.config.auth.jwt_leeway
                }),
            Method::AccessToken | Method::Session => None,
        };
        self.session_login = identity.session;
        self.auth = Some(Authenticated {
            claims: identity.claims,
            expires_at,
        });
    }

    fn unwatch_session(&mut self) {
        if let (Some(login), Some(sessions)) =
            (self.session_login.take(), self.ctx.sessions.as_ref())
        {
            sessions.watcher.unwatch(&login.sid, &login.passport_user);
        }
    }

    /// The socket lost its login: it hears `deauthenticated`, and under
    /// `--require-auth` it is disconnected (DISCONNECT, so the client does not retry).
    async fn deauthenticate(&mut self, error_name: &str, message: &str) -> Option<Ending> {
        self.unwatch_session();
        self.auth = None;
        self.update_entry_auth();
        let event = codec::encode_deauthenticated(MAIN_NAMESPACE, error_name, message);
        if let Err(ending) = self.send_str(event).await {
            return Some(ending);
        }
        if !self.ctx.config.auth.require_auth {
            return None;
        }
        if let Err(ending) = self
            .send(Utf8Bytes::from_static(codec::DISCONNECT_FRAME))
            .await
        {
            return Some(ending);
        }
        Some(Ending::Close(
            POLICY_VIOLATION,
            codec::auth_refusal_message(error_name, message),
        ))
    }

    fn register(&mut self, upgraded: &Upgraded) {
        let web_session = self.session_login.as_ref().map(|l| l.sid.clone());
        let entry = SocketEntry::new(
            PROTOCOL,
            upgraded.peer,
            self.outbox.clone(),
            self.claims(),
            web_session,
        );
        self.ctx.sockets.insert(self.id.clone(), entry);
        self.registered = true;
    }

    fn update_entry_auth(&self) {
        let web_session = self.session_login.as_ref().map(|l| l.sid.clone());
        self.ctx
            .sockets
            .set_login(&self.id, self.claims(), web_session);
    }

    fn claims(&self) -> Option<&Map<String, Value>> {
        self.auth.as_ref().map(|a| &a.claims)
    }

    async fn on_subscribe(&mut self, channel: String) -> AckResult {
        if self.channels.contains(&channel) {
            return Ok(());
        }
        if !channel_allowed(&self.ctx.config.channels, self.claims(), &channel) {
            return Err(channel_forbidden(&channel));
        }
        let max = self.ctx.config.limits.max_subscriptions;
        if self.channels.len() >= max as usize {
            self.ctx
                .metrics
                .protocol_error(PROTOCOL, "max_subscriptions");
            return Err((
                "BrokerError",
                format!(
                    "Socket {} reached the limit of {max} subscriptions",
                    self.id
                ),
            ));
        }
        self.ctx
            .channels
            .subscribe(
                &channel,
                self.id.clone(),
                self.outbox.clone(),
                Wire::SocketIo,
            )
            .await
            .map_err(|e| ("BrokerError", e.to_string()))?;
        self.ctx
            .sockets
            .update(&self.id, |entry| entry.channels.insert(channel.clone()));
        self.channels.insert(channel);
        Ok(())
    }

    fn on_unsubscribe(&mut self, channel: String) -> AckResult {
        if !self.channels.remove(&channel) {
            return Err((
                "BrokerError",
                format!(
                    "Failed to unsubscribe socket from the {channel} channel - InvalidActionError: \
                     Socket {} tried to unsubscribe from a channel which it is not subscribed to",
                    self.id
                ),
            ));
        }
        self.ctx.channels.unsubscribe(&channel, &self.id);
        self.ctx
            .sockets
            .update(&self.id, |entry| entry.channels.remove(&channel));
        Ok(())
    }

    async fn on_publish(&mut self, channel: String, data: String) -> AckResult {
        if !channel_allowed(&self.ctx.config.channels, self.claims(), &channel) {
            return Err(channel_forbidden(&channel));
        }
        // The decoder validated the JSON; a failure here would be a bug, not input.
        let raw = RawValue::from_string(data).map_err(|e| ("BrokerError", e.to_string()))?;
        let started = std::time::Instant::now();
        let published = self.ctx.channels.publish(&channel, raw).await;
        self.ctx
            .metrics
            .broker_roundtrip
            .observe(started.elapsed().as_secs_f64());
        published.map_err(|e| ("BrokerError", e.to_string()))
    }

    /// Leaves every channel, forgets the socket and sends the close frame.
    async fn finish(&mut self, ending: Ending) {
        self.unwatch_session();
        for channel in std::mem::take(&mut self.channels) {
            self.ctx.channels.unsubscribe(&channel, &self.id);
        }
        if self.registered {
            self.ctx.sockets.remove(&self.id);
        }
        let (frame, raw) = match ending {
            Ending::Gone => return,
            Ending::Plain => (None, None),
            Ending::Close(code, reason) => (
                Some(CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.clone().into(),
                }),
                Some((code, reason)),
            ),
        };
        if self.ws.close(frame).await.is_err() {
            // tungstenite refuses to write after a read error (e.g. an
            // oversized frame); send the close frame ourselves so the client
            // learns the code instead of seeing the TCP connection drop.
            let _ = write_raw_close(self.ws.get_mut(), raw).await;
            return;
        }
        let grace = tokio::time::sleep(CLOSE_GRACE);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                _ = &mut grace => return,
                next = self.ws.next() => if next.is_none() || matches!(next, Some(Err(_))) { return },
            }
        }
    }
}

/// An unmasked close frame written straight to the transport (`None`: without status code).
async fn write_raw_close<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    close: Option<(u16, String)>,
) -> std::io::Result<()> {
    let mut frame = vec![0x88, 0];
    if let Some((code, reason)) = close {
        let reason = truncated(&reason, 123);
        frame[1] = (2 + reason.len()) as u8;
        frame.extend_from_slice(&code.to_be_bytes());
        frame.extend_from_slice(reason.as_bytes());
    }
    stream.write_all(&frame).await?;
    stream.flush().await?;
    stream.shutdown().await
}

fn channel_forbidden(channel: &str) -> (&'static str, String) {
    (
        "ChannelForbiddenError",
        format!("Access to the \"{channel}\" channel is forbidden"),
    )
}

/// An `auth.token` that is not a string cannot be a JWT.
fn malformed_token() -> Refusal {
    let mut fields = Map::new();
    fields.insert("isBadToken".into(), Value::Bool(true));
    Refusal {
        method: Method::Token,
        name: "AuthTokenInvalidError",
        message: "auth.token must be a string (a JWT)".into(),
        reason: "invalid",
        fields: Box::new(fields),
        bad_token: true,
    }
}

/// The start of a delivery frame that carries attachments (see [`encode_channel_delivery`]);
/// plain deliveries start with `42`.
const BINARY_DELIVERY_PREFIX: &str = "45";

/// A binary `publish`'s data with each attachment placeholder replaced by
/// SocketCluster's Buffer encoding `{"base64": true, "data": ...}`, so the
/// message can travel the broker as JSON and every protocol can read it.
fn inline_attachments(data_json: Option<&str>, attachments: &[Vec<u8>]) -> String {
    let Some(data_json) = data_json else {
        return "null".into();
    };
    let Ok(mut data) = serde_json::from_str::<Value>(data_json) else {
        return data_json.to_string();
    };
    replace_placeholders(&mut data, attachments);
    data.to_string()
}

fn replace_placeholders(value: &mut Value, attachments: &[Vec<u8>]) {
    match value {
        Value::Object(fields) if fields.get("_placeholder") == Some(&Value::Bool(true)) => {
            let bytes = fields
                .get("num")
                .and_then(Value::as_u64)
                .and_then(|num| attachments.get(num as usize));
            // The decoder checked every placeholder against the attachment count.
            if let Some(bytes) = bytes {
                let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
                *value = json!({"base64": true, "data": encoded});
            }
        }
        Value::Object(fields) => fields
            .values_mut()
            .for_each(|field| replace_placeholders(field, attachments)),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| replace_placeholders(item, attachments)),
        _ => {}
    }
}

/// The frame a channel message is delivered to Socket.IO subscribers as;
/// built once per message and shared by every subscriber of a worker.
///
/// Hot path: plain data costs one substring scan more than the codec's
/// `encode_publish_delivery`. Data holding SocketCluster-encoded Buffers
/// (`{"base64": true, "data": "..."}`, at most the client's 10 attachments)
/// becomes a BINARY_EVENT: the header frame, then each attachment's base64 on
/// its own line, which the session splits into the frames it sends.
pub fn encode_channel_delivery(channel: &str, data_json: &str) -> String {
    if data_json.contains(BINARY_MARK) {
        if let Some(frame) = binary_delivery(channel, data_json) {
            return frame;
        }
    }
    codec::encode_publish_delivery(MAIN_NAMESPACE, channel, Some(data_json))
}

fn binary_delivery(channel: &str, data_json: &str) -> Option<String> {
    let mut data: Value = serde_json::from_str(data_json).ok()?;
    let mut attachments = Vec::new();
    extract_buffers(&mut data, &mut attachments);
    if attachments.is_empty() || attachments.len() > codec::DEFAULT_MAX_ATTACHMENTS {
        return None;
    }
    let delivery = codec::publish_delivery_json(channel, Some(&data.to_string()));
    let mut frame = codec::encode_binary_event_json(
        MAIN_NAMESPACE,
        event_name::PUBLISH,
        &[&delivery],
        attachments.len(),
        None,
    );
    for bytes in attachments {
        frame.push('\n');
        frame.push_str(&base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    Some(frame)
}

/// Replaces every `{"base64": true, "data": "<base64>"}` (exactly those keys)
/// with a placeholder, collecting the bytes in placeholder order.
fn extract_buffers(value: &mut Value, attachments: &mut Vec<Vec<u8>>) {
    match value {
        Value::Object(fields) => {
            let buffer = (fields.len() == 2 && fields.get("base64") == Some(&Value::Bool(true)))
                .then(|| fields.get("data").and_then(Value::as_str))
                .flatten()
                .and_then(|data| base64::engine::general_purpose::STANDARD.decode(data).ok());
            match buffer {
                Some(bytes) => {
                    *value = json!({"_placeholder": true, "num": attachments.len()});
                    attachments.push(bytes);
                }
                None => fields
                    .values_mut()
                    .for_each(|field| extract_buffers(field, attachments)),
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| extract_buffers(item, attachments)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(query: &str, upgrade: bool) -> RequestHead {
        let mut headers = vec![("Host".to_string(), "127.0.0.1".to_string())];
        if upgrade {
            headers.push(("Upgrade".into(), "websocket".into()));
        }
        RequestHead {
            method: "GET".into(),
            path: PATH.into(),
            query: Some(query.into()),
            headers,
        }
    }

    #[test]
    fn only_engine_io_4_over_websocket_is_upgraded() {
        assert_eq!(
            check_request(&head("EIO=4&transport=websocket", true)),
            Ok(())
        );
        assert_eq!(
            check_request(&head("room=a&EIO=4&transport=websocket&b64=1", true)),
            Ok(())
        );
        assert_eq!(
            check_request(&head("EIO=4&transport=polling", false)),
            Err(RequestRefusal::Polling)
        );
        assert_eq!(
            check_request(&head("EIO=4&transport=websocket", false)),
            Err(RequestRefusal::Polling)
        );
        assert_eq!(
            check_request(&head("EIO=4", true)),
            Err(RequestRefusal::TransportUnknown)
        );
        assert_eq!(
            check_request(&head("EIO=3&transport=websocket", true)),
            Err(RequestRefusal::UnsupportedVersion)
        );
        assert_eq!(
            check_request(&head("EIO=4&transport=websocket&sid=abc", true)),
            Err(RequestRefusal::SessionIdUnknown)
        );
        let body = String::from_utf8(RequestRefusal::Polling.response().body).unwrap();
        assert!(body.contains("transports: [\\\"websocket\\\"]"), "{body}");
        assert_eq!(RequestRefusal::Polling.response().status, 400);
    }

    #[test]
    fn a_binary_publish_becomes_socketcluster_buffers_and_back() {
        let attachments = vec![vec![1, 2, 3], vec![0xff]];
        let data = inline_attachments(
            Some(
                r#"{"a":{"_placeholder":true,"num":1},"list":[{"_placeholder":true,"num":0}],"n":1}"#,
            ),
            &attachments,
        );
        assert_eq!(
            data,
            r#"{"a":{"base64":true,"data":"/w=="},"list":[{"base64":true,"data":"AQID"}],"n":1}"#
        );
        let frame = encode_channel_delivery("room", &data);
        let mut parts = frame.split('\n');
        assert_eq!(
            parts.next(),
            Some(
                r#"452-["publish",{"channel":"room","data":{"a":{"_placeholder":true,"num":0},"list":[{"_placeholder":true,"num":1}],"n":1}}]"#
            )
        );
        assert_eq!(parts.collect::<Vec<_>>(), ["/w==", "AQID"]);
    }

    #[test]
    fn plain_data_and_lookalikes_stay_text_deliveries() {
        assert_eq!(
            encode_channel_delivery("room", r#"{"n":1}"#),
            r#"42["publish",{"channel":"room","data":{"n":1}}]"#
        );
        // Not base64, or more keys than a Buffer has: left as they are.
        for data in [
            r#"{"base64":true,"data":"not base64!"}"#,
            r#"{"base64":true,"data":"AQID","extra":1}"#,
        ] {
            let frame = encode_channel_delivery("c", data);
            assert!(frame.starts_with("42[") && !frame.contains('\n'), "{frame}");
        }
        // Beyond the client's 10 attachments: stays JSON.
        let many =
            serde_json::to_string(&vec![json!({"base64": true, "data": "AA=="}); 11]).unwrap();
        assert!(encode_channel_delivery("c", &many).starts_with("42["));
    }

    #[test]
    fn close_reasons_are_cut_at_character_boundaries() {
        assert_eq!(truncated("héllo", 2), "h");
        assert_eq!(truncated("abc", 10), "abc");
    }
}
