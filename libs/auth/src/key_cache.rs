//! The in-memory copy of an identity provider's key set and the rules for refreshing it. No
//! I/O and no clock of its own (`now` is passed in), so every rule is tested with plain values.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey};

use crate::{AuthError, TokenRefusal};

/// After a successful fetch, do not fetch again for this long, whatever the kid: an attacker
/// sending made-up kids cannot make us hammer the provider, and a provider answering
/// `max-age=0` is not fetched on every login either (its keys are used slightly stale).
pub(crate) const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// After a failed fetch, wait this long before trying again.
pub(crate) const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// While the provider cannot be reached, keep using the keys it last published for this long
/// past their expiry, rather than refusing every login.
pub(crate) const MAX_STALENESS: Duration = Duration::from_secs(24 * 3600);

/// A verification key from the JWKS, with the one algorithm it may be used with.
pub(crate) struct JwkKey {
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
}

pub(crate) type KeySet = HashMap<String, Arc<JwkKey>>;

struct Fetched {
    keys: KeySet,
    fresh_until: Instant,
}

#[derive(Default)]
pub(crate) struct KeyCache {
    fetched: Option<Fetched>,
    /// No fetch before this instant; `None` before the first attempt.
    next_fetch_at: Option<Instant>,
    /// Why the last attempt failed; cleared by a successful fetch.
    last_error: Option<String>,
}

enum Lookup {
    Fresh(Arc<JwkKey>),
    Stale(Arc<JwkKey>),
    /// We hold a usable key set, and the kid is not in it.
    Unknown,
    /// We hold no usable key set.
    Nothing,
}

impl KeyCache {
    fn lookup(&self, kid: &str, now: Instant) -> Lookup {
        let Some(fetched) = &self.fetched else {
            return Lookup::Nothing;
        };
        if now > fetched.fresh_until + MAX_STALENESS {
            return Lookup::Nothing;
        }
        match fetched.keys.get(kid) {
            Some(key) if now < fetched.fresh_until => Lookup::Fresh(Arc::clone(key)),
            Some(key) => Lookup::Stale(Arc::clone(key)),
            None => Lookup::Unknown,
        }
    }

    /// The key for `kid` if it is known and fresh: no fetch needed.
    pub(crate) fn fresh(&self, kid: &str, now: Instant) -> Option<Arc<JwkKey>> {
        match self.lookup(kid, now) {
            Lookup::Fresh(key) => Some(key),
            _ => None,
        }
    }

    /// Whether a verification of `kid` should fetch the key set first.
    pub(crate) fn should_fetch(&self, kid: &str, now: Instant) -> bool {
        self.fresh(kid, now).is_none() && self.next_fetch_at.is_none_or(|at| now >= at)
    }

    pub(crate) fn store(&mut self, keys: KeySet, max_age: Duration, now: Instant) {
        self.fetched = Some(Fetched {
            keys,
            fresh_until: now + max_age,
        });
        self.next_fetch_at = Some(now + MIN_REFETCH_INTERVAL);
        self.last_error = None;
    }

    pub(crate) fn record_failure(&mut self, detail: String, now: Instant) {
        self.next_fetch_at = Some(now + RETRY_AFTER_FAILURE);
        self.last_error = Some(detail);
    }

    /// The final answer for `kid`, once any fetch has been done: the key, even slightly stale;
    /// a client error if the provider does not publish that kid; ours if we could not find out.
    pub(crate) fn resolve(&self, kid: &str, now: Instant) -> Result<Arc<JwkKey>, AuthError> {
        let unavailable = |detail: Option<&String>| AuthError::JwksUnavailable {
            detail: detail.map_or_else(|| "no key set fetched yet".to_owned(), String::clone),
        };
        match self.lookup(kid, now) {
            Lookup::Fresh(key) | Lookup::Stale(key) => Ok(key),
            Lookup::Unknown => match &self.last_error {
                // The kid may be a new key we failed to fetch.
                Some(detail) => Err(unavailable(Some(detail))),
                None => Err(AuthError::TokenRefused(TokenRefusal::UnknownKey)),
            },
            Lookup::Nothing => Err(unavailable(self.last_error.as_ref())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn key_set(kids: &[&str]) -> KeySet {
        kids.iter()
            .map(|kid| {
                let key = JwkKey {
                    alg: Algorithm::ES256,
                    key: DecodingKey::from_secret(kid.as_bytes()),
                };
                ((*kid).to_owned(), Arc::new(key))
            })
            .collect()
    }

    fn is_unknown_key(result: Result<Arc<JwkKey>, AuthError>) -> bool {
        matches!(
            result,
            Err(AuthError::TokenRefused(TokenRefusal::UnknownKey))
        )
    }

    fn is_unavailable(result: Result<Arc<JwkKey>, AuthError>) -> bool {
        matches!(result, Err(AuthError::JwksUnavailable { .. }))
    }

    #[test]
    fn an_empty_cache_fetches_and_is_unavailable_until_it_has() {
        let cache = KeyCache::default();
        let now = Instant::now();
        assert!(cache.should_fetch("a", now));
        assert!(is_unavailable(cache.resolve("a", now)));
    }

    #[test]
    fn a_fresh_known_kid_needs_no_fetch() {
        let mut cache = KeyCache::default();
        let t0 = Instant::now();
        cache.store(key_set(&["a"]), HOUR, t0);
        let later = t0 + HOUR - Duration::from_secs(1);
        assert!(cache.fresh("a", later).is_some());
        assert!(!cache.should_fetch("a", later));
    }

    #[test]
    fn an_unknown_kid_refetches_at_most_once_per_interval() {
        let mut cache = KeyCache::default();
        let t0 = Instant::now();
        cache.store(key_set(&["a"]), HOUR, t0);
        let soon = t0 + MIN_REFETCH_INTERVAL - Duration::from_millis(1);
        assert!(!cache.should_fetch("b", soon));
        assert!(is_unknown_key(cache.resolve("b", soon)));
        assert!(cache.should_fetch("b", t0 + MIN_REFETCH_INTERVAL));
    }

    #[test]
    fn an_expired_set_is_refetched_and_used_stale_in_between() {
        let mut cache = KeyCache::default();
        let t0 = Instant::now();
        // max-age=0: expired at once, but not fetched again before the refetch interval.
        cache.store(key_set(&["a"]), Duration::ZERO, t0);
        let soon = t0 + Duration::from_secs(1);
        assert!(!cache.should_fetch("a", soon));
        assert!(cache.resolve("a", soon).is_ok());
        assert!(cache.should_fetch("a", t0 + MIN_REFETCH_INTERVAL));
    }

    #[test]
    fn stale_keys_are_used_while_the_provider_fails_but_not_forever() {
        let mut cache = KeyCache::default();
        let t0 = Instant::now();
        cache.store(key_set(&["a"]), HOUR, t0);
        let expired = t0 + 2 * HOUR;
        assert!(cache.should_fetch("a", expired));
        cache.record_failure("connection refused".into(), expired);

        assert!(cache.resolve("a", expired).is_ok());
        // A kid we never saw might be a new key we failed to fetch: our problem, not theirs.
        assert!(is_unavailable(cache.resolve("b", expired)));
        // Retried after a short pause, not on every login.
        assert!(!cache.should_fetch("a", expired + Duration::from_secs(1)));
        assert!(cache.should_fetch("a", expired + RETRY_AFTER_FAILURE));

        let too_late = t0 + HOUR + MAX_STALENESS + Duration::from_secs(1);
        assert!(is_unavailable(cache.resolve("a", too_late)));
    }

    #[test]
    fn a_failed_first_fetch_is_unavailable_and_retried_after_a_pause() {
        let mut cache = KeyCache::default();
        let t0 = Instant::now();
        cache.record_failure("HTTP 503".into(), t0);
        match cache.resolve("a", t0) {
            Err(AuthError::JwksUnavailable { detail }) => assert_eq!(detail, "HTTP 503"),
            other => panic!("expected JwksUnavailable, got {:?}", other.err()),
        }
        assert!(!cache.should_fetch("a", t0 + Duration::from_secs(1)));
        assert!(cache.should_fetch("a", t0 + RETRY_AFTER_FAILURE));
    }

    #[test]
    fn a_successful_fetch_clears_the_failure() {
        let mut cache = KeyCache::default();
        let t0 = Instant::now();
        cache.record_failure("timeout".into(), t0);
        cache.store(key_set(&["a"]), HOUR, t0 + RETRY_AFTER_FAILURE);
        assert!(is_unknown_key(cache.resolve("b", t0 + RETRY_AFTER_FAILURE)));
    }
}
