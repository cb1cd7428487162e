//! message-router: reads every accepted message and sends it on by channel — group messages to
//! the group-router, everything else to delivery for its one recipient.

use samvad_bus::{Addressed, Record, Topic};
use samvad_kit::{Context, ServiceDef};
use samvad_protocol::{Channel, Message};

pub const SERVICE: ServiceDef = ServiceDef {
    name: "message-router",
    start: |ctx| Box::pin(start(ctx)),
};

async fn start(ctx: &Context) -> anyhow::Result<axum::Router> {
    let bus = ctx.bus.clone();
    ctx.consume(
        Topic::NewMessages,
        "message-router",
        move |batch: Vec<Message>| {
            let bus = bus.clone();
            async move {
                let mut groups = Vec::new();
                let mut direct = Vec::new();
                for message in batch {
                    if message.channel == Channel::Group {
                        groups.push(Record::json(message.destination.clone(), &message)?);
                    } else {
                        let recipient = message.destination.clone();
                        direct.push(Record::json(
                            recipient.clone(),
                            &Addressed { recipient, message },
                        )?);
                    }
                }
                bus.publish(&Topic::GroupMessages, groups).await?;
                bus.publish(&Topic::Send, direct).await?;
                Ok(())
            }
        },
    )
    .await?;
    Ok(axum::Router::new())
}
