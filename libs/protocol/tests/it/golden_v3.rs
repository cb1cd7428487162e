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

#[test]
fn default_fields_are_not_written_and_an_empty_frame_is_a_default_message() {
    // proto3 omits zero values: a SERVER_ACK (0) on channel UNKNOWN (0) with only an id.
    let bare = Message {
        id: "a".to_owned(),
        kind: MessageType::ServerAck,
        ..Message::default()
    };
    assert_eq!(encode_binary(&bare), [0x12, 0x01, b'a']);
    let empty = decode_binary(&[], &LIMITS).unwrap();
    assert_eq!(empty.kind, MessageType::ServerAck);
    assert_eq!(empty.channel, Channel::Unknown);
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
    assert_eq!(encode_binary(&msg), [0x12, 0x01, b'a', 0x18, 0x02]);
}
