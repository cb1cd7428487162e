//! Consumers: a service's loop over one topic, with decoding, poison records and retries
//! handled once, here.

use std::any::Any;
use std::future::Future;

use std::sync::Arc;

use samvad_bus::{Bus, BusError, ParkedRecord, Pauses, Received, Record, Topic, Value};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::metrics::{ConsumerLabel, TopicLabel};
use crate::node::{Cause, Context, report};

/// Most records a consumer handles in one batch.
const BATCH: usize = 256;

impl Context {
    /// Joins consumer group `{service}.{topic}` and runs `handler` on each batch of decoded
    /// events until shutdown, committing a batch only after its handler succeeded. On the
    /// all-in-one in-line bus, the handler runs as the records are published instead (see
    /// `samvad_bus::InlineBus`), its failure the publisher's.
    ///
    /// A record that does not decode as `T` is a poison record: it is logged, counted
    /// (`samvad_records_parked`) and published to [`Topic::Parked`], and the batch goes on
    /// without it, so it never blocks its partition. A failing handler (a store briefly down)
    /// gets the same batch again after a growing pause: nothing is skipped, nothing is lost.
    /// Handlers must therefore be idempotent.
    ///
    /// Each topic has a group of its own, so a member joining or leaving one topic's group
    /// (a restart) never pauses the service's other topics.
    pub async fn consume<T, H, F>(
        &self,
        topic: Topic,
        service: &str,
        handler: H,
    ) -> Result<(), BusError>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
        H: Fn(Vec<T>) -> F + Send + Sync + 'static,
        F: Future<Output = Result<(), Cause>> + Send + 'static,
    {
        let group = format!("{service}.{}", topic.name());
        let label = TopicLabel {
            topic: topic.name(),
        };
        let parker = Parker {
            bus: self.bus.clone(),
            topic: topic.clone(),
            group: group.clone(),
            parked: self.metrics.parked.get_or_create(&label).clone(),
        };
        if let Some(inline) = &self.shared.inline {
            let handler: samvad_bus::Handler = Arc::new(move |batch: Vec<Received>| {
                let (items, poison) = decode::<T>(batch);
                let poison = parker.records(poison);
                let handled = handler(items);
                let parker = parker.clone();
                Box::pin(async move {
                    parker.publish(poison?).await?;
                    handled.await.map_err(BusError::Handler)
                })
            });
            inline.attach(&topic, &group, handler)?;
            return Ok(());
        }
        let mut subscription = self.bus.subscribe(&topic, &group).await?;
        self.metrics.lags.follow(
            ConsumerLabel {
                topic: topic.name(),
                group: group.clone(),
            },
            subscription.lag(),
        );
        let retries = self.metrics.retries.get_or_create(&label).clone();
        let shutdown = self.shutdown();
        // Whatever the consumer and its handler log says which group it is.
        let span = tracing::info_span!("consumer", group = %group);
        let consumer = async move {
            let consumed = async {
                loop {
                    let batch = tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        batch = subscription.next_batch(BATCH) => batch?,
                    };
                    let (mut items, poison) = decode::<T>(batch.clone());
                    let mut poison = Some(parker.records(poison)?);
                    let mut pauses = Pauses::default();
                    loop {
                        let attempt = async {
                            if let Some(records) = &poison {
                                parker.publish(records.clone()).await?;
                                poison = None;
                            }
                            handler(items).await
                        };
                        let attempt: Result<(), Cause> = attempt.await;
                        match attempt {
                            Ok(()) => break,
                            Err(error) => {
                                retries.inc();
                                tracing::warn!(%topic, error = report(&*error), "handler failed; retrying the batch");
                                // Stopping with the batch unhandled: it is not committed.
                                tokio::select! {
                                    _ = shutdown.cancelled() => return Ok(()),
                                    _ = tokio::time::sleep(pauses.next_pause()) => {}
                                }
                                // The handler took the batch: decode it again (poison is parked).
                                items = decode::<T>(batch.clone()).0;
                            }
                        }
                    }
                    subscription.commit(&batch).await?;
                }
            };
            let consumed: Result<(), BusError> = consumed.await;
            // However the loop ended: leaving the group (which commits what was stored) blocks
            // in librdkafka, without end while the broker is away. So off the runtime's
            // threads, and waited for only within the node's stop allowance.
            let _ = tokio::task::spawn_blocking(move || drop(subscription)).await;
            consumed.map_err(Cause::from)
        };
        self.spawn("consumer", consumer.instrument(span));
        Ok(())
    }
}

/// Sets poison records aside on the parked topic, with where they came from and why.
#[derive(Clone)]
struct Parker {
    bus: Arc<dyn Bus>,
    topic: Topic,
    group: String,
    parked: prometheus_client::metrics::counter::Counter,
}

impl Parker {
    fn records(&self, poison: Vec<(Received, String)>) -> Result<Vec<Record>, BusError> {
        poison
            .into_iter()
            .map(|(record, error)| {
                tracing::error!(topic = %self.topic, partition = record.partition, offset = record.offset, %error, "parking a record that does not decode");
                let parked = ParkedRecord {
                    topic: self.topic.name(),
                    partition: record.partition,
                    offset: record.offset,
                    group: self.group.clone(),
                    error,
                    value: String::from_utf8_lossy(&record.value.to_bytes()?).into_owned(),
                };
                Ok(Record::event(record.key, parked))
            })
            .collect()
    }

    async fn publish(&self, records: Vec<Record>) -> Result<(), BusError> {
        if records.is_empty() {
            return Ok(());
        }
        let count = records.len() as u64;
        self.bus.publish(&Topic::Parked, records).await?;
        self.parked.inc_by(count);
        Ok(())
    }
}

/// Splits a batch into the events that decode and the records that do not, with why.
fn decode<T: DeserializeOwned + Clone + Any + Send + Sync>(
    batch: Vec<Received>,
) -> (Vec<T>, Vec<(Received, String)>) {
    let mut items = Vec::with_capacity(batch.len());
    let mut poison = Vec::new();
    for mut record in batch {
        match std::mem::replace(&mut record.value, Value::Bytes(Vec::new())).decode() {
            Ok(item) => items.push(item),
            Err((value, error)) => {
                record.value = value;
                poison.push((record, error.to_string()));
            }
        }
    }
    (items, poison)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::Duration;

    use samvad_bus::{Bus, ClientAck, ParkedRecord, Record, Topic};

    use samvad_config::Config;

    use crate::ServiceDef;

    static BUS: OnceLock<Arc<dyn Bus>> = OnceLock::new();
    static SEEN: Mutex<Vec<ClientAck>> = Mutex::new(Vec::new());
    static PARKED: Mutex<Vec<ParkedRecord>> = Mutex::new(Vec::new());

    /// A service that records the client acks it reads.
    const RECORDER: ServiceDef = ServiceDef {
        name: "recorder",
        start: |ctx| {
            Box::pin(async move {
                let _ = BUS.set(ctx.bus.clone());
                ctx.consume(Topic::ClientAcks, "recorder", |acks: Vec<ClientAck>| {
                    SEEN.lock().unwrap().extend(acks);
                    async { Ok(()) }
                })
                .await?;
                // An operator's consumer of what was set aside.
                ctx.consume(Topic::Parked, "operator", |parked: Vec<ParkedRecord>| {
                    PARKED.lock().unwrap().extend(parked);
                    async { Ok(()) }
                })
                .await?;
                Ok(axum::Router::new())
            })
        },
        api: None,
    };

    #[tokio::test]
    async fn a_record_that_does_not_decode_is_parked_counted_and_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let env = HashMap::from([(
            "SAMVAD_DATA_DIR".to_owned(),
            dir.path().display().to_string(),
        )]);
        let settings = Config::parse_with_env(["samvad", "--auth-provider", "dev"], &env)
            .unwrap()
            .validate()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node = crate::start(settings, &[RECORDER], listener).await.unwrap();
        let bus = BUS.get().unwrap();

        let ack = |id: &str| ClientAck {
            user: "bob".into(),
            device: "phone".into(),
            id: id.into(),
            upto: None,
        };
        let poison = Record {
            key: "bob".into(),
            value: b"{\"user\": \"bob\"".to_vec().into(),
        };
        let records = vec![
            Record::event("bob", ack("m-1")),
            poison,
            Record::event("bob", ack("m-2")),
        ];
        bus.publish(&Topic::ClientAcks, records).await.unwrap();

        // The records on either side of the bad one are handled, in order.
        tokio::time::timeout(Duration::from_secs(10), async {
            while SEEN.lock().unwrap().len() < 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("both good records handled");
        assert_eq!(*SEEN.lock().unwrap(), vec![ack("m-1"), ack("m-2")]);

        // The bad one is set aside on the parked topic, with where it came from and why.
        tokio::time::timeout(Duration::from_secs(10), async {
            while PARKED.lock().unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the bad record parked");
        let record = PARKED.lock().unwrap()[0].clone();
        assert_eq!(
            (record.topic.as_str(), record.offset, record.group.as_str()),
            ("client-acks.v2", 1, "recorder.client-acks.v2")
        );
        assert_eq!(record.value, "{\"user\": \"bob\"");
        assert!(record.error.contains("EOF"), "{}", record.error);

        let metrics = reqwest::get(format!("http://{}/metrics", node.addr()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("samvad_records_parked_total{topic=\"client-acks.v2\"} 1"),
            "{metrics}"
        );
        node.stop();
        node.stopped().await.unwrap();
    }
}
