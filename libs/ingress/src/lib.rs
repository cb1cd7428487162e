//! How a message from a client enters the system, the same for both gateways: decode, check,
//! stamp with the authenticated sender and the server's id and time, and publish durably.
//! A message that passes these checks and is published is the message the server acks.

mod acks;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use samvad_bus::{Accepted, Bus, BusError, ClientAck, Record, Topic, Upto};
use samvad_http::ApiError;
use samvad_protocol::{Channel, DecodeError, InvalidMessage, Limits, Message, MessageType};
use samvad_runtime::{Context, DoorLabel, Metrics, PerUser, ReasonLabel};
use samvad_store::{Conv, StoreError, Stores};

use crate::acks::AckQueue;

/// The most messages one request may send (REST, gRPC `Send`).
pub const MAX_BATCH: usize = 100;
/// Usernames known to exist, remembered so most sends skip the profile lookup. Bounded: past
/// the bound it is cleared and refills.
const KNOWN_USERS_MAX: usize = 100_000;

/// Why a client's message was refused. Each is answered to that client alone.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Invalid(#[from] InvalidMessage),
    #[error("unknown user `{0}`")]
    UnknownUser(String),
    #[error("unknown group `{0}`")]
    UnknownGroup(String),
    #[error("you are not a member of group `{0}`")]
    NotMember(String),
    #[error("a NOTIFICATION with action `{0}` is a system notice, which only the server sends")]
    SystemNotice(String),
    #[error("the server cannot take messages right now; send again")]
    Unavailable(String),
}

/// The `meta.action`s of the notices the server itself sends: group membership (§2), read
/// positions, gaps and presence (§7). A client's NOTIFICATION may not pass for one.
const SYSTEM_ACTIONS: [&str; 5] = ["add", "remove", "read", "gap", "presence"];

impl Rejection {
    /// The label this refusal is counted under.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Decode(DecodeError::TooLarge { .. }) => "too_large",
            Self::Decode(_) => "malformed",
            Self::Invalid(_) => "invalid",
            Self::UnknownUser(_) => "unknown_user",
            Self::UnknownGroup(_) => "unknown_group",
            Self::NotMember(_) => "not_member",
            Self::SystemNotice(_) => "system_notice",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// The frame was too large (WebSocket close 1009, HTTP 413).
    pub fn is_too_large(&self) -> bool {
        matches!(self, Self::Decode(DecodeError::TooLarge { .. }))
    }
}

impl From<StoreError> for Rejection {
    fn from(e: StoreError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::Unavailable(detail) => ApiError::unavailable(detail),
            r if r.is_too_large() => ApiError::too_large(r.to_string()),
            Rejection::NotMember(_) => ApiError::forbidden(r.to_string()),
            Rejection::UnknownUser(_) | Rejection::UnknownGroup(_) => {
                ApiError::not_found(r.to_string())
            }
            r => ApiError::bad_request(r.to_string()),
        }
    }
}

/// Why a batch sent in one request was not sent: none of it was.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The user sent too much too fast ([`Ingress::admit`]).
    #[error("rate limit exceeded: nothing of this batch was sent; slow down and send it again")]
    RateLimited,
    /// The message at this index was refused.
    #[error("message {0}: {1}")]
    Refused(usize, #[source] Rejection),
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Says which message of the batch was refused.
impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::RateLimited => ApiError::too_many(e.to_string()),
            BatchError::Refused(i, rejection) => {
                let mut error = ApiError::from(rejection);
                error.message = format!("message {i}: {}", error.message);
                error
            }
            BatchError::Bus(e) => e.into(),
        }
    }
}

/// The gateways' shared front door.
#[derive(Clone)]
pub struct Ingress {
    door: &'static str,
    metrics: Metrics,
    bus: Arc<dyn Bus>,
    stores: Stores,
    limits: Limits,
    sends: PerUser,
    known_users: Arc<Mutex<HashSet<String>>>,
    acks: AckQueue,
}

impl Ingress {
    /// The front door named `door` (`ws`, `rest`) in metrics.
    pub fn new(ctx: &Context, door: &'static str) -> Self {
        // Counted from zero at start, not from the first message: a rate over the door's
        // counters is then defined from the start.
        let label = DoorLabel { door };
        drop(ctx.metrics.accepted.get_or_create(&label));
        drop(ctx.metrics.accept_latency.get_or_create(&label));
        let (acks, publish) = AckQueue::start(Arc::clone(&ctx.bus), ctx.shutdown());
        ctx.spawn("client acks", async move {
            publish.await;
            Ok(())
        });
        Self {
            door,
            metrics: ctx.metrics.clone(),
            bus: Arc::clone(&ctx.bus),
            stores: ctx.stores.clone(),
            limits: Limits {
                max_bytes: ctx.settings.max_message_bytes,
            },
            sends: ctx.sends().clone(),
            known_users: Arc::default(),
            acks,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Checks a decoded message from `user` and stamps it. The result is ready to publish.
    pub async fn accept(&self, user: &str, message: Message) -> Result<Message, Rejection> {
        let result = self.check(user, message).await;
        if let Err(rejection) = &result {
            self.count_refusal(rejection.reason());
        }
        result
    }

    /// Takes `n` messages from what `user` may send through this process ([`Context::sends`]),
    /// or none (counted as refused) if the user sent too many too fast.
    pub fn admit(&self, user: &str, n: usize) -> bool {
        let admitted = self.sends.take(user, n);
        if !admitted {
            self.count_refusal("rate_limit");
        }
        admitted
    }

    /// Counts a message refused before or after [`Ingress::accept`].
    pub fn count_refusal(&self, reason: &'static str) {
        self.metrics
            .refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    async fn check(&self, user: &str, mut message: Message) -> Result<Message, Rejection> {
        message.validate_from_client()?;
        message.source = user.to_owned();
        // An ack ends a duty and goes no further: it gets no server id or time of its own.
        if message.kind == MessageType::ClientAck {
            return Ok(message);
        }
        message.server_id = uuid::Uuid::now_v7().to_string();
        message.server_timestamp = samvad_protocol::now_ms();
        if message.kind == MessageType::Notification
            && let Some(action) = message.meta.get("action")
            && SYSTEM_ACTIONS.contains(&action.as_str())
        {
            return Err(Rejection::SystemNotice(action.clone()));
        }
        if message.channel == Channel::Group {
            let group = self
                .stores
                .groups
                .group(&message.destination)
                .await?
                .ok_or_else(|| Rejection::UnknownGroup(message.destination.clone()))?;
            if group.member(user).is_none() {
                return Err(Rejection::NotMember(message.destination));
            }
        } else {
            self.check_user(&message.destination).await?;
        }
        Ok(message)
    }

    async fn check_user(&self, username: &str) -> Result<(), Rejection> {
        if self.lock_known().contains(username) {
            return Ok(());
        }
        let found = self
            .stores
            .profiles
            .existing(&[username.to_owned()])
            .await?;
        if found.is_empty() {
            return Err(Rejection::UnknownUser(username.to_owned()));
        }
        let mut known = self.lock_known();
        if known.len() >= KNOWN_USERS_MAX {
            known.clear();
        }
        known.insert(username.to_owned());
        Ok(())
    }

    fn lock_known(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.known_users
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a batch that `device` of `user` sent in one request: within what the user may
    /// send (client acks aside, as on a connection), each message decoded, checked and
    /// stamped, then all of them published together, durably. All or nothing: a batch over
    /// the budget is refused whole, and the first message refused refuses the batch (the rest
    /// are not looked at).
    #[tracing::instrument(level = "debug", name = "batch", skip_all, fields(%user, %device))]
    pub async fn send_batch(
        &self,
        user: &str,
        device: &str,
        decoded: impl IntoIterator<Item = Result<Message, DecodeError>>,
    ) -> Result<Vec<Message>, BatchError> {
        let decoded: Vec<_> = decoded.into_iter().collect();
        let sends = decoded
            .iter()
            .filter(|m| !matches!(m, Ok(m) if m.kind == MessageType::ClientAck))
            .count();
        if !self.admit(user, sends) {
            return Err(BatchError::RateLimited);
        }
        let mut accepted = Vec::new();
        for (i, message) in decoded.into_iter().enumerate() {
            let message = message.map_err(|e| {
                let rejection = Rejection::Decode(e);
                self.count_refusal(rejection.reason());
                BatchError::Refused(i, rejection)
            })?;
            let message = self.accept(user, message).await;
            accepted.push(message.map_err(|r| BatchError::Refused(i, r))?);
        }
        self.publish(device, &accepted).await?;
        Ok(accepted)
    }

    /// Done once the client acks queued here before this call are published (or after a
    /// while, if the bus cannot take them now): a connection that starts waits for this, so
    /// that its device is not sent again what it acked just before.
    pub async fn acks_published(&self) {
        self.acks.published().await;
    }

    /// Publishes messages `device` sent, as accepted; returns once they are durable. Client
    /// acks go to delivery, queued and gathered (see the `acks` module); everything else to
    /// the router, keyed by conversation so each conversation keeps its order.
    pub async fn publish(&self, device: &str, messages: &[Message]) -> Result<(), BusError> {
        let mut new = Vec::new();
        for m in messages {
            if m.kind == MessageType::ClientAck {
                self.acks
                    .push(client_ack(device, m))
                    .await
                    .map_err(|()| BusError::Storage("the node is stopping".into()))?;
            } else {
                let accepted = Accepted {
                    device: device.to_owned(),
                    message: m.clone(),
                };
                new.push(Record::event(Conv::of(m).key(), accepted));
            }
        }
        if !new.is_empty() {
            let count = new.len() as u64;
            self.bus.publish(&Topic::NewMessages, new).await?;
            let door = DoorLabel { door: self.door };
            self.metrics.accepted.get_or_create(&door).inc_by(count);
            let latency = self.metrics.accept_latency.get_or_create(&door);
            for m in messages.iter().filter(|m| m.kind != MessageType::ClientAck) {
                latency.observe(samvad_runtime::seconds_since(m.server_timestamp));
            }
        }
        Ok(())
    }
}

/// A `CLIENT_ACK`: of its `id`, or, when its meta names `conv` and `seq`, of everything in that
/// conversation up to `seq` (PROTOCOL §7).
fn client_ack(device: &str, m: &Message) -> ClientAck {
    let upto = match (m.meta.get("conv"), m.meta.get("seq").map(|s| s.parse())) {
        (Some(conv), Some(Ok(seq))) => Some(Upto {
            conv: conv.clone(),
            seq,
        }),
        _ => None,
    };
    ClientAck {
        user: m.source.clone(),
        device: device.to_owned(),
        id: m.id.clone(),
        upto,
    }
}
