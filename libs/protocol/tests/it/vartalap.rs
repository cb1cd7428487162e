//! Frames shaped like the ones Vartalap's real clients send decode to the right message, and
//! keep the clients' own spellings when written back.

use samvad_protocol::{Channel, Encoding, MessageType, decode_text, encode_text};

use crate::support::{LIMITS, meta};

const V2_TEXT: &str = r#"{"_v":2.0,"id":"1","head":{"to":"bob","from":"alice","action":"message","chatid":"bob","type":"individual","contentType":"text"},"meta":{"createdAt":1700000000000,"contentHash":"x"},"body":{"text":"hi","state":"new"}}"#;

#[test]
fn a_vartalap_v2_text_message_decodes() {
    let msg = decode_text(V2_TEXT, &LIMITS).unwrap();
    assert_eq!(msg.version, 2.0);
    assert_eq!(msg.id, "1");
    assert_eq!(msg.channel, Channel::Individual);
    assert_eq!(msg.kind, MessageType::Message);
    assert_eq!(
        (msg.source.as_str(), msg.destination.as_str()),
        ("alice", "bob")
    );
    assert!(!msg.ephemeral);
    assert_eq!(msg.timestamp, 1_700_000_000_000);
    assert_eq!(
        msg.meta,
        meta([
            ("action", "message"),
            ("chatid", "bob"),
            ("contentHash", "x"),
            ("contentType", "text"),
            ("type", "individual"),
        ])
    );
    // The body reaches the canonical content byte for byte.
    assert_eq!(msg.content, br#"{"text":"hi","state":"new"}"#);
}

#[test]
fn re_encoding_it_as_v2_1_keeps_the_clients_spellings() {
    let msg = decode_text(V2_TEXT, &LIMITS).unwrap();
    let out: serde_json::Value = serde_json::from_str(&encode_text(&msg, Encoding::V2_1)).unwrap();
    assert_eq!(out["_v"], 2.1);
    assert_eq!(out["head"]["type"], "individual");
    assert_eq!(out["head"]["contentType"], "text");
    assert_eq!(out["head"]["action"], "message");
    assert_eq!(out["head"]["chatid"], "bob");
    assert_eq!(out["head"]["ephemeral"], false);
    assert_eq!(out["head"]["category"], "user");
    assert_eq!(
        out["meta"],
        serde_json::json!({"contentHash": "x", "createdAt": 1_700_000_000_000u64})
    );
    assert_eq!(
        out["body"],
        serde_json::json!({"text": "hi", "state": "new"})
    );
    // …and the flat v1 keys for clients that only read those.
    assert_eq!(out["msgId"], "1");
    assert_eq!(out["type"], "text");
    assert_eq!(out["chatType"], "individual");
    assert_eq!(out["module"], "individual");
    assert_eq!(out["chatId"], "bob");
    assert_eq!(out["text"], "hi");
    assert_eq!(out["action"], "message");
}

#[test]
fn a_vartalap_v1_message_decodes() {
    let frame = r#"{"msgId":"1","to":"bob","from":"alice","type":"text","chatId":"bob","text":"hi","state":"new"}"#;
    let msg = decode_text(frame, &LIMITS).unwrap();
    assert_eq!(msg.version, 1.0);
    assert_eq!(msg.id, "1");
    assert_eq!(msg.channel, Channel::Individual);
    assert_eq!(msg.kind, MessageType::Message);
    assert_eq!(
        (msg.source.as_str(), msg.destination.as_str()),
        ("alice", "bob")
    );
    assert_eq!(msg.content, br#"{"text":"hi"}"#);
    assert_eq!(
        msg.meta,
        meta([("chatId", "bob"), ("contentType", "text"), ("state", "new")])
    );
}

#[test]
fn v2_head_values_are_read_leniently_as_vartalap_writes_them() {
    let frame = r#"{"_v":"2.1","id":"t","head":{"to":"g1","from":"alice","type":"GROUP","contentType":"Notification","ephemeral":"true","action":"typing","extra":{"n":1},"gone":null},"meta":{"count":3,"serverId":"s9","serverTimestamp":"12"}}"#;
    let msg = decode_text(frame, &LIMITS).unwrap();
    assert_eq!(msg.version, 2.1);
    assert_eq!(msg.channel, Channel::Group);
    assert_eq!(msg.kind, MessageType::Notification);
    assert!(msg.ephemeral);
    assert!(msg.content.is_empty());
    assert_eq!((msg.server_id.as_str(), msg.server_timestamp), ("s9", 12));
    assert_eq!(
        msg.meta,
        meta([
            ("action", "typing"),
            ("contentType", "Notification"),
            ("count", "3"),
            ("extra", r#"{"n":1}"#),
            ("type", "GROUP"),
        ])
    );
}

#[test]
fn unknown_chat_and_content_types_fall_back_as_documented() {
    let decode = |head: &str| {
        let frame = format!(r#"{{"_v":2,"id":"1","head":{head}}}"#);
        let msg = decode_text(&frame, &LIMITS).unwrap();
        (msg.channel, msg.kind)
    };
    assert_eq!(decode("{}"), (Channel::Individual, MessageType::Message));
    assert_eq!(
        decode(r#"{"type":"","contentType":""}"#),
        (Channel::Individual, MessageType::Message)
    );
    assert_eq!(
        decode(r#"{"type":"Chat","contentType":"attachment"}"#),
        (Channel::Individual, MessageType::Message)
    );
    assert_eq!(
        decode(r#"{"type":"bot","contentType":"client_ack"}"#),
        (Channel::Other, MessageType::ClientAck)
    );
    assert_eq!(
        decode(r#"{"type":"channel","contentType":"CUSTOM"}"#),
        (Channel::Other, MessageType::Custom)
    );
    let v1 = decode_text(
        r#"{"msgId":"1","module":"group","type":"notification"}"#,
        &LIMITS,
    )
    .unwrap();
    assert_eq!(
        (v1.channel, v1.kind),
        (Channel::Group, MessageType::Notification)
    );
    let v1 = decode_text(
        r#"{"msgId":"1","chatType":"chat","module":"group"}"#,
        &LIMITS,
    )
    .unwrap();
    assert_eq!(v1.channel, Channel::Individual, "chatType wins over module");
}

#[test]
fn client_spellings_carry_across_versions() {
    let v2 = decode_text(V2_TEXT, &LIMITS).unwrap();
    let as_v1: serde_json::Value = serde_json::from_str(&encode_text(&v2, Encoding::V1)).unwrap();
    assert_eq!(as_v1["chatType"], "individual");
    assert_eq!(as_v1["module"], "individual");
    assert_eq!(as_v1["type"], "text");
    assert_eq!(as_v1["chatId"], "bob");
    assert_eq!(as_v1["text"], "hi");

    let v1 = decode_text(
        r#"{"msgId":"1","from":"alice","to":"g1","chatType":"Group","type":"text","text":"hi"}"#,
        &LIMITS,
    )
    .unwrap();
    let as_v2: serde_json::Value = serde_json::from_str(&encode_text(&v1, Encoding::V2_1)).unwrap();
    assert_eq!(as_v2["head"]["type"], "Group");
    assert_eq!(as_v2["head"]["contentType"], "text");
    assert_eq!(as_v2["body"], serde_json::json!({"text": "hi"}));
}

#[test]
fn the_web_clients_v2_client_ack_without_a_content_type_is_a_client_ack() {
    // Vartalap's web client writes its v2 CLIENT_ACK with the channel in head.type and no
    // contentType; `server` is a reserved name, so a message to it can only be an ack.
    let ack = decode_text(
        r#"{"_v":2.1,"id":"m1","head":{"type":"INDIVIDUAL","from":"cy","to":"server","ephemeral":true},"meta":{},"body":null}"#,
        &LIMITS,
    )
    .unwrap();
    assert_eq!(ack.kind, MessageType::ClientAck);
    assert_eq!(ack.id, "m1");
    // To anybody else, a missing contentType still means MESSAGE.
    let to_user = decode_text(
        r#"{"_v":2.1,"id":"m2","head":{"type":"INDIVIDUAL","from":"cy","to":"ana"}}"#,
        &LIMITS,
    )
    .unwrap();
    assert_eq!(to_user.kind, MessageType::Message);
}
