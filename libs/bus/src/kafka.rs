//! The cluster bus: Kafka through librdkafka.
//!
//! librdkafka's defaults are unsafe for a promise of durability, so every one that matters is
//! set here: the producer is idempotent with `acks=all` and `publish` returns only after the
//! broker confirmed every record; consumers never store an offset by themselves
//! (`enable.auto.offset.store=false`) — a batch's offsets are stored only when its handler
//! has finished, and committed in the background; a new group starts from the earliest record.
//! Records are keyed (by recipient, mostly), so each key keeps its order on one partition.
//! The bus knows which of its consumers hold an assignment, for readiness
//! ([`Bus::unassigned`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::try_join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;

use crate::{Bus, BusError, Lag, Membership, Memberships, Received, Record, Subscription, Topic};

/// How to reach and lay out the cluster's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port` comma separated.
    pub brokers: String,
    /// Prefix of every topic and consumer group name (several deployments can share a cluster).
    pub prefix: String,
    /// Partitions of each topic Samvad creates.
    pub partitions: i32,
    /// Replication factor of each topic Samvad creates (3 in production, with
    /// `min.insync.replicas=2`).
    pub replication: i32,
    /// This process's stable id among its service's replicas. With it, consumers are static
    /// group members (`group.instance.id`): a restarted process takes its partitions back at
    /// once, with no rebalance, and one that is gone for good loses them after the session
    /// timeout. Without it, membership is dynamic.
    pub instance: Option<String>,
    /// Longest time a fetch waits for records (`fetch.wait.max.ms`) on the topics a message
    /// passes on its way to its recipients ([`Topic::is_on_message_path`]); the others wait at
    /// least 500 ms. Kafka answers a fetch as soon as records arrive, so
    /// this only bounds how often an idle consumer asks; a broker that holds every fetch for
    /// its whole wait (tansu) adds up to twice this to each hop.
    pub fetch_wait: Duration,
}

/// How long a gateway's deliveries are kept: they are only useful while its connections live.
const GATEWAY_RETENTION_MS: &str = "3600000";
/// The least a fetch waits on a topic off the message path: an idle consumer there asks the
/// broker twice a second at most.
const BACKGROUND_FETCH_WAIT: Duration = Duration::from_millis(500);
/// How long `publish` waits for the broker before reporting failure (nothing is acked then).
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The replicas that must have a record before the broker acks it (`acks=all`), on the topics
/// Samvad creates: a majority of them, so an ack survives the loss of any minority of brokers
/// (2 of 3). Without it the broker's default, 1, would let an ack stand on one disk.
fn min_insync_replicas(replication: i32) -> i32 {
    replication / 2 + 1
}

fn kafka(e: KafkaError) -> BusError {
    BusError::Storage(e.into())
}

/// The Kafka bus. Cheap to clone.
#[derive(Clone)]
pub struct KafkaBus {
    config: Arc<KafkaConfig>,
    producer: Arc<BaseProducer<Reports>>,
    admin: Arc<AdminClient<DefaultClientContext>>,
    created: Arc<Mutex<HashSet<String>>>,
    members: Memberships,
}

/// The producer's context: a record's delivery report completes the publish waiting for it.
struct Reports;

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<oneshot::Sender<Result<(), KafkaError>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, done: Self::DeliveryOpaque) {
        let _ = done.send(result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()));
    }
}

/// Serves the producer's delivery reports on a thread of its own until the bus is dropped.
/// (rdkafka's `FutureProducer` polls every 100 ms and spins through the last millisecond of
/// each poll: 1 % of a core in every idle process. A poll of a second spins a tenth of that.)
fn serve_reports(producer: Weak<BaseProducer<Reports>>) {
    while let Some(producer) = producer.upgrade() {
        producer.poll(Duration::from_secs(1));
    }
}

/// How often librdkafka reports a consumer's statistics, its lag among them.
const STATISTICS_EVERY: Duration = Duration::from_secs(5);

/// A consumer's librdkafka context: it follows the consumer's rebalances and its lag.
struct GroupContext {
    membership: Arc<Membership>,
    topic: String,
    lag: Lag,
}

impl ClientContext for GroupContext {
    /// The lag is the records after the group's committed offset, summed over the partitions
    /// this member holds (those it does not hold say -1).
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let held = topic
            .partitions
            .iter()
            .filter(|(partition, p)| **partition >= 0 && p.consumer_lag >= 0);
        self.lag
            .set(held.map(|(_, p)| p.consumer_lag.unsigned_abs()).sum());
    }
}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let group = &self.membership.group;
        let assigned = match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(
                    group,
                    partitions = partitions.count(),
                    "partitions assigned"
                );
                true
            }
            Rebalance::Revoke(_) => {
                tracing::info!(group, "partitions revoked");
                false
            }
            Rebalance::Error(error) => {
                tracing::warn!(group, %error, "rebalance failed");
                false
            }
        };
        self.membership.set_assigned(assigned);
    }
}

impl KafkaBus {
    /// Connects and makes sure every durable topic exists.
    pub async fn connect(config: KafkaConfig) -> Result<Self, BusError> {
        let producer: BaseProducer<Reports> = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", SEND_TIMEOUT.as_millis().to_string())
            .create_with_context(Reports)
            .map_err(kafka)?;
        let producer = Arc::new(producer);
        let reports = Arc::downgrade(&producer);
        std::thread::Builder::new()
            .name("kafka-reports".into())
            .spawn(move || serve_reports(reports))
            .map_err(|e| BusError::Storage(e.into()))?;
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .create()
            .map_err(kafka)?;
        let bus = Self {
            config: Arc::new(config),
            producer,
            admin: Arc::new(admin),
            created: Arc::default(),
            members: Memberships::default(),
        };
        if bus.config.replication < 2 {
            tracing::warn!(
                "SAMVAD_KAFKA_REPLICATION=1: the topics Samvad creates keep one copy of each \
                 record, so an ack survives no broker's loss; use 3 in production"
            );
        }
        bus.ensure(&Topic::DURABLE).await?;
        Ok(bus)
    }

    fn name(&self, topic: &Topic) -> String {
        format!("{}{}", self.config.prefix, topic.name())
    }

    /// Creates the topics not yet known to exist; an existing topic is fine.
    async fn ensure(&self, topics: &[Topic]) -> Result<(), BusError> {
        let missing: Vec<(String, bool)> = {
            let created = self.created.lock().unwrap_or_else(|p| p.into_inner());
            topics
                .iter()
                .map(|t| (self.name(t), t.is_durable()))
                .filter(|(name, _)| !created.contains(name))
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        // Ask the cluster first: topics made by an operator (or another node) need no admin call.
        let producer = Arc::clone(&self.producer);
        let existing: HashSet<String> = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(10))
                .map(|m| m.topics().iter().map(|t| t.name().to_owned()).collect())
        })
        .await
        .map_err(|e| BusError::Storage(e.into()))?
        .map_err(kafka)?;
        let missing: Vec<(String, bool)> = missing
            .into_iter()
            .filter(|(name, _)| !existing.contains(name))
            .collect();
        if missing.is_empty() {
            let mut created = self.created.lock().unwrap_or_else(|p| p.into_inner());
            created.extend(topics.iter().map(|t| self.name(t)));
            return Ok(());
        }
        let min_insync = min_insync_replicas(self.config.replication).to_string();
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|(name, durable)| {
                let mut topic = NewTopic::new(
                    name,
                    self.config.partitions,
                    TopicReplication::Fixed(self.config.replication),
                );
                if self.config.replication > 1 {
                    topic = topic.set("min.insync.replicas", &min_insync);
                }
                if *durable {
                    topic
                } else {
                    topic.set("retention.ms", GATEWAY_RETENTION_MS)
                }
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = self
            .admin
            .create_topics(new.iter(), &options)
            .await
            .map_err(kafka)?;
        let mut created = self.created.lock().unwrap_or_else(|p| p.into_inner());
        for result in results {
            match result {
                Ok(name) | Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    created.insert(name);
                }
                Err((name, code)) => {
                    return Err(BusError::Storage(
                        format!("creating topic {name}: {code}").into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Hands one record to the producer; its delivery report arrives on the receiver. A full
    /// queue is waited out (up to the send timeout), as it drains.
    async fn queue(
        &self,
        topic: &str,
        key: &str,
        value: &[u8],
    ) -> Result<oneshot::Receiver<Result<(), KafkaError>>, BusError> {
        let deadline = Instant::now() + SEND_TIMEOUT;
        loop {
            let (done, report) = oneshot::channel();
            let record = BaseRecord::with_opaque_to(topic, Box::new(done))
                .key(key)
                .payload(value);
            match self.producer.send(record) {
                Ok(()) => return Ok(report),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => return Err(kafka(e)),
            }
        }
    }
}

#[async_trait::async_trait]
impl Bus for KafkaBus {
    async fn publish(&self, topic: &Topic, records: Vec<Record>) -> Result<(), BusError> {
        if records.is_empty() {
            return Ok(());
        }
        if !topic.is_durable() {
            self.ensure(std::slice::from_ref(topic)).await?;
        }
        let name = self.name(topic);
        // All sends are queued before any is awaited; the idempotent producer keeps their
        // order per partition while several are in flight.
        let mut reports = Vec::with_capacity(records.len());
        for r in &records {
            let value = r.value.to_bytes()?;
            reports.push(self.queue(&name, &r.key, &value).await?);
        }
        try_join_all(reports.into_iter().map(|report| async {
            report
                .await
                .map_err(|_| BusError::Storage("the Kafka producer is gone".into()))?
                .map_err(kafka)
        }))
        .await?;
        Ok(())
    }

    async fn subscribe(
        &self,
        topic: &Topic,
        group: &str,
    ) -> Result<Box<dyn Subscription>, BusError> {
        self.ensure(std::slice::from_ref(topic)).await?;
        let fetch_wait = if topic.is_on_message_path() {
            self.config.fetch_wait
        } else {
            self.config.fetch_wait.max(BACKGROUND_FETCH_WAIT)
        };
        let mut consumer = ClientConfig::new();
        consumer
            .set("bootstrap.servers", &self.config.brokers)
            .set("group.id", format!("{}{group}", self.config.prefix))
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            // A new group starts from the earliest retained record: with `latest`, records
            // published before the group's first assignment would be skipped.
            .set("auto.offset.reset", "earliest")
            // A member that dies is noticed in seconds, not the default 45 s: its partitions
            // (a recipient's messages) move on quickly.
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "3000")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", fetch_wait.as_millis().to_string())
            .set(
                "statistics.interval.ms",
                STATISTICS_EVERY.as_millis().to_string(),
            );
        if let Some(instance) = &self.config.instance {
            consumer.set("group.instance.id", instance);
        }
        let membership = self.members.join(&format!("{}{group}", self.config.prefix));
        let name = self.name(topic);
        let lag = Lag::default();
        let consumer: StreamConsumer<GroupContext> = consumer
            .create_with_context(GroupContext {
                membership,
                topic: name.clone(),
                lag: lag.clone(),
            })
            .map_err(kafka)?;
        consumer.subscribe(&[&name]).map_err(kafka)?;
        Ok(Box::new(KafkaSubscription {
            consumer,
            topic: name,
            lag,
        }))
    }

    fn unassigned(&self) -> Vec<String> {
        self.members.waiting()
    }
}

/// Dropping it closes the consumer, which commits the offsets stored so far (and only those:
/// records read but not committed go to whoever takes the partition next).
struct KafkaSubscription {
    consumer: StreamConsumer<GroupContext>,
    topic: String,
    lag: Lag,
}

impl KafkaSubscription {
    fn received(message: &rdkafka::message::BorrowedMessage<'_>) -> Received {
        Received {
            partition: message.partition(),
            offset: message.offset().max(0) as u64,
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            value: message
                .payload()
                .map(<[u8]>::to_vec)
                .unwrap_or_default()
                .into(),
        }
    }
}

/// A consumer error librdkafka recovers from by itself (the broker away for a while, a
/// connection dropped) is logged and waited out; a fatal one (this member fenced) is returned.
fn transient(topic: &str, error: KafkaError) -> Result<(), BusError> {
    match error {
        KafkaError::MessageConsumption(code) => {
            tracing::debug!(topic, %code, "consumer error; librdkafka retries");
            Ok(())
        }
        e => Err(kafka(e)),
    }
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        // Leave the group now (committing stored offsets on revoke) rather than when the
        // session times out, so the partitions move to another member at once.
        self.consumer.unsubscribe();
    }
}

#[async_trait::async_trait]
impl Subscription for KafkaSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Received>, BusError> {
        let mut batch = Vec::new();
        while batch.is_empty() {
            match self.consumer.recv().await {
                Ok(message) => batch.push(Self::received(&message)),
                Err(e) => transient(&self.topic, e)?,
            }
        }
        while batch.len() < max {
            match self.consumer.recv().now_or_never() {
                Some(Ok(message)) => batch.push(Self::received(&message)),
                Some(Err(e)) => {
                    transient(&self.topic, e)?;
                    break;
                }
                None => break,
            }
        }
        Ok(batch)
    }

    async fn commit(&mut self, records: &[Received]) -> Result<(), BusError> {
        let mut next: BTreeMap<i32, u64> = BTreeMap::new();
        for r in records {
            let entry = next.entry(r.partition).or_insert(0);
            *entry = (*entry).max(r.offset + 1);
        }
        let mut offsets = TopicPartitionList::new();
        for (partition, offset) in next {
            offsets
                .add_partition_offset(&self.topic, partition, Offset::Offset(offset as i64))
                .map_err(kafka)?;
        }
        match self.consumer.store_offsets(&offsets) {
            Ok(()) => Ok(()),
            // The partition moved to another member in a rebalance: it will redo the batch,
            // which idempotent handlers allow.
            Err(KafkaError::StoreOffset(RDKafkaErrorCode::State)) => Ok(()),
            Err(e) => Err(kafka(e)),
        }
    }

    fn lag(&self) -> Lag {
        self.lag.clone()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_ack_waits_for_a_majority_of_replicas() {
        let majority: Vec<i32> = (1..=5).map(super::min_insync_replicas).collect();
        assert_eq!(majority, [1, 2, 2, 3, 3]);
    }
}
