//! Bad input gets a clear answer and harms nobody else.

use samvad_protocol::{Encoding, MessageType};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{Client, Seen, TestApp, User, chat, text_of};

/// Bob (or whoever `b` is) still gets alice's messages: nothing the bad client did touched him.
async fn bob_still_hears_alice(a: &mut Client, b: &mut Client, id: &str) {
    let to = b.name.clone();
    a.send(&chat(id, "alice", &to, id)).await;
    let got = b.chat_message().await;
    assert_eq!(text_of(&got), id);
}

#[tokio::test]
async fn malformed_frames_get_error_frames_and_the_connection_lives_on() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut a = app.connect(&alice, "text", true).await;
    let mut b = app.connect(&bob, "text", false).await;

    let cases: Vec<(Frame, &str)> = vec![
        (Frame::Text("{\"_v\":2.1,\"id\":".into()), "not valid JSON"),
        (Frame::Text("[1,2,3]".into()), "must be a JSON object"),
        (
            Frame::Text(r#"{"_v":7,"id":"x"}"#.into()),
            "unsupported message version",
        ),
        (
            Frame::Text(r#"{"_v":2.1,"head":{"to":"bob"}}"#.into()),
            "id",
        ),
        (
            Frame::Text(r#"{"_v":2.1,"id":"x","head":{"type":"chat"}}"#.into()),
            "destination",
        ),
        (
            Frame::Text(r#"{"_v":2.1,"id":5,"head":{"to":"bob"}}"#.into()),
            "must be a string",
        ),
        (
            Frame::Binary(vec![0x12, 0xff, 0x01].into()),
            "not a valid v3 protobuf",
        ),
        (
            Frame::Text(
                samvad_protocol::encode_text(&chat("u-1", "alice", "nobody", "?"), Encoding::V2_1)
                    .into(),
            ),
            "unknown user `nobody`",
        ),
        (
            Frame::Text(
                r#"{"_v":2.1,"id":"s","head":{"to":"bob","contentType":"SERVER_ACK"}}"#.into(),
            ),
            "may not send SERVER_ACK",
        ),
    ];
    for (frame, says) in cases {
        a.send_raw(frame).await;
        let error = a.error().await;
        assert!(
            error["error"].as_str().unwrap().contains(says),
            "{error} should say {says}"
        );
    }
    bob_still_hears_alice(&mut a, &mut b, "still-here").await;
    assert_eq!(a.message().await.kind, MessageType::ServerAck);
    app.stop().await;
}

#[tokio::test]
async fn an_oversize_frame_closes_with_1009_and_only_that_connection() {
    let app = TestApp::spawn_with(&[("SAMVAD_MAX_MESSAGE_BYTES", "1024")]).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mallory = app.user("mallory").await;
    let mut a = app.connect(&alice, "text", false).await;
    let mut b = app.connect(&bob, "text", false).await;
    let mut m = app.connect(&mallory, "text", false).await;
    let big = chat("big", "mallory", "bob", &"x".repeat(2000));
    m.send(&big).await;
    match m.next().await {
        Seen::Closed(code) => assert_eq!(code, Some(CloseCode::Size)),
        other => panic!("expected close 1009, saw {other:?}"),
    }
    bob_still_hears_alice(&mut a, &mut b, "after-big").await;
    app.stop().await;
}

/// A server that lets a user send 1 message a second after a burst of 5, alice and bob
/// connected, and mallory logged in.
async fn flood_scene() -> (TestApp, Client, Client, User) {
    let app = TestApp::spawn_with(&[("SAMVAD_RATE_LIMIT", "1"), ("SAMVAD_RATE_BURST", "5")]).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mallory = app.user("mallory").await;
    let a = app.connect(&alice, "text", false).await;
    let b = app.connect(&bob, "text", false).await;
    (app, a, b, mallory)
}

#[tokio::test]
async fn a_flood_is_refused_and_then_closed_without_touching_others() {
    let (app, mut a, mut b, mallory) = flood_scene().await;
    let mut m = app.connect(&mallory, "text", true).await;
    for i in 0..200 {
        m.send_raw(Frame::Text(
            samvad_protocol::encode_text(
                &chat(&format!("f-{i}"), "mallory", "bob", "spam"),
                Encoding::V2_1,
            )
            .into(),
        ))
        .await;
    }
    let mut acks = 0;
    let mut refusals = 0;
    let closed = loop {
        match m.next().await {
            Seen::Message(ack) if ack.kind == MessageType::ServerAck => acks += 1,
            Seen::Error(e) => {
                assert!(e["error"].as_str().unwrap().contains("rate limit"));
                refusals += 1;
            }
            Seen::Closed(code) => break code,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(closed, Some(CloseCode::Policy));
    assert!(
        (5..20).contains(&acks),
        "the burst is accepted, not more: {acks}"
    );
    assert!(refusals >= 1);
    // Bob got exactly what was acked.
    for _ in 0..acks {
        let spam = b.message().await;
        b.client_ack(&spam).await;
    }
    bob_still_hears_alice(&mut a, &mut b, "after-flood").await;
    app.stop().await;
}

#[tokio::test]
async fn a_client_cannot_forge_a_system_notice() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut a = app.connect(&alice, "text", true).await;
    let mut b = app.connect(&bob, "binary", false).await;
    for action in ["add", "remove", "read", "gap", "presence"] {
        let mut notice = chat(&format!("n-{action}"), "alice", "bob", "");
        notice.kind = MessageType::Notification;
        notice.content = br#"{"added":["mallory"]}"#.to_vec();
        notice.meta.insert("action".into(), action.into());
        a.send(&notice).await;
        let error = a.error().await;
        assert!(
            error["error"].as_str().unwrap().contains("system notice"),
            "{error}"
        );
        assert_eq!(error["id"], format!("n-{action}"));
    }
    // Notifications of the client's own kinds still pass, and bob saw none of the forgeries.
    let mut own = chat("n-own", "alice", "bob", "");
    own.kind = MessageType::Notification;
    own.meta.insert("action".into(), "custom".into());
    a.send(&own).await;
    assert_eq!(a.message().await.kind, MessageType::ServerAck);
    assert_eq!(b.message().await.id, "n-own");
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_reads_nothing_is_let_go_and_loses_nothing() {
    let app = TestApp::spawn_with(&[
        ("SAMVAD_SLOW_CLIENT_SECS", "1"),
        ("SAMVAD_RATE_LIMIT", "100000"),
        ("SAMVAD_RATE_BURST", "100000"),
    ])
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let mut a = app.connect(&alice, "text", false).await;
    let mut c = app.connect(&carol, "text", false).await;
    // Bob's socket is open, and he never reads from it.
    let stalled = app.connect(&bob, "text", false).await;
    let big = "x".repeat(30_000);
    const SENT: usize = 400;
    for i in 0..SENT {
        a.send(&chat(&format!("big-{i}"), "alice", "bob", &big))
            .await;
    }
    // Slow closes, and events queued for connections and not yet written.
    let gauges = || async {
        let metrics = app.metrics().await;
        let value = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        (
            value("samvad_slow_closes_total"),
            value("samvad_gateway_queued_events"),
        )
    };
    let (mut closed, mut most_queued) = (0, 0);
    for _ in 0..1000 {
        let (closes, queued) = gauges().await;
        (closed, most_queued) = (closes, most_queued.max(queued));
        if closed > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(closed, 1, "the stalled connection was let go");
    assert!(most_queued > 0, "what waited for bob was counted as queued");
    // Alice's and carol's connections may still be taking what they are handed; what waited
    // for bob is no longer counted once he was let go, so the gauge drains to nothing.
    let mut queued = gauges().await.1;
    for _ in 0..250 {
        if queued == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        queued = gauges().await.1;
    }
    assert_eq!(queued, 0, "and no longer once he was let go");
    bob_still_hears_alice(&mut a, &mut c, "others-unharmed").await;
    drop(stalled);

    // When bob comes back, everything alice sent is there, in order.
    let mut b = app.connect(&bob, "text", false).await;
    for i in 0..SENT {
        let got = b.chat_message().await;
        assert_eq!(got.id, format!("big-{i}"));
        b.client_ack(&got).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn more_connections_do_not_buy_a_faster_flood() {
    let (app, mut a, mut b, mallory) = flood_scene().await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(app.connect(&mallory, "text", true).await);
    }
    // Each socket stays within its own burst; together they are three times the user's.
    let started = std::time::Instant::now();
    for (s, m) in sockets.iter_mut().enumerate() {
        for i in 0..5 {
            m.send(&chat(&format!("f-{s}-{i}"), "mallory", "bob", "spam"))
                .await;
        }
    }
    let (mut acks, mut refusals) = (0, 0);
    for m in &mut sockets {
        for _ in 0..5 {
            match m.next().await {
                Seen::Message(ack) if ack.kind == MessageType::ServerAck => acks += 1,
                Seen::Error(e) => {
                    assert!(e["error"].as_str().unwrap().contains("rate limit"), "{e}");
                    refusals += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    // The user's burst, and what refilled at one a second while the test ran.
    let most = 5 + started.elapsed().as_secs() as usize + 1;
    assert!(
        (5..=most).contains(&acks),
        "{acks} accepted of 15; at most {most}"
    );
    assert_eq!(acks + refusals, 15);
    for _ in 0..acks {
        let spam = b.message().await;
        b.client_ack(&spam).await;
    }
    bob_still_hears_alice(&mut a, &mut b, "after-many-sockets").await;
    app.stop().await;
}

#[tokio::test]
async fn one_user_cannot_hold_more_than_the_connection_limit() {
    let app = TestApp::spawn_with(&[("SAMVAD_MAX_CONNECTIONS_PER_USER", "2")]).await;
    let alice = app.user("alice").await;
    let mallory = app.user("mallory").await;
    let first = app.connect(&mallory, "text", false).await;
    let _second = app.connect(&mallory, "text", false).await;
    match app.try_connect(&mallory, "text", false).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default());
            assert!(body.contains("at most 2 connections"), "{body}");
        }
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("a third connection was let in"),
    }
    // Others are not limited by her, and a closed connection gives its place back.
    let mut a = app.connect(&alice, "text", false).await;
    let mut again = None;
    first.close().await;
    for _ in 0..50 {
        if let Ok(c) = app.try_connect(&mallory, "text", false).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut m = again.expect("a place came free");
    bob_still_hears_alice(&mut a, &mut m, "after-limit").await;
    app.stop().await;
}

#[tokio::test]
async fn a_client_slow_to_send_its_request_head_is_let_go() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with(&[("SAMVAD_REQUEST_HEAD_SECS", "1")]).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut a = app.connect(&alice, "text", false).await;
    let mut b = app.connect(&bob, "text", false).await;
    // One connection trickles a head and stops; another sends nothing; a third finishes a
    // request and then idles on its kept-alive connection.
    let mut trickle = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    trickle
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let mut silent = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut idle = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    for (name, tcp) in [
        ("trickle", &mut trickle),
        ("silent", &mut silent),
        ("idle", &mut idle),
    ] {
        let mut seen = Vec::new();
        // Well within the default of 10 s: the setting is what closed it.
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tcp.read_to_end(&mut seen),
        )
        .await;
        assert!(
            matches!(read, Ok(Ok(_))),
            "{name}: the server closes the connection"
        );
        let seen = String::from_utf8_lossy(&seen);
        if name == "idle" {
            assert!(seen.starts_with("HTTP/1.1 200"), "{name}: {seen}");
        }
    }
    // Open WebSockets wait for no request head: idle as long, they live on.
    bob_still_hears_alice(&mut a, &mut b, "after-slow-heads").await;
    app.stop().await;
}

#[tokio::test]
async fn logins_and_contact_syncs_are_limited_per_user() {
    use serde_json::json;

    use crate::support::call;
    let app = TestApp::spawn_with(&[
        ("SAMVAD_LOGINS_PER_MINUTE", "3"),
        ("SAMVAD_CONTACT_SYNCS_PER_MINUTE", "2"),
    ])
    .await;
    // A flood of logins (each one a new device) for one name: the budget, then 429.
    for n in 0..3 {
        app.device("alice", &format!("phone-{n}")).await;
    }
    let (status, body) = call(app.http.post(app.url("/v1.0/login")).json(
        &json!({"username": "alice", "authToken": "dev", "deviceId": "phone-4", "notificationToken": ""}),
    ))
    .await;
    assert_eq!(status, 429);
    assert_eq!(
        body["error"],
        "too many logins for alice: wait a minute and try again"
    );
    let bob = app.user("bob").await; // another name has its own budget

    for _ in 0..2 {
        let (status, body) = call(
            app.as_user(reqwest::Method::POST, "/v1.0/contactbook/sync", &bob)
                .json(&json!({"users": ["alice", "nobody"]})),
        )
        .await;
        assert_eq!((status, body), (200, json!({"alice": true})));
    }
    let (status, body) = call(
        app.as_user(reqwest::Method::POST, "/v1.0/contactbook/sync", &bob)
            .json(&json!({"users": ["alice"]})),
    )
    .await;
    assert_eq!(status, 429);
    assert!(body["error"].as_str().unwrap().contains("contact syncs"));

    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"samvad_requests_limited_total{reason="login"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"samvad_requests_limited_total{reason="contact_sync"} 1"#));
    app.stop().await;
}

#[tokio::test]
async fn a_page_that_points_its_name_at_loopback_is_refused() {
    use serde_json::json;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    use crate::support::call;
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let port = app.addr.port();
    let get = |host: &str| {
        app.as_user(reqwest::Method::GET, "/v1.0/conversations", &alice)
            .header("host", format!("{host}:{port}"))
    };
    // What a page at evil.example sends once its name resolves to 127.0.0.1 (DNS rebinding).
    let (status, body) = call(get("evil.example")).await;
    assert_eq!(status, 421, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("evil.example"),
        "{body}"
    );
    let (status, _) = call(
        app.http
            .post(app.url("/v1.0/login"))
            .header("host", format!("evil.example:{port}"))
            .json(&json!({"username": "eve", "authToken": "dev", "notificationToken": ""})),
    )
    .await;
    assert_eq!(status, 421);
    let mut upgrade = format!("ws://{}/v1.0/wss/?format=text", app.addr)
        .into_client_request()
        .unwrap();
    let headers = upgrade.headers_mut();
    headers.insert("host", format!("evil.example:{port}").parse().unwrap());
    headers.insert(
        "origin",
        format!("http://evil.example:{port}").parse().unwrap(),
    );
    headers.insert("accesskey", alice.key.parse().unwrap());
    match tokio_tungstenite::connect_async(upgrade).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 421)
        }
        other => panic!("the upgrade was not refused: {:?}", other.map(|_| ())),
    }
    // The server's own names pass.
    for host in ["localhost", "127.0.0.1", "[::1]"] {
        assert_eq!(call(get(host)).await.0, 200, "{host}");
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"samvad_requests_refused_total{reason="host"} 3"#),
        "{metrics}"
    );
    app.stop().await;

    // Named hosts are the only ones then (the test itself calls 127.0.0.1).
    let app = TestApp::spawn_with(&[("SAMVAD_ALLOWED_HOSTS", "chat.example.com, 127.0.0.1")]).await;
    let alice = app.user("alice").await;
    let port = app.addr.port();
    for (host, status) in [
        ("chat.example.com", 200),
        ("localhost", 421),
        ("evil.example", 421),
    ] {
        let request = app
            .as_user(reqwest::Method::GET, "/v1.0/conversations", &alice)
            .header("host", format!("{host}:{port}"));
        assert_eq!(call(request).await.0, status, "{host}");
    }
    app.stop().await;
}
