//! The reserved client events, validated into their typed form.

use super::*;
use serde_json::Value;

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
