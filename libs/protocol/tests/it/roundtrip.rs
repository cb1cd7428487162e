//! Property tests of the lossless set documented in the crate docs.

use std::collections::BTreeMap;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use samvad_protocol::{
    Channel, Encoding, Message, MessageType, decode_binary, decode_text, encode_binary, encode_text,
};
use serde_json::Value;

use crate::support::LIMITS;

fn kind() -> impl Strategy<Value = MessageType> {
    select(MessageType::ALL.to_vec())
}

fn channel() -> impl Strategy<Value = Channel> {
    select(Channel::ALL.to_vec())
}

fn text_channel() -> impl Strategy<Value = Channel> {
    select(vec![Channel::Individual, Channel::Group, Channel::Other])
}

fn version() -> impl Strategy<Value = f32> {
    any::<f32>().prop_filter("finite", |v| v.is_finite())
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Empty, or one JSON text other than `null`, compact or pretty-printed.
fn json_content() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        json_value()
            .prop_filter("`null` means no content", |v| !v.is_null())
            .prop_flat_map(|v| {
                let compact = serde_json::to_vec(&v).expect("a Value serialises");
                let pretty = serde_json::to_vec_pretty(&v).expect("a Value serialises");
                select(vec![compact, pretty])
            }),
    ]
}

fn any_content() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_content(),
        vec(any::<u8>(), 0..32),
        Just(b"null".to_vec()),
        Just(b" {} ".to_vec()),
    ]
}

fn message(
    channel: impl Strategy<Value = Channel>,
    content: impl Strategy<Value = Vec<u8>>,
    meta: impl Strategy<Value = BTreeMap<String, String>>,
) -> impl Strategy<Value = Message> {
    (
        (version(), any::<String>(), kind(), channel, any::<bool>()),
        (any::<String>(), any::<String>(), any::<u64>(), content),
        (meta, any::<String>(), any::<u64>()),
    )
        .prop_map(
            |(
                (version, id, kind, channel, ephemeral),
                (source, destination, timestamp, content),
                (meta, server_id, server_timestamp),
            )| Message {
                version,
                id,
                kind,
                channel,
                ephemeral,
                source,
                destination,
                timestamp,
                content,
                meta,
                server_id,
                server_timestamp,
            },
        )
}

fn any_meta() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map(any::<String>(), any::<String>(), 0..5)
}

/// Meta for v2: no reserved names, but maybe the hoisted ones and v1's `chatType`/`module`, with
/// spellings that do or do not name the message's channel/kind.
fn v2_meta() -> impl Strategy<Value = BTreeMap<String, String>> {
    const RESERVED: [&str; 4] = ["createdAt", "serverId", "serverTimestamp", "category"];
    let spelling = || {
        prop_oneof![
            select(vec![
                "chat",
                "Individual",
                "",
                "group",
                "GROUP",
                "bot",
                "text",
                "attachment",
                "notification",
                "Server_Ack",
                "client_ack",
                "CUSTOM",
                "message",
                "state",
            ])
            .prop_map(str::to_owned),
            any::<String>(),
        ]
    };
    let hoisted = select(vec![
        "type",
        "contentType",
        "action",
        "chatid",
        "chatType",
        "module",
    ]);
    (
        btree_map(
            any::<String>().prop_filter("reserved", |k| !RESERVED.contains(&k.as_str())),
            any::<String>(),
            0..4,
        ),
        vec((hoisted, spelling()), 0..4),
    )
        .prop_map(|(mut meta, hoisted)| {
            meta.extend(hoisted.into_iter().map(|(k, v)| (k.to_owned(), v)));
            meta
        })
}

/// How the crate docs say a v2 round trip changes a message: the version is the encoding's,
/// meta records the spellings written in `head`, and v2.0 drops `ephemeral`.
fn after_v2(msg: &Message, enc: Encoding) -> Message {
    let names_channel = |name: &str| match name.to_ascii_lowercase().as_str() {
        "" | "chat" | "individual" => Channel::Individual,
        "group" => Channel::Group,
        _ => Channel::Other,
    };
    let names_kind = |name: &str| name.parse().unwrap_or(MessageType::Message);
    let mut out = msg.clone();
    let client_spelling = ["type", "chatType", "module"]
        .iter()
        .filter_map(|key| msg.meta.get(*key))
        .find(|t| names_channel(t) == msg.channel);
    let chat_type = match client_spelling {
        Some(t) => t.clone(),
        None => match msg.channel {
            Channel::Individual => "chat",
            Channel::Group => "group",
            Channel::Other | Channel::Unknown => "other",
        }
        .to_owned(),
    };
    let content_type = match msg.meta.get("contentType") {
        Some(t) if names_kind(t) == msg.kind => t.clone(),
        _ => msg.kind.as_str().to_owned(),
    };
    out.meta.insert("type".to_owned(), chat_type);
    out.meta.insert("contentType".to_owned(), content_type);
    if enc == Encoding::V2_1 {
        out.version = 2.1;
        let system = matches!(
            msg.kind,
            MessageType::ServerAck | MessageType::ClientAck | MessageType::Notification
        ) || msg.meta.get("action").is_some_and(|a| a == "state");
        let category = if system { "system" } else { "user" };
        out.meta.insert("category".to_owned(), category.to_owned());
    } else {
        out.version = 2.0;
        out.ephemeral = false;
    }
    out
}

/// A chat-type spelling that names `channel`.
fn spelling_of(channel: Channel) -> BoxedStrategy<String> {
    match channel {
        Channel::Individual => select(vec!["chat", "Chat", "individual", "INDIVIDUAL", ""])
            .prop_map(str::to_owned)
            .boxed(),
        Channel::Group => select(vec!["group", "Group", "GROUP"])
            .prop_map(str::to_owned)
            .boxed(),
        Channel::Other | Channel::Unknown => any::<String>()
            .prop_filter("names another channel", |s| {
                !["", "chat", "individual", "group"].contains(&s.to_ascii_lowercase().as_str())
            })
            .boxed(),
    }
}

/// v1 frames in the lossless set: the seven keys always, `text`/`action`/`state` maybe, all
/// strings, `module` naming the same channel as `chatType`.
fn v1_frame() -> impl Strategy<Value = Value> {
    text_channel()
        .prop_flat_map(|channel| (spelling_of(channel), spelling_of(channel)))
        .prop_flat_map(|(chat_type, module)| {
            (
                (
                    any::<String>(),
                    any::<String>(),
                    any::<String>(),
                    any::<String>(),
                ),
                prop_oneof![
                    any::<String>(),
                    select(vec!["text", "notification", "CLIENT_ACK", "custom"])
                        .prop_map(str::to_owned),
                ],
                (
                    proptest::option::of(any::<String>()),
                    proptest::option::of(any::<String>()),
                    proptest::option::of(any::<String>()),
                ),
                Just((chat_type, module)),
            )
        })
        .prop_map(
            |((id, from, to, chat_id), kind, (text, action, state), (chat_type, module))| {
                let mut frame = serde_json::json!({
                    "msgId": id, "from": from, "to": to, "chatId": chat_id, "type": kind,
                    "chatType": chat_type, "module": module,
                });
                for (key, value) in [("text", text), ("action", action), ("state", state)] {
                    if let Some(value) = value {
                        frame[key] = Value::String(value);
                    }
                }
                frame
            },
        )
}

proptest! {
    #[test]
    fn v3_round_trips_every_message(msg in message(channel(), any_content(), any_meta())) {
        let back = decode_binary(&encode_binary(&msg), &LIMITS).unwrap();
        prop_assert_eq!(back, msg);
    }

    #[test]
    fn internal_json_round_trips_every_message(msg in message(channel(), any_content(), any_meta())) {
        let json = serde_json::to_string(&msg).unwrap();
        let back: Message = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, msg);
    }

    #[test]
    fn v2_round_trips_json_messages(
        msg in message(text_channel(), json_content(), v2_meta()),
        enc in select(vec![Encoding::V2_0, Encoding::V2_1]),
    ) {
        let frame = encode_text(&msg, enc);
        let back = decode_text(&frame, &LIMITS).unwrap();
        prop_assert_eq!(&back, &after_v2(&msg, enc));
        // What v2 reads back writes the identical frame.
        prop_assert_eq!(encode_text(&back, enc), frame);
    }

    #[test]
    fn v1_frames_round_trip(frame in v1_frame()) {
        let msg = decode_text(&frame.to_string(), &LIMITS).unwrap();
        let out: Value = serde_json::from_str(&encode_text(&msg, Encoding::V1)).unwrap();
        prop_assert_eq!(out, frame);
    }

    /// Whatever a text decoder accepts can be forwarded to a client of any version.
    #[test]
    fn accepted_text_frames_re_encode_in_every_encoding(frame in json_frame()) {
        if let Ok(msg) = decode_text(&frame, &LIMITS) {
            for enc in [Encoding::V1, Encoding::V2_0, Encoding::V2_1] {
                let text = encode_text(&msg, enc);
                prop_assert!(decode_text(&text, &LIMITS).is_ok(), "{}", text);
            }
            prop_assert!(decode_binary(&encode_binary(&msg), &LIMITS).is_ok());
            let json = serde_json::to_string(&msg).unwrap();
            prop_assert_eq!(serde_json::from_str::<Message>(&json).unwrap(), msg);
        }
    }
}

/// JSON objects built from the keys the decoders look at, with values of any type: they reach
/// deep into the decoders, where arbitrary strings would stop at the JSON parser.
fn json_frame() -> impl Strategy<Value = String> {
    let keys = || {
        select(vec![
            "_v",
            "id",
            "head",
            "meta",
            "body",
            "msgId",
            "to",
            "from",
            "text",
            "type",
            "chatType",
            "module",
            "chatId",
            "chatid",
            "action",
            "state",
            "contentType",
            "ephemeral",
            "createdAt",
            "serverId",
            "serverTimestamp",
        ])
    };
    let version = prop_oneof![
        Just(Value::from(2.1)),
        Just(Value::from("2.0")),
        Just(Value::from(1)),
        json_value(),
    ];
    (
        btree_map(keys(), json_value(), 0..6),
        btree_map(keys(), json_value(), 0..6),
        btree_map(keys(), json_value(), 0..4),
        proptest::option::of(version),
        any::<String>(),
    )
        .prop_map(|(top, head, meta, version, id)| {
            let mut frame: serde_json::Map<String, Value> =
                top.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            frame.insert("id".to_owned(), Value::String(id.clone()));
            frame.insert("msgId".to_owned(), Value::String(id));
            let object = |m: BTreeMap<&str, Value>| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            };
            frame.insert("head".to_owned(), object(head));
            frame.insert("meta".to_owned(), object(meta));
            if let Some(version) = version {
                frame.insert("_v".to_owned(), version);
            }
            Value::Object(frame).to_string()
        })
}
