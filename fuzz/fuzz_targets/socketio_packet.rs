//! One Socket.IO packet (the text after Engine.IO's `4`): `decode_packet`
//! with the default and with tiny limits, then what the session does next
//! with an event: reading sockhive's channel requests out of its arguments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockhive_worker::protocol::socketio::codec::{
    decode_packet, ChannelRequest, DecodeLimits, PacketKind,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let tight = DecodeLimits {
        max_json_depth: 2,
        max_attachments: 1,
    };
    for limits in [DecodeLimits::default(), tight] {
        let Ok(packet) = decode_packet(text, &limits) else {
            continue;
        };
        match packet.kind {
            PacketKind::Event(event) => {
                let _ = ChannelRequest::from_event(&event.name, &event.args);
                // The arguments are borrowed slices of the JSON; each must be one JSON value.
                // Checked as raw JSON: numbers beyond f64 (`1e400`) are valid JSON that
                // `serde_json::Value` cannot hold, and are relayed as sent.
                for arg in &event.args {
                    let parsed = serde_json::from_str::<&serde_json::value::RawValue>(arg);
                    assert!(parsed.is_ok(), "argument {arg:?} is not JSON: {parsed:?}");
                }
            }
            PacketKind::Binary(header) => {
                assert!(header.attachments <= limits.max_attachments);
            }
            _ => {}
        }
    }
});
