//! Socket.IO v5 over Engine.IO v4 wire codec, WebSocket transport only (what
//! `socket.io-client@4.8` speaks with `transports: ['websocket']`).
//!
//! Pure text and bytes in, text out: no I/O, so every rule of `shared/spec/socketio-protocol.md`
//! can be pinned by unit tests against the captured frames. Layout of this file:
//! - defaults, limits and reason strings (spec sections 3.1, 4, 5, 9, 12),
//! - Engine.IO frames: [`decode_engine_frame`] and the open packet (sections 3, 4),
//! - Socket.IO packets: [`decode_packet`] with bounds for hostile input (section 5),
//! - binary packets: placeholders and the [`BinaryAssembler`] (section 8),
//! - encoders that build the exact text of every frame the server sends (sections 5–9),
//! - sockhive's channel events (interface.md): [`ChannelRequest`] and its acks and deliveries,
//! - ids ([`session_id`]) and the base64 that `b64=1` clients use for attachments.
//!
//! Every encoder returns a whole WebSocket text frame, Engine.IO prefix included (`42[...]`).
//! Payload JSON is passed in as text the caller serialized once, so one frame can be built per
//! message and sent to many sockets.

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::fmt::Write as _;

use crate::json_text::{check_json_shape, push_json_string, ShapeViolation};

// ---------------------------------------------------------------------------------------------
// Defaults and limits
// ---------------------------------------------------------------------------------------------

/// Default ms between the server's pings (the real server's `pingInterval`).
pub const DEFAULT_PING_INTERVAL_MS: u32 = 25_000;

/// Default ms the server waits for a pong, and the client's slack on top of `pingInterval`.
pub const DEFAULT_PING_TIMEOUT_MS: u32 = 20_000;

/// Default largest frame in bytes, advertised as `maxPayload` (the real `maxHttpBufferSize`).
pub const DEFAULT_MAX_PAYLOAD_BYTES: u64 = 1_000_000;

/// Default ms the server waits after the open packet for a first CONNECT before closing.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u32 = 45_000;

/// The client arms one JavaScript timer with `pingInterval + pingTimeout`; setTimeout treats
/// anything above this many ms as 1 ms, so the client would time out at once.
pub const MAX_CLIENT_TIMER_MS: u64 = 2_147_483_647;

/// Default deepest JSON nesting accepted in one packet (the payload's outer array or object
/// counting as 1): far above what apps send, far below what could exhaust a worker's stack.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 64;

/// Default most binary attachments one packet may announce (the real parser's `maxAttachments`).
pub const DEFAULT_MAX_ATTACHMENTS: usize = 10;

/// Default most bytes one binary packet may hold while it waits for its attachments (header text
/// plus attachments): what the real server implicitly allows, one full frame per attachment.
pub const DEFAULT_MAX_ASSEMBLED_BYTES: usize =
    DEFAULT_MAX_ATTACHMENTS * DEFAULT_MAX_PAYLOAD_BYTES as usize;

/// The main namespace, which the wire format leaves out (`40`, not `40/,`).
pub const MAIN_NAMESPACE: &str = "/";

/// The only `EIO` query value sockhive serves.
pub const ENGINE_IO_VERSION: &str = "4";

/// What the real server answers (as CONNECT_ERROR `message`) to a CONNECT for a namespace it
/// does not serve.
pub const INVALID_NAMESPACE_MESSAGE: &str = "Invalid namespace";

/// The largest integer a JavaScript number holds exactly; a larger ack id cannot come from the
/// client's counter and would not survive its way back into the client's ack table.
const JS_MAX_SAFE_INTEGER: u64 = 9_007_199_254_740_991;

/// Whether a heartbeat configuration keeps the client's watchdog working (spec 3.1): both values
/// positive and their sum below [`MAX_CLIENT_TIMER_MS`]. Meant for config validation.
pub const fn heartbeat_fits_client_timer(ping_interval_ms: u32, ping_timeout_ms: u32) -> bool {
    ping_interval_ms > 0
        && ping_timeout_ms > 0
        && (ping_interval_ms as u64 + ping_timeout_ms as u64) < MAX_CLIENT_TIMER_MS
}

/// Bounds applied while decoding a packet, so hostile input costs a bounded amount of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Deepest nesting of JSON objects/arrays, the payload's outer one counting as 1. Values
    /// above 127 behave as 127 (serde_json's own ceiling).
    pub max_json_depth: usize,
    /// Most attachments a BINARY_EVENT/BINARY_ACK may announce.
    pub max_attachments: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
            max_attachments: DEFAULT_MAX_ATTACHMENTS,
        }
    }
}

/// Disconnect reasons with the real server's wording, so logs and metrics read the same as a
/// Node deployment's (spec 4 and 9).
pub mod disconnect_reason {
    /// No pong within `pingTimeout` after a ping.
    pub const PING_TIMEOUT: &str = "ping timeout";
    /// The client closed the WebSocket (or it dropped).
    pub const TRANSPORT_CLOSE: &str = "transport close";
    /// The WebSocket failed, e.g. a frame above `maxPayload`.
    pub const TRANSPORT_ERROR: &str = "transport error";
    /// The client sent something undecodable (the real server closes the connection).
    pub const PARSE_ERROR: &str = "parse error";
    /// The client sent DISCONNECT for the namespace.
    pub const CLIENT_NAMESPACE_DISCONNECT: &str = "client namespace disconnect";
    /// The server sent DISCONNECT (admin kick).
    pub const SERVER_NAMESPACE_DISCONNECT: &str = "server namespace disconnect";
}

/// HTTP refusal bodies of the real server before the upgrade (spec 2). The client never sees
/// them (only the status code), but curl users and logs do.
pub mod http_refusal {
    /// `transport` missing or not `websocket`: 400.
    pub const TRANSPORT_UNKNOWN: &str = "Transport unknown";
    /// A `sid` query parameter sockhive does not know (it never issues polling sessions): 400.
    pub const SESSION_ID_UNKNOWN: &str = "Session ID unknown";
    /// `EIO` other than 4: 400 (sockhive's choice; the real server breaks the upgrade instead).
    pub const UNSUPPORTED_PROTOCOL_VERSION: &str = "Unsupported protocol version";
}

/// WebSocket close codes Socket.IO sessions use. A normal Socket.IO close carries **no** status
/// code (the peer reports 1005): neither side encodes meaning in close frames (spec 9).
pub mod close_code {
    /// Server draining (interface.md): the client reconnects, to another node.
    pub const GOING_AWAY: u16 = 1001;
    /// Invalid UTF-8 in a text frame (interface.md).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame above `maxPayload`, as the real server sends it (spec 9.1).
    pub const MESSAGE_TOO_BIG: u16 = 1009;
}

// ---------------------------------------------------------------------------------------------
// Engine.IO frames
// ---------------------------------------------------------------------------------------------

/// Engine.IO close `1`: the client ignores it on a WebSocket, so it is no way to end a session.
pub const CLOSE_FRAME: &str = "1";
/// Engine.IO ping `2`: server → client only in EIO 4; the client answers [`PONG_FRAME`].
pub const PING_FRAME: &str = "2";
/// Engine.IO pong `3`, for tests and tools that play the client.
pub const PONG_FRAME: &str = "3";
/// Engine.IO noop `6`: ignored by the client; harmless filler.
pub const NOOP_FRAME: &str = "6";
/// DISCONNECT of the main namespace, the admin kick (client: `io server disconnect`, no retry).
pub const DISCONNECT_FRAME: &str = "41";

/// One WebSocket text frame, classified by its Engine.IO type character (spec 3).
///
/// Like the real parser, text after the type character of `1`, `5` and `6` is accepted and
/// dropped; those packets mean nothing on a WebSocket-only connection anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnginePacket<'a> {
    /// `0` with the handshake JSON; only a server sends it (useful to client-side test tools).
    Open(&'a str),
    /// `1`; the real WebSocket transport ignores it.
    Close,
    /// `2` with its payload (normally empty). From a client this is a protocol error: the real
    /// server closes the connection ("invalid heartbeat direction").
    Ping(&'a str),
    /// `3` with its payload (normally empty): the client answering a ping.
    Pong(&'a str),
    /// `4`: the text of one Socket.IO packet, for [`decode_packet`].
    Message(&'a str),
    /// `b<base64>`: a binary message sent as text by a client that set `forceBase64`
    /// (URL `b64=1`); an attachment like a binary frame's bytes.
    BinaryMessage(Vec<u8>),
    /// `5`; only meaningful during polling upgrades, which sockhive does not serve.
    Upgrade,
    /// `6`; only meaningful during polling upgrades.
    Noop,
}

/// Why a text frame is not an Engine.IO packet. The real server closes the connection for each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// An empty text frame.
    #[error("empty Engine.IO frame")]
    Empty,
    /// The first character is not `0`–`6` or `b`.
    #[error("unknown Engine.IO packet type {0:?}")]
    UnknownType(char),
    /// A `b` frame whose rest is not base64.
    #[error("binary message is not valid base64")]
    InvalidBase64,
}

impl EngineError {
    /// The `reason` label of `sockhive_protocol_errors_total` for this failure.
    pub fn metric_reason(&self) -> &'static str {
        "bad_packet"
    }
}

/// Decodes one inbound WebSocket text frame. Hot path: no allocation except for `b` frames.
/// Binary WebSocket frames are not decoded here: their bytes are attachments as they are.
pub fn decode_engine_frame(text: &str) -> Result<EnginePacket<'_>, EngineError> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or(EngineError::Empty)?;
    let payload = chars.as_str();
    Ok(match kind {
        '0' => EnginePacket::Open(payload),
        '1' => EnginePacket::Close,
        '2' => EnginePacket::Ping(payload),
        '3' => EnginePacket::Pong(payload),
        '4' => EnginePacket::Message(payload),
        '5' => EnginePacket::Upgrade,
        '6' => EnginePacket::Noop,
        'b' => {
            EnginePacket::BinaryMessage(decode_base64(payload).ok_or(EngineError::InvalidBase64)?)
        }
        other => return Err(EngineError::UnknownType(other)),
    })
}

/// The values of the open packet (spec 3.1); `upgrades` is always `[]` on a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenHandshake<'a> {
    /// The Engine.IO session id (see [`session_id`]); not the Socket.IO socket id.
    pub sid: &'a str,
    /// Required by the client, or its watchdog fires at once (see [`heartbeat_fits_client_timer`]).
    pub ping_interval_ms: u32,
    /// Required by the client, as `ping_interval_ms`.
    pub ping_timeout_ms: u32,
    /// Advertised only; the client uses it for polling. Should equal the enforced frame limit.
    pub max_payload_bytes: u64,
}

impl<'a> OpenHandshake<'a> {
    /// The real server's defaults, so tests and simple setups need only the sid.
    pub fn with_defaults(sid: &'a str) -> Self {
        Self {
            sid,
            ping_interval_ms: DEFAULT_PING_INTERVAL_MS,
            ping_timeout_ms: DEFAULT_PING_TIMEOUT_MS,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }
}

/// The first frame after the 101, in the real server's key order:
/// `0{"sid":..,"upgrades":[],"pingInterval":..,"pingTimeout":..,"maxPayload":..}`.
pub fn encode_open(open: &OpenHandshake<'_>) -> String {
    let mut out = String::with_capacity(open.sid.len() + 96);
    out.push_str("0{\"sid\":");
    push_json_string(&mut out, open.sid);
    // Writing into a String cannot fail.
    let _ = write!(
        out,
        ",\"upgrades\":[],\"pingInterval\":{},\"pingTimeout\":{},\"maxPayload\":{}}}",
        open.ping_interval_ms, open.ping_timeout_ms, open.max_payload_bytes
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Socket.IO packets
// ---------------------------------------------------------------------------------------------

/// Event names the real server refuses from clients (they would collide with its own events).
pub const RESERVED_EVENT_NAMES: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// One decoded Socket.IO packet (the text inside an Engine.IO `4`).
#[derive(Debug, Clone, PartialEq)]
pub struct SocketPacket<'a> {
    /// `/` when the packet names none; otherwise as sent, e.g. `/admin`.
    pub namespace: &'a str,
    /// What the packet says.
    pub kind: PacketKind<'a>,
}

/// The seven Socket.IO packet types with their validated payloads (spec 5).
#[derive(Debug, Clone, PartialEq)]
pub enum PacketKind<'a> {
    /// `0`: join the namespace; `auth` is the client's `auth` option, `None` when it sent none.
    /// (A server's reply decodes here too, with `{"sid": ...}` as its object.)
    Connect { auth: Option<Map<String, Value>> },
    /// `1`: leave the namespace.
    Disconnect,
    /// `2`: an event.
    Event(EventPacket<'a>),
    /// `3`: the answer to an event that carried an ack id.
    Ack(AckPacket<'a>),
    /// `4`: a refused CONNECT; clients never send it, kept for decoding server frames in tests.
    ConnectError { payload: Value },
    /// `5` or `6`: the text part of a binary event or ack; hand it to a [`BinaryAssembler`],
    /// which waits for the announced attachments.
    Binary(BinaryHeader<'a>),
}

/// An EVENT packet. `args` stay JSON text exactly as received, so relaying them costs no
/// re-serialization and cannot alter them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPacket<'a> {
    /// Present when the sender wants an ACK with this id.
    pub ack_id: Option<u64>,
    /// The event name (first array element), unescaped.
    pub name: String,
    /// The arguments after the name, each one JSON value's text.
    pub args: Vec<&'a str>,
}

/// An ACK packet: `args` answer the event whose ack id was `ack_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckPacket<'a> {
    /// The id of the event being answered; unknown ids are to be ignored (spec 7).
    pub ack_id: u64,
    /// The ack arguments, each one JSON value's text (possibly none).
    pub args: Vec<&'a str>,
}

/// Which binary packet a header or assembled packet is, with what differs between the two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinaryKind {
    /// `5`, BINARY_EVENT.
    Event {
        /// The event name, unescaped.
        name: String,
        /// Present when the sender wants an ACK.
        ack_id: Option<u64>,
    },
    /// `6`, BINARY_ACK.
    Ack {
        /// The id of the event being answered.
        ack_id: u64,
    },
}

/// The text part of a binary packet, validated: every placeholder names an announced attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryHeader<'a> {
    /// Event or ack, with name and ack id.
    pub kind: BinaryKind,
    /// How many binary frames follow (1 ..= [`DecodeLimits::max_attachments`]).
    pub attachments: usize,
    /// The whole JSON array as received, placeholders included (the event name first for events).
    pub payload_json: &'a str,
}

/// Why a Socket.IO packet is refused. The real server closes the whole connection for each
/// (spec 5), so sessions count it under [`PacketError::metric_reason`] and close without a status code.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// An Engine.IO `4` with nothing after it.
    #[error("empty Socket.IO packet")]
    Empty,
    /// The first character is not a digit `0`–`6`.
    #[error("unknown Socket.IO packet type {0:?}")]
    UnknownType(char),
    /// A binary packet without `<count>-`, or with a count of 0.
    #[error("attachment count is not a positive integer followed by '-'")]
    InvalidAttachmentCount,
    /// A binary packet announcing more than [`DecodeLimits::max_attachments`].
    #[error("more than {limit} binary attachments announced")]
    TooManyAttachments { limit: usize },
    /// `/nsp` not followed by `,` (the client always writes the comma).
    #[error("namespace is not followed by a comma")]
    NamespaceWithoutComma,
    /// An ack id above 2^53 − 1, which no client counter produces.
    #[error("ack id is larger than 2^53 - 1")]
    AckIdOverflow,
    /// An ack id on CONNECT, DISCONNECT or CONNECT_ERROR, which have none.
    #[error("ack id on a packet type that has none")]
    UnexpectedAckId,
    /// An ACK or BINARY_ACK without the id it answers.
    #[error("ack packet without an ack id")]
    MissingAckId,
    /// The payload does not parse as JSON (including trailing garbage).
    #[error("payload does not parse as JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// Nesting deeper than [`DecodeLimits::max_json_depth`]; refused before any parsing.
    #[error("JSON nesting deeper than {limit} levels")]
    TooDeep { limit: usize },
    /// Valid JSON (or none) where the packet type needs another shape.
    #[error("{packet} payload must be {expected}")]
    PayloadMismatch {
        packet: &'static str,
        expected: &'static str,
    },
    /// An event named like one of the server's own events ([`RESERVED_EVENT_NAMES`]).
    #[error("event name {0:?} is reserved")]
    ReservedEventName(String),
    /// A `{"_placeholder":true}` object whose `num` is not an announced attachment index.
    #[error("attachment placeholder is malformed or out of range")]
    InvalidPlaceholder,
}

impl PacketError {
    /// The `reason` label of `sockhive_protocol_errors_total` for this failure.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            PacketError::InvalidJson(_) | PacketError::TooDeep { .. } => "bad_json",
            PacketError::TooManyAttachments { .. } => "too_big",
            _ => "bad_packet",
        }
    }
}

/// The packet type digit, named for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PacketType {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

impl PacketType {
    fn from_char(digit: char) -> Option<Self> {
        Some(match digit {
            '0' => PacketType::Connect,
            '1' => PacketType::Disconnect,
            '2' => PacketType::Event,
            '3' => PacketType::Ack,
            '4' => PacketType::ConnectError,
            '5' => PacketType::BinaryEvent,
            '6' => PacketType::BinaryAck,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            PacketType::Connect => "CONNECT",
            PacketType::Disconnect => "DISCONNECT",
            PacketType::Event => "EVENT",
            PacketType::Ack => "ACK",
            PacketType::ConnectError => "CONNECT_ERROR",
            PacketType::BinaryEvent => "BINARY_EVENT",
            PacketType::BinaryAck => "BINARY_ACK",
        }
    }
}

const EVENT_SHAPE: &str = "a non-empty array whose first element is a string event name";
const ACK_SHAPE: &str = "an array";

/// Decodes one Socket.IO packet, `<type>[<n>-][<nsp>,][<id>][<json>]` (spec 5), the text of an
/// [`EnginePacket::Message`]. Hot path: runs once per client message; a linear pre-scan bounds
/// the JSON's depth before serde_json sees it, and event arguments are borrowed, not copied.
pub fn decode_packet<'a>(
    text: &'a str,
    limits: &DecodeLimits,
) -> Result<SocketPacket<'a>, PacketError> {
    let type_char = text.chars().next().ok_or(PacketError::Empty)?;
    let packet_type =
        PacketType::from_char(type_char).ok_or(PacketError::UnknownType(type_char))?;
    // The type is an ASCII digit, so byte 1 is a character boundary.
    let rest = &text[1..];
    let (attachments, rest) = match packet_type {
        PacketType::BinaryEvent | PacketType::BinaryAck => {
            let (count, rest) = split_attachment_count(rest, limits.max_attachments)?;
            (count, rest)
        }
        _ => (0, rest),
    };
    let (namespace, rest) = split_namespace(rest)?;
    let (ack_id, rest) = split_ack_id(rest)?;
    let json = if rest.is_empty() {
        None
    } else {
        check_depth(rest, limits.max_json_depth)?;
        Some(rest)
    };
    let kind = match packet_type {
        PacketType::Connect => {
            refuse_ack_id(ack_id)?;
            let auth = match json {
                None => None,
                Some(json) => Some(parse_object(json, packet_type)?),
            };
            PacketKind::Connect { auth }
        }
        PacketType::Disconnect => {
            refuse_ack_id(ack_id)?;
            if json.is_some() {
                return Err(mismatch(packet_type, "absent"));
            }
            PacketKind::Disconnect
        }
        PacketType::Event => {
            let json = json.ok_or(mismatch(packet_type, EVENT_SHAPE))?;
            let (name, args) = parse_event(json, packet_type)?;
            PacketKind::Event(EventPacket { ack_id, name, args })
        }
        PacketType::Ack => {
            let ack_id = ack_id.ok_or(PacketError::MissingAckId)?;
            let json = json.ok_or(mismatch(packet_type, ACK_SHAPE))?;
            let args = parse_array(json, packet_type, ACK_SHAPE)?;
            PacketKind::Ack(AckPacket { ack_id, args })
        }
        PacketType::ConnectError => {
            refuse_ack_id(ack_id)?;
            const SHAPE: &str = "an object or a string";
            let json = json.ok_or(mismatch(packet_type, SHAPE))?;
            if !matches!(first_json_byte(json), Some(b'{' | b'"')) {
                return Err(mismatch_or_bad_json(json, packet_type, SHAPE));
            }
            let payload = serde_json::from_str(json).map_err(PacketError::InvalidJson)?;
            PacketKind::ConnectError { payload }
        }
        PacketType::BinaryEvent => {
            let json = json.ok_or(mismatch(packet_type, EVENT_SHAPE))?;
            let (name, _) = parse_event(json, packet_type)?;
            check_placeholders(json, attachments)?;
            PacketKind::Binary(BinaryHeader {
                kind: BinaryKind::Event { name, ack_id },
                attachments,
                payload_json: json,
            })
        }
        PacketType::BinaryAck => {
            let ack_id = ack_id.ok_or(PacketError::MissingAckId)?;
            let json = json.ok_or(mismatch(packet_type, ACK_SHAPE))?;
            parse_array(json, packet_type, ACK_SHAPE)?;
            check_placeholders(json, attachments)?;
            PacketKind::Binary(BinaryHeader {
                kind: BinaryKind::Ack { ack_id },
                attachments,
                payload_json: json,
            })
        }
    };
    Ok(SocketPacket { namespace, kind })
}

/// `<n>-` of a binary packet: decimal digits, then `-`.
fn split_attachment_count(text: &str, max: usize) -> Result<(usize, &str), PacketError> {
    let digits = leading_digits(text);
    if digits == 0 || text.as_bytes().get(digits) != Some(&b'-') {
        return Err(PacketError::InvalidAttachmentCount);
    }
    // Saturating: any count that overflows is far above the limit anyway.
    let count = text.as_bytes()[..digits]
        .iter()
        .fold(0usize, |count, digit| {
            count
                .saturating_mul(10)
                .saturating_add(usize::from(digit - b'0'))
        });
    if count > max {
        return Err(PacketError::TooManyAttachments { limit: max });
    }
    if count == 0 {
        return Err(PacketError::InvalidAttachmentCount);
    }
    Ok((count, &text[digits + 1..]))
}

/// `<nsp>,`: present iff the text continues with `/`; the namespace runs to the first comma.
fn split_namespace(text: &str) -> Result<(&str, &str), PacketError> {
    if !text.starts_with('/') {
        return Ok((MAIN_NAMESPACE, text));
    }
    match text.find(',') {
        Some(comma) => Ok((&text[..comma], &text[comma + 1..])),
        None => Err(PacketError::NamespaceWithoutComma),
    }
}

/// `<id>`: the decimal digits directly before the JSON.
fn split_ack_id(text: &str) -> Result<(Option<u64>, &str), PacketError> {
    let digits = leading_digits(text);
    if digits == 0 {
        return Ok((None, text));
    }
    let mut id: u64 = 0;
    for digit in &text.as_bytes()[..digits] {
        id = id
            .checked_mul(10)
            .and_then(|id| id.checked_add(u64::from(digit - b'0')))
            .filter(|id| *id <= JS_MAX_SAFE_INTEGER)
            .ok_or(PacketError::AckIdOverflow)?;
    }
    Ok((Some(id), &text[digits..]))
}

fn leading_digits(text: &str) -> usize {
    text.bytes().take_while(u8::is_ascii_digit).count()
}

fn refuse_ack_id(ack_id: Option<u64>) -> Result<(), PacketError> {
    match ack_id {
        Some(_) => Err(PacketError::UnexpectedAckId),
        None => Ok(()),
    }
}

fn mismatch(packet_type: PacketType, expected: &'static str) -> PacketError {
    PacketError::PayloadMismatch {
        packet: packet_type.name(),
        expected,
    }
}

/// For a payload of the wrong shape: broken JSON is reported as such (`bad_json`), valid JSON of
/// the wrong type as a mismatch (`bad_packet`). Only failing packets pay for this extra parse.
fn mismatch_or_bad_json(
    json: &str,
    packet_type: PacketType,
    expected: &'static str,
) -> PacketError {
    match serde_json::from_str::<IgnoredAny>(json) {
        Err(error) => PacketError::InvalidJson(error),
        Ok(_) => mismatch(packet_type, expected),
    }
}

/// The first byte after JSON whitespace, which tells the value's type without parsing it.
fn first_json_byte(json: &str) -> Option<u8> {
    json.bytes()
        .find(|byte| !matches!(byte, b' ' | b'\t' | b'\n' | b'\r'))
}

fn parse_object(json: &str, packet_type: PacketType) -> Result<Map<String, Value>, PacketError> {
    const SHAPE: &str = "an object or absent";
    if first_json_byte(json) != Some(b'{') {
        return Err(mismatch_or_bad_json(json, packet_type, SHAPE));
    }
    serde_json::from_str(json).map_err(PacketError::InvalidJson)
}

/// A JSON array's elements as text slices of `json`.
fn parse_array<'a>(
    json: &'a str,
    packet_type: PacketType,
    expected: &'static str,
) -> Result<Vec<&'a str>, PacketError> {
    if first_json_byte(json) != Some(b'[') {
        return Err(mismatch_or_bad_json(json, packet_type, expected));
    }
    let elements: Vec<&RawValue> = serde_json::from_str(json).map_err(PacketError::InvalidJson)?;
    Ok(elements.into_iter().map(RawValue::get).collect())
}

/// An event array: its name (a string, not reserved) and the arguments after it.
fn parse_event(json: &str, packet_type: PacketType) -> Result<(String, Vec<&str>), PacketError> {
    let mut elements = parse_array(json, packet_type, EVENT_SHAPE)?;
    let first = match elements.first() {
        Some(first) if first.starts_with('"') => *first,
        _ => return Err(mismatch(packet_type, EVENT_SHAPE)),
    };
    let name: String = serde_json::from_str(first).map_err(PacketError::InvalidJson)?;
    if RESERVED_EVENT_NAMES.contains(&name.as_str()) {
        return Err(PacketError::ReservedEventName(name));
    }
    elements.remove(0);
    Ok((name, elements))
}

/// Rejects too-deep nesting before serde_json builds anything.
fn check_depth(json: &str, limit: usize) -> Result<(), PacketError> {
    check_json_shape(json, limit, None).map_err(|violation| match violation {
        ShapeViolation::TooDeep(limit) => PacketError::TooDeep { limit },
        ShapeViolation::TooManyElements => PacketError::TooDeep { limit },
    })
}

// ---------------------------------------------------------------------------------------------
// Binary packets
// ---------------------------------------------------------------------------------------------

/// The JSON that stands for attachment `index` in a binary packet's payload, for building one.
pub fn placeholder_json(index: usize) -> String {
    format!("{{\"_placeholder\":true,\"num\":{index}}}")
}

/// Applies the real parser's rule: any object with `"_placeholder": true` stands for an
/// attachment and must carry an integer `num` below the announced count; other values are
/// searched recursively (the depth pre-scan bounds the recursion).
fn check_placeholders(json: &str, attachments: usize) -> Result<(), PacketError> {
    let payload: Value = serde_json::from_str(json).map_err(PacketError::InvalidJson)?;
    if placeholders_valid(&payload, attachments) {
        Ok(())
    } else {
        Err(PacketError::InvalidPlaceholder)
    }
}

fn placeholders_valid(value: &Value, attachments: usize) -> bool {
    match value {
        Value::Object(fields) if fields.get("_placeholder") == Some(&Value::Bool(true)) => fields
            .get("num")
            .and_then(Value::as_u64)
            .is_some_and(|num| num < attachments as u64),
        Value::Object(fields) => fields
            .values()
            .all(|field| placeholders_valid(field, attachments)),
        Value::Array(items) => items
            .iter()
            .all(|item| placeholders_valid(item, attachments)),
        _ => true,
    }
}

/// A binary event or ack with all its attachments. sockhive relays binary packets intact: the
/// JSON keeps its placeholders and the attachments stay in order, ready for
/// [`BinaryPacket::header_frame`] plus one binary frame per attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryPacket {
    /// `/` or the namespace the packet named.
    pub namespace: String,
    /// Event (with name and optional ack id) or ack.
    pub kind: BinaryKind,
    /// The whole JSON array as received, placeholders included.
    pub payload_json: String,
    /// The attachments' raw bytes, attachment `num` at index `num`.
    pub attachments: Vec<Vec<u8>>,
}

impl BinaryPacket {
    /// The arguments as JSON text (after the event name for events), e.g. to read a binary
    /// `publish` with [`ChannelRequest::from_event`]. Placeholders stay as they are.
    pub fn args(&self) -> Result<Vec<&str>, PacketError> {
        let mut elements = parse_array(&self.payload_json, PacketType::BinaryEvent, EVENT_SHAPE)?;
        if matches!(self.kind, BinaryKind::Event { .. }) && !elements.is_empty() {
            elements.remove(0);
        }
        Ok(elements)
    }

    /// The text frame announcing this packet, byte for byte what was received (with the Engine.IO
    /// prefix); send it, then each attachment as a binary frame, to relay the packet.
    pub fn header_frame(&self) -> String {
        let (sio_type, ack_id) = match &self.kind {
            BinaryKind::Event { ack_id, .. } => (b'5', *ack_id),
            BinaryKind::Ack { ack_id } => (b'6', Some(*ack_id)),
        };
        let mut out = start_frame(
            self.payload_json.len(),
            sio_type,
            Some(self.attachments.len()),
            &self.namespace,
            ack_id,
        );
        out.push_str(&self.payload_json);
        out
    }
}

/// Why binary assembly failed. The real server closes the connection for each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssemblyError {
    /// A binary frame (or `b` text frame) while no binary packet waits for attachments.
    #[error("got binary data when not reconstructing a packet")]
    UnexpectedAttachment,
    /// A Socket.IO text packet while a binary packet still waits for attachments.
    #[error("got plaintext data when reconstructing a packet")]
    TextWhileAssembling,
    /// A hand-built header announcing no attachments (the decoder never yields one).
    #[error("binary packet announces no attachments")]
    NoAttachments,
    /// Header plus attachments exceed the assembler's byte limit.
    #[error("binary packet exceeds {limit} bytes")]
    TooBig { limit: usize },
}

impl AssemblyError {
    /// The `reason` label of `sockhive_protocol_errors_total` for this failure.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            AssemblyError::TooBig { .. } => "too_big",
            _ => "bad_packet",
        }
    }
}

/// Holds one binary packet's text part until its attachments have arrived (spec 8). One per
/// connection: every decoded Socket.IO packet passes through [`BinaryAssembler::accept_packet`]
/// and every binary message through [`BinaryAssembler::accept_attachment`], which enforces the
/// rule that nothing is interleaved with a packet's attachments. Engine.IO pings and pongs may
/// still come between them; they never reach the assembler.
#[derive(Debug, Clone)]
pub struct BinaryAssembler {
    /// Cap on header bytes plus attachment bytes of the packet being assembled.
    max_assembled_bytes: usize,
    /// The packet waiting for attachments, if any.
    pending: Option<PendingBinary>,
}

#[derive(Debug, Clone)]
struct PendingBinary {
    packet: BinaryPacket,
    expected: usize,
    bytes: usize,
}

impl Default for BinaryAssembler {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ASSEMBLED_BYTES)
    }
}

impl BinaryAssembler {
    /// An idle assembler holding at most `max_assembled_bytes` for one packet, so a client cannot
    /// make the worker buffer more than that per connection.
    pub fn new(max_assembled_bytes: usize) -> Self {
        Self {
            max_assembled_bytes,
            pending: None,
        }
    }

    /// Whether a binary packet is waiting for attachments.
    pub fn is_assembling(&self) -> bool {
        self.pending.is_some()
    }

    /// Passes a decoded packet through: non-binary packets come back to be handled now; a binary
    /// header is kept (`Ok(None)`) until [`BinaryAssembler::accept_attachment`] completes it.
    pub fn accept_packet<'a>(
        &mut self,
        packet: SocketPacket<'a>,
    ) -> Result<Option<SocketPacket<'a>>, AssemblyError> {
        if self.pending.is_some() {
            return Err(AssemblyError::TextWhileAssembling);
        }
        let header = match packet.kind {
            PacketKind::Binary(header) => header,
            kind => {
                return Ok(Some(SocketPacket {
                    namespace: packet.namespace,
                    kind,
                }))
            }
        };
        if header.attachments == 0 {
            return Err(AssemblyError::NoAttachments);
        }
        let bytes = header.payload_json.len();
        if bytes > self.max_assembled_bytes {
            return Err(AssemblyError::TooBig {
                limit: self.max_assembled_bytes,
            });
        }
        self.pending = Some(PendingBinary {
            packet: BinaryPacket {
                namespace: packet.namespace.to_owned(),
                kind: header.kind,
                payload_json: header.payload_json.to_owned(),
                attachments: Vec::new(),
            },
            expected: header.attachments,
            bytes,
        });
        Ok(None)
    }

    /// Adds the next attachment; yields the packet once the last announced one arrived. After an
    /// error the assembler is idle again (the session closes the connection anyway).
    pub fn accept_attachment(
        &mut self,
        attachment: Vec<u8>,
    ) -> Result<Option<BinaryPacket>, AssemblyError> {
        let Some(pending) = self.pending.as_mut() else {
            return Err(AssemblyError::UnexpectedAttachment);
        };
        pending.bytes = pending.bytes.saturating_add(attachment.len());
        if pending.bytes > self.max_assembled_bytes {
            self.pending = None;
            return Err(AssemblyError::TooBig {
                limit: self.max_assembled_bytes,
            });
        }
        pending.packet.attachments.push(attachment);
        if pending.packet.attachments.len() < pending.expected {
            return Ok(None);
        }
        Ok(self.pending.take().map(|pending| pending.packet))
    }
}

// ---------------------------------------------------------------------------------------------
// Encoders
// ---------------------------------------------------------------------------------------------

/// Whether `namespace` can be written as `<nsp>,`: it starts with `/` and holds no comma.
fn is_valid_namespace(namespace: &str) -> bool {
    namespace.starts_with('/') && !namespace.contains(',')
}

/// Debug check for the encoders that take JSON text from their caller.
fn is_json_value(text: &str) -> bool {
    serde_json::from_str::<IgnoredAny>(text).is_ok()
}

/// `4<type>[<n>-][<nsp>,][<id>]`, with room for `payload_capacity` more bytes.
fn start_frame(
    payload_capacity: usize,
    sio_type: u8,
    attachments: Option<usize>,
    namespace: &str,
    ack_id: Option<u64>,
) -> String {
    debug_assert!(is_valid_namespace(namespace), "bad namespace {namespace:?}");
    let mut out = String::with_capacity(payload_capacity + namespace.len() + 28);
    out.push('4');
    out.push(char::from(sio_type));
    if let Some(count) = attachments {
        let _ = write!(out, "{count}-");
    }
    if namespace != MAIN_NAMESPACE {
        out.push_str(namespace);
        out.push(',');
    }
    if let Some(ack_id) = ack_id {
        let _ = write!(out, "{ack_id}");
    }
    out
}

/// Appends `[<"event",>arg,arg...]` where each arg is JSON text.
fn push_array(out: &mut String, event: Option<&str>, args_json: &[&str]) {
    out.push('[');
    let mut first = true;
    if let Some(event) = event {
        push_json_string(out, event);
        first = false;
    }
    for arg in args_json {
        debug_assert!(is_json_value(arg), "arg is not JSON: {arg:?}");
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(arg);
    }
    out.push(']');
}

fn args_len(args_json: &[&str]) -> usize {
    args_json.iter().map(|arg| arg.len() + 1).sum()
}

/// The CONNECT success reply `40[<nsp>,]{"sid":".."}`; `socket_id` is what the client shows as
/// `socket.id` and is required, or the client refuses the connection (spec 6.1).
pub fn encode_connect_ok(namespace: &str, socket_id: &str) -> String {
    let mut out = start_frame(socket_id.len() + 10, b'0', None, namespace, None);
    out.push_str("{\"sid\":");
    push_json_string(&mut out, socket_id);
    out.push('}');
    out
}

/// The CONNECT refusal `44[<nsp>,]{"message":..[,"data":..]}` (spec 6.2); the client's
/// `connect_error` gets `message` and `data` and does not retry. `data_json` must be one JSON
/// value. For auth failures sockhive words `message` with [`auth_refusal_message`].
pub fn encode_connect_error(namespace: &str, message: &str, data_json: Option<&str>) -> String {
    debug_assert!(data_json.is_none_or(is_json_value), "data is not JSON");
    let capacity = message.len() + data_json.map_or(0, str::len) + 24;
    let mut out = start_frame(capacity, b'4', None, namespace, None);
    out.push_str("{\"message\":");
    push_json_string(&mut out, message);
    if let Some(data_json) = data_json {
        out.push_str(",\"data\":");
        out.push_str(data_json);
    }
    out.push('}');
    out
}

/// The CONNECT_ERROR `message` for a refused credential, `"<ErrorName>: <text>"` (interface.md),
/// because Socket.IO's error carries no separate name the client could read.
pub fn auth_refusal_message(error_name: &str, text: &str) -> String {
    format!("{error_name}: {text}")
}

/// DISCONNECT `41[<nsp>,]`: the admin kick; the client reports `io server disconnect` and does not
/// reconnect. Close the WebSocket afterwards (no status code) if no namespace is left.
pub fn encode_disconnect(namespace: &str) -> String {
    start_frame(0, b'1', None, namespace, None)
}

/// An EVENT `42[<nsp>,][<id>]["event",args...]`. Hot path: built once and the same text sent
/// to every recipient, so the arguments come in as JSON text (each one valid JSON value, copied
/// as is). With `ack_id` the client answers with an ACK carrying that id.
pub fn encode_event_json(
    namespace: &str,
    event: &str,
    args_json: &[&str],
    ack_id: Option<u64>,
) -> String {
    let capacity = event.len() + args_len(args_json) + 4;
    let mut out = start_frame(capacity, b'2', None, namespace, ack_id);
    push_array(&mut out, Some(event), args_json);
    out
}

/// An ACK `43[<nsp>,]<id>[args...]` answering the client's event `ack_id`; each argument is one
/// JSON value's text. No arguments still sends `[]`, as the client expects an array.
pub fn encode_ack_json(namespace: &str, ack_id: u64, args_json: &[&str]) -> String {
    let mut out = start_frame(args_len(args_json) + 2, b'3', None, namespace, Some(ack_id));
    push_array(&mut out, None, args_json);
    out
}

/// The text frame of a BINARY_EVENT `45<n>-[<nsp>,][<id>]["event",args...]`; the arguments hold
/// placeholders ([`placeholder_json`]) for attachments `0..attachment_count`, and the caller sends
/// exactly that many binary frames right after it, in index order.
pub fn encode_binary_event_json(
    namespace: &str,
    event: &str,
    args_json: &[&str],
    attachment_count: usize,
    ack_id: Option<u64>,
) -> String {
    let capacity = event.len() + args_len(args_json) + 4;
    let mut out = start_frame(capacity, b'5', Some(attachment_count), namespace, ack_id);
    push_array(&mut out, Some(event), args_json);
    out
}

/// The text frame of a BINARY_ACK `46<n>-[<nsp>,]<id>[args...]`, followed by the attachments
/// as for [`encode_binary_event_json`].
pub fn encode_binary_ack_json(
    namespace: &str,
    ack_id: u64,
    args_json: &[&str],
    attachment_count: usize,
) -> String {
    let capacity = args_len(args_json) + 2;
    let mut out = start_frame(
        capacity,
        b'6',
        Some(attachment_count),
        namespace,
        Some(ack_id),
    );
    push_array(&mut out, None, args_json);
    out
}

/// An attachment as a `b<base64>` text frame, for clients that connected with `b64=1`
/// (`forceBase64`) and expect attachments that way instead of as binary frames.
pub fn encode_base64_message(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4 + 1);
    out.push('b');
    push_base64(&mut out, bytes, BASE64_STANDARD, true);
    out
}

// ---------------------------------------------------------------------------------------------
// sockhive channel events (interface.md)
// ---------------------------------------------------------------------------------------------

/// Names of the events sockhive gives meaning to, so sessions never spell them twice.
pub mod event_name {
    /// Client → server: `emit("subscribe", channel, ack)`.
    pub const SUBSCRIBE: &str = "subscribe";
    /// Client → server: `emit("unsubscribe", channel, ack)`.
    pub const UNSUBSCRIBE: &str = "unsubscribe";
    /// Client → server: `emit("publish", {channel, data}, ack)`; server → client: a delivery.
    pub const PUBLISH: &str = "publish";
    /// Server → client: the socket lost its authentication (logout noticed).
    pub const DEAUTHENTICATED: &str = "deauthenticated";
}

/// Error name of every malformed channel request, as in the SocketCluster protocol.
pub const INVALID_ACTION_ERROR: &str = "InvalidActionError";

/// A client event that asks sockhive to act on a channel, validated into its typed form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelRequest<'a> {
    /// `subscribe` with the channel name as first argument.
    Subscribe { channel: String },
    /// `unsubscribe` with the channel name as first argument.
    Unsubscribe { channel: String },
    /// `publish` with `{"channel", "data"}`; `data_json` is `None` when the key was absent
    /// (the client drops `undefined`), which differs from an explicit `null`.
    Publish {
        channel: String,
        data_json: Option<&'a str>,
    },
}

/// A channel event whose arguments have the wrong shape; answered through the event's ack
/// with [`encode_channel_ack_error`] (name [`INVALID_ACTION_ERROR`], [`ChannelRequestError::message`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelRequestError {
    /// `subscribe` without a string first argument.
    #[error("Subscribe channel name was malformatted")]
    SubscribeChannelMalformed,
    /// `unsubscribe` without a string first argument.
    #[error("Unsubscribe channel name was malformatted")]
    UnsubscribeChannelMalformed,
    /// `publish` without an object holding a string `channel`.
    #[error("Publish channel name was malformatted")]
    PublishChannelMalformed,
}

impl ChannelRequestError {
    /// The `message` of the ack's error object (the SocketCluster server's wording).
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// The `reason` label of `sockhive_protocol_errors_total`.
    pub fn metric_reason(&self) -> &'static str {
        "bad_packet"
    }
}

#[derive(Deserialize)]
struct PublishArgument<'a> {
    channel: String,
    #[serde(default, borrow, deserialize_with = "present_raw")]
    data: Option<&'a RawValue>,
}

/// Makes an explicit `null` come out as `Some("null")`; only an absent key gives `None`.
fn present_raw<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

impl<'a> ChannelRequest<'a> {
    /// Reads a channel request from an event's name and arguments (text or binary event);
    /// `None` when the event is not one of sockhive's channel events (an app event).
    pub fn from_event(
        name: &str,
        args: &[&'a str],
    ) -> Option<Result<ChannelRequest<'a>, ChannelRequestError>> {
        let first = args.first().copied();
        let channel_name = || first.and_then(|arg| serde_json::from_str::<String>(arg).ok());
        Some(match name {
            event_name::SUBSCRIBE => channel_name()
                .map(|channel| ChannelRequest::Subscribe { channel })
                .ok_or(ChannelRequestError::SubscribeChannelMalformed),
            event_name::UNSUBSCRIBE => channel_name()
                .map(|channel| ChannelRequest::Unsubscribe { channel })
                .ok_or(ChannelRequestError::UnsubscribeChannelMalformed),
            event_name::PUBLISH => first
                .and_then(|arg| serde_json::from_str::<PublishArgument<'a>>(arg).ok())
                .map(|publish| ChannelRequest::Publish {
                    channel: publish.channel,
                    data_json: publish.data.map(RawValue::get),
                })
                .ok_or(ChannelRequestError::PublishChannelMalformed),
            _ => return None,
        })
    }
}

/// The object a channel delivery carries, `{"channel":..[,"data":..]}`, for building a
/// binary delivery with [`encode_binary_event_json`].
pub fn publish_delivery_json(channel: &str, data_json: Option<&str>) -> String {
    debug_assert!(data_json.is_none_or(is_json_value), "data is not JSON");
    let mut out = String::with_capacity(channel.len() + data_json.map_or(0, str::len) + 24);
    out.push_str("{\"channel\":");
    push_json_string(&mut out, channel);
    if let Some(data_json) = data_json {
        out.push_str(",\"data\":");
        out.push_str(data_json);
    }
    out.push('}');
    out
}

/// A channel message delivery `42[<nsp>,]["publish",{"channel":..,"data":..}]`. Hot path: built
/// once per publish and sent to every subscriber; `data_json` is the published value's text.
pub fn encode_publish_delivery(namespace: &str, channel: &str, data_json: Option<&str>) -> String {
    let delivery = publish_delivery_json(channel, data_json);
    encode_event_json(namespace, event_name::PUBLISH, &[&delivery], None)
}

/// The success ack of a channel event, `43[<nsp>,]<id>[{"ok":true}]`.
pub fn encode_channel_ack_ok(namespace: &str, ack_id: u64) -> String {
    encode_ack_json(namespace, ack_id, &["{\"ok\":true}"])
}

/// `{"name":..,"message":..}`, the error object of channel acks and `deauthenticated`.
fn error_json(error_name: &str, message: &str) -> String {
    let mut out = String::with_capacity(error_name.len() + message.len() + 24);
    out.push_str("{\"name\":");
    push_json_string(&mut out, error_name);
    out.push_str(",\"message\":");
    push_json_string(&mut out, message);
    out.push('}');
    out
}

/// The failure ack of a channel event, `43[<nsp>,]<id>[{"error":{"name":..,"message":..}}]`.
pub fn encode_channel_ack_error(
    namespace: &str,
    ack_id: u64,
    error_name: &str,
    message: &str,
) -> String {
    let body = format!("{{\"error\":{}}}", error_json(error_name, message));
    encode_ack_json(namespace, ack_id, &[&body])
}

/// Tells the client it lost its authentication (logout noticed):
/// `42[<nsp>,]["deauthenticated",{"name":..,"message":..}]`, the error that ended it.
pub fn encode_deauthenticated(namespace: &str, error_name: &str, message: &str) -> String {
    let error = error_json(error_name, message);
    encode_event_json(namespace, event_name::DEAUTHENTICATED, &[&error], None)
}

// ---------------------------------------------------------------------------------------------
// Ids and base64
// ---------------------------------------------------------------------------------------------

const BASE64_STANDARD: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const BASE64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// An id shaped like the real server's, used both for the Engine.IO `sid` and for the Socket.IO
/// socket id (give each its own random bytes): base64url of 12 random bytes followed by the low
/// 3 bytes of a per-process counter, 20 characters. The caller supplies the randomness so this
/// module stays pure; the counter keeps one process's ids unique even if randomness repeats.
pub fn session_id(random: [u8; 12], counter: u32) -> String {
    let mut bytes = [0u8; 15];
    bytes[..12].copy_from_slice(&random);
    let [_, high, middle, low] = counter.to_be_bytes();
    bytes[12..].copy_from_slice(&[high, middle, low]);
    let mut out = String::with_capacity(20);
    push_base64(&mut out, &bytes, BASE64_URL, false);
    out
}

fn push_base64(out: &mut String, bytes: &[u8], alphabet: &[u8; 64], pad: bool) {
    for group in bytes.chunks(3) {
        let bits = group.iter().enumerate().fold(0u32, |bits, (index, byte)| {
            bits | u32::from(*byte) << (16 - 8 * index)
        });
        let sextets = group.len() + 1;
        for (index, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if index < sextets {
                out.push(char::from(alphabet[((bits >> shift) & 0x3f) as usize]));
            } else if pad {
                out.push('=');
            }
        }
    }
}

/// Decodes base64 the way a `b64=1` client may write it: standard or URL alphabet, with or
/// without padding. `None` for anything else.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let data = text.trim_end_matches('=');
    let padding = text.len() - data.len();
    if padding > 2 || (padding > 0 && text.len() % 4 != 0) || data.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() / 4 * 3 + 2);
    let mut bits = 0u32;
    let mut bit_count = 0u32;
    for byte in data.bytes() {
        let sextet = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(sextet);
        bit_count += 6;
        if bit_count >= 8 {
            bit_count -= 8;
            // Masked to one byte, so the cast keeps exactly the decoded bits.
            out.push(((bits >> bit_count) & 0xff) as u8);
            bits &= (1 << bit_count) - 1;
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn packet(text: &str) -> SocketPacket<'_> {
        match decode_packet(text, &DecodeLimits::default()) {
            Ok(packet) => packet,
            Err(error) => panic!("{text:?} did not decode: {error}"),
        }
    }

    /// A whole captured text frame: Engine.IO message first, then the Socket.IO packet.
    fn frame(text: &str) -> SocketPacket<'_> {
        match decode_engine_frame(text) {
            Ok(EnginePacket::Message(inner)) => packet(inner),
            other => panic!("{text:?} is not a message: {other:?}"),
        }
    }

    fn refused(text: &str) -> PacketError {
        match decode_packet(text, &DecodeLimits::default()) {
            Ok(packet) => panic!("{text:?} decoded: {packet:?}"),
            Err(error) => error,
        }
    }

    fn event(text: &str) -> (&str, EventPacket<'_>) {
        match frame(text) {
            SocketPacket {
                namespace,
                kind: PacketKind::Event(event),
            } => (namespace, event),
            other => panic!("{text:?} is not an event: {other:?}"),
        }
    }

    fn ack(text: &str) -> (&str, AckPacket<'_>) {
        match frame(text) {
            SocketPacket {
                namespace,
                kind: PacketKind::Ack(ack),
            } => (namespace, ack),
            other => panic!("{text:?} is not an ack: {other:?}"),
        }
    }

    fn connect_auth(text: &str) -> (&str, Option<Value>) {
        match frame(text) {
            SocketPacket {
                namespace,
                kind: PacketKind::Connect { auth },
            } => (namespace, auth.map(Value::Object)),
            other => panic!("{text:?} is not a connect: {other:?}"),
        }
    }

    fn binary_header(text: &str) -> (&str, BinaryHeader<'_>) {
        match frame(text) {
            SocketPacket {
                namespace,
                kind: PacketKind::Binary(header),
            } => (namespace, header),
            other => panic!("{text:?} is not binary: {other:?}"),
        }
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|index| u8::from_str_radix(&text[index..index + 2], 16).expect("hex"))
            .collect()
    }

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    // ----- Engine.IO -----

    #[test]
    fn captured_open_packets_sections_3_4_6_11() {
        assert_eq!(
            encode_open(&OpenHandshake::with_defaults("OSL2wRbTLTRJsfMyAAAA")),
            r#"0{"sid":"OSL2wRbTLTRJsfMyAAAA","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#
        );
        let fast = OpenHandshake {
            sid: "nMMpkX7bRqiqhMhGAAAA",
            ping_interval_ms: 1000,
            ping_timeout_ms: 500,
            max_payload_bytes: 1_000_000,
        };
        assert_eq!(
            encode_open(&fast),
            r#"0{"sid":"nMMpkX7bRqiqhMhGAAAA","upgrades":[],"pingInterval":1000,"pingTimeout":500,"maxPayload":1000000}"#
        );
        for sid in ["fHb9Ow1dc3yk_GjfAAAC", "f2MihHhabzy8kCq9AAAE"] {
            let open = encode_open(&OpenHandshake::with_defaults(sid));
            assert_eq!(
                open,
                format!(
                    r#"0{{"sid":"{sid}","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}}"#
                )
            );
            // What a client-side tool reads back.
            let Ok(EnginePacket::Open(json)) = decode_engine_frame(&open) else {
                panic!("not an open packet");
            };
            let parsed: Value = serde_json::from_str(json).expect("JSON");
            assert_eq!(parsed["sid"], json!(sid));
            assert_eq!(parsed["upgrades"], json!([]));
        }
    }

    #[test]
    fn heartbeat_frames_section_4() {
        assert_eq!(PING_FRAME, "2");
        assert_eq!(decode_engine_frame(PING_FRAME), Ok(EnginePacket::Ping("")));
        assert_eq!(decode_engine_frame("3"), Ok(EnginePacket::Pong("")));
        assert_eq!(decode_engine_frame(PONG_FRAME), Ok(EnginePacket::Pong("")));
        assert_eq!(
            decode_engine_frame("3probe"),
            Ok(EnginePacket::Pong("probe"))
        );
        assert_eq!(
            decode_engine_frame("2probe"),
            Ok(EnginePacket::Ping("probe"))
        );
    }

    #[test]
    fn every_engine_type() {
        assert_eq!(decode_engine_frame(CLOSE_FRAME), Ok(EnginePacket::Close));
        assert_eq!(decode_engine_frame("1junk"), Ok(EnginePacket::Close));
        assert_eq!(decode_engine_frame("5"), Ok(EnginePacket::Upgrade));
        assert_eq!(decode_engine_frame(NOOP_FRAME), Ok(EnginePacket::Noop));
        assert_eq!(decode_engine_frame("4"), Ok(EnginePacket::Message("")));
        assert_eq!(
            decode_engine_frame(r#"42["a"]"#),
            Ok(EnginePacket::Message(r#"2["a"]"#))
        );
        assert_eq!(decode_engine_frame(""), Err(EngineError::Empty));
        assert_eq!(decode_engine_frame("7"), Err(EngineError::UnknownType('7')));
        assert_eq!(
            decode_engine_frame("x4"),
            Err(EngineError::UnknownType('x'))
        );
        assert_eq!(decode_engine_frame("é"), Err(EngineError::UnknownType('é')));
        assert_eq!(
            decode_engine_frame(" 2"),
            Err(EngineError::UnknownType(' '))
        );
        assert_eq!(EngineError::Empty.metric_reason(), "bad_packet");
    }

    #[test]
    fn captured_base64_attachments_section_8() {
        assert_eq!(
            decode_engine_frame("bAQI="),
            Ok(EnginePacket::BinaryMessage(vec![1, 2]))
        );
        assert_eq!(
            decode_engine_frame("bBwc="),
            Ok(EnginePacket::BinaryMessage(vec![7, 7]))
        );
        assert_eq!(encode_base64_message(&[1, 2]), "bAQI=");
        assert_eq!(encode_base64_message(&[7, 7]), "bBwc=");
    }

    #[test]
    fn base64_round_trips_and_refusals() {
        for length in 0..=10 {
            let bytes: Vec<u8> = (0..length).map(|index| (index * 37 + 250) as u8).collect();
            let text = encode_base64_message(&bytes);
            assert_eq!(text.len() % 4, 1, "{text}");
            assert_eq!(
                decode_engine_frame(&text),
                Ok(EnginePacket::BinaryMessage(bytes.clone()))
            );
            // Unpadded and URL-safe spellings decode too.
            let loose = text
                .trim_end_matches('=')
                .replace('+', "-")
                .replace('/', "_");
            assert_eq!(
                decode_engine_frame(&loose),
                Ok(EnginePacket::BinaryMessage(bytes))
            );
        }
        assert_eq!(encode_base64_message(&[0xfb, 0xff]), "b+/8=");
        assert_eq!(
            decode_engine_frame("b"),
            Ok(EnginePacket::BinaryMessage(vec![]))
        );
        for bad in ["bA", "bAQI==", "bAQ=I", "bAQ I", "bA===", "bAQ==="] {
            assert_eq!(
                decode_engine_frame(bad),
                Err(EngineError::InvalidBase64),
                "{bad}"
            );
        }
    }

    #[test]
    fn heartbeat_limits() {
        assert!(heartbeat_fits_client_timer(
            DEFAULT_PING_INTERVAL_MS,
            DEFAULT_PING_TIMEOUT_MS
        ));
        assert!(!heartbeat_fits_client_timer(0, 20_000));
        assert!(!heartbeat_fits_client_timer(25_000, 0));
        assert!(!heartbeat_fits_client_timer(2_000_000_000, 147_483_647));
        assert!(heartbeat_fits_client_timer(2_000_000_000, 147_483_646));
        assert!(!heartbeat_fits_client_timer(u32::MAX, u32::MAX));
    }

    // ----- Socket.IO: captured client frames -----

    #[test]
    fn captured_connects_section_6() {
        assert_eq!(connect_auth("40"), ("/", None));
        assert_eq!(
            connect_auth(r#"40{"token":"good"}"#),
            ("/", Some(json!({"token": "good"})))
        );
        assert_eq!(connect_auth("40/admin,"), ("/admin", None));
        assert_eq!(
            connect_auth(r#"40/admin,{"role":"admin"}"#),
            ("/admin", Some(json!({"role": "admin"})))
        );
        assert_eq!(
            connect_auth(r#"40{"token":"bad"}"#),
            ("/", Some(json!({"token": "bad"})))
        );
        assert_eq!(
            connect_auth(r#"40{"token":"nodata"}"#),
            ("/", Some(json!({"token": "nodata"})))
        );
        assert_eq!(
            connect_auth(r#"40/admin,{"role":"guest"}"#),
            ("/admin", Some(json!({"role": "guest"})))
        );
        assert_eq!(
            connect_auth(r#"40/nope,{"token":"good"}"#),
            ("/nope", Some(json!({"token": "good"})))
        );
    }

    #[test]
    fn captured_client_events_and_acks_section_7() {
        let (namespace, echo) = event(r#"420["echo","a",2,{"x":null}]"#);
        assert_eq!(namespace, "/");
        assert_eq!(
            echo,
            EventPacket {
                ack_id: Some(0),
                name: "echo".into(),
                args: vec![r#""a""#, "2", r#"{"x":null}"#],
            }
        );
        let (_, callback) = event(r#"421["echo","cb-style"]"#);
        assert_eq!(callback.ack_id, Some(1));
        assert_eq!(callback.args, vec![r#""cb-style""#]);
        let (_, no_ack) = event(r#"42["noack",{"n":1}]"#);
        assert_eq!(
            no_ack,
            EventPacket {
                ack_id: None,
                name: "noack".into(),
                args: vec![r#"{"n":1}"#],
            }
        );
        let (_, early) = event(r#"42["early",1]"#);
        assert_eq!((early.name.as_str(), early.args), ("early", vec!["1"]));
        let (_, askme) = event(r#"42["askme"]"#);
        assert_eq!((askme.name.as_str(), askme.args.len()), ("askme", 0));
        assert_eq!(
            ack("430[42]"),
            (
                "/",
                AckPacket {
                    ack_id: 0,
                    args: vec!["42"]
                }
            )
        );
        let (namespace, admin) = event(r#"42/admin,0["ping-admin"]"#);
        assert_eq!(
            (namespace, admin.ack_id, admin.name.as_str()),
            ("/admin", Some(0), "ping-admin")
        );
    }

    #[test]
    fn captured_disconnects_section_9() {
        for (text, namespace) in [("41", "/"), ("41/admin,", "/admin")] {
            assert_eq!(
                frame(text),
                SocketPacket {
                    namespace,
                    kind: PacketKind::Disconnect
                }
            );
            assert_eq!(encode_disconnect(namespace), text);
        }
        assert_eq!(encode_disconnect(MAIN_NAMESPACE), DISCONNECT_FRAME);
        assert_eq!(encode_disconnect("/nsp"), "41/nsp,");
    }

    #[test]
    fn echo_round_trip_reproduces_the_captured_ack() {
        // The captured server echoes the args back inside {"got": [...]} plus "second".
        for (inbound, expected) in [
            (
                r#"420["echo","a",2,{"x":null}]"#,
                r#"430[{"got":["a",2,{"x":null}]},"second"]"#,
            ),
            (
                r#"421["echo","cb-style"]"#,
                r#"431[{"got":["cb-style"]},"second"]"#,
            ),
        ] {
            let (namespace, echo) = event(inbound);
            let got = format!("{{\"got\":[{}]}}", echo.args.join(","));
            let ack_id = echo.ack_id.expect("ack id");
            assert_eq!(
                encode_ack_json(namespace, ack_id, &[&got, r#""second""#]),
                expected
            );
        }
    }

    // ----- Socket.IO: captured server frames -----

    #[test]
    fn captured_connect_replies_section_6() {
        for (namespace, sid, expected) in [
            (
                "/",
                "0MpmDRGnkz88MhJCAAAA",
                r#"40{"sid":"0MpmDRGnkz88MhJCAAAA"}"#,
            ),
            (
                "/admin",
                "dTh8uSALXZOGyMJhAAAA",
                r#"40/admin,{"sid":"dTh8uSALXZOGyMJhAAAA"}"#,
            ),
            (
                "/",
                "7i0AITLWt7ElyoqqAAAA",
                r#"40{"sid":"7i0AITLWt7ElyoqqAAAA"}"#,
            ),
            (
                "/",
                "be_xnFH8pTFEV5NjAAAE",
                r#"40{"sid":"be_xnFH8pTFEV5NjAAAE"}"#,
            ),
        ] {
            let encoded = encode_connect_ok(namespace, sid);
            assert_eq!(encoded, expected);
            assert_eq!(
                connect_auth(&encoded),
                (namespace, Some(json!({ "sid": sid })))
            );
        }
    }

    #[test]
    fn captured_connect_errors_section_6_2() {
        let cases = [
            (
                "/",
                "unauthorized",
                Some(r#"{"reason":"bad token","code":401}"#),
                r#"44{"message":"unauthorized","data":{"reason":"bad token","code":401}}"#,
            ),
            ("/", "unauthorized", None, r#"44{"message":"unauthorized"}"#),
            (
                "/admin",
                "admins only",
                Some(r#"{"required":"admin"}"#),
                r#"44/admin,{"message":"admins only","data":{"required":"admin"}}"#,
            ),
            (
                "/nope",
                INVALID_NAMESPACE_MESSAGE,
                None,
                r#"44/nope,{"message":"Invalid namespace"}"#,
            ),
        ];
        for (namespace, message, data, expected) in cases {
            let encoded = encode_connect_error(namespace, message, data);
            assert_eq!(encoded, expected);
            let decoded = frame(&encoded);
            assert_eq!(decoded.namespace, namespace);
            let PacketKind::ConnectError { payload } = decoded.kind else {
                panic!("not a connect error");
            };
            assert_eq!(payload["message"], json!(message));
        }
        assert!(matches!(
            frame(r#"44"just a string""#).kind,
            PacketKind::ConnectError {
                payload: Value::String(_)
            }
        ));
    }

    #[test]
    fn auth_refusals_follow_interface() {
        let message = auth_refusal_message("SessionNotFoundError", "logged out");
        assert_eq!(
            encode_connect_error("/", &message, None),
            r#"44{"message":"SessionNotFoundError: logged out"}"#
        );
    }

    #[test]
    fn captured_server_events_section_7() {
        // (namespace, event, args, ack id, captured frame)
        type Case<'a> = (&'a str, &'a str, &'a [&'a str], Option<u64>, &'a str);
        let cases: [Case<'_>; 3] = [
            (
                "/",
                "plain",
                &[r#""hello""#, "1", r#"{"a":[true,null]}"#],
                None,
                r#"42["plain","hello",1,{"a":[true,null]}]"#,
            ),
            (
                "/",
                "question",
                &[r#""what is 6*7?""#],
                Some(0),
                r#"420["question","what is 6*7?"]"#,
            ),
            (
                "/admin",
                "ping-admin",
                &[],
                Some(0),
                r#"42/admin,0["ping-admin"]"#,
            ),
        ];
        for (namespace, name, args, ack_id, expected) in cases {
            let encoded = encode_event_json(namespace, name, args, ack_id);
            assert_eq!(encoded, expected);
            let (decoded_namespace, decoded) = event(&encoded);
            assert_eq!(decoded_namespace, namespace);
            assert_eq!(decoded.name, name);
            assert_eq!(decoded.args, args);
            assert_eq!(decoded.ack_id, ack_id);
        }
        assert_eq!(
            encode_ack_json("/admin", 0, &[r#""pong-admin""#]),
            r#"43/admin,0["pong-admin"]"#
        );
        assert_eq!(
            ack(r#"43/admin,0["pong-admin"]"#),
            (
                "/admin",
                AckPacket {
                    ack_id: 0,
                    args: vec![r#""pong-admin""#]
                }
            )
        );
        assert_eq!(encode_ack_json("/", 7, &[]), "437[]");
        assert_eq!(ack("437[]").1.args.len(), 0);
    }

    #[test]
    fn event_names_are_escaped() {
        let encoded = encode_event_json("/", "q\"\\\n\u{1}é", &["null"], Some(12));
        assert_eq!(encoded, r#"4212["q\"\\\n\u0001é",null]"#);
        assert_eq!(event(&encoded).1.name, "q\"\\\n\u{1}é");
        let mut every_ascii: String = (0u8..0x80).map(char::from).collect();
        every_ascii.push_str("漢\u{2028}\u{1f600}");
        let mut ours = String::new();
        push_json_string(&mut ours, &every_ascii);
        assert_eq!(ours, Value::String(every_ascii).to_string());
    }

    // ----- binary -----

    #[test]
    fn captured_client_binary_event_section_8() {
        let header_text = r#"453-0["bin",{"_placeholder":true,"num":0},{"nested":{"_placeholder":true,"num":1},"list":[{"_placeholder":true,"num":2}]}]"#;
        let (namespace, header) = binary_header(header_text);
        assert_eq!(namespace, "/");
        assert_eq!(header.attachments, 3);
        assert_eq!(
            header.kind,
            BinaryKind::Event {
                name: "bin".into(),
                ack_id: Some(0)
            }
        );
        assert_eq!(header.payload_json, &header_text[5..]);

        let mut assembler = BinaryAssembler::default();
        assert_eq!(assembler.accept_packet(frame(header_text)), Ok(None));
        assert!(assembler.is_assembling());
        assert_eq!(assembler.accept_attachment(hex("010203")), Ok(None));
        assert_eq!(assembler.accept_attachment(hex("ff")), Ok(None));
        let complete = assembler
            .accept_attachment(hex("41"))
            .expect("assembled")
            .expect("complete");
        assert!(!assembler.is_assembling());
        assert_eq!(
            complete.attachments,
            vec![vec![1, 2, 3], vec![0xff], vec![0x41]]
        );
        assert_eq!(complete.namespace, "/");
        // Relaying the packet reproduces the captured header byte for byte.
        assert_eq!(complete.header_frame(), header_text);
        assert_eq!(
            complete.args().expect("args"),
            vec![
                r#"{"_placeholder":true,"num":0}"#,
                r#"{"nested":{"_placeholder":true,"num":1},"list":[{"_placeholder":true,"num":2}]}"#
            ]
        );
    }

    #[test]
    fn captured_server_binary_frames_section_8() {
        let ack_header = encode_binary_ack_json("/", 0, &[&placeholder_json(0)], 1);
        assert_eq!(ack_header, r#"461-0[{"_placeholder":true,"num":0}]"#);
        let push_header = encode_binary_event_json(
            "/",
            "binpush",
            &[&format!("{{\"file\":{}}}", placeholder_json(0))],
            1,
            None,
        );
        assert_eq!(
            push_header,
            r#"451-["binpush",{"file":{"_placeholder":true,"num":0}}]"#
        );
        // Both decode and assemble with their captured attachments.
        let mut assembler = BinaryAssembler::default();
        for (header, attachment, kind) in [
            (&ack_header, "090807", BinaryKind::Ack { ack_id: 0 }),
            (
                &push_header,
                "6869",
                BinaryKind::Event {
                    name: "binpush".into(),
                    ack_id: None,
                },
            ),
        ] {
            assert_eq!(assembler.accept_packet(frame(header)), Ok(None));
            let complete = assembler
                .accept_attachment(hex(attachment))
                .expect("assembled")
                .expect("complete");
            assert_eq!(complete.kind, kind);
            assert_eq!(&complete.header_frame(), header);
        }
        assert_eq!(
            encode_binary_event_json("/admin", "x", &["1"], 2, Some(9)),
            r#"452-/admin,9["x",1]"#
        );
    }

    #[test]
    fn assembler_passes_plain_packets_and_enforces_order() {
        let mut assembler = BinaryAssembler::default();
        assert_eq!(
            assembler.accept_packet(frame(r#"42["a"]"#)),
            Ok(Some(frame(r#"42["a"]"#)))
        );
        assert_eq!(
            assembler.accept_attachment(vec![1]),
            Err(AssemblyError::UnexpectedAttachment)
        );
        assert_eq!(
            assembler.accept_packet(frame(r#"452-["a",{"_placeholder":true,"num":1}]"#)),
            Ok(None)
        );
        assert_eq!(assembler.accept_attachment(vec![]), Ok(None));
        assert_eq!(
            assembler.accept_packet(frame(r#"42["b"]"#)),
            Err(AssemblyError::TextWhileAssembling)
        );
        let complete = assembler
            .accept_attachment(vec![2])
            .expect("assembled")
            .expect("complete");
        assert_eq!(complete.attachments, vec![vec![], vec![2]]);
        assert_eq!(
            AssemblyError::TextWhileAssembling.metric_reason(),
            "bad_packet"
        );
    }

    #[test]
    fn assembler_bounds_its_memory() {
        let header = r#"452-["a",{"_placeholder":true,"num":0}]"#;
        let header_bytes = header.len() - 5;
        let mut assembler = BinaryAssembler::new(header_bytes + 10);
        assert_eq!(assembler.accept_packet(frame(header)), Ok(None));
        assert_eq!(assembler.accept_attachment(vec![0; 6]), Ok(None));
        let error = assembler.accept_attachment(vec![0; 5]);
        assert_eq!(
            error,
            Err(AssemblyError::TooBig {
                limit: header_bytes + 10
            })
        );
        assert_eq!(
            AssemblyError::TooBig { limit: 1 }.metric_reason(),
            "too_big"
        );
        assert!(!assembler.is_assembling());
        let mut tiny = BinaryAssembler::new(4);
        assert!(matches!(
            tiny.accept_packet(frame(header)),
            Err(AssemblyError::TooBig { limit: 4 })
        ));
        let hand_built = SocketPacket {
            namespace: "/",
            kind: PacketKind::Binary(BinaryHeader {
                kind: BinaryKind::Ack { ack_id: 1 },
                attachments: 0,
                payload_json: "[]",
            }),
        };
        assert_eq!(
            BinaryAssembler::default().accept_packet(hand_built),
            Err(AssemblyError::NoAttachments)
        );
    }

    #[test]
    fn placeholders_are_checked() {
        assert!(matches!(
            refused(r#"51-["a",{"_placeholder":true,"num":1}]"#),
            PacketError::InvalidPlaceholder
        ));
        for bad in [
            r#"51-["a",{"_placeholder":true}]"#,
            r#"51-["a",{"_placeholder":true,"num":-1}]"#,
            r#"51-["a",{"_placeholder":true,"num":"0"}]"#,
            r#"51-["a",{"_placeholder":true,"num":0.5}]"#,
            r#"61-0[[{"x":{"_placeholder":true,"num":3}}]]"#,
        ] {
            assert!(
                matches!(refused(bad), PacketError::InvalidPlaceholder),
                "{bad}"
            );
        }
        // Not a placeholder unless `_placeholder` is exactly true; none needed at all.
        packet(r#"51-["a",{"_placeholder":1,"num":9}]"#);
        packet(r#"51-["a"]"#);
        // Placeholders in plain events are ordinary objects.
        packet(r#"2["a",{"_placeholder":true,"num":9}]"#);
    }

    #[test]
    fn attachment_counts() {
        let limits = DecodeLimits::default();
        let ten = format!(
            "510-[\"a\",{}]",
            (0..10).map(placeholder_json).collect::<Vec<_>>().join(",")
        );
        assert!(decode_packet(&ten, &limits).is_ok());
        // The spec's capture: 11 attachments refused.
        let eleven = refused(r#"511-["a"]"#);
        assert!(matches!(
            eleven,
            PacketError::TooManyAttachments { limit: 10 }
        ));
        assert_eq!(eleven.metric_reason(), "too_big");
        assert!(matches!(
            refused(r#"599999999999999999999999999999-["a"]"#),
            PacketError::TooManyAttachments { .. }
        ));
        for bad in [
            r#"5["a"]"#,
            r#"5-["a"]"#,
            r#"50-["a"]"#,
            r#"51["a"]"#,
            "5",
            r#"5x-["a"]"#,
            r#"6/admin,1-0[]"#,
        ] {
            let error = refused(bad);
            assert!(
                matches!(error, PacketError::InvalidAttachmentCount),
                "{bad}: {error}"
            );
            assert_eq!(error.metric_reason(), "bad_packet");
        }
        let strict = DecodeLimits {
            max_attachments: 1,
            ..DecodeLimits::default()
        };
        assert!(matches!(
            decode_packet(r#"52-["a"]"#, &strict),
            Err(PacketError::TooManyAttachments { limit: 1 })
        ));
        // A binary packet needs its payload and, for acks, its id.
        assert!(matches!(
            refused("51-"),
            PacketError::PayloadMismatch { .. }
        ));
        assert!(matches!(refused("61-[]"), PacketError::MissingAckId));
        assert!(matches!(
            refused(r#"51-[]"#),
            PacketError::PayloadMismatch { .. }
        ));
        assert!(matches!(
            refused(r#"51-["disconnect"]"#),
            PacketError::ReservedEventName(_)
        ));
    }

    // ----- hostile input -----

    #[test]
    fn spec_refusals_section_5() {
        assert!(matches!(refused("31-[1]"), PacketError::InvalidJson(_)));
        for shape in ["2[]", r#"2{"a":1}"#] {
            let error = refused(shape);
            assert!(
                matches!(
                    error,
                    PacketError::PayloadMismatch {
                        packet: "EVENT",
                        ..
                    }
                ),
                "{shape}: {error}"
            );
            assert_eq!(error.metric_reason(), "bad_packet");
        }
        for name in RESERVED_EVENT_NAMES {
            let text = format!("2[\"{name}\",1]");
            assert!(
                matches!(refused(&text), PacketError::ReservedEventName(found) if found == name)
            );
        }
        // Reserved only as the exact name.
        packet(r#"2["Connect"]"#);
    }

    #[test]
    fn malformed_types_and_payloads() {
        assert!(matches!(refused(""), PacketError::Empty));
        assert!(matches!(refused("7"), PacketError::UnknownType('7')));
        assert!(matches!(refused("9[]"), PacketError::UnknownType('9')));
        assert!(matches!(refused("x"), PacketError::UnknownType('x')));
        assert!(matches!(refused("é"), PacketError::UnknownType('é')));
        // Numbers and other non-strings are not event names.
        for bad in ["2[1]", "2[null]", "2[[\"a\"]]", "2", "2\"a\"", "2null"] {
            assert!(
                matches!(refused(bad), PacketError::PayloadMismatch { .. }),
                "{bad}"
            );
        }
        // CONNECT needs an object; DISCONNECT nothing; ACK an id and an array.
        for bad in [
            "0[]", "0null", "0\"a\"", "01", "1{}", "1[]", "3[]", "30", "30{}",
        ] {
            let error = refused(bad);
            assert!(
                matches!(
                    error,
                    PacketError::PayloadMismatch { .. }
                        | PacketError::UnexpectedAckId
                        | PacketError::MissingAckId
                ),
                "{bad}: {error}"
            );
        }
        assert!(matches!(refused("3[]"), PacketError::MissingAckId));
        assert!(matches!(refused("3 0[]"), PacketError::MissingAckId));
        assert!(matches!(refused("11"), PacketError::UnexpectedAckId));
        assert!(matches!(refused("01{}"), PacketError::UnexpectedAckId));
        assert!(matches!(refused("4"), PacketError::PayloadMismatch { .. }));
        assert!(matches!(
            refused("4[]"),
            PacketError::PayloadMismatch { .. }
        ));
        assert!(matches!(refused("41{}"), PacketError::UnexpectedAckId));
    }

    #[test]
    fn broken_json_and_trailing_garbage_are_bad_json() {
        for bad in [
            r#"2["a"]x"#,
            r#"2["a"]]"#,
            r#"2["a""#,
            r#"2["a",]"#,
            r#"0{"token":}"#,
            r#"0{"a":1}{"b":2}"#,
            "30[1]garbage",
            r#"2[1"#,
            "2abc",
            "0abc",
            r#"4{"message":"x""#,
        ] {
            let error = refused(bad);
            assert!(
                matches!(error, PacketError::InvalidJson(_)),
                "{bad}: {error}"
            );
            assert_eq!(error.metric_reason(), "bad_json");
        }
        // JSON whitespace is JSON (the real parser accepts it too); args come out trimmed.
        let (_, spaced) = event("42 [ \"a\" , 1 ,\n{ \"b\" : 2 } ] ");
        assert_eq!(spaced.name, "a");
        assert_eq!(spaced.args, vec!["1", "{ \"b\" : 2 }"]);
    }

    #[test]
    fn namespaces() {
        assert!(matches!(
            refused(r#"2/admin["x"]"#),
            PacketError::NamespaceWithoutComma
        ));
        assert!(matches!(
            refused("0/admin"),
            PacketError::NamespaceWithoutComma
        ));
        assert!(matches!(
            refused("1/admin"),
            PacketError::NamespaceWithoutComma
        ));
        assert_eq!(refused("1/admin").metric_reason(), "bad_packet");
        // `/,` is the main namespace spelled out, as the real parser reads it.
        assert_eq!(connect_auth("40/,").0, "/");
        // A namespace runs to the first comma; digits after it are the ack id.
        let (namespace, admin) = event(r#"42/v2,15["x"]"#);
        assert_eq!((namespace, admin.ack_id), ("/v2", Some(15)));
        // A comma inside the JSON does not rescue a missing one (the rest is no JSON).
        assert!(matches!(
            refused(r#"2/a["x","y"]"#),
            PacketError::InvalidJson(_)
        ));
    }

    #[test]
    fn ack_ids() {
        assert_eq!(
            event(r#"429007199254740991["a"]"#).1.ack_id,
            Some(JS_MAX_SAFE_INTEGER)
        );
        assert_eq!(event(r#"4200["a"]"#).1.ack_id, Some(0));
        for overflow in [
            r#"29007199254740992["a"]"#,
            r#"218446744073709551616["a"]"#,
            r#"3999999999999999999999999999999999[]"#,
        ] {
            let error = refused(overflow);
            assert!(matches!(error, PacketError::AckIdOverflow), "{overflow}");
            assert_eq!(error.metric_reason(), "bad_packet");
        }
    }

    #[test]
    fn nesting_depth() {
        let limits = DecodeLimits::default();
        let at_limit = format!("2[\"a\",{}]", nested(DEFAULT_MAX_JSON_DEPTH - 1));
        assert!(decode_packet(&at_limit, &limits).is_ok());
        let too_deep = format!("2[\"a\",{}]", nested(DEFAULT_MAX_JSON_DEPTH));
        let error = refused(&too_deep);
        assert!(matches!(error, PacketError::TooDeep { limit: 64 }));
        assert_eq!(error.metric_reason(), "bad_json");
        // Unterminated megabyte of brackets: refused by the pre-scan, no stack used.
        let hostile = format!("2{}", "[".repeat(1_000_000));
        assert!(matches!(refused(&hostile), PacketError::TooDeep { .. }));
        let objects = format!("0{}", r#"{"a":"#.repeat(100));
        assert!(matches!(refused(&objects), PacketError::TooDeep { .. }));
        // Brackets inside strings, escaped quotes included, do not count.
        let in_string = format!(r#"2["a","\"{}"]"#, "[".repeat(500));
        assert!(decode_packet(&in_string, &limits).is_ok());
        // A configured limit above serde_json's ceiling is reported as ours.
        let lax = DecodeLimits {
            max_json_depth: 10_000,
            ..DecodeLimits::default()
        };
        let deep = format!("2[\"a\",{}]", nested(200));
        assert!(matches!(
            decode_packet(&deep, &lax),
            Err(PacketError::TooDeep { limit: 127 })
        ));
        let within = format!("2[\"a\",{}]", nested(126));
        assert!(decode_packet(&within, &lax).is_ok());
    }

    // ----- channel events -----

    fn channel_request(text: &str) -> Option<Result<ChannelRequest<'_>, ChannelRequestError>> {
        let (_, event) = event(text);
        // Re-borrow the args from the frame text, which outlives this call.
        let args: Vec<&str> = event.args.clone();
        ChannelRequest::from_event(&event.name, &args)
    }

    #[test]
    fn channel_requests() {
        assert_eq!(
            channel_request(r#"420["subscribe","room:1"]"#),
            Some(Ok(ChannelRequest::Subscribe {
                channel: "room:1".into()
            }))
        );
        assert_eq!(
            channel_request(r#"421["unsubscribe","room:1"]"#),
            Some(Ok(ChannelRequest::Unsubscribe {
                channel: "room:1".into()
            }))
        );
        assert_eq!(
            channel_request(
                r#"422["publish",{"channel":"room:1","data":{"text":"hi","n":[1,2]}}]"#
            ),
            Some(Ok(ChannelRequest::Publish {
                channel: "room:1".into(),
                data_json: Some(r#"{"text":"hi","n":[1,2]}"#)
            }))
        );
        assert_eq!(
            channel_request(r#"42["publish",{"data":null,"channel":"a\"b"}]"#),
            Some(Ok(ChannelRequest::Publish {
                channel: "a\"b".into(),
                data_json: Some("null")
            }))
        );
        assert_eq!(
            channel_request(r#"42["publish",{"channel":"x","extra":1}]"#),
            Some(Ok(ChannelRequest::Publish {
                channel: "x".into(),
                data_json: None
            }))
        );
        assert_eq!(channel_request(r#"42["chat","hi"]"#), None);
        for (text, error) in [
            (
                r#"42["subscribe"]"#,
                ChannelRequestError::SubscribeChannelMalformed,
            ),
            (
                r#"42["subscribe",5]"#,
                ChannelRequestError::SubscribeChannelMalformed,
            ),
            (
                r#"42["unsubscribe",{}]"#,
                ChannelRequestError::UnsubscribeChannelMalformed,
            ),
            (
                r#"42["publish","room"]"#,
                ChannelRequestError::PublishChannelMalformed,
            ),
            (
                r#"42["publish",{"channel":1}]"#,
                ChannelRequestError::PublishChannelMalformed,
            ),
            (
                r#"42["publish",{"data":1}]"#,
                ChannelRequestError::PublishChannelMalformed,
            ),
            (
                r#"42["publish"]"#,
                ChannelRequestError::PublishChannelMalformed,
            ),
        ] {
            assert_eq!(channel_request(text), Some(Err(error)), "{text}");
        }
        assert_eq!(
            ChannelRequestError::PublishChannelMalformed.message(),
            "Publish channel name was malformatted"
        );
    }

    #[test]
    fn channel_acks_and_deliveries() {
        assert_eq!(encode_channel_ack_ok("/", 0), r#"430[{"ok":true}]"#);
        let error = ChannelRequestError::SubscribeChannelMalformed;
        assert_eq!(
            encode_channel_ack_error("/", 3, INVALID_ACTION_ERROR, &error.message()),
            r#"433[{"error":{"name":"InvalidActionError","message":"Subscribe channel name was malformatted"}}]"#
        );
        assert_eq!(
            encode_channel_ack_error("/admin", 1, "ChannelForbiddenError", "no \"x\""),
            r#"43/admin,1[{"error":{"name":"ChannelForbiddenError","message":"no \"x\""}}]"#
        );
        assert_eq!(
            encode_publish_delivery("/", "room:1", Some(r#"{"text":"hi"}"#)),
            r#"42["publish",{"channel":"room:1","data":{"text":"hi"}}]"#
        );
        assert_eq!(
            encode_publish_delivery("/", "room:1", None),
            r#"42["publish",{"channel":"room:1"}]"#
        );
        assert_eq!(
            encode_deauthenticated("/", "SessionNotFoundError", "logged out"),
            r#"42["deauthenticated",{"name":"SessionNotFoundError","message":"logged out"}]"#
        );
    }

    #[test]
    fn publish_round_trips_byte_for_byte() {
        // What a client publishes is what subscribers get, even where re-serializing would differ.
        let inbound = r#"420["publish",{"channel":"news","data":{"z":1.50,"a":"\u00e9"}}]"#;
        let Some(Ok(ChannelRequest::Publish { channel, data_json })) = channel_request(inbound)
        else {
            panic!("not a publish");
        };
        assert_eq!(
            encode_publish_delivery("/", &channel, data_json),
            r#"42["publish",{"channel":"news","data":{"z":1.50,"a":"\u00e9"}}]"#
        );
    }

    #[test]
    fn binary_publish_is_relayed_with_its_attachment() {
        let inbound =
            r#"451-0["publish",{"channel":"files","data":{"_placeholder":true,"num":0}}]"#;
        let mut assembler = BinaryAssembler::default();
        assert_eq!(assembler.accept_packet(frame(inbound)), Ok(None));
        let complete = assembler
            .accept_attachment(vec![0xca, 0xfe])
            .expect("assembled")
            .expect("complete");
        let BinaryKind::Event { name, ack_id } = &complete.kind else {
            panic!("not an event");
        };
        assert_eq!((name.as_str(), *ack_id), ("publish", Some(0)));
        let args = complete.args().expect("args");
        let Some(Ok(ChannelRequest::Publish { channel, data_json })) =
            ChannelRequest::from_event(name, &args)
        else {
            panic!("not a publish");
        };
        let delivery = publish_delivery_json(&channel, data_json);
        assert_eq!(
            encode_binary_event_json(
                "/",
                event_name::PUBLISH,
                &[&delivery],
                complete.attachments.len(),
                None
            ),
            r#"451-["publish",{"channel":"files","data":{"_placeholder":true,"num":0}}]"#
        );
    }

    // ----- ids -----

    fn decode_id(id: &str) -> ([u8; 12], u32) {
        let bytes = decode_base64(id).expect("base64url");
        let random: [u8; 12] = bytes[..12].try_into().expect("15 bytes");
        let counter = u32::from_be_bytes([0, bytes[12], bytes[13], bytes[14]]);
        (random, counter)
    }

    #[test]
    fn ids_match_every_captured_id() {
        let captured = [
            ("OSL2wRbTLTRJsfMyAAAA", 0),
            ("nMMpkX7bRqiqhMhGAAAA", 0),
            ("7i0AITLWt7ElyoqqAAAA", 0),
            ("fHb9Ow1dc3yk_GjfAAAC", 2),
            ("f2MihHhabzy8kCq9AAAE", 4),
            ("be_xnFH8pTFEV5NjAAAE", 4),
            ("0MpmDRGnkz88MhJCAAAA", 0),
            ("dTh8uSALXZOGyMJhAAAA", 0),
        ];
        for (id, expected_counter) in captured {
            let (random, counter) = decode_id(id);
            assert_eq!(counter, expected_counter, "{id}");
            assert_eq!(session_id(random, counter), id);
        }
    }

    #[test]
    fn ids_use_the_low_three_counter_bytes() {
        let random = [0xff; 12];
        assert_eq!(session_id(random, 0x0100_0001), "________________AAAB");
        assert_eq!(session_id(random, 0x00ff_ffff), "____________________");
        assert_eq!(session_id([0; 12], 64), format!("{}AABA", "A".repeat(16)));
        let id = session_id([0xfb; 12], 12_345);
        assert_eq!(id.len(), 20);
        assert!(id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'));
    }
}
