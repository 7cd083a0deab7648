//! SocketCluster behind the socket core's [`Protocol`] trait: only
//! translation lives here; the lifecycle is the core's.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::Value;
use sockhive_shared::config::Limits;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::codec::{
    self, close_code, ClientEvent, DecodeLimits, ErrorObject, HandshakeStatus, InboundFrame,
    Packet, ViolationOutcome,
};
use crate::auth::{Method, Refusal};
use crate::hub::channels::DeliveryEncoder;
use crate::socket::ending::{GOING_AWAY_TEXT, NOT_READING_TEXT};
use crate::socket::heartbeat::{HeartbeatPolicy, HeartbeatStyle};
use crate::socket::writer::Out;
use crate::socket::{
    AppEvent, CloseReason, HandshakeLogin, HandshakeToken, Protocol, ReplyError, ReplyTo,
    SocketEvent,
};

/// Low bits of socket ids, as the real server's per-process counter.
static SOCKET_COUNTER: AtomicU32 = AtomicU32::new(0);

fn encode_delivery(channel: &str, data_json: &str) -> String {
    codec::encode_publish(channel, Some(data_json))
}

/// `{"event":"#publish","data":{"channel","data"}}`, built once per message.
static DELIVERY: DeliveryEncoder = DeliveryEncoder {
    slot: 0,
    encode: encode_delivery,
};

/// One SocketCluster socket's protocol state.
#[derive(Debug)]
pub struct SocketCluster {
    ping_interval: Duration,
    ping_timeout: Duration,
    /// A token waiting for the client's next frame: the real client drops a
    /// `#setAuthToken` that arrives in the same turn as the handshake reply
    /// (protocol spec 8.6), so it is sent once the first pong is back.
    pending_token: Option<String>,
}

impl SocketCluster {
    /// A socket with the configured heartbeat.
    pub fn new(limits: &Limits) -> SocketCluster {
        SocketCluster {
            ping_interval: limits.ping_interval,
            ping_timeout: limits.ping_timeout,
            pending_token: None,
        }
    }

    fn decode_packet(
        &mut self,
        packet: Packet,
        registered: bool,
        events: &mut Vec<SocketEvent>,
        out: &mut Out,
    ) {
        let before_handshake = || {
            SocketEvent::Close(CloseReason::Protocol(
                close_code::MESSAGE_BEFORE_HANDSHAKE,
                String::new(),
            ))
        };
        let event = match packet {
            Packet::Event(event) => event,
            // Answers to server invokes: sockhive sends none that wait for one.
            Packet::Response(_) if registered => return,
            Packet::Malformed(_) | Packet::Unrecognized(_) if registered => {
                return events.push(SocketEvent::Counted("bad_packet"))
            }
            _ => return events.push(before_handshake()),
        };
        let event = match ClientEvent::from_packet(event) {
            Ok(event) => event,
            Err(violation) => {
                events.push(SocketEvent::Counted(violation.metric_reason()));
                match violation.outcome() {
                    ViolationOutcome::Close { code } => events.push(SocketEvent::Close(
                        CloseReason::Protocol(code, String::new()),
                    )),
                    ViolationOutcome::Ignore => {}
                    ViolationOutcome::Reply { .. } if !registered => {
                        events.push(before_handshake())
                    }
                    ViolationOutcome::Reply { rid, error } => {
                        let bad_token = error.is_bad_token();
                        out.text(codec::encode_error_response(rid, &error));
                        if bad_token {
                            events.push(SocketEvent::TokenRefused);
                        }
                    }
                }
                return;
            }
        };
        if !registered {
            return events.push(match event {
                ClientEvent::Handshake { auth_token, cid } => SocketEvent::Handshake {
                    token: auth_token.map_or(HandshakeToken::Absent, HandshakeToken::Present),
                    reply: cid,
                },
                _ => before_handshake(),
            });
        }
        events.push(match event {
            ClientEvent::Handshake { cid, .. } => {
                out.text(codec::encode_error_response(
                    cid,
                    &ErrorObject::invalid_action("The socket has already completed its handshake"),
                ));
                return;
            }
            ClientEvent::Subscribe { channel, cid, .. } => SocketEvent::Subscribe {
                channel,
                reply: Some(cid),
            },
            ClientEvent::Unsubscribe { channel, cid } => SocketEvent::Unsubscribe {
                channel,
                reply: cid,
            },
            ClientEvent::Publish { channel, data, cid } => {
                let data = json_value(data);
                SocketEvent::Publish {
                    channel,
                    data,
                    reply: cid,
                }
            }
            ClientEvent::Authenticate { token, cid } => {
                SocketEvent::Authenticate { token, reply: cid }
            }
            ClientEvent::RemoveAuthToken { cid } => SocketEvent::Deauthenticate { reply: cid },
            ClientEvent::App { event, data, cid } => {
                let event = AppEvent {
                    name: event,
                    data: json_value(data),
                    args: None,
                };
                match cid {
                    Some(cid) => SocketEvent::Call { event, reply: cid },
                    None => SocketEvent::Message(event),
                }
            }
        });
    }
}

/// The wire error object of a refused credential, exactly as SocketCluster sends it.
fn refusal_object(refusal: &Refusal) -> ErrorObject {
    refusal.fields.iter().fold(
        ErrorObject::new(refusal.name.clone(), refusal.message.clone()),
        |object, (key, value)| object.with_field(key.clone(), value.clone()),
    )
}

/// A decoded `data` field as JSON text (`null` when absent).
fn json_value(data: Option<Value>) -> Box<RawValue> {
    serde_json::value::to_raw_value(&data.unwrap_or(Value::Null))
        .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON"))
}

impl Protocol for SocketCluster {
    const NAME: &'static str = "socketcluster";
    const DELIVERY: &'static DeliveryEncoder = &DELIVERY;

    fn new_socket_id(&self) -> String {
        codec::socket_id(
            rand::random(),
            SOCKET_COUNTER.fetch_add(1, Ordering::Relaxed),
        )
    }

    fn heartbeat(&self) -> HeartbeatPolicy {
        HeartbeatPolicy {
            style: HeartbeatStyle::Periodic,
            interval: self.ping_interval,
            timeout: self.ping_timeout,
        }
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
            // The real server decodes binary frames as text; do the same.
            Message::Binary(bytes) => match Utf8Bytes::try_from(bytes) {
                Ok(text) => text,
                Err(_) => {
                    return events.push(SocketEvent::Close(CloseReason::BadUtf8));
                }
            },
            _ => return,
        };
        if registered {
            if let Some(token) = self.pending_token.take() {
                out.text(codec::encode_set_auth_token(&token));
            }
        }
        let frame = match codec::decode_frame(&text, &DecodeLimits::default()) {
            Ok(frame) => frame,
            Err(e) => {
                events.push(SocketEvent::Counted(e.metric_reason()));
                let code = if registered {
                    e.close_code()
                } else {
                    Some(close_code::MESSAGE_BEFORE_HANDSHAKE)
                };
                if let Some(code) = code {
                    events.push(SocketEvent::Close(CloseReason::Protocol(
                        code,
                        String::new(),
                    )));
                }
                return;
            }
        };
        match frame {
            InboundFrame::Pong | InboundFrame::V1Pong if registered => {
                events.push(SocketEvent::Pong)
            }
            InboundFrame::V1Ping => out.text_static("#2"),
            InboundFrame::Raw(_) if registered => {}
            InboundFrame::Pong | InboundFrame::V1Pong | InboundFrame::Raw(_) => {
                events.push(SocketEvent::Close(CloseReason::Protocol(
                    close_code::MESSAGE_BEFORE_HANDSHAKE,
                    String::new(),
                )))
            }
            InboundFrame::Packet(packet) => self.decode_packet(packet, registered, events, out),
            InboundFrame::Batch(packets) => {
                for packet in packets {
                    self.decode_packet(packet, registered, events, out);
                }
            }
        }
    }

    fn accept_handshake(
        &mut self,
        out: &mut Out,
        reply: ReplyTo,
        login: &HandshakeLogin<'_>,
    ) -> bool {
        let wire_error = login.refusal.map(refusal_object);
        out.text(codec::encode_handshake_reply(
            reply,
            &HandshakeStatus {
                socket_id: login.socket_id,
                ping_timeout_ms: self.ping_timeout.as_millis().min(i32::MAX as u128) as u32,
                // As on socketcluster-server: whether the token the client
                // sent was accepted. A login by cookie or access token gets
                // its token below, so the client never holds the
                // authenticated state with a null token.
                is_authenticated: login.token_accepted,
                auth_error: wire_error.as_ref(),
            },
        ));
        if login
            .refusal
            .is_some_and(|r| r.bad_token && r.method == Method::Token)
        {
            out.text_static(codec::REMOVE_AUTH_TOKEN_FRAME);
        }
        if let (Some(token), false) = (login.token, login.token_accepted) {
            // Ping now, so the client's pong (its next frame) releases the token.
            self.pending_token = Some(token.to_string());
            out.text_static(codec::PING_FRAME);
        }
        true
    }

    fn reject_handshake(
        &mut self,
        out: &mut Out,
        reply: ReplyTo,
        refusal: &Refusal,
    ) -> CloseReason {
        let reason = format!("{}: {}", refusal.name, refusal.message);
        let error = ErrorObject::handshake_rejected(reason.clone(), close_code::AUTH_REQUIRED)
            .with_field("reason", refusal.name.clone());
        out.text(codec::encode_error_response(reply, &error));
        CloseReason::HandshakeRejected(reason)
    }

    fn reply(&mut self, out: &mut Out, reply: ReplyTo, result: Result<(), &ReplyError>) {
        out.text(match result {
            Ok(()) => codec::encode_empty_success(reply),
            Err(error) => codec::encode_error_response(
                reply,
                &ErrorObject::new(error.name.clone(), error.message.clone()),
            ),
        });
    }

    fn call_result(&mut self, out: &mut Out, reply: ReplyTo, result: Result<&Value, &ReplyError>) {
        match result {
            Ok(value) => out.text(codec::encode_success(reply, value)),
            Err(error) => self.reply(out, reply, Err(error)),
        }
    }

    fn authenticate_reply(&mut self, out: &mut Out, reply: ReplyTo, result: Result<(), &Refusal>) {
        out.text(match result {
            Ok(()) => codec::encode_authenticate_reply(reply, true, None),
            // A bad token fails the invoke itself, as on the real server.
            Err(refusal) if refusal.bad_token => {
                codec::encode_error_response(reply, &refusal_object(refusal))
            }
            Err(refusal) => {
                codec::encode_authenticate_reply(reply, false, Some(&refusal_object(refusal)))
            }
        });
    }

    fn token_issued(&mut self, out: &mut Out, token: &str, _claims: Option<&crate::auth::Claims>) {
        if self.pending_token.is_some() {
            // Still waiting for the first pong: the newer token replaces it.
            self.pending_token = Some(token.to_string());
            return;
        }
        out.text(codec::encode_set_auth_token(token));
    }

    fn deauthenticated(&mut self, out: &mut Out, _name: &str, _message: &str) {
        self.pending_token = None;
        out.text_static(codec::REMOVE_AUTH_TOKEN_FRAME);
    }

    fn kicked_out(&mut self, out: &mut Out, channel: &str, message: &str) {
        out.text(codec::encode_kick_out(channel, Some(message)));
    }

    fn event(&mut self, out: &mut Out, name: &str, data: &RawValue) {
        out.text(codec::encode_transmit_json(name, Some(data.get())));
    }

    fn delivery(&mut self, out: &mut Out, frame: Utf8Bytes) {
        out.text(frame);
    }

    fn ping(&mut self, out: &mut Out) {
        out.text_static(codec::PING_FRAME);
    }

    fn close(&mut self, _out: &mut Out, reason: &CloseReason) -> Option<(u16, String)> {
        Some(match reason {
            CloseReason::GoingAway => (close_code::GOING_AWAY, GOING_AWAY_TEXT.into()),
            CloseReason::Kicked(reason) => (close_code::ADMIN_KICK, reason.clone()),
            CloseReason::AuthRequired(reason) | CloseReason::HandshakeRejected(reason) => {
                (close_code::AUTH_REQUIRED, reason.clone())
            }
            CloseReason::HandshakeTimeout => (close_code::HANDSHAKE_TIMEOUT, String::new()),
            CloseReason::PongTimeout => (close_code::CLIENT_PONG_TIMED_OUT, String::new()),
            CloseReason::NotReading => (1008, NOT_READING_TEXT.into()),
            CloseReason::TooBig { .. } => (close_code::MESSAGE_TOO_BIG, String::new()),
            CloseReason::BadUtf8 => (close_code::INVALID_PAYLOAD, String::new()),
            CloseReason::BadFrame(why) => (1002, why.clone()),
            CloseReason::Protocol(code, reason) | CloseReason::App { code, reason } => {
                (*code, reason.clone())
            }
            CloseReason::ClientLeft | CloseReason::Gone => (close_code::NORMAL, String::new()),
        })
    }
}
