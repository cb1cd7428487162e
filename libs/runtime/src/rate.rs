//! Flood control on the `governor` crate (GCRA, which allows what a token bucket of the same
//! rate and burst would): one budget per connection, and one per user for what they send
//! (through every door of a process together), for logins and for contact syncs.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Users whose budgets are remembered; past this, budgets that have refilled are forgotten
/// (a full budget is what a new one would be).
const USERS_MAX: usize = 100_000;

/// `n` a second with bursts of `burst`; 0 counts as 1 (settings are checked to be at least 1).
pub fn per_second(n: u32, burst: u32) -> Quota {
    Quota::per_second(at_least_one(n)).allow_burst(at_least_one(burst))
}

/// `n` a minute, all of them at once if need be.
pub fn per_minute(n: u32) -> Quota {
    Quota::per_minute(at_least_one(n))
}

fn at_least_one(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// One budget: a connection's.
#[derive(Debug)]
pub struct TokenBucket(DefaultDirectRateLimiter);

impl TokenBucket {
    pub fn new(quota: Quota) -> Self {
        Self(RateLimiter::direct(quota))
    }

    /// Takes one, if the budget allows it now.
    pub fn take(&self) -> bool {
        self.0.check().is_ok()
    }
}

/// A budget per user. Cheap to clone: clones share the budgets.
#[derive(Clone)]
pub struct PerUser {
    quota: Quota,
    users: Arc<Mutex<DefaultKeyedRateLimiter<String>>>,
}

impl PerUser {
    pub fn new(quota: Quota) -> Self {
        Self {
            quota,
            users: Arc::new(Mutex::new(RateLimiter::keyed(quota))),
        }
    }

    /// Takes `n` from `user`'s budget, or none if it does not allow that many now.
    pub fn take(&self, user: &str, n: usize) -> bool {
        let Some(n) = u32::try_from(n).ok().and_then(NonZeroU32::new) else {
            return n == 0;
        };
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if users.len() >= USERS_MAX {
            users.retain_recent();
            // Every budget still in use: start over rather than sweep again at the next user.
            if users.len() >= USERS_MAX {
                *users = RateLimiter::keyed(self.quota);
            }
        }
        matches!(users.check_key_n(&user.to_owned(), n), Ok(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_gives_its_burst_then_nothing_and_a_batch_takes_all_or_none() {
        let one = TokenBucket::new(per_second(1, 2));
        assert!(one.take());
        assert!(one.take());
        assert!(!one.take(), "past the burst");
        let users = PerUser::new(per_second(1, 3));
        assert!(!users.take("ann", 4), "more than the burst");
        assert!(users.take("ann", 2));
        assert!(!users.take("ann", 2), "all or none");
        assert!(users.take("ann", 1));
        assert!(!users.take("ann", 1));
        assert!(users.take("ben", 3), "each user has their own");
        let logins = PerUser::new(per_minute(5));
        assert!(logins.take("cat", 5), "a minute's worth at once");
        assert!(!logins.take("cat", 1));
    }
}
