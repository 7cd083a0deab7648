//! The codec against captured frames of the real server.

use serde_json::Value;

use super::*;
use crate::json_text::push_json_string;
use serde_json::json;

fn packet(text: &str) -> SocketPacket<'_> {
    match decode_packet(text, &DecodeLimits::default()) {
        Ok(packet) => packet,
        Err(error) => panic!("{text:?} did not decode: {error}"),
    }
}

/// A whole captured text frame: Engine.IO message first, then the Socket.IO packet.
fn frame(text: &str) -> SocketPacket<'_> {
    match decode_engine_frame(text) {
        Ok(EnginePacket::Message(inner)) => packet(inner),
        other => panic!("{text:?} is not a message: {other:?}"),
    }
}

fn refused(text: &str) -> PacketError {
    match decode_packet(text, &DecodeLimits::default()) {
        Ok(packet) => panic!("{text:?} decoded: {packet:?}"),
        Err(error) => error,
    }
}

fn event(text: &str) -> (&str, EventPacket<'_>) {
    match frame(text) {
        SocketPacket {
            namespace,
            kind: PacketKind::Event(event),
        } => (namespace, event),
        other => panic!("{text:?} is not an event: {other:?}"),
    }
}

fn ack(text: &str) -> (&str, AckPacket<'_>) {
    match frame(text) {
        SocketPacket {
            namespace,
            kind: PacketKind::Ack(ack),
        } => (namespace, ack),
        other => panic!("{text:?} is not an ack: {other:?}"),
    }
}

fn connect_auth(text: &str) -> (&str, Option<Value>) {
    match frame(text) {
        SocketPacket {
            namespace,
            kind: PacketKind::Connect { auth },
        } => (namespace, auth.map(Value::Object)),
        other => panic!("{text:?} is not a connect: {other:?}"),
    }
}

fn binary_header(text: &str) -> (&str, BinaryHeader<'_>) {
    match frame(text) {
        SocketPacket {
            namespace,
            kind: PacketKind::Binary(header),
        } => (namespace, header),
        other => panic!("{text:?} is not binary: {other:?}"),
    }
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(&text[index..index + 2], 16).expect("hex"))
        .collect()
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

// ----- Engine.IO -----

#[test]
fn captured_open_packets_sections_3_4_6_11() {
    assert_eq!(
        encode_open(&OpenHandshake::with_defaults("OSL2wRbTLTRJsfMyAAAA")),
        r#"0{"sid":"OSL2wRbTLTRJsfMyAAAA","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#
    );
    let fast = OpenHandshake {
        sid: "nMMpkX7bRqiqhMhGAAAA",
        ping_interval_ms: 1000,
        ping_timeout_ms: 500,
        max_payload_bytes: 1_000_000,
        upgradable: false,
    };
    assert_eq!(
        encode_open(&fast),
        r#"0{"sid":"nMMpkX7bRqiqhMhGAAAA","upgrades":[],"pingInterval":1000,"pingTimeout":500,"maxPayload":1000000}"#
    );
    for sid in ["fHb9Ow1dc3yk_GjfAAAC", "f2MihHhabzy8kCq9AAAE"] {
        let open = encode_open(&OpenHandshake::with_defaults(sid));
        assert_eq!(
            open,
            format!(
                r#"0{{"sid":"{sid}","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}}"#
            )
        );
        // What a client-side tool reads back.
        let Ok(EnginePacket::Open(json)) = decode_engine_frame(&open) else {
            panic!("not an open packet");
        };
        let parsed: Value = serde_json::from_str(json).expect("JSON");
        assert_eq!(parsed["sid"], json!(sid));
        assert_eq!(parsed["upgrades"], json!([]));
    }
}

#[test]
fn heartbeat_frames_section_4() {
    assert_eq!(PING_FRAME, "2");
    assert_eq!(decode_engine_frame(PING_FRAME), Ok(EnginePacket::Ping("")));
    assert_eq!(decode_engine_frame("3"), Ok(EnginePacket::Pong("")));
    assert_eq!(decode_engine_frame(PONG_FRAME), Ok(EnginePacket::Pong("")));
    assert_eq!(
        decode_engine_frame("3probe"),
        Ok(EnginePacket::Pong("probe"))
    );
    assert_eq!(
        decode_engine_frame("2probe"),
        Ok(EnginePacket::Ping("probe"))
    );
}

#[test]
fn every_engine_type() {
    assert_eq!(decode_engine_frame(CLOSE_FRAME), Ok(EnginePacket::Close));
    assert_eq!(decode_engine_frame("1junk"), Ok(EnginePacket::Close));
    assert_eq!(decode_engine_frame("5"), Ok(EnginePacket::Upgrade));
    assert_eq!(decode_engine_frame(NOOP_FRAME), Ok(EnginePacket::Noop));
    assert_eq!(decode_engine_frame("4"), Ok(EnginePacket::Message("")));
    assert_eq!(
        decode_engine_frame(r#"42["a"]"#),
        Ok(EnginePacket::Message(r#"2["a"]"#))
    );
    assert_eq!(decode_engine_frame(""), Err(EngineError::Empty));
    assert_eq!(decode_engine_frame("7"), Err(EngineError::UnknownType('7')));
    assert_eq!(
        decode_engine_frame("x4"),
        Err(EngineError::UnknownType('x'))
    );
    assert_eq!(decode_engine_frame("é"), Err(EngineError::UnknownType('é')));
    assert_eq!(
        decode_engine_frame(" 2"),
        Err(EngineError::UnknownType(' '))
    );
    assert_eq!(EngineError::Empty.metric_reason(), "bad_packet");
}

#[test]
fn captured_base64_attachments_section_8() {
    assert_eq!(
        decode_engine_frame("bAQI="),
        Ok(EnginePacket::BinaryMessage(vec![1, 2]))
    );
    assert_eq!(
        decode_engine_frame("bBwc="),
        Ok(EnginePacket::BinaryMessage(vec![7, 7]))
    );
    assert_eq!(encode_base64_message(&[1, 2]), "bAQI=");
    assert_eq!(encode_base64_message(&[7, 7]), "bBwc=");
}

#[test]
fn base64_round_trips_and_refusals() {
    for length in 0..=10 {
        let bytes: Vec<u8> = (0..length).map(|index| (index * 37 + 250) as u8).collect();
        let text = encode_base64_message(&bytes);
        assert_eq!(text.len() % 4, 1, "{text}");
        assert_eq!(
            decode_engine_frame(&text),
            Ok(EnginePacket::BinaryMessage(bytes.clone()))
        );
        // Unpadded and URL-safe spellings decode too.
        let loose = text
            .trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_");
        assert_eq!(
            decode_engine_frame(&loose),
            Ok(EnginePacket::BinaryMessage(bytes))
        );
    }
    assert_eq!(encode_base64_message(&[0xfb, 0xff]), "b+/8=");
    assert_eq!(
        decode_engine_frame("b"),
        Ok(EnginePacket::BinaryMessage(vec![]))
    );
    for bad in ["bA", "bAQI==", "bAQ=I", "bAQ I", "bA===", "bAQ==="] {
        assert_eq!(
            decode_engine_frame(bad),
            Err(EngineError::InvalidBase64),
            "{bad}"
        );
    }
}

#[test]
fn heartbeat_limits() {
    assert!(heartbeat_fits_client_timer(
        DEFAULT_PING_INTERVAL_MS,
        DEFAULT_PING_TIMEOUT_MS
    ));
    assert!(!heartbeat_fits_client_timer(0, 20_000));
    assert!(!heartbeat_fits_client_timer(25_000, 0));
    assert!(!heartbeat_fits_client_timer(2_000_000_000, 147_483_647));
    assert!(heartbeat_fits_client_timer(2_000_000_000, 147_483_646));
    assert!(!heartbeat_fits_client_timer(u32::MAX, u32::MAX));
}

// ----- Socket.IO: captured client frames -----

#[test]
fn captured_connects_section_6() {
    assert_eq!(connect_auth("40"), ("/", None));
    assert_eq!(
        connect_auth(r#"40{"token":"good"}"#),
        ("/", Some(json!({"token": "good"})))
    );
    assert_eq!(connect_auth("40/admin,"), ("/admin", None));
    assert_eq!(
        connect_auth(r#"40/admin,{"role":"admin"}"#),
        ("/admin", Some(json!({"role": "admin"})))
    );
    assert_eq!(
        connect_auth(r#"40{"token":"bad"}"#),
        ("/", Some(json!({"token": "bad"})))
    );
    assert_eq!(
        connect_auth(r#"40{"token":"nodata"}"#),
        ("/", Some(json!({"token": "nodata"})))
    );
    assert_eq!(
        connect_auth(r#"40/admin,{"role":"guest"}"#),
        ("/admin", Some(json!({"role": "guest"})))
    );
    assert_eq!(
        connect_auth(r#"40/nope,{"token":"good"}"#),
        ("/nope", Some(json!({"token": "good"})))
    );
}

#[test]
fn captured_client_events_and_acks_section_7() {
    let (namespace, echo) = event(r#"420["echo","a",2,{"x":null}]"#);
    assert_eq!(namespace, "/");
    assert_eq!(
        echo,
        EventPacket {
            ack_id: Some(0),
            name: "echo".into(),
            args: vec![r#""a""#, "2", r#"{"x":null}"#],
        }
    );
    let (_, callback) = event(r#"421["echo","cb-style"]"#);
    assert_eq!(callback.ack_id, Some(1));
    assert_eq!(callback.args, vec![r#""cb-style""#]);
    let (_, no_ack) = event(r#"42["noack",{"n":1}]"#);
    assert_eq!(
        no_ack,
        EventPacket {
            ack_id: None,
            name: "noack".into(),
            args: vec![r#"{"n":1}"#],
        }
    );
    let (_, early) = event(r#"42["early",1]"#);
    assert_eq!((early.name.as_str(), early.args), ("early", vec!["1"]));
    let (_, askme) = event(r#"42["askme"]"#);
    assert_eq!((askme.name.as_str(), askme.args.len()), ("askme", 0));
    assert_eq!(
        ack("430[42]"),
        (
            "/",
            AckPacket {
                ack_id: 0,
                args: vec!["42"]
            }
        )
    );
    let (namespace, admin) = event(r#"42/admin,0["ping-admin"]"#);
    assert_eq!(
        (namespace, admin.ack_id, admin.name.as_str()),
        ("/admin", Some(0), "ping-admin")
    );
}

#[test]
fn captured_disconnects_section_9() {
    for (text, namespace) in [("41", "/"), ("41/admin,", "/admin")] {
        assert_eq!(
            frame(text),
            SocketPacket {
                namespace,
                kind: PacketKind::Disconnect
            }
        );
        assert_eq!(encode_disconnect(namespace), text);
    }
    assert_eq!(encode_disconnect(MAIN_NAMESPACE), DISCONNECT_FRAME);
    assert_eq!(encode_disconnect("/nsp"), "41/nsp,");
}

#[test]
fn echo_round_trip_reproduces_the_captured_ack() {
    // The captured server echoes the args back inside {"got": [...]} plus "second".
    for (inbound, expected) in [
        (
            r#"420["echo","a",2,{"x":null}]"#,
            r#"430[{"got":["a",2,{"x":null}]},"second"]"#,
        ),
        (
            r#"421["echo","cb-style"]"#,
            r#"431[{"got":["cb-style"]},"second"]"#,
        ),
    ] {
        let (namespace, echo) = event(inbound);
        let got = format!("{{\"got\":[{}]}}", echo.args.join(","));
        let ack_id = echo.ack_id.expect("ack id");
        assert_eq!(
            encode_ack_json(namespace, ack_id, &[&got, r#""second""#]),
            expected
        );
    }
}

// ----- Socket.IO: captured server frames -----

#[test]
fn captured_connect_replies_section_6() {
    for (namespace, sid, expected) in [
        (
            "/",
            "0MpmDRGnkz88MhJCAAAA",
            r#"40{"sid":"0MpmDRGnkz88MhJCAAAA"}"#,
        ),
        (
            "/admin",
            "dTh8uSALXZOGyMJhAAAA",
            r#"40/admin,{"sid":"dTh8uSALXZOGyMJhAAAA"}"#,
        ),
        (
            "/",
            "7i0AITLWt7ElyoqqAAAA",
            r#"40{"sid":"7i0AITLWt7ElyoqqAAAA"}"#,
        ),
        (
            "/",
            "be_xnFH8pTFEV5NjAAAE",
            r#"40{"sid":"be_xnFH8pTFEV5NjAAAE"}"#,
        ),
    ] {
        let encoded = encode_connect_ok(namespace, sid);
        assert_eq!(encoded, expected);
        assert_eq!(
            connect_auth(&encoded),
            (namespace, Some(json!({ "sid": sid })))
        );
    }
}

#[test]
fn captured_connect_errors_section_6_2() {
    let cases = [
        (
            "/",
            "unauthorized",
            Some(r#"{"reason":"bad token","code":401}"#),
            r#"44{"message":"unauthorized","data":{"reason":"bad token","code":401}}"#,
        ),
        ("/", "unauthorized", None, r#"44{"message":"unauthorized"}"#),
        (
            "/admin",
            "admins only",
            Some(r#"{"required":"admin"}"#),
            r#"44/admin,{"message":"admins only","data":{"required":"admin"}}"#,
        ),
        (
            "/nope",
            INVALID_NAMESPACE_MESSAGE,
            None,
            r#"44/nope,{"message":"Invalid namespace"}"#,
        ),
    ];
    for (namespace, message, data, expected) in cases {
        let encoded = encode_connect_error(namespace, message, data);
        assert_eq!(encoded, expected);
        let decoded = frame(&encoded);
        assert_eq!(decoded.namespace, namespace);
        let PacketKind::ConnectError { payload } = decoded.kind else {
            panic!("not a connect error");
        };
        assert_eq!(payload["message"], json!(message));
    }
    assert!(matches!(
        frame(r#"44"just a string""#).kind,
        PacketKind::ConnectError {
            payload: Value::String(_)
        }
    ));
}

#[test]
fn auth_refusals_follow_interface() {
    let message = auth_refusal_message("SessionNotFoundError", "logged out");
    assert_eq!(
        encode_connect_error("/", &message, None),
        r#"44{"message":"SessionNotFoundError: logged out"}"#
    );
}

#[test]
fn captured_server_events_section_7() {
    // (namespace, event, args, ack id, captured frame)
    type Case<'a> = (&'a str, &'a str, &'a [&'a str], Option<u64>, &'a str);
    let cases: [Case<'_>; 3] = [
        (
            "/",
            "plain",
            &[r#""hello""#, "1", r#"{"a":[true,null]}"#],
            None,
            r#"42["plain","hello",1,{"a":[true,null]}]"#,
        ),
        (
            "/",
            "question",
            &[r#""what is 6*7?""#],
            Some(0),
            r#"420["question","what is 6*7?"]"#,
        ),
        (
            "/admin",
            "ping-admin",
            &[],
            Some(0),
            r#"42/admin,0["ping-admin"]"#,
        ),
    ];
    for (namespace, name, args, ack_id, expected) in cases {
        let encoded = encode_event_json(namespace, name, args, ack_id);
        assert_eq!(encoded, expected);
        let (decoded_namespace, decoded) = event(&encoded);
        assert_eq!(decoded_namespace, namespace);
        assert_eq!(decoded.name, name);
        assert_eq!(decoded.args, args);
        assert_eq!(decoded.ack_id, ack_id);
    }
    assert_eq!(
        encode_ack_json("/admin", 0, &[r#""pong-admin""#]),
        r#"43/admin,0["pong-admin"]"#
    );
    assert_eq!(
        ack(r#"43/admin,0["pong-admin"]"#),
        (
            "/admin",
            AckPacket {
                ack_id: 0,
                args: vec![r#""pong-admin""#]
            }
        )
    );
    assert_eq!(encode_ack_json("/", 7, &[]), "437[]");
    assert_eq!(ack("437[]").1.args.len(), 0);
}

#[test]
fn event_names_are_escaped() {
    let encoded = encode_event_json("/", "q\"\\\n\u{1}é", &["null"], Some(12));
    assert_eq!(encoded, r#"4212["q\"\\\n\u0001é",null]"#);
    assert_eq!(event(&encoded).1.name, "q\"\\\n\u{1}é");
    let mut every_ascii: String = (0u8..0x80).map(char::from).collect();
    every_ascii.push_str("漢\u{2028}\u{1f600}");
    let mut ours = String::new();
    push_json_string(&mut ours, &every_ascii);
    assert_eq!(ours, Value::String(every_ascii).to_string());
}

// ----- binary -----

#[test]
fn captured_client_binary_event_section_8() {
    let header_text = r#"453-0["bin",{"_placeholder":true,"num":0},{"nested":{"_placeholder":true,"num":1},"list":[{"_placeholder":true,"num":2}]}]"#;
    let (namespace, header) = binary_header(header_text);
    assert_eq!(namespace, "/");
    assert_eq!(header.attachments, 3);
    assert_eq!(
        header.kind,
        BinaryKind::Event {
            name: "bin".into(),
            ack_id: Some(0)
        }
    );
    assert_eq!(header.payload_json, &header_text[5..]);

    let mut assembler = BinaryAssembler::default();
    assert_eq!(assembler.accept_packet(frame(header_text)), Ok(None));
    assert!(assembler.is_assembling());
    assert_eq!(assembler.accept_attachment(hex("010203")), Ok(None));
    assert_eq!(assembler.accept_attachment(hex("ff")), Ok(None));
    let complete = assembler
        .accept_attachment(hex("41"))
        .expect("assembled")
        .expect("complete");
    assert!(!assembler.is_assembling());
    assert_eq!(
        complete.attachments,
        vec![vec![1, 2, 3], vec![0xff], vec![0x41]]
    );
    assert_eq!(complete.namespace, "/");
    // Relaying the packet reproduces the captured header byte for byte.
    assert_eq!(complete.header_frame(), header_text);
    assert_eq!(
        complete.args().expect("args"),
        vec![
            r#"{"_placeholder":true,"num":0}"#,
            r#"{"nested":{"_placeholder":true,"num":1},"list":[{"_placeholder":true,"num":2}]}"#
        ]
    );
}

#[test]
fn captured_server_binary_frames_section_8() {
    let ack_header = encode_binary_ack_json("/", 0, &[&placeholder_json(0)], 1);
    assert_eq!(ack_header, r#"461-0[{"_placeholder":true,"num":0}]"#);
    let push_header = encode_binary_event_json(
        "/",
        "binpush",
        &[&format!("{{\"file\":{}}}", placeholder_json(0))],
        1,
        None,
    );
    assert_eq!(
        push_header,
        r#"451-["binpush",{"file":{"_placeholder":true,"num":0}}]"#
    );
    // Both decode and assemble with their captured attachments.
    let mut assembler = BinaryAssembler::default();
    for (header, attachment, kind) in [
        (&ack_header, "090807", BinaryKind::Ack { ack_id: 0 }),
        (
            &push_header,
            "6869",
            BinaryKind::Event {
                name: "binpush".into(),
                ack_id: None,
            },
        ),
    ] {
        assert_eq!(assembler.accept_packet(frame(header)), Ok(None));
        let complete = assembler
            .accept_attachment(hex(attachment))
            .expect("assembled")
            .expect("complete");
        assert_eq!(complete.kind, kind);
        assert_eq!(&complete.header_frame(), header);
    }
    assert_eq!(
        encode_binary_event_json("/admin", "x", &["1"], 2, Some(9)),
        r#"452-/admin,9["x",1]"#
    );
}

#[test]
fn assembler_passes_plain_packets_and_enforces_order() {
    let mut assembler = BinaryAssembler::default();
    assert_eq!(
        assembler.accept_packet(frame(r#"42["a"]"#)),
        Ok(Some(frame(r#"42["a"]"#)))
    );
    assert_eq!(
        assembler.accept_attachment(vec![1]),
        Err(AssemblyError::UnexpectedAttachment)
    );
    assert_eq!(
        assembler.accept_packet(frame(r#"452-["a",{"_placeholder":true,"num":1}]"#)),
        Ok(None)
    );
    assert_eq!(assembler.accept_attachment(vec![]), Ok(None));
    assert_eq!(
        assembler.accept_packet(frame(r#"42["b"]"#)),
        Err(AssemblyError::TextWhileAssembling)
    );
    let complete = assembler
        .accept_attachment(vec![2])
        .expect("assembled")
        .expect("complete");
    assert_eq!(complete.attachments, vec![vec![], vec![2]]);
    assert_eq!(
        AssemblyError::TextWhileAssembling.metric_reason(),
        "bad_packet"
    );
}

#[test]
fn assembler_bounds_its_memory() {
    let header = r#"452-["a",{"_placeholder":true,"num":0}]"#;
    let header_bytes = header.len() - 5;
    let mut assembler = BinaryAssembler::new(header_bytes + 10);
    assert_eq!(assembler.accept_packet(frame(header)), Ok(None));
    assert_eq!(assembler.accept_attachment(vec![0; 6]), Ok(None));
    let error = assembler.accept_attachment(vec![0; 5]);
    assert_eq!(
        error,
        Err(AssemblyError::TooBig {
            limit: header_bytes + 10
        })
    );
    assert_eq!(
        AssemblyError::TooBig { limit: 1 }.metric_reason(),
        "too_big"
    );
    assert!(!assembler.is_assembling());
    let mut tiny = BinaryAssembler::new(4);
    assert!(matches!(
        tiny.accept_packet(frame(header)),
        Err(AssemblyError::TooBig { limit: 4 })
    ));
    let hand_built = SocketPacket {
        namespace: "/",
        kind: PacketKind::Binary(BinaryHeader {
            kind: BinaryKind::Ack { ack_id: 1 },
            attachments: 0,
            payload_json: "[]",
        }),
    };
    assert_eq!(
        BinaryAssembler::default().accept_packet(hand_built),
        Err(AssemblyError::NoAttachments)
    );
}

#[test]
fn placeholders_are_checked() {
    assert!(matches!(
        refused(r#"51-["a",{"_placeholder":true,"num":1}]"#),
        PacketError::InvalidPlaceholder
    ));
    for bad in [
        r#"51-["a",{"_placeholder":true}]"#,
        r#"51-["a",{"_placeholder":true,"num":-1}]"#,
        r#"51-["a",{"_placeholder":true,"num":"0"}]"#,
        r#"51-["a",{"_placeholder":true,"num":0.5}]"#,
        r#"61-0[[{"x":{"_placeholder":true,"num":3}}]]"#,
    ] {
        assert!(
            matches!(refused(bad), PacketError::InvalidPlaceholder),
            "{bad}"
        );
    }
    // Not a placeholder unless `_placeholder` is exactly true; none needed at all.
    packet(r#"51-["a",{"_placeholder":1,"num":9}]"#);
    packet(r#"51-["a"]"#);
    // Placeholders in plain events are ordinary objects.
    packet(r#"2["a",{"_placeholder":true,"num":9}]"#);
}

#[test]
fn attachment_counts() {
    let limits = DecodeLimits::default();
    let ten = format!(
        "510-[\"a\",{}]",
        (0..10).map(placeholder_json).collect::<Vec<_>>().join(",")
    );
    assert!(decode_packet(&ten, &limits).is_ok());
    // The spec's capture: 11 attachments refused.
    let eleven = refused(r#"511-["a"]"#);
    assert!(matches!(
        eleven,
        PacketError::TooManyAttachments { limit: 10 }
    ));
    assert_eq!(eleven.metric_reason(), "too_big");
    assert!(matches!(
        refused(r#"599999999999999999999999999999-["a"]"#),
        PacketError::TooManyAttachments { .. }
    ));
    for bad in [
        r#"5["a"]"#,
        r#"5-["a"]"#,
        r#"50-["a"]"#,
        r#"51["a"]"#,
        "5",
        r#"5x-["a"]"#,
        r#"6/admin,1-0[]"#,
    ] {
        let error = refused(bad);
        assert!(
            matches!(error, PacketError::InvalidAttachmentCount),
            "{bad}: {error}"
        );
        assert_eq!(error.metric_reason(), "bad_packet");
    }
    let strict = DecodeLimits {
        max_attachments: 1,
        ..DecodeLimits::default()
    };
    assert!(matches!(
        decode_packet(r#"52-["a"]"#, &strict),
        Err(PacketError::TooManyAttachments { limit: 1 })
    ));
    // A binary packet needs its payload and, for acks, its id.
    assert!(matches!(
        refused("51-"),
        PacketError::PayloadMismatch { .. }
    ));
    assert!(matches!(refused("61-[]"), PacketError::MissingAckId));
    assert!(matches!(
        refused(r#"51-[]"#),
        PacketError::PayloadMismatch { .. }
    ));
    assert!(matches!(
        refused(r#"51-["disconnect"]"#),
        PacketError::ReservedEventName(_)
    ));
}

// ----- hostile input -----

#[test]
fn spec_refusals_section_5() {
    assert!(matches!(refused("31-[1]"), PacketError::InvalidJson(_)));
    for shape in ["2[]", r#"2{"a":1}"#] {
        let error = refused(shape);
        assert!(
            matches!(
                error,
                PacketError::PayloadMismatch {
                    packet: "EVENT",
                    ..
                }
            ),
            "{shape}: {error}"
        );
        assert_eq!(error.metric_reason(), "bad_packet");
    }
    for name in RESERVED_EVENT_NAMES {
        let text = format!("2[\"{name}\",1]");
        assert!(matches!(refused(&text), PacketError::ReservedEventName(found) if found == name));
    }
    // Reserved only as the exact name.
    packet(r#"2["Connect"]"#);
}

#[test]
fn malformed_types_and_payloads() {
    assert!(matches!(refused(""), PacketError::Empty));
    assert!(matches!(refused("7"), PacketError::UnknownType('7')));
    assert!(matches!(refused("9[]"), PacketError::UnknownType('9')));
    assert!(matches!(refused("x"), PacketError::UnknownType('x')));
    assert!(matches!(refused("é"), PacketError::UnknownType('é')));
    // Numbers and other non-strings are not event names.
    for bad in ["2[1]", "2[null]", "2[[\"a\"]]", "2", "2\"a\"", "2null"] {
        assert!(
            matches!(refused(bad), PacketError::PayloadMismatch { .. }),
            "{bad}"
        );
    }
    // CONNECT needs an object; DISCONNECT nothing; ACK an id and an array.
    for bad in [
        "0[]", "0null", "0\"a\"", "01", "1{}", "1[]", "3[]", "30", "30{}",
    ] {
        let error = refused(bad);
        assert!(
            matches!(
                error,
                PacketError::PayloadMismatch { .. }
                    | PacketError::UnexpectedAckId
                    | PacketError::MissingAckId
            ),
            "{bad}: {error}"
        );
    }
    assert!(matches!(refused("3[]"), PacketError::MissingAckId));
    assert!(matches!(refused("3 0[]"), PacketError::MissingAckId));
    assert!(matches!(refused("11"), PacketError::UnexpectedAckId));
    assert!(matches!(refused("01{}"), PacketError::UnexpectedAckId));
    assert!(matches!(refused("4"), PacketError::PayloadMismatch { .. }));
    assert!(matches!(
        refused("4[]"),
        PacketError::PayloadMismatch { .. }
    ));
    assert!(matches!(refused("41{}"), PacketError::UnexpectedAckId));
}

#[test]
fn broken_json_and_trailing_garbage_are_bad_json() {
    for bad in [
        r#"2["a"]x"#,
        r#"2["a"]]"#,
        r#"2["a""#,
        r#"2["a",]"#,
        r#"0{"token":}"#,
        r#"0{"a":1}{"b":2}"#,
        "30[1]garbage",
        r#"2[1"#,
        "2abc",
        "0abc",
        r#"4{"message":"x""#,
    ] {
        let error = refused(bad);
        assert!(
            matches!(error, PacketError::InvalidJson(_)),
            "{bad}: {error}"
        );
        assert_eq!(error.metric_reason(), "bad_json");
    }
    // JSON whitespace is JSON (the real parser accepts it too); args come out trimmed.
    let (_, spaced) = event("42 [ \"a\" , 1 ,\n{ \"b\" : 2 } ] ");
    assert_eq!(spaced.name, "a");
    assert_eq!(spaced.args, vec!["1", "{ \"b\" : 2 }"]);
}

/// From fuzz/socketio_packet (its first check was stricter than JSON): a number beyond f64 is
/// valid JSON (`JSON.parse` reads it as Infinity), so the argument is accepted and relayed as
/// sent, never refused or rewritten.
#[test]
fn numbers_beyond_f64_are_relayed_as_sent() {
    let (_, event) = event(r#"42["ublis]",{"cda_p":444e44440}]"#);
    assert_eq!(event.name, "ublis]");
    assert_eq!(event.args, vec![r#"{"cda_p":444e44440}"#]);
}

#[test]
fn namespaces() {
    assert!(matches!(
        refused(r#"2/admin["x"]"#),
        PacketError::NamespaceWithoutComma
    ));
    assert!(matches!(
        refused("0/admin"),
        PacketError::NamespaceWithoutComma
    ));
    assert!(matches!(
        refused("1/admin"),
        PacketError::NamespaceWithoutComma
    ));
    assert_eq!(refused("1/admin").metric_reason(), "bad_packet");
    // `/,` is the main namespace spelled out, as the real parser reads it.
    assert_eq!(connect_auth("40/,").0, "/");
    // A namespace runs to the first comma; digits after it are the ack id.
    let (namespace, admin) = event(r#"42/v2,15["x"]"#);
    assert_eq!((namespace, admin.ack_id), ("/v2", Some(15)));
    // A comma inside the JSON does not rescue a missing one (the rest is no JSON).
    assert!(matches!(
        refused(r#"2/a["x","y"]"#),
        PacketError::InvalidJson(_)
    ));
}

#[test]
fn ack_ids() {
    assert_eq!(
        event(r#"429007199254740991["a"]"#).1.ack_id,
        Some(JS_MAX_SAFE_INTEGER)
    );
    assert_eq!(event(r#"4200["a"]"#).1.ack_id, Some(0));
    for overflow in [
        r#"29007199254740992["a"]"#,
        r#"218446744073709551616["a"]"#,
        r#"3999999999999999999999999999999999[]"#,
    ] {
        let error = refused(overflow);
        assert!(matches!(error, PacketError::AckIdOverflow), "{overflow}");
        assert_eq!(error.metric_reason(), "bad_packet");
    }
}

#[test]
fn nesting_depth() {
    let limits = DecodeLimits::default();
    let at_limit = format!("2[\"a\",{}]", nested(DEFAULT_MAX_JSON_DEPTH - 1));
    assert!(decode_packet(&at_limit, &limits).is_ok());
    let too_deep = format!("2[\"a\",{}]", nested(DEFAULT_MAX_JSON_DEPTH));
    let error = refused(&too_deep);
    assert!(matches!(error, PacketError::TooDeep { limit: 64 }));
    assert_eq!(error.metric_reason(), "bad_json");
    // Unterminated megabyte of brackets: refused by the pre-scan, no stack used.
    let hostile = format!("2{}", "[".repeat(1_000_000));
    assert!(matches!(refused(&hostile), PacketError::TooDeep { .. }));
    let objects = format!("0{}", r#"{"a":"#.repeat(100));
    assert!(matches!(refused(&objects), PacketError::TooDeep { .. }));
    // Brackets inside strings, escaped quotes included, do not count.
    let in_string = format!(r#"2["a","\"{}"]"#, "[".repeat(500));
    assert!(decode_packet(&in_string, &limits).is_ok());
    // A configured limit above serde_json's ceiling is reported as ours.
    let lax = DecodeLimits {
        max_json_depth: 10_000,
        ..DecodeLimits::default()
    };
    let deep = format!("2[\"a\",{}]", nested(200));
    assert!(matches!(
        decode_packet(&deep, &lax),
        Err(PacketError::TooDeep { limit: 127 })
    ));
    let within = format!("2[\"a\",{}]", nested(126));
    assert!(decode_packet(&within, &lax).is_ok());
}

// ----- channel events -----

fn channel_request(text: &str) -> Option<Result<ChannelRequest<'_>, ChannelRequestError>> {
    let (_, event) = event(text);
    // Re-borrow the args from the frame text, which outlives this call.
    let args: Vec<&str> = event.args.clone();
    ChannelRequest::from_event(&event.name, &args)
}

#[test]
fn channel_requests() {
    assert_eq!(
        channel_request(r#"420["subscribe","room:1"]"#),
        Some(Ok(ChannelRequest::Subscribe {
            channel: "room:1".into()
        }))
    );
    assert_eq!(
        channel_request(r#"421["unsubscribe","room:1"]"#),
        Some(Ok(ChannelRequest::Unsubscribe {
            channel: "room:1".into()
        }))
    );
    assert_eq!(
        channel_request(r#"422["publish",{"channel":"room:1","data":{"text":"hi","n":[1,2]}}]"#),
        Some(Ok(ChannelRequest::Publish {
            channel: "room:1".into(),
            data_json: Some(r#"{"text":"hi","n":[1,2]}"#)
        }))
    );
    assert_eq!(
        channel_request(r#"42["publish",{"data":null,"channel":"a\"b"}]"#),
        Some(Ok(ChannelRequest::Publish {
            channel: "a\"b".into(),
            data_json: Some("null")
        }))
    );
    assert_eq!(
        channel_request(r#"42["publish",{"channel":"x","extra":1}]"#),
        Some(Ok(ChannelRequest::Publish {
            channel: "x".into(),
            data_json: None
        }))
    );
    assert_eq!(channel_request(r#"42["chat","hi"]"#), None);
    for (text, error) in [
        (
            r#"42["subscribe"]"#,
            ChannelRequestError::SubscribeChannelMalformed,
        ),
        (
            r#"42["subscribe",5]"#,
            ChannelRequestError::SubscribeChannelMalformed,
        ),
        (
            r#"42["unsubscribe",{}]"#,
            ChannelRequestError::UnsubscribeChannelMalformed,
        ),
        (
            r#"42["publish","room"]"#,
            ChannelRequestError::PublishChannelMalformed,
        ),
        (
            r#"42["publish",{"channel":1}]"#,
            ChannelRequestError::PublishChannelMalformed,
        ),
        (
            r#"42["publish",{"data":1}]"#,
            ChannelRequestError::PublishChannelMalformed,
        ),
        (
            r#"42["publish"]"#,
            ChannelRequestError::PublishChannelMalformed,
        ),
    ] {
        assert_eq!(channel_request(text), Some(Err(error)), "{text}");
    }
    assert_eq!(
        ChannelRequestError::PublishChannelMalformed.message(),
        "Publish channel name was malformatted"
    );
}

#[test]
fn channel_acks_and_deliveries() {
    assert_eq!(encode_channel_ack_ok("/", 0), r#"430[{"ok":true}]"#);
    let error = ChannelRequestError::SubscribeChannelMalformed;
    assert_eq!(
        encode_channel_ack_error("/", 3, INVALID_ACTION_ERROR, &error.message()),
        r#"433[{"error":{"name":"InvalidActionError","message":"Subscribe channel name was malformatted"}}]"#
    );
    assert_eq!(
        encode_channel_ack_error("/admin", 1, "ChannelForbiddenError", "no \"x\""),
        r#"43/admin,1[{"error":{"name":"ChannelForbiddenError","message":"no \"x\""}}]"#
    );
    assert_eq!(
        encode_publish_delivery("/", "room:1", Some(r#"{"text":"hi"}"#)),
        r#"42["publish",{"channel":"room:1","data":{"text":"hi"}}]"#
    );
    assert_eq!(
        encode_publish_delivery("/", "room:1", None),
        r#"42["publish",{"channel":"room:1"}]"#
    );
    assert_eq!(
        encode_deauthenticated("/", "SessionNotFoundError", "logged out"),
        r#"42["deauthenticated",{"name":"SessionNotFoundError","message":"logged out"}]"#
    );
}

#[test]
fn publish_round_trips_byte_for_byte() {
    // What a client publishes is what subscribers get, even where re-serializing would differ.
    let inbound = r#"420["publish",{"channel":"news","data":{"z":1.50,"a":"\u00e9"}}]"#;
    let Some(Ok(ChannelRequest::Publish { channel, data_json })) = channel_request(inbound) else {
        panic!("not a publish");
    };
    assert_eq!(
        encode_publish_delivery("/", &channel, data_json),
        r#"42["publish",{"channel":"news","data":{"z":1.50,"a":"\u00e9"}}]"#
    );
}

#[test]
fn binary_publish_is_relayed_with_its_attachment() {
    let inbound = r#"451-0["publish",{"channel":"files","data":{"_placeholder":true,"num":0}}]"#;
    let mut assembler = BinaryAssembler::default();
    assert_eq!(assembler.accept_packet(frame(inbound)), Ok(None));
    let complete = assembler
        .accept_attachment(vec![0xca, 0xfe])
        .expect("assembled")
        .expect("complete");
    let BinaryKind::Event { name, ack_id } = &complete.kind else {
        panic!("not an event");
    };
    assert_eq!((name.as_str(), *ack_id), ("publish", Some(0)));
    let args = complete.args().expect("args");
    let Some(Ok(ChannelRequest::Publish { channel, data_json })) =
        ChannelRequest::from_event(name, &args)
    else {
        panic!("not a publish");
    };
    let delivery = publish_delivery_json(&channel, data_json);
    assert_eq!(
        encode_binary_event_json(
            "/",
            event_name::PUBLISH,
            &[&delivery],
            complete.attachments.len(),
            None
        ),
        r#"451-["publish",{"channel":"files","data":{"_placeholder":true,"num":0}}]"#
    );
}

// ----- ids -----

fn decode_id(id: &str) -> ([u8; 12], u32) {
    let bytes = decode_base64(id).expect("base64url");
    let random: [u8; 12] = bytes[..12].try_into().expect("15 bytes");
    let counter = u32::from_be_bytes([0, bytes[12], bytes[13], bytes[14]]);
    (random, counter)
}

#[test]
fn ids_match_every_captured_id() {
    let captured = [
        ("OSL2wRbTLTRJsfMyAAAA", 0),
        ("nMMpkX7bRqiqhMhGAAAA", 0),
        ("7i0AITLWt7ElyoqqAAAA", 0),
        ("fHb9Ow1dc3yk_GjfAAAC", 2),
        ("f2MihHhabzy8kCq9AAAE", 4),
        ("be_xnFH8pTFEV5NjAAAE", 4),
        ("0MpmDRGnkz88MhJCAAAA", 0),
        ("dTh8uSALXZOGyMJhAAAA", 0),
    ];
    for (id, expected_counter) in captured {
        let (random, counter) = decode_id(id);
        assert_eq!(counter, expected_counter, "{id}");
        assert_eq!(session_id(random, counter), id);
    }
}

#[test]
fn ids_use_the_low_three_counter_bytes() {
    let random = [0xff; 12];
    assert_eq!(session_id(random, 0x0100_0001), "________________AAAB");
    assert_eq!(session_id(random, 0x00ff_ffff), "____________________");
    assert_eq!(session_id([0; 12], 64), format!("{}AABA", "A".repeat(16)));
    let id = session_id([0xfb; 12], 12_345);
    assert_eq!(id.len(), 20);
    assert!(id
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'));
}
