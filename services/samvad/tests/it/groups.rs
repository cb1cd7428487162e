//! Groups: the REST routes, fan-out, notifications and membership rules.

use reqwest::Method;
use samvad_protocol::{Channel, MessageType};
use serde_json::{Value, json};

use crate::support::{Seen, TestApp, User, call, group_chat, text_of};

pub(crate) async fn create_group(
    app: &TestApp,
    admin: &User,
    name: &str,
    members: &[&str],
) -> String {
    let (status, body) = call(
        app.as_user(Method::POST, "/v1.0/groups/", admin)
            .json(&json!({ "name": name, "members": members })),
    )
    .await;
    assert_eq!(status, 200);
    body["groupId"].as_str().unwrap().to_owned()
}

/// `DELETE /v1.0/groups/{gid}/members` by `by`, for `member`.
pub(crate) async fn remove_member(
    app: &TestApp,
    by: &User,
    gid: &str,
    member: &str,
) -> (u16, Value) {
    call(
        app.as_user(Method::DELETE, &format!("/v1.0/groups/{gid}/members"), by)
            .json(&json!({ "member": member })),
    )
    .await
}

#[tokio::test]
async fn a_group_message_reaches_every_member_but_the_sender() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let mut a = app.connect(&alice, "text", true).await;
    let mut b = app.connect(&bob, "text", false).await;
    let gid = create_group(&app, &alice, "friends", &["bob", "carol"]).await;

    // Everyone in the new group hears about it.
    let note = a.chat_message().await;
    assert_eq!(note.kind, MessageType::Notification);
    let note = b.message().await;
    assert_eq!(note.kind, MessageType::Notification);
    assert_eq!(note.destination, gid);
    assert_eq!(note.channel, Channel::Group);
    assert_eq!(note.meta.get("action").map(String::as_str), Some("add"));
    assert_eq!(note.meta.get("chatId"), Some(&gid));
    let content: Value = serde_json::from_slice(&note.content).unwrap();
    assert_eq!(content["added"], json!(["alice", "bob", "carol"]));
    b.client_ack(&note).await;

    a.send(&group_chat("g-1", "alice", &gid, "hello all")).await;
    assert_eq!(a.message().await.kind, MessageType::ServerAck);
    let got = b.message().await;
    assert_eq!(text_of(&got), "hello all");
    assert_eq!(got.destination, gid);
    assert_eq!(got.channel, Channel::Group);
    a.quiet().await;

    // Carol was offline: the notification and the message wait for her, in order.
    let mut c = app.connect(&carol, "binary", false).await;
    assert_eq!(c.message().await.kind, MessageType::Notification);
    assert_eq!(text_of(&c.message().await), "hello all");
    app.stop().await;
}

#[tokio::test]
async fn group_routes_follow_the_protocol() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let dave = app.user("dave").await;
    let gid = create_group(&app, &alice, "team", &["bob"]).await;

    let (_, list) = call(app.as_user(Method::GET, "/v1.0/groups/", &bob)).await;
    assert_eq!(list[0]["groupId"], gid);
    assert_eq!(list[0]["name"], "team");
    assert_eq!(
        list[0]["members"],
        json!([{"username": "alice", "role": "admin"}, {"username": "bob", "role": "user"}])
    );
    assert!(list[0].get("profilePic").is_some());

    let one = app
        .as_user(Method::GET, &format!("/v1.0/groups/{gid}"), &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    let outsider = app
        .as_user(Method::GET, &format!("/v1.0/groups/{gid}"), &dave)
        .send()
        .await
        .unwrap();
    assert_eq!(outsider.status(), 404);
    let body = outsider.json::<Value>().await.unwrap();
    assert_eq!(body["status"], json!(false), "{body}");
    assert!(body["error"].is_string(), "{body}");

    // A non-admin may not add or remove others, but may leave.
    let (status, _) = call(
        app.as_user(Method::POST, &format!("/v1.0/groups/{gid}/members"), &bob)
            .json(&json!({"members": ["dave"]})),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = remove_member(&app, &bob, &gid, "alice").await;
    assert_eq!(status, 403);

    let (_, body) = call(
        app.as_user(Method::POST, &format!("/v1.0/groups/{gid}/members"), &alice)
            .json(&json!({"members": ["dave"]})),
    )
    .await;
    assert_eq!(body, json!({"status": true}));

    // The last admin leaves: the longest-standing member takes over.
    let (_, body) = remove_member(&app, &alice, &gid, "alice").await;
    assert_eq!(body, json!({"status": true}));
    let (_, group) = call(app.as_user(Method::GET, &format!("/v1.0/groups/{gid}"), &bob)).await;
    assert_eq!(
        group["members"],
        json!([{"username": "bob", "role": "admin"}, {"username": "dave", "role": "user"}])
    );

    // Bob hears about each change: created, dave added, alice removed.
    let mut b = app.connect(&bob, "text", false).await;
    let mut actions = Vec::new();
    for _ in 0..3 {
        let m = b.message().await;
        let content: Value = serde_json::from_slice(&m.content).unwrap();
        actions.push((m.meta["action"].clone(), content));
    }
    assert_eq!(
        actions,
        vec![
            ("add".into(), json!({"added": ["alice", "bob"]})),
            ("add".into(), json!({"added": ["dave"]})),
            ("remove".into(), json!({"removed": ["alice"]})),
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn a_non_member_cannot_send_to_a_group() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let mallory = app.user("mallory").await;
    let gid = create_group(&app, &alice, "private", &[]).await;
    let mut m = app.connect(&mallory, "text", true).await;
    m.send(&group_chat("x-1", "mallory", &gid, "let me in"))
        .await;
    let error = m.error().await;
    assert_eq!(error["id"], "x-1");
    assert!(error["error"].as_str().unwrap().contains("not a member"));
    m.send(&group_chat("x-2", "mallory", "no-such-group", "hello?"))
        .await;
    assert!(
        m.error().await["error"]
            .as_str()
            .unwrap()
            .contains("unknown group")
    );
    let mut a = app.connect(&alice, "text", false).await;
    assert_eq!(a.message().await.kind, MessageType::Notification);
    assert!(
        a.try_next(std::time::Duration::from_millis(300))
            .await
            .is_none_or(|s| !matches!(s, Seen::Message(_)))
    );
    app.stop().await;
}

#[tokio::test]
async fn creating_a_group_with_unknown_users_is_refused() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let (status, body) = call(
        app.as_user(Method::POST, "/v1.0/groups/", &alice)
            .json(&json!({"name": "ghosts", "members": ["nobody"]})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "unknown users: nobody");
    app.stop().await;
}

#[tokio::test]
async fn a_group_cannot_grow_past_its_limit_nor_carry_a_picture_inline() {
    let app = TestApp::spawn_with(&[("SAMVAD_MAX_GROUP_MEMBERS", "3")]).await;
    let alice = app.user("alice").await;
    for name in ["bob", "carol", "dave"] {
        app.user(name).await;
    }
    let (status, body) = call(
        app.as_user(Method::POST, "/v1.0/groups/", &alice)
            .json(&json!({ "name": "big", "members": ["bob", "carol", "dave"] })),
    )
    .await;
    refused(status, &body, "at most 3 members");

    let gid = create_group(&app, &alice, "small", &["bob"]).await;
    let add = |members: Value| {
        call(
            app.as_user(Method::POST, &format!("/v1.0/groups/{gid}/members"), &alice)
                .json(&json!({ "members": members })),
        )
    };
    let (status, body) = add(json!(["carol", "dave"])).await;
    refused(status, &body, "at most 3 members");
    assert_eq!(add(json!(["bob", "carol"])).await.0, 200, "bob counts once");
    assert_eq!(add(json!(["dave"])).await.0, 400, "full");
    let (_, group) = call(app.as_user(Method::GET, &format!("/v1.0/groups/{gid}"), &alice)).await;
    assert_eq!(group["members"].as_array().unwrap().len(), 3);

    let (status, body) = call(
        app.as_user(Method::POST, "/v1.0/groups/", &alice)
            .json(&json!({ "name": "pic", "members": ["bob"], "profilePic": "x".repeat(1 << 20) })),
    )
    .await;
    refused(status, &body, "profilePic");
    app.stop().await;
}

/// A 400 whose error says `why`.
fn refused(status: u16, body: &Value, why: &str) {
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains(why), "{body}");
}

#[tokio::test]
async fn a_member_removed_while_offline_gets_everything_up_to_the_removal_and_nothing_after() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let mut a = app.connect(&alice, "text", true).await;
    let gid = create_group(&app, &alice, "club", &["bob", "carol"]).await;
    assert_eq!(a.message().await.meta["action"], "add");
    a.send(&group_chat("g-1", "alice", &gid, "before")).await;
    assert_eq!(a.message().await.kind, MessageType::ServerAck);
    let (status, _) = remove_member(&app, &alice, &gid, "bob").await;
    assert_eq!(status, 200);
    a.send(&group_chat("g-2", "alice", &gid, "after")).await;
    assert_eq!(a.chat_message().await.kind, MessageType::Notification);

    // Bob was offline throughout: he is owed the group up to the notice of his removal.
    let mut b = app.connect(&bob, "text", false).await;
    let created = b.message().await;
    assert_eq!(created.meta["action"], "add");
    assert_eq!(text_of(&b.message().await), "before");
    let removed = b.message().await;
    assert_eq!(removed.meta["action"], "remove");
    assert_eq!(removed.meta["seq"], "3");
    let content: Value = serde_json::from_slice(&removed.content).unwrap();
    assert_eq!(content["removed"], json!(["bob"]));
    b.quiet().await;

    // Until he acks it, a new connection is sent it again; then nothing.
    b.close().await;
    let mut b = app.connect(&bob, "text", false).await;
    for _ in 0..3 {
        let m = b.message().await;
        b.client_ack(&m).await;
    }
    b.quiet().await;
    b.close().await;
    let mut b = app.connect(&bob, "text", false).await;
    b.quiet().await;
    let (_, list) = call(app.as_user(Method::GET, "/v1.0/conversations", &bob)).await;
    assert_eq!(list, json!([]), "the group is gone from his list");
    let (status, _) = call(app.as_user(
        Method::GET,
        &format!("/v1.0/conversations/group:{gid}/messages"),
        &bob,
    ))
    .await;
    assert_eq!(status, 404);

    // Carol, still a member, gets all of it.
    let mut c = app.connect(&carol, "text", false).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let m = c.message().await;
        seen.push(m.meta.get("action").cloned().unwrap_or_else(|| text_of(&m)));
    }
    assert_eq!(seen, ["add", "before", "remove", "after"]);
    app.stop().await;
}

#[tokio::test]
async fn a_member_removed_and_added_again_while_connected_gets_only_their_own_parts() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut a = app.connect(&alice, "text", true).await;
    let mut b = app.connect(&bob, "text", false).await;
    let gid = create_group(&app, &alice, "club", &["bob"]).await;
    assert_eq!(a.message().await.meta["action"], "add");
    assert_eq!(b.message().await.meta["action"], "add");
    let (status, _) = remove_member(&app, &alice, &gid, "bob").await;
    assert_eq!(status, 200);
    assert_eq!(a.message().await.meta["action"], "remove");
    let removed = b.message().await;
    assert_eq!(removed.meta["action"], "remove");
    b.client_ack(&removed).await;

    a.send(&group_chat("g-1", "alice", &gid, "while bob is out"))
        .await;
    assert_eq!(a.message().await.kind, MessageType::ServerAck);
    let (status, _) = call(
        app.as_user(Method::POST, &format!("/v1.0/groups/{gid}/members"), &alice)
            .json(&json!({"members": ["bob"]})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(a.message().await.meta["action"], "add");
    a.send(&group_chat("g-2", "alice", &gid, "welcome back"))
        .await;

    // Bob's connection, whose part ended at the removal, follows the new one live.
    let added = b.message().await;
    assert_eq!(added.meta["action"], "add");
    assert_eq!(added.meta["seq"], "4");
    assert_eq!(text_of(&b.message().await), "welcome back");
    b.quiet().await;
    app.stop().await;
}
