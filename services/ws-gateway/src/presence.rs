//! Presence notices. When a user's first connection on this gateway opens, and when their
//! last connection anywhere closes, the users who share a conversation with them hear of it
//! on connections that asked (`presence=true`: clients written for Vartalap never see one):
//! an ephemeral `NOTIFICATION` with `meta.action` `presence`, `meta.state` `online` or
//! `offline` (and `meta.lastSeen`), content `{"username", "online", "lastSeen"?}`. Nothing is
//! told of a user who hides their presence (their profile's `showPresence`).
//!
//! Each gateway writes its presence entry before it reads everyone's, and removes it before
//! it looks again, so of two last connections closing at once on two gateways at least one
//! sees the user gone: an `offline` notice is never lost, though it may come twice. An
//! `online` notice may come for a user already online elsewhere; it says the same.

use samvad_bus::{Record, Routed, Topic};
use samvad_protocol::{Channel, Message, MessageType};
use samvad_store::{Conv, SYSTEM_DEVICE};
use serde_json::json;

use crate::Gateway;

/// Members of a larger group are not told of each other's presence (they may ask for it).
pub(crate) const GROUP_LIMIT: usize = 100;
const ACTION: &str = "presence";

/// Whether `message` is a presence notice.
pub(crate) fn is_notice(message: &Message) -> bool {
    message.kind == MessageType::Notification
        && message.meta.get("action").map(String::as_str) == Some(ACTION)
}

/// Tells `user`'s partners that they came online (`online`) or went offline, and records
/// when they went. Failures are logged: presence is a hint.
pub(crate) async fn announce(gateway: Gateway, user: String, online: bool) {
    if let Err(e) = tell(&gateway, &user, online).await {
        tracing::warn!(user = %user, online, error = %e, "cannot announce presence");
    }
}

async fn tell(gateway: &Gateway, user: &str, online: bool) -> anyhow::Result<()> {
    let ctx = &gateway.ctx;
    let mut content = json!({ "username": user, "online": online });
    let mut meta = vec![(
        "state",
        if online { "online" } else { "offline" }.to_owned(),
    )];
    if !online {
        if !ctx.presence.gateways(user).await?.is_empty() {
            return Ok(()); // still connected elsewhere
        }
        let now = samvad_protocol::now_ms();
        ctx.presence.went_offline(user, now).await?;
        content["lastSeen"] = json!(now);
        meta.push(("lastSeen", now.to_string()));
    }
    if !ctx.stores.shows_presence(user).await? {
        return Ok(());
    }
    let recipients = ctx.stores.partners(user, GROUP_LIMIT).await?;
    if recipients.is_empty() {
        return Ok(());
    }
    let message = samvad_runtime::notice(
        ACTION,
        Channel::Individual,
        user,
        user,
        true,
        &content,
        &meta,
    );
    let routed = Routed {
        recipients,
        device: SYSTEM_DEVICE.to_owned(),
        message,
        leaving: Vec::new(),
    };
    let key = Conv::direct(user, user).key();
    ctx.bus
        .publish(&Topic::Send, vec![Record::event(key, routed)])
        .await?;
    Ok(())
}
