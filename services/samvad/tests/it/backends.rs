//! The all-in-one server on real shared backends: same behaviour, other storage.

use samvad_protocol::MessageType;

use crate::support::{TestApp, chat, text_of};

#[tokio::test]
async fn chat_works_with_presence_in_redis() {
    let redis = samvad_testkit::redis();
    let app = TestApp::spawn_with(&[
        ("SAMVAD_PRESENCE", "redis"),
        ("SAMVAD_REDIS_URL", &redis.url),
    ])
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut a = app.connect(&alice, "text", true).await;
    a.send(&chat("m-1", "alice", "bob", "while you were out")).await;
    assert_eq!(a.message().await.kind, MessageType::ServerAck);
    let mut b = app.connect(&bob, "text", false).await;
    assert_eq!(text_of(&b.message().await), "while you were out");
    a.send(&chat("m-2", "alice", "bob", "live")).await;
    assert_eq!(text_of(&b.chat_message().await), "live");
    app.stop().await;
}
