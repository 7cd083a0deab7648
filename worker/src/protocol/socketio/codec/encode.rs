//! Outbound packets, byte-compatible with the real server.

use serde::de::IgnoredAny;
use std::fmt::Write as _;

use crate::json_text::push_json_string;

use super::*;

// ---------------------------------------------------------------------------------------------
// Encoders
// ---------------------------------------------------------------------------------------------

/// Whether `namespace` can be written as `<nsp>,`: it starts with `/` and holds no comma.
fn is_valid_namespace(namespace: &str) -> bool {
    namespace.starts_with('/') && !namespace.contains(',')
}

/// Debug check for the encoders that take JSON text from their caller.
pub(super) fn is_json_value(text: &str) -> bool {
    serde_json::from_str::<IgnoredAny>(text).is_ok()
}

/// `4<type>[<n>-][<nsp>,][<id>]`, with room for `payload_capacity` more bytes.
pub(super) fn start_frame(
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
pub(super) fn push_array(out: &mut String, event: Option<&str>, args_json: &[&str]) {
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

pub(super) fn args_len(args_json: &[&str]) -> usize {
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
