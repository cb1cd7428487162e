//! The events topics carry: JSON on a broker, the events themselves between services in one
//! process. Messages inside them use the protocol crate's lossless internal form of the
//! canonical message.

use samvad_protocol::Message;
use serde::{Deserialize, Serialize};

/// A message a client sent, as its gateway accepted it, with the sending device:
/// `NewMessages` and `GroupMessages` topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    pub device: String,
    pub message: Message,
}

/// A message on its way to be stored in its conversation, with who takes part in it besides
/// the sender (they are told it is there): `Send` topic. Routers, and the group service for
/// its membership notices (sent by no device: `device` is empty) → delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Routed {
    pub recipients: Vec<String>,
    pub device: String,
    pub message: Message,
    /// Users whose part in the conversation ends with this message: the group service's
    /// notice of their removal, which they still receive, and nothing after it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaving: Vec<String>,
}

/// A message for one recipient: `Offline` topic (delivery → push).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Addressed {
    pub recipient: String,
    pub message: Message,
}

/// A device's `CLIENT_ACK`: `ClientAcks` topic. It acks message `id` (Vartalap's way), or,
/// with `upto`, everything in a conversation up to a seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientAck {
    pub user: String,
    pub device: String,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upto: Option<Upto>,
}

/// A cumulative ack: `conv` as the acking user names it (`chat:<peer>`, `group:<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upto {
    pub conv: String,
    pub seq: u64,
}

/// A device registered at login: `Logins` topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceLogin {
    pub user: String,
    pub device_id: String,
    pub notification_token: String,
    pub message_version: f32,
}

/// A message on its way to a connection: a stored one with its seq in its conversation and
/// the device that sent it (empty for the server's own), or an ephemeral one (no seq).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    pub seq: Option<u64>,
    pub device: String,
    pub message: Message,
}

/// What one gateway instance is handed, for the connections each of `users` has there:
/// `items`, in order (from delivery, keyed by conversation); or devices of theirs that were
/// unlinked, whose connections close (from profile, keyed by user). `Gateway(id)` topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayEvent {
    pub users: Vec<String>,
    pub items: Vec<Outgoing>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unlinked: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, Record, Value};

    fn message() -> Message {
        Message {
            id: "m-1".into(),
            source: "alice".into(),
            destination: "bob".into(),
            content: br#"{"text":"hi"}"#.to_vec(),
            ..Message::default()
        }
    }

    /// What a broker's bus does with an event (JSON there and back) and what the in-line bus
    /// does (hands it on): the consumer decodes the same event either way.
    fn both_ways<T: Event + serde::de::DeserializeOwned + Clone + PartialEq + Sync>(event: T) {
        let record = Record::event("key", event.clone());
        let stored = Value::Bytes(record.value.to_bytes().unwrap().into_owned());
        assert_eq!(stored.decode::<T>().map_err(|(_, e)| e).unwrap(), event);
        assert_eq!(
            record.value.decode::<T>().map_err(|(_, e)| e).unwrap(),
            event
        );
    }

    #[test]
    fn events_decode_alike_from_a_broker_and_in_line() {
        both_ways(GatewayEvent {
            users: vec!["bob".into(), "alice".into()],
            items: vec![Outgoing {
                seq: Some(7),
                device: "phone".into(),
                message: message(),
            }],
            unlinked: vec!["tablet".into()],
        });
        both_ways(Routed {
            recipients: vec!["bob".into()],
            device: "laptop".into(),
            message: message(),
            leaving: vec!["cat".into()],
        });
        both_ways(ClientAck {
            user: "bob".into(),
            device: "phone".into(),
            id: "m-1".into(),
            upto: Some(Upto {
                conv: "chat:alice".into(),
                seq: 3,
            }),
        });
    }

    #[test]
    fn an_event_of_another_type_does_not_decode() {
        let record = Record::event("bob", message());
        let (_, error) = record.value.decode::<ClientAck>().unwrap_err();
        assert!(error.to_string().contains("ClientAck"), "{error}");
    }
}

/// A record a consumer group could not decode, as set aside on the `Parked` topic (keyed by
/// the record's own key): where it came from, why it was refused, and its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: u64,
    pub group: String,
    pub error: String,
    /// The value as text (invalid UTF-8 replaced), which is how every event is written.
    pub value: String,
}
