//! message-router: reads every accepted message and sends it on by channel — group messages to
//! the group-router, 1:1 messages to delivery with their one recipient.

use samvad_bus::{Accepted, Record, Routed, Topic};
use samvad_protocol::Channel;
use samvad_runtime::{Context, ServiceDef};
use samvad_store::Conv;

pub const SERVICE: ServiceDef = ServiceDef {
    name: "message-router",
    start: |ctx| Box::pin(start(ctx)),
    api: None,
};

async fn start(ctx: &Context) -> Result<axum::Router, samvad_runtime::Cause> {
    let bus = ctx.bus.clone();
    ctx.consume(
        Topic::NewMessages,
        "message-router",
        move |batch: Vec<Accepted>| {
            let bus = bus.clone();
            async move {
                let mut groups = Vec::new();
                let mut direct = Vec::new();
                for accepted in batch {
                    let key = Conv::of(&accepted.message).key();
                    if accepted.message.channel == Channel::Group {
                        groups.push(Record::event(key, accepted));
                    } else {
                        let Accepted { device, message } = accepted;
                        let routed = Routed {
                            recipients: vec![message.destination.clone()],
                            device,
                            message,
                            leaving: Vec::new(),
                        };
                        direct.push(Record::event(key, routed));
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
