//! The sample message (alice → bob, "hi") in every encoding, pinned byte for byte. A change here
//! is a wire-format change: review it as one.

use insta::assert_snapshot;
use samvad_protocol::{Encoding, Message, encode_binary, encode_text};

use crate::support::{hex, sample};

#[test]
fn sample_v1() {
    assert_snapshot!(encode_text(&sample(), Encoding::V1));
}

#[test]
fn sample_v2_0() {
    assert_snapshot!(encode_text(&sample(), Encoding::V2_0));
}

#[test]
fn sample_v2_1() {
    assert_snapshot!(encode_text(&sample(), Encoding::V2_1));
}

#[test]
fn sample_v3_hex() {
    assert_snapshot!(hex(&encode_binary(&sample())));
}

#[test]
fn sample_internal_json() {
    let json = serde_json::to_string(&sample()).unwrap();
    assert_snapshot!(json);
    let back: Message = serde_json::from_str(&json).unwrap();
    assert_eq!(back, sample());
}

#[test]
fn sample_server_ack_v2_1() {
    assert_snapshot!(encode_text(&sample().server_ack(), Encoding::V2_1));
}

#[test]
fn v3_passed_to_encode_text_gives_v2_1() {
    assert_eq!(
        encode_text(&sample(), Encoding::V3),
        encode_text(&sample(), Encoding::V2_1)
    );
}
