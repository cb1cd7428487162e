//! Every kind of bad frame gets a `DecodeError` a client can act on, and nothing panics.

use proptest::prelude::*;
use samvad_protocol::{
    DecodeError, Encoding, Limits, Message, decode_binary, decode_text, encode_binary, encode_text,
};

use crate::support::{LIMITS, sample};

fn text_err(frame: &str) -> DecodeError {
    decode_text(frame, &LIMITS).expect_err("the frame should be refused")
}

fn wrong(field: &'static str, expected: &'static str) -> DecodeError {
    DecodeError::WrongType { field, expected }
}

#[test]
fn malformed_or_truncated_json_is_a_json_error() {
    let full = encode_text(&sample(), Encoding::V2_1);
    for cut in [1, 10, full.len() / 2, full.len() - 1] {
        let truncated = &full[..cut];
        assert!(
            matches!(text_err(truncated), DecodeError::Json(_)),
            "{truncated}"
        );
    }
    for garbage in [
        "",
        "   ",
        "hello",
        "{'id': 1}",
        r#"{"id":"1",}"#,
        r#"{"id":"1"} x"#,
    ] {
        assert!(
            matches!(text_err(garbage), DecodeError::Json(_)),
            "{garbage:?}"
        );
    }
}

#[test]
fn json_that_is_not_an_object_is_refused_as_such() {
    for frame in ["[1,2]", "42", r#""a string""#, "null", "true", " [] "] {
        assert_eq!(text_err(frame), DecodeError::NotAnObject, "{frame}");
    }
}

#[test]
fn oversize_frames_are_refused_before_parsing() {
    let limits = Limits { max_bytes: 10 };
    // Not even JSON: the size is checked first.
    assert_eq!(
        decode_text("01234567890", &limits),
        Err(DecodeError::TooLarge { size: 11, max: 10 })
    );
    assert_eq!(
        decode_binary(&[0xff; 11], &limits),
        Err(DecodeError::TooLarge { size: 11, max: 10 })
    );
    // Exactly at the limit is allowed through to parsing. Byte length counts, not chars.
    assert!(matches!(
        decode_text("1234567890", &limits),
        Err(DecodeError::NotAnObject)
    ));
    assert!(matches!(
        decode_text("\"ééééé\"", &limits),
        Err(DecodeError::TooLarge { size: 12, max: 10 })
    ));
}

#[test]
fn wrong_field_types_name_the_field_and_what_it_should_be() {
    let cases = [
        (r#"{"_v":2,"id":1,"head":{}}"#, wrong("id", "a string")),
        (r#"{"_v":2,"id":"1","head":[]}"#, wrong("head", "an object")),
        (
            r#"{"_v":2,"id":"1","head":"chat"}"#,
            wrong("head", "an object"),
        ),
        (
            r#"{"_v":2,"id":"1","head":{"to":7}}"#,
            wrong("head.to", "a string"),
        ),
        (
            r#"{"_v":2,"id":"1","head":{"from":["a"]}}"#,
            wrong("head.from", "a string"),
        ),
        (
            r#"{"_v":2,"id":"1","head":{"ephemeral":"yes"}}"#,
            wrong("head.ephemeral", "a boolean or \"true\"/\"false\""),
        ),
        (
            r#"{"_v":2,"id":"1","head":{},"meta":[1]}"#,
            wrong("meta", "an object"),
        ),
        (
            r#"{"_v":2,"id":"1","head":{},"meta":{"createdAt":"yesterday"}}"#,
            wrong(
                "meta.createdAt",
                "a non-negative integer (milliseconds since the Unix epoch)",
            ),
        ),
        (
            r#"{"_v":2,"id":"1","head":{},"meta":{"serverTimestamp":-1}}"#,
            wrong(
                "meta.serverTimestamp",
                "a non-negative integer (milliseconds since the Unix epoch)",
            ),
        ),
        (
            r#"{"_v":2,"id":"1","head":{},"meta":{"serverId":5}}"#,
            wrong("meta.serverId", "a string"),
        ),
        (r#"{"msgId":1}"#, wrong("msgId", "a string")),
        (r#"{"msgId":"1","to":false}"#, wrong("to", "a string")),
        (r#"{"msgId":"1","text":{"t":1}}"#, wrong("text", "a string")),
        (
            r#"{"_v":true,"id":"1","head":{}}"#,
            wrong("_v", "a number or a numeric string"),
        ),
        (
            r#"{"_v":{},"id":"1","head":{}}"#,
            wrong("_v", "a number or a numeric string"),
        ),
    ];
    for (frame, expected) in cases {
        assert_eq!(text_err(frame), expected, "{frame}");
    }
}

#[test]
fn missing_required_fields_are_named() {
    assert_eq!(
        text_err(r#"{"_v":2.1,"head":{}}"#),
        DecodeError::MissingField("id")
    );
    assert_eq!(
        text_err(r#"{"_v":2.1,"id":null,"head":{}}"#),
        DecodeError::MissingField("id")
    );
    assert_eq!(
        text_err(r#"{"_v":2.1,"id":"1"}"#),
        DecodeError::MissingField("head")
    );
    assert_eq!(
        text_err(r#"{"text":"hi"}"#),
        DecodeError::MissingField("msgId")
    );
    assert_eq!(text_err("{}"), DecodeError::MissingField("msgId"));
}

#[test]
fn versions_outside_v1_and_v2_are_unknown() {
    for (v, spelled) in [
        ("7", "7"),
        ("3", "3"),
        ("3.0", "3.0"),
        (r#""abc""#, "abc"),
        (r#""""#, ""),
        (r#""NaN""#, "NaN"),
        (r#""inf""#, "inf"),
        (r#""3.5""#, "3.5"),
    ] {
        let frame = format!(r#"{{"_v":{v},"id":"1","head":{{}}}}"#);
        assert_eq!(
            text_err(&frame),
            DecodeError::UnknownVersion(spelled.to_owned()),
            "{frame}"
        );
    }
}

#[test]
fn version_picks_the_decoder() {
    let v1 = r#"{"msgId":"m","to":"bob"}"#;
    assert_eq!(decode_text(v1, &LIMITS).unwrap().version, 1.0);
    for v in ["1", "1.9", "-3", r#""1""#, "null"] {
        let frame = format!(r#"{{"_v":{v},"msgId":"m","to":"bob"}}"#);
        assert_eq!(
            decode_text(&frame, &LIMITS).unwrap().version,
            1.0,
            "{frame}"
        );
    }
    for (v, version) in [
        ("2", 2.0),
        ("2.0", 2.0),
        ("2.1", 2.1),
        (r#"" 2.1 ""#, 2.1),
        ("2.99", 2.99),
    ] {
        let frame = format!(r#"{{"_v":{v},"id":"m","head":{{"to":"bob"}}}}"#);
        assert_eq!(
            decode_text(&frame, &LIMITS).unwrap().version,
            version,
            "{frame}"
        );
    }
}

#[test]
fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let in_body = format!(r#"{{"_v":2.1,"id":"1","head":{{}},"body":{deep}}}"#);
    let in_meta = format!(r#"{{"_v":2.1,"id":"1","head":{{}},"meta":{{"x":{deep}}}}}"#);
    let in_v1 = format!(r#"{{"msgId":"1","extra":{deep}}}"#);
    for frame in [&deep, &in_body, &in_meta, &in_v1] {
        match decode_text(frame, &LIMITS) {
            Err(DecodeError::Json(e)) => assert!(e.contains("recursion limit"), "{e}"),
            other => panic!("expected a JSON nesting error, got {other:?}"),
        }
    }
    // The internal form keeps such content as it is (serde_json skips it without recursing).
    let stored = format!(
        r#"{{"version":2.1,"id":"1","type":"MESSAGE","channel":"GROUP","source":"a","destination":"g","content":{deep}}}"#
    );
    let msg: Message = serde_json::from_str(&stored).unwrap();
    assert_eq!(msg.content, deep.as_bytes());
}

#[test]
fn truncated_or_garbage_protobuf_is_a_protobuf_error() {
    let full = encode_binary(&sample());
    // Cutting inside a length-delimited field (the id "m-1" starts at byte 7) cannot parse.
    for cut in [6, 8, full.len() - 1] {
        assert!(
            matches!(
                decode_binary(&full[..cut], &LIMITS),
                Err(DecodeError::Protobuf(_))
            ),
            "cut at {cut}"
        );
    }
    for garbage in [
        &[0xff, 0xff, 0xff][..],   // a varint tag that never ends
        &[0x12, 0x05, b'a'],       // id claims 5 bytes, has 1
        &[0x12, 0x02, 0xc3, 0x28], // id is not UTF-8
        &[0x0f],                   // wire type 7 does not exist
        &[0x00, 0x01],             // field number 0 is invalid
        b"{\"_v\":2.1}",           // a text frame sent as binary
    ] {
        assert!(
            matches!(
                decode_binary(garbage, &LIMITS),
                Err(DecodeError::Protobuf(_))
            ),
            "{garbage:?}"
        );
    }
}

#[test]
fn a_non_finite_v3_version_is_refused() {
    let nan = [0x0d, 0x00, 0x00, 0xc0, 0x7f]; // field 1, fixed32 0x7fc00000 = NaN
    assert_eq!(
        decode_binary(&nan, &LIMITS),
        Err(DecodeError::UnknownVersion("NaN".to_owned()))
    );
}

#[test]
fn the_internal_form_refuses_bad_input_without_panicking() {
    let bad = [
        "",
        "[]",
        "{}",
        r#"{"version":1,"id":"1","type":"NOPE","channel":"GROUP","source":"a","destination":"b"}"#,
        r#"{"version":1,"id":"1","type":"MESSAGE","channel":"GROUP","source":"a","destination":"b","content":{},"contentBase64":"e30="}"#,
        r#"{"version":1,"id":"1","type":"MESSAGE","channel":"GROUP","source":"a","destination":"b","contentBase64":"!!"}"#,
        r#"{"version":null,"id":"1","type":"MESSAGE","channel":"GROUP","source":"a","destination":"b"}"#,
    ];
    for text in bad {
        assert!(serde_json::from_str::<Message>(text).is_err(), "{text}");
    }
}

#[test]
fn error_messages_tell_the_client_what_was_wrong() {
    let frames = [
        r#"{"_v":2.1,"id":"1","head":{"#,
        "[1,2]",
        r#"{"_v":7,"id":"1","head":{}}"#,
        r#"{"_v":2.1,"head":{}}"#,
        r#"{"_v":2.1,"id":"1","head":{"to":7}}"#,
    ];
    let mut report: Vec<String> = frames
        .iter()
        .map(|f| format!("{f}\n  -> {}", text_err(f)))
        .collect();
    report.push(format!(
        "binary 0x12 0x05 0x61\n  -> {}",
        decode_binary(&[0x12, 0x05, b'a'], &LIMITS).unwrap_err()
    ));
    report.push(format!(
        "65 bytes against a 64-byte limit\n  -> {}",
        decode_text(&" ".repeat(65), &Limits { max_bytes: 64 }).unwrap_err()
    ));
    insta::assert_snapshot!(report.join("\n"));
}

proptest! {
    #[test]
    fn decode_binary_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_binary(&bytes, &LIMITS);
    }

    #[test]
    fn decode_text_never_panics(text in any::<String>()) {
        let _ = decode_text(&text, &LIMITS);
        let _ = serde_json::from_str::<Message>(&text);
    }

    #[test]
    fn corrupted_v3_frames_never_panic(
        cut in 0usize..200,
        flips in proptest::collection::vec((0usize..200, any::<u8>()), 0..4),
    ) {
        let mut frame = encode_binary(&sample());
        for (at, byte) in flips {
            let len = frame.len();
            frame[at % len] = byte;
        }
        frame.truncate(cut);
        let _ = decode_binary(&frame, &LIMITS);
    }
}
