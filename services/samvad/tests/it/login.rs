//! Login through a real JWKS identity provider: the token must prove the username.

use axum::Router;
use axum::routing::get;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::support::TestApp;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../libs/auth/tests/fixtures"
);

/// Serves the fixture JWKS on a loopback port, as an identity provider would.
async fn identity_provider() -> String {
    let jwks = std::fs::read_to_string(format!("{FIXTURES}/jwks.json")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route(
        "/jwks",
        get(move || {
            let jwks = jwks.clone();
            async move { ([("content-type", "application/json")], jwks) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/jwks")
}

fn id_token(phone: &str) -> String {
    let key =
        EncodingKey::from_rsa_pem(&std::fs::read(format!("{FIXTURES}/rsa.pem")).unwrap()).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": "https://securetoken.google.com/chat-app",
        "aud": "chat-app",
        "sub": "uid-1",
        "iat": now,
        "exp": now + 600,
        "phone_number": phone,
    });
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

#[tokio::test]
async fn a_firebase_style_token_logs_in_only_its_own_phone_number() {
    let jwks = identity_provider().await;
    let app = TestApp::spawn_with(&[
        ("SAMVAD_AUTH_PROVIDER", "jwks"),
        ("SAMVAD_AUTH_JWKS_URL", &jwks),
        (
            "SAMVAD_AUTH_ISSUER",
            "https://securetoken.google.com/chat-app",
        ),
        ("SAMVAD_AUTH_AUDIENCE", "chat-app"),
    ])
    .await;
    let login = |username: &str, token: String| {
        app.http
            .post(app.url("/v1.0/login"))
            .json(&json!({"username": username, "authToken": token, "notificationToken": "t"}))
            .send()
    };

    let ok = login("+15550001111", id_token("+15550001111"))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.unwrap();
    assert_eq!(body["username"], "+15550001111");
    assert!(body["accesskey"].is_string());

    // A valid token for one person never yields a key for another username.
    let spoof = login("+15559999999", id_token("+15550001111"))
        .await
        .unwrap();
    assert_eq!(spoof.status(), 401);
    assert!(spoof.json::<Value>().await.unwrap()["error"].is_string());

    let forged = login("+15550001111", "not-a-token".into()).await.unwrap();
    assert_eq!(forged.status(), 401);
    app.stop().await;
}
