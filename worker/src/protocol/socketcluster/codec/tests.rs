//! The codec against captured frames of the real server.

use serde_json::Value;

use super::*;
use crate::json_text::push_json_string;
use serde_json::json;

const TOKEN_ALICE: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VybmFtZSI6ImFsaWNlIiwicm9sZSI6InVzZXIiLCJpYXQiOjE3OTUzNTY3ODMsImV4cCI6MTc5NTQ0MzE4M30.j5W_-t_FCsnDCiggs5xSTnH7CTJT2Kj41Awdo09q-6A";
const TOKEN_MALLORY: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VybmFtZSI6Im1hbGxvcnkiLCJpYXQiOjE3OTUzNTY3ODQsImV4cCI6MTc5NTM1Njg4NH0.sS3ykdWMb9oinLlnz1vTBiL8XBSZK8VNXouq0M3dOjI";
const TOKEN_BOB: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VybmFtZSI6ImJvYiIsInJvbGUiOiJ1c2VyIiwiaWF0IjoxNzk1MzU2Nzg0LCJleHAiOjE3OTU0NDMxODR9.NIlAe-OWPZSt70zZB8cLS7GgOS4ApNx1eUJSJya_h2s";
const TOKEN_ACKED: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ1c2VybmFtZSI6ImFja2VkIiwiaWF0IjoxNzk1MzU2Nzg3LCJleHAiOjE3OTU0NDMxODd9.t_DPU7kOscjgtnFYTDXty2jtodhse-Zz-DuiG1uXy40";

fn decode(text: &str) -> InboundFrame<'_> {
    match decode_frame(text, &DecodeLimits::default()) {
        Ok(frame) => frame,
        Err(error) => panic!("{text:?} did not decode: {error}"),
    }
}

fn event(text: &str) -> EventPacket {
    match decode(text) {
        InboundFrame::Packet(Packet::Event(event)) => event,
        other => panic!("{text:?} is not an event: {other:?}"),
    }
}

fn client_event(text: &str) -> Result<ClientEvent, ProtocolViolation> {
    ClientEvent::from_packet(event(text))
}

fn app(event: &str, data: Option<Value>, cid: Option<u64>) -> ClientEvent {
    ClientEvent::App {
        event: event.to_owned(),
        data,
        cid,
    }
}

fn response(text: &str) -> ResponsePacket {
    match decode(text) {
        InboundFrame::Packet(Packet::Response(response)) => response,
        other => panic!("{text:?} is not a response: {other:?}"),
    }
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

// ----- decoding: captured client frames -----

#[test]
fn pings_and_pongs() {
    assert_eq!(decode(""), InboundFrame::Pong);
    assert_eq!(decode("#1"), InboundFrame::V1Ping);
    assert_eq!(decode("#2"), InboundFrame::V1Pong);
    assert_eq!(decode(" #2"), InboundFrame::Raw(" #2"));
}

#[test]
fn captured_rpcs_and_transmits_section_3() {
    assert_eq!(
        client_event(r#"{"event":"echo","data":{"a":1,"b":"two"},"cid":2}"#),
        Ok(app("echo", Some(json!({"a": 1, "b": "two"})), Some(2)))
    );
    assert_eq!(
        client_event(r#"{"event":"fail","data":{"x":1},"cid":3}"#),
        Ok(app("fail", Some(json!({"x": 1})), Some(3)))
    );
    assert_eq!(
        client_event(r#"{"event":"failplain","data":5,"cid":4}"#),
        Ok(app("failplain", Some(json!(5)), Some(4)))
    );
    assert_eq!(
        client_event(r#"{"event":"chat","data":{"text":"hi"}}"#),
        Ok(app("chat", Some(json!({"text": "hi"})), None))
    );
    // Section 2.4: binary values arrive as plain objects.
    assert_eq!(
        client_event(
            r#"{"event":"echo","data":{"buf":{"base64":true,"data":"AQID/w=="}},"cid":2}"#
        ),
        Ok(app(
            "echo",
            Some(json!({"buf": {"base64": true, "data": "AQID/w=="}})),
            Some(2)
        ))
    );
    assert_eq!(
        client_event(r#"{"event":"nodata"}"#),
        Ok(app("nodata", None, None))
    );
    assert_eq!(
        client_event(r#"{"event":"go","cid":2}"#),
        Ok(app("go", None, Some(2)))
    );
}

#[test]
fn captured_client_responses_section_3() {
    assert_eq!(
        response(r#"{"rid":1,"data":{"answer":42}}"#),
        ResponsePacket {
            rid: 1,
            outcome: ResponseOutcome::Success {
                data: Some(json!({"answer": 42}))
            }
        }
    );
    assert_eq!(
        response(r#"{"rid":2,"error":{"message":"client side failure","name":"ClientError"}}"#),
        ResponsePacket {
            rid: 2,
            outcome: ResponseOutcome::Failure {
                error: json!({"message": "client side failure", "name": "ClientError"})
            }
        }
    );
    // Section 8.3: the client's answer to a `#setAuthToken` invoke.
    assert_eq!(
        response(r#"{"rid":1}"#),
        ResponsePacket {
            rid: 1,
            outcome: ResponseOutcome::Success { data: None }
        }
    );
}

#[test]
fn captured_handshakes_section_4() {
    assert_eq!(
        client_event(r##"{"event":"#handshake","data":{"authToken":null},"cid":1}"##),
        Ok(ClientEvent::Handshake {
            auth_token: None,
            cid: 1
        })
    );
    for (token, cid) in [(TOKEN_ALICE, 4), (TOKEN_MALLORY, 1)] {
        let frame =
            format!(r##"{{"event":"#handshake","data":{{"authToken":"{token}"}},"cid":{cid}}}"##);
        assert_eq!(
            client_event(&frame),
            Ok(ClientEvent::Handshake {
                auth_token: Some(token.to_owned()),
                cid
            })
        );
    }
}

#[test]
fn captured_pubsub_section_6() {
    assert_eq!(
        client_event(r##"{"event":"#subscribe","data":{"channel":"news"},"cid":2}"##),
        Ok(ClientEvent::Subscribe {
            channel: "news".into(),
            wait_for_auth: false,
            data: None,
            cid: 2
        })
    );
    assert_eq!(
        client_event(
            r##"{"event":"#subscribe","data":{"channel":"private","data":{"foo":1}},"cid":5}"##
        ),
        Ok(ClientEvent::Subscribe {
            channel: "private".into(),
            wait_for_auth: false,
            data: Some(json!({"foo": 1})),
            cid: 5
        })
    );
    assert_eq!(
        client_event(
            r##"{"event":"#subscribe","data":{"channel":"needsauth","waitForAuth":true},"cid":2}"##
        ),
        Ok(ClientEvent::Subscribe {
            channel: "needsauth".into(),
            wait_for_auth: true,
            data: None,
            cid: 2
        })
    );
    assert_eq!(
        client_event(r##"{"event":"#unsubscribe","data":"news"}"##),
        Ok(ClientEvent::Unsubscribe {
            channel: "news".into(),
            cid: None
        })
    );
    assert_eq!(
        client_event(
            r##"{"event":"#publish","data":{"channel":"news","data":{"headline":"hello"}},"cid":2}"##
        ),
        Ok(ClientEvent::Publish {
            channel: "news".into(),
            data: Some(json!({"headline": "hello"})),
            cid: Some(2)
        })
    );
    assert_eq!(
        client_event(r##"{"event":"#publish","data":{"channel":"news","data":"plain string"}}"##),
        Ok(ClientEvent::Publish {
            channel: "news".into(),
            data: Some(json!("plain string")),
            cid: None
        })
    );
    assert_eq!(
        client_event(
            r##"{"event":"#publish","data":{"channel":"news","data":{"self":true}},"cid":3}"##
        ),
        Ok(ClientEvent::Publish {
            channel: "news".into(),
            data: Some(json!({"self": true})),
            cid: Some(3)
        })
    );
}

#[test]
fn captured_token_messages_section_8() {
    let frame = format!(r##"{{"event":"#authenticate","data":"{TOKEN_BOB}","cid":8}}"##);
    assert_eq!(
        client_event(&frame),
        Ok(ClientEvent::Authenticate {
            token: TOKEN_BOB.into(),
            cid: 8
        })
    );
    assert_eq!(
        client_event(r##"{"event":"#authenticate","data":"garbage.token.here","cid":9}"##),
        Ok(ClientEvent::Authenticate {
            token: "garbage.token.here".into(),
            cid: 9
        })
    );
    assert_eq!(
        client_event(r##"{"event":"#removeAuthToken"}"##),
        Ok(ClientEvent::RemoveAuthToken { cid: None })
    );
}

#[test]
fn captured_batch_section_10() {
    let frame = r#"[{"event":"chat","data":{"n":1}},{"event":"chat","data":{"n":2}},{"event":"echo","data":3,"cid":2}]"#;
    let expected = vec![
        Packet::Event(EventPacket {
            event: "chat".into(),
            data: Some(json!({"n": 1})),
            cid: None,
        }),
        Packet::Event(EventPacket {
            event: "chat".into(),
            data: Some(json!({"n": 2})),
            cid: None,
        }),
        Packet::Event(EventPacket {
            event: "echo".into(),
            data: Some(json!(3)),
            cid: Some(2),
        }),
    ];
    assert_eq!(decode(frame), InboundFrame::Batch(expected));
}

#[test]
fn captured_session_section_12() {
    assert_eq!(
        client_event(r#"{"event":"login","data":{"username":"alice"},"cid":2}"#),
        Ok(app("login", Some(json!({"username": "alice"})), Some(2)))
    );
    assert_eq!(
        client_event(r#"{"event":"whoami","cid":3}"#),
        Ok(app("whoami", None, Some(3)))
    );
    assert_eq!(
        client_event(r#"{"event":"logout","cid":6}"#),
        Ok(app("logout", None, Some(6)))
    );
}

// ----- decoding: classification edges -----

#[test]
fn whitespace_before_json_is_allowed_but_only_json_whitespace() {
    let event = event(" \t\r\n{\"event\":\"x\"}");
    assert_eq!(event.event, "x");
    let with_bom = "\u{feff}{\"event\":\"x\"}";
    assert_eq!(decode(with_bom), InboundFrame::Raw(with_bom));
    assert_eq!(decode("hello"), InboundFrame::Raw("hello"));
    assert_eq!(decode("  "), InboundFrame::Raw("  "));
}

#[test]
fn non_string_event_is_not_an_event() {
    assert_eq!(
        decode(r#"{"event": 5}"#),
        InboundFrame::Packet(Packet::Unrecognized(json!({"event": 5})))
    );
    // The rule falls through to `rid` when `event` is not a string.
    assert_eq!(
        decode(r#"{"event":5,"rid":3}"#),
        InboundFrame::Packet(Packet::Response(ResponsePacket {
            rid: 3,
            outcome: ResponseOutcome::Success { data: None }
        }))
    );
}

#[test]
fn non_numeric_rid_is_unrecognized() {
    assert_eq!(
        decode(r#"{"rid":"x"}"#),
        InboundFrame::Packet(Packet::Unrecognized(json!({"rid": "x"})))
    );
    assert_eq!(
        decode(r#"{"foo":1}"#),
        InboundFrame::Packet(Packet::Unrecognized(json!({"foo": 1})))
    );
}

#[test]
fn string_cid_is_a_transmit() {
    assert_eq!(event(r#"{"event":"a","cid":"7"}"#).cid, None);
    assert_eq!(event(r#"{"event":"a","cid":null}"#).cid, None);
}

#[test]
fn unusable_numeric_ids_are_malformed() {
    for cid in ["-1", "1.5", "1e300", "18446744073709551616"] {
        let frame = format!(r#"{{"event":"a","cid":{cid}}}"#);
        assert_eq!(
            decode(&frame),
            InboundFrame::Packet(Packet::Malformed(MalformedPacket::CallIdNotUnsigned {
                event: "a".into()
            })),
            "cid {cid}"
        );
    }
    assert_eq!(
        decode(r#"{"rid":-3,"data":1}"#),
        InboundFrame::Packet(Packet::Malformed(MalformedPacket::ResponseIdNotUnsigned))
    );
}

#[test]
fn integral_float_ids_count_as_integers() {
    assert_eq!(event(r#"{"event":"a","cid":2.0}"#).cid, Some(2));
    assert_eq!(response(r#"{"rid":7e0}"#).rid, 7);
    assert_eq!(
        event(r#"{"event":"a","cid":18446744073709551615}"#).cid,
        Some(u64::MAX)
    );
}

#[test]
fn falsy_error_means_success_like_javascript() {
    for error in ["null", "false", "0", "\"\""] {
        let frame = format!(r#"{{"rid":1,"data":2,"error":{error}}}"#);
        assert_eq!(
            response(&frame).outcome,
            ResponseOutcome::Success {
                data: Some(json!(2))
            },
            "error {error}"
        );
    }
    assert_eq!(
        response(r#"{"rid":1,"error":"boom"}"#).outcome,
        ResponseOutcome::Failure {
            error: json!("boom")
        }
    );
}

#[test]
fn explicit_null_data_differs_from_absent_data() {
    assert_eq!(
        event(r#"{"event":"a","data":null}"#).data,
        Some(Value::Null)
    );
    assert_eq!(event(r#"{"event":"a"}"#).data, None);
}

#[test]
fn empty_batch_and_nested_arrays() {
    assert_eq!(decode("[]"), InboundFrame::Batch(vec![]));
    assert_eq!(
        decode("[[1]]"),
        InboundFrame::Batch(vec![Packet::Unrecognized(json!([1]))])
    );
    assert_eq!(
        decode(r#"[1,"x",{"event":"a"}]"#),
        InboundFrame::Batch(vec![
            Packet::Unrecognized(json!(1)),
            Packet::Unrecognized(json!("x")),
            Packet::Event(EventPacket {
                event: "a".into(),
                data: None,
                cid: None
            }),
        ])
    );
}

// ----- decoding: hostile input -----

#[test]
fn broken_json_is_reported_apart_from_raw_text() {
    for text in [
        "{bad",
        "[1,",
        "{\"event\":\"a\"} trailing",
        "[1]x",
        "{\"event\":\"a\",\"cid\":1e400}",
    ] {
        let error = decode_frame(text, &DecodeLimits::default())
            .expect_err(&format!("{text:?} should fail"));
        assert!(
            matches!(error, DecodeError::InvalidJson(_)),
            "{text:?}: {error:?}"
        );
        assert_eq!(error.metric_reason(), "bad_json");
        assert_eq!(error.close_code(), None);
    }
}

#[test]
fn nesting_limit_is_exact() {
    let limits = DecodeLimits::default();
    assert!(decode_frame(&nested(64), &limits).is_ok());
    let error = decode_frame(&nested(65), &limits).expect_err("65 levels");
    assert!(matches!(error, DecodeError::TooDeep { limit: 64 }));
    assert_eq!(error.metric_reason(), "bad_json");
    let object = format!(r#"{{"event":"a","data":{}}}"#, nested(63));
    assert!(decode_frame(&object, &limits).is_ok());
    let object = format!(r#"{{"event":"a","data":{}}}"#, nested(64));
    assert!(matches!(
        decode_frame(&object, &limits),
        Err(DecodeError::TooDeep { .. })
    ));
}

#[test]
fn huge_nesting_is_refused_before_parsing() {
    let limits = DecodeLimits {
        max_json_depth: 10_000,
        max_batch_packets: 10,
    };
    // Capped at serde_json's ceiling, so the error stays TooDeep rather than InvalidJson.
    assert!(decode_frame(&nested(127), &limits).is_ok());
    assert!(matches!(
        decode_frame(&nested(128), &limits),
        Err(DecodeError::TooDeep { limit: 127 })
    ));
    let unterminated = "[".repeat(1 << 20);
    assert!(matches!(
        decode_frame(&unterminated, &DecodeLimits::default()),
        Err(DecodeError::TooDeep { limit: 64 })
    ));
}

#[test]
fn brackets_inside_strings_do_not_count() {
    let deep_text = "[".repeat(500);
    let frame = format!(r#"{{"event":"a","data":"{deep_text}"}}"#);
    assert_eq!(event(&frame).data, Some(json!(deep_text)));
    let frame = format!(r#"{{"event":"a\"{deep_text}\\","data":1}}"#);
    assert_eq!(event(&frame).event, format!("a\"{deep_text}\\"));
}

#[test]
fn batch_limit_is_exact() {
    let limits = DecodeLimits {
        max_json_depth: 64,
        max_batch_packets: 3,
    };
    let batch = |count: usize| format!("[{}]", vec![r#"{"event":"a"}"#; count].join(","));
    assert!(matches!(
        decode_frame(&batch(3), &limits),
        Ok(InboundFrame::Batch(packets)) if packets.len() == 3
    ));
    let error = decode_frame(&batch(4), &limits).expect_err("4 packets");
    assert!(matches!(error, DecodeError::BatchTooLarge { limit: 3 }));
    assert_eq!(error.close_code(), Some(close_code::MESSAGE_TOO_BIG));
    // Commas inside packets are not batch separators.
    let wide = r#"[{"event":"a","data":[1,2,3,4,5,6]},{"event":"b","data":{"x":1,"y":2,"z":3}}]"#;
    assert!(decode_frame(wide, &limits).is_ok());
    let none_allowed = DecodeLimits {
        max_json_depth: 64,
        max_batch_packets: 0,
    };
    assert!(decode_frame("[]", &none_allowed).is_ok());
    assert!(matches!(
        decode_frame("[1]", &none_allowed),
        Err(DecodeError::BatchTooLarge { limit: 0 })
    ));
}

#[test]
fn huge_batch_with_default_limit() {
    let frame = format!("[{}]", vec!["0"; 100_000].join(","));
    assert!(matches!(
        decode_frame(&frame, &DecodeLimits::default()),
        Err(DecodeError::BatchTooLarge { limit: 100 })
    ));
    let frame = format!("[{}]", vec![r#"{"event":"a"}"#; 100].join(","));
    assert!(decode_frame(&frame, &DecodeLimits::default()).is_ok());
}

// ----- reserved events: validation -----

#[test]
fn handshake_needs_a_numeric_cid() {
    for frame in [
        r##"{"event":"#handshake","data":{"authToken":null}}"##,
        r##"{"event":"#handshake","data":{"authToken":null},"cid":"1"}"##,
    ] {
        let violation = client_event(frame).expect_err(frame);
        assert_eq!(violation, ProtocolViolation::HandshakeWithoutCallId);
        assert_eq!(
            violation.outcome(),
            ViolationOutcome::Close {
                code: close_code::HANDSHAKE_REJECTED
            }
        );
    }
}

#[test]
fn handshake_without_usable_data_has_no_token() {
    for frame in [
        r##"{"event":"#handshake","cid":1}"##,
        r##"{"event":"#handshake","data":{},"cid":1}"##,
        r##"{"event":"#handshake","data":"x","cid":1}"##,
        r##"{"event":"#handshake","data":{"authToken":""},"cid":1}"##,
        r##"{"event":"#handshake","data":{"authToken":false},"cid":1}"##,
    ] {
        assert_eq!(
            client_event(frame),
            Ok(ClientEvent::Handshake {
                auth_token: None,
                cid: 1
            }),
            "{frame}"
        );
    }
    let violation = client_event(r##"{"event":"#handshake","data":{"authToken":5},"cid":1}"##)
        .expect_err("numeric token");
    assert_eq!(violation, ProtocolViolation::HandshakeTokenNotString);
    assert_eq!(violation.metric_reason(), "bad_packet");
}

#[test]
fn malformed_subscribe_gets_the_captured_error_reply() {
    for data in [
        "",
        r#","data":{}"#,
        r#","data":{"channel":5}"#,
        r#","data":"news""#,
    ] {
        let frame = format!(r##"{{"event":"#subscribe"{data},"cid":8}}"##);
        let violation = client_event(&frame).expect_err(&frame);
        let ViolationOutcome::Reply { rid, error } = violation.outcome() else {
            panic!("{frame}: no reply");
        };
        assert_eq!(
            encode_error_response(rid, &error),
            r#"{"rid":8,"error":{"message":"Subscribe channel name was malformatted","name":"InvalidActionError"}}"#
        );
    }
    let transmit = client_event(r##"{"event":"#subscribe","data":{"channel":"news"}}"##);
    assert_eq!(transmit, Err(ProtocolViolation::SubscribeWithoutCallId));
    assert_eq!(
        ProtocolViolation::SubscribeWithoutCallId.outcome(),
        ViolationOutcome::Ignore
    );
}

#[test]
fn malformed_publish_gets_the_captured_error_reply() {
    let violation = client_event(r##"{"event":"#publish","data":{"channel":["x"]},"cid":7}"##)
        .expect_err("array channel");
    let ViolationOutcome::Reply { rid, error } = violation.outcome() else {
        panic!("no reply");
    };
    assert_eq!(
        encode_error_response(rid, &error),
        r#"{"rid":7,"error":{"message":"Publish channel name was malformatted","name":"InvalidActionError"}}"#
    );
    let transmit = client_event(r##"{"event":"#publish","data":"news"}"##).expect_err("transmit");
    assert_eq!(transmit.outcome(), ViolationOutcome::Ignore);
    assert_eq!(
        client_event(r##"{"event":"#publish","data":{"channel":"c"}}"##),
        Ok(ClientEvent::Publish {
            channel: "c".into(),
            data: None,
            cid: None
        })
    );
}

#[test]
fn malformed_unsubscribe() {
    let violation = client_event(r##"{"event":"#unsubscribe","data":{"channel":"news"},"cid":4}"##)
        .expect_err("object data");
    assert_eq!(
        violation,
        ProtocolViolation::UnsubscribeChannelMalformed { cid: Some(4) }
    );
    assert!(matches!(
        violation.outcome(),
        ViolationOutcome::Reply { rid: 4, .. }
    ));
    let transmit = client_event(r##"{"event":"#unsubscribe"}"##).expect_err("no data");
    assert_eq!(transmit.outcome(), ViolationOutcome::Ignore);
    assert_eq!(
        client_event(r##"{"event":"#unsubscribe","data":"news","cid":4}"##),
        Ok(ClientEvent::Unsubscribe {
            channel: "news".into(),
            cid: Some(4)
        })
    );
}

#[test]
fn malformed_authenticate() {
    let no_cid = client_event(r##"{"event":"#authenticate","data":"a.b.c"}"##).expect_err("no cid");
    assert_eq!(
        no_cid.outcome(),
        ViolationOutcome::Close {
            code: close_code::HANDSHAKE_REJECTED
        }
    );
    let missing = client_event(r##"{"event":"#authenticate","cid":3}"##).expect_err("no token");
    let ViolationOutcome::Reply { rid, error } = missing.outcome() else {
        panic!("no reply");
    };
    assert!(error.is_bad_token());
    assert_eq!(
        encode_error_response(rid, &error),
        r#"{"rid":3,"error":{"message":"jwt must be provided","name":"AuthTokenInvalidError","isBadToken":true}}"#
    );
    let not_string = client_event(r##"{"event":"#authenticate","data":{"t":1},"cid":3}"##)
        .expect_err("object token");
    assert_eq!(
        not_string,
        ProtocolViolation::AuthenticateTokenNotString { cid: 3 }
    );
}

#[test]
fn unreserved_hash_events_are_app_events() {
    assert_eq!(
        client_event(r##"{"event":"#custom","data":1,"cid":2}"##),
        Ok(app("#custom", Some(json!(1)), Some(2)))
    );
    assert_eq!(
        client_event(r##"{"event":"#removeAuthToken","cid":5}"##),
        Ok(ClientEvent::RemoveAuthToken { cid: Some(5) })
    );
}

// ----- encoding: captured server frames -----

#[test]
fn captured_replies_section_3() {
    assert_eq!(
        encode_success(2, &json!({"a": 1, "b": "two"})),
        r#"{"rid":2,"data":{"a":1,"b":"two"}}"#
    );
    assert_eq!(
        encode_success(2, &json!({"buf": {"base64": true, "data": "AQID/w=="}})),
        r#"{"rid":2,"data":{"buf":{"base64":true,"data":"AQID/w=="}}}"#
    );
    let custom = ErrorObject::new("CustomError", "Something went wrong").with_field("extra", 42);
    assert_eq!(
        encode_error_response(3, &custom),
        r#"{"rid":3,"error":{"message":"Something went wrong","name":"CustomError","extra":42}}"#
    );
    assert_eq!(
        encode_error_response(4, &ErrorObject::unnamed("plain error")),
        r#"{"rid":4,"error":{"message":"plain error"}}"#
    );
}

#[test]
fn captured_server_transmit_and_invoke_section_3() {
    assert_eq!(
        encode_transmit("serverEvent", Some(&json!({"hello": "from server"}))),
        r#"{"event":"serverEvent","data":{"hello":"from server"}}"#
    );
    assert_eq!(
        encode_transmit_json("serverEvent", Some(r#"{"hello":"from server"}"#)),
        r#"{"event":"serverEvent","data":{"hello":"from server"}}"#
    );
    assert_eq!(
        encode_invoke("clientProc", 1, Some(&json!({"q": 1}))),
        r#"{"event":"clientProc","cid":1,"data":{"q":1}}"#
    );
    assert_eq!(
        encode_invoke("clientProcFail", 2, Some(&json!({"q": 2}))),
        r#"{"event":"clientProcFail","cid":2,"data":{"q":2}}"#
    );
    assert_eq!(
        encode_invoke("ping", 3, None),
        r#"{"event":"ping","cid":3}"#
    );
    assert_eq!(
        encode_transmit(event_name::REMOVE_AUTH_TOKEN, None),
        REMOVE_AUTH_TOKEN_FRAME
    );
    assert_eq!(REMOVE_AUTH_TOKEN_FRAME, r##"{"event":"#removeAuthToken"}"##);
}

#[test]
fn captured_handshake_replies_section_4_2() {
    let status = |socket_id, is_authenticated| HandshakeStatus {
        socket_id,
        ping_timeout_ms: 30_000,
        is_authenticated,
        auth_error: None,
    };
    assert_eq!(
        encode_handshake_reply(1, &status("H5fTnDcokV9RCQ32AAAA", false)),
        r#"{"rid":1,"data":{"id":"H5fTnDcokV9RCQ32AAAA","pingTimeout":30000,"isAuthenticated":false}}"#
    );
    assert_eq!(
        encode_handshake_reply(4, &status("dJfp67Kf4KNJjTR-AAAE", true)),
        r#"{"rid":4,"data":{"id":"dJfp67Kf4KNJjTR-AAAE","pingTimeout":30000,"isAuthenticated":true}}"#
    );
    assert_eq!(
        encode_handshake_reply(1, &status("va0Vsuu2dqX8MaKyAAAD", false)),
        r#"{"rid":1,"data":{"id":"va0Vsuu2dqX8MaKyAAAD","pingTimeout":30000,"isAuthenticated":false}}"#
    );
    let invalid = ErrorObject::auth_token_invalid("invalid signature");
    let rejected = HandshakeStatus {
        auth_error: Some(&invalid),
        ..status("MMht4k_Zuyh5uHURAAAF", false)
    };
    assert_eq!(
        encode_handshake_reply(1, &rejected),
        r#"{"rid":1,"data":{"id":"MMht4k_Zuyh5uHURAAAF","pingTimeout":30000,"authError":{"message":"invalid signature","name":"AuthTokenInvalidError","isBadToken":true},"isAuthenticated":false}}"#
    );
}

#[test]
fn captured_handshake_rejections_section_4_4() {
    assert_eq!(
        encode_error_response(
            1,
            &ErrorObject::handshake_rejected("You shall not pass", 4008)
        ),
        r#"{"rid":1,"error":{"message":"You shall not pass","name":"HandshakeRejectedError","statusCode":4008}}"#
    );
    let silent = ErrorObject::new(
        "SilentMiddlewareBlockedError",
        "The handshakeSC AGAction was blocked by handshake middleware",
    )
    .with_field("type", "handshake")
    .with_status_code(4008);
    assert_eq!(
        encode_error_response(1, &silent),
        r#"{"rid":1,"error":{"message":"The handshakeSC AGAction was blocked by handshake middleware","name":"SilentMiddlewareBlockedError","type":"handshake","statusCode":4008}}"#
    );
    assert_eq!(
        encode_error_response(
            1,
            &ErrorObject::handshake_rejected("Custom code rejection", 4501)
        ),
        r#"{"rid":1,"error":{"message":"Custom code rejection","name":"HandshakeRejectedError","statusCode":4501}}"#
    );
}

#[test]
fn captured_pubsub_frames_section_6() {
    assert_eq!(encode_empty_success(2), r#"{"rid":2}"#);
    assert_eq!(
        encode_error_response(5, &ErrorObject::broker_not_subscribed("x", "abc")),
        r#"{"rid":5,"error":{"message":"Failed to unsubscribe socket from the x channel - InvalidActionError: Socket abc tried to unsubscribe from a channel which it is not subscribed to","name":"BrokerError"}}"#
    );
    assert_eq!(
        encode_publish("news", Some(r#"{"headline":"hello"}"#)),
        r##"{"event":"#publish","data":{"channel":"news","data":{"headline":"hello"}}}"##
    );
    assert_eq!(
        encode_publish("news", Some(r#""plain string""#)),
        r##"{"event":"#publish","data":{"channel":"news","data":"plain string"}}"##
    );
    assert_eq!(
        encode_publish("news", Some(r#"{"self":true}"#)),
        r##"{"event":"#publish","data":{"channel":"news","data":{"self":true}}}"##
    );
    assert_eq!(
        encode_publish("news", Some(r#"{"from":"server-exchange"}"#)),
        r##"{"event":"#publish","data":{"channel":"news","data":{"from":"server-exchange"}}}"##
    );
    assert_eq!(
        encode_publish("news", None),
        r##"{"event":"#publish","data":{"channel":"news"}}"##
    );
    assert_eq!(
        encode_error_response(2, &ErrorObject::client_publish_disabled()),
        r#"{"rid":2,"error":{"message":"Client publish feature is disabled","name":"InvalidActionError"}}"#
    );
    assert_eq!(
        encode_kick_out("private", Some("bye from channel")),
        r##"{"event":"#kickOut","data":{"channel":"private","message":"bye from channel"}}"##
    );
    assert_eq!(
        encode_kick_out("private", None),
        r##"{"event":"#kickOut","data":{"channel":"private"}}"##
    );
}

#[test]
fn publish_round_trips_through_the_decoder() {
    // What a client publishes is what subscribers get, byte for byte (spec 6.3).
    let inbound =
        r##"{"event":"#publish","data":{"channel":"news","data":{"headline":"hello"}},"cid":2}"##;
    let Ok(ClientEvent::Publish { channel, data, .. }) = client_event(inbound) else {
        panic!("not a publish");
    };
    let data_json = data.map(|value| value.to_string());
    assert_eq!(
        encode_publish(&channel, data_json.as_deref()),
        r##"{"event":"#publish","data":{"channel":"news","data":{"headline":"hello"}}}"##
    );
}

#[test]
fn captured_token_frames_section_8() {
    assert_eq!(
        encode_set_auth_token(TOKEN_ALICE),
        format!(r##"{{"event":"#setAuthToken","data":{{"token":"{TOKEN_ALICE}"}}}}"##)
    );
    assert_eq!(
        encode_invoke(
            event_name::SET_AUTH_TOKEN,
            1,
            Some(&json!({"token": TOKEN_ACKED}))
        ),
        format!(r##"{{"event":"#setAuthToken","cid":1,"data":{{"token":"{TOKEN_ACKED}"}}}}"##)
    );
    assert_eq!(
        encode_authenticate_reply(8, true, None),
        r#"{"rid":8,"data":{"isAuthenticated":true,"authError":null}}"#
    );
    assert_eq!(
        encode_error_response(9, &ErrorObject::auth_token_invalid("invalid token")),
        r#"{"rid":9,"error":{"message":"invalid token","name":"AuthTokenInvalidError","isBadToken":true}}"#
    );
    let not_before =
        ErrorObject::auth_token_not_before("jwt not active", "2026-11-22T14:22:54.000Z");
    assert!(!not_before.is_bad_token());
    assert_eq!(
        encode_authenticate_reply(3, false, Some(&not_before)),
        r#"{"rid":3,"data":{"isAuthenticated":false,"authError":{"message":"jwt not active","name":"AuthTokenNotBeforeError","date":"2026-11-22T14:22:54.000Z","isBadToken":false}}}"#
    );
}

#[test]
fn captured_batch_and_session_frames_sections_10_and_12() {
    assert_eq!(encode_success(2, &json!(3)), r#"{"rid":2,"data":3}"#);
    let batch = [
        encode_success(2, &json!("done")),
        encode_transmit("a", Some(&json!(1))),
        encode_transmit("b", Some(&json!(2))),
    ];
    let batch_frame = encode_batch(&batch);
    assert_eq!(
        batch_frame,
        r#"[{"rid":2,"data":"done"},{"event":"a","data":1},{"event":"b","data":2}]"#
    );
    assert!(matches!(decode(&batch_frame), InboundFrame::Batch(packets) if packets.len() == 3));
    assert_eq!(encode_batch::<&str>(&[]), "[]");
    assert_eq!(
        encode_success(2, &json!({"ok": true})),
        r#"{"rid":2,"data":{"ok":true}}"#
    );
    assert_eq!(encode_empty_success(6), r#"{"rid":6}"#);
    // Key order here ("authToken" before "authState") is not alphabetical, so a Value map
    // may reorder it; the client does not depend on order, so compare meaning.
    let captured = r#"{"rid":3,"data":{"authToken":{"username":"alice","role":"user","iat":1795356783,"exp":1795443183},"authState":"authenticated"}}"#;
    let whoami = json!({
        "authToken": {"username": "alice", "role": "user", "iat": 1795356783u64, "exp": 1795443183u64},
        "authState": "authenticated",
    });
    let encoded: Value = serde_json::from_str(&encode_success(3, &whoami)).expect("valid JSON");
    let expected: Value = serde_json::from_str(captured).expect("valid JSON");
    assert_eq!(encoded, expected);
}

// ----- encoding: escaping and error objects -----

#[test]
fn strings_are_escaped_like_serde_json() {
    let mut every_ascii: String = (0u8..0x80).map(char::from).collect();
    every_ascii.push_str("é漢\u{2028}\u{1f600}");
    let mut ours = String::new();
    push_json_string(&mut ours, &every_ascii);
    assert_eq!(ours, Value::String(every_ascii.clone()).to_string());
    let frame = encode_transmit("q\"\\\n", None);
    let decoded = event(&frame);
    assert_eq!(decoded.event, "q\"\\\n");
    let publish = encode_publish("a\"b", Some("1"));
    assert_eq!(
        publish,
        r##"{"event":"#publish","data":{"channel":"a\"b","data":1}}"##
    );
}

#[test]
fn error_object_serde_matches_frame_text() {
    let error = ErrorObject::auth_token_expired("jwt expired", "2026-11-22T14:00:00.000Z")
        .with_status_code(4500);
    let via_serde = serde_json::to_string(&error).expect("serializable");
    assert_eq!(via_serde, error.to_json());
    assert_eq!(
        via_serde,
        r#"{"message":"jwt expired","name":"AuthTokenExpiredError","expiry":"2026-11-22T14:00:00.000Z","isBadToken":true,"statusCode":4500}"#
    );
}

#[test]
fn error_object_fields_never_duplicate() {
    let error = ErrorObject::new("X", "m")
        .with_field("name", "Y")
        .with_field("message", "n")
        .with_field("statusCode", 1)
        .with_field("k", 1)
        .with_field("k", 2);
    assert_eq!(error.to_json(), r#"{"message":"m","name":"X","k":2}"#);
    assert_eq!(error.name(), Some("X"));
    assert_eq!(error.message(), "m");
    assert_eq!(error.status_code(), None);
    assert_eq!(error.field("k"), Some(&json!(2)));
}

#[test]
fn sockhive_specific_errors() {
    assert_eq!(
        ErrorObject::channel_forbidden("room:1").to_json(),
        r#"{"message":"Access to the \"room:1\" channel is forbidden","name":"ChannelForbiddenError"}"#
    );
    assert_eq!(
        ErrorObject::unknown_procedure("foo").to_json(),
        r#"{"message":"No handler for procedure \"foo\"","name":"UnknownProcedureError"}"#
    );
    assert_eq!(
        ErrorObject::auth_token_error("invalid exp value").to_json(),
        r#"{"message":"invalid exp value","name":"AuthTokenError","isBadToken":true}"#
    );
    let rejected = ErrorObject::handshake_rejected("SessionNotFoundError: logged out", 4500);
    assert_eq!(rejected.status_code(), Some(close_code::AUTH_REQUIRED));
}

// ----- close codes and socket ids -----

#[test]
fn reconnect_policy_by_close_code() {
    use close_code::*;
    for code in [
        GOING_AWAY,
        MESSAGE_TOO_BIG,
        CLIENT_PONG_TIMED_OUT,
        HANDSHAKE_REJECTED,
        4499,
    ] {
        assert!(client_reconnects(code), "{code}");
    }
    for code in [NORMAL, AUTH_REQUIRED, ADMIN_KICK, 4999] {
        assert!(!client_reconnects(code), "{code}");
    }
}

#[test]
fn socket_ids_match_captured_ids() {
    let captured: [([u8; 12], u32, &str); 4] = [
        (
            [31, 151, 211, 156, 55, 40, 145, 95, 81, 9, 13, 246],
            0,
            "H5fTnDcokV9RCQ32AAAA",
        ),
        (
            [116, 151, 233, 235, 178, 159, 224, 163, 73, 141, 52, 126],
            4,
            "dJfp67Kf4KNJjTR-AAAE",
        ),
        (
            [48, 200, 109, 226, 79, 217, 187, 40, 121, 184, 117, 17],
            5,
            "MMht4k_Zuyh5uHURAAAF",
        ),
        (
            [189, 173, 21, 178, 235, 182, 118, 165, 252, 49, 162, 178],
            3,
            "va0Vsuu2dqX8MaKyAAAD",
        ),
    ];
    for (random, counter, expected) in captured {
        assert_eq!(socket_id(random, counter), expected);
    }
}

#[test]
fn socket_id_uses_the_low_three_counter_bytes() {
    let random = [0xff; 12];
    let id = socket_id(random, 0x0100_0001);
    assert_eq!(id, "________________AAAB");
    assert_eq!(socket_id(random, 0x00ff_ffff), "____________________");
    assert_eq!(socket_id([0; 12], 64), format!("{}AABA", "A".repeat(16)));
    assert!(socket_id([0x5a; 12], 12_345)
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'));
}
