//! delivery: stores every message in its conversation's timeline before anyone is told of it,
//! so nothing depends on a recipient being connected. Then it hands the stored entry to the
//! gateways where its recipients — and the sender's other devices — are connected; a recipient
//! with no connection anywhere gets a push. A connection reads whatever it missed from the
//! timeline itself. A device's `CLIENT_ACK` moves that device's cursor, no other's. Ephemeral
//! messages are only handed on, never kept. A stored message that names an attachment its
//! sender may read makes it readable in its conversation.

use std::collections::HashMap;
use std::sync::Arc;

use samvad_bus::{Addressed, Bus, ClientAck, GatewayEvent, Outgoing, Record, Routed, Topic};
use samvad_presence::Presence;
use samvad_protocol::{Channel, Message, MessageType};
use samvad_runtime::{Context, Metrics, OutcomeLabel, ServiceDef};
use samvad_store::{Ack, Appended, Conv, DeviceRef, NewEntry, Stores, TimelineStore};

pub const SERVICE: ServiceDef = ServiceDef {
    name: "delivery",
    start: |ctx| Box::pin(start(ctx)),
    api: None,
};

#[derive(Clone)]
struct Delivery {
    metrics: Metrics,
    bus: Arc<dyn Bus>,
    stores: Stores,
    presence: Arc<dyn Presence>,
}

async fn start(ctx: &Context) -> Result<axum::Router, samvad_runtime::Cause> {
    // Counted from zero at start, so that a rate over each is defined from the start.
    for outcome in OUTCOMES {
        drop(
            ctx.metrics
                .deliveries
                .get_or_create(&OutcomeLabel { outcome }),
        );
    }
    let delivery = Delivery {
        metrics: ctx.metrics.clone(),
        bus: ctx.bus.clone(),
        stores: ctx.stores.clone(),
        presence: ctx.presence.clone(),
    };
    let d = delivery.clone();
    ctx.consume(Topic::Send, "delivery", move |batch| {
        let d = d.clone();
        async move { Ok(d.deliver(batch).await?) }
    })
    .await?;
    let d = delivery.clone();
    ctx.consume(Topic::ClientAcks, "delivery", move |batch| {
        let d = d.clone();
        async move { Ok(d.acked(batch).await?) }
    })
    .await?;
    if let Some(keep) = ctx.settings.retention {
        ctx.spawn(
            "retention",
            retain(delivery.stores.timeline, keep, ctx.shutdown()),
        );
    }
    Ok(axum::Router::new())
}

/// Entries removed per store call, so that no call holds the store for long.
const TRIM_CHUNK: usize = 1_000;

/// Removes what is older than `keep` from every timeline, in bounded chunks, then again after a
/// while (a twentieth of `keep`, at least a second, at most a minute). A device that had not
/// acked what went gets a gap notice from its connection. Several delivery processes may run
/// this at once: each removal is a plain delete of what is old.
async fn retain(
    timeline: Arc<dyn TimelineStore>,
    keep: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), samvad_runtime::Cause> {
    let pause = (keep / 20).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    loop {
        let before = samvad_protocol::now_ms().saturating_sub(keep.as_millis() as u64);
        loop {
            match timeline.trim(before, TRIM_CHUNK).await {
                Ok(n) if n == TRIM_CHUNK as u64 && !shutdown.is_cancelled() => continue,
                Ok(_) => break,
                // The store is down for a moment: try again at the next round.
                Err(e) => {
                    tracing::warn!(error = %e, "retention could not remove old messages");
                    break;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// The gateways where users are connected, each user looked up once per batch.
struct Online<'a> {
    presence: &'a dyn Presence,
    known: HashMap<String, Vec<String>>,
}

impl Online<'_> {
    /// Looks up, in one call, those of `users` not known yet.
    async fn learn(&mut self, mut unknown: Vec<&str>) -> anyhow::Result<()> {
        unknown.retain(|user| !self.known.contains_key(*user));
        unknown.sort_unstable();
        unknown.dedup();
        if !unknown.is_empty() {
            let found = self.presence.gateways_each(&unknown).await?;
            for (user, gateways) in unknown.into_iter().zip(found) {
                self.known.insert(user.to_owned(), gateways);
            }
        }
        Ok(())
    }

    async fn gateways(&mut self, user: &str) -> anyhow::Result<&[String]> {
        if !self.known.contains_key(user) {
            self.learn(vec![user]).await?;
        }
        Ok(&self.known[user])
    }
}

/// What delivery hands each gateway, in order: each message once, with every user there who
/// gets it (a group message to 1,000 members is one event, not 1,000).
#[derive(Default)]
struct Handoff(HashMap<String, Vec<GatewayEvent>>);

impl Handoff {
    /// Adds `user` to the gateway's last event if it carries `item` (the caller adds one
    /// message's users in a row), else starts an event.
    fn add(&mut self, gateway: &str, user: &str, item: &Outgoing) {
        let events = self.0.entry(gateway.to_owned()).or_default();
        match events.last_mut() {
            Some(event) if event.items.len() == 1 && same(&event.items[0], item) => {
                event.users.push(user.to_owned());
            }
            _ => events.push(GatewayEvent {
                users: vec![user.to_owned()],
                items: vec![item.clone()],
                unlinked: Vec::new(),
            }),
        }
    }
}

/// Whether two hand-offs carry the same message (the same seq of the same sender's id).
fn same(a: &Outgoing, b: &Outgoing) -> bool {
    a.seq == b.seq && a.message.id == b.message.id && a.message.source == b.message.source
}

/// What delivery does with a message, each counted (`samvad_deliveries{outcome}`).
const OUTCOMES: [&str; 4] = [LIVE, OFFLINE, REPEAT, EPHEMERAL_DROPPED];
const LIVE: &str = "live";
const OFFLINE: &str = "offline";
const REPEAT: &str = "repeat";
const EPHEMERAL_DROPPED: &str = "ephemeral_dropped";

impl Delivery {
    fn count(&self, outcome: &'static str) {
        self.metrics
            .deliveries
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    async fn deliver(&self, batch: Vec<Routed>) -> anyhow::Result<()> {
        let entries: Vec<NewEntry> = batch
            .iter()
            .filter(|r| !r.message.ephemeral)
            .map(|r| NewEntry {
                conv: Conv::of(&r.message),
                device: r.device.clone(),
                message: r.message.clone(),
                leaving: r.leaving.clone(),
            })
            .collect();
        let mut appended = self.stores.timeline.append(&entries).await?.into_iter();
        // The read positions the batch's READ receipts move, moved like the appends before
        // anyone is looked up: one notice (or none) per routed message, in the batch's order.
        let mut notices = Vec::with_capacity(batch.len());
        for routed in &batch {
            notices.push(match read_receipt(&routed.message) {
                Some(ids) => self.read(routed, ids).await?,
                None => None,
            });
        }

        let mut handoff = Handoff::default();
        let mut offline = Vec::new();
        let mut online = Online {
            presence: self.presence.as_ref(),
            known: HashMap::new(),
        };
        // Everyone the batch may hand something to (the senders' other devices and readers
        // too), looked up at once and after the appends and reads (ARCHITECTURE, invariant 4):
        // a device that connects meanwhile is either found here or finds the entry, or the
        // read position, in the store.
        let users: Vec<&str> = batch
            .iter()
            .flat_map(|r| r.recipients.iter().chain([&r.message.source]))
            .map(String::as_str)
            .collect();
        online.learn(users).await?;
        for (routed, notice) in batch.into_iter().zip(notices) {
            let message = &routed.message;
            // A repeat (a re-send, or this batch again after a crash) is handed on again with
            // its first seq: a connection that has it drops it; it is not pushed twice.
            let (seq, new) = match message.ephemeral {
                true => (None, false),
                false => match appended.next() {
                    Some(Appended::New(seq)) => (Some(seq), true),
                    Some(Appended::Repeat(seq)) => {
                        self.count(REPEAT);
                        (Some(seq), false)
                    }
                    None => anyhow::bail!("the timeline answered fewer appends than asked"),
                },
            };
            if let Some(seq) = seq {
                // Before anyone is handed the message: a failure here fails the batch, and the
                // retry (a repeat) attaches again.
                self.stores
                    .attach_carried(&message.source, &Conv::of(message), seq, &message.content)
                    .await?;
            }
            if let Some(notice) = notice {
                for gateway in online.gateways(&message.source).await? {
                    handoff.add(gateway, &message.source, &notice);
                }
            }
            let item = Outgoing {
                seq,
                device: routed.device.clone(),
                message: message.clone(),
            };
            // The sender's other devices show what it sent (stored messages only).
            let sender = (seq.is_some() && !routed.recipients.contains(&message.source))
                .then_some(&message.source);
            for user in routed.recipients.iter().chain(sender) {
                let gateways = online.gateways(user).await?;
                let recipient = *user != message.source;
                if gateways.is_empty() && recipient {
                    if message.ephemeral {
                        self.count(EPHEMERAL_DROPPED);
                    } else if new && message.kind != MessageType::Notification {
                        self.count(OFFLINE);
                        let addressed = Addressed {
                            recipient: user.clone(),
                            message: message.clone(),
                        };
                        offline.push(Record::event(user.clone(), addressed));
                    }
                    continue;
                }
                if recipient {
                    self.count(LIVE);
                }
                for gateway in gateways {
                    handoff.add(gateway, user, &item);
                }
            }
        }
        for (gateway, events) in handoff.0 {
            let records = events
                .into_iter()
                .map(|event| Record::event(Conv::of(&event.items[0].message).key(), event))
                .collect();
            self.bus.publish(&Topic::Gateway(gateway), records).await?;
        }
        self.bus.publish(&Topic::Offline, offline).await?;
        Ok(())
    }

    /// Moves the reader's read position to the last of the messages a READ receipt names, and
    /// makes the notice that tells the reader's other devices (PROTOCOL §7), so unread counts
    /// agree everywhere; none where the reader takes no part or the ids name nothing.
    async fn read(&self, receipt: &Routed, ids: Vec<String>) -> anyhow::Result<Option<Outgoing>> {
        let reader = &receipt.message.source;
        let conv = Conv::of(&receipt.message);
        let Some(seq) = self.stores.timeline.last_of(&conv, &ids).await? else {
            return Ok(None);
        };
        let Some(read) = self.stores.timeline.read(reader, &conv, seq).await? else {
            return Ok(None); // no part in it
        };
        Ok(Some(Outgoing {
            seq: None,
            device: receipt.device.clone(),
            message: read_notice(reader, &conv, read, receipt.message.channel),
        }))
    }

    async fn acked(&self, batch: Vec<ClientAck>) -> anyhow::Result<()> {
        let acks: Vec<(DeviceRef, Ack)> = batch
            .into_iter()
            .map(|a| {
                let upto = a.upto.and_then(|u| {
                    let conv = Conv::parse_for(&a.user, &u.conv)?;
                    Some(Ack::Upto { conv, seq: u.seq })
                });
                let device = DeviceRef {
                    user: a.user,
                    device: a.device,
                };
                (device, upto.unwrap_or(Ack::Id(a.id)))
            })
            .collect();
        self.stores.timeline.ack(&acks).await?;
        Ok(())
    }
}

/// The ids a READ receipt (a message with `meta.action` `state`, content `{"ids": [...],
/// "state": "READ"}`) marks read; `None` for anything else.
fn read_receipt(message: &Message) -> Option<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Receipt {
        ids: Vec<String>,
        state: String,
    }
    if message.meta.get("action").map(String::as_str) != Some("state") {
        return None;
    }
    let receipt: Receipt = serde_json::from_slice(&message.content).ok()?;
    receipt
        .state
        .eq_ignore_ascii_case("read")
        .then_some(receipt.ids)
}

/// What the reader's other devices are told: `conv` is read up to `seq`. Ephemeral: a device
/// that is offline learns it from the conversation list.
fn read_notice(reader: &str, conv: &Conv, seq: u64, channel: Channel) -> Message {
    let name = conv.name_for(reader);
    samvad_runtime::notice(
        "read",
        channel,
        reader,
        reader,
        true,
        &serde_json::json!({ "conv": name, "seq": seq }),
        &[("conv", name.clone()), ("seq", seq.to_string())],
    )
}
