//! push: wakes the devices of users who are offline when a message is kept for them. Each
//! device gets the message in the version it asked for at login, in the data field `message`
//! (PROTOCOL §5). The only provider here is `log`, which records what would be sent.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use samvad_bus::{Addressed, Received, Topic};
use samvad_kit::{Context, ServiceDef};
use samvad_protocol::{Encoding, Message, MessageType};
use samvad_store::{Device, ProfileStore};

pub const SERVICE: ServiceDef = ServiceDef {
    name: "push",
    start: |ctx| Box::pin(start(ctx)),
};

async fn start(ctx: &Context) -> anyhow::Result<axum::Router> {
    let profiles = ctx.stores.profiles.clone();
    ctx.consume(Topic::Offline, "push", move |batch| {
        let profiles = Arc::clone(&profiles);
        async move { push(profiles.as_ref(), batch).await }
    })
    .await?;
    Ok(axum::Router::new())
}

async fn push(profiles: &dyn ProfileStore, batch: Vec<Received>) -> anyhow::Result<()> {
    for Addressed { recipient, message } in batch.iter().filter_map(Received::json_or_skip) {
        if message.ephemeral || message.kind == MessageType::Notification {
            continue;
        }
        for device in profiles.devices(&recipient).await? {
            if device.notification_token.is_empty() {
                continue;
            }
            let payload = payload(&message, &device);
            tracing::info!(
                user = %recipient,
                device = %device.device_id,
                id = %message.id,
                bytes = payload.len(),
                "push (log provider)"
            );
        }
    }
    Ok(())
}

/// The data field `message`: v2.1 JSON below version 3, else base64 of the v3 bytes.
pub fn payload(message: &Message, device: &Device) -> String {
    if device.message_version < 3.0 {
        samvad_protocol::encode_text(message, Encoding::V2_1)
    } else {
        STANDARD.encode(samvad_protocol::encode_binary(message))
    }
}
