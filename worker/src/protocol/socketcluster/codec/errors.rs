//! SocketCluster's error objects, with the real server's names and wording.

use super::*;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

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

    pub(super) fn write_json(&self, out: &mut String) {
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
