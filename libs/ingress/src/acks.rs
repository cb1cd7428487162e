//! Client acks, published in the background: a connection never waits for its acks to reach
//! the bus. Acks gather for a short window and a device's acks of one conversation in a window
//! become one, its furthest: a device that acks message after message costs one cursor move
//! a window, and a broker one request for many acks.
//!
//! An ack not yet published when a process crashes only makes its message be sent to the
//! device again, which its seq tells apart. A connection that starts waits until the acks
//! queued before it are published ([`AckQueue::published`]), so that a device that reconnects
//! is not sent again what it has just acked.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use samvad_bus::{Bus, ClientAck, Pauses, Record, Topic};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Client acks waiting to be published before a connection that acks waits for room.
const QUEUE: usize = 10_000;
/// Most client acks gathered in one window.
const BATCH: usize = 4_096;
/// Most client acks published at once: in the all-in-one shape, one write of the cursors
/// they move, which messages' writes queue behind.
const CHUNK: usize = 256;
/// How long acks gather before they are published.
const WINDOW: Duration = Duration::from_millis(200);
/// How long a starting connection waits for the acks queued before it.
const PUBLISHED_WAIT: Duration = Duration::from_secs(2);

enum Queued {
    Ack(ClientAck),
    /// Answered once everything queued before it is published.
    Barrier(oneshot::Sender<()>),
}

/// Where a door's connections queue their acks.
#[derive(Clone)]
pub(crate) struct AckQueue {
    queue: mpsc::Sender<Queued>,
    counts: Arc<Counts>,
}

/// Acks queued, and of those how many are published: when they agree, nothing waits.
#[derive(Default)]
struct Counts {
    queued: AtomicU64,
    published: AtomicU64,
}

impl AckQueue {
    /// A queue whose acks `publish` hands to `bus` until `shutdown`, then publishes what is
    /// left once.
    pub(crate) fn start(
        bus: Arc<dyn Bus>,
        shutdown: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (queue, rx) = mpsc::channel(QUEUE);
        let counts = Arc::new(Counts::default());
        let publish = publish(bus, rx, Arc::clone(&counts), shutdown);
        (Self { queue, counts }, publish)
    }

    /// Queues `ack`; waits only while the queue is full. `Err` once the node is stopping.
    pub(crate) async fn push(&self, ack: ClientAck) -> Result<(), ()> {
        self.counts.queued.fetch_add(1, Ordering::AcqRel);
        self.queue.send(Queued::Ack(ack)).await.map_err(|_| ())
    }

    /// Done once the acks queued before this call are published (or after a while, if the bus
    /// cannot take them now). At once when none waits.
    pub(crate) async fn published(&self) {
        let counts = &self.counts;
        if counts.published.load(Ordering::Acquire) == counts.queued.load(Ordering::Acquire) {
            return;
        }
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Queued::Barrier(tx)).await.is_ok() {
            let _ = tokio::time::timeout(PUBLISHED_WAIT, rx).await;
        }
    }
}

/// An ack, compared by what it moves: a device's cursor in one conversation. Acks by id alone
/// are each their own.
struct ByCursor(ClientAck);

impl ByCursor {
    fn key(&self) -> (&str, &str, Option<&str>, Option<&str>) {
        let ack = &self.0;
        match &ack.upto {
            Some(upto) => (&ack.user, &ack.device, Some(&upto.conv), None),
            None => (&ack.user, &ack.device, None, Some(&ack.id)),
        }
    }
}

impl PartialEq for ByCursor {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for ByCursor {}

impl Hash for ByCursor {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

/// The acks of one window, the furthest of each cursor, and who waits for them.
#[derive(Default)]
struct Window {
    acks: HashSet<ByCursor>,
    waiting: Vec<oneshot::Sender<()>>,
    /// Acks taken from the queue since the start, this window's included.
    taken: u64,
}

impl Window {
    fn add(&mut self, queued: Queued) {
        match queued {
            Queued::Ack(ack) => {
                self.taken += 1;
                let ack = ByCursor(ack);
                let further = match (self.acks.get(&ack), &ack.0.upto) {
                    (Some(ByCursor(had)), Some(upto)) => {
                        had.upto.as_ref().is_none_or(|h| h.seq < upto.seq)
                    }
                    (Some(_), None) => false,
                    (None, _) => true,
                };
                if further {
                    self.acks.replace(ack);
                }
            }
            Queued::Barrier(tx) => self.waiting.push(tx),
        }
    }

    fn full(&self) -> bool {
        !self.waiting.is_empty() || self.acks.len() >= BATCH
    }

    /// The window's acks as records to publish, leaving it empty of them.
    fn take_records(&mut self) -> Vec<Record> {
        self.acks
            .drain()
            .map(|ByCursor(ack)| Record::event(ack.user.clone(), ack))
            .collect()
    }

    /// Publishes the window's acks, a chunk at a time, trying a chunk again after a growing
    /// pause while the bus refuses it, until `shutdown`; then tells who waited.
    async fn publish(&mut self, bus: &dyn Bus, counts: &Counts, shutdown: &CancellationToken) {
        for chunk in self.take_records().chunks(CHUNK) {
            let mut pauses = Pauses::default();
            while let Err(error) = bus.publish(&Topic::ClientAcks, chunk.to_vec()).await {
                tracing::warn!(%error, acks = chunk.len(), "cannot publish client acks; trying again");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(pauses.next_pause()) => {}
                }
            }
        }
        counts.published.store(self.taken, Ordering::Release);
        for tx in self.waiting.drain(..) {
            let _ = tx.send(());
        }
    }
}

async fn publish(
    bus: Arc<dyn Bus>,
    mut queued: mpsc::Receiver<Queued>,
    counts: Arc<Counts>,
    shutdown: CancellationToken,
) {
    let mut window = Window::default();
    while !shutdown.is_cancelled() {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            first = queued.recv() => match first {
                Some(first) => window.add(first),
                None => break,
            },
        }
        let closes = tokio::time::sleep(WINDOW);
        tokio::pin!(closes);
        while !window.full() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                () = &mut closes => break,
                next = queued.recv() => match next {
                    Some(next) => window.add(next),
                    None => break,
                },
            }
        }
        window.publish(bus.as_ref(), &counts, &shutdown).await;
    }
    // At a stop, what is queued gets one try (within the node's stop allowance); what does not
    // make it costs redeliveries, nothing more.
    queued.close();
    while let Some(next) = queued.recv().await {
        window.add(next);
    }
    if !window.acks.is_empty()
        && let Err(error) = bus.publish(&Topic::ClientAcks, window.take_records()).await
    {
        tracing::warn!(%error, "client acks not published at the stop");
    }
}

#[cfg(test)]
mod tests {
    use samvad_bus::Upto;

    use super::*;

    fn ack(device: &str, id: &str, upto: Option<(&str, u64)>) -> Queued {
        Queued::Ack(ClientAck {
            user: "bob".into(),
            device: device.into(),
            id: id.into(),
            upto: upto.map(|(conv, seq)| Upto {
                conv: conv.into(),
                seq,
            }),
        })
    }

    #[test]
    fn a_window_keeps_the_furthest_ack_of_each_cursor_and_every_ack_by_id() {
        let mut window = Window::default();
        for queued in [
            ack("phone", "m-3", Some(("chat:alice", 3))),
            ack("phone", "m-5", Some(("chat:alice", 5))),
            ack("phone", "m-4", Some(("chat:alice", 4))),
            ack("laptop", "m-2", Some(("chat:alice", 2))),
            ack("phone", "g-1", Some(("group:g", 1))),
            ack("phone", "x", None),
            ack("phone", "y", None),
            ack("phone", "x", None),
        ] {
            window.add(queued);
        }
        assert_eq!(window.taken, 8);
        let mut kept: Vec<(String, String, Option<u64>)> = window
            .acks
            .iter()
            .map(|ByCursor(a)| {
                (
                    a.device.clone(),
                    a.id.clone(),
                    a.upto.as_ref().map(|u| u.seq),
                )
            })
            .collect();
        kept.sort();
        let expected = [
            ("laptop", "m-2", Some(2)),
            ("phone", "g-1", Some(1)),
            ("phone", "m-5", Some(5)),
            ("phone", "x", None),
            ("phone", "y", None),
        ]
        .map(|(d, i, s)| (d.to_owned(), i.to_owned(), s));
        assert_eq!(kept, expected);
        assert_eq!(window.take_records().len(), 5);
        assert!(window.acks.is_empty());
    }
}
