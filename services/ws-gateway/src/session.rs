//! One connection of a device, from open to close, whatever door it came in by (a WebSocket,
//! MQTT): the door reads and writes its wire format ([`Door`]); the session does the rest.
//!
//! A connection feeds its device each conversation in seq order. It starts from where the
//! device stands in every conversation (its cursor) and reads what it is owed from the
//! timeline, a chunk at a time, between everything else it does. Live messages from delivery
//! are written at once when they are the next seq of their conversation; one that is not (the
//! conversation is still being caught up, or a live hand-off went missing) only says how far
//! the timeline reaches, and the connection reads up to it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use samvad_bus::Outgoing;
use samvad_ingress::{Ingress, Rejection};
use samvad_protocol::{Channel, DecodeError, Message, MessageType};
use samvad_runtime::TokenBucket;
use samvad_store::{Conv, DeviceRef, Page, Position, SYSTEM_DEVICE};
use serde_json::json;
use tracing::Instrument;

use crate::signal::{Reason, Reasons, Signal};
use crate::{Gateway, Item, Outbound, Registration, Via};

/// Entries read from the timeline at a time.
const CHUNK: usize = 200;
/// Refusals for sending too fast after which the connection is closed.
const FLOOD_CLOSE: u32 = 100;
/// Ids of messages written and not yet acked that a connection remembers the place of.
const UNACKED_IDS: usize = 256;

/// A door: how one kind of client connection reads what the client sends and writes what it
/// is sent. The session drives it.
pub(crate) trait Door: Send {
    /// One thing the client sent.
    type Input: Send;

    /// Waits for the client's next input; `Err` ends the connection (the client left, went
    /// idle or sent something that ends it). Cancel-safe: it loses nothing if dropped.
    fn read(&mut self) -> impl Future<Output = Result<Self::Input, End>> + Send;

    /// Acts on one input: a message to accept, a ping, an ack.
    fn handle(
        &mut self,
        session: &mut Session,
        input: Self::Input,
    ) -> impl Future<Output = Result<(), End>> + Send;

    /// Writes messages to the client in order, recording each stored one with
    /// [`Session::written`].
    fn write(
        &mut self,
        session: &mut Session,
        items: &[Arc<Item>],
    ) -> impl Future<Output = Result<(), End>> + Send;

    /// What the client may be sent now.
    fn window(&self) -> Window {
        Window::OPEN
    }

    /// Ends the connection, telling the client why where its protocol can.
    fn close(self, end: End) -> impl Future<Output = ()> + Send;
}

/// What a client may be sent now: which conversations it takes (an MQTT client only those its
/// subscriptions name; what it does not take stays owed), and how many more stored messages
/// before it acks some.
pub(crate) struct Window {
    pub(crate) room: usize,
    /// `None`: every conversation.
    pub(crate) takes: Option<Arc<dyn Takes>>,
}

/// Which conversations a client takes now.
pub(crate) trait Takes: Send + Sync {
    fn takes(&self, conv: &Conv) -> bool;
}

impl Window {
    /// Everything, as fast as it comes.
    pub(crate) const OPEN: Window = Window {
        room: usize::MAX,
        takes: None,
    };

    fn takes(&self, conv: &Conv) -> bool {
        self.takes.as_ref().is_none_or(|t| t.takes(conv))
    }
}

/// What a session asks of its door's connection: whether it is sent what its user sent from
/// other devices, and presence notices.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wants {
    /// Also what the user sent from other devices (`sync=true`).
    pub(crate) sync: bool,
    /// Also presence notices of those who share a conversation (`presence=true`).
    pub(crate) presence: bool,
}

/// A device's connection: how far it has fed each conversation, what it wrote and what it may
/// still send.
pub(crate) struct Session {
    pub(crate) gateway: Gateway,
    pub(crate) device: DeviceRef,
    via: Via,
    wants: Wants,
    /// Per conversation: how far this connection has fed it.
    feeds: HashMap<Conv, Feed>,
    /// Conversations with entries to read from the timeline, taken in turn.
    behind: VecDeque<Conv>,
    /// Where the messages written and not yet acked are, by id, the oldest first: a
    /// `CLIENT_ACK` by id then acks that place, whoever else used the same id elsewhere.
    unacked: VecDeque<(String, Conv, u64)>,
    bucket: TokenBucket,
    refusals: u32,
}

/// How far a connection has fed one conversation.
#[derive(Debug, Clone, Copy)]
struct Feed {
    /// The highest seq written out, or skipped as the device's own.
    sent: u64,
    /// The highest seq known to be stored.
    stored: u64,
    /// Whether it waits in `behind` (so that marking it is not a scan of the queue).
    queued: bool,
    /// The last seq that is the device's (where its user's part ended; `u64::MAX` while it
    /// goes on).
    until: u64,
}

impl Feed {
    /// A conversation fed nothing yet, from its first entry on.
    fn new() -> Self {
        Self {
            sent: 0,
            stored: 0,
            queued: false,
            until: u64::MAX,
        }
    }

    /// Takes in where the device stands now: past what it has acked (through this connection
    /// or another of the device's), up to where its user's part ends (a part that starts
    /// afresh after a removal goes on from its new start).
    fn update(&mut self, position: &Position) {
        self.sent = self.sent.max(position.cursor);
        self.stored = self.stored.max(position.last_seq);
        self.until = position.until.unwrap_or(u64::MAX);
    }
}

/// How long a client may send nothing before its connection closes. Each input only notes
/// the time: the timer is moved only when it fires early, not at every read (a timer made and
/// dropped at every turn of the connection's loop costs two locks of the runtime's timer wheel).
pub(crate) struct Idle {
    limit: Duration,
    last: tokio::time::Instant,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Idle {
    pub(crate) fn new(limit: Duration) -> Self {
        Self {
            limit,
            last: tokio::time::Instant::now(),
            timer: Box::pin(tokio::time::sleep(limit)),
        }
    }

    /// The limit from now on (counted from the last input).
    pub(crate) fn set_limit(&mut self, limit: Duration) {
        self.limit = limit;
        self.timer.as_mut().reset(self.last + limit);
    }

    /// The client sent something.
    pub(crate) fn active(&mut self) {
        self.last = tokio::time::Instant::now();
    }

    /// Done once the client has sent nothing for the limit. Cancel-safe.
    pub(crate) async fn expired(&mut self) {
        loop {
            self.timer.as_mut().await;
            let due = self.last + self.limit;
            if due <= tokio::time::Instant::now() {
                return;
            }
            self.timer.as_mut().reset(due);
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The client closed it or went away.
    ClientClosed,
    /// The server closes it, and tells the client why where the door's protocol can.
    Close(Why),
}

/// Why the server closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    Restarting,
    Idle,
    /// The client fell behind: its queue overflowed or it took no write for a while.
    TooSlow,
    /// The timeline could not be read: the client comes back later, and is owed the same then.
    Busy,
    LoggedOut,
    KeyExpired,
    /// Too many refusals for sending too fast.
    Flood,
    TooLarge,
    /// Something the door's protocol does not allow.
    Malformed,
}

impl Why {
    /// Said to the client.
    pub(crate) fn text(self) -> &'static str {
        match self {
            Self::Restarting => "server restarting",
            Self::Idle => "idle",
            Self::TooSlow => "too far behind; reconnect",
            Self::Busy => "server busy; reconnect",
            Self::LoggedOut => "logged out",
            Self::KeyExpired => "access key expired; log in again",
            Self::Flood => "sending too fast",
            Self::TooLarge => "message too large",
            Self::Malformed => "protocol error",
        }
    }
}

const STORE_BUSY: End = End::Close(Why::Busy);

/// Why a message from the client was not accepted.
pub(crate) enum Refused {
    /// Refused so often for sending too fast that the connection closes.
    Flood,
    /// Over the size limit.
    TooLarge,
    /// This message alone: the client hears why, and may send it again (`retry`) or not.
    Message {
        id: Option<String>,
        error: String,
        /// The sender may not send there (not a member, a system notice).
        forbidden: bool,
        /// Sending it again may succeed (too fast, the server busy).
        retry: bool,
    },
}

/// Serves a registered connection of a device through `door` until it ends.
///
/// A plain function around an `async move` block rather than an `async fn`: an `async fn`
/// keeps its arguments twice in its state (as passed, and as the body's own bindings), the
/// door among them, and this state is held for as long as each connection lives.
pub(crate) fn run<D: Door>(
    gateway: Gateway,
    mut registration: Registration,
    mut door: D,
    via: Via,
    wants: Wants,
) -> impl Future<Output = ()> + Send {
    let span = tracing::info_span!(
        "connection",
        user = %registration.access.who.user,
        device = %registration.access.who.device,
        door = ?via,
    );
    let signal = Arc::clone(&registration.signal);
    let expires = registration.access.expires;
    let user = registration.access.who.user.clone();
    let mut conn = Session {
        gateway: gateway.clone(),
        device: DeviceRef {
            user: user.clone(),
            device: registration.access.who.device.clone(),
        },
        via,
        wants,
        feeds: HashMap::new(),
        behind: VecDeque::new(),
        unacked: VecDeque::new(),
        bucket: TokenBucket::new(samvad_runtime::per_second(
            gateway.ctx.settings.rate_limit,
            gateway.ctx.settings.rate_burst,
        )),
        refusals: 0,
    };
    async move {
        gateway.ctx.metrics.connections.inc();
        let presence = &gateway.ctx.presence;
        let gateway_id = &gateway.ctx.settings.instance_id;
        // Present first, then where the device stands: whatever is stored after that look is
        // handed to this connection live. The rarely run steps (the start, the close with its
        // grace timers) are boxed: an idle connection's task then holds only what waiting
        // needs, not room for their state machines.
        let access = &registration.access;
        let started = Box::pin(conn.start(presence.connected(&user, gateway_id), access)).await;
        let end = match started {
            Ok(false) => End::Close(Why::LoggedOut),
            Ok(true) => {
                if gateway.connections_of(&user) == 1 {
                    let announce = crate::presence::announce(gateway.clone(), user.clone(), true);
                    gateway.ctx.spawn_detached(announce);
                }
                conn.serve(&mut door, &mut registration.queue, &signal, expires)
                    .await
            }
            Err(e) => {
                tracing::warn!(user = %user, error = %e, "cannot start the connection");
                STORE_BUSY
            }
        };
        drop(registration);
        gateway.ctx.metrics.connections.dec();
        if let Err(e) = Box::pin(presence.disconnected(&user, gateway_id)).await {
            tracing::warn!(user = %user, error = %e, "cannot record disconnect");
        }
        if gateway.connections_of(&user) == 0 {
            let announce = crate::presence::announce(gateway.clone(), user.clone(), false);
            gateway.ctx.spawn_detached(announce);
        }
        Box::pin(door.close(end)).await;
    }
    .instrument(span)
}

impl Session {
    /// Records the connection in presence, makes sure its device is still linked in the
    /// session its key was issued in (false if not), then learns where the device stands in
    /// each of its conversations.
    ///
    /// The link is looked at again after presence has the connection: a logout that the
    /// upgrade's look missed either shows here, or came after this connection was in presence,
    /// where the logout finds the gateway to tell.
    async fn start(
        &mut self,
        present: impl Future<Output = Result<(), samvad_presence::PresenceError>>,
        access: &samvad_auth::Access,
    ) -> anyhow::Result<bool> {
        present.await?;
        if !self.gateway.ctx.gate.still_linked(access).await? {
            return Ok(false);
        }
        // What the device acked through this door just before is in its cursors first.
        self.gateway.ingress(self.via).acks_published().await;
        self.look().await?;
        Ok(true)
    }

    /// Learns where the device stands in each of its conversations, and marks behind those
    /// where the timeline holds more than this connection wrote. Run at the start and, where
    /// presence can miss a connection, at each client ping, so that a live hand-off that went
    /// missing (a presence entry lost in a failover) delays a message by one ping at most.
    async fn look(&mut self) -> anyhow::Result<()> {
        let timeline = &self.gateway.ctx.stores.timeline;
        for position in timeline.positions(&self.device, None).await? {
            let feed = self
                .feeds
                .entry(position.conv.clone())
                .or_insert_with(Feed::new);
            feed.update(&position);
            if feed.stored > feed.sent {
                self.mark_behind(&position.conv);
            }
        }
        Ok(())
    }

    /// Queues `conv` (which has a feed) to be read from the timeline, once.
    fn mark_behind(&mut self, conv: &Conv) {
        if let Some(feed) = self.feeds.get_mut(conv)
            && !feed.queued
        {
            feed.queued = true;
            self.behind.push_back(conv.clone());
        }
    }

    /// Makes sure a conversation that appears live has a feed; false when the device takes no
    /// part in it (any more).
    async fn learn(&mut self, conv: &Conv) -> Result<bool, End> {
        if self.feeds.contains_key(conv) {
            return Ok(true);
        }
        let feed = if let Conv::Direct { .. } = conv {
            // A 1:1 chat unknown at the start began since: both sides take part from its
            // first entry on, and no device has acked any of it yet. No need to ask.
            Feed::new()
        } else {
            // A group joined since the connection opened: where does the device stand in it?
            return self.refresh(conv).await;
        };
        self.feeds.insert(conv.clone(), feed);
        Ok(true)
    }

    /// Asks where the device stands in `conv` now and updates its feed (making one if need
    /// be); false when its user takes no part in it any more (nothing more is theirs).
    async fn refresh(&mut self, conv: &Conv) -> Result<bool, End> {
        let timeline = &self.gateway.ctx.stores.timeline;
        let found = Box::pin(timeline.positions(&self.device, Some(conv)))
            .await
            .map_err(|_| STORE_BUSY)?;
        match found.into_iter().next() {
            Some(position) => {
                self.feeds
                    .entry(conv.clone())
                    .or_insert_with(Feed::new)
                    .update(&position);
                Ok(true)
            }
            None => {
                if let Some(feed) = self.feeds.get_mut(conv) {
                    feed.until = feed.sent;
                }
                Ok(false)
            }
        }
    }

    /// Serves the connection until it ends: the client leaves or falls behind, its device is
    /// unlinked, its access key expires (`expires`, seconds since the Unix epoch), or the
    /// process stops.
    async fn serve<D: Door>(
        &mut self,
        door: &mut D,
        queue: &mut tokio::sync::mpsc::Receiver<Outbound>,
        signal: &Signal,
        expires: u64,
    ) -> End {
        let key_lives =
            Duration::from_secs(expires.saturating_sub(samvad_protocol::now_ms() / 1000));
        let expired = tokio::time::sleep(key_lives);
        tokio::pin!(expired);
        // Once the process drains: this connection's own moment to close within the spread.
        let deadline = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(deadline);
        let mut seen = Reasons::default();
        loop {
            let draining = seen.has(Reason::Closing);
            let result = tokio::select! {
                raised = std::future::poll_fn(|cx| signal.poll_raised(seen, cx)) => {
                    if raised.has(Reason::Stop) {
                        return End::Close(Why::Restarting);
                    }
                    if raised.has(Reason::Unlinked) {
                        return End::Close(Why::LoggedOut);
                    }
                    if raised.has(Reason::Slow) {
                        return self.too_slow();
                    }
                    seen = raised;
                    let spread = self.gateway.ctx.settings.close_spread;
                    let delay = spread.mul_f64(rand::random::<f64>());
                    deadline.as_mut().reset(tokio::time::Instant::now() + delay);
                    Ok(())
                }
                _ = &mut deadline, if draining => return End::Close(Why::Restarting),
                () = &mut expired => return End::Close(Why::KeyExpired),
                input = door.read() => match input {
                    Ok(input) => Box::pin(door.handle(self, input)).await,
                    Err(end) => return end,
                },
                Some(items) = queue.recv() => {
                    self.gateway.ctx.metrics.queued.dec();
                    match self.live(&items, door.window()).await {
                        Ok(out) => door.write(self, &out).await,
                        Err(end) => Err(end),
                    }
                }
                // Always ready while a conversation is behind and the client has room;
                // select! picks among the ready branches at random, so catching up and live
                // traffic share the connection.
                () = std::future::ready(()), if !self.behind.is_empty() && door.window().room > 0 => {
                    match Box::pin(self.catch_up(door.window())).await {
                        Ok(out) => door.write(self, &out).await,
                        Err(end) => Err(end),
                    }
                }
            };
            if let Err(end) = result {
                return end;
            }
        }
    }

    /// Of live messages, those to write now: the next in their conversation, as far as the
    /// client has room. The others mark their conversation behind (or, where the client does
    /// not take it now, stay owed).
    async fn live(&mut self, items: &[Arc<Item>], door: Window) -> Result<Vec<Arc<Item>>, End> {
        let mut out = Vec::with_capacity(items.len());
        let mut room = door.room;
        for item in items {
            let Some((conv, seq)) = &item.place else {
                if self.wants(item) && door.takes(&Conv::of(&item.message)) {
                    out.push(Arc::clone(item)); // ephemeral
                }
                continue;
            };
            if !self.learn(conv).await? {
                continue; // not a participant (any more)
            }
            // A removal may end this user's part here, and an entry past where it ended may
            // belong to a part that started afresh: ask where the device stands.
            let past_end = self.feeds.get(conv).is_some_and(|f| *seq > f.until);
            if (past_end || is_removal(&item.device, &item.message)) && !self.refresh(conv).await? {
                continue;
            }
            let feed = self.feeds.get_mut(conv).expect("learned above");
            if *seq <= feed.sent || *seq > feed.until {
                continue; // written before, or not theirs
            }
            feed.stored = feed.stored.max(*seq);
            if !door.takes(conv) {
                continue; // owed, for when the client takes it
            }
            if *seq == feed.sent + 1 && !feed.queued && room > 0 {
                feed.sent = *seq;
                if self.wants(item) {
                    room -= 1;
                    out.push(Arc::clone(item));
                }
            } else {
                self.mark_behind(conv);
            }
        }
        let latency = &self.gateway.ctx.metrics.delivery_latency;
        for item in out.iter().filter(|i| i.place.is_some()) {
            latency.observe(samvad_runtime::seconds_since(item.message.server_timestamp));
        }
        Ok(out)
    }

    /// Queues to be read from the timeline every conversation the client has not been sent
    /// all of: after it starts to take more of them (an MQTT subscription).
    pub(crate) fn rescan(&mut self) {
        let behind: Vec<Conv> = self
            .feeds
            .iter()
            .filter(|(_, f)| f.stored > f.sent && !f.queued)
            .map(|(c, _)| c.clone())
            .collect();
        for conv in behind {
            self.mark_behind(&conv);
        }
    }

    /// Reads the next chunk of the first conversation behind from the timeline, as much as
    /// the client has room for, and returns it to write (with a gap notice first where
    /// retention removed what the device still owed). A conversation the client does not take
    /// now leaves the queue until [`Session::rescan`].
    async fn catch_up(&mut self, door: Window) -> Result<Vec<Arc<Item>>, End> {
        let Some(conv) = self.behind.pop_front() else {
            return Ok(Vec::new());
        };
        let Some(mut feed) = self.feeds.get(&conv).copied() else {
            return Ok(Vec::new());
        };
        feed.queued = false;
        if !door.takes(&conv) {
            self.feeds.insert(conv, feed);
            return Ok(Vec::new());
        }
        let timeline = &self.gateway.ctx.stores.timeline;
        let mut window = timeline
            .window(&conv, Page::After(feed.sent), 0, CHUNK.min(door.room))
            .await
            .map_err(|_| STORE_BUSY)?;
        if window
            .entries
            .iter()
            .any(|e| is_removal(&e.device, &e.message))
        {
            // Perhaps the user's own: where does their part end now?
            self.feeds.insert(conv.clone(), feed);
            self.refresh(&conv).await?;
            feed = self.feeds[&conv];
            window.entries.retain(|e| e.seq > feed.sent);
        }
        if let Some(past) = window.entries.iter().position(|e| e.seq > feed.until) {
            window.entries.truncate(past);
            window.more = false;
            feed.stored = feed.until;
        }
        let user = &self.device.user;
        let mut out = Vec::with_capacity(window.entries.len() + 1);
        let first = window.entries.first().map_or(feed.stored + 1, |e| e.seq);
        if first > feed.sent + 1 {
            out.push(Item::new(
                user,
                gap_notice(user, &conv, feed.sent + 1, first - 1),
            ));
            feed.sent = first - 1;
        }
        for entry in window.entries {
            feed.sent = entry.seq;
            let outgoing = Outgoing {
                seq: Some(entry.seq),
                device: entry.device,
                message: entry.message,
            };
            let item = Item::new(user, outgoing);
            if self.wants(&item) {
                out.push(item);
            }
        }
        feed.stored = feed.stored.max(feed.sent);
        let more = window.more || feed.sent < feed.stored;
        self.feeds.insert(conv.clone(), feed);
        if more {
            self.mark_behind(&conv);
        }
        Ok(out)
    }

    /// Whether the client is sent a message: never what its own device sent; a stored message
    /// its user sent from another device only with `sync=true` (what the user's other devices
    /// did, such as reading, always). The server's notices always, but presence notices only
    /// with `presence=true`.
    fn wants(&self, item: &Item) -> bool {
        if crate::presence::is_notice(&item.message) {
            return self.wants.presence;
        }
        if item.device == SYSTEM_DEVICE || item.message.source != self.device.user {
            return true;
        }
        item.device != self.device.device && (item.place.is_none() || self.wants.sync)
    }

    /// A client that falls behind — its queue overflows, or it has not taken a write for
    /// `SAMVAD_SLOW_CLIENT_SECS` — is let go, counted: it holds a task and buffers, and
    /// everything it is owed waits safely in the timeline for its return.
    pub(crate) fn too_slow(&self) -> End {
        self.gateway.ctx.metrics.slow_closes.inc();
        End::Close(Why::TooSlow)
    }

    /// Records a stored message written to the client, so that a `CLIENT_ACK` by its id finds
    /// its place.
    pub(crate) fn written(&mut self, item: &Item) {
        if let Some((conv, seq)) = &item.place {
            if self.unacked.len() == UNACKED_IDS {
                self.unacked.pop_front();
            }
            self.unacked
                .push_back((item.message.id.clone(), conv.clone(), *seq));
        }
    }

    /// What a client ping costs: presence kept in another process (entries that expire unless
    /// renewed) can miss a connection for a while, a failover say, and delivery then hands it
    /// nothing: looking again finds what it missed. Presence in this process never misses
    /// one, and every client pinging at once would only be a burst of reads.
    pub(crate) async fn pinged(&mut self) {
        if self.gateway.ctx.presence.heartbeat_every().is_some()
            && let Err(e) = Box::pin(self.look()).await
        {
            tracing::warn!(user = %self.device.user, error = %e, "cannot read where the device stands");
        }
    }

    /// Takes a message the client sent (as its door decoded it): within the connection's and
    /// the user's rate, checked and published durably. The result is the message as accepted,
    /// which the door may now ack.
    pub(crate) async fn submit(
        &mut self,
        decoded: Result<Message, DecodeError>,
    ) -> Result<Message, Refused> {
        let gateway = self.gateway.clone();
        let ingress = gateway.ingress(self.via);
        // A connection's budget is for every frame; its user's, shared by all their
        // connections and doors, for what is sent to others (acks only end a duty, and cost
        // little).
        let ack = matches!(&decoded, Ok(m) if m.kind == MessageType::ClientAck);
        let admitted = if self.bucket.take() {
            ack || ingress.admit(&self.device.user, 1)
        } else {
            ingress.count_refusal("rate_limit");
            false
        };
        if !admitted {
            self.refusals += 1;
            if self.refusals >= FLOOD_CLOSE {
                return Err(Refused::Flood);
            }
            return Err(Refused::Message {
                id: None,
                error: "rate limit exceeded: message dropped; slow down and send it again".into(),
                forbidden: false,
                retry: true,
            });
        }
        let message = match decoded {
            Ok(m) => m,
            Err(e) => {
                let rejection = Rejection::Decode(e);
                ingress.count_refusal(rejection.reason());
                return Err(refused(None, rejection));
            }
        };
        // Everything done for the message in line (all-in-one: routing, storing, handing it
        // to connections) logs with its id.
        let span = tracing::debug_span!("message", id = %message.id, to = %message.destination);
        self.accept(ingress, message).instrument(span).await
    }

    async fn accept(&mut self, ingress: &Ingress, message: Message) -> Result<Message, Refused> {
        let id = message.id.clone();
        let mut accepted = match ingress.accept(&self.device.user, message).await {
            Ok(m) => m,
            Err(e) => return Err(refused(Some(id), e)),
        };
        if accepted.kind == MessageType::ClientAck {
            self.place_ack(&mut accepted);
        }
        if let Err(e) = ingress
            .publish(&self.device.device, std::slice::from_ref(&accepted))
            .await
        {
            tracing::warn!(user = %self.device.user, error = %e, "publish failed; message not acked");
            return Err(Refused::Message {
                id: Some(id),
                error: "the server could not take the message; send it again".into(),
                forbidden: false,
                retry: true,
            });
        }
        Ok(accepted)
    }

    /// Acks, for the device, everything of `conv` up to `seq` (a door whose client acks by
    /// its own means: MQTT's PUBACK). Queued, like every client ack.
    pub(crate) async fn ack_upto(&self, conv: &Conv, seq: u64) -> Result<(), End> {
        let ack = Message {
            kind: MessageType::ClientAck,
            id: format!("{}:{seq}", conv.name_for(&self.device.user)),
            source: self.device.user.clone(),
            meta: [
                ("conv".to_owned(), conv.name_for(&self.device.user)),
                ("seq".to_owned(), seq.to_string()),
            ]
            .into(),
            ..Message::default()
        };
        self.gateway
            .ingress(self.via)
            .publish(&self.device.device, &[ack])
            .await
            .map_err(|_| End::Close(Why::Restarting))
    }

    /// A `CLIENT_ACK` by id of a message this connection wrote acks up to its place (and what
    /// the connection wrote before it there).
    fn place_ack(&mut self, ack: &mut Message) {
        if ack.meta.contains_key("seq") {
            return;
        }
        let Some(at) = self.unacked.iter().rposition(|(id, ..)| *id == ack.id) else {
            return;
        };
        let (_, conv, seq) = self.unacked.remove(at).expect("found above");
        ack.meta
            .insert("conv".into(), conv.name_for(&self.device.user));
        ack.meta.insert("seq".into(), seq.to_string());
    }
}

fn refused(id: Option<String>, rejection: Rejection) -> Refused {
    if rejection.is_too_large() {
        return Refused::TooLarge;
    }
    Refused::Message {
        id,
        forbidden: matches!(
            rejection,
            Rejection::NotMember(_) | Rejection::SystemNotice(_)
        ),
        retry: matches!(rejection, Rejection::Unavailable(_)),
        error: rejection.to_string(),
    }
}

/// Whether a stored message is the notice of a removal from a group (which may end the
/// reader's part in it).
fn is_removal(device: &str, message: &samvad_protocol::Message) -> bool {
    device == SYSTEM_DEVICE && message.meta.get("action").is_some_and(|a| a == "remove")
}

/// The notice that retention removed seqs `from..=to` of `conv` before this device acked them
/// (PROTOCOL §7): the client refetches what history still has instead of missing it silently.
fn gap_notice(user: &str, conv: &Conv, from: u64, to: u64) -> Outgoing {
    let (channel, destination) = match conv {
        Conv::Group(id) => (Channel::Group, id.as_str()),
        Conv::Direct { .. } => (Channel::Individual, user),
    };
    let name = conv.name_for(user);
    let message = samvad_runtime::notice(
        "gap",
        channel,
        samvad_protocol::SERVER_SOURCE,
        destination,
        true,
        &json!({ "conv": name, "from": from, "to": to }),
        &[
            ("conv", name.clone()),
            ("from", from.to_string()),
            ("to", to.to_string()),
        ],
    );
    Outgoing {
        seq: None,
        device: SYSTEM_DEVICE.to_owned(),
        message,
    }
}
