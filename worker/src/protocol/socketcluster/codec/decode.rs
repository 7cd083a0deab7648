//! Inbound frames classified as the real server does (spec 2).

use serde_json::{Map, Number, Value};

use super::*;
use crate::json_text::{check_json_shape, ShapeViolation};

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
pub(super) fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(flag) => *flag,
        Value::Number(number) => number.as_f64().is_some_and(|f| f != 0.0),
        Value::String(text) => !text.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}
