//! A Socket.IO WebSocket session's inbound frames, in order: the input is
//! split at `\0` into frames; a UTF-8 piece is a text frame (Engine.IO
//! `decode_engine_frame`, then `decode_packet` for a `4` message), any other
//! piece a binary frame (an attachment). Binary packets go through the
//! `BinaryAssembler`, and every completed one through the relay helpers
//! (`args`, `header_frame`, `inline_attachments`) as the session uses them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sockhive_worker::protocol::socketio::binary::{encode_channel_delivery, inline_attachments};
use sockhive_worker::protocol::socketio::codec::{
    decode_engine_frame, decode_packet, event_name, BinaryAssembler, BinaryPacket, ChannelRequest,
    DecodeLimits, EnginePacket, PacketKind,
};

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits::default();
    // Small, so the size cap is reached by fuzz-sized inputs too.
    let mut assembler = BinaryAssembler::new(256);
    for frame in data.split(|&byte| byte == 0) {
        let completed = match std::str::from_utf8(frame) {
            Ok(text) => match decode_engine_frame(text) {
                Ok(EnginePacket::Message(message)) => {
                    let Ok(packet) = decode_packet(message, &limits) else {
                        continue;
                    };
                    match assembler.accept_packet(packet) {
                        Ok(Some(packet)) => {
                            if let PacketKind::Event(event) = packet.kind {
                                let _ = ChannelRequest::from_event(&event.name, &event.args);
                            }
                            None
                        }
                        _ => None,
                    }
                }
                Ok(EnginePacket::BinaryMessage(bytes)) => {
                    assembler.accept_attachment(bytes).ok().flatten()
                }
                _ => None,
            },
            Err(_) => assembler.accept_attachment(frame.to_vec()).ok().flatten(),
        };
        if let Some(packet) = completed {
            relay(&packet);
        }
    }
});

fn relay(packet: &BinaryPacket) {
    let header = packet.header_frame();
    // The relayed header must decode to the same packet again.
    let reparsed = decode_engine_frame(&header);
    let Ok(EnginePacket::Message(message)) = reparsed else {
        panic!("header frame {header:?} is not an Engine.IO message: {reparsed:?}");
    };
    let decoded = decode_packet(message, &DecodeLimits::default());
    assert!(
        decoded.is_ok(),
        "header frame {header:?} does not decode: {decoded:?}"
    );
    let Ok(args) = packet.args() else {
        return;
    };
    let data = args.first().copied();
    let inlined = inline_attachments(data, &packet.attachments);
    if let Ok(Some(ChannelRequest::Publish { channel, .. })) =
        ChannelRequest::from_event(event_name::PUBLISH, &args).transpose()
    {
        // What a worker sends its subscribers for this publish.
        let _ = encode_channel_delivery(&channel, &inlined);
    }
}
