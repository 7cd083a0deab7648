//! The channel events sockhive gives meaning to (`subscribe`, `unsubscribe`, `publish`).

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::json_text::push_json_string;

use super::*;

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
