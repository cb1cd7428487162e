//! The push service against local fakes of FCM and a Web Push service over real HTTP on
//! loopback, with the real embedded store: what each service receives, retries, dead tokens,
//! the access-token cache, and which provider each token goes to.

// Helpers outside #[test] functions panic on purpose when something misbehaves.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The push services are fakes, not the API that /openapi.json describes.
#![allow(clippy::disallowed_methods)]

mod fake;
mod fcm;
mod routing;
mod webpush;

use std::sync::Arc;
use std::time::Duration;

use push::{Fcm, PushProvider, Pusher, Retry, ServiceAccount, Vapid, WebPush};
use samvad_bus::Addressed;
use samvad_protocol::{Channel, Limits, Message, MessageType};
use samvad_runtime::{Metrics, ReasonLabel};
use samvad_store::{Device, EmbeddedStore, ProfileStore};
use serde_json::{Value, json};

use fake::Fake;

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
/// The longest any test waits for something to happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// Quick retries, so tests of giving up do not take long.
pub fn fast_retry() -> Retry {
    Retry {
        attempts: 3,
        backoff: Duration::from_millis(50),
        max_wait: Duration::from_secs(5),
    }
}

pub fn http() -> reqwest::Client {
    // The server installs one at start; tests build their clients without a server.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn service_account(fake: &Fake) -> ServiceAccount {
    ServiceAccount {
        project_id: fake::PROJECT.into(),
        client_email: fake::CLIENT_EMAIL.into(),
        private_key: std::fs::read_to_string(format!("{FIXTURES}/fcm-test-key.pem")).unwrap(),
        token_uri: fake.token_uri(),
    }
}

pub fn fcm(fake: &Fake) -> Arc<dyn PushProvider> {
    Arc::new(Fcm::new(service_account(fake), &fake.url, http(), fast_retry()).unwrap())
}

pub fn webpush(vapid: Vapid) -> Arc<dyn PushProvider> {
    Arc::new(WebPush::new(vapid, http(), fast_retry()).allow_local_endpoints())
}

/// A push service over the real embedded store, with bob's devices registered.
pub struct Setup {
    pub pusher: Pusher,
    pub store: Arc<EmbeddedStore>,
    pub metrics: Metrics,
    _dir: tempfile::TempDir,
}

impl Setup {
    pub async fn new(providers: Vec<Arc<dyn PushProvider>>, devices: &[(&str, &str, f32)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = samvad_sqlite::Db::open(&dir.path().join("samvad.db")).unwrap();
        let store = Arc::new(EmbeddedStore::open(db).await.unwrap());
        for (device_id, token, version) in devices {
            store
                .login(
                    "bob",
                    &Device {
                        device_id: (*device_id).into(),
                        notification_token: (*token).into(),
                        message_version: *version,
                    },
                    10,
                )
                .await
                .unwrap();
        }
        let metrics = Metrics::default();
        let profiles: Arc<dyn ProfileStore> = store.clone();
        Self {
            pusher: Pusher::new(providers, profiles, metrics.clone()),
            store,
            metrics,
            _dir: dir,
        }
    }

    /// Pushes messages kept for bob while he is offline.
    pub async fn push(&self, messages: &[Message]) {
        let offline: Vec<Addressed> = messages
            .iter()
            .map(|m| Addressed {
                recipient: "bob".into(),
                message: m.clone(),
            })
            .collect();
        self.pusher.push(&offline).await.unwrap();
    }

    /// The tokens bob's devices can still be pushed to.
    pub async fn tokens(&self) -> Vec<String> {
        let mut tokens: Vec<String> = self
            .store
            .devices("bob")
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.device.notification_token)
            .filter(|token| !token.is_empty())
            .collect();
        tokens.sort();
        tokens
    }

    pub fn sent(&self) -> u64 {
        self.metrics.pushes_sent.get()
    }

    pub fn failed(&self, reason: &'static str) -> u64 {
        self.metrics
            .pushes_failed
            .get_or_create(&ReasonLabel { reason })
            .get()
    }

    pub fn removed(&self) -> u64 {
        self.metrics.push_tokens_removed.get()
    }
}

/// Alice's message to bob as the server keeps it (stamped).
pub fn chat(id: &str, text: &str) -> Message {
    Message {
        version: 2.1,
        id: id.into(),
        kind: MessageType::Message,
        channel: Channel::Individual,
        source: "alice".into(),
        destination: "bob".into(),
        content: json!({ "text": text }).to_string().into_bytes(),
        timestamp: 1_700_000_000_000,
        server_id: format!("srv-{id}"),
        server_timestamp: 1_700_000_000_001,
        ..Message::default()
    }
}

/// The message a pushed v2.1 `message` field carries.
pub fn decode_v2(text: &str) -> Message {
    let v: Value = serde_json::from_str(text).unwrap();
    assert_eq!(v["_v"], 2.1, "pushed in v2.1: {text}");
    samvad_protocol::decode_text(text, &Limits { max_bytes: 1 << 20 }).unwrap()
}

pub fn text_of(m: &Message) -> String {
    let v: Value = serde_json::from_slice(&m.content).unwrap();
    v["text"].as_str().unwrap().to_owned()
}
