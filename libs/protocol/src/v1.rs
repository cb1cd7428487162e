//! v1: Vartalap's legacy flat JSON frame,
//! `{"msgId", "from", "to", "chatId", "text", "type", "module", "action", "state", "chatType"}`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::json::{self, Object};
use crate::{Channel, DecodeError, Message, MessageType};

/// v1 keys whose values travel verbatim in canonical meta, and the meta key each uses.
const META_KEYS: [(&str, &str); 6] = [
    ("type", "contentType"),
    ("chatType", "chatType"),
    ("module", "module"),
    ("chatId", "chatId"),
    ("action", "action"),
    ("state", "state"),
];

pub(crate) fn decode(frame: &Object<'_>) -> Result<Message, DecodeError> {
    let id = json::required_string(frame, "msgId")?;
    let source = json::opt_string(frame, "from")?.unwrap_or_default();
    let destination = json::opt_string(frame, "to")?.unwrap_or_default();
    let content = match json::opt_string(frame, "text")? {
        Some(text) => json::to_string(&TextContent { text: &text }).into_bytes(),
        None => Vec::new(),
    };
    let meta: BTreeMap<String, String> = META_KEYS
        .iter()
        .filter_map(|&(key, meta_key)| {
            json::get(frame, key).map(|v| (meta_key.to_owned(), json::text(v)))
        })
        .collect();
    let channel_name = meta.get("chatType").or_else(|| meta.get("module"));
    Ok(Message {
        version: 1.0,
        id,
        kind: MessageType::from_wire(meta.get("contentType").map(String::as_str)),
        channel: Channel::from_wire(channel_name.map(String::as_str)),
        ephemeral: false,
        source,
        destination,
        timestamp: 0,
        content,
        meta,
        server_id: String::new(),
        server_timestamp: 0,
    })
}

#[derive(Serialize)]
struct TextContent<'a> {
    text: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct V1Frame<'a> {
    msg_id: &'a str,
    from: &'a str,
    to: &'a str,
    chat_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(rename = "type")]
    content_type: &'a str,
    module: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'a str>,
    chat_type: &'a str,
}

pub(crate) fn encode(msg: &Message) -> String {
    let meta = |key: &str| msg.meta.get(key).map(String::as_str);
    let chat_type = msg
        .channel
        .wire_spelling(&msg.meta, &["chatType", "type", "module"]);
    let text = json::embeddable(&msg.content).and_then(json::content_text);
    json::to_string(&V1Frame {
        msg_id: &msg.id,
        from: &msg.source,
        to: &msg.destination,
        chat_id: chat_id(msg),
        text: text.as_deref(),
        content_type: msg.kind.wire_spelling(meta("contentType")),
        module: meta("module")
            .filter(|m| Channel::from_wire(Some(m)) == msg.channel)
            .unwrap_or(chat_type),
        action: meta("action"),
        state: meta("state"),
        chat_type,
    })
}

/// The chat a flat frame names: meta `chatId` (v1) or `chatid` (v2 head), else the destination.
pub(crate) fn chat_id(msg: &Message) -> &str {
    msg.meta
        .get("chatId")
        .or_else(|| msg.meta.get("chatid"))
        .unwrap_or(&msg.destination)
}
