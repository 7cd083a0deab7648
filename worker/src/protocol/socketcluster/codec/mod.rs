//! SocketCluster v2 wire codec (the protocol `socketcluster-client@20` speaks).
//!
//! Pure text in, text out: no I/O, so every rule of `shared/spec/socketcluster-protocol.md` can be
//! pinned by unit tests against the captured frames. Layout:
//! - `decode`: limits and decoding of one inbound text frame ([`decode_frame`], spec sections 2 and 10),
//! - `events`: typed views of the reserved client events with their validation ([`ClientEvent`], sections 4, 6, 8),
//! - `errors`: error objects as they travel on the wire ([`ErrorObject`], section 7),
//! - `encode`: encoders that build the exact text of every frame the server sends (sections 3, 4, 6, 8, 10),
//! - here: close codes ([`close_code`], section 9) and socket ids ([`socket_id`], section 4.2).
//!
//! Outbound frames are written field by field (not through `serde_json::Value` maps, which sort keys)
//! so they come out in the order the Node server emits, byte for byte.

mod decode;
mod encode;
mod errors;
mod events;
#[cfg(test)]
mod tests;

pub use decode::*;
pub use encode::*;
pub use errors::*;
pub use events::*;

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
