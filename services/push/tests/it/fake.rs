//! Local stand-ins for the push services, on 127.0.0.1:0: FCM's OAuth token endpoint and its
//! HTTP v1 send endpoint, and a Web Push endpoint. They record every request exactly as it
//! arrived and answer from a script, so tests check what a real service would have received.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{FIXTURES, WAIT};

/// The service account the fake token endpoint trusts.
pub const CLIENT_EMAIL: &str = "samvad-push@test-project.iam.gserviceaccount.com";
pub const PROJECT: &str = "test-project";

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Seen {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// What the fake answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.to_string(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// FCM's answer for a token that was unregistered.
    pub fn unregistered() -> Self {
        Self::json(
            404,
            json!({"error": {"code": 404, "message": "Requested entity was not found.",
                "status": "NOT_FOUND", "details": [{
                    "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                    "errorCode": "UNREGISTERED"}]}}),
        )
    }

    /// FCM's answer for a token that was never valid.
    pub fn invalid_token() -> Self {
        Self::json(
            400,
            json!({"error": {"code": 400,
                "message": "The registration token is not a valid FCM registration token",
                "status": "INVALID_ARGUMENT", "details": [{
                    "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                    "errorCode": "INVALID_ARGUMENT"}]}}),
        )
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (StatusCode::from_u16(self.status).unwrap(), self.body).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value.parse().unwrap());
        }
        response
    }
}

#[derive(Default)]
struct Log {
    sends: Vec<Seen>,
    /// Claims of every assertion the token endpoint accepted.
    assertions: Vec<Value>,
    token_requests: usize,
    script: VecDeque<Reply>,
    default: Option<Reply>,
}

#[derive(Clone)]
struct Shared {
    log: Arc<Mutex<Log>>,
    token_uri: String,
    changed: Arc<tokio::sync::Notify>,
}

/// A fake FCM (token and send endpoints) and Web Push endpoint, in one server.
pub struct Fake {
    pub url: String,
    shared: Shared,
}

impl Fake {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Shared {
            log: Arc::default(),
            token_uri: format!("{url}/token"),
            changed: Arc::default(),
        };
        let app = Router::new()
            .route("/token", post(token))
            .route("/v1/projects/{project}/messages:send", post(send))
            .route("/push/{id}", post(send))
            .with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, shared }
    }

    pub fn token_uri(&self) -> String {
        self.shared.token_uri.clone()
    }

    /// A Web Push endpoint on this fake.
    pub fn endpoint(&self, id: &str) -> String {
        format!("{}/push/{id}", self.url)
    }

    /// Answers the next sends with `replies`, in order, then as before.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.log.lock().unwrap().script.extend(replies);
    }

    /// Answers every send with `reply` once the script is used up.
    pub fn always(&self, reply: Reply) {
        self.shared.log.lock().unwrap().default = Some(reply);
    }

    pub fn sends(&self) -> Vec<Seen> {
        self.shared.log.lock().unwrap().sends.clone()
    }

    pub fn token_requests(&self) -> usize {
        self.shared.log.lock().unwrap().token_requests
    }

    pub fn assertions(&self) -> Vec<Value> {
        self.shared.log.lock().unwrap().assertions.clone()
    }

    /// Waits (at most [`WAIT`]) until `n` sends have arrived; returns them all.
    pub async fn wait_for_sends(&self, n: usize) -> Vec<Seen> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let changed = self.shared.changed.notified();
            let sends = self.sends();
            if sends.len() >= n {
                return sends;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!("expected {n} sends within {WAIT:?}, saw {}", sends.len());
            }
        }
    }
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    assertion: String,
}

/// Google's token endpoint: a JWT-bearer assertion signed by the fixture key for
/// [`CLIENT_EMAIL`], addressed to this endpoint, living at most an hour.
async fn token(State(shared): State<Shared>, Form(form): Form<TokenForm>) -> Reply {
    // Slow enough that pushes arriving together overlap with it.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let n = {
        let mut log = shared.log.lock().unwrap();
        log.token_requests += 1;
        log.token_requests
    };
    shared.changed.notify_waiters();
    if form.grant_type != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
        return Reply::json(400, json!({"error": "unsupported_grant_type"}));
    }
    let public = std::fs::read(format!("{FIXTURES}/fcm-test-key.pub.pem")).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[&shared.token_uri]);
    validation.set_issuer(&[CLIENT_EMAIL]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
    let claims = match jsonwebtoken::decode::<Value>(
        &form.assertion,
        &DecodingKey::from_rsa_pem(&public).unwrap(),
        &validation,
    ) {
        Ok(data) => data.claims,
        Err(e) => {
            return Reply::json(
                400,
                json!({"error": "invalid_grant", "error_description": e.to_string()}),
            );
        }
    };
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    if lifetime > 3600 {
        return Reply::json(400, json!({"error": "invalid_grant"}));
    }
    shared.log.lock().unwrap().assertions.push(claims);
    Reply::json(
        200,
        json!({"access_token": format!("access-{n}"), "expires_in": 3599, "token_type": "Bearer"}),
    )
}

/// FCM's send endpoint and the Web Push endpoint: record, then answer from the script (FCM's
/// and Web Push's success answers by default).
async fn send(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let reply = {
        let mut log = shared.log.lock().unwrap();
        log.sends.push(Seen {
            path: uri.path().to_owned(),
            headers,
            body,
            at: Instant::now(),
        });
        log.script
            .pop_front()
            .or_else(|| log.default.clone())
            .unwrap_or_else(|| {
                if uri.path().starts_with("/push/") {
                    Reply::status(201)
                } else {
                    Reply::json(200, json!({"name": format!("projects/{id}/messages/1")}))
                }
            })
    };
    shared.changed.notify_waiters();
    reply
}
