//! One client, three servers: how a connection opens, subscribes, sends, and reads what comes
//! back, for Samvad's protocol and for the two peers.
//!
//! - **samvad**: `ws://ADDR/v1.0/wss/?ack=true&format=text` with headers `user`/`accesskey`;
//!   messages are v2.1 text (the protocol crate's encoder), the server acks each one once it is
//!   durable, and the client acks every message and notification it receives.
//! - **samvad-mqtt** and **samvad-grpc**: the same over Samvad's other doors (`mqtt.rs`,
//!   `grpc.rs`; the gRPC door's messages are v3 binary).
//! - **bun** (`deployment/bench/bun/server.js`): `ws://ADDR/?user=NAME` subscribes the
//!   connection to `u.NAME`; text frames `sub TOPIC` and `pub TOPIC PAYLOAD`; a recipient
//!   receives `PAYLOAD` as is.
//! - **nats**: nats-server's WebSocket listener speaking the NATS text protocol: `CONNECT` with
//!   `echo: false` (a publisher does not receive its own room messages), `SUB u.NAME 1`,
//!   `SUB r.ROOM 2`, `PUB SUBJECT LEN`, `MSG` in, `PONG` for every `PING`.
//!
//! A peer's payload is a JSON object the same size as Samvad's message body plus its id, so
//! every target moves comparable bytes. Message ids are `STEP.INTENDED_NS.SEQ`: any receiver,
//! in any worker process, reads the step and the intended send time from the id alone.

use std::str::FromStr as _;

use anyhow::Context as _;
use samvad_protocol::{Channel, Encoding, Message, MessageType};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::client::Request;

use crate::plan::{Dest, Layout, Target};

/// What a received frame means to the load generator.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// The server acked one of our messages (samvad).
    ServerAck(String),
    /// A message from another load user reached this one.
    Delivery(String),
    /// A delivery, with the client ack to send for it (MQTT: the PUBACK of its packet id).
    DeliveryAcked(String, Frame),
    /// Something the server sent on its own (a group notification): acked, not counted.
    System(String),
    /// The server refused something (samvad's error frame).
    Error(String),
    /// A frame to send back right away (NATS `PONG`).
    Reply(Frame),
}

/// Per-connection state: NATS frames may split or join protocol lines; MQTT's packets and
/// the PUBACKs awaited.
#[derive(Debug, Default)]
pub struct ConnState {
    buf: Vec<u8>,
    mqtt: crate::mqtt::MqttState,
}

pub struct Adapter {
    pub target: Target,
    layout: Layout,
    /// Samvad group ids, by room.
    groups: Vec<String>,
    /// The message body's text.
    text: String,
}

impl Adapter {
    pub fn new(target: Target, layout: Layout, groups: Vec<String>, payload_bytes: usize) -> Self {
        let text = "x".repeat(payload_bytes);
        Self {
            target,
            layout,
            groups,
            text,
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn request(&self, addr: &str, user: usize, key: &str) -> anyhow::Result<Request> {
        let name = self.layout.user_name(user);
        let url = match self.target {
            Target::Samvad => format!("ws://{addr}/v1.0/wss/?ack=true&format=text"),
            Target::SamvadMqtt => format!("ws://{addr}/mqtt"),
            Target::SamvadGrpc => anyhow::bail!("the gRPC door is not a WebSocket"),
            Target::Bun => format!("ws://{addr}/?user={name}"),
            Target::Nats => format!("ws://{addr}/"),
        };
        let mut request = url.into_client_request()?;
        let headers = request.headers_mut();
        match self.target {
            Target::Samvad => {
                headers.insert("user", name.parse().context("user name as a header")?);
                headers.insert("accesskey", key.parse().context("access key as a header")?);
            }
            Target::SamvadMqtt => {
                headers.insert("sec-websocket-protocol", "mqtt".parse()?);
            }
            Target::SamvadGrpc | Target::Bun | Target::Nats => {}
        }
        Ok(request)
    }

    /// Frames a connection sends as soon as it is open: its login and subscriptions.
    pub fn on_open(&self, user: usize, key: &str) -> Vec<Frame> {
        let room = (self.layout.rooms() > 0).then(|| self.layout.room_of(user));
        match self.target {
            Target::Samvad | Target::SamvadGrpc => Vec::new(),
            Target::SamvadMqtt => crate::mqtt::open(&self.layout.user_name(user), key),
            Target::Bun => room
                .map(|r| Frame::Text(format!("sub r.{}", self.layout.room_name(r)).into()))
                .into_iter()
                .collect(),
            Target::Nats => {
                let mut ops = String::from(
                    "CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false,\
                     \"name\":\"samvad-load\",\"lang\":\"rust\",\"version\":\"0\"}\r\n",
                );
                ops.push_str(&format!("SUB u.{} 1\r\n", self.layout.user_name(user)));
                if let Some(r) = room {
                    ops.push_str(&format!("SUB r.{} 2\r\n", self.layout.room_name(r)));
                }
                vec![Frame::Binary(ops.into_bytes().into())]
            }
        }
    }

    /// The message `from` sends to `dest` with id `id`.
    pub fn message(&self, state: &mut ConnState, from: usize, dest: &Dest, id: &str) -> Frame {
        let (channel, to, topic) = match *dest {
            Dest::User(u) => {
                let name = self.layout.user_name(u);
                (Channel::Individual, name.clone(), format!("u.{name}"))
            }
            Dest::Room(r) => (
                Channel::Group,
                self.groups.get(r).cloned().unwrap_or_default(),
                format!("r.{}", self.layout.room_name(r)),
            ),
        };
        let message = |to: &str| Message {
            version: 2.1,
            id: id.to_owned(),
            kind: MessageType::Message,
            channel,
            destination: to.to_owned(),
            content: format!("{{\"text\":\"{}\"}}", self.text).into_bytes(),
            ..Message::default()
        };
        let samvad = |to: &str| samvad_protocol::encode_text(&message(to), Encoding::V2_1);
        match self.target {
            Target::Samvad => Frame::Text(samvad(&to).into()),
            Target::SamvadGrpc => {
                Frame::Binary(samvad_protocol::encode_binary(&message(&to)).into())
            }
            Target::SamvadMqtt => {
                let from = self.layout.user_name(from);
                let to_topic = match channel {
                    Channel::Group => Err(to.as_str()),
                    _ => Ok(to.as_str()),
                };
                crate::mqtt::publish(&mut state.mqtt, &from, to_topic, id, samvad(&to))
            }
            Target::Bun => {
                Frame::Text(format!("pub {topic} {}", self.payload(from, &topic, id)).into())
            }
            Target::Nats => {
                let payload = self.payload(from, &topic, id);
                Frame::Binary(
                    format!("PUB {topic} {}\r\n{payload}\r\n", payload.len())
                        .into_bytes()
                        .into(),
                )
            }
        }
    }

    fn payload(&self, from: usize, topic: &str, id: &str) -> String {
        format!(
            "{{\"id\":\"{id}\",\"from\":\"{}\",\"to\":\"{topic}\",\"body\":{{\"text\":\"{}\"}}}}",
            self.layout.user_name(from),
            self.text
        )
    }

    /// The client ack for a received message (samvad's WebSocket and gRPC doors; MQTT's is
    /// its PUBACK).
    pub fn client_ack(&self, id: &str) -> Option<Frame> {
        let ack = || Message {
            version: 2.1,
            id: id.to_owned(),
            kind: MessageType::ClientAck,
            channel: Channel::Individual,
            destination: "server".into(),
            ..Message::default()
        };
        match self.target {
            Target::Samvad => Some(Frame::Text(
                samvad_protocol::encode_text(&ack(), Encoding::V2_1).into(),
            )),
            Target::SamvadGrpc => {
                Some(Frame::Binary(samvad_protocol::encode_binary(&ack()).into()))
            }
            Target::SamvadMqtt | Target::Bun | Target::Nats => None,
        }
    }

    /// The application-level keep-alive, if the target wants one (samvad closes a
    /// connection that sends nothing for two minutes; clients ping every 30 s).
    pub fn keepalive(&self) -> Option<Frame> {
        match self.target {
            Target::Samvad => Some(Frame::Text("ping".into())),
            Target::SamvadMqtt => Some(crate::mqtt::ping()),
            // HTTP/2 pings keep a gRPC connection alive.
            Target::SamvadGrpc | Target::Bun | Target::Nats => None,
        }
    }

    pub fn parse(&self, state: &mut ConnState, frame: &Frame, out: &mut Vec<Event>) {
        match self.target {
            Target::Samvad => {
                if let Frame::Text(t) = frame {
                    out.extend(parse_samvad(t.as_str()));
                }
            }
            Target::SamvadMqtt => {
                if let Frame::Binary(b) = frame {
                    crate::mqtt::parse(&mut state.mqtt, b, parse_samvad, out);
                }
            }
            Target::SamvadGrpc => {
                if let Frame::Binary(b) = frame {
                    out.push(crate::grpc::parse(b, |m| classify(m.id.clone(), m.kind)));
                }
            }
            Target::Bun => {
                if let Frame::Text(t) = frame {
                    out.extend(payload_id(t.as_str()).map(Event::Delivery));
                }
            }
            Target::Nats => match frame {
                Frame::Binary(b) => parse_nats(state, b, out),
                Frame::Text(t) => parse_nats(state, t.as_bytes(), out),
                _ => {}
            },
        }
    }
}

#[derive(Deserialize)]
struct SamvadFrame<'a> {
    #[serde(borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
    head: Option<SamvadHead<'a>>,
    #[serde(borrow)]
    error: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct SamvadHead<'a> {
    #[serde(rename = "contentType", borrow)]
    content_type: Option<std::borrow::Cow<'a, str>>,
}

/// Reads only the id and kind of a v2.1 frame (the codec's full decode costs several times
/// more, and the load generator must not be what limits a run).
fn parse_samvad(text: &str) -> Option<Event> {
    if text == "pong" {
        return None;
    }
    let frame: SamvadFrame<'_> = serde_json::from_str(text).ok()?;
    if let Some(error) = frame.error {
        return Some(Event::Error(error.into_owned()));
    }
    let id = frame.id?.into_owned();
    let kind = frame
        .head
        .and_then(|h| h.content_type)
        .and_then(|c| MessageType::from_str(&c).ok())
        .unwrap_or(MessageType::Message);
    Some(classify(id, kind))
}

/// A Samvad message by its id and kind: a server ack, a load message delivered (its id is
/// `STEP.INTENDED_NS.SEQ`), or something else the server sent.
fn classify(id: String, kind: MessageType) -> Event {
    match kind {
        MessageType::ServerAck => Event::ServerAck(id),
        MessageType::Message if id.split('.').count() == 3 => Event::Delivery(id),
        _ => Event::System(id),
    }
}

/// The id at the start of a peer payload: `{"id":"ID",...`.
fn payload_id(payload: &str) -> Option<String> {
    let rest = payload.strip_prefix("{\"id\":\"")?;
    rest.find('"').map(|end| rest[..end].to_owned())
}

/// Consumes whole NATS protocol lines (and `MSG` payloads) from the connection's buffer.
fn parse_nats(state: &mut ConnState, bytes: &[u8], out: &mut Vec<Event>) {
    state.buf.extend_from_slice(bytes);
    let mut at = 0;
    while let Some(eol) = find_crlf(&state.buf[at..]) {
        let line = &state.buf[at..at + eol];
        if let Some(args) = line.strip_prefix(b"MSG ") {
            // MSG <subject> <sid> [reply-to] <#bytes>
            let len = std::str::from_utf8(args)
                .ok()
                .and_then(|a| a.rsplit(' ').next())
                .and_then(|n| n.parse::<usize>().ok());
            let Some(len) = len else {
                at += eol + 2;
                continue;
            };
            let start = at + eol + 2;
            if state.buf.len() < start + len + 2 {
                break; // the payload is still coming
            }
            if let Ok(payload) = std::str::from_utf8(&state.buf[start..start + len]) {
                out.extend(payload_id(payload).map(Event::Delivery));
            }
            at = start + len + 2;
            continue;
        }
        if line == b"PING" {
            out.push(Event::Reply(Frame::Binary(b"PONG\r\n".to_vec().into())));
        } else if let Some(err) = line.strip_prefix(b"-ERR ") {
            out.push(Event::Error(String::from_utf8_lossy(err).into_owned()));
        }
        at += eol + 2;
    }
    state.buf.drain(..at);
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Scenario;

    fn layout() -> Layout {
        let mut l = Layout::new(Scenario::Fanout, 2, 10, None);
        l.prefix = "t-".into();
        l
    }

    #[test]
    fn samvad_frames_read_as_the_real_codec_writes_them() {
        let a = Adapter::new(Target::Samvad, layout(), vec!["g0".into(), "g1".into()], 16);
        let Frame::Text(sent) = a.message(&mut ConnState::default(), 3, &Dest::Room(1), "2.123.7")
        else {
            panic!("samvad sends text");
        };
        let limits = samvad_protocol::Limits { max_bytes: 1 << 20 };
        let m = samvad_protocol::decode_text(sent.as_str(), &limits).expect("valid v2.1");
        assert_eq!(m.channel, Channel::Group);
        assert_eq!(m.destination, "g1");
        m.validate_from_client()
            .expect("a message the server accepts");

        let delivered = samvad_protocol::encode_text(&m, Encoding::V2_1);
        assert_eq!(
            parse_samvad(&delivered),
            Some(Event::Delivery("2.123.7".into()))
        );
        let ack = samvad_protocol::encode_text(&m.server_ack(), Encoding::V2_1);
        assert_eq!(parse_samvad(&ack), Some(Event::ServerAck("2.123.7".into())));
        let note = Message {
            kind: MessageType::Notification,
            id: "n1".into(),
            ..m.clone()
        };
        let note = samvad_protocol::encode_text(&note, Encoding::V2_1);
        assert_eq!(parse_samvad(&note), Some(Event::System("n1".into())));
        assert_eq!(
            parse_samvad(r#"{"error":"rate limit exceeded","id":"1.2.3"}"#),
            Some(Event::Error("rate limit exceeded".into()))
        );
        assert_eq!(parse_samvad("pong"), None);

        let Some(Frame::Text(ack)) = a.client_ack("2.123.7") else {
            panic!("samvad acks");
        };
        let ack = samvad_protocol::decode_text(ack.as_str(), &limits).expect("valid ack");
        assert_eq!(ack.kind, MessageType::ClientAck);
    }

    #[test]
    fn bun_payloads_carry_the_id_first() {
        let a = Adapter::new(Target::Bun, layout(), Vec::new(), 16);
        let Frame::Text(t) = a.message(&mut ConnState::default(), 0, &Dest::User(1), "0.5.1")
        else {
            panic!("bun sends text");
        };
        let payload = t.as_str().splitn(3, ' ').nth(2).expect("pub topic payload");
        assert!(t.as_str().starts_with("pub u.t-u1 "));
        let mut out = Vec::new();
        a.parse(
            &mut ConnState::default(),
            &Frame::Text(payload.into()),
            &mut out,
        );
        assert_eq!(out, vec![Event::Delivery("0.5.1".into())]);
        assert_eq!(
            a.on_open(12, ""),
            vec![Frame::Text("sub r.t-r1".into())],
            "a member subscribes to its room"
        );
    }

    #[test]
    fn nats_lines_are_parsed_across_frames() {
        let a = Adapter::new(Target::Nats, layout(), Vec::new(), 4);
        let mut state = ConnState::default();
        let mut out = Vec::new();
        let payload = r#"{"id":"1.9.9","body":{}}"#;
        let stream = format!(
            "INFO {{}}\r\nPING\r\nMSG r.t-r0 2 {}\r\n{payload}\r\nMSG u.t-u1 1 {}\r\n{payload}\r\n",
            payload.len(),
            payload.len()
        );
        let (first, second) = stream.as_bytes().split_at(40);
        a.parse(&mut state, &Frame::Binary(first.to_vec().into()), &mut out);
        a.parse(&mut state, &Frame::Binary(second.to_vec().into()), &mut out);
        assert_eq!(out.len(), 3);
        assert!(matches!(out[0], Event::Reply(_)));
        assert_eq!(out[1], Event::Delivery("1.9.9".into()));
        assert_eq!(out[2], Event::Delivery("1.9.9".into()));
        assert!(state.buf.is_empty());
    }
}
