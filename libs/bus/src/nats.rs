//! The cluster bus on NATS JetStream, with Kafka's semantics (see the crate's docs).
//!
//! - **Topics and partitions.** Each topic is a stream, `{prefix}{topic}` with its dots made
//!   underscores, on file storage with the replicas the operator sets, keeping records for as
//!   long as Kafka does by default (seven days; a gateway's, an hour). A record goes to subject
//!   `{prefix}{topic}.{partition}`, its partition a hash of its key, so each key keeps its order;
//!   the key travels in the `Samvad-Key` header.
//! - **Publish** returns once JetStream has acked every record (on every replica's quorum). The
//!   records of one call are all sent before any ack is awaited; one connection keeps their
//!   order. A message record carries `Nats-Msg-Id`, a digest of its key and bytes, so a publish
//!   retried within the stream's two-minute window is stored once.
//! - **Consumer groups.** A group has one durable pull consumer per partition,
//!   `{group}_{partition}`, filtered on that partition's subject and acked cumulatively
//!   (`AckPolicy::All`) once a batch's effects are durable — the commit. Only one member reads a
//!   partition at a time, which is what keeps a key's order across members: members hold
//!   leases on partitions in a key-value bucket (`{prefix}groups`, entries living ten seconds,
//!   renewed every three), each taking its share, the ceiling of partitions over live members.
//!   A member that takes a partition first recreates its consumer at the acked floor, so
//!   records a gone member had read but not acked come again, in order, before anything newer
//!   (JetStream would otherwise redeliver them after newer ones once their ack wait ran out).
//! - **Redelivery** is not bounded by the consumer (`max_deliver` unlimited): as on Kafka, a
//!   record that does not decode is parked at once by the consumer loop, and a handler that fails
//!   (a store away) gets its batch again until it succeeds, since the record is not at fault.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self, Context, Message, kv};
use futures_util::StreamExt;
use futures_util::future::try_join_all;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::{Bus, BusError, Lag, Membership, Memberships, Received, Record, Subscription, Topic};

/// How to reach JetStream and lay out Samvad's streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server URLs, comma separated (`nats://host:4222`, or `tls://…` to require TLS).
    pub url: String,
    /// A `.creds` file (JWT and NKey seed) to authenticate with.
    pub credentials: Option<PathBuf>,
    /// PEM roots to verify the servers' TLS certificates with, beside the system's.
    pub ca_file: Option<PathBuf>,
    /// Prefix of every subject, stream, consumer and bucket name.
    pub prefix: String,
    /// Partitions of each topic: the most members of a group that read at once.
    pub partitions: u32,
    /// Replicas of each stream Samvad creates (3 in production).
    pub replicas: usize,
    /// This process's stable id among its service's replicas: its name in the lease bucket.
    pub instance: Option<String>,
}

/// How long records are kept: Kafka's default retention, and a gateway's hour.
const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
const GATEWAY_RETENTION: Duration = Duration::from_secs(3600);
/// The window in which a record with the same `Nats-Msg-Id` is stored once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long `publish` waits for JetStream's ack before reporting failure (nothing is acked then).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// A lease lives this long unless renewed; a member that dies loses its partitions after it.
const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often a member renews its leases and looks for its share of partitions.
const LEASE_RENEW: Duration = Duration::from_secs(3);
/// How long a delivered record may stay unacked before JetStream offers it again (a member
/// that holds its partition acks long before; a batch retried for longer is acked when done).
const ACK_WAIT: Duration = Duration::from_secs(60);
/// Records a partition's reader fetches ahead of the consumer loop.
const READ_AHEAD: usize = 256;
/// The header a record's key travels in.
const KEY_HEADER: &str = "Samvad-Key";

fn nats(e: impl Into<crate::Cause>) -> BusError {
    BusError::Storage(e.into())
}

/// A name JetStream accepts for a stream, consumer or bucket: no dots, wildcards or spaces.
fn token(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The partition a key's records go to: the same for a key in every process and release.
fn partition(key: &str, partitions: u32) -> u32 {
    // FNV-1a: stable across processes, unlike std's randomly seeded hasher.
    let mut hash: u32 = 0x811c_9dc5;
    for byte in key.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % partitions.max(1)
}

/// The bus. Cheap to clone.
#[derive(Clone)]
pub struct NatsBus {
    config: Arc<NatsConfig>,
    js: Context,
    leases: kv::Store,
    streams: Arc<Mutex<HashMap<String, stream::Stream>>>,
    members: Memberships,
    /// This process's name among the members of its groups.
    member: Arc<str>,
}

impl NatsBus {
    /// Connects and makes sure every durable topic's stream and the lease bucket exist.
    pub async fn connect(config: NatsConfig) -> Result<Self, BusError> {
        let member: Arc<str> = match &config.instance {
            Some(instance) => token(instance).into(),
            None => uuid::Uuid::now_v7().simple().to_string().into(),
        };
        let mut options = async_nats::ConnectOptions::new().name(format!("samvad {member}"));
        if let Some(path) = &config.credentials {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| nats(format!("reading {}: {e}", path.display())))?;
        }
        if let Some(path) = &config.ca_file {
            options = options.add_root_certificates(path.clone());
        }
        let client = options.connect(config.url.as_str()).await.map_err(nats)?;
        let js = jetstream::ContextBuilder::new()
            .timeout(SEND_TIMEOUT)
            .build(client);
        if config.replicas < 2 {
            tracing::warn!(
                "SAMVAD_NATS_REPLICAS=1: the streams Samvad creates keep one copy of each record, \
                 so an ack survives no server's loss; use 3 in production"
            );
        }
        let leases = js
            .create_key_value(kv::Config {
                bucket: token(&format!("{}groups", config.prefix)),
                description: "which member of a Samvad consumer group reads which partition".into(),
                history: 1,
                max_age: LEASE_TTL,
                // On file, like the streams: a bucket in memory would be gone after the
                // server restarts, and with it every group's way to take partitions.
                storage: StorageType::File,
                num_replicas: config.replicas,
                ..Default::default()
            })
            .await
            .map_err(nats)?;
        let bus = Self {
            config: Arc::new(config),
            js,
            leases,
            streams: Arc::default(),
            members: Memberships::default(),
            member,
        };
        for topic in &Topic::DURABLE {
            bus.stream(topic).await?;
        }
        Ok(bus)
    }

    /// What the topic's subjects start with: `{base}.{partition}` each.
    fn subjects(&self, topic: &Topic) -> String {
        format!("{}{}", self.config.prefix, topic.name())
    }

    /// The topic's stream, created if it does not exist (an existing one is used as it is).
    async fn stream(&self, topic: &Topic) -> Result<stream::Stream, BusError> {
        let name = token(&self.subjects(topic));
        if let Some(stream) = self.lock_streams().get(&name) {
            return Ok(stream.clone());
        }
        let stream = self
            .js
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("{}.*", self.subjects(topic))],
                storage: StorageType::File,
                num_replicas: self.config.replicas,
                max_age: if topic.is_durable() {
                    RETENTION
                } else {
                    GATEWAY_RETENTION
                },
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await
            .map_err(|e| nats(format!("stream {name}: {e}")))?;
        self.lock_streams().insert(name, stream.clone());
        Ok(stream)
    }

    fn lock_streams(&self) -> std::sync::MutexGuard<'_, HashMap<String, stream::Stream>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl Bus for NatsBus {
    async fn publish(&self, topic: &Topic, records: Vec<Record>) -> Result<(), BusError> {
        if records.is_empty() {
            return Ok(());
        }
        if !topic.is_durable() {
            self.stream(topic).await?;
        }
        // Records on these topics are messages: the same key and bytes are the same message.
        let dedup = topic.is_durable() && topic.is_on_message_path();
        let subjects = self.subjects(topic);
        let mut acks = Vec::with_capacity(records.len());
        for r in &records {
            let value = r.value.to_bytes()?;
            let mut headers = HeaderMap::new();
            headers.insert(KEY_HEADER, r.key.as_str());
            if dedup {
                let mut digest = Sha256::new();
                digest.update(r.key.as_bytes());
                digest.update([0]);
                digest.update(&value);
                let mut id = String::with_capacity(64);
                for byte in digest.finalize() {
                    let _ = write!(id, "{byte:02x}");
                }
                headers.insert("Nats-Msg-Id", id.as_str());
            }
            let subject = format!("{subjects}.{}", partition(&r.key, self.config.partitions));
            let ack = self
                .js
                .publish_with_headers(subject, headers, value.into_owned().into())
                .await
                .map_err(nats)?;
            acks.push(ack.into_future());
        }
        try_join_all(acks).await.map_err(nats)?;
        Ok(())
    }

    async fn subscribe(
        &self,
        topic: &Topic,
        group: &str,
    ) -> Result<Box<dyn Subscription>, BusError> {
        let stream = self.stream(topic).await?;
        let group = format!("{}{group}", self.config.prefix);
        let membership = self.members.join(&group);
        let (records, received) = mpsc::channel(READ_AHEAD);
        let (stop, stopped) = oneshot::channel();
        let live = Arc::new(Mutex::new(HashMap::new()));
        let member = Member {
            leases: self.leases.clone(),
            stream,
            group: token(&group),
            member: Arc::clone(&self.member),
            partitions: self.config.partitions,
            subjects: self.subjects(topic),
            records,
            live: Arc::clone(&live),
        };
        tokio::spawn(member.run(stopped, membership));
        Ok(Box::new(NatsSubscription {
            received,
            live,
            pending: BTreeMap::new(),
            behind: BTreeMap::new(),
            lag: Lag::default(),
            _stop: stop,
        }))
    }

    /// A member counts as assigned once its first round of leases is done, whatever it took.
    fn unassigned(&self) -> Vec<String> {
        self.members.waiting()
    }
}

/// A record as a partition's reader hands it on: from which incarnation of the partition's
/// consumer it came, so that one read before the partition moved is neither handed out nor
/// acked after.
struct Delivery {
    partition: u32,
    generation: u64,
    message: Message,
}

/// Partition → the generation of the consumer this member reads it through now.
type Live = Arc<Mutex<HashMap<u32, u64>>>;

fn lock(live: &Live) -> std::sync::MutexGuard<'_, HashMap<u32, u64>> {
    live.lock().unwrap_or_else(|p| p.into_inner())
}

/// One member of a consumer group: holds its leases and runs a reader per partition it holds.
struct Member {
    leases: kv::Store,
    stream: stream::Stream,
    group: String,
    member: Arc<str>,
    partitions: u32,
    /// The topic's subjects, `{subjects}.{partition}`.
    subjects: String,
    records: mpsc::Sender<Delivery>,
    live: Live,
}

/// A partition this member holds: the lease's revision, and its reader.
struct Held {
    revision: u64,
    reader: tokio::task::JoinHandle<()>,
}

impl Member {
    fn owner_key(&self, partition: u32) -> String {
        format!("{}.owner.{partition}", self.group)
    }

    fn member_key(&self) -> String {
        format!("{}.member.{}", self.group, self.member)
    }

    /// Renews leases and takes or gives up partitions every [`LEASE_RENEW`] until the
    /// subscription is dropped, then gives back what it holds so others take it at once.
    async fn run(self, mut stopped: oneshot::Receiver<()>, membership: Arc<Membership>) {
        let mut held: BTreeMap<u32, Held> = BTreeMap::new();
        let mut generation = 0;
        loop {
            match self.round(&mut held, &mut generation).await {
                Ok(()) => membership.set_assigned(true),
                Err(error) => {
                    tracing::warn!(group = self.group, %error, "renewing partition leases failed");
                }
            }
            tokio::select! {
                _ = &mut stopped => break,
                _ = tokio::time::sleep(LEASE_RENEW) => {}
            }
        }
        for (partition, lease) in std::mem::take(&mut held) {
            self.release(partition, lease).await;
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.leases.delete(self.member_key()),
        )
        .await;
    }

    async fn round(
        &self,
        held: &mut BTreeMap<u32, Held>,
        generation: &mut u64,
    ) -> Result<(), BusError> {
        self.leases
            .put(self.member_key(), bytes::Bytes::new())
            .await
            .map_err(nats)?;
        // Renew what this member holds; a lease someone else took (this member was away
        // longer than the lease lives) is given up.
        let mut lost = Vec::new();
        for (&partition, lease) in held.iter_mut() {
            match self
                .leases
                .update(
                    self.owner_key(partition),
                    self.member.as_bytes().to_vec().into(),
                    lease.revision,
                )
                .await
            {
                Ok(revision) => lease.revision = revision,
                Err(error) => {
                    tracing::info!(group = self.group, partition, %error, "partition lease lost");
                    lost.push(partition);
                }
            }
        }
        for partition in lost {
            if let Some(lease) = held.remove(&partition) {
                self.stop_reading(partition, lease);
            }
        }
        let members = self.members().await?.max(1);
        let share = self.partitions.div_ceil(members) as usize;
        while held.len() > share {
            if let Some((partition, lease)) = held.pop_last() {
                self.release(partition, lease).await;
            }
        }
        for partition in 0..self.partitions {
            if held.len() >= share {
                break;
            }
            if held.contains_key(&partition) {
                continue;
            }
            let taken = self
                .leases
                .create(
                    self.owner_key(partition),
                    self.member.as_bytes().to_vec().into(),
                )
                .await;
            if let Ok(revision) = taken {
                *generation += 1;
                tracing::info!(group = self.group, partition, "partition taken");
                let reader = self.read(partition, *generation).await?;
                held.insert(partition, Held { revision, reader });
            }
        }
        Ok(())
    }

    /// How many members of this group renewed their entry within the lease's life.
    async fn members(&self) -> Result<u32, BusError> {
        let prefix = format!("{}.member.", self.group);
        let mut keys = self.leases.keys().await.map_err(nats)?;
        let mut count = 0;
        while let Some(key) = keys.next().await {
            if key.map_err(nats)?.starts_with(&prefix) {
                count += 1;
            }
        }
        Ok(count)
    }

    fn stop_reading(&self, partition: u32, lease: Held) {
        lock(&self.live).remove(&partition);
        lease.reader.abort();
    }

    async fn release(&self, partition: u32, lease: Held) {
        self.stop_reading(partition, lease);
        tracing::info!(group = self.group, partition, "partition given up");
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.leases.delete(self.owner_key(partition)),
        )
        .await;
    }

    /// Starts reading a partition just taken: its consumer is made anew at the acked floor, so
    /// whatever was delivered but not acked comes first, in order.
    async fn read(
        &self,
        partition: u32,
        generation: u64,
    ) -> Result<tokio::task::JoinHandle<()>, BusError> {
        let name = format!("{}_{partition}", self.group);
        let acked = match self.stream.consumer_info(&name).await {
            Ok(info) => Some(info.ack_floor.stream_sequence),
            Err(e) if matches!(e.kind(), ConsumerInfoErrorKind::NotFound) => None,
            Err(e) => return Err(nats(e)),
        };
        let deliver_policy = match acked {
            Some(acked) => {
                self.stream.delete_consumer(&name).await.map_err(nats)?;
                DeliverPolicy::ByStartSequence {
                    start_sequence: acked + 1,
                }
            }
            // A new group starts from the earliest record, as on Kafka.
            None => DeliverPolicy::All,
        };
        let consumer: PullConsumer = self
            .stream
            .create_consumer(pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: format!("{}.{partition}", self.subjects),
                deliver_policy,
                ack_policy: AckPolicy::All,
                ack_wait: ACK_WAIT,
                max_deliver: -1,
                ..Default::default()
            })
            .await
            .map_err(|e| nats(format!("consumer {name}: {e}")))?;
        lock(&self.live).insert(partition, generation);
        let records = self.records.clone();
        let group = self.group.clone();
        Ok(tokio::spawn(async move {
            loop {
                let messages = consumer
                    .stream()
                    .max_messages_per_batch(READ_AHEAD)
                    .messages()
                    .await;
                let mut messages = match messages {
                    Ok(messages) => messages,
                    Err(error) => {
                        tracing::warn!(group, partition, %error, "reading a partition failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                while let Some(message) = messages.next().await {
                    match message {
                        Ok(message) => {
                            let delivery = Delivery {
                                partition,
                                generation,
                                message,
                            };
                            if records.send(delivery).await.is_err() {
                                return;
                            }
                        }
                        Err(error) => {
                            tracing::debug!(group, partition, %error, "pull interrupted; pulling again");
                            break;
                        }
                    }
                }
            }
        }))
    }
}

/// Dropping it gives the group's partitions back.
struct NatsSubscription {
    received: mpsc::Receiver<Delivery>,
    live: Live,
    /// Records handed out and not yet committed, to ack through.
    pending: BTreeMap<(u32, u64), (u64, Message)>,
    /// Per partition, the records its consumer had still to deliver when it delivered the
    /// last one read.
    behind: BTreeMap<u32, u64>,
    lag: Lag,
    _stop: oneshot::Sender<()>,
}

impl NatsSubscription {
    /// The record, unless its partition has moved since it was read.
    fn accept(&mut self, delivery: Delivery) -> Option<Received> {
        if lock(&self.live).get(&delivery.partition) != Some(&delivery.generation) {
            return None;
        }
        let message = delivery.message;
        let info = message.info().ok()?;
        let offset = info.stream_sequence;
        self.behind.insert(delivery.partition, info.pending);
        let key = message
            .headers
            .as_ref()
            .and_then(|h| h.get(KEY_HEADER))
            .map(|k| k.as_str().to_owned())
            .unwrap_or_default();
        let received = Received {
            partition: delivery.partition as i32,
            offset,
            key,
            value: message.payload.to_vec().into(),
        };
        self.pending
            .insert((delivery.partition, offset), (delivery.generation, message));
        Some(received)
    }
}

#[async_trait::async_trait]
impl Subscription for NatsSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Received>, BusError> {
        let mut batch = Vec::new();
        while batch.is_empty() {
            let delivery = self.received.recv().await.ok_or(BusError::Closed)?;
            batch.extend(self.accept(delivery));
            while batch.len() < max {
                match self.received.try_recv() {
                    Ok(delivery) => batch.extend(self.accept(delivery)),
                    Err(_) => break,
                }
            }
        }
        let live = lock(&self.live);
        self.behind
            .retain(|partition, _| live.contains_key(partition));
        drop(live);
        self.lag.set(self.behind.values().sum());
        Ok(batch)
    }

    async fn commit(&mut self, records: &[Received]) -> Result<(), BusError> {
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        for r in records {
            let entry = last.entry(r.partition as u32).or_insert(0);
            *entry = (*entry).max(r.offset);
        }
        for (partition, offset) in last {
            let Some((generation, message)) = self.pending.remove(&(partition, offset)) else {
                continue;
            };
            // Acking cumulatively through the last record acks the partition's whole batch.
            // A partition that moved meanwhile is not acked: its new reader redoes the batch,
            // which idempotent handlers allow.
            if lock(&self.live).get(&partition) == Some(&generation) {
                message.double_ack().await.map_err(nats)?;
            }
            self.pending
                .retain(|&(p, o), _| p != partition || o > offset);
        }
        Ok(())
    }

    fn lag(&self) -> Lag {
        self.lag.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_has_one_partition_everywhere() {
        // Pinned: records already stored under these partitions must keep going there.
        let partitions: Vec<u32> = ["ann", "bob", "cat", ""]
            .iter()
            .map(|k| partition(k, 6))
            .collect();
        assert_eq!(partitions, [2, 2, 5, 1]);
        assert!((0..1000).all(|i| partition(&i.to_string(), 6) < 6));
        assert_eq!(partition("anything", 1), 0);
    }

    #[test]
    fn names_are_jetstream_tokens() {
        assert_eq!(token("samvad.send.v2"), "samvad_send_v2");
        assert_eq!(token("a b*c>d"), "a_b_c_d");
    }
}
