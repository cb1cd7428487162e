//! Timelines in SQLite. An append is one job in the database's group commit: the entries, the
//! conversation's last seq and (for a new 1:1 chat) its two participants, all or nothing.
//! The single writer thread makes "next seq" a plain read: no two appends ever race for it.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{EmbeddedStore, backend};
use crate::timeline::{
    Ack, Appended, Conv, ConvState, DeviceRef, Entry, NewEntry, Page, Position, TimelineStore,
    Window,
};
use crate::{Result, StoreError, now_ms};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS conversations (
    conv TEXT PRIMARY KEY, last_seq INTEGER NOT NULL, first_seq INTEGER NOT NULL,
    last_at INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS timeline (
    conv TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL, device TEXT NOT NULL,
    id TEXT NOT NULL, at INTEGER NOT NULL, message TEXT NOT NULL,
    system INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (conv, seq));
CREATE UNIQUE INDEX IF NOT EXISTS timeline_ids ON timeline (id, conv, sender);
CREATE INDEX IF NOT EXISTS timeline_by_age ON timeline (at);
CREATE TABLE IF NOT EXISTS participants (
    username TEXT NOT NULL, conv TEXT NOT NULL, since_seq INTEGER NOT NULL,
    read_seq INTEGER NOT NULL, until_seq INTEGER, PRIMARY KEY (username, conv)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS registered_devices (
    username TEXT NOT NULL, device TEXT NOT NULL, at INTEGER NOT NULL,
    PRIMARY KEY (username, device)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cursors (
    username TEXT NOT NULL, device TEXT NOT NULL, conv TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (username, device, conv)) WITHOUT ROWID;
";

/// Databases made before a part could end gain the column that says where it did, and
/// those made before unread counts left out receipts the column that marks them (their older
/// entries all count, as they did). The dedupe key and the lookup by id were two indexes,
/// each written on every append; `timeline_ids` is both.
pub(super) fn migrate(t: &Transaction<'_>) -> rusqlite::Result<()> {
    super::add_column(t, "participants", "until_seq", "INTEGER")?;
    super::add_column(t, "timeline", "system", "INTEGER NOT NULL DEFAULT 0")?;
    t.execute_batch("DROP INDEX IF EXISTS timeline_dedupe; DROP INDEX IF EXISTS timeline_by_id;")
}

const BEFORE: &str = "SELECT seq, device, at, message FROM timeline
    WHERE conv = ?1 AND seq > ?2 AND seq < ?4 ORDER BY seq DESC LIMIT ?3";

/// Where a device stands (`?1` user, `?2` device, `?3` one conversation or NULL for all):
/// its cursor, moved past the entries its own device sent right after it (unless retention
/// removed what follows the cursor: that gap is the device's to be told), capped at where an
/// ended part ended; ended parts only while the device is owed some of them.
const POSITIONS: &str = "
    WITH mine AS (
        SELECT p.conv AS conv, max(p.since_seq, coalesce(k.seq, 0)) AS cursor,
            min(c.last_seq, coalesce(p.until_seq, c.last_seq)) AS last,
            c.first_seq AS first, p.until_seq AS until
        FROM participants p
        JOIN conversations c ON c.conv = p.conv
        LEFT JOIN cursors k ON k.username = p.username AND k.device = ?2 AND k.conv = p.conv
        WHERE p.username = ?1 AND (?3 IS NULL OR p.conv = ?3))
    SELECT conv,
        CASE WHEN cursor >= last OR first > cursor + 1 THEN cursor
        ELSE coalesce((SELECT min(t.seq - 1, mine.last) FROM timeline t
            WHERE t.conv = mine.conv AND t.seq > mine.cursor
              AND (t.sender != ?1 OR t.device != ?2)
            ORDER BY t.seq LIMIT 1), last) END,
        last, first, until
    FROM mine WHERE until IS NULL OR cursor < until
    ORDER BY conv";

/// Moves a device's cursor (`?1` user, `?2` device, `?3` conversation) to `?4` and past the
/// entries its own device sent right after it, never past what is stored (that would skip
/// what comes next), nor over entries retention removed (a gap the device is to be told of).
/// Only where its user takes part: an ack of another conversation moves nothing.
const ADVANCE: &str = "
    INSERT INTO cursors (username, device, conv, seq)
    SELECT ?1, ?2, ?3,
        CASE WHEN first_seq > ?4 + 1 OR ?4 >= last_seq THEN min(?4, last_seq)
        ELSE coalesce((SELECT t.seq - 1 FROM timeline t
            WHERE t.conv = ?3 AND t.seq > ?4 AND (t.sender != ?1 OR t.device != ?2)
            ORDER BY t.seq LIMIT 1), last_seq) END
    FROM conversations WHERE conv = ?3
        AND EXISTS (SELECT 1 FROM participants WHERE username = ?1 AND conv = ?3)
    ON CONFLICT DO UPDATE SET seq = max(seq, excluded.seq)";

fn corrupt(e: impl Into<crate::Cause>) -> StoreError {
    StoreError::Corrupt(e.into())
}

fn conv_of(key: &str) -> rusqlite::Result<Conv> {
    Conv::from_key(key).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("not a conversation key: {key:?}").into(),
        )
    })
}

/// Appends one entry; the caller's transaction makes a batch all-or-nothing.
fn append_one(
    t: &Transaction<'_>,
    item: &NewEntry,
    body: &str,
    at: i64,
) -> rusqlite::Result<Appended> {
    let key = item.conv.key();
    let m = &item.message;
    let existing: Option<i64> = t
        .prepare_cached("SELECT seq FROM timeline WHERE conv = ?1 AND sender = ?2 AND id = ?3")?
        .query_row(params![key, m.source, m.id], |r| r.get(0))
        .optional()?;
    if let Some(seq) = existing {
        return Ok(Appended::Repeat(seq as u64));
    }
    let last: Option<i64> = t
        .prepare_cached("SELECT last_seq FROM conversations WHERE conv = ?1")?
        .query_row([&key], |r| r.get(0))
        .optional()?;
    let seq = last.unwrap_or(0) + 1;
    t.prepare_cached(
        "INSERT INTO timeline (conv, seq, sender, device, id, at, message, system)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        key,
        seq,
        m.source,
        item.device,
        m.id,
        at,
        body,
        m.is_system()
    ])?;
    t.prepare_cached(
        "INSERT INTO conversations (conv, last_seq, first_seq, last_at) VALUES (?1, ?2, 1, ?3)
         ON CONFLICT (conv) DO UPDATE SET last_seq = excluded.last_seq, last_at = excluded.last_at",
    )?
    .execute(params![key, seq, at])?;
    if last.is_none()
        && let Some(pair) = item.conv.pair()
    {
        let mut participate = t.prepare_cached(
            "INSERT INTO participants (username, conv, since_seq, read_seq) VALUES (?1, ?2, 0, 0)
             ON CONFLICT DO NOTHING",
        )?;
        for user in pair {
            participate.execute(params![user, key])?;
        }
    }
    if !item.leaving.is_empty() {
        let mut end = t.prepare_cached(
            "UPDATE participants SET until_seq = ?3
             WHERE username = ?1 AND conv = ?2 AND until_seq IS NULL AND since_seq < ?3",
        )?;
        for user in &item.leaving {
            end.execute(params![user, key, seq])?;
        }
    }
    Ok(Appended::New(seq as u64))
}

fn state(
    c: &Connection,
    user: &str,
    conv: Conv,
    since: i64,
    read: i64,
) -> rusqlite::Result<ConvState> {
    let key = conv.key();
    let (last_seq, last_at): (i64, i64) = c
        .prepare_cached("SELECT last_seq, last_at FROM conversations WHERE conv = ?1")?
        .query_row([&key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((0, 0));
    let floor = since.max(read);
    let unread: i64 = c
        .prepare_cached(
            "SELECT count(*) FROM timeline
             WHERE conv = ?1 AND seq > ?2 AND sender != ?3 AND system = 0",
        )?
        .query_row(params![key, floor, user], |r| r.get(0))?;
    Ok(ConvState {
        conv,
        last_seq: last_seq as u64,
        last_at: last_at as u64,
        read_seq: read as u64,
        unread: unread as u64,
        since_seq: since as u64,
    })
}

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, String, i64, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

#[async_trait::async_trait]
impl TimelineStore for EmbeddedStore {
    async fn append(&self, items: &[NewEntry]) -> Result<Vec<Appended>> {
        let items = items
            .iter()
            .map(|item| {
                let body = serde_json::to_string(&item.message).map_err(corrupt)?;
                Ok((item.clone(), body))
            })
            .collect::<Result<Vec<_>>>()?;
        self.db
            .write(move |t| {
                let at = now_ms();
                items
                    .iter()
                    .map(|(item, body)| append_one(t, item, body, at))
                    .collect()
            })
            .await
            .map_err(backend)
    }

    async fn window(&self, conv: &Conv, page: Page, floor: u64, limit: usize) -> Result<Window> {
        let key = conv.key();
        // The latest entries are those before a seq no timeline reaches.
        let (sql, bound) = match page {
            Page::Latest => (BEFORE, i64::MAX),
            Page::Before(before) => (BEFORE, before as i64),
            Page::After(after) => (
                "SELECT seq, device, at, message FROM timeline
                 WHERE conv = ?1 AND seq > max(?2, ?4) ORDER BY seq LIMIT ?3",
                after as i64,
            ),
        };
        let rows = self
            .db
            .read(move |c| {
                c.prepare_cached(sql)?
                    .query_map(params![key, floor as i64, limit as i64 + 1, bound], entry)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await
            .map_err(backend)?;
        let more = rows.len() > limit;
        let mut entries = rows
            .into_iter()
            .take(limit)
            .map(|(seq, device, at, body)| {
                Ok(Entry {
                    seq: seq as u64,
                    device,
                    at: at as u64,
                    message: serde_json::from_str(&body).map_err(corrupt)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if !matches!(page, Page::After(_)) {
            entries.reverse();
        }
        Ok(Window { entries, more })
    }

    async fn join(&self, group_id: &str, users: &[String]) -> Result<()> {
        let key = Conv::group(group_id).key();
        let users = users.to_vec();
        self.db
            .write(move |t| {
                let last: i64 = t
                    .query_row(
                        "SELECT last_seq FROM conversations WHERE conv = ?1",
                        [&key],
                        |r| r.get(0),
                    )
                    .optional()?
                    .unwrap_or(0);
                let mut join = t.prepare_cached(
                    "INSERT INTO participants (username, conv, since_seq, read_seq)
                     VALUES (?1, ?2, ?3, ?3)
                     ON CONFLICT DO UPDATE SET since_seq = excluded.since_seq,
                        read_seq = excluded.read_seq, until_seq = NULL
                     WHERE participants.until_seq IS NOT NULL",
                )?;
                for user in &users {
                    join.execute(params![user, key, last])?;
                }
                Ok(())
            })
            .await
            .map_err(backend)
    }

    async fn conversation(&self, user: &str, conv: &Conv) -> Result<Option<ConvState>> {
        let (user, conv) = (user.to_owned(), conv.clone());
        self.db
            .read(move |c| {
                let part: Option<(i64, i64)> = c
                    .prepare_cached(
                        "SELECT since_seq, read_seq FROM participants
                         WHERE username = ?1 AND conv = ?2 AND until_seq IS NULL",
                    )?
                    .query_row(params![user, conv.key()], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                part.map(|(since, read)| state(c, &user, conv, since, read))
                    .transpose()
            })
            .await
            .map_err(backend)
    }

    async fn conversations(&self, user: &str) -> Result<Vec<ConvState>> {
        let user = user.to_owned();
        let mut states = self
            .db
            .read(move |c| {
                let parts = c
                    .prepare_cached(
                        "SELECT conv, since_seq, read_seq FROM participants
                         WHERE username = ?1 AND until_seq IS NULL",
                    )?
                    .query_map([&user], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                parts
                    .into_iter()
                    .map(|(key, since, read)| state(c, &user, conv_of(&key)?, since, read))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await
            .map_err(backend)?;
        states.sort_by(|a, b| b.last_at.cmp(&a.last_at).then_with(|| a.conv.cmp(&b.conv)));
        Ok(states)
    }

    async fn register(&self, device: &DeviceRef) -> Result<bool> {
        let device = device.clone();
        self.db
            .write(move |t| {
                let new = t.execute(
                    "INSERT INTO registered_devices (username, device, at) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING",
                    params![device.user, device.device, now_ms()],
                )? == 1;
                if new {
                    // What each conversation already holds is history to this device; a cursor
                    // it already has (it acked as `default` before it ever logged in) stays.
                    t.execute(
                        "INSERT INTO cursors (username, device, conv, seq)
                         SELECT ?1, ?2, p.conv, coalesce(c.last_seq, 0)
                         FROM participants p LEFT JOIN conversations c ON c.conv = p.conv
                         WHERE p.username = ?1
                         ON CONFLICT DO NOTHING",
                        params![device.user, device.device],
                    )?;
                }
                Ok(new)
            })
            .await
            .map_err(backend)
    }

    async fn unregister(&self, device: &DeviceRef) -> Result<()> {
        let device = device.clone();
        self.db
            .write(move |t| {
                for table in ["registered_devices", "cursors"] {
                    t.execute(
                        &format!("DELETE FROM {table} WHERE username = ?1 AND device = ?2"),
                        params![device.user, device.device],
                    )?;
                }
                Ok(())
            })
            .await
            .map_err(backend)
    }

    async fn positions(&self, device: &DeviceRef, only: Option<&Conv>) -> Result<Vec<Position>> {
        let device = device.clone();
        let only = only.map(Conv::key);
        self.db
            .read(move |c| {
                c.prepare_cached(POSITIONS)?
                    .query_map(params![device.user, device.device, only], |r| {
                        Ok(Position {
                            conv: conv_of(&r.get::<_, String>(0)?)?,
                            cursor: r.get::<_, i64>(1)? as u64,
                            last_seq: r.get::<_, i64>(2)? as u64,
                            first_seq: r.get::<_, i64>(3)? as u64,
                            until: r.get::<_, Option<i64>>(4)?.map(|u| u as u64),
                        })
                    })?
                    .collect()
            })
            .await
            .map_err(backend)
    }

    async fn ack(&self, acks: &[(DeviceRef, Ack)]) -> Result<()> {
        let acks = acks.to_vec();
        self.db
            .write(move |t| {
                let mut by_id = t.prepare_cached(
                    "SELECT t.conv, t.seq FROM timeline t
                     JOIN participants p ON p.conv = t.conv AND p.username = ?1
                     WHERE t.id = ?2 LIMIT 2",
                )?;
                let mut advance = t.prepare_cached(ADVANCE)?;
                for (device, ack) in &acks {
                    let targets: Vec<(String, i64)> = match ack {
                        Ack::Upto { conv, seq } => vec![(conv.key(), *seq as i64)],
                        // Only an id that names one message: another sender may reuse an id in
                        // another conversation, and must not move this cursor.
                        Ack::Id(id) => {
                            let found: Vec<(String, i64)> = by_id
                                .query_map(params![device.user, id], |r| {
                                    Ok((r.get(0)?, r.get(1)?))
                                })?
                                .collect::<rusqlite::Result<_>>()?;
                            if found.len() == 1 { found } else { Vec::new() }
                        }
                    };
                    for (key, seq) in targets {
                        advance.execute(params![device.user, device.device, key, seq])?;
                    }
                }
                Ok(())
            })
            .await
            .map_err(backend)
    }

    async fn last_of(&self, conv: &Conv, ids: &[String]) -> Result<Option<u64>> {
        let (key, ids) = (conv.key(), ids.to_vec());
        self.db
            .read(move |c| {
                let mut find =
                    c.prepare_cached("SELECT max(seq) FROM timeline WHERE conv = ?1 AND id = ?2")?;
                let mut last = None;
                for id in &ids {
                    let seq: Option<i64> = find.query_row(params![key, id], |r| r.get(0))?;
                    last = last.max(seq.map(|s| s as u64));
                }
                Ok(last)
            })
            .await
            .map_err(backend)
    }

    async fn read(&self, user: &str, conv: &Conv, seq: u64) -> Result<Option<u64>> {
        let (user, key) = (user.to_owned(), conv.key());
        self.db
            .write(move |t| {
                t.prepare_cached(
                    "UPDATE participants SET read_seq = max(read_seq, ?3)
                     WHERE username = ?1 AND conv = ?2 RETURNING read_seq",
                )?
                .query_row(params![user, key, seq as i64], |r| r.get::<_, i64>(0))
                .optional()
                .map(|read| read.map(|r| r as u64))
            })
            .await
            .map_err(backend)
    }

    async fn trim(&self, before_ms: u64, max: usize) -> Result<u64> {
        self.db
            .write(move |t| {
                let removed = t.execute(
                    "DELETE FROM timeline WHERE rowid IN (
                        SELECT rowid FROM timeline WHERE at < ?1 ORDER BY at LIMIT ?2)",
                    params![before_ms as i64, max as i64],
                )?;
                if removed > 0 {
                    t.execute_batch(
                        "UPDATE conversations SET first_seq = coalesce(
                            (SELECT min(seq) FROM timeline t WHERE t.conv = conversations.conv),
                            last_seq + 1)
                         WHERE first_seq < coalesce(
                            (SELECT min(seq) FROM timeline t WHERE t.conv = conversations.conv),
                            last_seq + 1);
                         DELETE FROM cursors WHERE (username, conv) IN (
                            SELECT p.username, p.conv FROM participants p
                            JOIN conversations c ON c.conv = p.conv
                            WHERE p.until_seq < c.first_seq);
                         DELETE FROM participants WHERE until_seq < (
                            SELECT first_seq FROM conversations c
                            WHERE c.conv = participants.conv);",
                    )?;
                }
                Ok(removed as u64)
            })
            .await
            .map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use samvad_sqlite::Db;

    use super::super::EmbeddedStore;

    /// A database made with the two indexes over ids, and a message in it, keeps the message
    /// and its dedupe key under the one index that replaces them.
    #[tokio::test]
    async fn the_two_id_indexes_become_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        db.write(|t| {
            t.execute_batch(
                "CREATE TABLE timeline (
                    conv TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL,
                    device TEXT NOT NULL, id TEXT NOT NULL, at INTEGER NOT NULL,
                    message TEXT NOT NULL, PRIMARY KEY (conv, seq));
                 CREATE UNIQUE INDEX timeline_dedupe ON timeline (conv, sender, id);
                 CREATE INDEX timeline_by_id ON timeline (id);
                 INSERT INTO timeline VALUES ('c', 1, 'alice', 'd', 'm1', 0, '{}');",
            )
        })
        .await
        .unwrap();
        EmbeddedStore::open(db.clone()).await.unwrap();
        let indexes = db
            .read(|c| {
                c.prepare(
                    "SELECT name FROM sqlite_master WHERE type = 'index'
                     AND tbl_name = 'timeline' AND sql IS NOT NULL ORDER BY name",
                )?
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await
            .unwrap();
        assert_eq!(indexes, ["timeline_by_age", "timeline_ids"]);
        let repeat = db
            .write(|t| {
                t.execute(
                    "INSERT INTO timeline (conv, seq, sender, device, id, at, message)
                     VALUES ('c', 2, 'alice', 'd', 'm1', 0, '{}')",
                    [],
                )
            })
            .await;
        assert!(repeat.is_err(), "the dedupe key still holds: {repeat:?}");
    }
}
