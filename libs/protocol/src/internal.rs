//! The internal JSON form (`Serialize`/`Deserialize` for [`Message`]): what services put on the
//! bus and in storage. It is lossless; see the crate docs for its shape.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{Channel, Message, MessageType, json};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Internal<'a> {
    version: f32,
    id: &'a str,
    #[serde(rename = "type")]
    kind: MessageType,
    channel: Channel,
    ephemeral: bool,
    source: &'a str,
    destination: &'a str,
    timestamp: u64,
    content: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_base64: Option<String>,
    meta: &'a BTreeMap<String, String>,
    server_id: &'a str,
    server_timestamp: u64,
}

impl Serialize for Message {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let content = json::embeddable(&self.content);
        // Content that is not one JSON text (only possible if a caller skipped validation) is
        // kept as base64 instead of being dropped, so the form stays lossless.
        let content_base64 =
            (content.is_none() && !self.content.is_empty()).then(|| BASE64.encode(&self.content));
        Internal {
            version: self.version,
            id: &self.id,
            kind: self.kind,
            channel: self.channel,
            ephemeral: self.ephemeral,
            source: &self.source,
            destination: &self.destination,
            timestamp: self.timestamp,
            content,
            content_base64,
            meta: &self.meta,
            server_id: &self.server_id,
            server_timestamp: self.server_timestamp,
        }
        .serialize(serializer)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InternalOwned {
    version: f32,
    id: String,
    #[serde(rename = "type")]
    kind: MessageType,
    channel: Channel,
    #[serde(default)]
    ephemeral: bool,
    source: String,
    destination: String,
    #[serde(default)]
    timestamp: u64,
    #[serde(default)]
    content: Option<Box<RawValue>>,
    #[serde(default)]
    content_base64: Option<String>,
    #[serde(default)]
    meta: BTreeMap<String, String>,
    #[serde(default)]
    server_id: String,
    #[serde(default)]
    server_timestamp: u64,
}

impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let w = InternalOwned::deserialize(deserializer)?;
        let content = match (w.content, w.content_base64) {
            (Some(_), Some(_)) => {
                return Err(de::Error::custom(
                    "message has both `content` and `contentBase64`",
                ));
            }
            (Some(raw), None) => String::from(Box::<str>::from(raw)).into_bytes(),
            (None, Some(b64)) => BASE64
                .decode(b64)
                .map_err(|e| de::Error::custom(format_args!("invalid `contentBase64`: {e}")))?,
            (None, None) => Vec::new(),
        };
        Ok(Message {
            version: w.version,
            id: w.id,
            kind: w.kind,
            channel: w.channel,
            ephemeral: w.ephemeral,
            source: w.source,
            destination: w.destination,
            timestamp: w.timestamp,
            content,
            meta: w.meta,
            server_id: w.server_id,
            server_timestamp: w.server_timestamp,
        })
    }
}

impl Serialize for MessageType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MessageType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(NameVisitor::<MessageType>::new("a message type name"))
    }
}

impl Serialize for Channel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Channel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(NameVisitor::<Channel>::new("a channel name"))
    }
}

/// Deserialises a closed enum from its protocol name via `FromStr` (case-insensitive).
struct NameVisitor<T> {
    expecting: &'static str,
    marker: std::marker::PhantomData<T>,
}

impl<T> NameVisitor<T> {
    fn new(expecting: &'static str) -> Self {
        NameVisitor {
            expecting,
            marker: std::marker::PhantomData,
        }
    }
}

impl<T> Visitor<'_> for NameVisitor<T>
where
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}
