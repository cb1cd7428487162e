//! The server's acknowledgement and the checks on what clients send.

use samvad_protocol::{Channel, InvalidMessage, MAX_ID_BYTES, Message, MessageType};

use crate::support::sample;

#[test]
fn server_ack_tells_the_sender_which_message_is_durable() {
    let ack = sample().server_ack();
    assert_eq!(
        ack,
        Message {
            version: 2.1,
            id: "m-1".to_owned(),
            kind: MessageType::ServerAck,
            channel: Channel::Individual,
            ephemeral: true,
            source: "server".to_owned(),
            destination: "alice".to_owned(),
            timestamp: 1_700_000_000_123,
            content: Vec::new(),
            meta: Default::default(),
            server_id: "srv-1".to_owned(),
            server_timestamp: 1_700_000_000_123,
        }
    );
}

#[test]
fn a_well_formed_client_message_is_accepted() {
    assert_eq!(sample().validate_from_client(), Ok(()));
    let client_ack = Message {
        kind: MessageType::ClientAck,
        destination: String::new(),
        content: Vec::new(),
        ..sample()
    };
    assert_eq!(
        client_ack.validate_from_client(),
        Ok(()),
        "acks need no destination"
    );
    let longest_id = Message {
        id: "x".repeat(MAX_ID_BYTES),
        ..sample()
    };
    assert_eq!(longest_id.validate_from_client(), Ok(()));
}

#[test]
fn each_client_mistake_is_named() {
    let check = |msg: Message| msg.validate_from_client().unwrap_err();
    assert_eq!(
        check(Message {
            id: String::new(),
            ..sample()
        }),
        InvalidMessage::EmptyId
    );
    assert_eq!(
        check(Message {
            id: "é".repeat(129),
            ..sample()
        }),
        InvalidMessage::IdTooLong { len: 258, max: 256 }
    );
    assert_eq!(
        check(sample().server_ack()),
        InvalidMessage::ServerAckFromClient
    );
    for kind in [
        MessageType::Message,
        MessageType::Notification,
        MessageType::Custom,
    ] {
        assert_eq!(
            check(Message {
                kind,
                destination: String::new(),
                ..sample()
            }),
            InvalidMessage::MissingDestination { kind }
        );
    }
    let not_json = check(Message {
        content: b"hello bob".to_vec(),
        ..sample()
    });
    assert!(matches!(not_json, InvalidMessage::ContentNotJson { .. }));
    assert!(
        not_json
            .to_string()
            .contains("this server only accepts JSON content"),
        "{not_json}"
    );
}

#[test]
fn content_nested_beyond_the_json_limit_is_refused_not_overflowed() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let err = Message {
        content: deep.into_bytes(),
        ..sample()
    }
    .validate_from_client()
    .unwrap_err();
    assert!(err.to_string().contains("recursion limit"), "{err}");
}
