//! The REST send endpoint and the profile routes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::Method;
use samvad_protocol::{Encoding, Limits, Message, MessageType};
use serde_json::{Value, json};

use crate::support::{Seen, TestApp, call, chat, text_of};

#[tokio::test]
async fn rest_send_in_text_answers_acks_and_delivers() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut b = app.connect(&bob, "text", false).await;
    let frames: Vec<String> = (0..3)
        .map(|i| {
            samvad_protocol::encode_text(
                &chat(&format!("r-{i}"), "alice", "bob", &format!("#{i}")),
                Encoding::V2_1,
            )
        })
        .collect();
    let res = app
        .as_user(Method::POST, "/v1.0/messages?format=text&ack=true", &alice)
        .json(&frames)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    let acks = body["acks"].as_array().unwrap();
    assert_eq!(acks.len(), 3);
    let limits = Limits::DEFAULT;
    for (i, ack) in acks.iter().enumerate() {
        let ack = samvad_protocol::decode_text(ack.as_str().unwrap(), &limits).unwrap();
        assert_eq!(ack.kind, MessageType::ServerAck);
        assert_eq!(ack.id, format!("r-{i}"));
        assert_eq!(ack.destination, "alice");
    }
    for i in 0..3 {
        assert_eq!(text_of(&b.message().await), format!("#{i}"));
    }
    app.stop().await;
}

#[tokio::test]
async fn rest_send_in_binary_and_without_acks() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let frame = STANDARD.encode(samvad_protocol::encode_binary(&chat(
        "b-1", "alice", "bob", "bin",
    )));
    let res = app
        .as_user(
            Method::POST,
            "/v1.0/messages?format=binary&ack=true",
            &alice,
        )
        .json(&[frame])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    let ack = STANDARD.decode(body["acks"][0].as_str().unwrap()).unwrap();
    let ack = samvad_protocol::decode_binary(&ack, &Limits::DEFAULT).unwrap();
    assert_eq!(ack.kind, MessageType::ServerAck);

    let res = app
        .as_user(Method::POST, "/v1.0/messages?format=binary", &alice)
        .json(&[STANDARD.encode(samvad_protocol::encode_binary(&chat(
            "b-2", "alice", "bob", "quiet",
        )))])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({}));
    let mut b = app.connect(&bob, "text", false).await;
    assert_eq!(text_of(&b.message().await), "bin");
    assert_eq!(text_of(&b.message().await), "quiet");
    app.stop().await;
}

#[tokio::test]
async fn a_bad_message_in_a_batch_refuses_the_batch_and_says_which() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    app.login("bob").await;
    let good = samvad_protocol::encode_text(&chat("ok", "alice", "bob", "fine"), Encoding::V2_1);
    for (body, status, says) in [
        (
            json!([good, "{not json"]),
            400,
            "message 1: frame is not valid JSON",
        ),
        (json!([]), 400, "send 1 to 100 messages"),
        (json!({"not": "an array"}), 422, "invalid type"),
        (
            json!([samvad_protocol::encode_text(
                &chat("x", "alice", "nobody", "?"),
                Encoding::V2_1
            )]),
            404,
            "message 0: unknown user `nobody`",
        ),
    ] {
        let res = app
            .as_user(Method::POST, "/v1.0/messages?format=text&ack=true", &alice)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{body}");
        let error: Value = res.json().await.unwrap();
        assert!(
            error["error"].as_str().unwrap().contains(says),
            "{error} should say {says}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn profile_and_contact_sync() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    app.login("bob").await;
    let (_, profile) = call(app.as_user(Method::GET, "/v1.0/profile/", &alice)).await;
    assert_eq!(profile, json!({"username": "alice", "showPresence": true}));
    let (_, found) = call(
        app.as_user(Method::POST, "/v1.0/contactbook/sync", &alice)
            .json(&json!({"users": ["bob", "zed", "alice"]})),
    )
    .await;
    assert_eq!(found, json!({"bob": true, "alice": true}));

    // A second login is not new.
    let (_, again) = call(app
        .http
        .post(app.url("/v1.0/login"))
        .json(&json!({"username": "alice", "authToken": "x", "notificationToken": "t2", "deviceId": "phone", "messageVersion": 3}))).await;
    assert_eq!(again["isNew"], false);
    assert_eq!(again["status"], true);
    app.stop().await;
}

#[tokio::test]
async fn health_readiness_metrics_and_the_page() {
    let app = TestApp::spawn().await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            app.http.get(app.url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
    let page = app.http.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Samvad"));
    app.stop().await;
}

#[tokio::test]
async fn rest_sends_are_rate_limited_per_user_with_the_other_doors_and_a_refused_batch_sends_nothing()
 {
    let app = TestApp::spawn_with(&[("SAMVAD_RATE_LIMIT", "1"), ("SAMVAD_RATE_BURST", "5")]).await;
    let alice = app.user("alice").await;
    let carol = app.user("carol").await;
    let bob = app.user("bob").await;
    let mut b = app.connect(&bob, "text", false).await;
    let batch = |from: &str, prefix: &str, n: usize| -> Vec<String> {
        (0..n)
            .map(|i| {
                let m = chat(
                    &format!("{prefix}-{i}"),
                    from,
                    "bob",
                    &format!("{prefix}-{i}"),
                );
                samvad_protocol::encode_text(&m, Encoding::V2_1)
            })
            .collect()
    };
    let post = |user, frames: Vec<String>| {
        call(
            app.as_user(Method::POST, "/v1.0/messages?format=text", user)
                .json(&frames),
        )
    };
    let started = std::time::Instant::now();
    assert_eq!(post(&alice, batch("alice", "a", 4)).await.0, 201);
    let (status, body) = post(&alice, batch("alice", "over", 3)).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("rate limit"),
        "{body}"
    );
    // Another door draws on the same budget: alice's WebSocket, with a whole burst of its own,
    // gets no more than what refilled since.
    let mut a = app.connect(&alice, "text", true).await;
    for i in 0..3 {
        a.send(&chat(&format!("ws-{i}"), "alice", "carol", "hi"))
            .await;
    }
    let mut acks = 0;
    for _ in 0..3 {
        match a.next().await {
            Seen::Message(ack) if ack.kind == MessageType::ServerAck => acks += 1,
            Seen::Error(e) => assert!(e["error"].as_str().unwrap().contains("rate limit"), "{e}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    // One left of the burst, and what refilled at one a second since the first batch.
    let most = 1 + started.elapsed().as_secs() as usize + 1;
    assert!(
        acks <= most,
        "{acks} of 3 accepted over the WebSocket; at most {most}"
    );
    // Client acks are aside: a batch of them goes through on an empty budget.
    let acks: Vec<String> = (0..3)
        .map(|i| {
            let ack = Message {
                version: 2.1,
                id: format!("a-{i}"),
                kind: MessageType::ClientAck,
                destination: "server".into(),
                ..Message::default()
            };
            samvad_protocol::encode_text(&ack, Encoding::V2_1)
        })
        .collect();
    assert_eq!(post(&alice, acks).await.0, 201, "acks are not rate limited");
    assert_eq!(
        post(&carol, batch("carol", "c", 5)).await.0,
        201,
        "carol has her own"
    );
    let mut got = Vec::new();
    for _ in 0..9 {
        got.push(b.message().await.id);
    }
    assert!(got.iter().all(|id| !id.starts_with("over")), "{got:?}");
    assert!(
        b.try_next(std::time::Duration::from_millis(300))
            .await
            .is_none()
    );
    app.stop().await;
}
