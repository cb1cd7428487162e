//! The all-in-one bus: a publish runs the consumers of its topic in line and returns once they
//! have, so a message's one durable write — its timeline append, at the end of the chain
//! gateway → message-router → (group-router) → delivery — is done before `publish` returns
//! to the gateway, which then acks. Nothing in between touches a disk or is encoded (records
//! carry the events themselves), and a failure anywhere in the chain comes back to that one
//! publisher: its client gets an error, never an ack.
//!
//! Client acks run in line too: their publisher (the gateways' ack queue) already gathers them
//! in the background, and its publish then returns once the cursors moved, so a device that
//! reconnects finds its acks applied. Topics whose loss in a crash costs only redundant work —
//! offline pushes (a nudge), logins — are queued instead: `publish` returns at once, and one
//! worker per consumer hands them on in order, in batches, retrying a failed batch with a
//! growing pause.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use crate::{Bus, BusError, Pauses, Received, Record, Subscription, Topic};

/// A consumer run in line: it gets the records of one publish (or, for a queued topic, of
/// several) and returns once their effects are durable.
pub type Handler =
    Arc<dyn Fn(Vec<Received>) -> BoxFuture<'static, Result<(), BusError>> + Send + Sync>;

/// Batches a queued consumer may have waiting before a publisher waits for room.
const QUEUE: usize = 1024;
/// Most records a queued consumer handles at once.
const BATCH: usize = 512;

enum Consumer {
    Inline(Handler),
    Queued(mpsc::Sender<Vec<Received>>),
}

/// A topic's consumers, and the offset its next record gets (for logs and parked records).
#[derive(Default)]
struct TopicState {
    next: AtomicU64,
    consumers: Vec<(String, Arc<Consumer>)>,
}

/// See the module documentation. Cheap to clone: clones share the consumers.
#[derive(Clone, Default)]
pub struct InlineBus {
    topics: Arc<RwLock<HashMap<String, TopicState>>>,
}

impl InlineBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `handler` consumer group `group` of `topic`. Call from within a Tokio runtime: a
    /// queued topic's worker is spawned on it.
    pub fn attach(&self, topic: &Topic, group: &str, handler: Handler) -> Result<(), BusError> {
        let mut topics = self.topics.write().unwrap_or_else(|p| p.into_inner());
        let list = &mut topics.entry(topic.name()).or_default().consumers;
        if list.iter().any(|(g, _)| g == group) {
            return Err(BusError::GroupTaken {
                group: group.to_owned(),
                topic: topic.name(),
            });
        }
        // The topics a message passes on its way, and client acks, run in line with the
        // publisher; the rest queue.
        let consumer = if topic.is_on_message_path() || matches!(topic, Topic::ClientAcks) {
            Consumer::Inline(handler)
        } else {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(work(topic.name(), rx, handler));
            Consumer::Queued(tx)
        };
        list.push((group.to_owned(), Arc::new(consumer)));
        Ok(())
    }
}

/// A queued consumer's worker: in order, in batches, each retried until it succeeds.
async fn work(topic: String, mut rx: mpsc::Receiver<Vec<Received>>, handler: Handler) {
    while let Some(mut batch) = rx.recv().await {
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        let mut pauses = Pauses::default();
        while let Err(error) = handler(batch.clone()).await {
            tracing::warn!(%topic, %error, "queued handler failed; retrying the batch");
            tokio::time::sleep(pauses.next_pause()).await;
        }
    }
}

#[async_trait::async_trait]
impl Bus for InlineBus {
    async fn publish(&self, topic: &Topic, records: Vec<Record>) -> Result<(), BusError> {
        if records.is_empty() {
            return Ok(());
        }
        let (first, consumers): (u64, Vec<Arc<Consumer>>) = {
            let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
            match topics.get(&topic.name()) {
                Some(state) => (
                    state
                        .next
                        .fetch_add(records.len() as u64, Ordering::Relaxed),
                    state.consumers.iter().map(|(_, c)| Arc::clone(c)).collect(),
                ),
                None => return Ok(()), // no consumer: nothing to hand it to
            }
        };
        let mut received: Vec<Received> = records
            .into_iter()
            .zip(first..)
            .map(|(r, offset)| Received {
                partition: 0,
                offset,
                key: r.key,
                value: r.value,
            })
            .collect();
        // The last consumer takes the records themselves, so a topic with one consumer (the
        // usual case) hands its events on without a copy.
        let mut others = consumers.len();
        for consumer in consumers {
            others -= 1;
            let records = if others == 0 {
                std::mem::take(&mut received)
            } else {
                received.clone()
            };
            match &*consumer {
                Consumer::Inline(handler) => handler(records).await?,
                Consumer::Queued(queue) => {
                    queue.send(records).await.map_err(|_| BusError::Closed)?
                }
            }
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        topic: &Topic,
        _group: &str,
    ) -> Result<Box<dyn Subscription>, BusError> {
        Err(BusError::Storage(
            format!(
                "the in-line bus runs consumers of {topic} as they are published to; attach them"
            )
            .into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn recorder(seen: &Arc<Mutex<Vec<String>>>, fail: bool) -> Handler {
        let seen = Arc::clone(seen);
        Arc::new(move |records: Vec<Received>| {
            let seen = Arc::clone(&seen);
            Box::pin(async move {
                if fail {
                    return Err(BusError::Storage("disk full".into()));
                }
                let mut seen = seen.lock().unwrap();
                seen.extend(records.into_iter().map(|r| r.key));
                Ok(())
            })
        })
    }

    fn record(key: &str) -> Record {
        Record {
            key: key.into(),
            value: b"{}".to_vec().into(),
        }
    }

    #[tokio::test]
    async fn a_publish_returns_after_its_in_line_consumers_and_shares_their_failure() {
        let bus = InlineBus::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        bus.attach(&Topic::Send, "delivery", recorder(&seen, false))
            .unwrap();
        bus.publish(&Topic::Send, vec![record("a"), record("b")])
            .await
            .unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            ["a", "b"],
            "done before publish returned"
        );
        assert!(matches!(
            bus.attach(&Topic::Send, "delivery", recorder(&seen, false)),
            Err(BusError::GroupTaken { .. })
        ));
        bus.attach(&Topic::NewMessages, "router", recorder(&seen, true))
            .unwrap();
        assert!(
            bus.publish(&Topic::NewMessages, vec![record("c")])
                .await
                .is_err(),
            "the publisher learns of the failure"
        );
    }

    /// An event that cannot be encoded at all.
    #[derive(Debug, Clone, PartialEq, serde::Deserialize)]
    struct Unencodable(u32);

    impl serde::Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("never encoded"))
        }
    }

    #[tokio::test]
    async fn events_are_handed_on_without_being_encoded() {
        let bus = InlineBus::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for group in ["first", "second"] {
            let seen = Arc::clone(&seen);
            let handler: Handler = Arc::new(move |records: Vec<Received>| {
                let seen = Arc::clone(&seen);
                Box::pin(async move {
                    for record in records {
                        let event = record.value.decode::<Unencodable>().map_err(|(_, e)| e)?;
                        seen.lock().unwrap().push(event);
                    }
                    Ok(())
                })
            });
            bus.attach(&Topic::Send, group, handler).unwrap();
        }
        assert!(Record::event("k", Unencodable(1)).value.to_bytes().is_err());
        bus.publish(&Topic::Send, vec![Record::event("k", Unencodable(7))])
            .await
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), [Unencodable(7), Unencodable(7)]);
    }

    #[tokio::test]
    async fn a_queued_topic_hands_on_in_order_later() {
        let bus = InlineBus::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        bus.attach(&Topic::Offline, "push", recorder(&seen, false))
            .unwrap();
        for key in ["a", "b", "c"] {
            bus.publish(&Topic::Offline, vec![record(key)])
                .await
                .unwrap();
        }
        for _ in 0..100 {
            if seen.lock().unwrap().len() == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(*seen.lock().unwrap(), ["a", "b", "c"]);
    }
}
