//! push: wakes the devices of users who are offline when a message is kept for them. Each
//! device gets the message in the version it asked for at login, in the data field `message`
//! (PROTOCOL §5), through the provider its token belongs to: a browser's Web Push subscription
//! JSON goes to `webpush`, any other token to `fcm` (FCM HTTP v1), and `log` takes what
//! neither configured provider does. A token a provider reports dead is forgotten.
//!
//! Pushes are hints: the message waits in its conversation either way, so a push that cannot be
//! sent is logged and counted, never retried forever, and never holds up the offline topic.
//!
//! Also serves `GET /v1.0/push/vapid` (ext): the VAPID public key browsers subscribe with.

mod fcm;
mod provider;
mod webpush;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use samvad_bus::{Addressed, DeviceLogin, Topic};
use samvad_http::{ApiError, ErrorBody};
use samvad_protocol::{Encoding, Message, MessageType};
use samvad_runtime::{Context, Metrics, ReasonLabel, ServiceDef};
use samvad_store::{Device, ProfileStore};
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use fcm::{Fcm, FcmError, SCOPE, ServiceAccount};
pub use provider::{Failure, LogProvider, MAX_RESPONSE_BYTES, Outcome, Push, PushProvider, Retry};
pub use webpush::{
    MAX_PLAINTEXT, Subscription, SubscriptionKeys, TTL_SECS, Vapid, WebPush, WebPushError, encrypt,
    generate_keys,
};

pub const SERVICE: ServiceDef = ServiceDef {
    name: "push",
    start: |ctx| Box::pin(start(ctx)),
    api: Some(|| api().into_openapi()),
};

/// Pushes in flight at once within one batch.
const CONCURRENCY: usize = 32;

async fn start(ctx: &Context) -> Result<Router, samvad_runtime::Cause> {
    let settings = &ctx.settings.push;
    // Push services and token endpoints never need redirects; following them would let a
    // made-up endpoint send us elsewhere.
    let builder = || {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none())
    };
    let http = builder().build().context("building the push HTTP client")?;
    let mut providers: Vec<Arc<dyn PushProvider>> = Vec::new();
    let mut vapid_public_key = None;
    if let Some(webpush) = &settings.webpush {
        let vapid = Vapid::new(&webpush.private_key, &webpush.subject)
            .context("SAMVAD_VAPID_PRIVATE_KEY")?;
        vapid_public_key = Some(vapid.public_key().to_owned());
        let http = webpush::http_client(builder()).context("building the Web Push HTTP client")?;
        providers.push(Arc::new(WebPush::new(vapid, http, Retry::default())));
    }
    if let Some(fcm) = &settings.fcm {
        let account = ServiceAccount {
            project_id: fcm.project_id.clone(),
            client_email: fcm.client_email.clone(),
            private_key: fcm.private_key.clone(),
            token_uri: fcm.token_uri.clone(),
        };
        let provider = Fcm::new(account, &fcm.api_url, http.clone(), Retry::default())
            .with_context(|| format!("SAMVAD_FCM_CREDENTIALS ({})", fcm.credentials.display()))?;
        providers.push(Arc::new(provider));
    }
    if settings.log {
        providers.push(Arc::new(LogProvider));
    }
    let names: Vec<&str> = providers.iter().map(|p| p.name()).collect();
    tracing::info!(providers = %names.join(","), "push providers");

    let pusher = Arc::new(Pusher::new(
        providers,
        ctx.stores.profiles.clone(),
        ctx.metrics.clone(),
    ));
    let offline = Arc::clone(&pusher);
    ctx.consume(Topic::Offline, "push", move |items: Vec<Addressed>| {
        let pusher = Arc::clone(&offline);
        async move { Ok(pusher.push(&items).await?) }
    })
    .await?;
    ctx.consume(Topic::Logins, "push", move |logins: Vec<DeviceLogin>| {
        for login in &logins {
            pusher.note_login(login);
        }
        async { Ok(()) }
    })
    .await?;
    let (router, _) = api().split_for_parts();
    Ok(router.with_state(vapid_public_key))
}

/// The routes, each where its handler's `#[utoipa::path]` says.
fn api() -> OpenApiRouter<Option<String>> {
    OpenApiRouter::new().routes(routes!(vapid))
}

/// The Web Push key
///
/// The server's VAPID public key (base64url), which a browser subscribes to push with.
#[utoipa::path(get, path = "/v1.0/push/vapid", operation_id = "getVapidKey", tag = "push",
    responses(
        (status = 200, description = "Web Push is on", body = Object,
            example = json!({"publicKey": "BOr…"})),
        (status = 404, description = "Web Push is not configured on this server", body = ErrorBody)))]
async fn vapid(State(key): State<Option<String>>) -> Result<Json<Value>, ApiError> {
    key.map(|key| Json(json!({ "publicKey": key })))
        .ok_or_else(|| ApiError::not_found("Web Push is not configured on this server"))
}

/// Sends offline messages to their recipients' devices through the providers, counts what
/// happened, and forgets tokens that providers report dead.
pub struct Pusher {
    /// In the order they are asked whether they take a token.
    providers: Vec<Arc<dyn PushProvider>>,
    profiles: Arc<dyn ProfileStore>,
    metrics: Metrics,
}

struct Job<'a> {
    recipient: &'a str,
    message: &'a Message,
    device: Device,
}

impl Pusher {
    /// `providers` in order of preference: each token goes to the first that accepts it.
    pub fn new(
        providers: Vec<Arc<dyn PushProvider>>,
        profiles: Arc<dyn ProfileStore>,
        metrics: Metrics,
    ) -> Self {
        Self {
            providers,
            profiles,
            metrics,
        }
    }

    /// Pushes each message to every device of its recipient. Fails only when the devices
    /// cannot be looked up, before anything was sent, so the batch can be tried again;
    /// whatever happens to single pushes is logged and counted.
    pub async fn push(&self, offline: &[Addressed]) -> anyhow::Result<()> {
        if self.providers.is_empty() {
            return Ok(());
        }
        let mut jobs = Vec::new();
        for Addressed { recipient, message } in offline {
            // Delivery never hands these over; the rule is ours too (PROTOCOL §5).
            if message.ephemeral || message.kind == MessageType::Notification {
                continue;
            }
            let devices = self
                .profiles
                .devices(recipient)
                .await
                .with_context(|| format!("looking up the devices of {recipient}"))?;
            let mut tokens = HashSet::new();
            for device in devices.into_iter().map(|linked| linked.device) {
                if device.notification_token.is_empty()
                    || !tokens.insert(device.notification_token.clone())
                {
                    continue;
                }
                jobs.push(Job {
                    recipient,
                    message,
                    device,
                });
            }
        }
        futures_util::stream::iter(jobs)
            .for_each_concurrent(CONCURRENCY, |job| self.push_one(job))
            .await;
        Ok(())
    }

    async fn push_one(&self, job: Job<'_>) {
        let Job {
            recipient,
            message,
            device,
        } = job;
        let data = payload(message, &device);
        let push = Push {
            user: recipient,
            device_id: &device.device_id,
            token: &device.notification_token,
            message_id: &message.id,
            message: &data,
        };
        let Some(provider) = self.providers.iter().find(|p| p.accepts(push.token)) else {
            tracing::warn!(user = %recipient, device = %device.device_id, "push: no configured provider takes this device's token");
            self.failed(Failure::NoProvider.as_str());
            return;
        };
        match provider.send(&push).await {
            Outcome::Sent => {
                tracing::debug!(user = %recipient, device = %device.device_id, id = %message.id, provider = provider.name(), "pushed");
                self.metrics.pushes_sent.inc();
                self.metrics
                    .push_latency
                    .observe(samvad_runtime::seconds_since(message.server_timestamp));
            }
            Outcome::Failed(failure) => {
                tracing::warn!(user = %recipient, device = %device.device_id, id = %message.id, provider = provider.name(), reason = failure.as_str(), "push failed");
                self.failed(failure.as_str());
            }
            Outcome::Gone => {
                self.failed("gone");
                match self
                    .profiles
                    .remove_token(recipient, &device.device_id, &device.notification_token)
                    .await
                {
                    Ok(removed) => {
                        tracing::info!(user = %recipient, device = %device.device_id, provider = provider.name(), removed, "push token is dead; device forgotten");
                        if removed {
                            self.metrics.push_tokens_removed.inc();
                        }
                    }
                    // The next push finds it dead again and tries again.
                    Err(error) => {
                        tracing::warn!(user = %recipient, device = %device.device_id, %error, "cannot forget a dead push token")
                    }
                }
            }
        }
    }

    fn failed(&self, reason: &'static str) {
        self.metrics
            .pushes_failed
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Says which provider a newly registered device's pushes will go through.
    fn note_login(&self, login: &DeviceLogin) {
        if login.notification_token.is_empty() || self.providers.is_empty() {
            return;
        }
        match self
            .providers
            .iter()
            .find(|p| p.accepts(&login.notification_token))
        {
            Some(provider) => {
                tracing::debug!(user = %login.user, device = %login.device_id, provider = provider.name(), "device registered for push")
            }
            None => {
                tracing::info!(user = %login.user, device = %login.device_id, "device registered, but no configured push provider takes its token")
            }
        }
    }
}

/// The data field `message`: v2.1 JSON below version 3, else base64 of the v3 bytes.
pub fn payload(message: &Message, device: &Device) -> String {
    if device.message_version < 3.0 {
        samvad_protocol::encode_text(message, Encoding::V2_1)
    } else {
        STANDARD.encode(samvad_protocol::encode_binary(message))
    }
}
