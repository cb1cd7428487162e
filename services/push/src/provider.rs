//! What every push provider shares: the [`PushProvider`] trait, what one push is and how it
//! ended, the retry policy for a provider that is briefly unavailable, and a response reader
//! that never holds more than a few kilobytes of what a remote server says.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Largest part of a provider's response body that is read (for errors and tokens).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;

/// One push: a device's token and the data field `message` it carries.
#[derive(Debug, Clone, Copy)]
pub struct Push<'a> {
    pub user: &'a str,
    pub device_id: &'a str,
    /// The device's notification token, exactly as it logged in with it.
    pub token: &'a str,
    /// The message's id, for logs.
    pub message_id: &'a str,
    /// The message encoded for the device (PROTOCOL §5).
    pub message: &'a str,
}

/// How a push ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The provider accepted it.
    Sent,
    /// The provider says the token will never work again: forget it.
    Gone,
    /// Not sent, for this reason.
    Failed(Failure),
}

/// Why a push was not sent (the `reason` label of `pushes_failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No configured provider takes this kind of token.
    NoProvider,
    /// The provider stayed unavailable (429, 5xx, network) through every retry.
    Unavailable,
    /// The provider refused the request for a reason that retrying will not change.
    Rejected,
    /// Our credentials were refused, or no access token could be had.
    Auth,
    /// The message is bigger than the provider carries.
    TooLarge,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoProvider => "no_provider",
            Self::Unavailable => "unavailable",
            Self::Rejected => "rejected",
            Self::Auth => "auth",
            Self::TooLarge => "too_large",
        }
    }
}

/// A push provider (FCM, Web Push, the log). Providers never fail the consumer: every error
/// becomes an [`Outcome`].
#[async_trait]
pub trait PushProvider: Send + Sync + 'static {
    /// `fcm`, `webpush`, `log`.
    fn name(&self) -> &'static str;
    /// Whether this provider delivers to this kind of token.
    fn accepts(&self, token: &str) -> bool;
    async fn send(&self, push: &Push<'_>) -> Outcome;
}

/// How often, and after how long, a push is tried again while its provider is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// The pause after the first failure; it doubles after each further one.
    pub backoff: Duration,
    /// The longest pause. A provider asking (`Retry-After`) for longer than this is given up on.
    pub max_wait: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 4,
            backoff: Duration::from_millis(500),
            max_wait: Duration::from_secs(30),
        }
    }
}

impl Retry {
    /// The pauses of one push: after each failed try but the last, `backoff` doubling, with
    /// up to as much again of jitter (pushes that failed together do not all come back
    /// together), at most `max_wait`.
    fn schedule(&self) -> Schedule {
        Schedule {
            pauses: ExponentialBuilder::new()
                .with_min_delay(self.backoff)
                .with_max_delay(self.max_wait)
                .with_jitter()
                .with_max_times(self.attempts.saturating_sub(1) as usize)
                .build(),
            max_wait: self.max_wait,
        }
    }
}

/// Where one push is in its [`Retry`].
struct Schedule {
    pauses: ExponentialBackoff,
    max_wait: Duration,
}

impl Schedule {
    /// The pause before the next try, or `None` when the push should be given up.
    /// `retry_after` is what the provider asked for: kept to, unless longer than `max_wait`.
    fn next_pause(&mut self, retry_after: Option<Duration>) -> Option<Duration> {
        let pause = self.pauses.next()?;
        match retry_after {
            Some(asked) => (asked <= self.max_wait).then_some(asked),
            None => Some(pause.min(self.max_wait)),
        }
    }
}

/// What one try of a request came to.
#[derive(Debug)]
pub(crate) enum Step {
    Done(Outcome),
    /// Worth trying again, after at least `retry_after` if the provider said so.
    Again {
        retry_after: Option<Duration>,
    },
}

/// Runs `attempt` until it is done or `retry` says to give up (then: unavailable).
pub(crate) async fn with_retries<F, Fut>(retry: &Retry, mut attempt: F) -> Outcome
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Step>,
{
    let mut schedule = retry.schedule();
    loop {
        match attempt().await {
            Step::Done(outcome) => return outcome,
            Step::Again { retry_after } => match schedule.next_pause(retry_after) {
                Some(pause) => tokio::time::sleep(pause).await,
                None => return Outcome::Failed(Failure::Unavailable),
            },
        }
    }
}

/// Whether a status is worth trying again: throttled or a server error.
pub(crate) fn transient(status: reqwest::StatusCode) -> bool {
    status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// `Retry-After` as delay-seconds or an HTTP date.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// The start of a response's body, at most `MAX_RESPONSE_BYTES`; the rest is never read.
pub(crate) async fn read_capped(mut response: reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_RESPONSE_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_RESPONSE_BYTES {
            break;
        }
    }
    body
}

/// The start of a provider's answer, for a log line.
pub(crate) fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(500).collect()
}

/// The development provider: records that a push would be sent (never its content or token).
#[derive(Debug, Default)]
pub struct LogProvider;

#[async_trait]
impl PushProvider for LogProvider {
    fn name(&self) -> &'static str {
        "log"
    }

    fn accepts(&self, _token: &str) -> bool {
        true
    }

    async fn send(&self, push: &Push<'_>) -> Outcome {
        tracing::info!(
            user = %push.user,
            device = %push.device_id,
            id = %push.message_id,
            bytes = push.message.len(),
            "push (log provider)"
        );
        Outcome::Sent
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    use super::*;

    #[test]
    fn pauses_double_and_stop_after_the_last_attempt() {
        let retry = Retry {
            attempts: 4,
            backoff: Duration::from_millis(100),
            max_wait: Duration::from_secs(1),
        };
        let within = |p: Option<Duration>, low: u64, high: u64| {
            let p = p.unwrap().as_millis() as u64;
            assert!((low..=high).contains(&p), "{p} ms not in {low}..={high}");
        };
        let mut schedule = retry.schedule();
        within(schedule.next_pause(None), 100, 200);
        within(schedule.next_pause(None), 200, 400);
        within(schedule.next_pause(None), 400, 800);
        assert_eq!(schedule.next_pause(None), None);
    }

    #[test]
    fn retry_after_is_honoured_unless_it_is_too_long() {
        let retry = Retry::default();
        assert_eq!(
            retry.schedule().next_pause(Some(Duration::from_secs(7))),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry.schedule().next_pause(Some(Duration::from_secs(3600))),
            None
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let parsed = retry_after(&headers).unwrap();
        assert!(parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
    }
}
