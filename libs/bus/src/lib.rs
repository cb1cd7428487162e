//! The message bus between services: a closed list of topics, the events they carry, and the
//! `Bus` trait with its backends.
//!
//! Semantics are Kafka's, whatever the backend: a topic is an ordered log of keyed records;
//! records with the same key keep their order; each consumer group reads every record at least
//! once and commits its position only after the record's effects are durable, so a crash
//! redelivers rather than loses. `publish` returns once the records are durable, which is what
//! lets a gateway promise a client that an acknowledged message survives any crash.

mod event;
mod inline;
mod kafka;

use std::fmt;

pub use event::{
    Accepted, Addressed, ClientAck, DeviceLogin, GatewayEvent, Outgoing, ParkedRecord, Routed, Upto,
};
pub use inline::{Handler, InlineBus};
pub use kafka::{KafkaBus, KafkaConfig};

/// Every topic the services exchange. Names are `{prefix}{name}`; the `.vN` suffix versions the
/// payload schema so a change can run beside the old one during a rolling upgrade (`.v2`: the
/// events carry the sending device and are keyed by conversation).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Messages accepted from clients, keyed by conversation. gateways → message-router.
    NewMessages,
    /// Messages for a group, keyed by conversation. message-router → group-router.
    GroupMessages,
    /// Messages to store, with who takes part, keyed by conversation: routers and the group
    /// service (its membership notices) → delivery. One topic, so a group's creation notice
    /// is stored before the group's first message.
    Send,
    /// Client acks, keyed by the acking user. gateways → delivery.
    ClientAcks,
    /// Messages kept for a recipient who is offline, keyed by recipient. delivery → push.
    Offline,
    /// Logins with device tokens, keyed by user. profile → push.
    Logins,
    /// Records a consumer could not decode, set aside with why, so that one bad record never
    /// blocks its partition. Any consumer → operators.
    Parked,
    /// Deliveries for the connections one gateway instance holds. delivery → that gateway.
    Gateway(String),
}

impl Topic {
    /// Every topic that exists once per deployment (gateway topics come and go with gateways).
    pub const DURABLE: [Topic; 7] = [
        Self::NewMessages,
        Self::GroupMessages,
        Self::Send,
        Self::ClientAcks,
        Self::Offline,
        Self::Logins,
        Self::Parked,
    ];

    pub fn name(&self) -> String {
        match self {
            Self::NewMessages => "new-messages.v2".into(),
            Self::GroupMessages => "group-messages.v2".into(),
            Self::Send => "send.v2".into(),
            Self::ClientAcks => "client-acks.v2".into(),
            Self::Offline => "offline.v1".into(),
            Self::Logins => "logins.v1".into(),
            Self::Parked => "parked.v1".into(),
            Self::Gateway(id) => format!("gateway.{id}.v2"),
        }
    }

    /// Whether a record must be on disk before `publish` returns. Gateway deliveries need not
    /// be: the message they carry is already stored, and a connection that sees a seq missing
    /// reads it from the timeline.
    pub fn is_durable(&self) -> bool {
        !matches!(self, Self::Gateway(_))
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A record to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub value: Vec<u8>,
}

impl Record {
    /// A record whose value is `event` as JSON.
    pub fn json(key: impl Into<String>, event: &impl serde::Serialize) -> Result<Self, BusError> {
        Ok(Self {
            key: key.into(),
            value: serde_json::to_vec(event).map_err(|e| BusError::Encode(e.to_string()))?,
        })
    }
}

/// A record read from a topic, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub partition: i32,
    pub offset: u64,
    pub key: String,
    pub value: Vec<u8>,
}

impl Received {
    /// Decodes the JSON value. A record that does not decode is a poison record: consumers
    /// park it (see [`Topic::Parked`]) rather than stop the partition.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, BusError> {
        serde_json::from_slice(&self.value).map_err(|e| BusError::Decode(e.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus storage: {0}")]
    Storage(String),
    #[error("the bus is shutting down")]
    Closed,
    #[error("consumer group {group} is already reading {topic} in this process")]
    GroupTaken { group: String, topic: String },
    #[error("encoding an event: {0}")]
    Encode(String),
    #[error("decoding an event: {0}")]
    Decode(String),
    #[error("a consumer failed: {0}")]
    Handler(String),
}

/// Publishes records and opens consumer-group subscriptions.
#[async_trait::async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Appends `records` to `topic` in order. Returns once they are durable (for durable topics).
    async fn publish(&self, topic: &Topic, records: Vec<Record>) -> Result<(), BusError>;

    /// Joins consumer group `group` on `topic`, resuming after its last commit (or from the
    /// earliest retained record for a new group).
    async fn subscribe(
        &self,
        topic: &Topic,
        group: &str,
    ) -> Result<Box<dyn Subscription>, BusError>;
}

/// One consumer group member's view of a topic.
#[async_trait::async_trait]
pub trait Subscription: Send {
    /// Waits for the next records, at most `max` of them, in order within each partition.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Received>, BusError>;

    /// Marks `records` as done. Call only once their effects are durable.
    async fn commit(&mut self, records: &[Received]) -> Result<(), BusError>;
}
