//! Socket.IO v5 over Engine.IO v4 wire codec, WebSocket transport only (what
//! `socket.io-client@4.8` speaks with `transports: ['websocket']`).
//!
//! Pure text and bytes in, text out: no I/O, so every rule of `shared/spec/socketio-protocol.md`
//! can be pinned by unit tests against the captured frames. Layout:
//! - here: defaults, limits and reason strings (spec sections 3.1, 4, 5, 9, 12), ids
//!   ([`session_id`]) and the base64 that `b64=1` clients use for attachments,
//! - `engine`: Engine.IO frames, [`decode_engine_frame`] and the open packet (sections 3, 4),
//! - `packet`: Socket.IO packets, [`decode_packet`] with bounds for hostile input (section 5),
//! - `binary`: binary packets, placeholders and the [`BinaryAssembler`] (section 8),
//! - `encode`: encoders that build the exact text of every frame the server sends (sections 5–9),
//! - `channel_events`: sockhive's channel events (interface.md), [`ChannelRequest`] and its
//!   acks and deliveries,
//! - `payload`: long-polling payloads (`\x1e`-separated packets, binary as `b` + base64).
//!
//! Every encoder returns a whole WebSocket text frame, Engine.IO prefix included (`42[...]`).
//! Payload JSON is passed in as text the caller serialized once, so one frame can be built per
//! message and sent to many sockets.

mod binary;
mod channel_events;
mod encode;
mod engine;
mod packet;
mod payload;
#[cfg(test)]
mod tests;

pub use binary::*;
pub use channel_events::*;
pub use encode::*;
pub use engine::*;
pub use packet::*;
pub use payload::*;

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
pub(super) const JS_MAX_SAFE_INTEGER: u64 = 9_007_199_254_740_991;

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

pub(super) fn push_base64(out: &mut String, bytes: &[u8], alphabet: &[u8; 64], pad: bool) {
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
pub(super) fn decode_base64(text: &str) -> Option<Vec<u8>> {
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
