//! Engine.IO long-polling payloads (a `POST` body): `decode_payload`, and
//! for every body it accepts, `encode_payload` of the result must decode to
//! the same frames (what the server answers a `GET` with is readable back).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockhive_worker::protocol::socketio::codec::{decode_payload, encode_payload};

fuzz_target!(|data: &[u8]| {
    let Ok(frames) = decode_payload(data) else {
        return;
    };
    let encoded = encode_payload(&frames);
    let again = decode_payload(encoded.as_bytes());
    assert_eq!(
        again.as_ref(),
        Ok(&frames),
        "payload {encoded:?} does not round-trip"
    );
});
