//! Engine.IO frames over a WebSocket: the packet types and the open handshake.

use std::fmt::Write as _;

use crate::json_text::push_json_string;

use super::*;

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
    /// A long-polling session offers the upgrade to `websocket`; a
    /// WebSocket session offers none.
    pub upgradable: bool,
}

impl<'a> OpenHandshake<'a> {
    /// The real server's defaults, so tests and simple setups need only the sid.
    pub fn with_defaults(sid: &'a str) -> Self {
        Self {
            sid,
            ping_interval_ms: DEFAULT_PING_INTERVAL_MS,
            ping_timeout_ms: DEFAULT_PING_TIMEOUT_MS,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            upgradable: false,
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
    let upgrades = if open.upgradable {
        "[\"websocket\"]"
    } else {
        "[]"
    };
    let _ = write!(
        out,
        ",\"upgrades\":{upgrades},\"pingInterval\":{},\"pingTimeout\":{},\"maxPayload\":{}}}",
        open.ping_interval_ms, open.ping_timeout_ms, open.max_payload_bytes
    );
    out
}
