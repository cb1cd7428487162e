//! The process every Samvad binary is: its services started from one [`ServiceDef`] each, the
//! backends they talk through (bus, stores, presence, auth) built once from the settings,
//! tracing, the HTTP server with `/healthz`, `/readyz` and `/metrics`, tracked tasks and
//! consumers, and a graceful stop. A binary is `samvad_runtime::main` over one or more
//! services, so the same services run one per process or all in one.

mod consume;
mod http;
mod metrics;
mod node;
mod rate;

pub use metrics::{DoorLabel, Metrics, OutcomeLabel, ReasonLabel, TopicLabel, seconds_since};
pub use node::{Cause, Context, Node, NodeError, ServiceDef, main, report, start};
pub use rate::{PerUser, TokenBucket, per_minute, per_second};

/// A notice the server writes (PROTOCOL §2, §7): a v2.1 `NOTIFICATION` with fresh ids, stamped
/// now, whose meta holds `action`, `contentType` `notification` and `meta`.
pub fn notice(
    action: &str,
    channel: samvad_protocol::Channel,
    source: &str,
    destination: &str,
    ephemeral: bool,
    content: &serde_json::Value,
    meta: &[(&str, String)],
) -> samvad_protocol::Message {
    let now = samvad_protocol::now_ms();
    let mut all: std::collections::BTreeMap<String, String> = meta
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    all.insert("action".into(), action.into());
    all.insert("contentType".into(), "notification".into());
    samvad_protocol::Message {
        version: 2.1,
        id: uuid::Uuid::now_v7().to_string(),
        kind: samvad_protocol::MessageType::Notification,
        channel,
        ephemeral,
        source: source.to_owned(),
        destination: destination.to_owned(),
        timestamp: now,
        content: content.to_string().into_bytes(),
        meta: all,
        server_id: uuid::Uuid::now_v7().to_string(),
        server_timestamp: now,
    }
}
