//! JSON text handled by hand on the hot path, shared by both protocol codecs.
//!
//! The encoders build each frame as one `String` in the exact key order the
//! real Node servers emit, without a `serde_json::Value` detour
//! ([`push_json_string`]); the decoders check a frame's shape in one pass
//! before serde_json allocates anything ([`check_json_shape`]).

use std::fmt::Write as _;

/// Appends `text` as a JSON string literal, escaping exactly what `JSON.stringify` and serde_json
/// escape: `"`, `\`, and control characters (short forms where JSON has them).
pub fn push_json_string(out: &mut String, text: &str) {
    out.reserve(text.len() + 2);
    out.push('"');
    // Runs that need no escape go in whole (a token, an id: the whole
    // text): the byte scan is cheap, a char-by-char push is not. Every byte
    // to escape is ASCII, so each run ends on a char boundary.
    let mut run_start = 0;
    for (index, byte) in text.bytes().enumerate() {
        if byte >= 0x20 && byte != b'"' && byte != b'\\' {
            continue;
        }
        out.push_str(&text[run_start..index]);
        run_start = index + 1;
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            control => {
                let _ = write!(out, "\\u{:04x}", control);
            }
        }
    }
    out.push_str(&text[run_start..]);
    out.push('"');
}

/// The deepest nesting serde_json parses (it refuses 128 levels itself).
pub const SERDE_JSON_DEPTH_CEILING: usize = 127;

/// What the pre-parse scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapeViolation {
    /// Nesting beyond the limit (the effective limit is given).
    TooDeep(usize),
    /// A top-level array with too many elements.
    TooManyElements,
}

/// Rejects too-deep nesting (and, when `max_top_commas` is given, a top-level
/// array with that many separators) before serde_json builds anything, so a
/// 1 MiB frame of `[[[[...` or `[0,0,0,...` costs one pass and no allocation.
///
/// For valid JSON the bracket count outside strings is the true nesting; for
/// invalid JSON it is at least what serde_json would reach before failing, so
/// the check never lets deeper input through.
pub fn check_json_shape(
    json: &str,
    max_depth: usize,
    max_top_commas: Option<usize>,
) -> Result<(), ShapeViolation> {
    let max_depth = max_depth.min(SERDE_JSON_DEPTH_CEILING);
    let count_commas = max_top_commas.is_some() && json.starts_with('[');
    let mut depth = 0usize;
    let mut top_level_commas = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for byte in json.bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return Err(ShapeViolation::TooDeep(max_depth));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 && count_commas => {
                top_level_commas += 1;
                if max_top_commas.is_some_and(|max| top_level_commas >= max) {
                    return Err(ShapeViolation::TooManyElements);
                }
            }
            _ => {}
        }
    }
    Ok(())
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
        // Escapes between multi-byte characters, at both ends, and none.
        for text in ["é\"😀\n", "\u{1}ü\\", "eyJhbGciOiJIUzI1NiJ9.e30.sig", ""] {
            let mut ours = String::from("[");
            push_json_string(&mut ours, text);
            assert_eq!(ours, format!("[{}", serde_json::to_string(text).unwrap()));
        }
    }
}
