//! Binary data across protocols.
//!
//! Binary data crosses protocols in SocketCluster's own encoding of a Buffer,
//! `{"base64": true, "data": "<base64>"}`: a Socket.IO binary `publish` is
//! published that way (so SocketCluster subscribers get what a SocketCluster
//! client publishing a Buffer would send), and a channel message holding such
//! objects reaches Socket.IO subscribers as a BINARY_EVENT with the bytes as
//! attachments (see [`encode_channel_delivery`]).

use base64::Engine as _;
use serde_json::{json, Value};

use super::codec::{self, event_name, MAIN_NAMESPACE};

/// SocketCluster's encoding of a Buffer in JSON, which binary channel data travels as.
const BINARY_MARK: &str = "\"base64\":true";

/// The start of a delivery frame that carries attachments (see [`encode_channel_delivery`]);
/// plain deliveries start with `42`.
pub const BINARY_DELIVERY_PREFIX: &str = "45";

/// A binary `publish`'s data with each attachment placeholder replaced by
/// SocketCluster's Buffer encoding `{"base64": true, "data": ...}`, so the
/// message can travel the broker as JSON and every protocol can read it.
pub fn inline_attachments(data_json: Option<&str>, attachments: &[Vec<u8>]) -> String {
    let Some(data_json) = data_json else {
        return "null".into();
    };
    let Ok(mut data) = serde_json::from_str::<Value>(data_json) else {
        return data_json.to_string();
    };
    replace_placeholders(&mut data, attachments);
    data.to_string()
}

fn replace_placeholders(value: &mut Value, attachments: &[Vec<u8>]) {
    match value {
        Value::Object(fields) if fields.get("_placeholder") == Some(&Value::Bool(true)) => {
            let bytes = fields
                .get("num")
                .and_then(Value::as_u64)
                .and_then(|num| attachments.get(num as usize));
            // The decoder checked every placeholder against the attachment count.
            if let Some(bytes) = bytes {
                let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
                *value = json!({"base64": true, "data": encoded});
            }
        }
        Value::Object(fields) => fields
            .values_mut()
            .for_each(|field| replace_placeholders(field, attachments)),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| replace_placeholders(item, attachments)),
        _ => {}
    }
}

/// The frame a channel message is delivered to Socket.IO subscribers as;
/// built once per message and shared by every subscriber of a worker.
///
/// Hot path: plain data costs one substring scan more than the codec's
/// `encode_publish_delivery`. Data holding SocketCluster-encoded Buffers
/// (`{"base64": true, "data": "..."}`, at most the client's 10 attachments)
/// becomes a BINARY_EVENT: the header frame, then each attachment's base64 on
/// its own line, which the session splits into the frames it sends.
pub fn encode_channel_delivery(channel: &str, data_json: &str) -> String {
    if data_json.contains(BINARY_MARK) {
        if let Some(frame) = binary_delivery(channel, data_json) {
            return frame;
        }
    }
    codec::encode_publish_delivery(MAIN_NAMESPACE, channel, Some(data_json))
}

fn binary_delivery(channel: &str, data_json: &str) -> Option<String> {
    let mut data: Value = serde_json::from_str(data_json).ok()?;
    let mut attachments = Vec::new();
    extract_buffers(&mut data, &mut attachments);
    if attachments.is_empty() || attachments.len() > codec::DEFAULT_MAX_ATTACHMENTS {
        return None;
    }
    let delivery = codec::publish_delivery_json(channel, Some(&data.to_string()));
    let mut frame = codec::encode_binary_event_json(
        MAIN_NAMESPACE,
        event_name::PUBLISH,
        &[&delivery],
        attachments.len(),
        None,
    );
    for bytes in attachments {
        frame.push('\n');
        frame.push_str(&base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    Some(frame)
}

/// Replaces every `{"base64": true, "data": "<base64>"}` (exactly those keys)
/// with a placeholder, collecting the bytes in placeholder order.
fn extract_buffers(value: &mut Value, attachments: &mut Vec<Vec<u8>>) {
    match value {
        Value::Object(fields) => {
            let buffer = (fields.len() == 2 && fields.get("base64") == Some(&Value::Bool(true)))
                .then(|| fields.get("data").and_then(Value::as_str))
                .flatten()
                .and_then(|data| base64::engine::general_purpose::STANDARD.decode(data).ok());
            match buffer {
                Some(bytes) => {
                    *value = json!({"_placeholder": true, "num": attachments.len()});
                    attachments.push(bytes);
                }
                None => fields
                    .values_mut()
                    .for_each(|field| extract_buffers(field, attachments)),
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| extract_buffers(item, attachments)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_publish_becomes_socketcluster_buffers_and_back() {
        let attachments = vec![vec![1, 2, 3], vec![0xff]];
        let data = inline_attachments(
            Some(
                r#"{"a":{"_placeholder":true,"num":1},"list":[{"_placeholder":true,"num":0}],"n":1}"#,
            ),
            &attachments,
        );
        assert_eq!(
            data,
            r#"{"a":{"base64":true,"data":"/w=="},"list":[{"base64":true,"data":"AQID"}],"n":1}"#
        );
        let frame = encode_channel_delivery("room", &data);
        let mut parts = frame.split('\n');
        assert_eq!(
            parts.next(),
            Some(
                r#"452-["publish",{"channel":"room","data":{"a":{"_placeholder":true,"num":0},"list":[{"_placeholder":true,"num":1}],"n":1}}]"#
            )
        );
        assert_eq!(parts.collect::<Vec<_>>(), ["/w==", "AQID"]);
    }

    #[test]
    fn plain_data_and_lookalikes_stay_text_deliveries() {
        assert_eq!(
            encode_channel_delivery("room", r#"{"n":1}"#),
            r#"42["publish",{"channel":"room","data":{"n":1}}]"#
        );
        // Not base64, or more keys than a Buffer has: left as they are.
        for data in [
            r#"{"base64":true,"data":"not base64!"}"#,
            r#"{"base64":true,"data":"AQID","extra":1}"#,
        ] {
            let frame = encode_channel_delivery("c", data);
            assert!(frame.starts_with("42[") && !frame.contains('\n'), "{frame}");
        }
        // Beyond the client's 10 attachments: stays JSON.
        let many =
            serde_json::to_string(&vec![json!({"base64": true, "data": "AA=="}); 11]).unwrap();
        assert!(encode_channel_delivery("c", &many).starts_with("42["));
    }
}
