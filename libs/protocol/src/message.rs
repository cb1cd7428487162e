//! The canonical message and its closed enums.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::error::{InvalidMessage, UnknownName};
use crate::json;

/// The longest message id a client may choose, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// The `source` of every message the server itself originates (acks).
pub const SERVER_SOURCE: &str = "server";

/// One logical chat message, independent of the encoding it arrived in (PROTOCOL §3).
///
/// `PartialEq` only: `version` is an `f32`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    /// The protocol version the message was written in (1.0, 2.0, 2.1, 3.0…).
    pub version: f32,
    /// Chosen by the sender, unique per sender.
    pub id: String,
    /// `SERVER_ACK`, `CLIENT_ACK`, `MESSAGE`, `NOTIFICATION` or `CUSTOM`.
    pub kind: MessageType,
    /// Who the message is for: one user, a group, or something else.
    pub channel: Channel,
    /// Ephemeral messages (typing indicators, acks) are neither stored nor pushed.
    pub ephemeral: bool,
    /// The sender; the server overwrites it with the authenticated user.
    pub source: String,
    /// A username, a group id, or `server`.
    pub destination: String,
    /// When the sender created the message, in milliseconds since the Unix epoch (0: unknown).
    pub timestamp: u64,
    /// The payload. Bytes on the wire; JSON in practice (the server only accepts JSON).
    pub content: Vec<u8>,
    /// Free-form string attributes (`chatId`, `action`, `contentType`, …).
    pub meta: BTreeMap<String, String>,
    /// Stamped by the server that accepted the message.
    pub server_id: String,
    /// When the server accepted the message, in milliseconds since the Unix epoch.
    pub server_timestamp: u64,
}

impl Message {
    /// The SERVER_ACK for this message (PROTOCOL §4): same id, kind ServerAck, channel
    /// Individual, source "server", destination = self.source, ephemeral true, same
    /// server_id/server_timestamp, version = self.version, empty content, empty meta.
    ///
    /// The ack's own `timestamp` is `self.server_timestamp`: the server creates the ack at the
    /// moment it accepted the message.
    pub fn server_ack(&self) -> Message {
        Message {
            version: self.version,
            id: self.id.clone(),
            kind: MessageType::ServerAck,
            channel: Channel::Individual,
            ephemeral: true,
            source: SERVER_SOURCE.to_owned(),
            destination: self.source.clone(),
            timestamp: self.server_timestamp,
            content: Vec::new(),
            meta: BTreeMap::new(),
            server_id: self.server_id.clone(),
            server_timestamp: self.server_timestamp,
        }
    }

    /// Whether this is the system's traffic rather than something a person wrote: acks,
    /// notifications and state changes (receipts, `meta.action == "state"`). It is v2.1's
    /// `head.category` `system`, and it never counts as unread (PROTOCOL §7).
    pub fn is_system(&self) -> bool {
        matches!(
            self.kind,
            MessageType::ServerAck | MessageType::ClientAck | MessageType::Notification
        ) || self.meta.get("action").is_some_and(|a| a == "state")
    }

    /// Checks a message a client sent: non-empty id (≤ [`MAX_ID_BYTES`] bytes), kind not
    /// ServerAck, destination non-empty for MESSAGE/NOTIFICATION/CUSTOM, content empty or valid
    /// JSON (nested at most 128 deep — the server only accepts JSON content, and the error says
    /// so). Returns a typed error saying what was wrong; the first problem found wins.
    pub fn validate_from_client(&self) -> Result<(), InvalidMessage> {
        if self.id.is_empty() {
            return Err(InvalidMessage::EmptyId);
        }
        if self.id.len() > MAX_ID_BYTES {
            return Err(InvalidMessage::IdTooLong {
                len: self.id.len(),
                max: MAX_ID_BYTES,
            });
        }
        match self.kind {
            MessageType::ServerAck => return Err(InvalidMessage::ServerAckFromClient),
            MessageType::Message | MessageType::Notification | MessageType::Custom
                if self.destination.is_empty() =>
            {
                return Err(InvalidMessage::MissingDestination { kind: self.kind });
            }
            _ => {}
        }
        if !self.content.is_empty() {
            json::check_slice(&self.content).map_err(|e| InvalidMessage::ContentNotJson {
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }
}

/// What a message is (PROTOCOL §3 `type`). Names are the uppercase protocol names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MessageType {
    /// The server's receipt for a message it has made durable.
    ServerAck,
    /// A device's receipt for a message delivered to it.
    ClientAck,
    /// An ordinary chat message (also delivery/read receipts and typing indicators).
    #[default]
    Message,
    /// A system message, e.g. a group membership change.
    Notification,
    /// Application-defined.
    Custom,
}

impl MessageType {
    /// Every kind, in protocol order.
    pub const ALL: [MessageType; 5] = [
        MessageType::ServerAck,
        MessageType::ClientAck,
        MessageType::Message,
        MessageType::Notification,
        MessageType::Custom,
    ];

    /// The protocol name: `SERVER_ACK`, `CLIENT_ACK`, `MESSAGE`, `NOTIFICATION`, `CUSTOM`.
    pub const fn as_str(self) -> &'static str {
        match self {
            MessageType::ServerAck => "SERVER_ACK",
            MessageType::ClientAck => "CLIENT_ACK",
            MessageType::Message => "MESSAGE",
            MessageType::Notification => "NOTIFICATION",
            MessageType::Custom => "CUSTOM",
        }
    }

    /// The kind a wire content-type names (v2 `head.contentType`, v1 `type`): one of the
    /// protocol names in any case, else `MESSAGE` (Vartalap clients send `text`, `attachment`…).
    pub(crate) fn from_wire(name: Option<&str>) -> MessageType {
        name.and_then(|n| n.parse().ok())
            .unwrap_or(MessageType::Message)
    }

    /// The content-type v1/v2 write: `from_meta` (the client's own spelling, kept in meta) if it
    /// names this kind, else the protocol name.
    pub(crate) fn wire_spelling(self, from_meta: Option<&str>) -> &str {
        from_meta
            .filter(|name| MessageType::from_wire(Some(name)) == self)
            .unwrap_or(self.as_str())
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MessageType {
    type Err = UnknownName;

    /// Parses a protocol name, ignoring ASCII case (`message`, `Server_Ack`, …).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MessageType::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownName {
                what: "message type",
                name: s.to_owned(),
                expected: "SERVER_ACK, CLIENT_ACK, MESSAGE, NOTIFICATION, CUSTOM",
            })
    }
}

/// Who a message is addressed to (PROTOCOL §3 `channel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Channel {
    /// Not said (the protobuf default). Text encodings write it as `other`.
    #[default]
    Unknown,
    /// One user.
    Individual,
    /// Every member of a group but the sender.
    Group,
    /// Anything else (channels, bots…).
    Other,
}

impl Channel {
    /// Every channel, in protocol order.
    pub const ALL: [Channel; 4] = [
        Channel::Unknown,
        Channel::Individual,
        Channel::Group,
        Channel::Other,
    ];

    /// The protocol name: `UNKNOWN`, `INDIVIDUAL`, `GROUP`, `OTHER`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Channel::Unknown => "UNKNOWN",
            Channel::Individual => "INDIVIDUAL",
            Channel::Group => "GROUP",
            Channel::Other => "OTHER",
        }
    }

    /// The channel a v1/v2 chat type names (v2 `head.type`, v1 `chatType`/`module`), ignoring
    /// ASCII case: `chat`/`individual`, missing or empty → Individual; `group` → Group;
    /// anything else → Other.
    pub(crate) fn from_wire(name: Option<&str>) -> Channel {
        match name {
            None | Some("") => Channel::Individual,
            Some(n) if n.eq_ignore_ascii_case("chat") || n.eq_ignore_ascii_case("individual") => {
                Channel::Individual
            }
            Some(n) if n.eq_ignore_ascii_case("group") => Channel::Group,
            Some(_) => Channel::Other,
        }
    }

    /// The spelling v1/v2 write when the message's meta has none that fits.
    pub(crate) const fn wire_name(self) -> &'static str {
        match self {
            Channel::Individual => "chat",
            Channel::Group => "group",
            Channel::Unknown | Channel::Other => "other",
        }
    }

    /// The chat type v1/v2 write: the first client spelling kept in `meta` under one of `keys`
    /// that names this channel, else `chat`, `group` or `other`. Looking under the other
    /// version's key too carries a spelling across versions, as Vartalap's server did.
    pub(crate) fn wire_spelling<'a>(
        self,
        meta: &'a BTreeMap<String, String>,
        keys: &[&str],
    ) -> &'a str {
        keys.iter()
            .filter_map(|key| meta.get(*key))
            .find(|name| Channel::from_wire(Some(name)) == self)
            .map_or(self.wire_name(), String::as_str)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = UnknownName;

    /// Parses a protocol name, ignoring ASCII case. (The v1/v2 spellings such as `chat` are
    /// wire details handled by the codecs, not accepted here.)
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownName {
                what: "channel",
                name: s.to_owned(),
                expected: "UNKNOWN, INDIVIDUAL, GROUP, OTHER",
            })
    }
}

/// A wire encoding of [`Message`] (PROTOCOL §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Legacy flat JSON (`msgId`, `from`, `to`, …).
    V1,
    /// JSON with `head`/`meta`/`body`, `_v: 2.0`: no `head.ephemeral`, no `head.category`.
    V2_0,
    /// JSON with `head`/`meta`/`body`, `_v: 2.1`.
    V2_1,
    /// Protobuf (binary frames).
    V3,
}

impl Encoding {
    /// True for [`Encoding::V3`], the only binary encoding.
    pub const fn is_binary(self) -> bool {
        matches!(self, Encoding::V3)
    }
}

/// Bounds applied to every frame before it is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Frames longer than this many bytes are refused with
    /// [`DecodeError::TooLarge`](crate::DecodeError::TooLarge).
    pub max_bytes: usize,
}

impl Limits {
    /// 64 KiB: far above any chat message, small enough that a frame is cheap to parse.
    pub const DEFAULT: Limits = Limits {
        max_bytes: 64 * 1024,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}
