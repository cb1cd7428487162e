//! Timelines in MongoDB, with single-document writes and unique indexes instead of
//! transactions, so any step may crash and the next attempt completes it:
//!
//! - an entry is unique per (conv, seq) and per (conv, sender, id): two writers racing for a
//!   seq cannot both win, and a redelivered message is found, not stored twice;
//! - `conversations.last_seq` is a cache of the timeline's highest seq, moved with `$max`; an
//!   append that finds the seq it chose taken re-reads the timeline and takes the next one, so
//!   a crash between the entry and the cache costs a retry, never a gap or a duplicate;
//! - a repeat repairs what a crash may have left undone after its entry (the cache, the 1:1
//!   participants).

use std::collections::{HashMap, HashSet};

use futures_util::{StreamExt as _, TryStreamExt as _};
use mongodb::Collection;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::ReturnDocument;

use super::{DUPLICATE_KEY, MongoStore, all, backend, conv_of, corrupt, int, is_duplicate};
use crate::timeline::{
    Ack, Appended, Conv, ConvState, DeviceRef, Entry, NewEntry, Page, Position, TimelineStore,
    Window,
};
use crate::{Result, StoreError, now_ms};

/// Entries read at a time when a cursor is moved past its device's own.
const OWN_PAGE: i64 = 16;
/// Cursors whose place is looked up at once: a batch of acks moving many, a device with many
/// conversations connecting.
const LOOKUPS_IN_FLIGHT: usize = 16;

impl MongoStore {
    pub(super) async fn create_timeline_indexes(&self) -> Result<()> {
        let unique = |keys: Document| {
            mongodb::IndexModel::builder()
                .keys(keys)
                .options(
                    mongodb::options::IndexOptions::builder()
                        .unique(true)
                        .build(),
                )
                .build()
        };
        let plain = |keys: Document| mongodb::IndexModel::builder().keys(keys).build();
        let indexes = [
            (&self.timeline, unique(doc! { "conv": 1, "seq": 1 })),
            (
                &self.timeline,
                unique(doc! { "conv": 1, "sender": 1, "id": 1 }),
            ),
            (&self.timeline, plain(doc! { "id": 1 })),
            (&self.timeline, plain(doc! { "at": 1 })),
            (&self.participants, unique(doc! { "user": 1, "conv": 1 })),
            (
                &self.cursors,
                unique(doc! { "user": 1, "device": 1, "conv": 1 }),
            ),
        ];
        for (collection, index) in indexes {
            collection.create_index(index).await.map_err(backend)?;
        }
        Ok(())
    }

    async fn last_seq(&self, key: &str) -> Result<u64> {
        self.conversations
            .find_one(doc! { "_id": key })
            .await
            .map_err(backend)?
            .map_or(Ok(0), |d| int(&d, "last_seq"))
    }

    /// The cached last seq of each of `keys` (0 for a conversation not yet begun), in one
    /// query.
    async fn last_seqs(&self, keys: &[String]) -> Result<HashMap<String, u64>> {
        let found = all(self
            .conversations
            .find(doc! { "_id": { "$in": keys } })
            .projection(doc! { "last_seq": 1 }))
        .await?;
        let mut last: HashMap<String, u64> = keys.iter().map(|k| (k.clone(), 0)).collect();
        for d in found {
            let key = d.get_str("_id").map_err(corrupt)?.to_owned();
            last.insert(key, int(&d, "last_seq")?);
        }
        Ok(last)
    }

    /// The highest seq actually in the timeline (the cache may lag after a crash).
    async fn highest_seq(&self, key: &str) -> Result<u64> {
        self.timeline
            .find_one(doc! { "conv": key })
            .sort(doc! { "seq": -1 })
            .await
            .map_err(backend)?
            .map_or(Ok(0), |d| int(&d, "seq"))
    }

    /// Moves each conversation's cached last seq (and when it was reached) forward, in one
    /// `update` command of one statement per conversation.
    async fn record_last(&self, last: &HashMap<String, (u64, i64)>) -> Result<()> {
        if last.is_empty() {
            return Ok(());
        }
        let updates: Vec<Document> = last
            .iter()
            .map(|(key, &(seq, at))| {
                doc! {
                    "q": { "_id": key },
                    "u": {
                        "$max": { "last_seq": seq as i64, "last_at": at },
                        "$setOnInsert": { "first_seq": 1_i64 },
                    },
                    "upsert": true,
                }
            })
            .collect();
        // A statement that failed (two upserts of a new conversation raced) fails the append,
        // which is tried again: by then the conversation is there.
        let raced = update_all(&self.conversations, updates).await?;
        if raced.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Backend(
                format!(
                    "{} conversations were created meanwhile; try again",
                    raced.len()
                )
                .into(),
            ))
        }
    }

    async fn participate(&self, user: &str, key: &str, since: u64) -> Result<()> {
        let result = self
            .participants
            .update_one(
                doc! { "user": user, "conv": key },
                doc! { "$setOnInsert": { "since": since as i64, "read": since as i64 } },
            )
            .upsert(true)
            .await;
        match result {
            // Two upserts raced; the other one created it.
            Err(e) if is_duplicate(&e) => Ok(()),
            other => other.map(|_| ()).map_err(backend),
        }
    }

    async fn find_repeat(&self, key: &str, item: &NewEntry) -> Result<Option<u64>> {
        self.timeline
            .find_one(doc! { "conv": key, "sender": &item.message.source, "id": &item.message.id })
            .projection(doc! { "seq": 1 })
            .await
            .map_err(backend)?
            .map(|d| int(&d, "seq"))
            .transpose()
    }

    /// Stores one entry after `last` (the highest seq this append knows of in its
    /// conversation), or finds it stored already. The unique indexes decide: a repeat is found
    /// only when its insert is refused, so a new message costs one write.
    async fn append_one(
        &self,
        key: &str,
        item: &NewEntry,
        mut last: u64,
        at: i64,
    ) -> Result<Appended> {
        let appended = loop {
            let seq = last + 1;
            match self.timeline.insert_one(entry(key, item, seq, at)?).await {
                Ok(_) => break Appended::New(seq),
                Err(e) if is_duplicate(&e) => {
                    if let Some(seq) = self.find_repeat(key, item).await? {
                        break Appended::Repeat(seq);
                    }
                    // The seq was taken: by a crashed append whose cache update never
                    // happened, or by a writer racing this one.
                    last = self.highest_seq(key).await?.max(seq);
                }
                Err(e) => return Err(backend(e)),
            }
        };
        self.settle(key, item, appended).await?;
        Ok(appended)
    }

    /// What an entry's storing brings with it: the first entry of a 1:1 conversation, and a
    /// repeat (which repairs what a crash may have cut short), make sure of its participants;
    /// the notice of a removal ends the removed members' part.
    async fn settle(&self, key: &str, item: &NewEntry, appended: Appended) -> Result<()> {
        let first = matches!(appended, Appended::New(1) | Appended::Repeat(_));
        if first && let Some(pair) = item.conv.pair() {
            for user in pair {
                self.participate(user, key, 0).await?;
            }
        }
        if !item.leaving.is_empty() {
            // Also on a repeat, which completes what a crash cut short; never a part that
            // began after this entry (its user joined again since).
            let seq = appended.seq() as i64;
            self.participants
                .update_many(
                    doc! {
                        "conv": key, "user": { "$in": &item.leaving },
                        "until": { "$exists": false }, "since": { "$lt": seq },
                    },
                    doc! { "$set": { "until": seq } },
                )
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    async fn state(&self, user: &str, part: &Document) -> Result<ConvState> {
        let conv = conv_of(part)?;
        let key = conv.key();
        let since = int(part, "since")?;
        let read = int(part, "read")?;
        let (last_seq, last_at) = match self
            .conversations
            .find_one(doc! { "_id": &key })
            .await
            .map_err(backend)?
        {
            Some(d) => (int(&d, "last_seq")?, int(&d, "last_at")?),
            None => (0, 0),
        };
        let unread = self
            .timeline
            .count_documents(doc! {
                "conv": &key,
                "seq": { "$gt": since.max(read) as i64 },
                "sender": { "$ne": user },
                "system": { "$ne": true },
            })
            .await
            .map_err(backend)?;
        Ok(ConvState {
            conv,
            last_seq,
            last_at,
            read_seq: read,
            unread,
            since_seq: since,
        })
    }

    /// Moves each device's cursor in each conversation to the seq given and past the entries
    /// its own device sent right after it, never past what is stored (that would skip what
    /// comes next), nor over entries retention removed (a gap the device is to be told of):
    /// the conversations read in one query, where each cursor lands looked up a few at a time,
    /// and the cursors written in one command.
    async fn advance(&self, upto: HashMap<(DeviceRef, String), u64>) -> Result<()> {
        if upto.is_empty() {
            return Ok(());
        }
        let keys: Vec<&String> = upto.keys().map(|(_, key)| key).collect();
        let mut convs = HashMap::new();
        for conv in all(self.conversations.find(doc! { "_id": { "$in": keys } })).await? {
            let key = conv.get_str("_id").map_err(corrupt)?.to_owned();
            convs.insert(key, (int(&conv, "last_seq")?, int(&conv, "first_seq")?));
        }
        let known = upto.into_iter().filter_map(|((device, key), seq)| {
            let &(last, first) = convs.get(&key)?;
            Some((device, key, seq, last, first))
        });
        let moves: Vec<(DeviceRef, String, u64)> = futures_util::stream::iter(known)
            .map(|(device, key, seq, last, first)| async move {
                let seq = self.past_own(&device, &key, seq, last, first).await?;
                Ok::<_, StoreError>((device, key, seq))
            })
            .buffered(LOOKUPS_IN_FLIGHT)
            .try_collect()
            .await?;
        let statements = moves
            .iter()
            .map(|(device, key, seq)| {
                doc! {
                    "q": { "user": &device.user, "device": &device.device, "conv": key },
                    "u": { "$max": { "seq": *seq as i64 } },
                    "upsert": true,
                }
            })
            .collect();
        // Two upserts raced and the other created the cursor: now it is there to update.
        for raced in update_all(&self.cursors, statements).await? {
            let (device, key, seq) = &moves[raced];
            self.upsert_cursor(device, key, doc! { "$max": { "seq": *seq as i64 } })
                .await?;
        }
        Ok(())
    }

    /// Where a device stands that has acked `cursor`: past the entries its own device sent
    /// right after it, up to `last`, unless retention removed what follows the cursor.
    ///
    /// Read as plain pages of the `(conv, seq)` index in order, the test of whose entry it is
    /// made here: a filter on the sender in the query cannot use the index, and a server may
    /// then read much of the conversation to answer (the MongoDB-wire stand-in took 30-60 ms
    /// for each cursor so).
    async fn past_own(
        &self,
        device: &DeviceRef,
        key: &str,
        cursor: u64,
        last: u64,
        first: u64,
    ) -> Result<u64> {
        if cursor >= last || first > cursor + 1 {
            return Ok(cursor.min(last));
        }
        let mut after = cursor;
        loop {
            let page = all(self
                .timeline
                .find(doc! { "conv": key, "seq": { "$gt": after as i64, "$lte": last as i64 } })
                .sort(doc! { "seq": 1 })
                .limit(OWN_PAGE)
                .projection(doc! { "seq": 1, "sender": 1, "device": 1 }))
            .await?;
            for entry in &page {
                let seq = int(entry, "seq")?;
                let own = entry.get_str("sender") == Ok(device.user.as_str())
                    && entry.get_str("device") == Ok(device.device.as_str());
                if !own {
                    return Ok(seq - 1);
                }
                after = seq;
            }
            if page.len() < OWN_PAGE as usize {
                return Ok(last);
            }
        }
    }

    /// Applies `update` to the device's cursor in `key`, creating it if need be.
    async fn upsert_cursor(&self, device: &DeviceRef, key: &str, update: Document) -> Result<()> {
        let upsert = || {
            self.cursors
                .update_one(
                    doc! { "user": &device.user, "device": &device.device, "conv": key },
                    update.clone(),
                )
                .upsert(true)
        };
        match upsert().await {
            // Two upserts raced and the other created the cursor: now it is there to update.
            Err(e) if is_duplicate(&e) => upsert().await.map(|_| ()).map_err(backend),
            other => other.map(|_| ()).map_err(backend),
        }
    }
}

/// Runs `statements` (each `{q, u, upsert}`) as one `update` command, majority-acknowledged,
/// and returns the indexes of those refused as duplicates (upserts that raced another). Any
/// other refusal is an error.
async fn update_all(
    collection: &Collection<Document>,
    statements: Vec<Document>,
) -> Result<Vec<usize>> {
    let namespace = collection.namespace();
    let reply = collection
        .client()
        .database(&namespace.db)
        .run_command(doc! {
            "update": &namespace.coll,
            "updates": statements,
            "ordered": false,
            "writeConcern": { "w": "majority" },
        })
        .await
        .map_err(backend)?;
    let Ok(errors) = reply.get_array("writeErrors") else {
        return Ok(Vec::new());
    };
    errors
        .iter()
        .map(|error| {
            let error = error.as_document();
            let code = error.and_then(|e| e.get("code")).and_then(Bson::as_i32);
            match (
                error.and_then(|e| e.get("index")).and_then(Bson::as_i32),
                code,
            ) {
                (Some(index), Some(DUPLICATE_KEY)) => Ok(index as usize),
                _ => Err(StoreError::Backend(
                    format!("update refused: {error:?}").into(),
                )),
            }
        })
        .collect()
}

/// The stored form of `item` at `seq` of conversation `key`.
fn entry(key: &str, item: &NewEntry, seq: u64, at: i64) -> Result<Document> {
    let body = serde_json::to_string(&item.message).map_err(corrupt)?;
    let mut entry = doc! {
        "conv": key, "seq": seq as i64, "sender": &item.message.source,
        "device": &item.device, "id": &item.message.id, "at": at, "message": body,
    };
    if item.message.is_system() {
        entry.insert("system", true); // never unread
    }
    Ok(entry)
}

#[async_trait::async_trait]
impl TimelineStore for MongoStore {
    /// A batch costs three round trips when all of it is new: the conversations' last seqs
    /// read in one query, the entries inserted in one ordered insert (each taking the next seq
    /// of its conversation), the last seqs written back in one command, before anyone is told
    /// of the entries. An entry the insert refuses (a repeat, or a seq taken by a crashed
    /// append) stops the insert there, so no seq after it is used; it and the rest of the
    /// batch then go one by one.
    async fn append(&self, items: &[NewEntry]) -> Result<Vec<Appended>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = items.iter().map(|item| item.conv.key()).collect();
        let mut last = self.last_seqs(&keys).await?;
        let at = now_ms();
        let mut planned = Vec::with_capacity(items.len());
        let mut entries = Vec::with_capacity(items.len());
        for (item, key) in items.iter().zip(&keys) {
            let seq = last[key] + 1;
            last.insert(key.clone(), seq);
            planned.push(seq);
            entries.push(entry(key, item, seq, at)?);
        }
        let stored = match self.timeline.insert_many(entries).ordered(true).await {
            Ok(_) => items.len(),
            Err(e) => match e.kind.as_ref() {
                mongodb::error::ErrorKind::InsertMany(failure) if is_duplicate(&e) => failure
                    .write_errors
                    .iter()
                    .flatten()
                    .map(|w| w.index)
                    .min()
                    .unwrap_or(0),
                _ => return Err(backend(e)),
            },
        };
        let mut reached: HashMap<String, (u64, i64)> = HashMap::new();
        let mut appended = Vec::with_capacity(items.len());
        for ((item, key), &seq) in items.iter().zip(&keys).zip(&planned).take(stored) {
            self.settle(key, item, Appended::New(seq)).await?;
            reached.insert(key.clone(), (seq, at));
            appended.push(Appended::New(seq));
        }
        if stored < items.len() {
            let mut known = self.last_seqs(&keys[stored..]).await?;
            for (key, &(seq, _)) in &reached {
                if let Some(last) = known.get_mut(key) {
                    *last = (*last).max(seq);
                }
            }
            for (item, key) in items.iter().zip(&keys).skip(stored) {
                let result = self.append_one(key, item, known[key], at).await?;
                let seq = known[key].max(result.seq());
                known.insert(key.clone(), seq);
                reached.insert(key.clone(), (seq, at));
                appended.push(result);
            }
        }
        self.record_last(&reached).await?;
        Ok(appended)
    }

    async fn window(&self, conv: &Conv, page: Page, floor: u64, limit: usize) -> Result<Window> {
        let key = conv.key();
        let floor = floor as i64;
        let (filter, order) = match page {
            Page::Latest => (doc! { "conv": &key, "seq": { "$gt": floor } }, -1),
            Page::Before(before) => (
                doc! { "conv": &key, "seq": { "$gt": floor, "$lt": before as i64 } },
                -1,
            ),
            Page::After(after) => (
                doc! { "conv": &key, "seq": { "$gt": floor.max(after as i64) } },
                1,
            ),
        };
        let found = all(self
            .timeline
            .find(filter)
            .sort(doc! { "seq": order })
            .limit(limit as i64 + 1))
        .await?;
        let more = found.len() > limit;
        let mut entries = found
            .iter()
            .take(limit)
            .map(|d| {
                Ok(Entry {
                    seq: int(d, "seq")?,
                    device: d.get_str("device").map_err(corrupt)?.to_owned(),
                    at: int(d, "at")?,
                    message: serde_json::from_str(d.get_str("message").map_err(corrupt)?)
                        .map_err(corrupt)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if order < 0 {
            entries.reverse();
        }
        Ok(Window { entries, more })
    }

    async fn join(&self, group_id: &str, users: &[String]) -> Result<()> {
        let key = Conv::group(group_id).key();
        let last = self.last_seq(&key).await?;
        for user in users {
            // A part that ended starts afresh; one that goes on stays as it is.
            self.participants
                .update_one(
                    doc! { "user": user, "conv": &key, "until": { "$exists": true } },
                    doc! {
                        "$set": { "since": last as i64, "read": last as i64 },
                        "$unset": { "until": "" },
                    },
                )
                .await
                .map_err(backend)?;
            self.participate(user, &key, last).await?;
        }
        Ok(())
    }

    async fn conversation(&self, user: &str, conv: &Conv) -> Result<Option<ConvState>> {
        let part = self
            .participants
            .find_one(doc! { "user": user, "conv": conv.key(), "until": { "$exists": false } })
            .await
            .map_err(backend)?;
        match part {
            Some(part) => Ok(Some(self.state(user, &part).await?)),
            None => Ok(None),
        }
    }

    async fn conversations(&self, user: &str) -> Result<Vec<ConvState>> {
        let parts = all(self
            .participants
            .find(doc! { "user": user, "until": { "$exists": false } }))
        .await?;
        let mut states = Vec::with_capacity(parts.len());
        for part in &parts {
            states.push(self.state(user, part).await?);
        }
        states.sort_by(|a, b| b.last_at.cmp(&a.last_at).then_with(|| a.conv.cmp(&b.conv)));
        Ok(states)
    }

    async fn register(&self, device: &DeviceRef) -> Result<bool> {
        let id = doc! { "user": &device.user, "device": &device.device };
        if self
            .registered
            .find_one(doc! { "_id": &id })
            .await
            .map_err(backend)?
            .is_some()
        {
            return Ok(false);
        }
        // Cursors first, then the registration: a crash in between leaves the device
        // unregistered, and the next login sets the same cursors again. A cursor the device
        // already has (it acked as `default` before it ever logged in) stays as it is.
        let parts = all(self.participants.find(doc! { "user": &device.user })).await?;
        for part in &parts {
            let key = part.get_str("conv").map_err(corrupt)?;
            let last = self.last_seq(key).await?;
            self.upsert_cursor(device, key, doc! { "$setOnInsert": { "seq": last as i64 } })
                .await?;
        }
        match self
            .registered
            .insert_one(doc! { "_id": id, "at": now_ms() })
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate(&e) => Ok(false),
            Err(e) => Err(backend(e)),
        }
    }

    async fn unregister(&self, device: &DeviceRef) -> Result<()> {
        // The registration first: a crash in between leaves cursors that a new link takes up
        // where the old one stood, never a registered device without cursors (which would be
        // owed every conversation from its start). Unregistering again finishes the job.
        self.registered
            .delete_one(doc! { "_id": { "user": &device.user, "device": &device.device } })
            .await
            .map_err(backend)?;
        self.cursors
            .delete_many(doc! { "user": &device.user, "device": &device.device })
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn positions(&self, device: &DeviceRef, only: Option<&Conv>) -> Result<Vec<Position>> {
        let mut filter = doc! { "user": &device.user };
        if let Some(conv) = only {
            filter.insert("conv", conv.key());
        }
        let parts = all(self.participants.find(filter)).await?;
        if parts.is_empty() {
            return Ok(Vec::new());
        }
        let cursors: HashMap<String, u64> = all(self
            .cursors
            .find(doc! { "user": &device.user, "device": &device.device }))
        .await?
        .iter()
        .map(|d| {
            Ok((
                d.get_str("conv").map_err(corrupt)?.to_owned(),
                int(d, "seq")?,
            ))
        })
        .collect::<Result<_>>()?;
        let keys: Vec<&str> = parts
            .iter()
            .map(|p| p.get_str("conv").map_err(corrupt))
            .collect::<Result<_>>()?;
        let convs: HashMap<String, (u64, u64)> =
            all(self.conversations.find(doc! { "_id": { "$in": &keys } }))
                .await?
                .iter()
                .map(|d| {
                    Ok((
                        d.get_str("_id").map_err(corrupt)?.to_owned(),
                        (int(d, "last_seq")?, int(d, "first_seq")?),
                    ))
                })
                .collect::<Result<_>>()?;
        let mut found = Vec::new();
        for part in &parts {
            let key = part.get_str("conv").map_err(corrupt)?;
            let Some(&(last_seq, first_seq)) = convs.get(key) else {
                continue;
            };
            let cursor = int(part, "since")?.max(cursors.get(key).copied().unwrap_or(0));
            let until = match part.get("until") {
                Some(_) => Some(int(part, "until")?),
                None => None,
            };
            if until.is_some_and(|until| cursor >= until) {
                continue; // ended, and acked to its end
            }
            let last_seq = until.map_or(last_seq, |until| until.min(last_seq));
            found.push((
                key.to_owned(),
                Position {
                    conv: conv_of(part)?,
                    cursor,
                    last_seq,
                    first_seq,
                    until,
                },
            ));
        }
        // Where each cursor lands past the device's own entries, a few conversations at once.
        let mut positions: Vec<Position> = futures_util::stream::iter(found)
            .map(|(key, mut p)| async move {
                p.cursor = self
                    .past_own(device, &key, p.cursor, p.last_seq, p.first_seq)
                    .await?;
                Ok::<_, StoreError>(p)
            })
            .buffered(LOOKUPS_IN_FLIGHT)
            .try_collect()
            .await?;
        positions.sort_by_key(|p| p.conv.key());
        Ok(positions)
    }

    async fn ack(&self, acks: &[(DeviceRef, Ack)]) -> Result<()> {
        // Where the acks by id point, all looked up at once.
        let ids: Vec<&str> = acks
            .iter()
            .filter_map(|(_, ack)| match ack {
                Ack::Id(id) => Some(id.as_str()),
                Ack::Upto { .. } => None,
            })
            .collect();
        let mut places: HashMap<String, Vec<(String, u64)>> = HashMap::new();
        if !ids.is_empty() {
            let found = all(self
                .timeline
                .find(doc! { "id": { "$in": ids } })
                .projection(doc! { "conv": 1, "seq": 1, "id": 1 }))
            .await?;
            for d in &found {
                let id = d.get_str("id").map_err(corrupt)?;
                let key = d.get_str("conv").map_err(corrupt)?;
                places
                    .entry(id.to_owned())
                    .or_default()
                    .push((key.to_owned(), int(d, "seq")?));
            }
        }
        let candidates: Vec<(&DeviceRef, Vec<(String, u64)>)> = acks
            .iter()
            .map(|(device, ack)| match ack {
                Ack::Upto { conv, seq } => (device, vec![(conv.key(), *seq)]),
                Ack::Id(id) => (device, places.get(id).cloned().unwrap_or_default()),
            })
            .collect();
        // Who takes part where, all looked up at once: every acking user in every conversation
        // acked, which holds each pair asked (the test below is by pair). One range of the
        // (user, conv) index per user, where an `$or` of pairs is a clause each (on the
        // MongoDB-wire stand-in 50-80 ms for 64-256 pairs, against 2-7 ms).
        let mut users: Vec<&str> = Vec::new();
        let mut keys: Vec<&str> = Vec::new();
        for (device, places) in &candidates {
            users.push(&device.user);
            keys.extend(places.iter().map(|(key, _)| key.as_str()));
        }
        users.sort_unstable();
        users.dedup();
        keys.sort_unstable();
        keys.dedup();
        let mut parts: HashSet<(String, String)> = HashSet::new();
        if !keys.is_empty() {
            let found = self
                .participants
                .find(doc! { "user": { "$in": users }, "conv": { "$in": keys } })
                .projection(doc! { "user": 1, "conv": 1 });
            for part in all(found).await? {
                let user = part.get_str("user").map_err(corrupt)?.to_owned();
                parts.insert((user, part.get_str("conv").map_err(corrupt)?.to_owned()));
            }
        }
        // Cursors are cumulative: each device moves once per conversation, to the highest
        // seq it acked there in this batch.
        let mut upto: HashMap<(DeviceRef, String), u64> = HashMap::new();
        for (device, places) in candidates {
            let mine: Vec<_> = places
                .into_iter()
                .filter(|(key, _)| parts.contains(&(device.user.clone(), key.clone())))
                .collect();
            // Only an id that names one message: another sender may reuse an id in another
            // conversation, and must not move this cursor.
            if let [(key, seq)] = &mine[..] {
                let at = upto.entry((device.clone(), key.clone())).or_default();
                *at = (*at).max(*seq);
            }
        }
        self.advance(upto).await
    }

    async fn last_of(&self, conv: &Conv, ids: &[String]) -> Result<Option<u64>> {
        self.timeline
            .find_one(doc! { "conv": conv.key(), "id": { "$in": ids } })
            .sort(doc! { "seq": -1 })
            .projection(doc! { "seq": 1 })
            .await
            .map_err(backend)?
            .map(|d| int(&d, "seq"))
            .transpose()
    }

    async fn read(&self, user: &str, conv: &Conv, seq: u64) -> Result<Option<u64>> {
        self.participants
            .find_one_and_update(
                doc! { "user": user, "conv": conv.key() },
                doc! { "$max": { "read": seq as i64 } },
            )
            .return_document(ReturnDocument::After)
            .await
            .map_err(backend)?
            .map(|d| int(&d, "read"))
            .transpose()
    }

    async fn trim(&self, before_ms: u64, max: usize) -> Result<u64> {
        let old = all(self
            .timeline
            .find(doc! { "at": { "$lt": before_ms as i64 } })
            .sort(doc! { "at": 1 })
            .limit(max as i64)
            .projection(doc! { "_id": 1, "conv": 1 }))
        .await?;
        if old.is_empty() {
            return Ok(0);
        }
        let ids: Vec<_> = old.iter().filter_map(|d| d.get("_id").cloned()).collect();
        let removed = self
            .timeline
            .delete_many(doc! { "_id": { "$in": ids } })
            .await
            .map_err(backend)?
            .deleted_count;
        let mut convs: Vec<&str> = old.iter().filter_map(|d| d.get_str("conv").ok()).collect();
        convs.sort_unstable();
        convs.dedup();
        for key in convs {
            let first = match self
                .timeline
                .find_one(doc! { "conv": key })
                .sort(doc! { "seq": 1 })
                .await
                .map_err(backend)?
            {
                Some(d) => int(&d, "seq")?,
                None => self.last_seq(key).await? + 1,
            };
            self.conversations
                .update_one(
                    doc! { "_id": key },
                    doc! { "$max": { "first_seq": first as i64 } },
                )
                .await
                .map_err(backend)?;
            // Parts that ended before what is left: nothing of them is owed any more.
            let gone = all(self
                .participants
                .find(doc! { "conv": key, "until": { "$lt": first as i64 } })
                .projection(doc! { "user": 1 }))
            .await?;
            for part in &gone {
                let user = part.get_str("user").map_err(corrupt)?;
                // Only if it is still the part that ended (not one a join started since); its
                // cursors after it, so a crash between the two leaves only unused cursors.
                let removed = self
                    .participants
                    .delete_one(
                        doc! { "user": user, "conv": key, "until": { "$lt": first as i64 } },
                    )
                    .await
                    .map_err(backend)?;
                if removed.deleted_count == 1 {
                    self.cursors
                        .delete_many(doc! { "user": user, "conv": key })
                        .await
                        .map_err(backend)?;
                }
            }
        }
        Ok(removed)
    }
}
