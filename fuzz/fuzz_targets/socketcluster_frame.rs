//! SocketCluster inbound frames: `decode_frame` with the default limits and
//! with tiny ones (so the limit checks themselves are exercised), then the
//! typed reserved-event views of every decoded event packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockhive_worker::protocol::socketcluster::codec::{
    decode_frame, ClientEvent, DecodeLimits, InboundFrame, Packet,
};

fuzz_target!(|data: &[u8]| {
    // The WebSocket layer refuses text frames that are not UTF-8 (close
    // 1007) before the decoder runs; binary frames are decoded as text.
    let text = String::from_utf8_lossy(data);
    let tight = DecodeLimits {
        max_json_depth: 3,
        max_batch_packets: 2,
    };
    for limits in [DecodeLimits::default(), tight] {
        let Ok(frame) = decode_frame(&text, &limits) else {
            continue;
        };
        let packets = match frame {
            InboundFrame::Packet(packet) => vec![packet],
            InboundFrame::Batch(packets) => {
                assert!(packets.len() <= limits.max_batch_packets);
                packets
            }
            _ => Vec::new(),
        };
        for packet in packets {
            if let Packet::Event(event) = packet {
                if let Err(violation) = ClientEvent::from_packet(event) {
                    let _ = (violation.outcome(), violation.metric_reason());
                }
            }
        }
    }
});
