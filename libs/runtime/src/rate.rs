//! Flood control: token buckets (so many per second, with bursts) — one per connection, and one
//! per user for what they send (through every door of a process together), for logins and for
//! contact syncs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Users whose buckets are remembered; past this, buckets that have refilled are forgotten
/// (a full bucket is what a new one would be).
const USERS_MAX: usize = 100_000;

/// So many per second, with bursts.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// `rate` tokens a second (a fraction: one a minute is `1.0 / 60.0`), at most `burst`.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
    }

    /// Takes one token, if there is one.
    pub fn take(&mut self) -> bool {
        self.take_n(1)
    }

    /// Takes `n` tokens, or none if fewer are there.
    pub fn take_n(&mut self, n: usize) -> bool {
        self.refill(Instant::now());
        let n = n as f64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// A token bucket per user.
#[derive(Clone)]
pub struct PerUser {
    rate: f64,
    burst: u32,
    buckets: Arc<Mutex<HashMap<String, TokenBucket>>>,
}

impl PerUser {
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst,
            buckets: Arc::default(),
        }
    }

    /// Takes `n` tokens from `user`'s bucket, or none if fewer are there.
    pub fn take(&self, user: &str, n: usize) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= USERS_MAX && !buckets.contains_key(user) {
            let now = Instant::now();
            buckets.retain(|_, b| {
                b.refill(now);
                b.tokens < b.burst
            });
            // Every bucket still in use: start over rather than sweep again at the next user.
            if buckets.len() >= USERS_MAX {
                buckets.clear();
            }
        }
        buckets
            .entry(user.to_owned())
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst))
            .take_n(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_gives_its_burst_then_nothing_and_a_batch_takes_all_or_none() {
        let mut b = TokenBucket::new(1.0, 3);
        assert!(!b.take_n(4), "more than the burst");
        assert!(b.take_n(2));
        assert!(b.take());
        assert!(!b.take());
        let users = PerUser::new(1.0, 2);
        assert!(users.take("ann", 2));
        assert!(!users.take("ann", 1));
        assert!(users.take("ben", 2), "each user has their own");
    }
}
