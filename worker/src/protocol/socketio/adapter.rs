//! Socket.IO behind the socket core's [`Protocol`] trait: only translation
//! lives here; the lifecycle is the core's.
//!
//! sockhive serves the main namespace `/` only. An event is one of the
//! channel events of interface.md (`subscribe`, `unsubscribe`, `publish`),
//! or an application call (with an ack) or message (without).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine as _;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sockhive_shared::config::Limits;
use sockhive_shared::http::RequestHead;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::binary::{encode_channel_delivery, inline_attachments, BINARY_DELIVERY_PREFIX};
use super::codec::{
    self, close_code, disconnect_reason, BinaryAssembler, BinaryKind, BinaryPacket, ChannelRequest,
    DecodeLimits, EnginePacket, OpenHandshake, PacketKind, MAIN_NAMESPACE,
};
use crate::auth::{Claims, Refusal};
use crate::hub::channels::DeliveryEncoder;
use crate::hub::registry::login_view;
use crate::socket::ending::{GOING_AWAY_TEXT, NOT_READING_TEXT};
use crate::socket::heartbeat::{HeartbeatPolicy, HeartbeatStyle};
use crate::socket::writer::Out;
use crate::socket::{
    AppEvent, CloseReason, HandshakeLogin, HandshakeToken, Protocol, ReplyError, ReplyTo,
    SocketEvent,
};

/// Close code for input the Socket.IO parser refuses. The client ignores close
/// codes (it reports `transport close`); the code and reason are for raw
/// clients and logs.
const PROTOCOL_ERROR: u16 = 1002;

/// Close code for a client that broke a rule in time rather than in form:
/// no CONNECT in time, no pong, a send queue it does not drain, a lost login.
const POLICY_VIOLATION: u16 = 1008;

/// The event that tells a socket who it is logged in as.
const AUTHENTICATED_EVENT: &str = "authenticated";

/// The event a socket hears when a login change costs it a channel.
const KICKOUT_EVENT: &str = "kickout";

/// Low bits of Engine.IO and socket ids, as the real server's per-process counter.
static ID_COUNTER: AtomicU32 = AtomicU32::new(0);

/// `42["publish",{"channel","data"}]` (or a binary event), built once per message.
static DELIVERY: DeliveryEncoder = DeliveryEncoder {
    slot: 1,
    encode: encode_channel_delivery,
};

/// A fresh Engine.IO session id, shaped as the real server's (20 URL-safe
/// base64 characters); a long-polling session is known by it.
pub fn new_engine_sid() -> String {
    new_id()
}

fn new_id() -> String {
    codec::session_id(rand::random(), ID_COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// One Socket.IO socket's protocol state.
#[derive(Debug)]
pub struct SocketIo {
    ping_interval: Duration,
    ping_timeout: Duration,
    max_payload: u64,
    /// Holds a binary packet until its attachments are in.
    assembler: BinaryAssembler,
    /// The client asked for attachments as `b<base64>` text frames (`b64=1`).
    base64_attachments: bool,
    /// The long-polling session's id, when the socket starts on polling
    /// (its open packet names it and offers the upgrade).
    polling_sid: Option<String>,
}

impl SocketIo {
    /// A socket for this upgrade request, with the configured heartbeat and payload limit.
    pub fn new(head: &RequestHead, limits: &Limits) -> SocketIo {
        let max_payload = limits.max_payload as usize;
        SocketIo {
            ping_interval: limits.socketio_ping_interval,
            ping_timeout: limits.socketio_ping_timeout,
            max_payload: limits.max_payload,
            assembler: BinaryAssembler::new(
                max_payload.saturating_mul(codec::DEFAULT_MAX_ATTACHMENTS + 1),
            ),
            base64_attachments: head.query_param("b64").as_deref() == Some("1"),
            polling_sid: None,
        }
    }

    /// A socket that starts on HTTP long-polling under session `sid`.
    pub fn polling(head: &RequestHead, limits: &Limits, sid: &str) -> SocketIo {
        SocketIo {
            polling_sid: Some(sid.to_owned()),
            ..SocketIo::new(head, limits)
        }
    }

    /// Counts a refused input and ends the connection, as the real server does
    /// for anything its parser refuses (spec 5), with the reason in the close frame.
    fn violation(events: &mut Vec<SocketEvent>, reason: &'static str, what: &str) {
        tracing::debug!(reason, "closing a Socket.IO connection: {what}");
        events.push(SocketEvent::Counted(reason));
        events.push(SocketEvent::Close(CloseReason::Protocol(
            PROTOCOL_ERROR,
            format!("parse error: {what}"),
        )));
    }

    fn attachment(
        &mut self,
        bytes: Vec<u8>,
        registered: bool,
        out: &mut Out,
        events: &mut Vec<SocketEvent>,
    ) {
        match self.assembler.accept_attachment(bytes) {
            Ok(None) => {}
            Ok(Some(packet)) => Self::binary_packet(packet, registered, out, events),
            Err(e) => Self::violation(events, e.metric_reason(), &e.to_string()),
        }
    }

    fn binary_packet(
        packet: BinaryPacket,
        registered: bool,
        out: &mut Out,
        events: &mut Vec<SocketEvent>,
    ) {
        if packet.namespace != MAIN_NAMESPACE || !registered {
            return Self::violation(events, "bad_packet", "packet for a namespace not joined");
        }
        let BinaryKind::Event { name, ack_id } = &packet.kind else {
            return;
        };
        match packet.args() {
            Ok(args) => {
                Self::app_event(name, &args, *ack_id, Some(&packet.attachments), out, events)
            }
            Err(e) => Self::violation(events, e.metric_reason(), &e.to_string()),
        }
    }

    /// An application event's arguments for the app: the first as `data`,
    /// all of them as `args` (binary attachments inlined as in a publish).
    fn app_arguments(name: &str, args: &[&str], attachments: Option<&[Vec<u8>]>) -> AppEvent {
        let texts: Vec<String> = args
            .iter()
            .map(|arg| match attachments {
                Some(attachments) => inline_attachments(Some(arg), attachments),
                None => (*arg).to_string(),
            })
            .collect();
        let raw = |text: String| {
            RawValue::from_string(text)
                .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON"))
        };
        AppEvent {
            name: name.to_string(),
            data: raw(texts.first().cloned().unwrap_or_else(|| "null".into())),
            args: Some(raw(format!("[{}]", texts.join(",")))),
        }
    }

    /// A client event: a channel request, or an application call or message.
    fn app_event(
        name: &str,
        args: &[&str],
        ack_id: Option<u64>,
        attachments: Option<&[Vec<u8>]>,
        out: &mut Out,
        events: &mut Vec<SocketEvent>,
    ) {
        let request = match ChannelRequest::from_event(name, args) {
            None => {
                let event = Self::app_arguments(name, args, attachments);
                return events.push(match ack_id {
                    Some(reply) => SocketEvent::Call { event, reply },
                    None => SocketEvent::Message(event),
                });
            }
            Some(Err(e)) => {
                events.push(SocketEvent::Counted(e.metric_reason()));
                if let Some(ack_id) = ack_id {
                    out.text(codec::encode_channel_ack_error(
                        MAIN_NAMESPACE,
                        ack_id,
                        codec::INVALID_ACTION_ERROR,
                        &e.message(),
                    ));
                }
                return;
            }
            Some(Ok(request)) => request,
        };
        events.push(match request {
            ChannelRequest::Subscribe { channel } => SocketEvent::Subscribe {
                channel,
                reply: ack_id,
            },
            ChannelRequest::Unsubscribe { channel } => SocketEvent::Unsubscribe {
                channel,
                reply: ack_id,
            },
            ChannelRequest::Publish { channel, data_json } => {
                let data = match attachments {
                    Some(attachments) => inline_attachments(data_json, attachments),
                    None => data_json.unwrap_or("null").to_string(),
                };
                // The decoder validated the JSON; a failure here would be a bug, not input.
                match RawValue::from_string(data) {
                    Ok(data) => SocketEvent::Publish {
                        channel,
                        data,
                        reply: ack_id,
                    },
                    Err(_) => SocketEvent::Counted("bad_json"),
                }
            }
        });
    }

    fn packet(
        &mut self,
        text: &str,
        registered: bool,
        out: &mut Out,
        events: &mut Vec<SocketEvent>,
    ) {
        let packet = match codec::decode_packet(text, &DecodeLimits::default()) {
            Ok(packet) => packet,
            Err(e) => return Self::violation(events, e.metric_reason(), &e.to_string()),
        };
        let packet = match self.assembler.accept_packet(packet) {
            Ok(Some(packet)) => packet,
            Ok(None) => return,
            Err(e) => return Self::violation(events, e.metric_reason(), &e.to_string()),
        };
        let namespace = packet.namespace;
        if let PacketKind::Connect { auth } = packet.kind {
            if namespace != MAIN_NAMESPACE {
                // As the real server: refused, the connection stays (the
                // client closes it when no namespace of it is left).
                events.push(SocketEvent::Counted("bad_namespace"));
                out.text(codec::encode_connect_error(
                    namespace,
                    codec::INVALID_NAMESPACE_MESSAGE,
                    None,
                ));
                return;
            }
            if registered {
                return Self::violation(
                    events,
                    "bad_packet",
                    "second CONNECT to a joined namespace",
                );
            }
            return events.push(SocketEvent::Handshake {
                token: handshake_token(auth),
                reply: 0,
            });
        }
        if namespace != MAIN_NAMESPACE || !registered {
            return Self::violation(events, "bad_packet", "packet for a namespace not joined");
        }
        match packet.kind {
            // The client left; it closes the WebSocket itself.
            PacketKind::Disconnect => events.push(SocketEvent::Close(CloseReason::ClientLeft)),
            PacketKind::Event(event) => {
                Self::app_event(&event.name, &event.args, event.ack_id, None, out, events)
            }
            PacketKind::ConnectError { .. } => {
                Self::violation(events, "bad_packet", "CONNECT_ERROR from a client")
            }
            // sockhive never emits with an ack id; unknown ids are ignored (spec 7).
            // The assembler keeps binary headers; nothing else reaches here.
            PacketKind::Ack(_) | PacketKind::Binary(_) | PacketKind::Connect { .. } => {}
        }
    }

    /// A delivery built by [`encode_channel_delivery`] with attachments: the
    /// header frame, then each attachment as the client asked for them.
    fn binary_delivery(&self, out: &mut Out, frame: &str) {
        let mut parts = frame.split('\n');
        let header = parts.next().unwrap_or_default().to_string();
        let mut attachments = Vec::new();
        for part in parts {
            match base64::engine::general_purpose::STANDARD.decode(part) {
                Ok(bytes) => attachments.push(bytes),
                Err(e) => {
                    // Built by this module from bytes it decoded itself; never expected.
                    tracing::error!(error = %e, "dropping a malformed binary delivery");
                    return;
                }
            }
        }
        out.text(header);
        for bytes in attachments {
            if self.base64_attachments {
                out.text(codec::encode_base64_message(&bytes));
            } else {
                out.binary(bytes);
            }
        }
    }
}

/// The CONNECT packet's `auth.token`: a string is a JWT to verify; anything else is refused.
fn handshake_token(auth: Option<Map<String, Value>>) -> HandshakeToken {
    match auth.and_then(|mut auth| auth.remove("token")) {
        Some(Value::String(token)) => HandshakeToken::Present(token),
        Some(Value::Null) | None => HandshakeToken::Absent,
        Some(_) => HandshakeToken::Malformed("auth.token must be a string (a JWT)"),
    }
}

impl Protocol for SocketIo {
    const NAME: &'static str = "socketio";
    const DELIVERY: &'static DeliveryEncoder = &DELIVERY;

    fn new_socket_id(&self) -> String {
        new_id()
    }

    fn heartbeat(&self) -> HeartbeatPolicy {
        HeartbeatPolicy {
            style: HeartbeatStyle::PingPong,
            interval: self.ping_interval,
            timeout: self.ping_timeout,
        }
    }

    fn open(&mut self, _socket_id: &str, out: &mut Out) {
        let upgradable = self.polling_sid.is_some();
        let engine_sid = self.polling_sid.take().unwrap_or_else(new_id);
        out.text(codec::encode_open(&OpenHandshake {
            upgradable,
            sid: &engine_sid,
            ping_interval_ms: self.ping_interval.as_millis().min(u32::MAX as u128) as u32,
            ping_timeout_ms: self.ping_timeout.as_millis().min(u32::MAX as u128) as u32,
            max_payload_bytes: self.max_payload,
        }));
    }

    fn starts_heartbeat_at_open(&self) -> bool {
        true
    }

    fn decode(
        &mut self,
        message: Message,
        registered: bool,
        out: &mut Out,
        events: &mut Vec<SocketEvent>,
    ) {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(bytes) => {
                return self.attachment(bytes.to_vec(), registered, out, events)
            }
            _ => return,
        };
        let packet = match codec::decode_engine_frame(&text) {
            Ok(packet) => packet,
            Err(e) => return Self::violation(events, e.metric_reason(), &e.to_string()),
        };
        match packet {
            EnginePacket::Pong(_) => events.push(SocketEvent::Pong),
            EnginePacket::Ping(_) => {
                Self::violation(events, "bad_packet", "invalid heartbeat direction")
            }
            EnginePacket::Open(_) => {
                Self::violation(events, "bad_packet", "open packet from a client")
            }
            // Meaningless on a websocket-only connection; the real server ignores them too.
            EnginePacket::Close | EnginePacket::Upgrade | EnginePacket::Noop => {}
            EnginePacket::BinaryMessage(bytes) => self.attachment(bytes, registered, out, events),
            EnginePacket::Message(text) => self.packet(text, registered, out, events),
        }
    }

    fn accept_handshake(
        &mut self,
        out: &mut Out,
        _reply: ReplyTo,
        login: &HandshakeLogin<'_>,
    ) -> bool {
        // Socket.IO has no "connected but refused": a bad credential is a
        // CONNECT_ERROR, which the client surfaces and does not retry.
        if let Some(refusal) = login.refusal {
            let text = codec::auth_refusal_message(&refusal.name, &refusal.message);
            out.text(codec::encode_connect_error(
                MAIN_NAMESPACE,
                &text,
                Some(&refusal.to_wire().to_string()),
            ));
            return false;
        }
        out.text(codec::encode_connect_ok(MAIN_NAMESPACE, login.socket_id));
        if let (true, Some(token)) = (login.authenticated, login.token) {
            self.token_issued(out, token, login.claims);
        }
        true
    }

    fn reject_handshake(
        &mut self,
        out: &mut Out,
        _reply: ReplyTo,
        refusal: &Refusal,
    ) -> CloseReason {
        let text = codec::auth_refusal_message(&refusal.name, &refusal.message);
        out.text(codec::encode_connect_error(
            MAIN_NAMESPACE,
            &text,
            Some(&refusal.to_wire().to_string()),
        ));
        CloseReason::HandshakeRejected(text)
    }

    fn reply(&mut self, out: &mut Out, reply: ReplyTo, result: Result<(), &ReplyError>) {
        out.text(match result {
            Ok(()) => codec::encode_channel_ack_ok(MAIN_NAMESPACE, reply),
            Err(error) => {
                codec::encode_channel_ack_error(MAIN_NAMESPACE, reply, &error.name, &error.message)
            }
        });
    }

    /// The ack carries the app's result as its one argument; an error as
    /// `{"error": {name, message}}` (Socket.IO acks have no error channel).
    fn call_result(&mut self, out: &mut Out, reply: ReplyTo, result: Result<&Value, &ReplyError>) {
        match result {
            Ok(value) => {
                let body = value.to_string();
                out.text(codec::encode_ack_json(MAIN_NAMESPACE, reply, &[&body]));
            }
            Err(error) => self.reply(out, reply, Err(error)),
        }
    }

    fn authenticate_reply(&mut self, out: &mut Out, reply: ReplyTo, result: Result<(), &Refusal>) {
        let error = result
            .err()
            .map(|r| ReplyError::new(r.name.clone(), r.message.clone()));
        self.reply(out, reply, error.as_ref().map_or(Ok(()), Err));
    }

    /// `authenticated` `{user, token}`: a Socket.IO client learns who it is
    /// logged in as (and the token to reconnect with), after a login and
    /// after each renewal.
    fn token_issued(&mut self, out: &mut Out, token: &str, claims: Option<&Claims>) {
        let user = login_view(claims).1;
        let body = serde_json::json!({"user": user, "token": token}).to_string();
        out.text(codec::encode_event_json(
            MAIN_NAMESPACE,
            AUTHENTICATED_EVENT,
            &[&body],
            None,
        ));
    }

    fn deauthenticated(&mut self, out: &mut Out, name: &str, message: &str) {
        out.text(codec::encode_deauthenticated(MAIN_NAMESPACE, name, message));
    }

    fn kicked_out(&mut self, out: &mut Out, channel: &str, message: &str) {
        let body = serde_json::json!({"channel": channel, "message": message}).to_string();
        out.text(codec::encode_event_json(
            MAIN_NAMESPACE,
            KICKOUT_EVENT,
            &[&body],
            None,
        ));
    }

    fn event(&mut self, out: &mut Out, name: &str, data: &RawValue) {
        out.text(codec::encode_event_json(
            MAIN_NAMESPACE,
            name,
            &[data.get()],
            None,
        ));
    }

    fn delivery(&mut self, out: &mut Out, frame: Utf8Bytes) {
        if frame.as_str().starts_with(BINARY_DELIVERY_PREFIX) {
            self.binary_delivery(out, frame.as_str());
        } else {
            out.text(frame);
        }
    }

    fn ping(&mut self, out: &mut Out) {
        out.text_static(codec::PING_FRAME);
    }

    fn close(&mut self, out: &mut Out, reason: &CloseReason) -> Option<(u16, String)> {
        Some(match reason {
            CloseReason::GoingAway => (close_code::GOING_AWAY, GOING_AWAY_TEXT.into()),
            // DISCONNECT first, so the client reports `io server disconnect`
            // and does not retry.
            CloseReason::Kicked(reason) => {
                out.text_static(codec::DISCONNECT_FRAME);
                (1000, reason.clone())
            }
            CloseReason::App { code, reason } => {
                out.text_static(codec::DISCONNECT_FRAME);
                (*code, reason.clone())
            }
            CloseReason::AuthRequired(reason) => {
                out.text_static(codec::DISCONNECT_FRAME);
                (POLICY_VIOLATION, reason.clone())
            }
            CloseReason::HandshakeRejected(reason) => (POLICY_VIOLATION, reason.clone()),
            CloseReason::HandshakeTimeout => (
                POLICY_VIOLATION,
                "handshake timeout: no CONNECT in time".into(),
            ),
            CloseReason::PongTimeout => (POLICY_VIOLATION, disconnect_reason::PING_TIMEOUT.into()),
            CloseReason::NotReading => (POLICY_VIOLATION, NOT_READING_TEXT.into()),
            CloseReason::TooBig { size, max } if *size > 0 => (
                close_code::MESSAGE_TOO_BIG,
                format!("message of {size} bytes exceeds maxPayload {max}"),
            ),
            CloseReason::TooBig { .. } => (close_code::MESSAGE_TOO_BIG, String::new()),
            CloseReason::BadUtf8 => (close_code::INVALID_PAYLOAD, String::new()),
            CloseReason::BadFrame(why) => (PROTOCOL_ERROR, why.clone()),
            CloseReason::Protocol(code, reason) => (*code, reason.clone()),
            // Socket.IO's normal close carries no status code (spec 9).
            CloseReason::ClientLeft | CloseReason::Gone => return None,
        })
    }
}
