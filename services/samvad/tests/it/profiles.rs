//! Profiles: a display name and a picture set by their owner, seen by whoever shares a
//! conversation with them, and by nobody else.

use reqwest::Method;
use serde_json::{Value, json};

use crate::assets;
use crate::groups::create_group;
use crate::support::{TestApp, User, call, chat};

async fn set(app: &TestApp, user: &User, body: Value) -> (u16, Value) {
    call(app.as_user(Method::PUT, "/v1.0/profile/", user).json(&body)).await
}

async fn profile_of(app: &TestApp, viewer: &User, username: &str) -> (u16, Value) {
    call(app.as_user(Method::GET, &format!("/v1.0/profile/{username}"), viewer)).await
}

#[tokio::test]
async fn a_name_and_picture_are_seen_by_conversation_partners_only() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let stranger = app.user("stranger").await;

    let pic = assets::uploaded(&app, &alice).await;
    let (status, body) = set(
        &app,
        &alice,
        json!({ "name": "Alice Liddell", "profilePic": pic }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({ "username": "alice", "name": "Alice Liddell", "profilePic": pic, "showPresence": true })
    );
    let (_, own) = call(app.as_user(Method::GET, "/v1.0/profile/", &alice)).await;
    assert_eq!(own, body);

    // Nobody shares a conversation with alice yet.
    assert_eq!(profile_of(&app, &bob, "alice").await.0, 404);
    assets::send_picture(&app, &bob, chat("hi-1", "bob", "alice", ""), &pic).await;
    let (status, seen) = profile_of(&app, &bob, "alice").await;
    assert_eq!(status, 200);
    assert_eq!(
        seen,
        json!({ "username": "alice", "name": "Alice Liddell", "profilePic": pic }),
        "another's profile has no settings"
    );
    // Her picture is readable wherever her profile is.
    assert_eq!(
        assets::download(&app, &bob, &pic).await.unwrap(),
        assets::PNG
    );

    // A group shared is a conversation shared.
    create_group(&app, &alice, "club", &["carol"]).await;
    assert_eq!(profile_of(&app, &carol, "alice").await.0, 200);
    assert_eq!(
        assets::download(&app, &carol, &pic).await.unwrap(),
        assets::PNG
    );

    // A stranger sees neither, and cannot tell a profile from no profile.
    assert_eq!(profile_of(&app, &stranger, "alice").await.0, 404);
    assert_eq!(profile_of(&app, &stranger, "nobody").await.0, 404);
    assert_eq!(assets::download_url(&app, &stranger, &pic).await.0, 404);

    // Fields left out stay; null clears.
    let (_, body) = set(&app, &alice, json!({ "profilePic": null })).await;
    assert_eq!(
        body,
        json!({ "username": "alice", "name": "Alice Liddell", "showPresence": true })
    );
    assert_eq!(
        assets::download_url(&app, &carol, &pic).await.0,
        404,
        "no longer her picture"
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_names_and_pictures_are_refused() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    for name in [
        json!(""),
        json!(" padded"),
        json!("x".repeat(65)),
        json!("bell\u{7}"),
        json!("bob\u{202e}"),
        json!("zero\u{200b}width"),
        json!(7),
    ] {
        let (status, body) = set(&app, &alice, json!({ "name": name })).await;
        assert!(matches!(status, 400 | 422), "{name}: {status} {body}");
    }
    let (status, _) = set(&app, &alice, json!({ "name": "Ünïcödé ✓ 名前" })).await;
    assert_eq!(status, 200, "letters of any script are names");

    // Only a picture of one's own, uploaded and marked.
    let (_, pending) = assets::upload_url(&app, &alice, ".png").await;
    let not_a_picture = {
        let (url, id) = assets::upload_url(&app, &alice, ".pdf").await;
        assert_eq!(
            assets::put(&app, &url, "application/pdf", b"%PDF-1.7").await,
            200
        );
        assert_eq!(assets::mark(&app, &alice, &id).await.0, 200);
        id
    };
    let bobs = assets::uploaded(&app, &bob).await;
    for pic in [pending, not_a_picture, bobs, "asset-nope".into()] {
        let (status, body) = set(&app, &alice, json!({ "profilePic": pic })).await;
        assert_eq!(status, 400, "{pic}: {body}");
    }
    let (status, _) = set(&app, &alice, json!({ "nickname": "al" })).await;
    assert_eq!(status, 422, "an unknown field is refused, not ignored");
    app.stop().await;
}
