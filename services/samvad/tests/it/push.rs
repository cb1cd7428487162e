//! Push, end to end: a user who is offline gets a push through FCM HTTP v1 (a local fake of
//! Google's token and send endpoints) for each message kept for them, and for nothing else.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, State};
use axum::http::HeaderMap;
use axum::routing::post;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::Method;
use samvad_protocol::{Limits, MessageType};
use serde_json::{Value, json};

use crate::support::{TestApp, WAIT, call, chat, text_of};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../push/tests/fixtures");
const CLIENT_EMAIL: &str = "samvad-push@samvad-e2e.iam.gserviceaccount.com";

type Json = axum::Json<Value>;

/// What the fake FCM received: (authorization header, JSON body) per send.
#[derive(Clone, Default)]
struct Received {
    sends: Arc<Mutex<Vec<(String, Value)>>>,
    token_uri: Arc<Mutex<String>>,
}

async fn token(State(got): State<Received>, Form(form): Form<Vec<(String, String)>>) -> Json {
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        field("grant_type"),
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    let public = std::fs::read(format!("{FIXTURES}/fcm-test-key.pub.pem")).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[got.token_uri.lock().unwrap().clone()]);
    validation.set_issuer(&[CLIENT_EMAIL]);
    jsonwebtoken::decode::<Value>(
        &field("assertion"),
        &DecodingKey::from_rsa_pem(&public).unwrap(),
        &validation,
    )
    .expect("an assertion signed by the service account");
    axum::Json(json!({"access_token": "e2e-access", "expires_in": 3600, "token_type": "Bearer"}))
}

async fn send(State(got): State<Received>, headers: HeaderMap, axum::Json(body): Json) -> Json {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    got.sends.lock().unwrap().push((authorization, body));
    axum::Json(json!({"name": "projects/samvad-e2e/messages/1"}))
}

/// Starts the fake FCM and writes a service-account file for it: (its URL, the file, what it
/// receives).
async fn fake_fcm(dir: &tempfile::TempDir) -> (String, String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got = Received::default();
    *got.token_uri.lock().unwrap() = format!("{url}/token");
    let app = Router::new()
        .route("/token", post(token))
        .route("/v1/projects/samvad-e2e/messages:send", post(send))
        .with_state(got.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let account = json!({
        "type": "service_account",
        "project_id": "samvad-e2e",
        "private_key_id": "test-only",
        "private_key": std::fs::read_to_string(format!("{FIXTURES}/fcm-test-key.pem")).unwrap(),
        "client_email": CLIENT_EMAIL,
        "token_uri": format!("{url}/token"),
    });
    let path = dir.path().join("service-account.json");
    std::fs::write(&path, account.to_string()).unwrap();
    (url, path.to_string_lossy().into_owned(), got)
}

#[tokio::test]
async fn an_offline_user_is_pushed_each_message_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (fcm_url, credentials, got) = fake_fcm(&dir).await;
    let app = TestApp::spawn_with(&[
        ("SAMVAD_PUSH_PROVIDERS", "fcm"),
        ("SAMVAD_FCM_CREDENTIALS", &credentials),
        ("SAMVAD_FCM_API_URL", &fcm_url),
    ])
    .await;
    // Bob logs in with his phone's token and never connects.
    let _bob = app.user("bob").await;
    let alice = app.user("alice").await;
    let mut a = app.connect(&alice, "text", true).await;

    // First what must not be pushed: a group-creation notification, a typing indicator and
    // a notification alice sends herself.
    let (status, _) = call(
        app.as_user(Method::POST, "/v1.0/groups/", &alice)
            .json(&json!({"name": "weekend", "members": ["bob"]})),
    )
    .await;
    assert_eq!(status, 200);
    let mut typing = chat("t-1", "alice", "bob", "");
    typing.ephemeral = true;
    typing.content = br#"{"typing":true}"#.to_vec();
    typing.meta.insert("action".into(), "typing".into());
    a.send(&typing).await;
    let mut notification = chat("n-1", "alice", "bob", "psst");
    notification.kind = MessageType::Notification;
    a.send(&notification).await;
    // Then a message: the one push bob's phone gets.
    a.send(&chat("m-1", "alice", "bob", "are you there?")).await;

    let deadline = tokio::time::Instant::now() + WAIT;
    while got.sends.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no push within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Anything pushed before the message would have arrived before it; give strays a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sends = got.sends.lock().unwrap().clone();
    assert_eq!(sends.len(), 1, "only the message is pushed: {sends:#?}");
    let (authorization, body) = &sends[0];
    println!("push received by the fake FCM:\n{body:#}");
    assert_eq!(authorization, "Bearer e2e-access");
    assert_eq!(body["message"]["token"], "token-bob");
    assert_eq!(body["message"]["android"], json!({"priority": "high"}));
    let data = body["message"]["data"]["message"].as_str().unwrap();
    let v21: Value = serde_json::from_str(data).unwrap();
    assert_eq!(v21["_v"], 2.1);
    let pushed = samvad_protocol::decode_text(data, &Limits { max_bytes: 1 << 20 }).unwrap();
    assert_eq!(pushed.id, "m-1");
    assert_eq!(pushed.source, "alice");
    assert_eq!(text_of(&pushed), "are you there?");

    let metrics = app.metrics().await;
    for counted in [
        "samvad_pushes_sent_total 1",
        "samvad_push_latency_seconds_count 1",
        // The typing notice, the notification and the message, taken in at the WebSocket door.
        "samvad_accept_latency_seconds_count{door=\"ws\"} 3",
    ] {
        assert!(metrics.contains(counted), "{counted} in:\n{metrics}");
    }
    app.stop().await;
}

#[tokio::test]
async fn browsers_find_the_vapid_key_and_the_service_worker() {
    let app = TestApp::spawn().await;
    let (status, body) = call(app.http.get(app.url("/v1.0/push/vapid"))).await;
    assert_eq!(status, 404, "no Web Push without a VAPID key");
    assert!(body["error"].is_string());
    let sw = app.http.get(app.url("/sw.js")).send().await.unwrap();
    assert_eq!(sw.status(), 200);
    assert!(
        sw.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(sw.text().await.unwrap().contains("showNotification"));
    app.stop().await;

    // RFC 8291's example key pair: the public key is derived from the private one.
    let app = TestApp::spawn_with(&[
        ("SAMVAD_PUSH_PROVIDERS", "webpush"),
        (
            "SAMVAD_VAPID_PRIVATE_KEY",
            "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw",
        ),
        ("SAMVAD_VAPID_SUBJECT", "mailto:ops@samvad.test"),
    ])
    .await;
    let (status, body) = call(app.http.get(app.url("/v1.0/push/vapid"))).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"publicKey": "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8"})
    );
    app.stop().await;
}
