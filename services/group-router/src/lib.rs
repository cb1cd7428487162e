//! group-router: expands a group message into one message per member but the sender, after
//! checking that the sender is a member.

use samvad_bus::{Addressed, Record, Topic};
use samvad_kit::{Context, ServiceDef};
use samvad_protocol::Message;

pub const SERVICE: ServiceDef = ServiceDef {
    name: "group-router",
    start: |ctx| Box::pin(start(ctx)),
};

async fn start(ctx: &Context) -> anyhow::Result<axum::Router> {
    let bus = ctx.bus.clone();
    let groups = ctx.stores.groups.clone();
    ctx.consume(Topic::GroupMessages, "group-router", move |batch: Vec<Message>| {
        let bus = bus.clone();
        let groups = groups.clone();
        async move {
            let mut out = Vec::new();
            for message in batch {
                let Some(group) = groups.group(&message.destination).await? else {
                    tracing::warn!(group = %message.destination, id = %message.id, "dropping message to a group that no longer exists");
                    continue;
                };
                if group.member(&message.source).is_none() {
                    tracing::warn!(group = %group.group_id, user = %message.source, id = %message.id, "dropping message from a non-member");
                    continue;
                }
                for member in group.members.iter().filter(|m| m.username != message.source) {
                    let addressed = Addressed {
                        recipient: member.username.clone(),
                        message: message.clone(),
                    };
                    out.push(Record::json(member.username.clone(), &addressed)?);
                }
            }
            bus.publish(&Topic::Send, out).await?;
            Ok(())
        }
    })
    .await?;
    Ok(axum::Router::new())
}
