//! The events topics carry, as JSON. Messages inside them use the protocol crate's lossless
//! internal form of the canonical message.

use samvad_protocol::Message;
use serde::{Deserialize, Serialize};

/// A message for one recipient: `Send`, `System` and `Offline` topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Addressed {
    pub recipient: String,
    pub message: Message,
}

/// A recipient's `CLIENT_ACK` for message `id`: `ClientAcks` topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientAck {
    pub user: String,
    pub id: String,
}

/// A WebSocket connection opened or closed on a gateway: `Connections` topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionEvent {
    pub user: String,
    pub gateway: String,
    pub connection: u64,
    pub connected: bool,
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

/// A message on its way to a connection, with its place in the recipient's inbox
/// (`None` for ephemeral messages, which are never stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    pub seq: Option<u64>,
    pub message: Message,
}

/// What delivery hands one gateway instance: `Gateway(id)` topic.
///
/// Externally tagged (`{"live": {...}}`): an internally tagged enum would buffer its fields,
/// which the message's embedded raw JSON content cannot pass through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GatewayEvent {
    /// New messages for every connection `user` has on this gateway.
    Live { user: String, items: Vec<Outgoing> },
    /// A chunk of what was pending when `connection` opened, in inbox order. The gateway holds
    /// live messages for that connection until the chunk with `done` arrives, then sends those
    /// not already replayed, so a reconnecting client sees one ordered stream.
    Replay {
        user: String,
        connection: u64,
        items: Vec<Outgoing>,
        done: bool,
    },
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
        let live = GatewayEvent::Live {
            user: "bob".into(),
            items: vec![Outgoing {
                seq: Some(7),
                message: message(),
            }],
        };
        let replay = GatewayEvent::Replay {
            user: "bob".into(),
            connection: 3,
            items: vec![],
            done: true,
        };
        for event in [live, replay] {
            let json = serde_json::to_vec(&event).unwrap();
            assert_eq!(
                serde_json::from_slice::<GatewayEvent>(&json).unwrap(),
                event
            );
        }
        let addressed = Addressed {
            recipient: "bob".into(),
            message: message(),
        };
        let json = serde_json::to_vec(&addressed).unwrap();
        assert_eq!(
            serde_json::from_slice::<Addressed>(&json).unwrap(),
            addressed
        );
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
