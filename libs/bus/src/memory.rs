//! The all-in-one bus: topics are logs in the embedded SQLite database, mirrored in memory for
//! readers. An append is acknowledged after its group commit; readers see records strictly in
//! offset order, only once durable; consumer positions are kept in the same database, so a
//! restart resumes each group where it committed. Records every known group has committed are
//! trimmed from disk and memory.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::params;
use samvad_sqlite::Db;
use tokio::sync::watch;

use crate::{Bus, BusError, Received, Record, Subscription, Topic};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bus_log (
    topic TEXT NOT NULL, offset INTEGER NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (topic, offset)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bus_offsets (
    grp TEXT NOT NULL, topic TEXT NOT NULL, next INTEGER NOT NULL,
    PRIMARY KEY (grp, topic)) WITHOUT ROWID;
";

/// The in-process, disk-backed bus. Cheap to clone.
#[derive(Clone)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    topics: Mutex<HashMap<String, Arc<TopicLog>>>,
    /// (topic, group) → next offset to read, as last committed.
    committed: Mutex<HashMap<(String, String), u64>>,
    active: Mutex<HashSet<(String, String)>>,
}

struct TopicLog {
    name: String,
    durable: bool,
    state: Mutex<LogState>,
    /// The next offset to be appended; readers wait on it.
    tail: watch::Sender<u64>,
}

#[derive(Default)]
struct LogState {
    /// Offset of `records[0]`.
    base: u64,
    records: VecDeque<Arc<Received>>,
    /// Offsets handed out to appends not yet visible (durable topics reserve at write time).
    reserved: u64,
}

impl LogState {
    fn next(&self) -> u64 {
        self.base + self.records.len() as u64
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half-updated in a way
    // that matters more than stopping the bus would; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn storage(e: impl std::fmt::Display) -> BusError {
    BusError::Storage(e.to_string())
}

impl MemoryBus {
    /// Opens the bus on `db`, loading retained records and committed positions.
    pub async fn open(db: Db) -> Result<Self, BusError> {
        db.write(|t| t.execute_batch(SCHEMA))
            .await
            .map_err(storage)?;
        let (rows, offsets) = db
            .read(|c| {
                let mut stmt = c.prepare(
                    "SELECT topic, offset, key, value FROM bus_log ORDER BY topic, offset",
                )?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            Received {
                                partition: 0,
                                offset: r.get::<_, i64>(1)? as u64,
                                key: r.get(2)?,
                                value: r.get(3)?,
                            },
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let mut stmt = c.prepare("SELECT topic, grp, next FROM bus_offsets")?;
                let offsets = stmt
                    .query_map([], |r| {
                        Ok(((r.get(0)?, r.get(1)?), r.get::<_, i64>(2)? as u64))
                    })?
                    .collect::<rusqlite::Result<HashMap<(String, String), u64>>>()?;
                Ok((rows, offsets))
            })
            .await
            .map_err(storage)?;

        let mut topics: HashMap<String, Arc<TopicLog>> = HashMap::new();
        for (topic, record) in rows {
            let log = topics
                .entry(topic.clone())
                .or_insert_with(|| Arc::new(TopicLog::new(topic, true)));
            let mut state = lock(&log.state);
            if state.records.is_empty() {
                state.base = record.offset;
            }
            state.records.push_back(Arc::new(record));
            state.reserved = state.next();
            log.tail.send_replace(state.next());
        }
        // A topic fully trimmed keeps counting from its last committed position.
        for ((topic, _), next) in &offsets {
            let log = topics
                .entry(topic.clone())
                .or_insert_with(|| Arc::new(TopicLog::new(topic.clone(), true)));
            let mut state = lock(&log.state);
            if state.records.is_empty() && state.base < *next {
                state.base = *next;
                state.reserved = *next;
                log.tail.send_replace(*next);
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                topics: Mutex::new(topics),
                committed: Mutex::new(offsets),
                active: Mutex::new(HashSet::new()),
            }),
        })
    }

    fn log(&self, topic: &Topic) -> Arc<TopicLog> {
        let name = topic.name();
        let mut topics = lock(&self.inner.topics);
        Arc::clone(
            topics
                .entry(name.clone())
                .or_insert_with(|| Arc::new(TopicLog::new(name, topic.is_durable()))),
        )
    }
}

impl TopicLog {
    fn new(name: String, durable: bool) -> Self {
        Self {
            name,
            durable,
            state: Mutex::new(LogState::default()),
            tail: watch::Sender::new(0),
        }
    }

    /// Makes records visible. Called in offset order (by the single writer thread for durable
    /// topics, under the state lock for the others).
    fn extend(&self, state: &mut LogState, records: impl IntoIterator<Item = Received>) {
        for record in records {
            debug_assert_eq!(record.offset, state.next());
            state.records.push_back(Arc::new(record));
        }
        self.tail.send_replace(state.next());
    }

    fn trim(&self, below: u64) {
        let mut state = lock(&self.state);
        while state.base < below && !state.records.is_empty() {
            state.records.pop_front();
            state.base += 1;
        }
    }
}

#[async_trait::async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, topic: &Topic, records: Vec<Record>) -> Result<(), BusError> {
        if records.is_empty() {
            return Ok(());
        }
        let log = self.log(topic);
        if !log.durable {
            let mut state = lock(&log.state);
            let first = state.next();
            let received = records
                .into_iter()
                .enumerate()
                .map(|(i, r)| to_received(first + i as u64, r));
            log.extend(&mut state, received);
            state.reserved = state.next();
            return Ok(());
        }
        let write_log = Arc::clone(&log);
        let visible_log = Arc::clone(&log);
        self.inner
            .db
            .write_ordered(
                move |txn| {
                    // Runs on the writer thread, one job at a time: reservations are in order.
                    let first = {
                        let mut state = lock(&write_log.state);
                        let first = state.reserved;
                        state.reserved += records.len() as u64;
                        first
                    };
                    let mut insert = txn.prepare_cached(
                        "INSERT INTO bus_log (topic, offset, key, value) VALUES (?1, ?2, ?3, ?4)",
                    )?;
                    let mut received = Vec::with_capacity(records.len());
                    for (i, record) in records.into_iter().enumerate() {
                        let offset = first + i as u64;
                        insert.execute(params![
                            write_log.name,
                            offset as i64,
                            record.key,
                            record.value
                        ])?;
                        received.push(to_received(offset, record));
                    }
                    Ok(Mutex::new(Some(received)))
                },
                move |received| {
                    if let Some(received) = lock(received).take() {
                        let mut state = lock(&visible_log.state);
                        visible_log.extend(&mut state, received);
                    }
                },
            )
            .await
            .map_err(storage)?;
        Ok(())
    }

    async fn subscribe(
        &self,
        topic: &Topic,
        group: &str,
    ) -> Result<Box<dyn Subscription>, BusError> {
        let log = self.log(topic);
        let key = (log.name.clone(), group.to_owned());
        if !lock(&self.inner.active).insert(key.clone()) {
            return Err(BusError::GroupTaken {
                group: group.to_owned(),
                topic: log.name.clone(),
            });
        }
        let position = lock(&self.inner.committed).get(&key).copied().unwrap_or(0);
        Ok(Box::new(MemorySubscription {
            bus: self.clone(),
            tail: log.tail.subscribe(),
            log,
            group: group.to_owned(),
            position,
        }))
    }
}

fn to_received(offset: u64, record: Record) -> Received {
    Received {
        partition: 0,
        offset,
        key: record.key,
        value: record.value,
    }
}

struct MemorySubscription {
    bus: MemoryBus,
    log: Arc<TopicLog>,
    tail: watch::Receiver<u64>,
    group: String,
    /// Next offset to hand out.
    position: u64,
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        lock(&self.bus.inner.active).remove(&(self.log.name.clone(), self.group.clone()));
    }
}

#[async_trait::async_trait]
impl Subscription for MemorySubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Received>, BusError> {
        loop {
            self.tail.borrow_and_update();
            {
                let state = lock(&self.log.state);
                self.position = self.position.max(state.base);
                if self.position < state.next() {
                    let start = (self.position - state.base) as usize;
                    let batch: Vec<Received> = state
                        .records
                        .range(start..)
                        .take(max.max(1))
                        .map(|r| Received::clone(r))
                        .collect();
                    self.position += batch.len() as u64;
                    return Ok(batch);
                }
            }
            self.tail.changed().await.map_err(|_| BusError::Closed)?;
        }
    }

    async fn commit(&mut self, records: &[Received]) -> Result<(), BusError> {
        let Some(last) = records.iter().map(|r| r.offset).max() else {
            return Ok(());
        };
        let next = last + 1;
        let topic = self.log.name.clone();
        let low_water = {
            let mut committed = lock(&self.bus.inner.committed);
            let entry = committed
                .entry((topic.clone(), self.group.clone()))
                .or_insert(0);
            *entry = (*entry).max(next);
            committed
                .iter()
                .filter(|((t, _), _)| *t == topic)
                .map(|(_, n)| *n)
                .min()
                .unwrap_or(next)
        };
        if self.log.durable {
            let group = self.group.clone();
            self.bus.inner.db.write_detached(move |t| {
                t.prepare_cached(
                    "INSERT INTO bus_offsets (grp, topic, next) VALUES (?1, ?2, ?3)
                     ON CONFLICT (grp, topic) DO UPDATE SET next = max(next, excluded.next)",
                )?
                .execute(params![group, topic, next as i64])?;
                t.prepare_cached("DELETE FROM bus_log WHERE topic = ?1 AND offset < ?2")?
                    .execute(params![topic, low_water as i64])?;
                Ok(())
            });
        }
        self.log.trim(low_water);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open(dir: &tempfile::TempDir) -> MemoryBus {
        MemoryBus::open(Db::open(&dir.path().join("bus.db")).unwrap())
            .await
            .unwrap()
    }

    fn record(i: u32) -> Record {
        Record {
            key: format!("k{}", i % 3),
            value: i.to_be_bytes().to_vec(),
        }
    }

    fn values(batch: &[Received]) -> Vec<u32> {
        batch
            .iter()
            .map(|r| u32::from_be_bytes(r.value.clone().try_into().unwrap()))
            .collect()
    }

    #[tokio::test]
    async fn concurrent_publishes_are_read_in_offset_order() {
        let dir = tempfile::tempdir().unwrap();
        let bus = open(&dir).await;
        let mut sub = bus.subscribe(&Topic::Send, "delivery").await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let bus = bus.clone();
            tasks.push(tokio::spawn(async move {
                bus.publish(&Topic::Send, vec![record(i)]).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let mut offsets = Vec::new();
        while offsets.len() < 200 {
            offsets.extend(sub.next_batch(64).await.unwrap().iter().map(|r| r.offset));
        }
        assert_eq!(offsets, (0..200).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn a_group_resumes_after_its_last_commit_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let bus = open(&dir).await;
            bus.publish(&Topic::Send, (0..10).map(record).collect())
                .await
                .unwrap();
            let mut sub = bus.subscribe(&Topic::Send, "delivery").await.unwrap();
            let batch = sub.next_batch(4).await.unwrap();
            assert_eq!(values(&batch), vec![0, 1, 2, 3]);
            sub.commit(&batch).await.unwrap();
            // Read but not committed: must come again after the restart.
            sub.next_batch(4).await.unwrap();
            // The commit is written with the next group commit; one more publish flushes it.
            bus.publish(&Topic::Send, vec![record(10)]).await.unwrap();
        }
        let bus = open(&dir).await;
        let mut sub = bus.subscribe(&Topic::Send, "delivery").await.unwrap();
        let batch = sub.next_batch(100).await.unwrap();
        assert_eq!(values(&batch), (4..=10).collect::<Vec<u32>>());
        // A new group starts from the earliest retained record.
        let mut other = bus.subscribe(&Topic::Send, "audit").await.unwrap();
        assert_eq!(other.next_batch(1).await.unwrap()[0].offset, 4);
    }

    #[tokio::test]
    async fn a_group_cannot_be_joined_twice_in_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let bus = open(&dir).await;
        let first = bus.subscribe(&Topic::Send, "delivery").await.unwrap();
        assert!(matches!(
            bus.subscribe(&Topic::Send, "delivery").await,
            Err(BusError::GroupTaken { .. })
        ));
        drop(first);
        assert!(bus.subscribe(&Topic::Send, "delivery").await.is_ok());
    }

    #[tokio::test]
    async fn gateway_topics_live_in_memory_only() {
        let dir = tempfile::tempdir().unwrap();
        let topic = Topic::Gateway("g1".into());
        {
            let bus = open(&dir).await;
            let mut sub = bus.subscribe(&topic, "g1").await.unwrap();
            bus.publish(&topic, vec![record(1)]).await.unwrap();
            assert_eq!(values(&sub.next_batch(10).await.unwrap()), vec![1]);
            bus.publish(&topic, vec![record(2)]).await.unwrap();
        }
        let bus = open(&dir).await;
        let mut sub = bus.subscribe(&topic, "g1").await.unwrap();
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), sub.next_batch(10));
        assert!(waited.await.is_err(), "nothing survives a restart");
    }
}
