//! The MQTT door: MQTT 3.1.1 and 5, over TCP (`SAMVAD_MQTT_LISTEN`) and over WebSocket
//! (`/mqtt`, subprotocol `mqtt`), packets read and written by `rmqtt-codec`.
//!
//! A client logs in with its username and its access key as the password; its client id names
//! the device (empty: the key's device). Topics, in the style of chat21, with `{app}` from
//! `SAMVAD_MQTT_APP`:
//!
//! - publish a 1:1 message to `apps/{app}/users/{me}/{peer}/messages/outgoing`, a group message
//!   to `apps/{app}/users/{me}/groups/{group}/messages/outgoing`;
//! - receive on `apps/{app}/users/{me}/{peer}/messages/clientadded` and
//!   `apps/{app}/users/{me}/groups/{group}/messages/clientadded`: every message of that
//!   conversation, the user's own from other devices included.
//!
//! The payload is the message as the WebSocket carries it: v2.1 JSON, or v3 protobuf for an
//! MQTT 5 client that connects with the user property `format` = `binary`. A QoS 1 PUBLISH is
//! acked (PUBACK) once the message is durable; the client's PUBACK of a delivery acks it for
//! its device. A QoS 0 subscription takes messages at most once: they count as acked once
//! written. Subscriptions and publishes outside the user's own tree, retained messages and
//! QoS 2 are refused per packet (SUBACK failure, MQTT 5 PUBACK reason codes); where MQTT 3.1.1
//! has no way to refuse a PUBLISH, the connection closes. A device's state is its cursors, not
//! its subscriptions: CONNACK never says a session is present, a client subscribes after each
//! connect, and is then sent everything its device has not acked.

use std::collections::HashMap;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message as Frame, WebSocket};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::SinkExt;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use rmqtt_codec::{error::DecodeError as PacketError, v3, v5};
use samvad_protocol::Channel;
use samvad_store::Conv;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};

use crate::session::{Door, End, Idle, Refused, Session, Takes, Wants, Why, Window};
use crate::{Format, Gateway, Item, Via};

/// Deliveries in flight (sent at QoS 1, not yet PUBACKed) at most, whatever the client allows.
const IN_FLIGHT: usize = 256;
/// Keep-alive for a client that asks for none (0): it is closed after this long of silence.
const QUIET: Duration = Duration::from_secs(600);
/// Room for a PUBLISH's topic and headers beside its payload.
const PACKET_OVERHEAD: usize = 1024;

/// A connection's bytes: a TCP stream, or MQTT packets in WebSocket binary frames.
pub(crate) enum Wire {
    Tcp(TcpStream),
    WebSocket(Box<WebSocket>),
}

impl Wire {
    /// Reads more bytes into `buf`; 0 when the client closed. Cancel-safe.
    async fn read_more(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            Self::Tcp(stream) => stream.read_buf(buf).await,
            Self::WebSocket(socket) => loop {
                match socket.recv().await {
                    None | Some(Ok(Frame::Close(_))) | Some(Err(_)) => return Ok(0),
                    Some(Ok(Frame::Binary(bytes))) if !bytes.is_empty() => {
                        buf.extend_from_slice(&bytes);
                        return Ok(bytes.len());
                    }
                    Some(Ok(_)) => {}
                }
            },
        }
    }

    async fn write_all(&mut self, bytes: Bytes) -> std::io::Result<()> {
        match self {
            Self::Tcp(stream) => stream.write_all(&bytes).await,
            Self::WebSocket(socket) => socket
                .send(Frame::Binary(bytes))
                .await
                .map_err(std::io::Error::other),
        }
    }

    async fn shutdown(&mut self) {
        match self {
            Self::Tcp(stream) => {
                let _ = stream.shutdown().await;
            }
            Self::WebSocket(socket) => {
                let _ = socket.close().await;
            }
        }
    }
}

/// One packet from the client, whichever version it speaks.
pub(crate) enum Input {
    Publish(Box<Publish>),
    PubAck(NonZeroU16),
    Subscribe {
        packet_id: NonZeroU16,
        filters: Vec<(ByteString, QoS)>,
    },
    Unsubscribe {
        packet_id: NonZeroU16,
        filters: Vec<ByteString>,
    },
    Ping,
    Disconnect,
    /// A packet a client may not send here (a second CONNECT, QoS 2's PUBREL, …).
    Unexpected,
}

enum Codec {
    V3(v3::Codec),
    V5(v5::Codec),
}

impl Codec {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Input>, PacketError> {
        Ok(match self {
            Self::V3(codec) => codec.decode(buf)?.map(|(packet, _)| match packet {
                v3::Packet::Publish(p) => Input::Publish(p),
                v3::Packet::PublishAck { packet_id } => Input::PubAck(packet_id),
                v3::Packet::Subscribe {
                    packet_id,
                    topic_filters,
                } => Input::Subscribe {
                    packet_id,
                    filters: topic_filters,
                },
                v3::Packet::Unsubscribe {
                    packet_id,
                    topic_filters,
                } => Input::Unsubscribe {
                    packet_id,
                    filters: topic_filters,
                },
                v3::Packet::PingRequest => Input::Ping,
                v3::Packet::Disconnect => Input::Disconnect,
                _ => Input::Unexpected,
            }),
            Self::V5(codec) => codec.decode(buf)?.map(|(packet, _)| match packet {
                v5::Packet::Publish(p) => Input::Publish(p),
                v5::Packet::PublishAck(ack) => Input::PubAck(ack.packet_id),
                v5::Packet::Subscribe(s) => Input::Subscribe {
                    packet_id: s.packet_id,
                    filters: s
                        .topic_filters
                        .into_iter()
                        .map(|(f, o)| (f, o.qos))
                        .collect(),
                },
                v5::Packet::Unsubscribe(u) => Input::Unsubscribe {
                    packet_id: u.packet_id,
                    filters: u.topic_filters,
                },
                v5::Packet::PingRequest => Input::Ping,
                v5::Packet::Disconnect(_) => Input::Disconnect,
                _ => Input::Unexpected,
            }),
        })
    }
}

/// The topics of one user.
#[derive(Clone)]
struct Tree {
    /// `apps/{app}/users/{me}/`
    root: String,
    user: String,
}

impl Tree {
    /// The topic `conv`'s messages reach this user on.
    fn incoming(&self, conv: &Conv) -> String {
        match conv {
            Conv::Group(id) => format!("{}groups/{id}/messages/clientadded", self.root),
            Conv::Direct { low, high } => {
                let peer = if *low == self.user { high } else { low };
                format!("{}{peer}/messages/clientadded", self.root)
            }
        }
    }

    /// Where a message published to `topic` goes: (channel, destination).
    fn outgoing(&self, topic: &str) -> Option<(Channel, String)> {
        let rest = topic.strip_prefix(&self.root)?;
        let levels: Vec<&str> = rest.split('/').collect();
        match levels.as_slice() {
            ["groups", group, "messages", "outgoing"] if !group.is_empty() => {
                Some((Channel::Group, (*group).to_owned()))
            }
            [peer, "messages", "outgoing"] if !peer.is_empty() => {
                Some((Channel::Individual, (*peer).to_owned()))
            }
            _ => None,
        }
    }

    /// Whether the user may subscribe to `filter`: only within their own tree.
    fn may_subscribe(&self, filter: &str) -> bool {
        filter.starts_with(&self.root) && !filter.starts_with("$share/")
    }
}

/// A client's subscriptions, with the QoS granted, in its user's tree. Shared with the session
/// (by pointer, as what the client takes now) until the next SUBSCRIBE or UNSUBSCRIBE
/// replaces them.
struct Subscriptions {
    tree: Tree,
    filters: Vec<(String, QoS)>,
}

impl Subscriptions {
    /// The QoS a message on `topic` is sent at; `None` when no subscription names it.
    fn granted(&self, topic: &str) -> Option<QoS> {
        self.filters
            .iter()
            .filter(|(filter, _)| matches(filter, topic))
            .map(|(_, qos)| *qos)
            .max_by_key(|qos| u8::from(*qos))
    }

    /// The same tree with `filters`.
    fn with(&self, filters: Vec<(String, QoS)>) -> Arc<Self> {
        Arc::new(Self {
            tree: self.tree.clone(),
            filters,
        })
    }
}

impl Takes for Subscriptions {
    fn takes(&self, conv: &Conv) -> bool {
        self.granted(&self.tree.incoming(conv)).is_some()
    }
}

/// Whether `topic` matches the subscription `filter` (`+` one level, `#` the rest).
fn matches(filter: &str, topic: &str) -> bool {
    let mut topic = topic.split('/');
    for level in filter.split('/') {
        match (level, topic.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (want, Some(got)) if want == got => {}
            _ => return false,
        }
    }
    topic.next().is_none()
}

pub(crate) struct MqttDoor {
    wire: Wire,
    buf: BytesMut,
    codec: Codec,
    format: Format,
    /// Closes the client after a silence: 1.5 times the keep-alive it asked for.
    idle: Idle,
    slow_client: Duration,
    subscriptions: Arc<Subscriptions>,
    /// Deliveries sent at QoS 1 and not yet PUBACKed, and where each stored one is.
    in_flight: HashMap<NonZeroU16, Option<(Conv, u64)>>,
    /// At most this many in flight.
    receive_max: usize,
    next_id: u16,
}

impl MqttDoor {
    fn v5(&self) -> bool {
        matches!(self.codec, Codec::V5(_))
    }

    fn tree(&self) -> &Tree {
        &self.subscriptions.tree
    }

    fn packet_id(&mut self) -> NonZeroU16 {
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if let Some(id) = NonZeroU16::new(self.next_id)
                && !self.in_flight.contains_key(&id)
            {
                return id;
            }
        }
    }

    fn encode(&mut self, packet: Packet, out: &mut BytesMut) {
        let result = match (&mut self.codec, packet) {
            (Codec::V3(codec), Packet::V3(p)) => codec.encode(p, out),
            (Codec::V5(codec), Packet::V5(p)) => codec.encode(p, out),
            _ => unreachable!("packets are made for the connection's version"),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot encode an MQTT packet");
        }
    }

    /// Sends one packet.
    async fn reply(&mut self, session: &Session, packet: Packet) -> Result<(), End> {
        let mut out = BytesMut::new();
        self.encode(packet, &mut out);
        self.send(session, out).await
    }

    async fn send(&mut self, session: &Session, out: BytesMut) -> Result<(), End> {
        if out.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(self.slow_client, self.wire.write_all(out.freeze())).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::ClientClosed),
            Err(_) => Err(session.too_slow()),
        }
    }

    async fn publish(&mut self, session: &mut Session, publish: Box<Publish>) -> Result<(), End> {
        let ingress = session.gateway.ingress(Via::Mqtt);
        if publish.qos == QoS::ExactlyOnce || publish.retain {
            ingress.count_refusal("mqtt_unsupported");
            return Err(End::Close(Why::Malformed));
        }
        let Some((channel, destination)) = self.tree().outgoing(&publish.topic) else {
            ingress.count_refusal("mqtt_topic");
            return self
                .refuse(
                    session,
                    &publish,
                    format!(
                        "publish to {}{{peer}}/messages/outgoing or {}groups/{{group}}/messages/outgoing",
                        self.tree().root,
                        self.tree().root
                    ),
                    v5::PublishAckReason::NotAuthorized,
                )
                .await;
        };
        let limits = *ingress.limits();
        let decoded = match self.format {
            Format::Text => std::str::from_utf8(&publish.payload)
                .map_err(|e| samvad_protocol::DecodeError::Json(e.to_string()))
                .and_then(|text| samvad_protocol::decode_text(text, &limits)),
            Format::Binary => samvad_protocol::decode_binary(&publish.payload, &limits),
        };
        let decoded = decoded.map(|mut m| {
            if m.destination.is_empty() {
                m.destination.clone_from(&destination);
                m.channel = channel;
            }
            m
        });
        if let Ok(m) = &decoded
            && (m.destination != destination || m.channel != channel)
        {
            ingress.count_refusal("mqtt_topic");
            let error = format!(
                "the topic names {destination}, the message {}",
                m.destination
            );
            return self
                .refuse(
                    session,
                    &publish,
                    error,
                    v5::PublishAckReason::TopicNameInvalid,
                )
                .await;
        }
        match session.submit(decoded).await {
            Ok(_) => {
                let Some(packet_id) = publish.packet_id else {
                    return Ok(());
                };
                let ack = if self.v5() {
                    Packet::V5(v5::Packet::PublishAck(v5::PublishAck {
                        packet_id,
                        reason_code: v5::PublishAckReason::Success,
                        properties: Vec::new(),
                        reason_string: None,
                    }))
                } else {
                    Packet::V3(v3::Packet::PublishAck { packet_id })
                };
                self.reply(session, ack).await
            }
            Err(Refused::Flood) => Err(End::Close(Why::Flood)),
            Err(Refused::TooLarge) => Err(End::Close(Why::TooLarge)),
            Err(Refused::Message {
                error,
                forbidden,
                retry,
                ..
            }) => {
                let reason = if forbidden {
                    v5::PublishAckReason::NotAuthorized
                } else if retry {
                    v5::PublishAckReason::QuotaExceeded
                } else {
                    v5::PublishAckReason::PayloadFormatInvalid
                };
                self.refuse(session, &publish, error, reason).await
            }
        }
    }

    /// Refuses a PUBLISH: with its reason in a PUBACK (MQTT 5, QoS 1); MQTT 3.1.1, and QoS 0,
    /// have no way to say no but closing the connection.
    async fn refuse(
        &mut self,
        session: &Session,
        publish: &Publish,
        error: String,
        reason: v5::PublishAckReason,
    ) -> Result<(), End> {
        let (true, Some(packet_id)) = (self.v5(), publish.packet_id) else {
            tracing::info!(user = %self.tree().user, topic = %publish.topic, %error, "MQTT publish refused; closing");
            return Err(End::Close(Why::Malformed));
        };
        let ack = v5::PublishAck {
            packet_id,
            reason_code: reason,
            properties: Vec::new(),
            reason_string: Some(error.into()),
        };
        self.reply(session, Packet::V5(v5::Packet::PublishAck(ack)))
            .await
    }

    async fn subscribe(
        &mut self,
        session: &mut Session,
        packet_id: NonZeroU16,
        filters: Vec<(ByteString, QoS)>,
    ) -> Result<(), End> {
        let mut subscriptions = self.subscriptions.filters.clone();
        let mut granted = Vec::with_capacity(filters.len());
        for (filter, qos) in filters {
            if self.tree().may_subscribe(&filter) {
                let qos = if qos == QoS::AtMostOnce {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                };
                subscriptions.retain(|(f, _)| f != &*filter);
                subscriptions.push((filter.to_string(), qos));
                granted.push(Some(qos));
            } else {
                session
                    .gateway
                    .ingress(Via::Mqtt)
                    .count_refusal("mqtt_topic");
                granted.push(None);
            }
        }
        self.subscriptions = self.subscriptions.with(subscriptions);
        let packet = if self.v5() {
            Packet::V5(v5::Packet::SubscribeAck(v5::SubscribeAck {
                packet_id,
                properties: Vec::new(),
                reason_string: None,
                status: granted
                    .into_iter()
                    .map(|g| match g {
                        Some(QoS::AtMostOnce) => v5::SubscribeAckReason::GrantedQos0,
                        Some(_) => v5::SubscribeAckReason::GrantedQos1,
                        None => v5::SubscribeAckReason::NotAuthorized,
                    })
                    .collect(),
            }))
        } else {
            Packet::V3(v3::Packet::SubscribeAck {
                packet_id,
                status: granted
                    .into_iter()
                    .map(|g| match g {
                        Some(qos) => v3::SubscribeReturnCode::Success(qos),
                        None => v3::SubscribeReturnCode::Failure,
                    })
                    .collect(),
            })
        };
        self.reply(session, packet).await?;
        // What the device is owed in the conversations it now takes.
        session.rescan();
        Ok(())
    }
}

enum Packet {
    V3(v3::Packet),
    V5(v5::Packet),
}

impl Door for MqttDoor {
    type Input = Input;

    async fn read(&mut self) -> Result<Input, End> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(input)) => return Ok(input),
                Ok(None) => {}
                Err(PacketError::MaxSizeExceeded { .. }) => return Err(End::Close(Why::TooLarge)),
                Err(_) => return Err(End::Close(Why::Malformed)),
            }
            let read = tokio::select! {
                read = self.wire.read_more(&mut self.buf) => read,
                () = self.idle.expired() => return Err(End::Close(Why::Idle)),
            };
            self.idle.active();
            if let Ok(0) | Err(_) = read {
                return Err(End::ClientClosed);
            }
        }
    }

    async fn handle(&mut self, session: &mut Session, input: Input) -> Result<(), End> {
        match input {
            Input::Publish(publish) => self.publish(session, publish).await,
            Input::PubAck(packet_id) => {
                if let Some(Some((conv, seq))) = self.in_flight.remove(&packet_id) {
                    session.ack_upto(&conv, seq).await?;
                }
                Ok(())
            }
            Input::Subscribe { packet_id, filters } => {
                self.subscribe(session, packet_id, filters).await
            }
            Input::Unsubscribe { packet_id, filters } => {
                let mut subscriptions = self.subscriptions.filters.clone();
                subscriptions.retain(|(f, _)| !filters.iter().any(|g| **g == **f));
                self.subscriptions = self.subscriptions.with(subscriptions);
                let packet = if self.v5() {
                    Packet::V5(v5::Packet::UnsubscribeAck(v5::UnsubscribeAck {
                        packet_id,
                        properties: Vec::new(),
                        reason_string: None,
                        status: vec![v5::UnsubscribeAckReason::Success; filters.len()],
                    }))
                } else {
                    Packet::V3(v3::Packet::UnsubscribeAck { packet_id })
                };
                self.reply(session, packet).await
            }
            Input::Ping => {
                let packet = if self.v5() {
                    Packet::V5(v5::Packet::PingResponse)
                } else {
                    Packet::V3(v3::Packet::PingResponse)
                };
                self.reply(session, packet).await?;
                session.pinged().await;
                Ok(())
            }
            Input::Disconnect => Err(End::ClientClosed),
            Input::Unexpected => Err(End::Close(Why::Malformed)),
        }
    }

    async fn write(&mut self, session: &mut Session, items: &[Arc<Item>]) -> Result<(), End> {
        let mut out = BytesMut::new();
        // Stored messages written at QoS 0: acked for the device once written.
        let mut taken: HashMap<Conv, u64> = HashMap::new();
        for item in items {
            let conv = match &item.place {
                Some((conv, _)) => conv.clone(),
                None => Conv::of(&item.message),
            };
            let topic = self.tree().incoming(&conv);
            let Some(qos) = self.subscriptions.granted(&topic) else {
                continue;
            };
            session.written(item);
            let packet_id = if qos == QoS::AtLeastOnce {
                let id = self.packet_id();
                self.in_flight.insert(id, item.place.clone());
                Some(id)
            } else {
                if let Some((conv, seq)) = &item.place {
                    taken.insert(conv.clone(), *seq);
                }
                None
            };
            let payload = match item.frame(self.format) {
                Frame::Text(text) => Bytes::from(text),
                Frame::Binary(bytes) => bytes,
                _ => continue,
            };
            let publish = Publish {
                dup: false,
                retain: false,
                qos,
                topic: topic.into(),
                packet_id,
                payload,
                properties: self.v5().then(Default::default),
            };
            let packet = if self.v5() {
                Packet::V5(v5::Packet::Publish(Box::new(publish)))
            } else {
                Packet::V3(v3::Packet::Publish(Box::new(publish)))
            };
            self.encode(packet, &mut out);
        }
        self.send(session, out).await?;
        for (conv, seq) in taken {
            session.ack_upto(&conv, seq).await?;
        }
        Ok(())
    }

    fn window(&self) -> Window {
        Window {
            room: self.receive_max.saturating_sub(self.in_flight.len()),
            takes: Some(Arc::clone(&self.subscriptions) as Arc<dyn Takes>),
        }
    }

    async fn close(mut self, end: End) {
        if let (End::Close(why), true) = (end, self.v5()) {
            let reason = match why {
                Why::Restarting => v5::DisconnectReasonCode::ServerShuttingDown,
                Why::Idle => v5::DisconnectReasonCode::KeepAliveTimeout,
                Why::TooSlow | Why::Busy => v5::DisconnectReasonCode::ServerBusy,
                Why::LoggedOut | Why::KeyExpired => v5::DisconnectReasonCode::NotAuthorized,
                Why::Flood => v5::DisconnectReasonCode::MessageRateTooHigh,
                Why::TooLarge => v5::DisconnectReasonCode::PacketTooLarge,
                Why::Malformed => v5::DisconnectReasonCode::ProtocolError,
            };
            let mut disconnect = v5::Disconnect::new(reason);
            disconnect.reason_string = Some(why.text().into());
            let mut out = BytesMut::new();
            self.encode(Packet::V5(v5::Packet::Disconnect(disconnect)), &mut out);
            let _ = tokio::time::timeout(Duration::from_secs(2), self.wire.write_all(out.freeze()))
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.wire.shutdown()).await;
    }
}

/// Serves one MQTT client connection: its CONNECT, then the session.
pub(crate) async fn serve(gateway: Gateway, mut wire: Wire) {
    let settings = &gateway.ctx.settings;
    let max = settings.max_message_bytes + PACKET_OVERHEAD;
    let mut buf = BytesMut::with_capacity(1024);
    // The CONNECT, within the time a request head has.
    let first = async {
        let version = loop {
            if let Some(version) = VersionCodec.decode(&mut buf)? {
                break version;
            }
            if wire.read_more(&mut buf).await.unwrap_or(0) == 0 {
                return Ok(None);
            }
        };
        let mut codec = match version {
            ProtocolVersion::MQTT3 => Codec::V3(v3::Codec::new(max as u32)),
            ProtocolVersion::MQTT5 => Codec::V5(v5::Codec::new(max as u32, max as u32)),
        };
        loop {
            if let Some(connect) = codec_connect(&mut codec, &mut buf)? {
                return Ok::<_, PacketError>(Some((codec, connect)));
            }
            if wire.read_more(&mut buf).await.unwrap_or(0) == 0 {
                return Ok(None);
            }
        }
    };
    let (codec, connect) = match tokio::time::timeout(settings.request_head, first).await {
        Ok(Ok(Some(found))) => found,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "not an MQTT CONNECT");
            gateway.ingress(Via::Mqtt).count_refusal("malformed");
            return wire.shutdown().await;
        }
        Ok(Ok(None)) | Err(_) => return wire.shutdown().await,
    };
    let mut door = MqttDoor {
        wire,
        buf,
        codec,
        format: Format::Text,
        idle: Idle::new(QUIET),
        slow_client: settings.slow_client,
        // Whose tree, once the CONNECT is accepted.
        subscriptions: Arc::new(Subscriptions {
            tree: Tree {
                root: String::new(),
                user: String::new(),
            },
            filters: Vec::new(),
        }),
        in_flight: HashMap::new(),
        receive_max: IN_FLIGHT,
        next_id: 0,
    };
    if let Some(registration) = door.connect(&gateway, connect).await {
        let wants = Wants {
            sync: true,
            presence: false,
        };
        crate::session::run(gateway, registration, door, Via::Mqtt, wants).await;
    }
}

/// A CONNECT, as either version reads it.
struct Connect {
    client_id: String,
    username: Option<String>,
    password: Option<Bytes>,
    keep_alive: u16,
    receive_max: Option<u16>,
    binary: bool,
}

/// The CONNECT at the start of `buf`, once it is all there; an error for any other packet.
fn codec_connect(codec: &mut Codec, buf: &mut BytesMut) -> Result<Option<Connect>, PacketError> {
    let connect = match codec {
        Codec::V3(c) => match c.decode(buf)? {
            None => return Ok(None),
            Some((v3::Packet::Connect(c), _)) => Connect {
                client_id: c.client_id.to_string(),
                username: c.username.map(|u| u.to_string()),
                password: c.password,
                keep_alive: c.keep_alive,
                receive_max: None,
                binary: false,
            },
            Some(_) => return Err(PacketError::InvalidProtocol),
        },
        Codec::V5(c) => match c.decode(buf)? {
            None => return Ok(None),
            Some((v5::Packet::Connect(c), _)) => Connect {
                binary: c
                    .user_properties
                    .iter()
                    .any(|(k, v)| &**k == "format" && &**v == "binary"),
                client_id: c.client_id.to_string(),
                username: c.username.map(|u| u.to_string()),
                password: c.password,
                keep_alive: c.keep_alive,
                receive_max: c.receive_max.map(NonZeroU16::get),
            },
            Some(_) => return Err(PacketError::InvalidProtocol),
        },
    };
    Ok(Some(connect))
}

impl MqttDoor {
    /// Checks the CONNECT's credentials and client id and answers CONNACK; the connection's
    /// place in the gateway if it was accepted.
    async fn connect(
        &mut self,
        gateway: &Gateway,
        connect: Connect,
    ) -> Option<crate::Registration> {
        let creds = samvad_auth::Credentials {
            user: connect.username.clone(),
            key: connect
                .password
                .as_deref()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default(),
            subprotocol: None,
        };
        let accepted = if connect.username.is_none() || creds.key.is_empty() {
            Err(Refusal::BadCredentials)
        } else {
            match gateway.ctx.gate.authenticate(&creds).await {
                Ok(access)
                    if connect.client_id.is_empty() || connect.client_id == access.who.device =>
                {
                    Ok(access)
                }
                Ok(_) => Err(Refusal::ClientId),
                Err(e) if e.status.is_server_error() => Err(Refusal::Unavailable),
                Err(_) => Err(Refusal::BadCredentials),
            }
        };
        let registration = accepted.and_then(|access| {
            gateway
                .register(access, Via::Mqtt)
                .map_err(|_| Refusal::TooManyConnections)
        });
        let settings = &gateway.ctx.settings;
        let mut out = BytesMut::new();
        match &registration {
            Ok(r) => {
                let who = &r.access.who;
                self.subscriptions = Arc::new(Subscriptions {
                    tree: Tree {
                        root: format!("apps/{}/users/{}/", settings.mqtt_app, who.user),
                        user: who.user.clone(),
                    },
                    filters: Vec::new(),
                });
                if connect.binary {
                    self.format = Format::Binary;
                }
                if connect.keep_alive > 0 {
                    let limit = Duration::from_millis(u64::from(connect.keep_alive) * 1500);
                    self.idle.set_limit(limit);
                }
                if let Some(max) = connect.receive_max {
                    self.receive_max = usize::from(max).min(IN_FLIGHT);
                }
                let packet = if self.v5() {
                    Packet::V5(v5::Packet::ConnectAck(Box::new(v5::ConnectAck {
                        max_qos: QoS::AtLeastOnce,
                        retain_available: false,
                        shared_subscription_available: false,
                        subscription_identifiers_available: false,
                        max_packet_size: Some(
                            (settings.max_message_bytes + PACKET_OVERHEAD) as u32,
                        ),
                        assigned_client_id: connect
                            .client_id
                            .is_empty()
                            .then(|| who.device.clone().into()),
                        ..v5::ConnectAck::default()
                    })))
                } else {
                    Packet::V3(v3::Packet::ConnectAck(v3::ConnectAck {
                        return_code: v3::ConnectAckReason::ConnectionAccepted,
                        session_present: false,
                    }))
                };
                self.encode(packet, &mut out);
            }
            Err(refusal) => {
                if let Some(label) = refusal.label() {
                    gateway.ingress(Via::Mqtt).count_refusal(label);
                }
                let packet = if self.v5() {
                    Packet::V5(v5::Packet::ConnectAck(Box::new(v5::ConnectAck {
                        reason_code: refusal.v5(),
                        ..v5::ConnectAck::default()
                    })))
                } else {
                    Packet::V3(v3::Packet::ConnectAck(v3::ConnectAck {
                        return_code: refusal.v3(),
                        session_present: false,
                    }))
                };
                self.encode(packet, &mut out);
            }
        }
        let sent = tokio::time::timeout(self.slow_client, self.wire.write_all(out.freeze())).await;
        match (registration, sent) {
            (Ok(r), Ok(Ok(()))) => Some(r),
            _ => {
                let _ = tokio::time::timeout(Duration::from_secs(2), self.wire.shutdown()).await;
                None
            }
        }
    }
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    BadCredentials,
    ClientId,
    Unavailable,
    TooManyConnections,
}

impl Refusal {
    /// The label it is counted under (one connection too many is counted by
    /// `Gateway::register`, which refuses it).
    fn label(self) -> Option<&'static str> {
        match self {
            Self::BadCredentials => Some("bad_credentials"),
            Self::ClientId => Some("mqtt_client_id"),
            Self::Unavailable => Some("unavailable"),
            Self::TooManyConnections => None,
        }
    }

    fn v3(self) -> v3::ConnectAckReason {
        match self {
            Self::BadCredentials => v3::ConnectAckReason::BadUserNameOrPassword,
            Self::ClientId => v3::ConnectAckReason::IdentifierRejected,
            Self::Unavailable | Self::TooManyConnections => {
                v3::ConnectAckReason::ServiceUnavailable
            }
        }
    }

    fn v5(self) -> v5::ConnectAckReason {
        match self {
            Self::BadCredentials => v5::ConnectAckReason::BadUserNameOrPassword,
            Self::ClientId => v5::ConnectAckReason::ClientIdentifierNotValid,
            Self::Unavailable => v5::ConnectAckReason::ServerUnavailable,
            Self::TooManyConnections => v5::ConnectAckReason::QuotaExceeded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_mqtt_says() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("a/b/c", "a/b/c"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(!matches("a/b/c/d", "a/b/c"));
        assert!(!matches("a/x/c", "a/b/c"));
    }

    #[test]
    fn a_user_publishes_and_subscribes_only_in_their_own_tree() {
        let tree = Tree {
            root: "apps/samvad/users/alice/".into(),
            user: "alice".into(),
        };
        assert_eq!(
            tree.outgoing("apps/samvad/users/alice/bob/messages/outgoing"),
            Some((Channel::Individual, "bob".into()))
        );
        assert_eq!(
            tree.outgoing("apps/samvad/users/alice/groups/g1/messages/outgoing"),
            Some((Channel::Group, "g1".into()))
        );
        assert_eq!(
            tree.outgoing("apps/samvad/users/bob/alice/messages/outgoing"),
            None
        );
        assert!(tree.may_subscribe("apps/samvad/users/alice/#"));
        assert!(!tree.may_subscribe("apps/samvad/users/+/#"));
        assert!(!tree.may_subscribe("#"));
        assert_eq!(
            tree.incoming(&Conv::direct("bob", "alice")),
            "apps/samvad/users/alice/bob/messages/clientadded"
        );
        assert_eq!(
            tree.incoming(&Conv::group("g1")),
            "apps/samvad/users/alice/groups/g1/messages/clientadded"
        );
    }
}
