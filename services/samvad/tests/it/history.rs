//! History and read state (PROTOCOL §7): the conversation list, pages of a conversation in both
//! formats, read receipts that move every device of the reader, and gap notices after
//! retention.

use std::time::Duration;

use base64::Engine;
use reqwest::Method;
use samvad_protocol::{Limits, Message, MessageType};
use serde_json::{Value, json};

use crate::groups::create_group;
use crate::support::{TestApp, User, call, chat, group_chat, text_of};

async fn page(app: &TestApp, user: &User, path: &str) -> (u16, Value) {
    call(app.as_user(Method::GET, path, user)).await
}

/// The texts and seqs of a page of text-encoded messages.
pub(crate) fn texts(body: &Value) -> Vec<(String, String)> {
    let limits = Limits { max_bytes: 1 << 20 };
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let m = samvad_protocol::decode_text(m.as_str().unwrap(), &limits).unwrap();
            (text_of(&m), m.meta["seq"].clone())
        })
        .collect()
}

fn receipt(id: &str, from: &str, to: &str, ids: &[&str]) -> Message {
    let mut m = chat(id, from, to, "");
    m.content = json!({ "ids": ids, "state": "READ" })
        .to_string()
        .into_bytes();
    m.meta.insert("action".into(), "state".into());
    m
}

#[tokio::test]
async fn history_pages_both_ways_in_both_formats_and_only_for_participants() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let mut a = app.connect(&alice, "text", true).await;
    // Bob's connection says when each message is stored (the ack says it is durable, on its
    // way to its conversation).
    let mut b = app.connect(&bob, "text", false).await;
    for i in 1..=7 {
        a.send(&chat(&format!("m-{i}"), "alice", "bob", &format!("#{i}")))
            .await;
        a.message().await;
        b.message().await;
    }
    let base = "/v1.0/conversations/chat:alice/messages";
    let (status, latest) = page(&app, &bob, &format!("{base}?limit=3")).await;
    assert_eq!(status, 200);
    let seqs = |v: &Value| texts(v).into_iter().map(|(_, s)| s).collect::<Vec<_>>();
    assert_eq!(seqs(&latest), ["5", "6", "7"], "the latest, oldest first");
    assert_eq!(latest["more"], true);
    let (_, older) = page(&app, &bob, &format!("{base}?limit=3&before=5")).await;
    assert_eq!(seqs(&older), ["2", "3", "4"]);
    let (_, oldest) = page(&app, &bob, &format!("{base}?limit=3&before=2")).await;
    assert_eq!(seqs(&oldest), ["1"]);
    assert_eq!(oldest["more"], false);
    let (_, newer) = page(&app, &bob, &format!("{base}?after=5")).await;
    assert_eq!(
        texts(&newer),
        [("#6".into(), "6".into()), ("#7".into(), "7".into())]
    );
    assert_eq!(newer["more"], false);

    // The sender's side names the conversation by its peer.
    let (_, mine) = page(
        &app,
        &alice,
        "/v1.0/conversations/chat:bob/messages?limit=1&format=binary",
    )
    .await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(mine["messages"][0].as_str().unwrap())
        .unwrap();
    let m = samvad_protocol::decode_binary(&bytes, &Limits { max_bytes: 1 << 20 }).unwrap();
    assert_eq!(
        (text_of(&m), m.meta["conv"].as_str(), m.meta["seq"].as_str()),
        ("#7".into(), "chat:bob", "7")
    );

    // An outsider sees nothing, and bad pages are refused with a reason.
    let (status, _) = page(&app, &carol, "/v1.0/conversations/chat:alice/messages").await;
    assert_eq!(status, 404, "carol has no chat with alice");
    for bad in ["?limit=0", "?limit=201", "?before=3&after=1", "?format=xml"] {
        let (status, body) = page(&app, &bob, &format!("{base}{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = page(&app, &bob, "/v1.0/conversations/nonsense/messages").await;
    assert_eq!(status, 404);

    // A late group member sees the group from their joining on.
    let id = create_group(&app, &alice, "g", &["bob"]).await;
    b.message().await;
    a.send(&group_chat("g-1", "alice", &id, "before carol"))
        .await;
    a.message().await;
    assert_eq!(text_of(&b.message().await), "before carol");
    let (status, _) = call(
        app.as_user(Method::POST, &format!("/v1.0/groups/{id}/members"), &alice)
            .json(&json!({"members": ["carol"]})),
    )
    .await;
    assert_eq!(status, 200);
    b.message().await;
    a.send(&group_chat("g-2", "alice", &id, "after carol"))
        .await;
    a.message().await;
    assert_eq!(text_of(&b.message().await), "after carol");
    let group_page = format!("/v1.0/conversations/group:{id}/messages");
    let (_, seen) = page(&app, &carol, &group_page).await;
    let seen: Vec<String> = texts(&seen).into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        seen,
        ["", "after carol"],
        "the notice of her joining, then what came after"
    );
    let (_, all) = page(&app, &bob, &group_page).await;
    assert_eq!(texts(&all).len(), 4, "created, before, added, after");
    app.stop().await;
}

#[tokio::test]
async fn reading_on_one_device_moves_every_device_and_the_unread_counts() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let phone = app.device("bob", "phone").await;
    let laptop = app.device("bob", "laptop").await;
    let mut a = app.connect(&alice, "text", true).await;
    let mut p = app.connect(&phone, "text", false).await;
    let mut l = app.connect(&laptop, "text", false).await;
    for i in 1..=3 {
        a.send(&chat(&format!("m-{i}"), "alice", "bob", &format!("#{i}")))
            .await;
        a.message().await;
        p.message().await;
        l.message().await;
    }
    let (_, list) = page(&app, &phone, "/v1.0/conversations").await;
    assert_eq!(
        list,
        json!([{"conv": "chat:alice", "type": "chat", "lastSeq": 3, "lastAt": list[0]["lastAt"], "readSeq": 0, "unread": 3}])
    );

    // The phone reads the first two: alice gets the receipt, the laptop the new read position.
    p.send(&receipt("r-1", "bob", "alice", &["m-1", "m-2"]))
        .await;
    let got = a.chat_message().await;
    assert_eq!(got.meta.get("action").map(String::as_str), Some("state"));
    let moved = l.message().await;
    assert_eq!(moved.kind, MessageType::Notification);
    assert_eq!(moved.meta.get("action").map(String::as_str), Some("read"));
    assert_eq!(
        (moved.meta["conv"].as_str(), moved.meta["seq"].as_str()),
        ("chat:alice", "2")
    );
    p.quiet().await;
    let (_, list) = page(&app, &laptop, "/v1.0/conversations").await;
    assert_eq!(
        (list[0]["readSeq"].clone(), list[0]["unread"].clone()),
        (json!(2), json!(1))
    );

    // Alice's own list: her messages are not unread to her, and neither is bob's receipt,
    // stored in the conversation though it is (seq 4).
    let (_, hers) = page(&app, &alice, "/v1.0/conversations").await;
    assert_eq!(
        (
            hers[0]["conv"].clone(),
            hers[0]["lastSeq"].clone(),
            hers[0]["unread"].clone()
        ),
        (json!("chat:bob"), json!(4), json!(0))
    );
    app.stop().await;
}

#[tokio::test]
async fn what_retention_removed_before_a_device_acked_it_is_a_gap_notice() {
    let app = TestApp::spawn_with(&[("SAMVAD_RETENTION_SECS", "1")]).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut a = app.connect(&alice, "text", true).await;
    for i in 1..=3 {
        a.send(&chat(&format!("m-{i}"), "alice", "bob", "soon gone"))
            .await;
        a.message().await;
    }
    // Wait until retention has removed them (it runs every second).
    let mut gone = false;
    for _ in 0..100 {
        let (_, body) = page(&app, &alice, "/v1.0/conversations/chat:bob/messages").await;
        if body["messages"].as_array().is_some_and(Vec::is_empty) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "retention never removed the messages");

    let mut b = app.connect(&bob, "text", false).await;
    let gap = b.message().await;
    assert_eq!(gap.kind, MessageType::Notification);
    assert_eq!(gap.meta.get("action").map(String::as_str), Some("gap"));
    assert_eq!(
        (
            gap.meta["conv"].as_str(),
            gap.meta["from"].as_str(),
            gap.meta["to"].as_str()
        ),
        ("chat:alice", "1", "3")
    );
    b.quiet().await;
    // What comes next takes the next seq: retention never gives one back.
    a.send(&chat("m-4", "alice", "bob", "still here")).await;
    let next = b.message().await;
    assert_eq!(
        (text_of(&next), next.meta["seq"].as_str()),
        ("still here".into(), "4")
    );
    app.stop().await;
}
