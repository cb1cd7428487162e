//! Which gateway instances hold a user's connections. Presence is a hint, never the truth:
//! delivery stores every message before it looks here, so a stale entry costs a wasted hand-off
//! to a gateway that no longer holds the user, and a missing one costs only a later replay.

mod redis;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

pub use crate::redis::RedisPresence;

/// How long a user's last-seen time is kept after it was recorded.
pub const LAST_SEEN_KEPT: Duration = Duration::from_secs(365 * 86_400);

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("presence backend: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

#[async_trait::async_trait]
pub trait Presence: Send + Sync + 'static {
    /// A connection of `user` opened on `gateway`.
    async fn connected(&self, user: &str, gateway: &str) -> Result<(), PresenceError>;
    /// A connection of `user` on `gateway` closed.
    async fn disconnected(&self, user: &str, gateway: &str) -> Result<(), PresenceError>;
    /// The gateways holding at least one connection of each of `users`, in their order: one
    /// call for a whole batch or group, however many users it names.
    async fn gateways_each(&self, users: &[&str]) -> Result<Vec<Vec<String>>, PresenceError>;
    /// The gateways holding at least one connection of `user`.
    async fn gateways(&self, user: &str) -> Result<Vec<String>, PresenceError> {
        Ok(self.gateways_each(&[user]).await?.pop().unwrap_or_default())
    }
    /// Records that `user`'s last connection closed at `at_ms`.
    async fn went_offline(&self, user: &str, at_ms: u64) -> Result<(), PresenceError>;
    /// When `user`'s last connection closed, if one ever did (kept for
    /// [`LAST_SEEN_KEPT`]).
    async fn last_seen(&self, user: &str) -> Result<Option<u64>, PresenceError>;

    /// Renews this process's entries; the node calls it every [`Presence::heartbeat_every`].
    async fn heartbeat(&self) -> Result<(), PresenceError> {
        Ok(())
    }

    /// How often entries need renewing, if they expire at all.
    fn heartbeat_every(&self) -> Option<Duration> {
        None
    }
}

/// Presence for one process: connection counts per (user, gateway).
#[derive(Debug, Default)]
pub struct MemoryPresence {
    users: Mutex<HashMap<String, HashMap<String, usize>>>,
    seen: Mutex<HashMap<String, u64>>,
}

impl MemoryPresence {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, HashMap<String, usize>>) -> T) -> T {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut users)
    }
}

#[async_trait::async_trait]
impl Presence for MemoryPresence {
    async fn connected(&self, user: &str, gateway: &str) -> Result<(), PresenceError> {
        self.with(|users| {
            *users
                .entry(user.to_owned())
                .or_default()
                .entry(gateway.to_owned())
                .or_default() += 1;
        });
        Ok(())
    }

    async fn disconnected(&self, user: &str, gateway: &str) -> Result<(), PresenceError> {
        self.with(|users| {
            if let Some(gateways) = users.get_mut(user) {
                if let Some(count) = gateways.get_mut(gateway) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        gateways.remove(gateway);
                    }
                }
                if gateways.is_empty() {
                    users.remove(user);
                }
            }
        });
        Ok(())
    }

    async fn went_offline(&self, user: &str, at_ms: u64) -> Result<(), PresenceError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert(user.to_owned(), at_ms);
        Ok(())
    }

    async fn last_seen(&self, user: &str) -> Result<Option<u64>, PresenceError> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        Ok(seen.get(user).copied())
    }

    async fn gateways_each(&self, users: &[&str]) -> Result<Vec<Vec<String>>, PresenceError> {
        Ok(self.with(|held| {
            users
                .iter()
                .map(|user| {
                    held.get(*user)
                        .map(|g| g.keys().cloned().collect())
                        .unwrap_or_default()
                })
                .collect()
        }))
    }
}
