//! Outbound frames, byte-compatible with the real server.

use serde_json::Value;
use std::fmt::Write as _;

use super::*;
use crate::json_text::push_json_string;

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
pub(super) fn is_json_value(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// Writes one JSON object key by key, in the order called: the only way to get the Node server's
/// field order, since `serde_json::Value` maps sort their keys.
pub(super) struct JsonObject<'o> {
    out: &'o mut String,
    has_fields: bool,
}

impl<'o> JsonObject<'o> {
    pub(super) fn open(out: &'o mut String) -> Self {
        out.push('{');
        Self {
            out,
            has_fields: false,
        }
    }

    pub(super) fn key(&mut self, key: &str) {
        if self.has_fields {
            self.out.push(',');
        }
        self.has_fields = true;
        push_json_string(self.out, key);
        self.out.push(':');
    }

    pub(super) fn string(&mut self, key: &str, value: &str) {
        self.key(key);
        push_json_string(self.out, value);
    }

    pub(super) fn number(&mut self, key: &str, value: u64) {
        self.key(key);
        // Writing into a String cannot fail.
        let _ = write!(self.out, "{value}");
    }

    pub(super) fn boolean(&mut self, key: &str, value: bool) {
        self.raw(key, if value { "true" } else { "false" });
    }

    pub(super) fn value(&mut self, key: &str, value: &Value) {
        self.key(key);
        // `Value`'s Display is compact JSON and cannot fail: its keys are strings and its
        // numbers finite; writing into a String cannot fail either.
        let _ = write!(self.out, "{value}");
    }

    pub(super) fn error(&mut self, key: &str, error: &ErrorObject) {
        self.key(key);
        error.write_json(self.out);
    }

    pub(super) fn raw(&mut self, key: &str, json: &str) {
        self.key(key);
        self.out.push_str(json);
    }

    pub(super) fn object(&mut self, key: &str) -> JsonObject<'_> {
        self.key(key);
        JsonObject::open(self.out)
    }

    pub(super) fn close(self) {
        self.out.push('}');
    }
}
