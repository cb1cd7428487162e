//! Samvad's MQTT door as a load client sees it (`--target samvad-mqtt`): MQTT 3.1.1 over a
//! WebSocket at `/mqtt`, packets written and read by `rmqtt-codec`, as the server's are.
//!
//! A connection logs in with its CONNECT (the user and their access key) and subscribes to
//! its whole tree at QoS 1; it publishes at QoS 1 to `…/{peer}/messages/outgoing` (or a
//! group's), and the PUBACK, sent once the message is durable, is its server ack. Each
//! delivery is acked with a PUBACK (the client ack).

use std::collections::HashMap;
use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v3;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_util::codec::{Decoder, Encoder};

use crate::adapter::Event;

/// The `{app}` of the server's topics (its default `SAMVAD_MQTT_APP`).
const APP: &str = "samvad";
/// The largest packet read; the server's own limit is what counts.
const MAX_PACKET: u32 = 1 << 20;

/// One connection's MQTT state: the packets read so far, and the ids of the messages whose
/// PUBACK is awaited, by packet id.
#[derive(Debug, Default)]
pub struct MqttState {
    buf: BytesMut,
    codec: Option<v3::Codec>,
    awaited: HashMap<u16, String>,
    last_packet_id: u16,
}

fn encode(packet: v3::Packet) -> Frame {
    let mut out = BytesMut::new();
    v3::Codec::new(MAX_PACKET)
        .encode(packet, &mut out)
        .expect("a client packet encodes");
    Frame::Binary(out.freeze())
}

/// CONNECT as `user` with its access key, then SUBSCRIBE to the user's whole tree.
pub fn open(user: &str, key: &str) -> Vec<Frame> {
    let connect = v3::Connect {
        clean_session: true,
        keep_alive: 60,
        username: Some(user.into()),
        password: Some(Bytes::from(key.to_owned())),
        ..v3::Connect::default()
    };
    let subscribe = v3::Packet::Subscribe {
        packet_id: NonZeroU16::MIN,
        topic_filters: vec![(
            format!("apps/{APP}/users/{user}/#").into(),
            QoS::AtLeastOnce,
        )],
    };
    vec![
        encode(v3::Packet::Connect(Box::new(connect))),
        encode(subscribe),
    ]
}

/// `payload`, message `id`, from `user` to `peer` (a user) or to group `group`, at QoS 1.
pub fn publish(
    state: &mut MqttState,
    user: &str,
    to: Result<&str, &str>,
    id: &str,
    payload: String,
) -> Frame {
    let topic = match to {
        Ok(peer) => format!("apps/{APP}/users/{user}/{peer}/messages/outgoing"),
        Err(group) => format!("apps/{APP}/users/{user}/groups/{group}/messages/outgoing"),
    };
    // 1 is the subscription's.
    state.last_packet_id = state.last_packet_id.checked_add(1).unwrap_or(2).max(2);
    let packet_id = NonZeroU16::new(state.last_packet_id).expect("not zero");
    state.awaited.insert(packet_id.get(), id.to_owned());
    encode(v3::Packet::Publish(Box::new(Publish {
        dup: false,
        retain: false,
        qos: QoS::AtLeastOnce,
        topic: topic.into(),
        packet_id: Some(packet_id),
        payload: payload.into(),
        properties: None,
    })))
}

pub fn ping() -> Frame {
    encode(v3::Packet::PingRequest)
}

/// Reads the packets in `bytes`: a PUBACK is the server ack of the message it names; a
/// PUBLISH is a delivery (read by `delivered`), answered with its PUBACK.
pub fn parse(
    state: &mut MqttState,
    bytes: &[u8],
    delivered: impl Fn(&str) -> Option<Event>,
    out: &mut Vec<Event>,
) {
    state.buf.extend_from_slice(bytes);
    let codec = state
        .codec
        .get_or_insert_with(|| v3::Codec::new(MAX_PACKET));
    loop {
        let packet = match codec.decode(&mut state.buf) {
            Ok(Some((packet, _))) => packet,
            Ok(None) => return,
            Err(e) => {
                out.push(Event::Error(format!("MQTT: {e}")));
                state.buf.clear();
                return;
            }
        };
        match packet {
            v3::Packet::PublishAck { packet_id } => {
                if let Some(id) = state.awaited.remove(&packet_id.get()) {
                    out.push(Event::ServerAck(id));
                }
            }
            v3::Packet::Publish(publish) => {
                let seen = std::str::from_utf8(&publish.payload)
                    .ok()
                    .and_then(&delivered);
                let ack = publish
                    .packet_id
                    .map(|packet_id| encode(v3::Packet::PublishAck { packet_id }));
                match (seen, ack) {
                    (Some(Event::Delivery(id)), Some(ack)) => {
                        out.push(Event::DeliveryAcked(id, ack));
                    }
                    (seen, ack) => out.extend(seen.into_iter().chain(ack.map(Event::Reply))),
                }
            }
            v3::Packet::ConnectAck(ack)
                if ack.return_code != v3::ConnectAckReason::ConnectionAccepted =>
            {
                out.push(Event::Error(format!("MQTT CONNACK {:?}", ack.return_code)));
            }
            v3::Packet::SubscribeAck { status, .. }
                if status
                    .iter()
                    .any(|s| matches!(s, v3::SubscribeReturnCode::Failure)) =>
            {
                out.push(Event::Error("MQTT SUBACK failure".into()));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packets(frame: &Frame) -> Vec<v3::Packet> {
        let Frame::Binary(bytes) = frame else {
            panic!("a binary frame");
        };
        let (mut buf, mut codec) = (BytesMut::from(&bytes[..]), v3::Codec::new(MAX_PACKET));
        let mut out = Vec::new();
        while let Some((packet, _)) = codec.decode(&mut buf).unwrap() {
            out.push(packet);
        }
        out
    }

    #[test]
    fn a_publish_is_acked_by_its_packet_id_and_a_delivery_is_answered() {
        let mut state = MqttState::default();
        let frame = publish(&mut state, "ann", Ok("bob"), "1.2.3", "{}".into());
        let [v3::Packet::Publish(p)] = &packets(&frame)[..] else {
            panic!("one PUBLISH");
        };
        assert_eq!(p.topic, "apps/samvad/users/ann/bob/messages/outgoing");
        let packet_id = p.packet_id.unwrap();
        let mut out = Vec::new();
        let puback = encode(v3::Packet::PublishAck { packet_id });
        let Frame::Binary(bytes) = puback else {
            unreachable!()
        };
        parse(&mut state, &bytes, |_| None, &mut out);
        assert_eq!(out, [Event::ServerAck("1.2.3".into())]);

        let delivery = encode(v3::Packet::Publish(Box::new(Publish {
            packet_id: NonZeroU16::new(9),
            ..p.as_ref().clone()
        })));
        let Frame::Binary(bytes) = delivery else {
            unreachable!()
        };
        out.clear();
        parse(
            &mut state,
            &bytes,
            |text| Some(Event::Delivery(text.into())),
            &mut out,
        );
        let [Event::DeliveryAcked(id, reply)] = &out[..] else {
            panic!("a delivery, with a PUBACK back: {out:?}");
        };
        assert_eq!(id, "{}");
        assert!(matches!(
            &packets(reply)[..],
            [v3::Packet::PublishAck { packet_id }] if packet_id.get() == 9
        ));
    }
}
