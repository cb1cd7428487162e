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
    a.send(&chat("m-1", "alice", "bob", "while you were out"))
        .await;
    assert_eq!(a.message().await.kind, MessageType::ServerAck);
    let mut b = app.connect(&bob, "text", false).await;
    assert_eq!(text_of(&b.message().await), "while you were out");
    a.send(&chat("m-2", "alice", "bob", "live")).await;
    assert_eq!(text_of(&b.chat_message().await), "live");
    app.stop().await;
}

#[tokio::test]
async fn chat_works_over_kafka_with_mongodb_and_redis() {
    let kafka = rdkafka::mocking::MockCluster::new(1).unwrap();
    // librdkafka's mock cluster cannot create topics through the admin API; an operator would
    // have created them like this.
    let topics = samvad_bus::Topic::DURABLE
        .into_iter()
        .chain([samvad_bus::Topic::Gateway("gw1".into())]);
    for topic in topics {
        kafka
            .create_topic(&format!("it.{}", topic.name()), 3, 1)
            .unwrap();
    }
    let brokers = kafka.bootstrap_servers();
    offline_then_live_over(&[
        ("SAMVAD_BUS", "kafka"),
        ("SAMVAD_KAFKA_BROKERS", &brokers),
        ("SAMVAD_TOPIC_PREFIX", "it."),
    ])
    .await;
}

#[tokio::test]
async fn chat_works_over_nats_with_mongodb_and_redis() {
    let nats = samvad_testkit::nats();
    offline_then_live_over(&[("SAMVAD_BUS", "nats"), ("SAMVAD_NATS_URL", &nats.url)]).await;
}

/// On the bus `bus` sets up, with MongoDB and Redis: Alice sends five messages to Bob while he
/// is offline, then one while he is online; he gets them all, in order.
async fn offline_then_live_over(bus: &[(&str, &str)]) {
    let mongo = samvad_testkit::mongo();
    samvad_testkit::wait_for_port(mongo.port);
    let redis = samvad_testkit::redis();
    let mut settings = bus.to_vec();
    settings.extend([
        ("SAMVAD_INSTANCE_ID", "gw1"),
        ("SAMVAD_PRESENCE", "redis"),
        ("SAMVAD_REDIS_URL", &redis.url),
        ("SAMVAD_STORE", "mongodb"),
        ("SAMVAD_MONGODB_URL", &mongo.url),
        (
            "SAMVAD_ACCESS_KEY_SECRETS",
            "it:0123456789abcdef0123456789abcdef",
        ),
    ]);
    let app = TestApp::spawn_with(&settings).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut a = app.connect(&alice, "binary", true).await;
    for i in 0..5 {
        a.send(&chat(&format!("m-{i}"), "alice", "bob", &format!("#{i}")))
            .await;
        assert_eq!(a.message().await.kind, MessageType::ServerAck);
    }
    let mut b = app.connect(&bob, "text", false).await;
    for i in 0..5 {
        let m = b.message().await;
        assert_eq!(text_of(&m), format!("#{i}"));
        b.client_ack(&m).await;
    }
    a.send(&chat("live", "alice", "bob", "live")).await;
    assert_eq!(text_of(&b.chat_message().await), "live");
    app.stop().await;
}
