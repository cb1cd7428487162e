//! Which gateway instances hold a user's connections. Presence is a hint, never the truth:
//! delivery stores every message before it looks here, so a stale entry costs a wasted hand-off
//! to a gateway that no longer holds the user, and a missing one costs only a later replay.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("presence backend: {0}")]
    Backend(String),
}

#[async_trait::async_trait]
pub trait Presence: Send + Sync + 'static {
    /// A connection of `user` opened on `gateway`.
    async fn connected(&self, user: &str, gateway: &str) -> Result<(), PresenceError>;
    /// A connection of `user` on `gateway` closed.
    async fn disconnected(&self, user: &str, gateway: &str) -> Result<(), PresenceError>;
    /// The gateways holding at least one connection of `user`.
    async fn gateways(&self, user: &str) -> Result<Vec<String>, PresenceError>;
}

/// Presence for one process: connection counts per (user, gateway).
#[derive(Debug, Default)]
pub struct MemoryPresence {
    users: Mutex<HashMap<String, HashMap<String, usize>>>,
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

    async fn gateways(&self, user: &str) -> Result<Vec<String>, PresenceError> {
        Ok(self.with(|users| {
            users
                .get(user)
                .map(|g| g.keys().cloned().collect())
                .unwrap_or_default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_connections_per_gateway() {
        let p = MemoryPresence::default();
        p.connected("bob", "g1").await.unwrap();
        p.connected("bob", "g1").await.unwrap();
        p.connected("bob", "g2").await.unwrap();
        let mut g = p.gateways("bob").await.unwrap();
        g.sort();
        assert_eq!(g, vec!["g1", "g2"]);
        p.disconnected("bob", "g1").await.unwrap();
        p.disconnected("bob", "g2").await.unwrap();
        assert_eq!(p.gateways("bob").await.unwrap(), vec!["g1"]);
        p.disconnected("bob", "g1").await.unwrap();
        assert!(p.gateways("bob").await.unwrap().is_empty());
    }
}
