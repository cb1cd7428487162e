//! group-router: checks that the sender of a group message is a member and sends it on to
//! delivery with the group's other members, who are told it is there. The message is stored
//! once, in the group's conversation, however many members the group has.

use samvad_bus::{Accepted, Record, Routed, Topic};
use samvad_runtime::{Context, ServiceDef};
use samvad_store::Conv;

pub const SERVICE: ServiceDef = ServiceDef {
    name: "group-router",
    start: |ctx| Box::pin(start(ctx)),
    api: None,
};

async fn start(ctx: &Context) -> Result<axum::Router, samvad_runtime::Cause> {
    let bus = ctx.bus.clone();
    let groups = ctx.stores.groups.clone();
    ctx.consume(Topic::GroupMessages, "group-router", move |batch: Vec<Accepted>| {
        let bus = bus.clone();
        let groups = groups.clone();
        async move {
            let mut out = Vec::new();
            for Accepted { device, message } in batch {
                let Some(group) = groups.group(&message.destination).await? else {
                    tracing::warn!(group = %message.destination, id = %message.id, "dropping message to a group that no longer exists");
                    continue;
                };
                if group.member(&message.source).is_none() {
                    tracing::warn!(group = %group.group_id, user = %message.source, id = %message.id, "dropping message from a non-member");
                    continue;
                }
                let recipients = group
                    .members
                    .iter()
                    .filter(|m| m.username != message.source)
                    .map(|m| m.username.clone())
                    .collect();
                let key = Conv::of(&message).key();
                let routed = Routed {
                    recipients,
                    device,
                    message,
                    leaving: Vec::new(),
                };
                out.push(Record::event(key, routed));
            }
            bus.publish(&Topic::Send, out).await?;
            Ok(())
        }
    })
    .await?;
    Ok(axum::Router::new())
}
