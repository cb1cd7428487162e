//! FCM HTTP v1: `POST {api}/v1/projects/{project}/messages:send` with an OAuth 2.0 access token
//! that a service account gets for itself (RFC 7523: a JWT signed RS256 with the account's key,
//! exchanged at its `token_uri`). The token is cached until shortly before it expires, and one
//! request at a time refreshes it while the others wait for that one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::provider::{
    Failure, Outcome, Push, PushProvider, Retry, Step, excerpt, read_capped, retry_after,
    transient, with_retries,
};
use crate::webpush::Subscription;

/// The OAuth 2.0 scope that may send FCM messages.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Lifetime asked of the signed assertion (Google allows at most one hour).
const ASSERTION_LIFETIME: u64 = 3600;
/// After a failed token request, how long others fail at once instead of asking again.
const TOKEN_FAILURE_HOLD: Duration = Duration::from_secs(1);

/// A Google service account: who signs, with what, and where tokens are issued.
#[derive(Clone)]
pub struct ServiceAccount {
    pub project_id: String,
    pub client_email: String,
    /// PEM, PKCS#8 or PKCS#1.
    pub private_key: String,
    pub token_uri: String,
}

/// Why an FCM provider could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FcmError {
    #[error("the service account's private_key is not an RSA key that can sign: {0}")]
    Key(jsonwebtoken::errors::Error),
}

#[derive(Default)]
struct TokenCache {
    current: Option<(String, Instant)>,
    failed_at: Option<Instant>,
}

/// The FCM HTTP v1 provider.
pub struct Fcm {
    http: reqwest::Client,
    account: ServiceAccount,
    key: EncodingKey,
    send_url: String,
    retry: Retry,
    token: Mutex<TokenCache>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default = "default_expiry")]
    expires_in: u64,
}

fn default_expiry() -> u64 {
    ASSERTION_LIFETIME
}

impl Fcm {
    /// `api_url` without a trailing `/`, e.g. `https://fcm.googleapis.com`. The key is tried
    /// once here, so a bad one stops the start rather than the first push.
    pub fn new(
        account: ServiceAccount,
        api_url: &str,
        http: reqwest::Client,
        retry: Retry,
    ) -> Result<Self, FcmError> {
        let key =
            EncodingKey::from_rsa_pem(account.private_key.as_bytes()).map_err(FcmError::Key)?;
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &json!({}), &key)
            .map_err(FcmError::Key)?;
        Ok(Self {
            send_url: format!(
                "{}/v1/projects/{}/messages:send",
                api_url.trim_end_matches('/'),
                account.project_id
            ),
            http,
            account,
            key,
            retry,
            token: Mutex::new(TokenCache::default()),
        })
    }

    /// The signed assertion that asks for an access token.
    fn assertion(&self) -> Result<String, jsonwebtoken::errors::Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = json!({
            "iss": self.account.client_email,
            "scope": SCOPE,
            "aud": self.account.token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        });
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
    }

    /// A valid access token: the cached one, or a new one. Holding the lock while fetching
    /// makes concurrent pushes wait for one request instead of each making its own.
    async fn access_token(&self) -> Result<String, Step> {
        let mut cache = self.token.lock().await;
        let now = Instant::now();
        if let Some((token, until)) = &cache.current
            && now < *until
        {
            return Ok(token.clone());
        }
        if cache
            .failed_at
            .is_some_and(|at| now.duration_since(at) < TOKEN_FAILURE_HOLD)
        {
            return Err(Step::Again { retry_after: None });
        }
        match self.fetch_token().await {
            Ok((token, lifetime)) => {
                cache.current = Some((token.clone(), Instant::now() + usable_for(lifetime)));
                cache.failed_at = None;
                Ok(token)
            }
            Err(step) => {
                cache.current = None;
                cache.failed_at = Some(Instant::now());
                Err(step)
            }
        }
    }

    async fn fetch_token(&self) -> Result<(String, u64), Step> {
        let assertion = self.assertion().map_err(|error| {
            tracing::error!(%error, "fcm: cannot sign the token request");
            Step::Done(Outcome::Failed(Failure::Auth))
        })?;
        let response = self
            .http
            .post(&self.account.token_uri)
            .form(&[("grant_type", JWT_BEARER), ("assertion", &assertion)])
            .send()
            .await
            .map_err(|error| {
                tracing::warn!(%error, "fcm: token request failed");
                Step::Again { retry_after: None }
            })?;
        let status = response.status();
        let after = retry_after(response.headers());
        let body = read_capped(response).await;
        if !status.is_success() {
            tracing::warn!(
                %status,
                error = %excerpt(&body),
                "fcm: the token endpoint refused the service account"
            );
            return Err(if transient(status) {
                Step::Again { retry_after: after }
            } else {
                Step::Done(Outcome::Failed(Failure::Auth))
            });
        }
        let token: TokenResponse = serde_json::from_slice(&body).map_err(|error| {
            tracing::warn!(%error, "fcm: the token endpoint answered without a token");
            Step::Done(Outcome::Failed(Failure::Auth))
        })?;
        tracing::debug!(expires_in = token.expires_in, "fcm: new access token");
        Ok((token.access_token, token.expires_in))
    }

    async fn forget_token(&self, stale: &str) {
        let mut cache = self.token.lock().await;
        if cache.current.as_ref().is_some_and(|(t, _)| t == stale) {
            cache.current = None;
        }
    }

    async fn attempt(&self, body: &Value, reauthorized: &AtomicBool) -> Step {
        let token = match self.access_token().await {
            Ok(token) => token,
            Err(step) => return step,
        };
        let response = match self
            .http
            .post(&self.send_url)
            .bearer_auth(&token)
            .json(body)
            .send()
            .await
        {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(%error, "fcm: send failed");
                return Step::Again { retry_after: None };
            }
        };
        let status = response.status();
        let after = retry_after(response.headers());
        let answer = read_capped(response).await;
        if status.is_success() {
            return Step::Done(Outcome::Sent);
        }
        if status == StatusCode::UNAUTHORIZED && !reauthorized.swap(true, Ordering::Relaxed) {
            // The token was revoked or expired early: get a new one and try once more.
            self.forget_token(&token).await;
            return Step::Again {
                retry_after: Some(Duration::ZERO),
            };
        }
        if transient(status) {
            tracing::warn!(%status, "fcm: unavailable");
            return Step::Again { retry_after: after };
        }
        let outcome = classify(status, &answer);
        tracing::warn!(
            %status,
            error = %excerpt(&answer),
            gone = outcome == Outcome::Gone,
            "fcm: refused"
        );
        Step::Done(outcome)
    }
}

/// How long a token that lives `lifetime` seconds is used: until five minutes before it
/// expires (half its life if that is shorter).
fn usable_for(lifetime: u64) -> Duration {
    Duration::from_secs(lifetime - (lifetime / 2).min(300))
}

/// What a refused send (not 2xx, 401 or transient) means for the token.
fn classify(status: StatusCode, body: &[u8]) -> Outcome {
    let error: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error = &error["error"];
    let details = error["details"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let code = |wanted: &str| details.iter().any(|d| d["errorCode"] == wanted);
    match status {
        StatusCode::NOT_FOUND if code("UNREGISTERED") => Outcome::Gone,
        StatusCode::BAD_REQUEST if error["status"] == "INVALID_ARGUMENT" => {
            let about_token = details.iter().any(|d| {
                d["fieldViolations"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|f| f["field"] == "message.token"))
            }) || error["message"]
                .as_str()
                .is_some_and(|m| m.to_ascii_lowercase().contains("registration token"));
            if about_token {
                Outcome::Gone
            } else if error["message"]
                .as_str()
                .is_some_and(|m| m.contains("too big"))
            {
                Outcome::Failed(Failure::TooLarge)
            } else {
                Outcome::Failed(Failure::Rejected)
            }
        }
        StatusCode::PAYLOAD_TOO_LARGE => Outcome::Failed(Failure::TooLarge),
        StatusCode::FORBIDDEN => Outcome::Failed(Failure::Auth),
        _ => Outcome::Failed(Failure::Rejected),
    }
}

#[async_trait]
impl PushProvider for Fcm {
    fn name(&self) -> &'static str {
        "fcm"
    }

    /// Every token that is not a browser's Web Push subscription.
    fn accepts(&self, token: &str) -> bool {
        Subscription::parse(token).is_none()
    }

    async fn send(&self, push: &Push<'_>) -> Outcome {
        let body = json!({
            "message": {
                "token": push.token,
                "data": { "message": push.message },
                "android": { "priority": "high" },
            }
        });
        let reauthorized = AtomicBool::new(false);
        let outcome = with_retries(&self.retry, || self.attempt(&body, &reauthorized)).await;
        tracing::debug!(user = %push.user, device = %push.device_id, id = %push.message_id, ?outcome, "fcm");
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: u16, body: Value) -> Outcome {
        classify(
            StatusCode::from_u16(status).unwrap(),
            body.to_string().as_bytes(),
        )
    }

    #[test]
    fn unregistered_and_invalid_tokens_are_gone() {
        let unregistered = json!({"error": {"code": 404, "status": "NOT_FOUND",
            "message": "Requested entity was not found.",
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                         "errorCode": "UNREGISTERED"}]}});
        assert_eq!(outcome(404, unregistered), Outcome::Gone);
        let invalid = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "The registration token is not a valid FCM registration token",
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                         "errorCode": "INVALID_ARGUMENT"}]}});
        assert_eq!(outcome(400, invalid), Outcome::Gone);
        let field = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "Request contains an invalid argument.",
            "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                         "fieldViolations": [{"field": "message.token"}]}]}});
        assert_eq!(outcome(400, field), Outcome::Gone);
    }

    #[test]
    fn other_refusals_keep_the_token() {
        // A wrong project id is a 404 too, but not UNREGISTERED: no token is to blame.
        let wrong_project = json!({"error": {"code": 404, "status": "NOT_FOUND",
            "message": "Requested entity was not found."}});
        assert_eq!(
            outcome(404, wrong_project),
            Outcome::Failed(Failure::Rejected)
        );
        let too_big = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
            "message": "Android message is too big"}});
        assert_eq!(outcome(400, too_big), Outcome::Failed(Failure::TooLarge));
        let mismatch = json!({"error": {"code": 403, "status": "PERMISSION_DENIED",
            "details": [{"errorCode": "SENDER_ID_MISMATCH"}]}});
        assert_eq!(outcome(403, mismatch), Outcome::Failed(Failure::Auth));
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, b"<html>"),
            Outcome::Failed(Failure::Rejected)
        );
    }

    #[test]
    fn tokens_are_used_until_shortly_before_they_expire() {
        assert_eq!(usable_for(3600), Duration::from_secs(3300));
        assert_eq!(usable_for(120), Duration::from_secs(60));
        assert_eq!(usable_for(0), Duration::ZERO);
    }
}
