//! The embedded backend: tables in the all-in-one process's SQLite database. Writes join the
//! database's group commit, so concurrent deliveries share one fsync.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rusqlite::{OptionalExtension, Transaction, params};
use samvad_sqlite::{Db, DbError};

mod asset;
mod timeline;

use crate::{
    Device, Group, GroupStore, Linked, LoggedIn, Member, Profile, ProfileStore, Removal, Result,
    Role, StoreError, new_session, now_ms,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS profiles (
    username TEXT PRIMARY KEY, name TEXT, created_at INTEGER NOT NULL, profile_pic TEXT,
    show_presence INTEGER NOT NULL DEFAULT 1) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS devices (
    username TEXT NOT NULL, device_id TEXT NOT NULL, token TEXT NOT NULL,
    version REAL NOT NULL, updated_at INTEGER NOT NULL, session TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (username, device_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS groups (
    group_id TEXT PRIMARY KEY, name TEXT NOT NULL, profile_pic TEXT,
    created_at INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_members (
    group_id TEXT NOT NULL, username TEXT NOT NULL, role TEXT NOT NULL, joined INTEGER NOT NULL,
    PRIMARY KEY (group_id, username)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS group_members_by_user ON group_members (username, group_id);
";

/// Profiles, groups, timelines and attachments in SQLite.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Db,
    groups: Arc<GroupCache>,
}

/// Groups as last read, so that a group message (its sender's membership checked at the
/// gateway, its members listed by the router) reads no table. Exact, because this process is
/// the database's only writer: every change of a group drops its entry once committed, and a
/// read that overlapped a change does not keep what it read.
#[derive(Default)]
struct GroupCache {
    inner: Mutex<GroupCacheInner>,
}

#[derive(Default)]
struct GroupCacheInner {
    /// Bumped by every change of any group.
    generation: u64,
    groups: HashMap<String, Group>,
}

/// Groups kept at most; past it the cache starts afresh.
const CACHED_GROUPS: usize = 10_000;

impl GroupCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, GroupCacheInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, group_id: &str) -> (Option<Group>, u64) {
        let inner = self.lock();
        (inner.groups.get(group_id).cloned(), inner.generation)
    }

    /// Keeps `group`, read when the cache was at `generation`, unless a group changed since.
    fn keep(&self, group: &Group, generation: u64) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.groups.len() >= CACHED_GROUPS {
            inner.groups.clear();
        }
        inner.groups.insert(group.group_id.clone(), group.clone());
    }

    /// After a change of `group_id` (committed or not).
    fn changed(&self, group_id: &str) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.groups.remove(group_id);
    }
}

fn backend(e: DbError) -> StoreError {
    StoreError::Backend(e.into())
}

impl EmbeddedStore {
    pub async fn open(db: Db) -> Result<Self> {
        db.write(|t| {
            t.execute_batch(SCHEMA)?;
            migrate(t)?;
            t.execute_batch(timeline::SCHEMA)?;
            t.execute_batch(asset::SCHEMA)?;
            timeline::migrate(t)
        })
        .await
        .map_err(backend)?;
        Ok(Self {
            db,
            groups: Arc::default(),
        })
    }
}

/// Adds `column` (`name` and its declaration) to `table` of a database made before it was.
fn add_column(t: &Transaction<'_>, table: &str, name: &str, column: &str) -> rusqlite::Result<()> {
    let has: bool = t.query_row(
        "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [table, name],
        |r| r.get(0),
    )?;
    if !has {
        t.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {name} {column}"))?;
    }
    Ok(())
}

/// Brings a database from before profile pictures, or before device sessions, up to date.
fn migrate(t: &Transaction<'_>) -> rusqlite::Result<()> {
    add_column(t, "profiles", "profile_pic", "TEXT")?;
    add_column(t, "profiles", "show_presence", "INTEGER NOT NULL DEFAULT 1")?;
    add_column(t, "devices", "session", "TEXT NOT NULL DEFAULT ''")
}

fn load_group(conn: &rusqlite::Connection, group_id: &str) -> rusqlite::Result<Option<Group>> {
    let head = conn
        .prepare_cached("SELECT name, profile_pic FROM groups WHERE group_id = ?1")?
        .query_row([group_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
        })
        .optional()?;
    let Some((name, profile_pic)) = head else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT username, role FROM group_members WHERE group_id = ?1 ORDER BY joined",
    )?;
    let members = stmt
        .query_map([group_id], |r| {
            let role: String = r.get(1)?;
            Ok(Member {
                username: r.get(0)?,
                role: if role == "admin" {
                    Role::Admin
                } else {
                    Role::User
                },
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(Group {
        group_id: group_id.to_owned(),
        name,
        members,
        profile_pic,
    }))
}

fn insert_member(
    t: &Transaction<'_>,
    group_id: &str,
    username: &str,
    role: Role,
) -> rusqlite::Result<bool> {
    let changed = t.execute(
        "INSERT INTO group_members (group_id, username, role, joined)
         SELECT ?1, ?2, ?3, coalesce(max(joined), 0) + 1 FROM group_members WHERE group_id = ?1
         ON CONFLICT (group_id, username) DO NOTHING",
        params![group_id, username, role.as_str()],
    )?;
    Ok(changed == 1)
}

#[async_trait::async_trait]
impl ProfileStore for EmbeddedStore {
    async fn login(&self, username: &str, device: &Device, max_devices: usize) -> Result<LoggedIn> {
        let username = username.to_owned();
        let device = device.clone();
        self.db
            .write(move |t| {
                let now = now_ms();
                let is_new = t.execute(
                    "INSERT INTO profiles (username, created_at) VALUES (?1, ?2)
                     ON CONFLICT (username) DO NOTHING",
                    params![username, now],
                )? == 1;
                if !device.notification_token.is_empty() {
                    // A token belongs to one device: a phone that changed hands must not get
                    // the previous user's pushes.
                    t.execute(
                        "UPDATE devices SET token = '' WHERE token = ?1 AND username != ?2",
                        params![device.notification_token, username],
                    )?;
                }
                let session = t
                    .query_row(
                        "UPDATE devices SET token = ?3, version = ?4, updated_at = ?5
                         WHERE username = ?1 AND device_id = ?2 RETURNING session",
                        params![
                            username,
                            device.device_id,
                            device.notification_token,
                            f64::from(device.message_version),
                            now
                        ],
                        |r| r.get::<_, String>(0),
                    )
                    .optional()?;
                if let Some(session) = session {
                    return Ok(LoggedIn {
                        is_new,
                        session,
                        unlinked: Vec::new(),
                    });
                }
                let mut stmt = t.prepare_cached(
                    "DELETE FROM devices WHERE username = ?1 AND device_id IN (
                        SELECT device_id FROM devices WHERE username = ?1
                        ORDER BY updated_at DESC, device_id LIMIT -1 OFFSET ?2)
                     RETURNING device_id",
                )?;
                let unlinked = stmt
                    .query_map(params![username, max_devices.saturating_sub(1)], |r| {
                        r.get(0)
                    })?
                    .collect::<rusqlite::Result<Vec<String>>>()?;
                let session = new_session();
                t.execute(
                    "INSERT INTO devices (username, device_id, token, version, updated_at, session)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        username,
                        device.device_id,
                        device.notification_token,
                        f64::from(device.message_version),
                        now,
                        session
                    ],
                )?;
                Ok(LoggedIn {
                    is_new,
                    session,
                    unlinked,
                })
            })
            .await
            .map_err(backend)
    }

    async fn profile(&self, username: &str) -> Result<Option<Profile>> {
        let username = username.to_owned();
        self.db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT username, name, profile_pic, show_presence FROM profiles
                     WHERE username = ?1",
                )?
                .query_row([username], |r| {
                    Ok(Profile {
                        username: r.get(0)?,
                        name: r.get(1)?,
                        profile_pic: r.get(2)?,
                        show_presence: r.get(3)?,
                    })
                })
                .optional()
            })
            .await
            .map_err(backend)
    }

    async fn set_profile(&self, profile: &Profile) -> Result<bool> {
        let p = profile.clone();
        self.db
            .write(move |t| {
                let changed = t.execute(
                    "UPDATE profiles SET name = ?2, profile_pic = ?3, show_presence = ?4
                     WHERE username = ?1",
                    params![p.username, p.name, p.profile_pic, p.show_presence],
                )?;
                Ok(changed == 1)
            })
            .await
            .map_err(backend)
    }

    async fn existing(&self, usernames: &[String]) -> Result<Vec<String>> {
        let usernames = usernames.to_vec();
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached("SELECT 1 FROM profiles WHERE username = ?1")?;
                let mut found = Vec::new();
                for name in usernames {
                    if stmt.exists([&name])? {
                        found.push(name);
                    }
                }
                Ok(found)
            })
            .await
            .map_err(backend)
    }

    async fn devices(&self, username: &str) -> Result<Vec<Linked>> {
        let username = username.to_owned();
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT device_id, token, version, session, updated_at FROM devices
                     WHERE username = ?1 ORDER BY device_id",
                )?;
                stmt.query_map([username], |r| {
                    Ok(Linked {
                        device: Device {
                            device_id: r.get(0)?,
                            notification_token: r.get(1)?,
                            message_version: r.get::<_, f64>(2)? as f32,
                        },
                        session: r.get(3)?,
                        last_login: r.get(4)?,
                    })
                })?
                .collect()
            })
            .await
            .map_err(backend)
    }

    async fn session(&self, username: &str, device_id: &str) -> Result<Option<String>> {
        let (username, device_id) = (username.to_owned(), device_id.to_owned());
        self.db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT session FROM devices WHERE username = ?1 AND device_id = ?2",
                )?
                .query_row(params![username, device_id], |r| r.get(0))
                .optional()
            })
            .await
            .map_err(backend)
    }

    async fn unlink(&self, username: &str, device_id: &str) -> Result<bool> {
        let (username, device_id) = (username.to_owned(), device_id.to_owned());
        self.db
            .write(move |t| {
                t.execute(
                    "DELETE FROM devices WHERE username = ?1 AND device_id = ?2",
                    params![username, device_id],
                )
                .map(|deleted| deleted == 1)
            })
            .await
            .map_err(backend)
    }

    async fn remove_token(&self, username: &str, device_id: &str, token: &str) -> Result<bool> {
        let (username, device_id, token) =
            (username.to_owned(), device_id.to_owned(), token.to_owned());
        self.db
            .write(move |t| {
                t.execute(
                    "UPDATE devices SET token = '' WHERE username = ?1 AND device_id = ?2
                     AND token = ?3 AND token != ''",
                    params![username, device_id, token],
                )
                .map(|changed| changed == 1)
            })
            .await
            .map_err(backend)
    }
}

/// Drops a group from the cache when the change of it is over, however it ended (a write whose
/// caller went away may still have committed).
struct Changes<'a>(&'a GroupCache, &'a str);

impl Drop for Changes<'_> {
    fn drop(&mut self) {
        self.0.changed(self.1);
    }
}

#[async_trait::async_trait]
impl GroupStore for EmbeddedStore {
    async fn create(&self, group: &Group) -> Result<()> {
        let _changes = Changes(&self.groups, &group.group_id);
        let group = group.clone();
        self.db
            .write(move |t| {
                t.execute(
                    "INSERT INTO groups (group_id, name, profile_pic, created_at)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![group.group_id, group.name, group.profile_pic, now_ms()],
                )?;
                for m in &group.members {
                    insert_member(t, &group.group_id, &m.username, m.role)?;
                }
                Ok(())
            })
            .await
            .map_err(backend)
    }

    async fn group(&self, group_id: &str) -> Result<Option<Group>> {
        let (cached, generation) = self.groups.get(group_id);
        if cached.is_some() {
            return Ok(cached);
        }
        let id = group_id.to_owned();
        let found = self
            .db
            .read(move |c| load_group(c, &id))
            .await
            .map_err(backend)?;
        if let Some(group) = &found {
            self.groups.keep(group, generation);
        }
        Ok(found)
    }

    async fn groups_of(&self, username: &str) -> Result<Vec<Group>> {
        let username = username.to_owned();
        self.db
            .read(move |c| {
                let ids = c
                    .prepare_cached(
                        "SELECT group_id FROM group_members WHERE username = ?1 ORDER BY group_id",
                    )?
                    .query_map([username], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let mut groups = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some(g) = load_group(c, &id)? {
                        groups.push(g);
                    }
                }
                Ok(groups)
            })
            .await
            .map_err(backend)
    }

    async fn add_members(&self, group_id: &str, usernames: &[String]) -> Result<Vec<String>> {
        let _changes = Changes(&self.groups, group_id);
        let group_id = group_id.to_owned();
        let usernames = usernames.to_vec();
        self.db
            .write(move |t| {
                let mut added = Vec::new();
                for name in usernames {
                    if insert_member(t, &group_id, &name, Role::User)? {
                        added.push(name);
                    }
                }
                Ok(added)
            })
            .await
            .map_err(backend)
    }

    async fn remove_member(&self, group_id: &str, username: &str) -> Result<Option<Removal>> {
        let _changes = Changes(&self.groups, group_id);
        let group_id = group_id.to_owned();
        let username = username.to_owned();
        self.db
            .write(move |t| {
                let removed = t.execute(
                    "DELETE FROM group_members WHERE group_id = ?1 AND username = ?2",
                    params![group_id, username],
                )?;
                if removed == 0 {
                    return Ok(None);
                }
                let admins: i64 = t.query_row(
                    "SELECT count(*) FROM group_members WHERE group_id = ?1 AND role = 'admin'",
                    [&group_id],
                    |r| r.get(0),
                )?;
                let promoted = if admins == 0 {
                    let next: Option<String> = t
                        .query_row(
                            "SELECT username FROM group_members WHERE group_id = ?1
                             ORDER BY joined LIMIT 1",
                            [&group_id],
                            |r| r.get(0),
                        )
                        .optional()?;
                    if let Some(next) = &next {
                        t.execute(
                            "UPDATE group_members SET role = 'admin'
                             WHERE group_id = ?1 AND username = ?2",
                            params![group_id, next],
                        )?;
                    }
                    next
                } else {
                    None
                };
                Ok(Some(Removal { promoted }))
            })
            .await
            .map_err(backend)
    }
}
