//! Devices, conversations and sequences as users see them (PROTOCOL §7): every device of a
//! recipient is owed every message of its conversations until that device acks it.

use samvad_protocol::MessageType;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::groups::create_group;
use crate::support::{TestApp, call, chat, group_chat, text_of};

fn place(m: &samvad_protocol::Message) -> (String, String) {
    let get = |k: &str| m.meta.get(k).cloned().unwrap_or_default();
    (get("conv"), get("seq"))
}

#[tokio::test]
async fn one_devices_ack_never_ends_anothers_duty() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let phone = app.device("bob", "phone").await;
    let laptop = app.device("bob", "laptop").await;
    let mut a = app.connect(&alice, "text", true).await;
    for i in 1..=3 {
        a.send(&chat(&format!("m-{i}"), "alice", "bob", &format!("#{i}")))
            .await;
        a.message().await;
    }

    // The phone reads all three, in order, each naming its place, and acks them.
    let mut p = app.connect(&phone, "text", false).await;
    for i in 1..=3 {
        let got = p.message().await;
        assert_eq!(text_of(&got), format!("#{i}"));
        assert_eq!(place(&got), ("chat:alice".into(), i.to_string()));
        p.client_ack(&got).await;
    }
    p.quiet().await;
    p.close().await;

    // The laptop still gets them: its duty is its own.
    let mut l = app.connect(&laptop, "binary", false).await;
    for i in 1..=3 {
        let got = l.message().await;
        assert_eq!(place(&got), ("chat:alice".into(), i.to_string()));
    }
    // A cumulative ack ends them all at once.
    l.ack_upto("chat:alice", 3).await;
    l.quiet().await;
    l.close().await;

    let mut p = app.connect(&phone, "text", false).await;
    p.quiet().await;
    let mut l = app.connect(&laptop, "text", false).await;
    l.quiet().await;
    app.stop().await;
}

#[tokio::test]
async fn a_device_that_acks_and_reconnects_at_once_is_not_sent_it_again() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let phone = app.device("bob", "phone").await;
    let mut a = app.connect(&alice, "text", true).await;
    let mut p = app.connect(&phone, "text", false).await;
    for i in 1..=5 {
        a.send(&chat(&format!("r-{i}"), "alice", "bob", &format!("#{i}")))
            .await;
        a.message().await;
        let got = p.message().await;
        assert_eq!(text_of(&got), format!("#{i}"));
        // Acks by id and cumulative, as clients do.
        if i % 2 == 0 {
            p.ack_upto("chat:alice", i).await;
        } else {
            p.client_ack(&got).await;
        }
    }
    // Straight back, as a phone does when its network changes: no pause for the acks.
    p.close().await;
    let mut p = app.connect(&phone, "text", false).await;
    p.quiet().await;
    app.stop().await;
}

#[tokio::test]
async fn both_sides_of_a_chat_share_one_sequence() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut a = app.connect(&alice, "text", false).await;
    let mut b = app.connect(&bob, "text", false).await;
    a.send(&chat("a-1", "alice", "bob", "hi")).await;
    assert_eq!(place(&b.message().await), ("chat:alice".into(), "1".into()));
    b.send(&chat("b-1", "bob", "alice", "hello")).await;
    assert_eq!(place(&a.message().await), ("chat:bob".into(), "2".into()));
    a.send(&chat("a-2", "alice", "bob", "how are you")).await;
    assert_eq!(place(&b.message().await), ("chat:alice".into(), "3".into()));
    a.quiet().await;

    // v2 writes the seq as a JSON number.
    let mut raw = app.connect(&bob, "text", false).await;
    let Some(Ok(Frame::Text(text))) = futures_util::StreamExt::next(&mut raw.ws).await else {
        panic!("bob expected a text frame");
    };
    let v: Value = serde_json::from_str(text.as_str()).unwrap();
    assert_eq!(v["meta"]["seq"], json!(1));
    assert_eq!(v["meta"]["conv"], "chat:alice");

    // The three were written live, once each: the raw connection caught up on them instead.
    let metrics = app.metrics().await;
    let live = "samvad_delivery_latency_seconds_count 3";
    assert!(metrics.contains(live), "{live} in:\n{metrics}");
    app.stop().await;
}

#[tokio::test]
async fn a_device_sees_its_users_other_devices_messages_only_when_it_asks() {
    let app = TestApp::spawn().await;
    let phone = app.device("alice", "phone").await;
    let laptop = app.device("alice", "laptop").await;
    let bob = app.user("bob").await;
    let mut b = app.connect(&bob, "text", false).await;
    let mut synced = app.connect_synced(&laptop).await;
    let mut plain = app.connect(&laptop, "text", false).await;
    let mut p = app.connect_synced(&phone).await;

    p.send(&chat("m-1", "alice", "bob", "from my phone")).await;
    assert_eq!(text_of(&b.message().await), "from my phone");
    let mine = synced.message().await;
    assert_eq!(mine.source, "alice");
    assert_eq!(mine.destination, "bob");
    assert_eq!(place(&mine), ("chat:bob".into(), "1".into()));
    b.send(&chat("b-1", "bob", "alice", "got it")).await;
    assert_eq!(text_of(&synced.message().await), "got it");
    assert_eq!(
        text_of(&plain.message().await),
        "got it",
        "without sync=true, none of alice's own"
    );
    assert_eq!(
        text_of(&p.message().await),
        "got it",
        "never the device's own message back"
    );
    synced.quiet().await;
    plain.quiet().await;
    p.quiet().await;

    // On connect, the same: the backlog holds alice's own message only for a synced device.
    synced.close().await;
    plain.close().await;
    let mut again = app.connect_synced(&laptop).await;
    assert_eq!(text_of(&again.message().await), "from my phone");
    assert_eq!(text_of(&again.message().await), "got it");
    again.quiet().await;
    app.stop().await;
}

#[tokio::test]
async fn a_group_is_one_conversation_with_its_notices_in_sequence() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let id = create_group(&app, &alice, "g", &["bob"]).await;
    let conv = format!("group:{id}");
    let mut a = app.connect(&alice, "text", true).await;
    let mut b = app.connect(&bob, "text", false).await;
    let created = b.message().await;
    assert_eq!(created.kind, MessageType::Notification);
    assert_eq!(place(&created), (conv.clone(), "1".into()));
    a.send(&group_chat("g-1", "alice", &id, "hello group"))
        .await;
    assert_eq!(place(&b.message().await), (conv.clone(), "2".into()));

    // Carol joins later: she sees the group from her joining on, not what came before.
    let (status, _) = call(
        app.as_user(
            reqwest::Method::POST,
            &format!("/v1.0/groups/{id}/members"),
            &alice,
        )
        .json(&json!({"members": ["carol"]})),
    )
    .await;
    assert_eq!(status, 200);
    a.send(&group_chat("g-2", "alice", &id, "welcome carol"))
        .await;
    let mut c = app.connect(&carol, "text", false).await;
    let added = c.message().await;
    assert_eq!(added.meta.get("action").map(String::as_str), Some("add"));
    assert_eq!(place(&added), (conv.clone(), "3".into()));
    let welcome = c.message().await;
    assert_eq!(text_of(&welcome), "welcome carol");
    assert_eq!(place(&welcome), (conv, "4".into()));
    c.quiet().await;
    app.stop().await;
}
