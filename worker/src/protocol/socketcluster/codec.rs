//! SocketCluster v2 wire codec (the protocol `socketcluster-client@20` speaks).
//!
//! Pure text in, text out: no I/O, so every rule of `shared/spec/socketcluster-protocol.md` can be
//! pinned by unit tests against the captured frames. Layout of this file:
//! - limits and decoding of one inbound text frame ([`decode_frame`], spec sections 2 and 10),
//! - typed views of the reserved client events with their validation ([`ClientEvent`], sections 4, 6, 8),
//! - error objects as they travel on the wire ([`ErrorObject`], section 7),
//! - encoders that build the exact text of every frame the server sends (sections 3, 4, 6, 8, 10),
//! - close codes ([`close_code`], section 9) and socket ids ([`socket_id`], section 4.2).
//!
//! Outbound frames are written field by field (not through `serde_json::Value` maps, which sort keys)
//! so they come out in the order the Node server emits, byte for byte.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Number, Value};
use std::fmt::Write as _;

use crate::json_text::{check_json_shape, push_json_string, ShapeViolation};

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

/// Default deepest JSON nesting accepted in one frame (counting the frame's own object or array):
/// far above what any app sends, far below what could exhaust a worker's stack.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 64;

/// Default most packets accepted in one batch frame: the client batches only on request, so a
/// large array is more likely an attack than traffic.
pub const DEFAULT_MAX_BATCH_PACKETS: usize = 100;

/// The largest integer JavaScript numbers hold exactly; a float call id above it cannot be a
/// counter value the client produced.
const JS_MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// Bounds applied while decoding a frame, so hostile input costs a bounded amount of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Deepest nesting of JSON objects/arrays, the frame's outer one counting as 1. Values above
    /// 127 behave as 127 (serde_json's own ceiling).
    pub max_json_depth: usize,
    /// Most elements in a batch (a JSON array frame).
    pub max_batch_packets: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
            max_batch_packets: DEFAULT_MAX_BATCH_PACKETS,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// One inbound text frame, classified the way `sc-formatter` and the real server do (spec 2).
#[derive(Debug, Clone, PartialEq)]
pub enum InboundFrame<'a> {
    /// The empty frame: a protocol v2 pong (the only thing a v2 client sends back to a ping).
    Pong,
    /// `#1`, a protocol v1 ping; kept apart because a v2 server never expects it.
    V1Ping,
    /// `#2`, a protocol v1 pong.
    V1Pong,
    /// A single JSON object frame.
    Packet(Packet),
    /// A JSON array frame: each element classified like a single frame, processed in order.
    /// May be empty (`[]`), which the real server silently accepts.
    Batch(Vec<Packet>),
    /// Text that does not start (after spaces, tabs, CR, LF) with `{` or `[`: a "raw" message
    /// with no protocol meaning (the real server only hands it to app listeners).
    Raw(&'a str),
}

/// A decoded JSON value, classified by the spec's rule: string `event` first, then numeric `rid`.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    /// An object with a string `event`.
    Event(EventPacket),
    /// An object with a numeric `rid` and no string `event`: the client answering a server invoke.
    Response(ResponsePacket),
    /// Classified as event/response, but with an id sockhive cannot echo; see [`MalformedPacket`].
    Malformed(MalformedPacket),
    /// Valid JSON that is neither an event nor a response (e.g. `{"event":5}`, `{"rid":"x"}`, or an
    /// array nested inside a batch). The real server treats it as raw; sockhive counts it.
    Unrecognized(Value),
}

/// An event packet: a transmit when `cid` is `None`, an invoke (RPC) expecting one response otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPacket {
    /// The event name, reserved (`#...`) or the app's.
    pub event: String,
    /// The payload; `None` when the key was absent (the client omits `undefined`), which differs
    /// from an explicit `null`.
    pub data: Option<Value>,
    /// The call id to echo as `rid`. A string or any other non-number `cid` means a plain transmit,
    /// exactly as in the real server (`typeof cid === "number"`).
    pub cid: Option<u64>,
}

/// A response packet from the client to one of the server's invokes.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponsePacket {
    /// The `cid` of the server invoke being answered; unknown ids are to be ignored (spec 2.3).
    pub rid: u64,
    /// Whether the client's handler succeeded.
    pub outcome: ResponseOutcome,
}

/// The two shapes of a response (spec 2.2).
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseOutcome {
    /// No (truthy) `error`: the call succeeded, with `data` when the key was present.
    Success { data: Option<Value> },
    /// A truthy `error` (as JavaScript's `if (err)` sees it), passed on unchanged.
    Failure { error: Value },
}

/// Packets whose id is a JSON number but not a usable call id.
///
/// The real server would echo such an id verbatim; the real client never sends one (its counter
/// yields positive integers), so sockhive drops these packets and counts them as `bad_packet`
/// rather than guess a reply. Integral floats like `2.0` are accepted as `2`, as in JavaScript.
#[derive(Debug, Clone, PartialEq)]
pub enum MalformedPacket {
    /// An event whose numeric `cid` is negative, fractional, or beyond 2^53.
    CallIdNotUnsigned { event: String },
    /// A response whose numeric `rid` is negative, fractional, or beyond 2^53.
    ResponseIdNotUnsigned,
}

/// Why a frame could not be decoded at all. Each variant says how the session should count it.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The text starts like JSON but does not parse. The spec's rule makes this a raw message;
    /// sockhive reports it apart so the session can count it as `bad_json` and ignore it.
    #[error("frame starts like JSON but does not parse: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// Nesting exceeds [`DecodeLimits::max_json_depth`]; rejected before any parsing.
    #[error("JSON nesting deeper than {limit} levels")]
    TooDeep { limit: usize },
    /// A batch with more elements than [`DecodeLimits::max_batch_packets`].
    #[error("batch holds more than {limit} packets")]
    BatchTooLarge { limit: usize },
}

impl DecodeError {
    /// The `reason` label of `sockhive_protocol_errors_total` for this failure.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            DecodeError::InvalidJson(_) | DecodeError::TooDeep { .. } => "bad_json",
            DecodeError::BatchTooLarge { .. } => "too_big",
        }
    }

    /// The close code the session should send, or `None` to ignore the frame and keep the socket.
    /// An oversized batch is treated like an oversized frame; broken JSON is merely dropped, as
    /// the real server does with raw messages.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            DecodeError::InvalidJson(_) | DecodeError::TooDeep { .. } => None,
            DecodeError::BatchTooLarge { .. } => Some(close_code::MESSAGE_TOO_BIG),
        }
    }
}

/// Decodes one inbound text frame. Hot path: runs once per client frame; the only allocation
/// is the parsed JSON itself, after a linear pre-scan has bounded its depth and batch length.
pub fn decode_frame<'a>(
    text: &'a str,
    limits: &DecodeLimits,
) -> Result<InboundFrame<'a>, DecodeError> {
    match text {
        "" => return Ok(InboundFrame::Pong),
        "#1" => return Ok(InboundFrame::V1Ping),
        "#2" => return Ok(InboundFrame::V1Pong),
        _ => {}
    }
    // sc-formatter's `/^[ \n\r\t]*[{\[]/`: exactly these four whitespace characters.
    let json = text.trim_start_matches([' ', '\t', '\r', '\n']);
    if !json.starts_with(['{', '[']) {
        return Ok(InboundFrame::Raw(text));
    }
    check_shape(json, limits)?;
    match serde_json::from_str::<Value>(json).map_err(DecodeError::InvalidJson)? {
        Value::Array(items) => {
            // The pre-scan counts commas; this exact count also covers a one-element batch.
            if items.len() > limits.max_batch_packets {
                return Err(DecodeError::BatchTooLarge {
                    limit: limits.max_batch_packets,
                });
            }
            Ok(InboundFrame::Batch(
                items.into_iter().map(classify_packet).collect(),
            ))
        }
        value => Ok(InboundFrame::Packet(classify_packet(value))),
    }
}

/// Rejects too-deep nesting and too-long batches before serde_json builds anything.
fn check_shape(json: &str, limits: &DecodeLimits) -> Result<(), DecodeError> {
    check_json_shape(json, limits.max_json_depth, Some(limits.max_batch_packets)).map_err(
        |violation| match violation {
            ShapeViolation::TooDeep(limit) => DecodeError::TooDeep { limit },
            ShapeViolation::TooManyElements => DecodeError::BatchTooLarge {
                limit: limits.max_batch_packets,
            },
        },
    )
}

/// Applies the spec's classification (section 2) to one decoded JSON value.
fn classify_packet(value: Value) -> Packet {
    let Value::Object(mut fields) = value else {
        return Packet::Unrecognized(value);
    };
    match fields.remove("event") {
        Some(Value::String(event)) => return classify_event(event, fields),
        Some(not_a_name) => {
            // Not an event after all; put it back so an unrecognized packet is reported whole.
            fields.insert("event".to_owned(), not_a_name);
        }
        None => {}
    }
    match fields.get("rid") {
        Some(Value::Number(rid)) => match call_id(rid) {
            Some(rid) => Packet::Response(ResponsePacket {
                rid,
                outcome: response_outcome(fields),
            }),
            None => Packet::Malformed(MalformedPacket::ResponseIdNotUnsigned),
        },
        _ => Packet::Unrecognized(Value::Object(fields)),
    }
}

fn classify_event(event: String, mut fields: Map<String, Value>) -> Packet {
    let cid = match fields.get("cid") {
        Some(Value::Number(cid)) => match call_id(cid) {
            Some(cid) => Some(cid),
            None => return Packet::Malformed(MalformedPacket::CallIdNotUnsigned { event }),
        },
        _ => None,
    };
    Packet::Event(EventPacket {
        event,
        data: fields.remove("data"),
        cid,
    })
}

fn response_outcome(mut fields: Map<String, Value>) -> ResponseOutcome {
    match fields.remove("error") {
        Some(error) if is_truthy(&error) => ResponseOutcome::Failure { error },
        _ => ResponseOutcome::Success {
            data: fields.remove("data"),
        },
    }
}

/// A JSON number as a call id: a non-negative integer, or an integral float JavaScript would
/// print as that integer (`2.0` → `2`).
fn call_id(number: &Number) -> Option<u64> {
    number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=JS_MAX_SAFE_INTEGER).contains(f))
            // Exact: the value is integral and within 2^53.
            .map(|f| f as u64)
    })
}

/// JavaScript truthiness, because the Node peers test fields with `if (x)` / `x || y`.
fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(flag) => *flag,
        Value::Number(number) => number.as_f64().is_some_and(|f| f != 0.0),
        Value::String(text) => !text.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

// ---------------------------------------------------------------------------------------------
// Reserved client events
// ---------------------------------------------------------------------------------------------

/// Names of the reserved events, so sessions never spell them twice.
pub mod event_name {
    /// Client → server: first packet of every connection, carries the stored token.
    pub const HANDSHAKE: &str = "#handshake";
    /// Client → server: present a token on an open socket.
    pub const AUTHENTICATE: &str = "#authenticate";
    /// Both ways: drop the socket's token.
    pub const REMOVE_AUTH_TOKEN: &str = "#removeAuthToken";
    /// Client → server: join a channel.
    pub const SUBSCRIBE: &str = "#subscribe";
    /// Client → server: leave a channel.
    pub const UNSUBSCRIBE: &str = "#unsubscribe";
    /// Client → server: publish; server → client: deliver a channel message.
    pub const PUBLISH: &str = "#publish";
    /// Server → client: the server removed the socket from a channel.
    pub const KICK_OUT: &str = "#kickOut";
    /// Server → client: store this signed token.
    pub const SET_AUTH_TOKEN: &str = "#setAuthToken";
}

/// A client event packet with the reserved events validated into their typed form, so the
/// session matches on meaning instead of poking into JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// `#handshake`; `auth_token` is `None` for `null`, absent, or any falsy value (the real
    /// server reads `data.authToken || null`).
    Handshake {
        auth_token: Option<String>,
        cid: u64,
    },
    /// `#subscribe` (always an invoke: the real server ignores the transmit form).
    Subscribe {
        channel: String,
        /// The client's `waitForAuth` flag: it only sends such a subscribe while authenticated.
        wait_for_auth: bool,
        /// Subscription data the app attached, if any.
        data: Option<Value>,
        cid: u64,
    },
    /// `#unsubscribe`; the client sends it as a transmit, an invoke is answered too.
    Unsubscribe { channel: String, cid: Option<u64> },
    /// `#publish`; `data` is `None` when the app published `undefined`.
    Publish {
        channel: String,
        data: Option<Value>,
        cid: Option<u64>,
    },
    /// `#authenticate` with the JWT to verify (not yet verified here).
    Authenticate { token: String, cid: u64 },
    /// `#removeAuthToken`, the client logging out; sent without `cid`, answered empty if it has one.
    RemoveAuthToken { cid: Option<u64> },
    /// Any other event, including unreserved `#` names (free in protocol v2).
    App {
        event: String,
        data: Option<Value>,
        cid: Option<u64>,
    },
}

/// A reserved event whose shape breaks the protocol. [`ProtocolViolation::outcome`] says what
/// the peer gets; every violation counts as `bad_packet`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolViolation {
    /// The real server closes 4008 without replying.
    #[error("#handshake sent without a numeric cid")]
    HandshakeWithoutCallId,
    /// sockhive's choice: a truthy non-string token is a malformed `#handshake`, closed 4008
    /// (the spec's close table lists "malformed #handshake" under 4008).
    #[error("#handshake authToken is neither a string nor null")]
    HandshakeTokenNotString,
    /// The real server closes 4008.
    #[error("#authenticate sent without a numeric cid")]
    AuthenticateWithoutCallId,
    /// Answered the way the real server's JWT library words it (`jwt must be provided`).
    #[error("#authenticate carried no token")]
    AuthenticateTokenMissing { cid: u64 },
    /// Answered the way the real server's JWT library words it (`jwt must be a string`).
    #[error("#authenticate token is not a string")]
    AuthenticateTokenNotString { cid: u64 },
    /// The real server does not subscribe on a transmit `#subscribe`; nothing to answer.
    #[error("#subscribe sent without a numeric cid")]
    SubscribeWithoutCallId,
    /// Answered with the real server's InvalidActionError.
    #[error("#subscribe channel name is not a string")]
    SubscribeChannelMalformed { cid: u64 },
    /// sockhive's wording (the spec has no capture); answered only when it was an invoke.
    #[error("#unsubscribe channel name is not a string")]
    UnsubscribeChannelMalformed { cid: Option<u64> },
    /// Answered with the real server's InvalidActionError when it was an invoke.
    #[error("#publish channel name is not a string")]
    PublishChannelMalformed { cid: Option<u64> },
}

/// What the peer sees for a [`ProtocolViolation`].
#[derive(Debug, Clone, PartialEq)]
pub enum ViolationOutcome {
    /// Answer the invoke with this error (encode with [`encode_error_response`]); the socket stays.
    /// For an `AuthTokenInvalidError` the session also drops any token and sends
    /// [`REMOVE_AUTH_TOKEN_FRAME`], as for every bad token.
    Reply { rid: u64, error: ErrorObject },
    /// Close the socket with this code and an empty reason.
    Close { code: u16 },
    /// Drop the packet; the client expects no answer.
    Ignore,
}

impl ProtocolViolation {
    /// What to send back, so every session answers a broken packet the same way.
    pub fn outcome(&self) -> ViolationOutcome {
        use ProtocolViolation as V;
        let reply = |rid: u64, error: ErrorObject| ViolationOutcome::Reply { rid, error };
        match self {
            V::HandshakeWithoutCallId
            | V::HandshakeTokenNotString
            | V::AuthenticateWithoutCallId => ViolationOutcome::Close {
                code: close_code::HANDSHAKE_REJECTED,
            },
            V::AuthenticateTokenMissing { cid } => reply(
                *cid,
                ErrorObject::auth_token_invalid("jwt must be provided"),
            ),
            V::AuthenticateTokenNotString { cid } => reply(
                *cid,
                ErrorObject::auth_token_invalid("jwt must be a string"),
            ),
            V::SubscribeWithoutCallId => ViolationOutcome::Ignore,
            V::SubscribeChannelMalformed { cid } => {
                reply(*cid, ErrorObject::subscribe_channel_malformed())
            }
            V::UnsubscribeChannelMalformed { cid: Some(cid) } => {
                reply(*cid, ErrorObject::unsubscribe_channel_malformed())
            }
            V::PublishChannelMalformed { cid: Some(cid) } => {
                reply(*cid, ErrorObject::publish_channel_malformed())
            }
            V::UnsubscribeChannelMalformed { cid: None }
            | V::PublishChannelMalformed { cid: None } => ViolationOutcome::Ignore,
        }
    }

    /// The `reason` label of `sockhive_protocol_errors_total`.
    pub fn metric_reason(&self) -> &'static str {
        "bad_packet"
    }
}

impl ClientEvent {
    /// Validates a client event packet; takes it by value so large payloads move, not copy.
    pub fn from_packet(packet: EventPacket) -> Result<ClientEvent, ProtocolViolation> {
        let EventPacket { event, data, cid } = packet;
        match event.as_str() {
            event_name::HANDSHAKE => {
                let cid = cid.ok_or(ProtocolViolation::HandshakeWithoutCallId)?;
                let auth_token = match data {
                    Some(Value::Object(mut fields)) => match fields.remove("authToken") {
                        Some(Value::String(token)) if !token.is_empty() => Some(token),
                        Some(token) if is_truthy(&token) => {
                            return Err(ProtocolViolation::HandshakeTokenNotString)
                        }
                        _ => None,
                    },
                    // Missing or non-object data reads as "no token", like `{}` (spec 4.3).
                    _ => None,
                };
                Ok(ClientEvent::Handshake { auth_token, cid })
            }
            event_name::SUBSCRIBE => {
                let cid = cid.ok_or(ProtocolViolation::SubscribeWithoutCallId)?;
                let mut fields = match data {
                    Some(Value::Object(fields)) => fields,
                    _ => return Err(ProtocolViolation::SubscribeChannelMalformed { cid }),
                };
                let Some(Value::String(channel)) = fields.remove("channel") else {
                    return Err(ProtocolViolation::SubscribeChannelMalformed { cid });
                };
                let wait_for_auth = fields.get("waitForAuth").is_some_and(is_truthy);
                Ok(ClientEvent::Subscribe {
                    channel,
                    wait_for_auth,
                    data: fields.remove("data"),
                    cid,
                })
            }
            event_name::UNSUBSCRIBE => match data {
                Some(Value::String(channel)) => Ok(ClientEvent::Unsubscribe { channel, cid }),
                _ => Err(ProtocolViolation::UnsubscribeChannelMalformed { cid }),
            },
            event_name::PUBLISH => {
                let Some(Value::Object(mut fields)) = data else {
                    return Err(ProtocolViolation::PublishChannelMalformed { cid });
                };
                let Some(Value::String(channel)) = fields.remove("channel") else {
                    return Err(ProtocolViolation::PublishChannelMalformed { cid });
                };
                Ok(ClientEvent::Publish {
                    channel,
                    data: fields.remove("data"),
                    cid,
                })
            }
            event_name::AUTHENTICATE => {
                let cid = cid.ok_or(ProtocolViolation::AuthenticateWithoutCallId)?;
                match data {
                    Some(Value::String(token)) if !token.is_empty() => {
                        Ok(ClientEvent::Authenticate { token, cid })
                    }
                    Some(token) if is_truthy(&token) => {
                        Err(ProtocolViolation::AuthenticateTokenNotString { cid })
                    }
                    _ => Err(ProtocolViolation::AuthenticateTokenMissing { cid }),
                }
            }
            event_name::REMOVE_AUTH_TOKEN => Ok(ClientEvent::RemoveAuthToken { cid }),
            _ => Ok(ClientEvent::App { event, data, cid }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Error objects
// ---------------------------------------------------------------------------------------------

/// Message of the real server's reply to a `#subscribe` without a string channel.
pub const SUBSCRIBE_CHANNEL_MALFORMED: &str = "Subscribe channel name was malformatted";
/// Message of the real server's reply to a `#publish` without a string channel.
pub const PUBLISH_CHANNEL_MALFORMED: &str = "Publish channel name was malformatted";
/// sockhive's message for an `#unsubscribe` invoke whose data is not a channel name.
pub const UNSUBSCRIBE_CHANNEL_MALFORMED: &str = "Unsubscribe channel name was malformatted";
/// Message of the real server's reply to a `#publish` when client publishing is off.
pub const CLIENT_PUBLISH_DISABLED: &str = "Client publish feature is disabled";

/// An error as it travels in a response's `error` or a handshake's `authError` (spec 7):
/// `message` first, then `name`, then extra fields in the order they were added, then
/// `statusCode`, matching the Node server's property order.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorObject {
    message: String,
    /// `None` travels like a plain JS `Error`, which the client names `"Error"`.
    name: Option<String>,
    extra: Vec<(String, Value)>,
    /// Set on handshake rejections; the close code the server uses right after.
    status_code: Option<u16>,
}

impl ErrorObject {
    /// An error with a name the client exposes as `err.name`.
    pub fn new(name: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            name: Some(name.into()),
            extra: Vec::new(),
            status_code: None,
        }
    }

    /// An error without a name, as a plain JavaScript `Error` travels (`{"message":...}`).
    pub fn unnamed(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            name: None,
            extra: Vec::new(),
            status_code: None,
        }
    }

    /// Adds an extra field after `name` (replacing an earlier one with the same key). The keys
    /// `message`, `name` and `statusCode` have their own fields and are ignored here, so a frame
    /// never carries a duplicate key.
    pub fn with_field(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        let key = key.into();
        if matches!(key.as_str(), "message" | "name" | "statusCode") {
            return self;
        }
        let value = value.into();
        match self.extra.iter_mut().find(|(existing, _)| *existing == key) {
            Some(slot) => slot.1 = value,
            None => self.extra.push((key, value)),
        }
        self
    }

    /// Sets `statusCode`, which makes the client close with that code after a handshake error.
    pub fn with_status_code(mut self, status_code: u16) -> Self {
        self.status_code = Some(status_code);
        self
    }

    /// `InvalidActionError`: the client asked for something malformed or disallowed.
    pub fn invalid_action(message: impl Into<String>) -> Self {
        Self::new("InvalidActionError", message)
    }

    /// The real server's reply to a `#subscribe` without a string channel.
    pub fn subscribe_channel_malformed() -> Self {
        Self::invalid_action(SUBSCRIBE_CHANNEL_MALFORMED)
    }

    /// The real server's reply to a `#publish` without a string channel.
    pub fn publish_channel_malformed() -> Self {
        Self::invalid_action(PUBLISH_CHANNEL_MALFORMED)
    }

    /// sockhive's reply to an `#unsubscribe` invoke whose data is not a string.
    pub fn unsubscribe_channel_malformed() -> Self {
        Self::invalid_action(UNSUBSCRIBE_CHANNEL_MALFORMED)
    }

    /// The real server's reply to a client `#publish` when client publishing is disabled.
    pub fn client_publish_disabled() -> Self {
        Self::invalid_action(CLIENT_PUBLISH_DISABLED)
    }

    /// `BrokerError`: subscribing or unsubscribing failed (e.g. the broker is unreachable).
    pub fn broker(message: impl Into<String>) -> Self {
        Self::new("BrokerError", message)
    }

    /// The real server's reply to an `#unsubscribe` invoke for a channel the socket is not in.
    pub fn broker_not_subscribed(channel: &str, socket_id: &str) -> Self {
        Self::broker(format!(
            "Failed to unsubscribe socket from the {channel} channel - InvalidActionError: \
             Socket {socket_id} tried to unsubscribe from a channel which it is not subscribed to"
        ))
    }

    /// `ChannelForbiddenError` (interface.md): `--channel-auth claims` refused this channel.
    pub fn channel_forbidden(channel: &str) -> Self {
        Self::new(
            "ChannelForbiddenError",
            format!("Access to the \"{channel}\" channel is forbidden"),
        )
    }

    /// `HandshakeRejectedError` with the close code that follows the reply (spec 4.4): use
    /// 4500–4999 for a refusal the client must not retry.
    pub fn handshake_rejected(message: impl Into<String>, status_code: u16) -> Self {
        Self::new("HandshakeRejectedError", message).with_status_code(status_code)
    }

    /// `UnknownProcedureError`: an invoke named no procedure sockhive serves. The real server
    /// stays silent (the client times out after 10 s); an immediate error is kinder.
    pub fn unknown_procedure(procedure: &str) -> Self {
        Self::new(
            "UnknownProcedureError",
            format!("No handler for procedure \"{procedure}\""),
        )
    }

    /// `AuthTokenInvalidError` (bad signature, malformed, refused algorithm): a bad token.
    pub fn auth_token_invalid(message: impl Into<String>) -> Self {
        Self::new("AuthTokenInvalidError", message).with_field("isBadToken", true)
    }

    /// `AuthTokenExpiredError`; `expiry` is the ISO-8601 time of the token's `exp`.
    pub fn auth_token_expired(message: impl Into<String>, expiry: impl Into<String>) -> Self {
        Self::new("AuthTokenExpiredError", message)
            .with_field("expiry", expiry.into())
            .with_field("isBadToken", true)
    }

    /// `AuthTokenNotBeforeError`; `date` is the ISO-8601 time of `nbf`. Not a bad token: the
    /// client keeps it and no `#removeAuthToken` follows.
    pub fn auth_token_not_before(message: impl Into<String>, date: impl Into<String>) -> Self {
        Self::new("AuthTokenNotBeforeError", message)
            .with_field("date", date.into())
            .with_field("isBadToken", false)
    }

    /// `AuthTokenError`: any other verification failure; a bad token.
    pub fn auth_token_error(message: impl Into<String>) -> Self {
        Self::new("AuthTokenError", message).with_field("isBadToken", true)
    }

    /// The `name` field, if the error has one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The `message` field.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `statusCode` field (handshake rejections).
    pub fn status_code(&self) -> Option<u16> {
        self.status_code
    }

    /// An extra field by key.
    pub fn field(&self, key: &str) -> Option<&Value> {
        self.extra
            .iter()
            .find(|(existing, _)| existing == key)
            .map(|(_, value)| value)
    }

    /// Whether the token behind this error must be dropped (`isBadToken: true`), which is when
    /// the server follows up with `#removeAuthToken`.
    pub fn is_bad_token(&self) -> bool {
        self.field("isBadToken") == Some(&Value::Bool(true))
    }

    /// The error alone as JSON text, e.g. for logs or another protocol's ack.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }

    fn write_json(&self, out: &mut String) {
        let mut object = JsonObject::open(out);
        object.string("message", &self.message);
        if let Some(name) = &self.name {
            object.string("name", name);
        }
        for (key, value) in &self.extra {
            object.value(key, value);
        }
        if let Some(status_code) = self.status_code {
            object.number("statusCode", u64::from(status_code));
        }
        object.close();
    }
}

/// Same field order as the frame encoders, for code that embeds an error in its own serde types.
impl Serialize for ErrorObject {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("message", &self.message)?;
        if let Some(name) = &self.name {
            map.serialize_entry("name", name)?;
        }
        for (key, value) in &self.extra {
            map.serialize_entry(key, value)?;
        }
        if let Some(status_code) = self.status_code {
            map.serialize_entry("statusCode", &status_code)?;
        }
        map.end()
    }
}

// ---------------------------------------------------------------------------------------------
// Encoders
// ---------------------------------------------------------------------------------------------

/// The v2 ping: an empty text frame (the client answers with an empty frame, [`InboundFrame::Pong`]).
pub const PING_FRAME: &str = "";

/// The server deauthenticating the socket: a transmit without data.
pub const REMOVE_AUTH_TOKEN_FRAME: &str = r##"{"event":"#removeAuthToken"}"##;

/// The `data` of a successful `#handshake` reply (spec 4.2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HandshakeStatus<'a> {
    /// The socket id the client exposes as `socket.id` (see [`socket_id`]).
    pub socket_id: &'a str,
    /// The client's ping watchdog in ms; required, or the client closes 4000 at once. Must stay
    /// well above the server's ping interval and below 2^31−1.
    pub ping_timeout_ms: u32,
    /// True only when a credential was accepted.
    pub is_authenticated: bool,
    /// Present only when a token was sent and refused (never `null` here, unlike `#authenticate`).
    pub auth_error: Option<&'a ErrorObject>,
}

/// The success reply to `#handshake`:
/// `{"rid":n,"data":{"id":..,"pingTimeout":..[,"authError":{..}],"isAuthenticated":..}}`
/// (`authError` before `isAuthenticated`, as captured from the real server).
pub fn encode_handshake_reply(rid: u64, status: &HandshakeStatus<'_>) -> String {
    let mut out = String::with_capacity(96);
    let mut frame = JsonObject::open(&mut out);
    frame.number("rid", rid);
    let mut data = frame.object("data");
    data.string("id", status.socket_id);
    data.number("pingTimeout", u64::from(status.ping_timeout_ms));
    if let Some(error) = status.auth_error {
        data.error("authError", error);
    }
    data.boolean("isAuthenticated", status.is_authenticated);
    data.close();
    frame.close();
    out
}

/// The success reply to `#authenticate`: `{"rid":n,"data":{"isAuthenticated":..,"authError":..}}`,
/// where `authError` is `null` when there is none (as the real server sends it).
pub fn encode_authenticate_reply(
    rid: u64,
    is_authenticated: bool,
    auth_error: Option<&ErrorObject>,
) -> String {
    let mut out = String::with_capacity(64);
    let mut frame = JsonObject::open(&mut out);
    frame.number("rid", rid);
    let mut data = frame.object("data");
    data.boolean("isAuthenticated", is_authenticated);
    match auth_error {
        Some(error) => data.error("authError", error),
        None => data.raw("authError", "null"),
    }
    data.close();
    frame.close();
    out
}

/// A success reply without data: `{"rid":n}` (subscribe, publish, and empty procedure results).
pub fn encode_empty_success(rid: u64) -> String {
    let mut out = String::with_capacity(16);
    let mut frame = JsonObject::open(&mut out);
    frame.number("rid", rid);
    frame.close();
    out
}

/// A success reply with data: `{"rid":n,"data":..}`.
pub fn encode_success(rid: u64, data: &Value) -> String {
    let mut out = String::new();
    let mut frame = JsonObject::open(&mut out);
    frame.number("rid", rid);
    frame.value("data", data);
    frame.close();
    out
}

/// An error reply: `{"rid":n,"error":{..}}`.
pub fn encode_error_response(rid: u64, error: &ErrorObject) -> String {
    let mut out = String::with_capacity(96);
    let mut frame = JsonObject::open(&mut out);
    frame.number("rid", rid);
    frame.error("error", error);
    frame.close();
    out
}

/// A server transmit: `{"event":..,"data":..}`, without `data` when it is `None`.
pub fn encode_transmit(event: &str, data: Option<&Value>) -> String {
    let mut out = String::new();
    let mut frame = JsonObject::open(&mut out);
    frame.string("event", event);
    if let Some(data) = data {
        frame.value("data", data);
    }
    frame.close();
    out
}

/// A server transmit whose data is already JSON text, so one serialization can be sent to many
/// sockets (admin emit). `data_json` must be one valid JSON value; it is copied as is.
pub fn encode_transmit_json(event: &str, data_json: Option<&str>) -> String {
    debug_assert!(data_json.is_none_or(is_json_value), "data_json is not JSON");
    let mut out = String::with_capacity(event.len() + data_json.map_or(0, str::len) + 24);
    let mut frame = JsonObject::open(&mut out);
    frame.string("event", event);
    if let Some(data_json) = data_json {
        frame.raw("data", data_json);
    }
    frame.close();
    out
}

/// A server invoke: `{"event":..,"cid":..,"data":..}` (the real server's key order), answered
/// by a [`ResponsePacket`] with `rid == cid`.
pub fn encode_invoke(event: &str, cid: u64, data: Option<&Value>) -> String {
    let mut out = String::new();
    let mut frame = JsonObject::open(&mut out);
    frame.string("event", event);
    frame.number("cid", cid);
    if let Some(data) = data {
        frame.value("data", data);
    }
    frame.close();
    out
}

/// A channel message delivery: `{"event":"#publish","data":{"channel":..,"data":..}}`. Hot path:
/// built once per publish and the same text sent to every subscriber, so the published value
/// comes in as JSON text (`None` when the publisher sent no data). `data_json` must be one valid
/// JSON value; it is copied as is.
pub fn encode_publish(channel: &str, data_json: Option<&str>) -> String {
    debug_assert!(data_json.is_none_or(is_json_value), "data_json is not JSON");
    let mut out = String::with_capacity(channel.len() + data_json.map_or(0, str::len) + 48);
    let mut frame = JsonObject::open(&mut out);
    frame.string("event", event_name::PUBLISH);
    let mut data = frame.object("data");
    data.string("channel", channel);
    if let Some(data_json) = data_json {
        data.raw("data", data_json);
    }
    data.close();
    frame.close();
    out
}

/// Hands the client a signed token: `{"event":"#setAuthToken","data":{"token":..}}`. Send it only
/// after a client frame that follows the handshake reply (spec 8.6), or the Node client loses it.
pub fn encode_set_auth_token(signed_token: &str) -> String {
    let mut out = String::with_capacity(signed_token.len() + 48);
    let mut frame = JsonObject::open(&mut out);
    frame.string("event", event_name::SET_AUTH_TOKEN);
    let mut data = frame.object("data");
    data.string("token", signed_token);
    data.close();
    frame.close();
    out
}

/// Tells the client the server removed it from a channel:
/// `{"event":"#kickOut","data":{"channel":..,"message":..}}` (`message` omitted when `None`).
pub fn encode_kick_out(channel: &str, message: Option<&str>) -> String {
    let mut out = String::new();
    let mut frame = JsonObject::open(&mut out);
    frame.string("event", event_name::KICK_OUT);
    let mut data = frame.object("data");
    data.string("channel", channel);
    if let Some(message) = message {
        data.string("message", message);
    }
    data.close();
    frame.close();
    out
}

/// Joins packet frames made by the encoders above into one batch frame `[..,..]`, which the
/// client processes in order. Not for [`PING_FRAME`], which is not JSON.
pub fn encode_batch<S: AsRef<str>>(packets: &[S]) -> String {
    let total: usize = packets.iter().map(|packet| packet.as_ref().len() + 1).sum();
    let mut out = String::with_capacity(total + 2);
    out.push('[');
    for (index, packet) in packets.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(packet.as_ref());
    }
    out.push(']');
    out
}

/// Debug check for the encoders that take JSON text from their caller.
fn is_json_value(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// Writes one JSON object key by key, in the order called: the only way to get the Node server's
/// field order, since `serde_json::Value` maps sort their keys.
struct JsonObject<'o> {
    out: &'o mut String,
    has_fields: bool,
}

impl<'o> JsonObject<'o> {
    fn open(out: &'o mut String) -> Self {
        out.push('{');
        Self {
            out,
            has_fields: false,
        }
    }

    fn key(&mut self, key: &str) {
        if self.has_fields {
            self.out.push(',');
        }
        self.has_fields = true;
        push_json_string(self.out, key);
        self.out.push(':');
    }

    fn string(&mut self, key: &str, value: &str) {
        self.key(key);
        push_json_string(self.out, value);
    }

    fn number(&mut self, key: &str, value: u64) {
        self.key(key);
        // Writing into a String cannot fail.
        let _ = write!(self.out, "{value}");
    }

    fn boolean(&mut self, key: &str, value: bool) {
        self.raw(key, if value { "true" } else { "false" });
    }

    fn value(&mut self, key: &str, value: &Value) {
        self.key(key);
        // `Value`'s Display is compact JSON and cannot fail: its keys are strings and its
        // numbers finite; writing into a String cannot fail either.
        let _ = write!(self.out, "{value}");
    }

    fn error(&mut self, key: &str, error: &ErrorObject) {
        self.key(key);
        error.write_json(self.out);
    }

    fn raw(&mut self, key: &str, json: &str) {
        self.key(key);
        self.out.push_str(json);
    }

    fn object(&mut self, key: &str) -> JsonObject<'_> {
        self.key(key);
        JsonObject::open(self.out)
    }

    fn close(self) {
        self.out.push('}');
    }
}

// ---------------------------------------------------------------------------------------------
// Close codes
// ---------------------------------------------------------------------------------------------

/// WebSocket close codes with their SocketCluster meaning (spec 9.1, plus interface.md's limits).
pub mod close_code {
    /// Normal close; the client does not reconnect.
    pub const NORMAL: u16 = 1000;
    /// Going away (server draining); the client reconnects, to another node.
    pub const GOING_AWAY: u16 = 1001;
    /// Invalid UTF-8 in a text frame (interface.md).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame larger than `--max-payload` (or a batch over its limit); "Message was too big to process".
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Sent by the client when no ping came within `pingTimeout`; listed to recognise it in echoes.
    pub const SERVER_PING_TIMED_OUT: u16 = 4000;
    /// No pong within `pingTimeout`: "Client pong timed out". The client reconnects at once.
    pub const CLIENT_PONG_TIMED_OUT: u16 = 4001;
    /// Signing the socket's auth token failed.
    pub const AUTH_TOKEN_SIGN_FAILED: u16 = 4002;
    /// Client-side: the handshake reply was an error without `statusCode`, or timed out.
    pub const HANDSHAKE_FAILED: u16 = 4003;
    /// No `#handshake` within `--handshake-timeout`.
    pub const HANDSHAKE_TIMEOUT: u16 = 4005;
    /// Could not bind the socket to the broker.
    pub const BROKER_BIND_FAILED: u16 = 4006;
    /// Client-side: the WebSocket did not open within `connectTimeout`.
    pub const CONNECT_TIMEOUT: u16 = 4007;
    /// Handshake refused, or a malformed `#handshake` / `#authenticate`; the client retries later.
    pub const HANDSHAKE_REJECTED: u16 = 4008;
    /// A message arrived before the handshake completed (strict handshake).
    pub const MESSAGE_BEFORE_HANDSHAKE: u16 = 4009;
    /// sockhive's permanent auth refusal (`--require-auth`, logout): 4500 and up are never retried.
    pub const AUTH_REQUIRED: u16 = 4500;
    /// sockhive's admin kick; permanent, so the kicked client stays away.
    pub const ADMIN_KICK: u16 = 4501;
    /// First code of the app range the client never auto-reconnects after.
    pub const FIRST_PERMANENT: u16 = 4500;

    /// Whether `socketcluster-client` reconnects on its own after this code (spec 9.2), so the
    /// server can tell a permanent refusal from a retryable one.
    pub const fn client_reconnects(code: u16) -> bool {
        !(code == NORMAL || code >= FIRST_PERMANENT)
    }
}

// ---------------------------------------------------------------------------------------------
// Socket ids
// ---------------------------------------------------------------------------------------------

/// A socket id shaped like the real server's (spec 4.2): base64url of 12 random bytes followed by
/// the low 3 bytes of a per-process counter, 20 characters. The caller supplies the randomness so
/// this module stays pure; the counter makes ids from one process unique even if randomness repeats.
pub fn socket_id(random: [u8; 12], counter: u32) -> String {
    let mut bytes = [0u8; 15];
    bytes[..12].copy_from_slice(&random);
    let [_, high, middle, low] = counter.to_be_bytes();
    bytes[12..].copy_from_slice(&[high, middle, low]);
    base64url_of_whole_groups(&bytes)
}

/// base64url without padding for input whose length is a multiple of 3 (no partial group), which
/// is all [`socket_id`] needs.
fn base64url_of_whole_groups(bytes: &[u8; 15]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(20);
    for group in bytes.chunks_exact(3) {
        let bits = u32::from(group[0]) << 16 | u32::from(group[1]) << 8 | u32::from(group[2]);
        for shift in [18, 12, 6, 0] {
            out.push(char::from(ALPHABET[((bits >> shift) & 0x3f) as usize]));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TOKEN_ALICE: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VybmFtZSI6ImFsaWNlIiwicm9sZSI6InVzZXIiLCJpYXQiOjE3OTUzNTY3ODMsImV4cCI6MTc5NTQ0MzE4M30.j5W_-t_FCsnDCiggs5xSTnH7CTJT2Kj41Awdo09q-6A";
    const TOKEN_MALLORY: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VybmFtZSI6Im1hbGxvcnkiLCJpYXQiOjE3OTUzNTY3ODQsImV4cCI6MTc5NTM1Njg4NH0.sS3ykdWMb9oinLlnz1vTBiL8XBSZK8VNXouq0M3dOjI";
    const TOKEN_BOB: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VybmFtZSI6ImJvYiIsInJvbGUiOiJ1c2VyIiwiaWF0IjoxNzk1MzU2Nzg0LCJleHAiOjE3OTU0NDMxODR9.NIlAe-OWPZSt70zZB8cLS7GgOS4ApNx1eUJSJya_h2s";
    const TOKEN_ACKED: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VybmFtZSI6ImFja2VkIiwiaWF0IjoxNzk1MzU2Nzg3LCJleHAiOjE3OTU0NDMxODd9.t_DPU7kOscjgtnFYTDXty2jtodhse-Zz-DuiG1uXy40";

    fn decode(text: &str) -> InboundFrame<'_> {
        match decode_frame(text, &DecodeLimits::default()) {
            Ok(frame) => frame,
            Err(error) => panic!("{text:?} did not decode: {error}"),
        }
    }

    fn event(text: &str) -> EventPacket {
        match decode(text) {
            InboundFrame::Packet(Packet::Event(event)) => event,
            other => panic!("{text:?} is not an event: {other:?}"),
        }
    }

    fn client_event(text: &str) -> Result<ClientEvent, ProtocolViolation> {
        ClientEvent::from_packet(event(text))
    }

    fn app(event: &str, data: Option<Value>, cid: Option<u64>) -> ClientEvent {
        ClientEvent::App {
            event: event.to_owned(),
            data,
            cid,
        }
    }

    fn response(text: &str) -> ResponsePacket {
        match decode(text) {
            InboundFrame::Packet(Packet::Response(response)) => response,
            other => panic!("{text:?} is not a response: {other:?}"),
        }
    }

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    // ----- decoding: captured client frames -----

    #[test]
    fn pings_and_pongs() {
        assert_eq!(decode(""), InboundFrame::Pong);
        assert_eq!(decode("#1"), InboundFrame::V1Ping);
        assert_eq!(decode("#2"), InboundFrame::V1Pong);
        assert_eq!(decode(" #2"), InboundFrame::Raw(" #2"));
    }

    #[test]
    fn captured_rpcs_and_transmits_section_3() {
        assert_eq!(
            client_event(r#"{"event":"echo","data":{"a":1,"b":"two"},"cid":2}"#),
            Ok(app("echo", Some(json!({"a": 1, "b": "two"})), Some(2)))
        );
        assert_eq!(
            client_event(r#"{"event":"fail","data":{"x":1},"cid":3}"#),
            Ok(app("fail", Some(json!({"x": 1})), Some(3)))
        );
        assert_eq!(
            client_event(r#"{"event":"failplain","data":5,"cid":4}"#),
            Ok(app("failplain", Some(json!(5)), Some(4)))
        );
        assert_eq!(
            client_event(r#"{"event":"chat","data":{"text":"hi"}}"#),
            Ok(app("chat", Some(json!({"text": "hi"})), None))
        );
        // Section 2.4: binary values arrive as plain objects.
        assert_eq!(
            client_event(
                r#"{"event":"echo","data":{"buf":{"base64":true,"data":"AQID/w=="}},"cid":2}"#
            ),
            Ok(app(
                "echo",
                Some(json!({"buf": {"base64": true, "data": "AQID/w=="}})),
                Some(2)
            ))
        );
        assert_eq!(
            client_event(r#"{"event":"nodata"}"#),
            Ok(app("nodata", None, None))
        );
        assert_eq!(
            client_event(r#"{"event":"go","cid":2}"#),
            Ok(app("go", None, Some(2)))
        );
    }

    #[test]
    fn captured_client_responses_section_3() {
        assert_eq!(
            response(r#"{"rid":1,"data":{"answer":42}}"#),
            ResponsePacket {
                rid: 1,
                outcome: ResponseOutcome::Success {
                    data: Some(json!({"answer": 42}))
                }
            }
        );
        assert_eq!(
            response(r#"{"rid":2,"error":{"message":"client side failure","name":"ClientError"}}"#),
            ResponsePacket {
                rid: 2,
                outcome: ResponseOutcome::Failure {
                    error: json!({"message": "client side failure", "name": "ClientError"})
                }
            }
        );
        // Section 8.3: the client's answer to a `#setAuthToken` invoke.
        assert_eq!(
            response(r#"{"rid":1}"#),
            ResponsePacket {
                rid: 1,
                outcome: ResponseOutcome::Success { data: None }
            }
        );
    }

    #[test]
    fn captured_handshakes_section_4() {
        assert_eq!(
            client_event(r##"{"event":"#handshake","data":{"authToken":null},"cid":1}"##),
            Ok(ClientEvent::Handshake {
                auth_token: None,
                cid: 1
            })
        );
        for (token, cid) in [(TOKEN_ALICE, 4), (TOKEN_MALLORY, 1)] {
            let frame = format!(
                r##"{{"event":"#handshake","data":{{"authToken":"{token}"}},"cid":{cid}}}"##
            );
            assert_eq!(
                client_event(&frame),
                Ok(ClientEvent::Handshake {
                    auth_token: Some(token.to_owned()),
                    cid
                })
            );
        }
    }

    #[test]
    fn captured_pubsub_section_6() {
        assert_eq!(
            client_event(r##"{"event":"#subscribe","data":{"channel":"news"},"cid":2}"##),
            Ok(ClientEvent::Subscribe {
                channel: "news".into(),
                wait_for_auth: false,
                data: None,
                cid: 2
            })
        );
        assert_eq!(
            client_event(
                r##"{"event":"#subscribe","data":{"channel":"private","data":{"foo":1}},"cid":5}"##
            ),
            Ok(ClientEvent::Subscribe {
                channel: "private".into(),
                wait_for_auth: false,
                data: Some(json!({"foo": 1})),
                cid: 5
            })
        );
        assert_eq!(
            client_event(
                r##"{"event":"#subscribe","data":{"channel":"needsauth","waitForAuth":true},"cid":2}"##
            ),
            Ok(ClientEvent::Subscribe {
                channel: "needsauth".into(),
                wait_for_auth: true,
                data: None,
                cid: 2
            })
        );
        assert_eq!(
            client_event(r##"{"event":"#unsubscribe","data":"news"}"##),
            Ok(ClientEvent::Unsubscribe {
                channel: "news".into(),
                cid: None
            })
        );
        assert_eq!(
            client_event(
                r##"{"event":"#publish","data":{"channel":"news","data":{"headline":"hello"}},"cid":2}"##
            ),
            Ok(ClientEvent::Publish {
                channel: "news".into(),
                data: Some(json!({"headline": "hello"})),
                cid: Some(2)
            })
        );
        assert_eq!(
            client_event(
                r##"{"event":"#publish","data":{"channel":"news","data":"plain string"}}"##
            ),
            Ok(ClientEvent::Publish {
                channel: "news".into(),
                data: Some(json!("plain string")),
                cid: None
            })
        );
        assert_eq!(
            client_event(
                r##"{"event":"#publish","data":{"channel":"news","data":{"self":true}},"cid":3}"##
            ),
            Ok(ClientEvent::Publish {
                channel: "news".into(),
                data: Some(json!({"self": true})),
                cid: Some(3)
            })
        );
    }

    #[test]
    fn captured_token_messages_section_8() {
        let frame = format!(r##"{{"event":"#authenticate","data":"{TOKEN_BOB}","cid":8}}"##);
        assert_eq!(
            client_event(&frame),
            Ok(ClientEvent::Authenticate {
                token: TOKEN_BOB.into(),
                cid: 8
            })
        );
        assert_eq!(
            client_event(r##"{"event":"#authenticate","data":"garbage.token.here","cid":9}"##),
            Ok(ClientEvent::Authenticate {
                token: "garbage.token.here".into(),
                cid: 9
            })
        );
        assert_eq!(
            client_event(r##"{"event":"#removeAuthToken"}"##),
            Ok(ClientEvent::RemoveAuthToken { cid: None })
        );
    }

    #[test]
    fn captured_batch_section_10() {
        let frame = r#"[{"event":"chat","data":{"n":1}},{"event":"chat","data":{"n":2}},{"event":"echo","data":3,"cid":2}]"#;
        let expected = vec![
            Packet::Event(EventPacket {
                event: "chat".into(),
                data: Some(json!({"n": 1})),
                cid: None,
            }),
            Packet::Event(EventPacket {
                event: "chat".into(),
                data: Some(json!({"n": 2})),
                cid: None,
            }),
            Packet::Event(EventPacket {
                event: "echo".into(),
                data: Some(json!(3)),
                cid: Some(2),
            }),
        ];
        assert_eq!(decode(frame), InboundFrame::Batch(expected));
    }

    #[test]
    fn captured_session_section_12() {
        assert_eq!(
            client_event(r#"{"event":"login","data":{"username":"alice"},"cid":2}"#),
            Ok(app("login", Some(json!({"username": "alice"})), Some(2)))
        );
        assert_eq!(
            client_event(r#"{"event":"whoami","cid":3}"#),
            Ok(app("whoami", None, Some(3)))
        );
        assert_eq!(
            client_event(r#"{"event":"logout","cid":6}"#),
            Ok(app("logout", None, Some(6)))
        );
    }

    // ----- decoding: classification edges -----

    #[test]
    fn whitespace_before_json_is_allowed_but_only_json_whitespace() {
        let event = event(" \t\r\n{\"event\":\"x\"}");
        assert_eq!(event.event, "x");
        let with_bom = "\u{feff}{\"event\":\"x\"}";
        assert_eq!(decode(with_bom), InboundFrame::Raw(with_bom));
        assert_eq!(decode("hello"), InboundFrame::Raw("hello"));
        assert_eq!(decode("  "), InboundFrame::Raw("  "));
    }

    #[test]
    fn non_string_event_is_not_an_event() {
        assert_eq!(
            decode(r#"{"event": 5}"#),
            InboundFrame::Packet(Packet::Unrecognized(json!({"event": 5})))
        );
        // The rule falls through to `rid` when `event` is not a string.
        assert_eq!(
            decode(r#"{"event":5,"rid":3}"#),
            InboundFrame::Packet(Packet::Response(ResponsePacket {
                rid: 3,
                outcome: ResponseOutcome::Success { data: None }
            }))
        );
    }

    #[test]
    fn non_numeric_rid_is_unrecognized() {
        assert_eq!(
            decode(r#"{"rid":"x"}"#),
            InboundFrame::Packet(Packet::Unrecognized(json!({"rid": "x"})))
        );
        assert_eq!(
            decode(r#"{"foo":1}"#),
            InboundFrame::Packet(Packet::Unrecognized(json!({"foo": 1})))
        );
    }

    #[test]
    fn string_cid_is_a_transmit() {
        assert_eq!(event(r#"{"event":"a","cid":"7"}"#).cid, None);
        assert_eq!(event(r#"{"event":"a","cid":null}"#).cid, None);
    }

    #[test]
    fn unusable_numeric_ids_are_malformed() {
        for cid in ["-1", "1.5", "1e300", "18446744073709551616"] {
            let frame = format!(r#"{{"event":"a","cid":{cid}}}"#);
            assert_eq!(
                decode(&frame),
                InboundFrame::Packet(Packet::Malformed(MalformedPacket::CallIdNotUnsigned {
                    event: "a".into()
                })),
                "cid {cid}"
            );
        }
        assert_eq!(
            decode(r#"{"rid":-3,"data":1}"#),
            InboundFrame::Packet(Packet::Malformed(MalformedPacket::ResponseIdNotUnsigned))
        );
    }

    #[test]
    fn integral_float_ids_count_as_integers() {
        assert_eq!(event(r#"{"event":"a","cid":2.0}"#).cid, Some(2));
        assert_eq!(response(r#"{"rid":7e0}"#).rid, 7);
        assert_eq!(
            event(r#"{"event":"a","cid":18446744073709551615}"#).cid,
            Some(u64::MAX)
        );
    }

    #[test]
    fn falsy_error_means_success_like_javascript() {
        for error in ["null", "false", "0", "\"\""] {
            let frame = format!(r#"{{"rid":1,"data":2,"error":{error}}}"#);
            assert_eq!(
                response(&frame).outcome,
                ResponseOutcome::Success {
                    data: Some(json!(2))
                },
                "error {error}"
            );
        }
        assert_eq!(
            response(r#"{"rid":1,"error":"boom"}"#).outcome,
            ResponseOutcome::Failure {
                error: json!("boom")
            }
        );
    }

    #[test]
    fn explicit_null_data_differs_from_absent_data() {
        assert_eq!(
            event(r#"{"event":"a","data":null}"#).data,
            Some(Value::Null)
        );
        assert_eq!(event(r#"{"event":"a"}"#).data, None);
    }

    #[test]
    fn empty_batch_and_nested_arrays() {
        assert_eq!(decode("[]"), InboundFrame::Batch(vec![]));
        assert_eq!(
            decode("[[1]]"),
            InboundFrame::Batch(vec![Packet::Unrecognized(json!([1]))])
        );
        assert_eq!(
            decode(r#"[1,"x",{"event":"a"}]"#),
            InboundFrame::Batch(vec![
                Packet::Unrecognized(json!(1)),
                Packet::Unrecognized(json!("x")),
                Packet::Event(EventPacket {
                    event: "a".into(),
                    data: None,
                    cid: None
                }),
            ])
        );
    }

    // ----- decoding: hostile input -----

    #[test]
    fn broken_json_is_reported_apart_from_raw_text() {
        for text in [
            "{bad",
            "[1,",
            "{\"event\":\"a\"} trailing",
            "[1]x",
            "{\"event\":\"a\",\"cid\":1e400}",
        ] {
            let error = decode_frame(text, &DecodeLimits::default())
                .expect_err(&format!("{text:?} should fail"));
            assert!(
                matches!(error, DecodeError::InvalidJson(_)),
                "{text:?}: {error:?}"
            );
            assert_eq!(error.metric_reason(), "bad_json");
            assert_eq!(error.close_code(), None);
        }
    }

    #[test]
    fn nesting_limit_is_exact() {
        let limits = DecodeLimits::default();
        assert!(decode_frame(&nested(64), &limits).is_ok());
        let error = decode_frame(&nested(65), &limits).expect_err("65 levels");
        assert!(matches!(error, DecodeError::TooDeep { limit: 64 }));
        assert_eq!(error.metric_reason(), "bad_json");
        let object = format!(r#"{{"event":"a","data":{}}}"#, nested(63));
        assert!(decode_frame(&object, &limits).is_ok());
        let object = format!(r#"{{"event":"a","data":{}}}"#, nested(64));
        assert!(matches!(
            decode_frame(&object, &limits),
            Err(DecodeError::TooDeep { .. })
        ));
    }

    #[test]
    fn huge_nesting_is_refused_before_parsing() {
        let limits = DecodeLimits {
            max_json_depth: 10_000,
            max_batch_packets: 10,
        };
        // Capped at serde_json's ceiling, so the error stays TooDeep rather than InvalidJson.
        assert!(decode_frame(&nested(127), &limits).is_ok());
        assert!(matches!(
            decode_frame(&nested(128), &limits),
            Err(DecodeError::TooDeep { limit: 127 })
        ));
        let unterminated = "[".repeat(1 << 20);
        assert!(matches!(
            decode_frame(&unterminated, &DecodeLimits::default()),
            Err(DecodeError::TooDeep { limit: 64 })
        ));
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let deep_text = "[".repeat(500);
        let frame = format!(r#"{{"event":"a","data":"{deep_text}"}}"#);
        assert_eq!(event(&frame).data, Some(json!(deep_text)));
        let frame = format!(r#"{{"event":"a\"{deep_text}\\","data":1}}"#);
        assert_eq!(event(&frame).event, format!("a\"{deep_text}\\"));
    }

    #[test]
    fn batch_limit_is_exact() {
        let limits = DecodeLimits {
            max_json_depth: 64,
            max_batch_packets: 3,
        };
        let batch = |count: usize| format!("[{}]", vec![r#"{"event":"a"}"#; count].join(","));
        assert!(matches!(
            decode_frame(&batch(3), &limits),
            Ok(InboundFrame::Batch(packets)) if packets.len() == 3
        ));
        let error = decode_frame(&batch(4), &limits).expect_err("4 packets");
        assert!(matches!(error, DecodeError::BatchTooLarge { limit: 3 }));
        assert_eq!(error.close_code(), Some(close_code::MESSAGE_TOO_BIG));
        // Commas inside packets are not batch separators.
        let wide =
            r#"[{"event":"a","data":[1,2,3,4,5,6]},{"event":"b","data":{"x":1,"y":2,"z":3}}]"#;
        assert!(decode_frame(wide, &limits).is_ok());
        let none_allowed = DecodeLimits {
            max_json_depth: 64,
            max_batch_packets: 0,
        };
        assert!(decode_frame("[]", &none_allowed).is_ok());
        assert!(matches!(
            decode_frame("[1]", &none_allowed),
            Err(DecodeError::BatchTooLarge { limit: 0 })
        ));
    }

    #[test]
    fn huge_batch_with_default_limit() {
        let frame = format!("[{}]", vec!["0"; 100_000].join(","));
        assert!(matches!(
            decode_frame(&frame, &DecodeLimits::default()),
            Err(DecodeError::BatchTooLarge { limit: 100 })
        ));
        let frame = format!("[{}]", vec![r#"{"event":"a"}"#; 100].join(","));
        assert!(decode_frame(&frame, &DecodeLimits::default()).is_ok());
    }

    // ----- reserved events: validation -----

    #[test]
    fn handshake_needs_a_numeric_cid() {
        for frame in [
            r##"{"event":"#handshake","data":{"authToken":null}}"##,
            r##"{"event":"#handshake","data":{"authToken":null},"cid":"1"}"##,
        ] {
            let violation = client_event(frame).expect_err(frame);
            assert_eq!(violation, ProtocolViolation::HandshakeWithoutCallId);
            assert_eq!(
                violation.outcome(),
                ViolationOutcome::Close {
                    code: close_code::HANDSHAKE_REJECTED
                }
            );
        }
    }

    #[test]
    fn handshake_without_usable_data_has_no_token() {
        for frame in [
            r##"{"event":"#handshake","cid":1}"##,
            r##"{"event":"#handshake","data":{},"cid":1}"##,
            r##"{"event":"#handshake","data":"x","cid":1}"##,
            r##"{"event":"#handshake","data":{"authToken":""},"cid":1}"##,
            r##"{"event":"#handshake","data":{"authToken":false},"cid":1}"##,
        ] {
            assert_eq!(
                client_event(frame),
                Ok(ClientEvent::Handshake {
                    auth_token: None,
                    cid: 1
                }),
                "{frame}"
            );
        }
        let violation = client_event(r##"{"event":"#handshake","data":{"authToken":5},"cid":1}"##)
            .expect_err("numeric token");
        assert_eq!(violation, ProtocolViolation::HandshakeTokenNotString);
        assert_eq!(violation.metric_reason(), "bad_packet");
    }

    #[test]
    fn malformed_subscribe_gets_the_captured_error_reply() {
        for data in [
            "",
            r#","data":{}"#,
            r#","data":{"channel":5}"#,
            r#","data":"news""#,
        ] {
            let frame = format!(r##"{{"event":"#subscribe"{data},"cid":8}}"##);
            let violation = client_event(&frame).expect_err(&frame);
            let ViolationOutcome::Reply { rid, error } = violation.outcome() else {
                panic!("{frame}: no reply");
            };
            assert_eq!(
                encode_error_response(rid, &error),
                r#"{"rid":8,"error":{"message":"Subscribe channel name was malformatted","name":"InvalidActionError"}}"#
            );
        }
        let transmit = client_event(r##"{"event":"#subscribe","data":{"channel":"news"}}"##);
        assert_eq!(transmit, Err(ProtocolViolation::SubscribeWithoutCallId));
        assert_eq!(
            ProtocolViolation::SubscribeWithoutCallId.outcome(),
            ViolationOutcome::Ignore
        );
    }

    #[test]
    fn malformed_publish_gets_the_captured_error_reply() {
        let violation = client_event(r##"{"event":"#publish","data":{"channel":["x"]},"cid":7}"##)
            .expect_err("array channel");
        let ViolationOutcome::Reply { rid, error } = violation.outcome() else {
            panic!("no reply");
        };
        assert_eq!(
            encode_error_response(rid, &error),
            r#"{"rid":7,"error":{"message":"Publish channel name was malformatted","name":"InvalidActionError"}}"#
        );
        let transmit =
            client_event(r##"{"event":"#publish","data":"news"}"##).expect_err("transmit");
        assert_eq!(transmit.outcome(), ViolationOutcome::Ignore);
        assert_eq!(
            client_event(r##"{"event":"#publish","data":{"channel":"c"}}"##),
            Ok(ClientEvent::Publish {
                channel: "c".into(),
                data: None,
                cid: None
            })
        );
    }

    #[test]
    fn malformed_unsubscribe() {
        let violation =
            client_event(r##"{"event":"#unsubscribe","data":{"channel":"news"},"cid":4}"##)
                .expect_err("object data");
        assert_eq!(
            violation,
            ProtocolViolation::UnsubscribeChannelMalformed { cid: Some(4) }
        );
        assert!(matches!(
            violation.outcome(),
            ViolationOutcome::Reply { rid: 4, .. }
        ));
        let transmit = client_event(r##"{"event":"#unsubscribe"}"##).expect_err("no data");
        assert_eq!(transmit.outcome(), ViolationOutcome::Ignore);
        assert_eq!(
            client_event(r##"{"event":"#unsubscribe","data":"news","cid":4}"##),
            Ok(ClientEvent::Unsubscribe {
                channel: "news".into(),
                cid: Some(4)
            })
        );
    }

    #[test]
    fn malformed_authenticate() {
        let no_cid =
            client_event(r##"{"event":"#authenticate","data":"a.b.c"}"##).expect_err("no cid");
        assert_eq!(
            no_cid.outcome(),
            ViolationOutcome::Close {
                code: close_code::HANDSHAKE_REJECTED
            }
        );
        let missing = client_event(r##"{"event":"#authenticate","cid":3}"##).expect_err("no token");
        let ViolationOutcome::Reply { rid, error } = missing.outcome() else {
            panic!("no reply");
        };
        assert!(error.is_bad_token());
        assert_eq!(
            encode_error_response(rid, &error),
            r#"{"rid":3,"error":{"message":"jwt must be provided","name":"AuthTokenInvalidError","isBadToken":true}}"#
        );
        let not_string = client_event(r##"{"event":"#authenticate","data":{"t":1},"cid":3}"##)
            .expect_err("object token");
        assert_eq!(
            not_string,
            ProtocolViolation::AuthenticateTokenNotString { cid: 3 }
        );
    }

    #[test]
    fn unreserved_hash_events_are_app_events() {
        assert_eq!(
            client_event(r##"{"event":"#custom","data":1,"cid":2}"##),
            Ok(app("#custom", Some(json!(1)), Some(2)))
        );
        assert_eq!(
            client_event(r##"{"event":"#removeAuthToken","cid":5}"##),
            Ok(ClientEvent::RemoveAuthToken { cid: Some(5) })
        );
    }

    // ----- encoding: captured server frames -----

    #[test]
    fn captured_replies_section_3() {
        assert_eq!(
            encode_success(2, &json!({"a": 1, "b": "two"})),
            r#"{"rid":2,"data":{"a":1,"b":"two"}}"#
        );
        assert_eq!(
            encode_success(2, &json!({"buf": {"base64": true, "data": "AQID/w=="}})),
            r#"{"rid":2,"data":{"buf":{"base64":true,"data":"AQID/w=="}}}"#
        );
        let custom =
            ErrorObject::new("CustomError", "Something went wrong").with_field("extra", 42);
        assert_eq!(
            encode_error_response(3, &custom),
            r#"{"rid":3,"error":{"message":"Something went wrong","name":"CustomError","extra":42}}"#
        );
        assert_eq!(
            encode_error_response(4, &ErrorObject::unnamed("plain error")),
            r#"{"rid":4,"error":{"message":"plain error"}}"#
        );
    }

    #[test]
    fn captured_server_transmit_and_invoke_section_3() {
        assert_eq!(
            encode_transmit("serverEvent", Some(&json!({"hello": "from server"}))),
            r#"{"event":"serverEvent","data":{"hello":"from server"}}"#
        );
        assert_eq!(
            encode_transmit_json("serverEvent", Some(r#"{"hello":"from server"}"#)),
            r#"{"event":"serverEvent","data":{"hello":"from server"}}"#
        );
        assert_eq!(
            encode_invoke("clientProc", 1, Some(&json!({"q": 1}))),
            r#"{"event":"clientProc","cid":1,"data":{"q":1}}"#
        );
        assert_eq!(
            encode_invoke("clientProcFail", 2, Some(&json!({"q": 2}))),
            r#"{"event":"clientProcFail","cid":2,"data":{"q":2}}"#
        );
        assert_eq!(
            encode_invoke("ping", 3, None),
            r#"{"event":"ping","cid":3}"#
        );
        assert_eq!(
            encode_transmit(event_name::REMOVE_AUTH_TOKEN, None),
            REMOVE_AUTH_TOKEN_FRAME
        );
        assert_eq!(REMOVE_AUTH_TOKEN_FRAME, r##"{"event":"#removeAuthToken"}"##);
    }

    #[test]
    fn captured_handshake_replies_section_4_2() {
        let status = |socket_id, is_authenticated| HandshakeStatus {
            socket_id,
            ping_timeout_ms: 30_000,
            is_authenticated,
            auth_error: None,
        };
        assert_eq!(
            encode_handshake_reply(1, &status("H5fTnDcokV9RCQ32AAAA", false)),
            r#"{"rid":1,"data":{"id":"H5fTnDcokV9RCQ32AAAA","pingTimeout":30000,"isAuthenticated":false}}"#
        );
        assert_eq!(
            encode_handshake_reply(4, &status("dJfp67Kf4KNJjTR-AAAE", true)),
            r#"{"rid":4,"data":{"id":"dJfp67Kf4KNJjTR-AAAE","pingTimeout":30000,"isAuthenticated":true}}"#
        );
        assert_eq!(
            encode_handshake_reply(1, &status("va0Vsuu2dqX8MaKyAAAD", false)),
            r#"{"rid":1,"data":{"id":"va0Vsuu2dqX8MaKyAAAD","pingTimeout":30000,"isAuthenticated":false}}"#
        );
        let invalid = ErrorObject::auth_token_invalid("invalid signature");
        let rejected = HandshakeStatus {
            auth_error: Some(&invalid),
            ..status("MMht4k_Zuyh5uHURAAAF", false)
        };
        assert_eq!(
            encode_handshake_reply(1, &rejected),
            r#"{"rid":1,"data":{"id":"MMht4k_Zuyh5uHURAAAF","pingTimeout":30000,"authError":{"message":"invalid signature","name":"AuthTokenInvalidError","isBadToken":true},"isAuthenticated":false}}"#
        );
    }

    #[test]
    fn captured_handshake_rejections_section_4_4() {
        assert_eq!(
            encode_error_response(
                1,
                &ErrorObject::handshake_rejected("You shall not pass", 4008)
            ),
            r#"{"rid":1,"error":{"message":"You shall not pass","name":"HandshakeRejectedError","statusCode":4008}}"#
        );
        let silent = ErrorObject::new(
            "SilentMiddlewareBlockedError",
            "The handshakeSC AGAction was blocked by handshake middleware",
        )
        .with_field("type", "handshake")
        .with_status_code(4008);
        assert_eq!(
            encode_error_response(1, &silent),
            r#"{"rid":1,"error":{"message":"The handshakeSC AGAction was blocked by handshake middleware","name":"SilentMiddlewareBlockedError","type":"handshake","statusCode":4008}}"#
        );
        assert_eq!(
            encode_error_response(
                1,
                &ErrorObject::handshake_rejected("Custom code rejection", 4501)
            ),
            r#"{"rid":1,"error":{"message":"Custom code rejection","name":"HandshakeRejectedError","statusCode":4501}}"#
        );
    }

    #[test]
    fn captured_pubsub_frames_section_6() {
        assert_eq!(encode_empty_success(2), r#"{"rid":2}"#);
        assert_eq!(
            encode_error_response(5, &ErrorObject::broker_not_subscribed("x", "abc")),
            r#"{"rid":5,"error":{"message":"Failed to unsubscribe socket from the x channel - InvalidActionError: Socket abc tried to unsubscribe from a channel which it is not subscribed to","name":"BrokerError"}}"#
        );
        assert_eq!(
            encode_publish("news", Some(r#"{"headline":"hello"}"#)),
            r##"{"event":"#publish","data":{"channel":"news","data":{"headline":"hello"}}}"##
        );
        assert_eq!(
            encode_publish("news", Some(r#""plain string""#)),
            r##"{"event":"#publish","data":{"channel":"news","data":"plain string"}}"##
        );
        assert_eq!(
            encode_publish("news", Some(r#"{"self":true}"#)),
            r##"{"event":"#publish","data":{"channel":"news","data":{"self":true}}}"##
        );
        assert_eq!(
            encode_publish("news", Some(r#"{"from":"server-exchange"}"#)),
            r##"{"event":"#publish","data":{"channel":"news","data":{"from":"server-exchange"}}}"##
        );
        assert_eq!(
            encode_publish("news", None),
            r##"{"event":"#publish","data":{"channel":"news"}}"##
        );
        assert_eq!(
            encode_error_response(2, &ErrorObject::client_publish_disabled()),
            r#"{"rid":2,"error":{"message":"Client publish feature is disabled","name":"InvalidActionError"}}"#
        );
        assert_eq!(
            encode_kick_out("private", Some("bye from channel")),
            r##"{"event":"#kickOut","data":{"channel":"private","message":"bye from channel"}}"##
        );
        assert_eq!(
            encode_kick_out("private", None),
            r##"{"event":"#kickOut","data":{"channel":"private"}}"##
        );
    }

    #[test]
    fn publish_round_trips_through_the_decoder() {
        // What a client publishes is what subscribers get, byte for byte (spec 6.3).
        let inbound = r##"{"event":"#publish","data":{"channel":"news","data":{"headline":"hello"}},"cid":2}"##;
        let Ok(ClientEvent::Publish { channel, data, .. }) = client_event(inbound) else {
            panic!("not a publish");
        };
        let data_json = data.map(|value| value.to_string());
        assert_eq!(
            encode_publish(&channel, data_json.as_deref()),
            r##"{"event":"#publish","data":{"channel":"news","data":{"headline":"hello"}}}"##
        );
    }

    #[test]
    fn captured_token_frames_section_8() {
        assert_eq!(
            encode_set_auth_token(TOKEN_ALICE),
            format!(r##"{{"event":"#setAuthToken","data":{{"token":"{TOKEN_ALICE}"}}}}"##)
        );
        assert_eq!(
            encode_invoke(
                event_name::SET_AUTH_TOKEN,
                1,
                Some(&json!({"token": TOKEN_ACKED}))
            ),
            format!(r##"{{"event":"#setAuthToken","cid":1,"data":{{"token":"{TOKEN_ACKED}"}}}}"##)
        );
        assert_eq!(
            encode_authenticate_reply(8, true, None),
            r#"{"rid":8,"data":{"isAuthenticated":true,"authError":null}}"#
        );
        assert_eq!(
            encode_error_response(9, &ErrorObject::auth_token_invalid("invalid token")),
            r#"{"rid":9,"error":{"message":"invalid token","name":"AuthTokenInvalidError","isBadToken":true}}"#
        );
        let not_before =
            ErrorObject::auth_token_not_before("jwt not active", "2026-11-22T14:22:54.000Z");
        assert!(!not_before.is_bad_token());
        assert_eq!(
            encode_authenticate_reply(3, false, Some(&not_before)),
            r#"{"rid":3,"data":{"isAuthenticated":false,"authError":{"message":"jwt not active","name":"AuthTokenNotBeforeError","date":"2026-11-22T14:22:54.000Z","isBadToken":false}}}"#
        );
    }

    #[test]
    fn captured_batch_and_session_frames_sections_10_and_12() {
        assert_eq!(encode_success(2, &json!(3)), r#"{"rid":2,"data":3}"#);
        let batch = [
            encode_success(2, &json!("done")),
            encode_transmit("a", Some(&json!(1))),
            encode_transmit("b", Some(&json!(2))),
        ];
        let batch_frame = encode_batch(&batch);
        assert_eq!(
            batch_frame,
            r#"[{"rid":2,"data":"done"},{"event":"a","data":1},{"event":"b","data":2}]"#
        );
        assert!(matches!(decode(&batch_frame), InboundFrame::Batch(packets) if packets.len() == 3));
        assert_eq!(encode_batch::<&str>(&[]), "[]");
        assert_eq!(
            encode_success(2, &json!({"ok": true})),
            r#"{"rid":2,"data":{"ok":true}}"#
        );
        assert_eq!(encode_empty_success(6), r#"{"rid":6}"#);
        // Key order here ("authToken" before "authState") is not alphabetical, so a Value map
        // may reorder it; the client does not depend on order, so compare meaning.
        let captured = r#"{"rid":3,"data":{"authToken":{"username":"alice","role":"user","iat":1795356783,"exp":1795443183},"authState":"authenticated"}}"#;
        let whoami = json!({
            "authToken": {"username": "alice", "role": "user", "iat": 1795356783u64, "exp": 1795443183u64},
            "authState": "authenticated",
        });
        let encoded: Value = serde_json::from_str(&encode_success(3, &whoami)).expect("valid JSON");
        let expected: Value = serde_json::from_str(captured).expect("valid JSON");
        assert_eq!(encoded, expected);
    }

    // ----- encoding: escaping and error objects -----

    #[test]
    fn strings_are_escaped_like_serde_json() {
        let mut every_ascii: String = (0u8..0x80).map(char::from).collect();
        every_ascii.push_str("é漢\u{2028}\u{1f600}");
        let mut ours = String::new();
        push_json_string(&mut ours, &every_ascii);
        assert_eq!(ours, Value::String(every_ascii.clone()).to_string());
        let frame = encode_transmit("q\"\\\n", None);
        let decoded = event(&frame);
        assert_eq!(decoded.event, "q\"\\\n");
        let publish = encode_publish("a\"b", Some("1"));
        assert_eq!(
            publish,
            r##"{"event":"#publish","data":{"channel":"a\"b","data":1}}"##
        );
    }

    #[test]
    fn error_object_serde_matches_frame_text() {
        let error = ErrorObject::auth_token_expired("jwt expired", "2026-11-22T14:00:00.000Z")
            .with_status_code(4500);
        let via_serde = serde_json::to_string(&error).expect("serializable");
        assert_eq!(via_serde, error.to_json());
        assert_eq!(
            via_serde,
            r#"{"message":"jwt expired","name":"AuthTokenExpiredError","expiry":"2026-11-22T14:00:00.000Z","isBadToken":true,"statusCode":4500}"#
        );
    }

    #[test]
    fn error_object_fields_never_duplicate() {
        let error = ErrorObject::new("X", "m")
            .with_field("name", "Y")
            .with_field("message", "n")
            .with_field("statusCode", 1)
            .with_field("k", 1)
            .with_field("k", 2);
        assert_eq!(error.to_json(), r#"{"message":"m","name":"X","k":2}"#);
        assert_eq!(error.name(), Some("X"));
        assert_eq!(error.message(), "m");
        assert_eq!(error.status_code(), None);
        assert_eq!(error.field("k"), Some(&json!(2)));
    }

    #[test]
    fn sockhive_specific_errors() {
        assert_eq!(
            ErrorObject::channel_forbidden("room:1").to_json(),
            r#"{"message":"Access to the \"room:1\" channel is forbidden","name":"ChannelForbiddenError"}"#
        );
        assert_eq!(
            ErrorObject::unknown_procedure("foo").to_json(),
            r#"{"message":"No handler for procedure \"foo\"","name":"UnknownProcedureError"}"#
        );
        assert_eq!(
            ErrorObject::auth_token_error("invalid exp value").to_json(),
            r#"{"message":"invalid exp value","name":"AuthTokenError","isBadToken":true}"#
        );
        let rejected = ErrorObject::handshake_rejected("SessionNotFoundError: logged out", 4500);
        assert_eq!(rejected.status_code(), Some(close_code::AUTH_REQUIRED));
    }

    // ----- close codes and socket ids -----

    #[test]
    fn reconnect_policy_by_close_code() {
        use close_code::*;
        for code in [
            GOING_AWAY,
            MESSAGE_TOO_BIG,
            CLIENT_PONG_TIMED_OUT,
            HANDSHAKE_REJECTED,
            4499,
        ] {
            assert!(client_reconnects(code), "{code}");
        }
        for code in [NORMAL, AUTH_REQUIRED, ADMIN_KICK, 4999] {
            assert!(!client_reconnects(code), "{code}");
        }
    }

    #[test]
    fn socket_ids_match_captured_ids() {
        let captured: [([u8; 12], u32, &str); 4] = [
            (
                [31, 151, 211, 156, 55, 40, 145, 95, 81, 9, 13, 246],
                0,
                "H5fTnDcokV9RCQ32AAAA",
            ),
            (
                [116, 151, 233, 235, 178, 159, 224, 163, 73, 141, 52, 126],
                4,
                "dJfp67Kf4KNJjTR-AAAE",
            ),
            (
                [48, 200, 109, 226, 79, 217, 187, 40, 121, 184, 117, 17],
                5,
                "MMht4k_Zuyh5uHURAAAF",
            ),
            (
                [189, 173, 21, 178, 235, 182, 118, 165, 252, 49, 162, 178],
                3,
                "va0Vsuu2dqX8MaKyAAAD",
            ),
        ];
        for (random, counter, expected) in captured {
            assert_eq!(socket_id(random, counter), expected);
        }
    }

    #[test]
    fn socket_id_uses_the_low_three_counter_bytes() {
        let random = [0xff; 12];
        let id = socket_id(random, 0x0100_0001);
        assert_eq!(id, "________________AAAB");
        assert_eq!(socket_id(random, 0x00ff_ffff), "____________________");
        assert_eq!(socket_id([0; 12], 64), format!("{}AABA", "A".repeat(16)));
        assert!(socket_id([0x5a; 12], 12_345)
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'));
    }
}
