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
mod nats;
mod pauses;

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use event::{
    Accepted, Addressed, ClientAck, DeviceLogin, GatewayEvent, Outgoing, ParkedRecord, Routed, Upto,
};
pub use inline::{Handler, InlineBus};
pub use kafka::{KafkaBus, KafkaConfig};
pub use nats::{NatsBus, NatsConfig};
pub use pauses::Pauses;

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

    /// Whether a message waits on this topic between its sender and its recipients' devices.
    /// The others (acks, pushes, logins, parked records) carry work no message waits for.
    pub fn is_on_message_path(&self) -> bool {
        matches!(
            self,
            Self::NewMessages | Self::GroupMessages | Self::Send | Self::Gateway(_)
        )
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A record to publish.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    pub value: Value,
}

impl Record {
    /// A record carrying `event`: encoded as JSON by a broker's bus, handed on as it is by the
    /// in-line one.
    pub fn event(key: impl Into<String>, event: impl Event) -> Self {
        Self {
            key: key.into(),
            value: Value::Event(Arc::new(event)),
        }
    }
}

/// A record read from a topic, with its position.
#[derive(Debug, Clone)]
pub struct Received {
    pub partition: i32,
    pub offset: u64,
    pub key: String,
    pub value: Value,
}

/// What a record carries: the bytes a broker stores, or, between services in one process,
/// the event itself, which is never encoded there.
#[derive(Clone)]
pub enum Value {
    Bytes(Vec<u8>),
    Event(Arc<dyn Event>),
}

impl Value {
    /// The value as a broker stores it: an event as JSON.
    pub fn to_bytes(&self) -> Result<Cow<'_, [u8]>, BusError> {
        match self {
            Self::Bytes(bytes) => Ok(Cow::Borrowed(bytes)),
            Self::Event(event) => event.to_json().map(Cow::Owned),
        }
    }

    /// The event, decoded from JSON or taken as it is (cloned only if another consumer holds
    /// it too). A value that is not a `T` comes back with why: consumers park such poison
    /// records (see [`Topic::Parked`]) rather than stop the partition.
    pub fn decode<T: DeserializeOwned + Clone + Any + Send + Sync>(
        self,
    ) -> Result<T, (Self, BusError)> {
        match self {
            Self::Bytes(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| (Self::Bytes(bytes), BusError::Decode(e.into()))),
            Self::Event(event) if (&*event as &dyn Any).is::<T>() => {
                let any: Arc<dyn Any + Send + Sync> = event;
                Ok(Arc::unwrap_or_clone(
                    any.downcast::<T>()
                        .unwrap_or_else(|_| unreachable!("the type was checked")),
                ))
            }
            Self::Event(event) => {
                let error = BusError::Decode(
                    format!("{event:?} is not a {}", std::any::type_name::<T>()).into(),
                );
                Err((Self::Event(event), error))
            }
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes(bytes) => write!(f, "Bytes({})", String::from_utf8_lossy(bytes)),
            Self::Event(event) => event.fmt(f),
        }
    }
}

impl From<Vec<u8>> for Value {
    fn from(bytes: Vec<u8>) -> Self {
        Self::Bytes(bytes)
    }
}

/// An event a record can carry: any of the types in this crate's events (or a test's own).
pub trait Event: Any + Send + Sync + fmt::Debug {
    fn to_json(&self) -> Result<Vec<u8>, BusError>;
}

impl<T: Serialize + Any + Send + Sync + fmt::Debug> Event for T {
    fn to_json(&self) -> Result<Vec<u8>, BusError> {
        serde_json::to_vec(self).map_err(BusError::Encode)
    }
}

/// What a backend (or a consumer's handler) said went wrong, kept whole as the cause.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus storage: {0}")]
    Storage(#[source] Cause),
    #[error("the bus is shutting down")]
    Closed,
    #[error("consumer group {group} is already reading {topic} in this process")]
    GroupTaken { group: String, topic: String },
    #[error("encoding an event: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("decoding an event: {0}")]
    Decode(#[source] Cause),
    #[error("a consumer failed: {0}")]
    Handler(#[source] Cause),
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

    /// The consumer groups this process reads in whose member holds no partitions yet (or is
    /// between assignments): records on their topics wait until it does. For readiness.
    fn unassigned(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The consumer groups a broker's bus reads in this process, and whether each member has
/// been given its partitions yet.
#[derive(Clone, Default)]
pub(crate) struct Memberships(Arc<Mutex<Vec<Weak<Membership>>>>);

/// One subscription's standing in its group. An empty assignment counts as assigned: the
/// group has answered, and this member has no partition only because others hold them all.
pub(crate) struct Membership {
    pub(crate) group: String,
    assigned: AtomicBool,
}

impl Membership {
    pub(crate) fn set_assigned(&self, assigned: bool) {
        self.assigned.store(assigned, Ordering::SeqCst);
    }
}

impl Memberships {
    /// A member of `group`, not yet assigned, followed for as long as it is held.
    pub(crate) fn join(&self, group: &str) -> Arc<Membership> {
        let membership = Arc::new(Membership {
            group: group.to_owned(),
            assigned: AtomicBool::new(false),
        });
        self.lock().push(Arc::downgrade(&membership));
        membership
    }

    pub(crate) fn waiting(&self) -> Vec<String> {
        let mut members = self.lock();
        members.retain(|m| m.strong_count() > 0);
        members
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|m| !m.assigned.load(Ordering::SeqCst))
            .map(|m| m.group.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Membership>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One consumer group member's view of a topic.
#[async_trait::async_trait]
pub trait Subscription: Send {
    /// Waits for the next records, at most `max` of them, in order within each partition.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Received>, BusError>;

    /// Marks `records` as done. Call only once their effects are durable.
    async fn commit(&mut self, records: &[Received]) -> Result<(), BusError>;

    /// How far this member is behind on its partitions, as the backend last learnt it.
    fn lag(&self) -> Lag {
        Lag::default()
    }
}

/// How many records of a subscription's partitions are not yet done: on Kafka the records
/// after the group's committed offsets (from librdkafka's statistics, every 5 s); on NATS those the server has not yet handed its consumers
/// (the `pending` of the last record each partition delivered). A cheap handle, read at every
/// metrics scrape; unknown until the backend first says.
#[derive(Clone, Debug)]
pub struct Lag(Arc<AtomicI64>);

impl Default for Lag {
    fn default() -> Self {
        Self(Arc::new(AtomicI64::new(-1)))
    }
}

impl Lag {
    /// `None` while unknown.
    pub fn get(&self) -> Option<u64> {
        u64::try_from(self.0.load(Ordering::Relaxed)).ok()
    }

    pub(crate) fn set(&self, records: u64) {
        self.0.store(
            i64::try_from(records).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
    }
}
