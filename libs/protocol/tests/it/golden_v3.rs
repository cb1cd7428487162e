//! v3 bytes written out by hand from the protobuf wire format, so that the encoding is pinned
//! independently of prost. A tag byte is `(field_number << 3) | wire_type`, with wire types
//! 0 = varint, 2 = length-delimited, 5 = fixed32; field numbers above 15 need a two-byte tag.

use samvad_protocol::{Channel, Message, MessageType, decode_binary, encode_binary};

use crate::support::{LIMITS, meta};

fn tiny() -> Message {
    Message {
        version: 3.0,
        id: "a".to_owned(),
        kind: MessageType::Message,
        channel: Channel::Group,
        ephemeral: true,
        source: "x".to_owned(),
        destination: "g".to_owned(),
        timestamp: 300,
        content: b"{}".to_vec(),
        meta: meta([("k", "v")]),
        server_id: "s".to_owned(),
        server_timestamp: 1,
    }
}

#[rustfmt::skip]
const TINY: &[u8] = &[
    0x0d, 0x00, 0x00, 0x40, 0x40, // field 1 `version`, fixed32: 3.0f32 = 0x40400000, little-endian
    0x12, 0x01, b'a',             // field 2 `id`, length-delimited: 1 byte
    0x18, 0x02,                   // field 3 `type`, varint: MESSAGE = 2
    0x20, 0x02,                   // field 4 `channel`, varint: GROUP = 2
    0x28, 0x01,                   // field 5 `ephemeral`, varint: true
    0x32, 0x01, b'x',             // field 6 `source`, length-delimited: 1 byte
    0x3a, 0x01, b'g',             // field 7 `destination`, length-delimited: 1 byte
    0x42, 0x02, b'{', b'}',       // field 8 `content`, length-delimited: 2 bytes
    0x48, 0xac, 0x02,             // field 9 `timestamp`, varint: 300 = 0b10_0101100 -> 0xac 0x02
    0x52, 0x06,                   // field 10 `meta`, one map entry of 6 bytes:
    0x0a, 0x01, b'k',             //   entry field 1 (key), length-delimited: 1 byte
    0x12, 0x01, b'v',             //   entry field 2 (value), length-delimited: 1 byte
    0xa2, 0x01, 0x01, b's',       // field 20 `serverId`: tag 162 as varint 0xa2 0x01, 1 byte
    0xa8, 0x01, 0x01,             // field 21 `serverTimestamp`: tag 168 as varint 0xa8 0x01, value 1
];

#[test]
fn a_tiny_message_encodes_to_the_hand_written_bytes() {
    assert_eq!(encode_binary(&tiny()), TINY);
}

#[test]
fn the_hand_written_bytes_decode_to_the_tiny_message() {
    assert_eq!(decode_binary(TINY, &LIMITS), Ok(tiny()));
}

/// The SERVER_ACK alice gets for message "m" (accepted by server "s" at 5 ms): the envelope's
/// zero values — `type` SERVER_ACK = 0 here — are on the wire, as Vartalap's server writes them,
/// because Vartalap's web client decodes without defaults and fails on an absent `type`.
#[rustfmt::skip]
const SERVER_ACK: &[u8] = &[
    0x0d, 0x00, 0x00, 0x40, 0x40, // field 1 `version`: 3.0
    0x12, 0x01, b'm',             // field 2 `id`: "m"
    0x18, 0x00,                   // field 3 `type`: SERVER_ACK = 0, written although zero
    0x20, 0x01,                   // field 4 `channel`: INDIVIDUAL = 1
    0x28, 0x01,                   // field 5 `ephemeral`: true
    0x32, 0x06, b's', b'e', b'r', b'v', b'e', b'r', // field 6 `source`: "server"
    0x3a, 0x05, b'a', b'l', b'i', b'c', b'e',       // field 7 `destination`: "alice"
    0x48, 0x05,                   // field 9 `timestamp`: 5 (the ack's own, = server timestamp)
    0xa2, 0x01, 0x01, b's',       // field 20 `serverId`: "s"
    0xa8, 0x01, 0x05,             // field 21 `serverTimestamp`: 5
];

#[test]
fn a_server_ack_carries_its_type_and_channel_on_the_wire() {
    let sent = Message {
        version: 3.0,
        id: "m".to_owned(),
        source: "alice".to_owned(),
        destination: "bob".to_owned(),
        content: b"{}".to_vec(),
        server_id: "s".to_owned(),
        server_timestamp: 5,
        ..tiny()
    };
    assert_eq!(encode_binary(&sent.server_ack()), SERVER_ACK);
}

#[test]
fn the_envelope_is_written_at_its_zero_values_and_nothing_else_is() {
    // SERVER_ACK (0) on channel UNKNOWN (0), not ephemeral, version 0, empty strings: the seven
    // envelope fields are present all the same; content, timestamp, meta and the server stamps
    // are left out when empty or zero.
    #[rustfmt::skip]
    let written = [
        0x0d, 0x00, 0x00, 0x00, 0x00, // version 0.0
        0x12, 0x00,                   // id ""
        0x18, 0x00,                   // type SERVER_ACK = 0
        0x20, 0x00,                   // channel UNKNOWN = 0
        0x28, 0x00,                   // ephemeral false
        0x32, 0x00,                   // source ""
        0x3a, 0x00,                   // destination ""
    ];
    let zero = Message {
        kind: MessageType::ServerAck,
        ..Message::default()
    };
    assert_eq!(encode_binary(&zero), written);
}

#[test]
fn absent_fields_read_as_their_zero_values() {
    // Reading stays as tolerant as proto3: an empty frame is a default message…
    let empty = decode_binary(&[], &LIMITS).unwrap();
    assert_eq!(empty.kind, MessageType::ServerAck);
    assert_eq!(empty.channel, Channel::Unknown);
    assert!(!empty.ephemeral);
    // …and a frame with only an id is a SERVER_ACK on channel UNKNOWN with that id.
    let bare = decode_binary(&[0x12, 0x01, b'a'], &LIMITS).unwrap();
    assert_eq!(
        bare,
        Message {
            id: "a".to_owned(),
            kind: MessageType::ServerAck,
            ..Message::default()
        }
    );
}

#[test]
fn recipients_are_read_and_ignored_and_unknown_enum_numbers_do_not_fail() {
    #[rustfmt::skip]
    let frame = [
        0x12, 0x01, b'a',       // id "a"
        0x18, 0x07,             // type 7: not in the schema -> MESSAGE
        0x20, 0x05,             // channel 5: not in the schema -> UNKNOWN
        0x5a, 0x03, b'b', b'o', b'b', // field 11 `recipients`: "bob"
        0x5a, 0x01, b'c',       // field 11 again: "c"
    ];
    let msg = decode_binary(&frame, &LIMITS).unwrap();
    assert_eq!(
        msg,
        Message {
            id: "a".to_owned(),
            kind: MessageType::Message,
            channel: Channel::Unknown,
            ..Message::default()
        }
    );
    // Re-encoding never writes recipients.
    #[rustfmt::skip]
    let rewritten = [
        0x0d, 0x00, 0x00, 0x00, 0x00, // version 0.0
        0x12, 0x01, b'a',             // id "a"
        0x18, 0x02,                   // type MESSAGE
        0x20, 0x00,                   // channel UNKNOWN
        0x28, 0x00,                   // ephemeral false
        0x32, 0x00,                   // source ""
        0x3a, 0x00,                   // destination ""
    ];
    assert_eq!(encode_binary(&msg), rewritten);
}
