//! Samvad's wire protocol: the canonical chat [`Message`], its four client encodings — v1,
//! v2.0 and v2.1 (JSON text frames) and v3 (protobuf binary frames), PROTOCOL.md §3 — the
//! server's acknowledgement ([`Message::server_ack`]), the checks applied to what clients send
//! ([`Message::validate_from_client`]), and the lossless internal JSON form services exchange on
//! the bus and in storage (`Serialize`/`Deserialize` for [`Message`]). The crate is pure: no
//! I/O, no async runtime, and no panics on any input — every malformed frame is a
//! [`DecodeError`] that tells the client what was wrong.
//!
//! # Decoding
//!
//! [`decode_text`] reads v1 and v2 frames, choosing by `_v` (a number or a numeric string):
//! absent, `null` or below 2 → v1; from 2 up to (not including) 3 → v2; anything else →
//! [`DecodeError::UnknownVersion`]. [`decode_binary`] reads v3. Both refuse a frame longer than
//! [`Limits::max_bytes`] before looking at it, and JSON nested more than 128 deep.
//!
//! # Mapping
//!
//! **v3** is the canonical message field for field (`recipients`, field 11 of Vartalap's schema,
//! is read and ignored, never written). An unknown `type` number decodes as `MESSAGE`, an unknown
//! `channel` number as [`Channel::Unknown`]; a non-finite `version` is refused. Writing v3
//! always writes the envelope — `version`, `id`, `type`, `channel`, `ephemeral`, `source`,
//! `destination` — even at zero values (a SERVER_ACK's `type` is 0), as Vartalap's server
//! does, for clients that decode without defaults; `content`, `timestamp`, `meta`, `serverId`
//! and `serverTimestamp` are written when not empty or zero. Reading treats an absent field
//! as its zero value.
//!
//! **v2** (`{"_v", "id", "head", "meta", "body"}`; `id` and `head` are required):
//!
//! | v2 | canonical |
//! |---|---|
//! | `_v` | `version` (as read; written as `2.0`/`2.1` by the encoding, not from `version`) |
//! | `head.to` / `head.from` | `destination` / `source` (strings) |
//! | `head.ephemeral` | `ephemeral` (bool or `"true"`/`"false"`; written only in v2.1) |
//! | every other `head` key (`type`, `contentType`, `action`, `chatid`, `category`, unknown keys) | `meta[key]`, verbatim |
//! | `meta` object | merged into `meta` (head keys win on a clash) |
//! | `meta.createdAt` / `meta.serverId` / `meta.serverTimestamp` | `timestamp` / `server_id` / `server_timestamp` (not kept in `meta`) |
//! | `body` (any JSON; absent or `null` = none) | `content`, the JSON text byte for byte |
//!
//! Non-string `head`/`meta` values are kept as their JSON text; `null` ones are dropped.
//! The channel is read from `meta["type"]` (that is, `head.type`, or `meta.type` when head has
//! none), ignoring case: `chat`/`individual`, missing or empty → Individual, `group` → Group,
//! anything else → Other. The kind is read from `meta["contentType"]`: a protocol name
//! (`server_ack`, `client_ack`, `message`, `notification`, `custom`, any case) → that kind,
//! anything else or missing → `MESSAGE` (Vartalap clients send `text`, `attachment`…) — but
//! missing on a frame to `server` (a reserved name) → `CLIENT_ACK`, which is how Vartalap's web
//! client writes its v2 acks.
//!
//! Writing v2: `head.type` is the first of `meta["type"]`, `meta["chatType"]`, `meta["module"]`
//! (v1's spellings, so they carry across versions) that names the message's channel, else
//! `chat`, `group` or `other` (for Other and Unknown); `head.contentType` is
//! `meta["contentType"]` if it names the kind, else the kind's protocol name;
//! `head.action`/`head.chatid` come from meta when present. v2.1 adds `head.ephemeral` and
//! `head.category` — `system` for SERVER_ACK, CLIENT_ACK, NOTIFICATION and
//! `meta.action == "state"`, else `user`. Hoisted keys (`type`, `contentType`, `action`,
//! `chatid`, `category`) and the names of canonical fields (`createdAt`, `serverId`,
//! `serverTimestamp`, written from the fields when non-zero/non-empty) are not copied into the
//! output `meta`. `body` is omitted when there is no content (or, which
//! validation prevents, content that is not JSON). Beside `head` the frame also carries the flat
//! v1 keys: `msgId`, `from`, `to`, `type` (= `head.contentType`), `chatId` (meta `chatId`, else
//! `chatid`, else the destination), `text` (the content's top-level `text`, if a string),
//! `module` and `chatType` (= `head.type`), `action` (meta `action`). Decoding ignores them.
//!
//! **v1** (flat; `msgId` required, `from`/`to`/`text` strings when present):
//!
//! | v1 | canonical |
//! |---|---|
//! | `msgId` / `from` / `to` | `id` / `source` / `destination` |
//! | `text` | `content` = `{"text": text}` (absent or `null`: no content) |
//! | `type` | `meta["contentType"]`; the kind, mapped like v2's `head.contentType` |
//! | `chatType`, `module` | `meta["chatType"]`, `meta["module"]`; the channel from `chatType`, else `module`, mapped like `head.type` |
//! | `chatId`, `action`, `state` | `meta["chatId"]`, `meta["action"]`, `meta["state"]` |
//!
//! Decoding v1 gives version 1.0, no timestamps, not ephemeral; other keys are ignored. Writing
//! v1 writes all of `msgId`, `from`, `to`, `chatId` (as for v2), `type` (as v2's
//! `head.contentType`), `chatType` (the first of `meta["chatType"]`, `meta["type"]`,
//! `meta["module"]` that names the channel, else ours), `module` (`meta["module"]` if it names
//! the channel, else the `chatType` written), plus `text`, `action`, `state` when there are any.
//!
//! **Internal form** (serde): `{"version", "id", "type", "channel", "ephemeral", "source",
//! "destination", "timestamp", "content", "meta", "serverId", "serverTimestamp"}` — `type` and
//! `channel` are the uppercase protocol names (read case-insensitively), `content` the JSON
//! content embedded as is, or `null` when empty. Content that is not exactly one JSON text (or
//! is the text `null`) is written as `"content": null, "contentBase64": "<base64>"` instead, so
//! nothing is ever lost. It is meant for serde_json; reading it never panics.
//!
//! # The lossless set
//!
//! These round trips return exactly what went in (the crate's property tests check each):
//!
//! * **canonical → v3 → canonical**: every message with a finite `version` (`-0.0` reads back as
//!   `0.0`, which compares equal), every kind and every channel, Unknown included.
//! * **canonical → internal JSON → canonical**: every message with a finite `version`, whatever
//!   its content bytes.
//! * **canonical → v2.1 / v2.0 → canonical** for messages whose channel is not Unknown, whose
//!   content is empty or exactly one JSON text other than `null` (no surrounding whitespace;
//!   inner whitespace, key order and number spellings are kept), and whose meta has none of the
//!   keys `createdAt`, `serverId`, `serverTimestamp`, `category`. The result equals the input
//!   except that `version` is 2.1 (2.0); `meta` gains the spellings written in `head`:
//!   `type` = `head.type`, `contentType` = `head.contentType` and, for v2.1, `category` =
//!   `head.category`; and for v2.0 `ephemeral` reads back `false`, as v2.0 has no field for it.
//!   Everything else — id, addresses, timestamps, server stamps, `action`, `chatid`, any other
//!   meta — is kept exactly, and re-encoding the result writes the identical frame.
//! * **v1 → canonical → v1** (compared as JSON objects) for frames whose keys are `msgId`,
//!   `from`, `to`, `chatId`, `type`, `chatType` and `module`, optionally `text`, `action` and
//!   `state`, all strings, with `module` naming the same channel as `chatType`.
//!
//! Unknown channels cannot be written in v1/v2 (they read back as Other); v1 cannot carry
//! timestamps, server stamps, ephemerality or content other than a string `text`.

mod error;
mod internal;
mod json;
mod message;
mod v1;
mod v2;
pub mod v3;

pub use error::{DecodeError, InvalidMessage, UnknownName};
pub use message::{Channel, Encoding, Limits, MAX_ID_BYTES, Message, MessageType, SERVER_SOURCE};

/// Milliseconds since the Unix epoch, the unit of every timestamp in a message; 0 if the
/// clock is before 1970.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Decodes a v1 or v2 text frame (the version is chosen by `_v`; see the crate docs).
pub fn decode_text(frame: &str, limits: &Limits) -> Result<Message, DecodeError> {
    check_size(frame.len(), limits)?;
    let object = json::parse_frame(frame)?;
    match text_version(&object)? {
        None => v1::decode(&object),
        Some(version) => v2::decode(&object, version),
    }
}

/// Decodes a v3 binary frame.
pub fn decode_binary(frame: &[u8], limits: &Limits) -> Result<Message, DecodeError> {
    check_size(frame.len(), limits)?;
    v3::decode(frame)
}

/// Encodes `msg` as a v1, v2.0 or v2.1 text frame.
///
/// `Encoding::V3` is binary (see [`encode_binary`]); passed here it gives the v2.1 text form,
/// which is what a text connection speaks, so this function is total and never panics.
pub fn encode_text(msg: &Message, enc: Encoding) -> String {
    match enc {
        Encoding::V1 => v1::encode(msg),
        Encoding::V2_0 => v2::encode(msg, v2::Minor::Zero),
        Encoding::V2_1 | Encoding::V3 => v2::encode(msg, v2::Minor::One),
    }
}

/// Encodes `msg` as a v3 binary frame.
pub fn encode_binary(msg: &Message) -> Vec<u8> {
    v3::encode(msg)
}

fn check_size(size: usize, limits: &Limits) -> Result<(), DecodeError> {
    if size > limits.max_bytes {
        return Err(DecodeError::TooLarge {
            size,
            max: limits.max_bytes,
        });
    }
    Ok(())
}

/// `None` for v1, `Some(_v)` for v2; see [`decode_text`].
fn text_version(frame: &json::Object<'_>) -> Result<Option<f32>, DecodeError> {
    let Some(value) = json::get(frame, "_v") else {
        return Ok(None);
    };
    let (version, spelled) = if let Some(s) = json::as_str(value) {
        (s.trim().parse::<f64>().ok(), s)
    } else if value
        .get()
        .starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9'])
    {
        (
            serde_json::from_str::<f64>(value.get()).ok(),
            value.get().to_owned(),
        )
    } else {
        return Err(DecodeError::WrongType {
            field: "_v",
            expected: "a number or a numeric string",
        });
    };
    match version.filter(|v| v.is_finite()) {
        Some(v) if v < 2.0 => Ok(None),
        Some(v) if v < 3.0 => Ok(Some(v as f32)),
        _ => Err(DecodeError::UnknownVersion(spelled)),
    }
}
