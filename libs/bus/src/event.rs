//! The events topics carry, as JSON. Messages inside them use the protocol crate's lossless
//! internal form of the canonical message.

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

/// What delivery hands one gateway instance: `items`, in order, for the connections each of
/// `users` has there. `Gateway(id)` topic, keyed by conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayEvent {
    pub users: Vec<String>,
    pub items: Vec<Outgoing>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Message {
        Message {
            id: "m-1".into(),
            source: "alice".into(),
            destination: "bob".into(),
            content: br#"{"text":"hi"}"#.to_vec(),
            ..Message::default()
        }
    }

    #[test]
    fn events_round_trip_through_json() {
        let live = GatewayEvent {
            users: vec!["bob".into(), "alice".into()],
            items: vec![Outgoing {
                seq: Some(7),
                device: "phone".into(),
                message: message(),
            }],
        };
        let json = serde_json::to_vec(&live).unwrap();
        assert_eq!(serde_json::from_slice::<GatewayEvent>(&json).unwrap(), live);
        let routed = Routed {
            recipients: vec!["bob".into()],
            device: "laptop".into(),
            message: message(),
        };
        let json = serde_json::to_vec(&routed).unwrap();
        assert_eq!(serde_json::from_slice::<Routed>(&json).unwrap(), routed);
        let ack = ClientAck {
            user: "bob".into(),
            device: "phone".into(),
            id: "m-1".into(),
            upto: Some(Upto {
                conv: "chat:alice".into(),
                seq: 3,
            }),
        };
        let json = serde_json::to_vec(&ack).unwrap();
        assert_eq!(serde_json::from_slice::<ClientAck>(&json).unwrap(), ack);
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
