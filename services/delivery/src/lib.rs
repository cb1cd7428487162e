//! delivery: keeps every message for its recipient before handing it on, so nothing depends on
//! the recipient being connected. Online recipients get it through their gateways at once;
//! offline ones get a push, and everything pending is replayed, in order, when a connection
//! opens. A client ack ends the duty. Ephemeral messages are only ever handed on, never kept.

use std::collections::HashMap;
use std::sync::Arc;

use samvad_bus::{
    Addressed, Bus, ClientAck, ConnectionEvent, GatewayEvent, Outgoing, Record, Topic,
};
use samvad_kit::{Context, Metrics, OutcomeLabel, ServiceDef};
use samvad_presence::Presence;
use samvad_protocol::MessageType;
use samvad_store::{InboxStore, Kept};

pub const SERVICE: ServiceDef = ServiceDef {
    name: "delivery",
    start: |ctx| Box::pin(start(ctx)),
};

/// Messages per replay chunk.
const REPLAY_CHUNK: usize = 200;

#[derive(Clone)]
struct Delivery {
    metrics: Metrics,
    bus: Arc<dyn Bus>,
    inbox: Arc<dyn InboxStore>,
    presence: Arc<dyn Presence>,
}

async fn start(ctx: &Context) -> anyhow::Result<axum::Router> {
    let delivery = Delivery {
        metrics: ctx.metrics.clone(),
        bus: ctx.bus.clone(),
        inbox: ctx.stores.inbox.clone(),
        presence: ctx.presence.clone(),
    };
    let d = delivery.clone();
    ctx.consume(Topic::Send, "delivery", move |batch| {
        let d = d.clone();
        async move { d.deliver(batch).await }
    })
    .await?;
    let d = delivery.clone();
    ctx.consume(Topic::ClientAcks, "delivery", move |batch| {
        let d = d.clone();
        async move { d.acked(batch).await }
    })
    .await?;
    let d = delivery;
    ctx.consume(Topic::Connections, "delivery", move |batch| {
        let d = d.clone();
        async move { d.connections(batch).await }
    })
    .await?;
    Ok(axum::Router::new())
}

impl Delivery {
    fn count(&self, outcome: &'static str) {
        self.metrics
            .deliveries
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    async fn deliver(&self, items: Vec<Addressed>) -> anyhow::Result<()> {
        let to_keep: Vec<(String, samvad_protocol::Message)> = items
            .iter()
            .filter(|a| !a.message.ephemeral)
            .map(|a| (a.recipient.clone(), a.message.clone()))
            .collect();
        let mut seqs = self.inbox.keep(&to_keep).await?.into_iter();

        // Per gateway, per recipient, in order.
        let mut live: HashMap<String, Vec<(String, Vec<Outgoing>)>> = HashMap::new();
        let mut offline = Vec::new();
        let mut online: HashMap<String, Vec<String>> = HashMap::new();
        for a in items {
            // A message kept before (a re-send, or this batch again after a crash) that is
            // still pending goes out again, with its first sequence number, so a connection
            // that already has it drops it; it is not pushed twice.
            let (seq, new) = if a.message.ephemeral {
                (None, false)
            } else {
                match seqs.next() {
                    Some(Kept::New(seq)) => (Some(seq), true),
                    Some(Kept::Pending(seq)) => (Some(seq), false),
                    Some(Kept::Acked) | None => {
                        self.count("repeat");
                        continue;
                    }
                }
            };
            let gateways = match online.get(&a.recipient) {
                Some(g) => g.clone(),
                None => {
                    let g = self.presence.gateways(&a.recipient).await?;
                    online.insert(a.recipient.clone(), g.clone());
                    g
                }
            };
            if gateways.is_empty() {
                if a.message.ephemeral {
                    self.count("ephemeral_dropped");
                } else if new && a.message.kind != MessageType::Notification {
                    self.count("offline");
                    offline.push(Record::json(a.recipient.clone(), &a)?);
                }
                continue;
            }
            self.count("live");
            let outgoing = Outgoing {
                seq,
                message: a.message,
            };
            for gateway in gateways {
                let users = live.entry(gateway).or_default();
                match users.last_mut() {
                    Some((user, items)) if *user == a.recipient => items.push(outgoing.clone()),
                    _ => users.push((a.recipient.clone(), vec![outgoing.clone()])),
                }
            }
        }
        for (gateway, users) in live {
            let records = users
                .into_iter()
                .map(|(user, items)| {
                    Record::json(user.clone(), &GatewayEvent::Live { user, items })
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.bus.publish(&Topic::Gateway(gateway), records).await?;
        }
        self.bus.publish(&Topic::Offline, offline).await?;
        Ok(())
    }

    async fn acked(&self, batch: Vec<ClientAck>) -> anyhow::Result<()> {
        let acks: Vec<(String, String)> = batch.into_iter().map(|a| (a.user, a.id)).collect();
        self.inbox.ack(&acks).await?;
        Ok(())
    }

    async fn connections(&self, batch: Vec<ConnectionEvent>) -> anyhow::Result<()> {
        for event in batch {
            if event.connected {
                self.replay(&event).await?;
            }
        }
        Ok(())
    }

    /// Sends a new connection everything pending for its user, oldest first, in chunks; the
    /// last chunk says so, which releases the live messages the gateway held meanwhile.
    async fn replay(&self, event: &ConnectionEvent) -> anyhow::Result<()> {
        let topic = Topic::Gateway(event.gateway.clone());
        let mut after = 0;
        loop {
            let pending = self.inbox.pending(&event.user, after, REPLAY_CHUNK).await?;
            let done = pending.len() < REPLAY_CHUNK;
            after = pending.last().map_or(after, |p| p.seq);
            let items = pending
                .into_iter()
                .map(|p| Outgoing {
                    seq: Some(p.seq),
                    message: p.message,
                })
                .collect();
            let replay = GatewayEvent::Replay {
                user: event.user.clone(),
                connection: event.connection,
                items,
                done,
            };
            self.bus
                .publish(&topic, vec![Record::json(event.user.clone(), &replay)?])
                .await?;
            if done {
                return Ok(());
            }
        }
    }
}
