//! HTTP/1.1 request heads as the front door and the admin port read them:
//! `read_head` over the input delivered a few bytes at a time (the first
//! byte picks the head size limit, the next up to 4 bytes the read sizes,
//! until a `\n`), the accessors the routes use, then `read_body` on what
//! follows (Content-Length or chunked). Also every line through
//! `parse_header_line` (the operator's `--user-lookup-header`) and
//! `percent_decode` (against the WHATWG form decoding it follows).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockhive_fuzz::{block_on, split_once, TrickleReader};
use sockhive_shared::http::{parse_header_line, percent_decode, read_body, read_head};

fuzz_target!(|data: &[u8]| {
    let Some((&limit, rest)) = data.split_first() else {
        return;
    };
    let (sizes, stream) = split_once(rest, b'\n');
    let sizes = &sizes[..sizes.len().min(4)];
    // 64..=16384 bytes: small limits are hit by fuzz-sized heads, large ones are not.
    let max_head = 64usize << (limit % 9);
    let mut reader = TrickleReader::new(stream, sizes);
    if let Ok((head, already)) = block_on(read_head(&mut reader, max_head)) {
        let _ = (head.header("host"), head.bearer_token());
        let _ = head.headers_named("cookie").count();
        let _ = head.header_has_token("connection", "upgrade");
        for name in ["EIO", "transport", "sid", "session_id", "b64"] {
            let _ = head.query_param(name);
        }
        let _ = block_on(read_body(&mut reader, &head, already, 4096));
    }
    let text = String::from_utf8_lossy(stream);
    for line in text.lines() {
        if let Ok((name, value)) = parse_header_line(line) {
            // What the check promises: nothing that could add a line to a request.
            assert!(!name.is_empty());
            assert!(!format!("{name}{value}").contains(['\r', '\n']));
        }
        assert_eq!(
            percent_decode(line),
            form_decode(line),
            "percent_decode({line:?})"
        );
    }
});

/// The WHATWG `application/x-www-form-urlencoded` percent-decoding that
/// `URLSearchParams` applies (and `percent_decode` promises): `+` is a space,
/// `%` followed by two hex digits is that byte, any other `%` stays itself.
fn form_decode(text: &str) -> String {
    let hex = |byte: u8| char::from(byte).to_digit(16);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = match (bytes[index], bytes.get(index + 1), bytes.get(index + 2)) {
            (b'%', Some(&high), Some(&low)) => hex(high).zip(hex(low)),
            _ => None,
        };
        match (escaped, bytes[index]) {
            (Some((high, low)), _) => {
                // Two hex digits: at most 0xff.
                out.push((high * 16 + low) as u8);
                index += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                index += 1;
            }
            (None, byte) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
