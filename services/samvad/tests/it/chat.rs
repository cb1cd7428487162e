//! One-to-one chat as users see it: encodings, acks, redelivery, replay, several connections.

use samvad_protocol::{Channel, MessageType};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::support::{Seen, TestApp, chat, text_of};

#[tokio::test]
async fn a_binary_sender_reaches_text_receivers_in_their_encodings() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let mut a = app.connect(&alice, "binary", true).await;
    let mut b = app.connect(&bob, "text", false).await;
    let mut c_raw = app.connect(&carol, "text", false).await;

    a.send(&chat("m-1", "alice", "bob", "hi bob")).await;
    let ack = a.message().await;
    assert_eq!(ack.kind, MessageType::ServerAck);

    let got = b.message().await;
    assert_eq!(got.kind, MessageType::Message);
    assert_eq!(got.source, "alice");
    assert_eq!(got.destination, "bob");
    assert_eq!(text_of(&got), "hi bob");
    assert_eq!(got.server_id, ack.server_id);

    // A v1 client reads the flat keys the server writes beside head.
    a.send(&chat("m-2", "alice", "carol", "hi carol")).await;
    a.message().await;
    let Some(Ok(Frame::Text(raw))) = futures_util::StreamExt::next(&mut c_raw.ws).await else {
        panic!("carol expected a text frame");
    };
    let v: Value = serde_json::from_str(raw.as_str()).unwrap();
    assert_eq!(v["msgId"], "m-2");
    assert_eq!(v["from"], "alice");
    assert_eq!(v["to"], "carol");
    assert_eq!(v["text"], "hi carol");
    assert_eq!(v["_v"], 2.1);
    app.stop().await;
}

#[tokio::test]
async fn the_server_ack_is_exact() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    app.login("bob").await;
    let mut a = app.connect(&alice, "text", true).await;
    let mut sent = chat("m-1", "mallory", "bob", "hello");
    sent.timestamp = 1_700_000_000_000;
    a.send(&sent).await;
    let ack = a.message().await;
    assert_eq!(ack.kind, MessageType::ServerAck);
    assert_eq!(ack.id, "m-1");
    assert_eq!(ack.source, "server");
    assert_eq!(
        ack.destination, "alice",
        "the ack goes to the authenticated sender"
    );
    assert!(ack.ephemeral);
    assert_eq!(ack.channel, Channel::Individual);
    assert!(!ack.server_id.is_empty());
    assert!(ack.server_timestamp >= 1_700_000_000_000);
    app.stop().await;
}

#[tokio::test]
async fn source_is_always_the_authenticated_user() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut a = app.connect(&alice, "text", false).await;
    let mut b = app.connect(&bob, "text", false).await;
    a.send(&chat("m-1", "carol", "bob", "it's carol, honest"))
        .await;
    assert_eq!(b.message().await.source, "alice");
    app.stop().await;
}

#[tokio::test]
async fn unacked_messages_come_again_until_the_client_acks() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut a = app.connect(&alice, "text", true).await;
    let mut b = app.connect(&bob, "text", false).await;
    a.send(&chat("m-1", "alice", "bob", "one")).await;
    a.message().await;
    assert_eq!(b.message().await.id, "m-1");
    b.close().await; // no ack

    let mut b = app.connect(&bob, "text", false).await;
    let again = b.message().await;
    assert_eq!(again.id, "m-1", "redelivered after reconnect");
    b.client_ack(&again).await;
    b.quiet().await;
    b.close().await;

    let mut b = app.connect(&bob, "text", false).await;
    b.quiet().await;
    app.stop().await;
}

#[tokio::test]
async fn an_offline_user_gets_everything_in_order_on_connect() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut a = app.connect(&alice, "text", true).await;
    for i in 0..30 {
        a.send(&chat(&format!("m-{i}"), "alice", "bob", &format!("#{i}")))
            .await;
        assert_eq!(a.message().await.kind, MessageType::ServerAck);
    }
    let mut b = app.connect(&bob, "binary", false).await;
    for i in 0..30 {
        let m = b.message().await;
        assert_eq!(text_of(&m), format!("#{i}"));
        b.client_ack(&m).await;
    }
    b.quiet().await;
    app.stop().await;
}

#[tokio::test]
async fn messages_sent_during_a_replay_follow_it_in_order() {
    let app = TestApp::spawn_with(&[("SAMVAD_RATE_BURST", "100000")]).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut a = app.connect(&alice, "text", true).await;
    for i in 0..300 {
        a.send(&chat(&format!("m-{i}"), "alice", "bob", &format!("#{i}")))
            .await;
        a.message().await;
    }
    let mut b = app.connect(&bob, "text", false).await;
    for i in 300..320 {
        a.send(&chat(&format!("m-{i}"), "alice", "bob", &format!("#{i}")))
            .await;
        a.message().await;
    }
    for i in 0..320 {
        assert_eq!(text_of(&b.message().await), format!("#{i}"));
    }
    b.quiet().await;
    app.stop().await;
}

#[tokio::test]
async fn a_resent_id_from_the_same_sender_is_delivered_once() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut a = app.connect(&alice, "text", true).await;
    let mut b = app.connect(&bob, "text", false).await;
    let m = chat("m-1", "alice", "bob", "once");
    a.send(&m).await;
    a.message().await;
    a.send(&m).await;
    assert_eq!(
        a.message().await.kind,
        MessageType::ServerAck,
        "a re-send is acked again"
    );
    let got = b.message().await;
    b.client_ack(&got).await;
    b.quiet().await;
    app.stop().await;
}

/// Two connections with one access key are one device; a user's two devices are in `devices.rs`.
#[tokio::test]
async fn every_connection_of_a_device_receives_and_one_ack_ends_its_duty() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut a = app.connect(&alice, "text", true).await;
    let mut phone = app.connect(&bob, "text", false).await;
    let mut laptop = app.connect(&bob, "binary", false).await;
    a.send(&chat("m-1", "alice", "bob", "both")).await;
    a.message().await;
    let on_phone = phone.message().await;
    assert_eq!(laptop.message().await.id, "m-1");
    phone.client_ack(&on_phone).await;
    phone.quiet().await;
    laptop.close().await;
    let mut tablet = app.connect(&bob, "text", false).await;
    tablet.quiet().await;
    app.stop().await;
}

#[tokio::test]
async fn ping_gets_pong() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let mut a = app.connect(&alice, "text", true).await;
    a.send_raw(Frame::Text("ping".into())).await;
    assert!(matches!(a.next().await, Seen::Pong));
    app.stop().await;
}

#[tokio::test]
async fn typing_indicators_pass_through_and_are_not_kept() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let mut a = app.connect(&alice, "text", false).await;
    let mut c = app.connect(&carol, "text", false).await;
    let mut typing = chat("t-1", "alice", "bob", "");
    typing.ephemeral = true;
    typing.content = br#"{"typing":true}"#.to_vec();
    typing.meta.insert("action".into(), "typing".into());
    // Bob is offline: dropped, never replayed. Messages are handled in the order accepted, so
    // once carol has a later message, the typing indicator has been dealt with.
    a.send(&typing).await;
    a.send(&chat("m-c", "alice", "carol", "sync")).await;
    assert_eq!(c.message().await.id, "m-c");
    let mut b = app.connect(&bob, "text", false).await;
    b.quiet().await;
    typing.id = "t-2".into();
    a.send(&typing).await;
    let got = b.message().await;
    assert!(got.ephemeral);
    assert_eq!(got.meta.get("action").map(String::as_str), Some("typing"));
    app.stop().await;
}

#[tokio::test]
async fn every_door_and_outcome_is_counted_from_zero() {
    let app = TestApp::spawn().await;
    let metrics = app.metrics().await;
    for door in ["ws", "mqtt", "grpc", "rest"] {
        let line = format!("samvad_messages_accepted_total{{door=\"{door}\"}} 0");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
        let line = format!("samvad_accept_latency_seconds_count{{door=\"{door}\"}} 0");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    for outcome in ["live", "offline", "repeat", "ephemeral_dropped"] {
        let line = format!("samvad_deliveries_total{{outcome=\"{outcome}\"}} 0");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    // And counted on from there.
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut a = app.connect(&alice, "text", true).await;
    let mut b = app.connect(&bob, "text", false).await;
    a.send(&chat("z-1", "alice", "bob", "one")).await;
    assert_eq!(a.message().await.kind, MessageType::ServerAck);
    assert_eq!(text_of(&b.message().await), "one");
    let metrics = app.metrics().await;
    for line in [
        "samvad_messages_accepted_total{door=\"ws\"} 1",
        "samvad_deliveries_total{outcome=\"live\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    app.stop().await;
}
