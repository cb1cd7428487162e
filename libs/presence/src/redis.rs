//! Presence in Redis, shared by every gateway: one hash per user, `{prefix}presence:{user}`,
//! field = gateway id, value = when the entry expires (ms since the epoch). A gateway counts
//! its own connections per user and writes the field on the first, deletes it on the last,
//! and refreshes its fields on a heartbeat; a gateway that dies stops refreshing, and its
//! fields are ignored once expired and removed when next read. Every command and pipeline
//! touches one key, so the same code runs on one Redis server or a Redis Cluster.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, Cmd, Pipeline, RedisFuture, Value};
use samvad_protocol::now_ms;

use crate::{Presence, PresenceError};

/// Commands in flight at once for one call (a heartbeat, a lookup of many users).
const IN_FLIGHT: usize = 64;

pub struct RedisPresence {
    conn: Conn,
    prefix: String,
    ttl: Duration,
    /// This process's connections per (user, gateway).
    local: Mutex<HashMap<(String, String), usize>>,
}

fn backend(e: redis::RedisError) -> PresenceError {
    PresenceError::Backend(e.into())
}

impl RedisPresence {
    /// Connects to one server at `url` (`redis://…`), reconnecting as needed. Entries expire
    /// `ttl` after their last heartbeat.
    pub async fn connect(url: &str, prefix: &str, ttl: Duration) -> Result<Self, PresenceError> {
        let client = redis::Client::open(url).map_err(backend)?;
        let conn = client.get_connection_manager().await.map_err(backend)?;
        Ok(Self::new(Conn::Single(conn), prefix, ttl))
    }

    /// Connects to the Redis Cluster that `seeds` (`redis://…` of some of its nodes) belong to,
    /// following its slot map as it changes.
    pub async fn connect_cluster(
        seeds: &[String],
        prefix: &str,
        ttl: Duration,
    ) -> Result<Self, PresenceError> {
        let client = redis::cluster::ClusterClient::new(seeds.to_vec()).map_err(backend)?;
        let conn = client.get_async_connection().await.map_err(backend)?;
        Ok(Self::new(Conn::Cluster(conn), prefix, ttl))
    }

    fn new(conn: Conn, prefix: &str, ttl: Duration) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            ttl,
            local: Mutex::default(),
        }
    }

    fn key(&self, user: &str) -> String {
        format!("{}presence:{user}", self.prefix)
    }

    fn seen_key(&self, user: &str) -> String {
        format!("{}seen:{user}", self.prefix)
    }

    /// Changes this process's count for (user, gateway); returns the new count.
    fn count(&self, user: &str, gateway: &str, delta: isize) -> usize {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let key = (user.to_owned(), gateway.to_owned());
        let count = local
            .get(&key)
            .copied()
            .unwrap_or(0)
            .saturating_add_signed(delta);
        if count == 0 {
            local.remove(&key);
        } else {
            local.insert(key, count);
        }
        count
    }

    /// The gateways holding a live entry of `user`; expired entries are removed on the way.
    async fn lookup(&self, user: &str) -> Result<Vec<String>, PresenceError> {
        let key = self.key(user);
        let mut conn = self.conn.clone();
        let entries: HashMap<String, u64> = conn.hgetall(&key).await.map_err(backend)?;
        let now = now_ms();
        let (live, expired): (Vec<_>, Vec<_>) =
            entries.into_iter().partition(|(_, expires)| *expires > now);
        if !expired.is_empty() {
            let fields: Vec<String> = expired.into_iter().map(|(g, _)| g).collect();
            if let Err(e) = conn.hdel::<_, _, ()>(&key, fields).await {
                tracing::debug!(error = %e, "could not remove expired presence");
            }
        }
        Ok(live.into_iter().map(|(g, _)| g).collect())
    }

    /// Writes (or renews) the entry of `gateway` for `user`, and the key's expiry.
    async fn write(&self, user: &str, gateway: &str) -> Result<(), PresenceError> {
        let key = self.key(user);
        let expires = now_ms() + self.ttl.as_millis() as u64;
        redis::pipe()
            .hset(&key, gateway, expires)
            .ignore()
            .pexpire(&key, self.ttl.as_millis() as i64)
            .ignore()
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(backend)
    }
}

#[async_trait::async_trait]
impl Presence for RedisPresence {
    async fn connected(&self, user: &str, gateway: &str) -> Result<(), PresenceError> {
        // Written on every connect (not only the first), so a reconnect repairs a lost entry.
        self.count(user, gateway, 1);
        self.write(user, gateway).await
    }

    async fn disconnected(&self, user: &str, gateway: &str) -> Result<(), PresenceError> {
        if self.count(user, gateway, -1) == 0 {
            self.conn
                .clone()
                .hdel::<_, _, ()>(self.key(user), gateway)
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    async fn gateways_each(&self, users: &[&str]) -> Result<Vec<Vec<String>>, PresenceError> {
        // One key per lookup (a cluster routes each to its node); the multiplexed connection
        // pipelines the concurrent ones, so a group of 1,000 is not 1,000 round trips. (Owned
        // names: a closure over borrowed ones is not Send for every lifetime, as the trait's
        // boxed future needs.)
        let users: Vec<String> = users.iter().map(|&user| user.to_owned()).collect();
        futures_util::stream::iter(users)
            .map(|user| async move { self.lookup(&user).await })
            .buffered(IN_FLIGHT)
            .try_collect()
            .await
    }

    async fn went_offline(&self, user: &str, at_ms: u64) -> Result<(), PresenceError> {
        self.conn
            .clone()
            .pset_ex::<_, _, ()>(
                self.seen_key(user),
                at_ms,
                crate::LAST_SEEN_KEPT.as_millis() as u64,
            )
            .await
            .map_err(backend)
    }

    async fn last_seen(&self, user: &str) -> Result<Option<u64>, PresenceError> {
        self.conn
            .clone()
            .get(self.seen_key(user))
            .await
            .map_err(backend)
    }

    async fn heartbeat(&self) -> Result<(), PresenceError> {
        let pairs: Vec<(String, String)> = self
            .local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        // One key per write (a cluster routes each to its node); the multiplexed connection
        // pipelines the concurrent ones.
        futures_util::stream::iter(pairs)
            .map(|(user, gateway)| async move { self.write(&user, &gateway).await })
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<()>()
            .await
    }

    fn heartbeat_every(&self) -> Option<Duration> {
        Some(self.ttl / 3)
    }
}

/// A connection to one server or to a cluster; cheap to clone, shared by every task.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

// One server's connection is opened again once a command finds it dropped (a restart of
// Redis, a failover), but that command fails: send it once more, on the new connection. Every
// command here is idempotent, so one that did reach the server may run twice. (A cluster
// connection retries by itself.)
impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => Box::pin(async move {
                match c.req_packed_command(cmd).await {
                    Err(e) if e.is_connection_dropped() => c.req_packed_command(cmd).await,
                    done => done,
                }
            }),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => Box::pin(async move {
                match c.req_packed_commands(pipeline, offset, count).await {
                    Err(e) if e.is_connection_dropped() => {
                        c.req_packed_commands(pipeline, offset, count).await
                    }
                    done => done,
                }
            }),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}
