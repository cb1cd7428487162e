//! v2.0 / v2.1: `{"_v", "id", "head", "meta", "body"}`, written with the flat v1 keys beside
//! `head` so that v1 clients keep reading.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::json::{self, Object};
use crate::{Channel, DecodeError, Message, MessageType, SERVER_SOURCE};

/// Canonical meta keys that v2 writes in `head` rather than in `meta`.
const HOISTED: [&str; 5] = ["type", "contentType", "action", "chatid", "category"];

/// v2 `meta` keys that carry canonical fields: `timestamp`, `server_id`, `server_timestamp`.
const CANONICAL_IN_META: [&str; 3] = ["createdAt", "serverId", "serverTimestamp"];

/// Which v2 dialect to write.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Minor {
    /// `_v: 2.0`
    Zero,
    /// `_v: 2.1`: adds `head.ephemeral` and `head.category`.
    One,
}

pub(crate) fn decode(frame: &Object<'_>, version: f32) -> Result<Message, DecodeError> {
    let id = json::required_string(frame, "id")?;
    let head_value = json::get(frame, "head").ok_or(DecodeError::MissingField("head"))?;
    let head = json::object(head_value, "head")?;

    let mut msg = Message {
        version,
        id,
        ..Message::default()
    };
    if let Some(meta) = json::get(frame, "meta") {
        for (key, value) in json::object(meta, "meta")? {
            if value.get() == "null" {
                continue;
            }
            match &*key {
                "createdAt" => msg.timestamp = json::millis(value, "meta.createdAt")?,
                "serverId" => msg.server_id = json::string(value, "meta.serverId")?,
                "serverTimestamp" => {
                    msg.server_timestamp = json::millis(value, "meta.serverTimestamp")?;
                }
                _ => {
                    msg.meta.insert(key.into_owned(), json::text(value));
                }
            }
        }
    }
    // Head keys win over meta keys of the same name: head is where v2 says what a message is.
    for (key, value) in head {
        if value.get() == "null" {
            continue;
        }
        match &*key {
            "to" => msg.destination = json::string(value, "head.to")?,
            "from" => msg.source = json::string(value, "head.from")?,
            "ephemeral" => msg.ephemeral = ephemeral(value)?,
            _ => {
                msg.meta.insert(key.into_owned(), json::text(value));
            }
        }
    }
    msg.channel = Channel::from_wire(msg.meta.get("type").map(String::as_str));
    msg.kind = match msg.meta.get("contentType") {
        // Vartalap's web client writes its v2 CLIENT_ACK with no contentType, to `server`. That
        // name is reserved (no user has it), so a message to it can only be an ack.
        None if msg.destination == SERVER_SOURCE => MessageType::ClientAck,
        name => MessageType::from_wire(name.map(String::as_str)),
    };
    if let Some(body) = json::get(frame, "body") {
        msg.content = body.get().as_bytes().to_vec();
    }
    Ok(msg)
}

/// `head.ephemeral`: a boolean, or Vartalap's `"true"`/`"false"` strings (any ASCII case).
fn ephemeral(value: &RawValue) -> Result<bool, DecodeError> {
    let text = json::text(value);
    if text.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if text.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(DecodeError::WrongType {
            field: "head.ephemeral",
            expected: "a boolean or \"true\"/\"false\"",
        })
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct V2Frame<'a> {
    #[serde(rename = "_v")]
    version: f64,
    id: &'a str,
    head: Head<'a>,
    meta: BTreeMap<&'a str, MetaValue<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a RawValue>,
    // The flat v1 keys, for clients that only read v1.
    msg_id: &'a str,
    from: &'a str,
    to: &'a str,
    #[serde(rename = "type")]
    content_type: &'a str,
    chat_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    module: &'a str,
    chat_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Head<'a> {
    #[serde(rename = "type")]
    chat_type: &'a str,
    to: &'a str,
    from: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    chatid: Option<&'a str>,
    content_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ephemeral: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    category: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum MetaValue<'a> {
    Text(&'a str),
    Number(u64),
}

/// Meta keys the server writes as JSON numbers in v2 (PROTOCOL §7): a stored message's `seq`,
/// and a gap notice's range.
fn numeric(key: &str, action: Option<&str>) -> bool {
    key == "seq" || (action == Some("gap") && matches!(key, "from" | "to"))
}

pub(crate) fn encode(msg: &Message, minor: Minor) -> String {
    let meta = |key: &str| msg.meta.get(key).map(String::as_str);
    let chat_type = msg
        .channel
        .wire_spelling(&msg.meta, &["type", "chatType", "module"]);
    let content_type = msg.kind.wire_spelling(meta("contentType"));
    let action = meta("action");

    let mut out_meta: BTreeMap<&str, MetaValue<'_>> = msg
        .meta
        .iter()
        .filter(|(k, _)| !HOISTED.contains(&k.as_str()) && !CANONICAL_IN_META.contains(&k.as_str()))
        .map(|(k, v)| {
            let value = match v.parse() {
                Ok(n) if numeric(k, action) => MetaValue::Number(n),
                _ => MetaValue::Text(v),
            };
            (k.as_str(), value)
        })
        .collect();
    if msg.timestamp != 0 {
        out_meta.insert("createdAt", MetaValue::Number(msg.timestamp));
    }
    if !msg.server_id.is_empty() {
        out_meta.insert("serverId", MetaValue::Text(&msg.server_id));
    }
    if msg.server_timestamp != 0 {
        out_meta.insert("serverTimestamp", MetaValue::Number(msg.server_timestamp));
    }

    let body = json::embeddable(&msg.content);
    let text = body.and_then(json::content_text);
    json::to_string(&V2Frame {
        version: match minor {
            Minor::Zero => 2.0,
            Minor::One => 2.1,
        },
        id: &msg.id,
        head: Head {
            chat_type,
            to: &msg.destination,
            from: &msg.source,
            chatid: meta("chatid"),
            content_type,
            action,
            ephemeral: (minor == Minor::One).then_some(msg.ephemeral),
            category: (minor == Minor::One).then(|| category(msg)),
        },
        meta: out_meta,
        body,
        msg_id: &msg.id,
        from: &msg.source,
        to: &msg.destination,
        content_type,
        chat_id: crate::v1::chat_id(msg),
        text: text.as_deref(),
        module: chat_type,
        chat_type,
        action,
    })
}

/// v2.1 `head.category`: acks, notifications and state changes (receipts) are `system`.
fn category(msg: &Message) -> &'static str {
    if msg.is_system() { "system" } else { "user" }
}
