//! Socket.IO packets: decoding and validating what a client sends.

use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::json_text::{check_json_shape, ShapeViolation};

use super::*;

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
pub(super) enum PacketType {
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

pub(super) const EVENT_SHAPE: &str = "a non-empty array whose first element is a string event name";
pub(super) const ACK_SHAPE: &str = "an array";

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
pub(super) fn parse_array<'a>(
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
