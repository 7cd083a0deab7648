//! JSON text written by hand on the hot path.
//!
//! The protocol encoders build each frame as one `String` in the exact key
//! order the real Node servers emit, without a `serde_json::Value` detour;
//! this is the one string-escaping routine they all share.

use std::fmt::Write as _;

/// Appends `text` as a JSON string literal, escaping exactly what `JSON.stringify` and serde_json
/// escape: `"`, `\`, and control characters (short forms where JSON has them).
pub fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for character in text.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            control if u32::from(control) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(control));
            }
            other => out.push(other),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_serde_json() {
        let every_ascii: String = (0u8..128)
            .map(char::from)
            .chain("é\u{2028}😀".chars())
            .collect();
        let mut ours = String::new();
        push_json_string(&mut ours, &every_ascii);
        assert_eq!(ours, serde_json::to_string(&every_ascii).unwrap());
    }
}
