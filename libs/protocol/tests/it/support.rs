//! Shared fixtures.

use std::collections::BTreeMap;

use samvad_protocol::{Channel, Limits, Message, MessageType};

/// Generous enough for every generated frame; the size limit has its own tests.
pub const LIMITS: Limits = Limits { max_bytes: 1 << 20 };

/// The one sample message every encoding is snapshotted with: alice tells bob "hi".
pub fn sample() -> Message {
    Message {
        version: 2.1,
        id: "m-1".to_owned(),
        kind: MessageType::Message,
        channel: Channel::Individual,
        ephemeral: false,
        source: "alice".to_owned(),
        destination: "bob".to_owned(),
        timestamp: 1_700_000_000_000,
        content: br#"{"text":"hi"}"#.to_vec(),
        meta: BTreeMap::from([("chatId".to_owned(), "bob".to_owned())]),
        server_id: "srv-1".to_owned(),
        server_timestamp: 1_700_000_000_123,
    }
}

pub fn meta<const N: usize>(pairs: [(&str, &str); N]) -> BTreeMap<String, String> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
