//! How long to wait before trying a failed batch again.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

const FIRST: Duration = Duration::from_millis(50);
const LONGEST: Duration = Duration::from_secs(5);

/// The pauses between tries of a batch that failed (a consumer's handler, a publish): 50 ms,
/// doubling up to 5 s, each with up to as much again of jitter, so that consumers that failed
/// together do not all come back at once. Without end: a batch is tried until it succeeds or
/// the process stops.
pub struct Pauses(ExponentialBackoff);

impl Default for Pauses {
    fn default() -> Self {
        Self(
            ExponentialBuilder::new()
                .with_min_delay(FIRST)
                .with_max_delay(LONGEST)
                .with_jitter()
                .without_max_times()
                .build(),
        )
    }
}

impl Pauses {
    /// The pause before the next try.
    pub fn next_pause(&mut self) -> Duration {
        self.0.next().unwrap_or(LONGEST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_a_bound_with_jitter_and_never_end() {
        let mut pauses = Pauses::default();
        let first = pauses.next_pause();
        assert!((FIRST..=FIRST * 2).contains(&first), "{first:?}");
        let later: Vec<Duration> = (0..20).map(|_| pauses.next_pause()).collect();
        assert!(later.iter().all(|p| *p <= LONGEST * 2), "{later:?}");
        assert!(later[15..].iter().all(|p| *p >= LONGEST), "{later:?}");
    }
}
