//! Presence: a contact goes online and offline and the other side sees it, as a notice and at
//! `GET /v1.0/presence`; a stranger does not; a user who hides their presence is never shown.

use reqwest::Method;
use samvad_protocol::{Encoding, MessageType};
use serde_json::{Value, json};

use crate::support::{Client, TestApp, User, call, chat};

/// A message from `from` to `to`, so that they share a conversation.
async fn converse(app: &TestApp, from: &User, to: &str) {
    let frame = samvad_protocol::encode_text(&chat("hello", &from.name, to, "hi"), Encoding::V2_1);
    let (status, _) = call(
        app.as_user(Method::POST, "/v1.0/messages?format=text&ack=true", from)
            .json(&[frame]),
    )
    .await;
    assert_eq!(status, 201);
}

pub(crate) async fn presence_of(app: &TestApp, viewer: &User, users: &str) -> Value {
    let (status, body) = call(app.as_user(
        Method::GET,
        &format!("/v1.0/presence?users={users}"),
        viewer,
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The next presence notice `client` gets: (username, online, lastSeen).
pub(crate) async fn notice(client: &mut Client) -> (String, bool, Option<u64>) {
    loop {
        let m = client.chat_message().await;
        if m.kind == MessageType::Notification
            && m.meta.get("action").map(String::as_str) == Some("presence")
        {
            let content: Value = serde_json::from_slice(&m.content).unwrap();
            assert_eq!(
                m.meta["state"],
                if content["online"] == json!(true) {
                    "online"
                } else {
                    "offline"
                }
            );
            return (
                content["username"].as_str().unwrap().to_owned(),
                content["online"].as_bool().unwrap(),
                content["lastSeen"].as_u64(),
            );
        }
    }
}

#[tokio::test]
async fn a_contact_comes_and_goes_and_only_their_partners_see_it() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let stranger = app.user("stranger").await;
    converse(&app, &bob, "alice").await;
    let mut b = app.connect_presence(&bob).await;
    let mut s = app.connect_presence(&stranger).await;
    // Clients written for Vartalap do not ask, and are never sent a presence notice.
    let laptop = app.device("bob", "laptop").await;
    let mut plain = app.connect(&laptop, "text", false).await;
    assert_eq!(
        presence_of(&app, &bob, "alice").await,
        json!({ "alice": { "online": false, "lastSeen": null } })
    );

    let a = app.connect(&alice, "text", false).await;
    assert_eq!(notice(&mut b).await, ("alice".into(), true, None));
    assert_eq!(
        presence_of(&app, &bob, "alice,stranger,nobody").await,
        json!({ "alice": { "online": true, "lastSeen": null } }),
        "only partners' presence is told"
    );
    // A second device of hers changes nothing anyone sees.
    let tablet = app.device("alice", "tablet").await;
    let t = app.connect(&tablet, "text", false).await;
    t.close().await;
    a.close().await;
    let (who, online, last_seen) = notice(&mut b).await;
    assert_eq!((who.as_str(), online), ("alice", false));
    let last_seen = last_seen.expect("lastSeen with offline");
    assert_eq!(
        presence_of(&app, &bob, "alice").await,
        json!({ "alice": { "online": false, "lastSeen": last_seen } })
    );
    b.quiet().await;
    s.quiet().await;
    plain.quiet().await;
    assert_eq!(presence_of(&app, &stranger, "alice").await, json!({}));
    app.stop().await;
}

#[tokio::test]
async fn a_user_who_hides_their_presence_is_never_shown() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    converse(&app, &alice, "bob").await;
    let (status, _) = call(
        app.as_user(Method::PUT, "/v1.0/profile/", &alice)
            .json(&json!({ "showPresence": false })),
    )
    .await;
    assert_eq!(status, 200);
    let mut b = app.connect_presence(&bob).await;
    assert_eq!(b.chat_message().await.id, "hello");
    let a = app.connect(&alice, "text", false).await;
    assert_eq!(presence_of(&app, &bob, "alice").await, json!({}));
    a.close().await;
    // bob's own presence is his to show: alice sees it.
    assert_eq!(
        presence_of(&app, &alice, "bob").await,
        json!({ "bob": { "online": true, "lastSeen": null } })
    );
    b.quiet().await;
    let (status, body) = call(app.as_user(
        Method::GET,
        &format!(
                "/v1.0/presence?users={}",
                vec!["u"; 101]
                    .iter()
                    .enumerate()
                    .map(|(i, u)| format!("{u}{i}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        &bob,
    ))
    .await;
    assert_eq!(status, 400, "{body}");
    app.stop().await;
}
