//! Conversations as timelines (PROTOCOL §7): every stored message is written once, in its
//! conversation, with the next sequence number of that conversation; each device keeps a
//! cursor per conversation (what it has acked), each user a read position. Delivery reads
//! forward from a device's cursor (fan-out on read), so a group message is one entry however
//! many members the group has, and one device's ack never ends another's duty.

use std::fmt;

use samvad_protocol::{Channel, Message};

use crate::Result;

/// Separates the parts of a conversation key: a control character, which no username or
/// group id may contain.
const SEP: char = '\u{1f}';

/// The device of entries the server itself writes (membership notices): no login can name
/// it, since a device id has at least one byte.
pub const SYSTEM_DEVICE: &str = "";

/// One conversation: a 1:1 chat (the pair, whoever sent first) or a group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Conv {
    /// A 1:1 chat; `low < high`, so both sides name the same conversation.
    Direct {
        low: String,
        high: String,
    },
    Group(String),
}

impl Conv {
    /// The 1:1 chat between `a` and `b`.
    pub fn direct(a: &str, b: &str) -> Self {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        Self::Direct {
            low: low.to_owned(),
            high: high.to_owned(),
        }
    }

    pub fn group(group_id: &str) -> Self {
        Self::Group(group_id.to_owned())
    }

    /// The conversation a message belongs to: its group, or the pair of sender and recipient.
    pub fn of(message: &Message) -> Self {
        if message.channel == Channel::Group {
            Self::group(&message.destination)
        } else {
            Self::direct(&message.source, &message.destination)
        }
    }

    /// The storage key: unique per conversation, the same from both sides.
    pub fn key(&self) -> String {
        match self {
            Self::Direct { low, high } => format!("d{SEP}{low}{SEP}{high}"),
            Self::Group(id) => format!("g{SEP}{id}"),
        }
    }

    /// The conversation a storage key names.
    pub fn from_key(key: &str) -> Option<Self> {
        let mut parts = key.split(SEP);
        let conv = match (parts.next()?, parts.next()?, parts.next()) {
            ("d", low, Some(high)) => Self::Direct {
                low: low.to_owned(),
                high: high.to_owned(),
            },
            ("g", id, None) => Self::Group(id.to_owned()),
            _ => return None,
        };
        parts.next().is_none().then_some(conv)
    }

    /// Who takes part in a 1:1 chat (for a group, the group store knows).
    pub fn pair(&self) -> Option<[&str; 2]> {
        match self {
            Self::Direct { low, high } => Some([low, high]),
            Self::Group(_) => None,
        }
    }

    /// The other side of a 1:1 chat as `viewer` sees it; `None` in a group.
    pub fn peer_for(&self, viewer: &str) -> Option<&str> {
        match self {
            Self::Direct { low, high } => Some(other(low, high, viewer)),
            Self::Group(_) => None,
        }
    }

    /// How `viewer` names this conversation on the wire: `chat:<peer>` or `group:<id>`.
    pub fn name_for(&self, viewer: &str) -> String {
        match self {
            Self::Direct { low, high } => format!("chat:{}", other(low, high, viewer)),
            Self::Group(id) => format!("group:{id}"),
        }
    }

    /// Whether viewers `a` and `b` name this conversation alike (what [`Conv::name_for`]
    /// gives), without making the names: always in a group, when they see the same peer in a
    /// 1:1 chat.
    pub fn named_alike(&self, a: &str, b: &str) -> bool {
        self.peer_for(a) == self.peer_for(b)
    }

    /// The conversation `viewer` names `name` (`chat:<peer>`, `group:<id>`).
    pub fn parse_for(viewer: &str, name: &str) -> Option<Self> {
        let (kind, rest) = name.split_once(':')?;
        if rest.is_empty() || rest.contains(SEP) {
            return None;
        }
        match kind {
            "chat" => Some(Self::direct(viewer, rest)),
            "group" => Some(Self::group(rest)),
            _ => None,
        }
    }
}

/// Of a 1:1 chat between `low` and `high`, the one who is not `viewer`.
fn other<'a>(low: &'a str, high: &'a str, viewer: &str) -> &'a str {
    if low == viewer { high } else { low }
}

impl fmt::Display for Conv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Direct { low, high } => write!(f, "chat {low}/{high}"),
            Self::Group(id) => write!(f, "group {id}"),
        }
    }
}

/// Writes on a stored message its place as `viewer` is sent it (PROTOCOL §7): `meta.conv`, the
/// conversation as the viewer names it, and `meta.seq`. Returns the conversation.
pub fn stamp(message: &mut Message, viewer: &str, seq: u64) -> Conv {
    let conv = Conv::of(message);
    message.meta.insert("conv".into(), conv.name_for(viewer));
    message.meta.insert("seq".into(), seq.to_string());
    conv
}

/// A message to store in its conversation, with the device that sent it (which is never
/// sent its own message back).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEntry {
    pub conv: Conv,
    pub device: String,
    pub message: Message,
    /// Users whose part in the conversation ends with this entry (the notice of their removal
    /// from a group): their devices are owed it, and nothing after it.
    pub leaving: Vec<String>,
}

/// A stored message at its place in its conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub seq: u64,
    /// The sender's device.
    pub device: String,
    /// When it was stored, ms since the epoch.
    pub at: u64,
    pub message: Message,
}

/// What appending a message found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored now, at this seq.
    New(u64),
    /// The same sender's id was already stored in this conversation, at this seq (a re-send,
    /// or a record redelivered after a crash); nothing was written.
    Repeat(u64),
}

impl Appended {
    pub fn seq(self) -> u64 {
        match self {
            Self::New(seq) | Self::Repeat(seq) => seq,
        }
    }
}

/// Which part of a timeline to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The newest entries.
    Latest,
    /// Entries with a smaller seq, the nearest first taken.
    Before(u64),
    /// Entries with a larger seq, the nearest first taken.
    After(u64),
}

/// Entries read from a timeline, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub entries: Vec<Entry>,
    /// Whether more entries lie beyond this window in the direction read.
    pub more: bool,
}

/// Messages in a page of history unless the reader asks otherwise, and at most.
pub const HISTORY_PAGE: usize = 50;
pub const HISTORY_PAGE_MAX: usize = 200;

/// A page of `conv` as `user` reads its history (PROTOCOL §7): oldest first, each message
/// stamped with its place as the user names it, nothing from before they joined a group, and
/// whether more lies beyond it. `None` when the user takes no part in `conv`.
pub async fn history(
    timeline: &dyn TimelineStore,
    user: &str,
    conv: &Conv,
    page: Page,
    limit: usize,
) -> Result<Option<(Vec<Message>, bool)>> {
    let Some(state) = timeline.conversation(user, conv).await? else {
        return Ok(None);
    };
    let window = timeline.window(conv, page, state.since_seq, limit).await?;
    let messages = window
        .entries
        .into_iter()
        .map(|entry| {
            let mut message = entry.message;
            stamp(&mut message, user, entry.seq);
            message
        })
        .collect();
    Ok(Some((messages, window.more)))
}

/// A user's view of one conversation they take part in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvState {
    pub conv: Conv,
    /// The seq of its newest entry (0: none yet).
    pub last_seq: u64,
    /// When its newest entry was stored, ms since the epoch.
    pub last_at: u64,
    /// The user's read position.
    pub read_seq: u64,
    /// Entries from others after `read_seq`.
    pub unread: u64,
    /// The user sees entries after this seq only (when they joined a group; 0 for a 1:1).
    pub since_seq: u64,
}

/// Where a device stands in one conversation it takes part in, or took part in until an entry
/// it has not acked yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub conv: Conv,
    /// What the device has acked, or the point its duty started at (its first login, or when
    /// its user joined), whichever is later; past it, the entries its own device sent (it is
    /// never sent those, so it never acks them).
    pub cursor: u64,
    /// The last entry the device is owed: the conversation's newest, or the one its user's
    /// part ended with.
    pub last_seq: u64,
    /// The seq the user's part ended at (the notice of their removal), if it has ended:
    /// nothing after it is theirs.
    pub until: Option<u64>,
    /// The oldest seq retention has kept (1 when nothing was removed). When it is above
    /// `cursor + 1`, the device missed `cursor + 1 ..= first_seq - 1` for good.
    pub first_seq: u64,
}

impl Position {
    /// Whether the device is owed entries here.
    pub fn owed(&self) -> bool {
        self.last_seq > self.cursor
    }
}

/// A device: one login of a user (PROTOCOL §7).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceRef {
    pub user: String,
    pub device: String,
}

/// What a device acks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// Everything in `conv` up to `seq` (a cumulative ack).
    Upto { conv: Conv, seq: u64 },
    /// The message with this id (Vartalap's ack), in whichever of the user's conversations
    /// holds it; it acks what came before it in that conversation too, which the device was
    /// sent first.
    Id(String),
}

#[async_trait::async_trait]
pub trait TimelineStore: Send + Sync + 'static {
    /// Appends each message to its conversation with the next seq, in order, in one durable
    /// write. A 1:1 conversation's first entry makes both users take part in it. A message
    /// whose sender and id are already stored in that conversation is not stored again.
    async fn append(&self, items: &[NewEntry]) -> Result<Vec<Appended>>;

    /// At most `limit` entries of `conv` (oldest first), none at or below `floor` (what the
    /// reader may not see: retention or when they joined).
    async fn window(&self, conv: &Conv, page: Page, floor: u64, limit: usize) -> Result<Window>;

    /// Makes `user` take part in a group's conversation from now on: they see entries after
    /// the group's current last seq (the notice of their joining comes after). Idempotent; a
    /// user whose part had ended (`NewEntry::leaving`) starts afresh. A part ends only with an
    /// entry, the notice of the removal, so that it ends at the same place for every device.
    async fn join(&self, group_id: &str, users: &[String]) -> Result<()>;

    /// The user's part in one conversation; `None` when they take no part in it (or no longer).
    async fn conversation(&self, user: &str, conv: &Conv) -> Result<Option<ConvState>>;

    /// Every conversation `user` takes part in, most recently active first.
    async fn conversations(&self, user: &str) -> Result<Vec<ConvState>>;

    /// Starts a device's duty: from now on it is owed what each of its user's conversations
    /// receives. Returns false (and changes nothing) for a device seen before.
    async fn register(&self, device: &DeviceRef) -> Result<bool>;

    /// Ends a device's duty (it was unlinked): its registration and cursors go, so that if it
    /// is linked again it starts afresh. Changes nothing for a device not registered.
    async fn unregister(&self, device: &DeviceRef) -> Result<()>;

    /// Where `device` stands in every conversation its user takes part in (or only in `only`),
    /// and in those whose part ended at an entry the device has not acked yet, ordered by
    /// conversation key.
    async fn positions(&self, device: &DeviceRef, only: Option<&Conv>) -> Result<Vec<Position>>;

    /// Moves devices' cursors forward (never back), and past the entries after the acked one
    /// that the device sent itself. Acks of what a device takes no part in, or of ids not
    /// stored, change nothing.
    async fn ack(&self, acks: &[(DeviceRef, Ack)]) -> Result<()>;

    /// The highest seq in `conv` among the messages with these ids (`None`: none stored).
    async fn last_of(&self, conv: &Conv, ids: &[String]) -> Result<Option<u64>>;

    /// Moves `user`'s read position in `conv` forward to `seq` (never back). Returns the
    /// position after the move, or `None` when they take no part in `conv`.
    async fn read(&self, user: &str, conv: &Conv, seq: u64) -> Result<Option<u64>>;

    /// Removes at most `max` of the entries stored before `before_ms`, oldest first, and the
    /// ended parts whose last entry is gone; returns how many entries (a caller removes the
    /// rest in further calls, so no call holds the store long).
    async fn trim(&self, before_ms: u64, max: usize) -> Result<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direct_conversation_is_the_same_from_both_sides() {
        assert_eq!(Conv::direct("bob", "ann"), Conv::direct("ann", "bob"));
        let conv = Conv::direct("bob", "ann");
        assert_eq!(conv.name_for("ann"), "chat:bob");
        assert_eq!(conv.name_for("bob"), "chat:ann");
        assert_eq!(Conv::parse_for("ann", "chat:bob"), Some(conv.clone()));
        assert_eq!(Conv::from_key(&conv.key()), Some(conv));
    }

    #[test]
    fn names_with_separators_in_them_stay_apart() {
        let a = Conv::direct("a:b", "c");
        let b = Conv::direct("a", "b:c");
        assert_ne!(a.key(), b.key());
        assert_eq!(Conv::from_key(&a.key()), Some(a));
        let g = Conv::group("x:y");
        assert_eq!(g.name_for("ann"), "group:x:y");
        assert_eq!(Conv::parse_for("ann", "group:x:y"), Some(g.clone()));
        assert_eq!(Conv::from_key(&g.key()), Some(g));
    }

    #[test]
    fn bad_names_are_refused() {
        for name in ["", "chat:", "group:", "dm:bob", "bob", "chat:a\u{1f}b"] {
            assert_eq!(Conv::parse_for("ann", name), None, "{name:?}");
        }
        assert_eq!(Conv::from_key("d\u{1f}a"), None);
        assert_eq!(Conv::from_key("g\u{1f}a\u{1f}b"), None);
    }
}
