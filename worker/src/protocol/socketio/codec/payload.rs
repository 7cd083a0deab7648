//! Engine.IO v4 long-polling payloads: the packets of one `GET` answer or
//! one `POST` body, separated by the record separator `\x1e`, binary ones as
//! `b` + base64 (what engine.io-parser 5 writes and reads).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use tokio_tungstenite::tungstenite::Message;

/// Separates the packets of a payload.
pub const PACKET_SEPARATOR: char = '\x1e';

/// Why a posted payload is refused (Engine.IO's `Bad request`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// No packet at all.
    #[error("empty payload")]
    Empty,
    /// The body is not UTF-8 text.
    #[error("the payload is not UTF-8 text")]
    NotText,
    /// An empty packet between separators.
    #[error("an empty packet in the payload")]
    EmptyPacket,
    /// A `b` packet whose base64 does not decode.
    #[error("a binary packet is not valid base64")]
    BadBase64,
}

/// The packets of a posted body, in order: text packets as text frames,
/// `b` packets decoded to binary frames.
pub fn decode_payload(body: &[u8]) -> Result<Vec<Message>, PayloadError> {
    if body.is_empty() {
        return Err(PayloadError::Empty);
    }
    let text = std::str::from_utf8(body).map_err(|_| PayloadError::NotText)?;
    text.split(PACKET_SEPARATOR)
        .map(|packet| match packet.strip_prefix('b') {
            _ if packet.is_empty() => Err(PayloadError::EmptyPacket),
            Some(encoded) => STANDARD
                .decode(encoded)
                .map(|bytes| Message::Binary(bytes.into()))
                .map_err(|_| PayloadError::BadBase64),
            None => Ok(Message::Text(packet.to_owned().into())),
        })
        .collect()
}

/// One `GET` answer for `frames`; frames that are not text or binary are
/// not Engine.IO packets and are left out.
pub fn encode_payload(frames: &[Message]) -> String {
    let mut out = String::with_capacity(
        frames
            .iter()
            .map(|f| match f {
                Message::Text(text) => text.len() + 1,
                Message::Binary(bytes) => bytes.len() * 4 / 3 + 6,
                _ => 0,
            })
            .sum(),
    );
    for frame in frames {
        let start = out.len();
        match frame {
            Message::Text(text) => out.push_str(text),
            Message::Binary(bytes) => {
                out.push('b');
                STANDARD.encode_string(bytes, &mut out);
            }
            _ => continue,
        }
        if start > 0 {
            out.insert(start, PACKET_SEPARATOR);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_what_engine_io_parser_writes() {
        // engine.io-parser 5's own example: "4hello\x1ebAQID".
        let frames = vec![
            Message::Text("4hello".into()),
            Message::Binary(vec![1u8, 2, 3].into()),
        ];
        assert_eq!(encode_payload(&frames), "4hello\x1ebAQID");
        assert_eq!(decode_payload(b"4hello\x1ebAQID").unwrap(), frames);
        assert_eq!(encode_payload(&[Message::Text("2".into())]), "2");
        assert_eq!(encode_payload(&[]), "");
        assert_eq!(
            decode_payload("4€€€".as_bytes()).unwrap(),
            vec![Message::Text("4€€€".into())]
        );
    }

    #[test]
    fn broken_payloads_are_refused_with_what_is_wrong() {
        assert_eq!(decode_payload(b""), Err(PayloadError::Empty));
        assert_eq!(
            decode_payload(b"4a\x1e\x1e4b"),
            Err(PayloadError::EmptyPacket)
        );
        assert_eq!(decode_payload(b"b!!!"), Err(PayloadError::BadBase64));
        assert_eq!(decode_payload(&[0x34, 0xff]), Err(PayloadError::NotText));
    }
}
