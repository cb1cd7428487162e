//! Login tokens checked against a real JWKS, served over HTTP by an axum server on 127.0.0.1
//! port 0 that counts how often it is fetched. The keys are fixtures made once with the openssl
//! CLI (see `tests/fixtures/README.md`).

// A test binary: a failed unwrap in a helper is a failed test, with its location.
#![allow(clippy::unwrap_used)]
// The JWKS server is a fake, not the API that /openapi.json describes.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use samvad_auth::{
    AccessKeys, AuthError, JwksConfig, JwksVerifier, LoginProvider, TokenRefusal, credentials,
};
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.test/samvad";
const AUDIENCE: &str = "samvad-test";
const ALICE: &str = "+919999900001";
const BOB: &str = "+919999900002";

const JWKS: &str = include_str!("../fixtures/jwks.json");
const RSA_PEM: &[u8] = include_bytes!("../fixtures/rsa.pem");
const RSA_PUBLIC_PEM: &[u8] = include_bytes!("../fixtures/rsa.pub.pem");
const RSA_OTHER_PEM: &[u8] = include_bytes!("../fixtures/rsa-other.pem");
const RSA_OTHER_JWK: &str = include_str!("../fixtures/rsa-other.jwk.json");
const EC_PEM: &[u8] = include_bytes!("../fixtures/ec.pem");

// --- the identity provider's JWKS endpoint -------------------------------------------------

struct ServerState {
    body: String,
    failing: AtomicBool,
    hits: AtomicUsize,
}

/// A JWKS endpoint on 127.0.0.1, stopped when dropped.
struct JwksServer {
    url: String,
    state: Arc<ServerState>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start() -> Self {
        Self::serving(JWKS.to_owned()).await
    }

    async fn serving(body: String) -> Self {
        let state = Arc::new(ServerState {
            body,
            failing: AtomicBool::new(false),
            hits: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/jwks", get(serve_jwks))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("JWKS server failed");
        });
        JwksServer { url, state, task }
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    fn fail_from_now_on(&self) {
        self.state.failing.store(true, Ordering::SeqCst);
    }

    fn verifier(&self) -> JwksVerifier {
        verifier_for(&self.url)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_jwks(State(state): State<Arc<ServerState>>) -> Response {
    state.hits.fetch_add(1, Ordering::SeqCst);
    if state.failing.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance").into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        state.body.clone(),
    )
        .into_response()
}

fn verifier_for(url: &str) -> JwksVerifier {
    // reqwest is built without a default rustls provider; the service binary installs one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = JwksConfig {
        jwks_url: url.to_owned(),
        issuer: ISSUER.to_owned(),
        audience: AUDIENCE.to_owned(),
        username_claim: "phone_number".to_owned(),
    };
    JwksVerifier::new(config, reqwest::Client::new()).unwrap()
}

// --- tokens --------------------------------------------------------------------------------

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The claims of a Firebase phone-auth ID token proving `phone`.
fn claims(phone: &str) -> Value {
    let now = now();
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "uid-123",
        "auth_time": now,
        "iat": now,
        "exp": now + 3600,
        "phone_number": phone,
    })
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().unwrap().remove(name);
    claims
}

fn sign(header: Header, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn header(alg: Algorithm, kid: Option<&str>) -> Header {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    header
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PEM).unwrap()
}

fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(EC_PEM).unwrap()
}

fn rs256(claims: &Value) -> String {
    sign(header(Algorithm::RS256, Some("rsa-1")), &rsa_key(), claims)
}

fn es256(claims: &Value) -> String {
    sign(header(Algorithm::ES256, Some("ec-1")), &ec_key(), claims)
}

async fn refusal(verifier: &JwksVerifier, username: &str, token: &str) -> TokenRefusal {
    match verifier.verify(username, token).await {
        Err(AuthError::TokenRefused(reason)) => reason,
        other => panic!("expected the token to be refused, got {other:?}"),
    }
}

// --- valid tokens --------------------------------------------------------------------------

#[tokio::test]
async fn an_rs256_token_proves_its_phone_number() {
    let idp = JwksServer::start().await;
    let verifier = idp.verifier();
    verifier
        .verify(ALICE, &rs256(&claims(ALICE)))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_es256_token_proves_its_phone_number() {
    let idp = JwksServer::start().await;
    let login = LoginProvider::Jwks(idp.verifier());
    login.verify(ALICE, &es256(&claims(ALICE))).await.unwrap();
}

#[tokio::test]
async fn a_login_yields_an_access_key_that_authenticates_the_same_user() {
    let idp = JwksServer::start().await;
    let login = LoginProvider::Jwks(idp.verifier());
    let keys = AccessKeys::new(
        vec![("k1".into(), vec![7; 32])],
        std::time::Duration::from_secs(3600),
    )
    .unwrap();

    login.verify(ALICE, &rs256(&claims(ALICE))).await.unwrap();
    let key = keys.issue(&samvad_auth::Identity::new(ALICE, "laptop"), "session-1");

    // A browser WebSocket presents it as cookies.
    let mut headers = HeaderMap::new();
    let cookie = format!("user={ALICE}; accesskey={key}");
    headers.insert(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
    let creds = credentials(&headers).unwrap();
    let access = keys.authenticate(&creds).unwrap();
    assert_eq!(access.who, samvad_auth::Identity::new(ALICE, "laptop"));
    assert_eq!(access.session, "session-1");

    // Bob cannot borrow it.
    headers.insert("user", HeaderValue::from_static(BOB));
    let creds = credentials(&headers).unwrap();
    assert!(matches!(
        keys.authenticate(&creds),
        Err(AuthError::UserMismatch)
    ));
}

// --- refused tokens ------------------------------------------------------------------------

#[tokio::test]
async fn a_valid_token_never_proves_another_username() {
    let idp = JwksServer::start().await;
    let verifier = idp.verifier();
    for token in [rs256(&claims(ALICE)), es256(&claims(ALICE))] {
        for other in [BOB, "+91999990000", "+9199999000011", "", "919999900001"] {
            assert_eq!(
                refusal(&verifier, other, &token).await,
                TokenRefusal::UsernameMismatch,
                "{other:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_token_from_another_issuer_is_refused() {
    let idp = JwksServer::start().await;
    let verifier = idp.verifier();
    let foreign = with(
        claims(ALICE),
        "iss",
        json!("https://securetoken.google.com/other"),
    );
    assert_eq!(
        refusal(&verifier, ALICE, &rs256(&foreign)).await,
        TokenRefusal::WrongIssuer
    );
    assert_eq!(
        refusal(&verifier, ALICE, &es256(&without(claims(ALICE), "iss"))).await,
        TokenRefusal::WrongIssuer
    );
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    let idp = JwksServer::start().await;
    let verifier = idp.verifier();
    let foreign = with(claims(ALICE), "aud", json!("another-app"));
    assert_eq!(
        refusal(&verifier, ALICE, &rs256(&foreign)).await,
        TokenRefusal::WrongAudience
    );
    assert_eq!(
        refusal(&verifier, ALICE, &es256(&without(claims(ALICE), "aud"))).await,
        TokenRefusal::WrongAudience
    );
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let idp = JwksServer::start().await;
    let verifier = idp.verifier();
    let now = now();
    let expired = with(
        with(claims(ALICE), "iat", json!(now - 7200)),
        "exp",
        json!(now - 3600),
    );
    assert_eq!(
        refusal(&verifier, ALICE, &rs256(&expired)).await,
        TokenRefusal::Expired
    );
}

#[tokio::test]
async fn a_token_issued_in_the_future_is_refused() {
    let idp = JwksServer::start().await;
    let verifier = idp.verifier();
    let now = now();
    let early = with(
        with(claims(ALICE), "iat", json!(now + 3600)),
        "exp",
        json!(now + 7200),
    );
    assert_eq!(
        refusal(&verifier, ALICE, &es256(&early)).await,
        TokenRefusal::NotYetValid
    );
}

#[tokio::test]
async fn a_token_without_kid_is_refused() {
    let idp = JwksServer::start().await;
    let verifier = idp.verifier();
    let token = sign(header(Algorithm::RS256, None), &rsa_key(), &claims(ALICE));
    assert_eq!(
        refusal(&verifier, ALICE, &token).await,
        TokenRefusal::MissingKeyId
    );
    assert_eq!(idp.hits(), 0, "no kid, no reason to fetch");
}

#[tokio::test]
async fn a_token_with_an_unknown_kid_is_refused() {
    let idp = JwksServer::start().await;
    let verifier = idp.verifier();
    let token = sign(
        header(Algorithm::RS256, Some("rsa-2")),
        &rsa_key(),
        &claims(ALICE),
    );
    assert_eq!(
        refusal(&verifier, ALICE, &token).await,
        TokenRefusal::UnknownKey
    );
}

#[tokio::test]
async fn a_token_signed_by_another_rsa_key_under_our_kid_is_refused() {
    let idp = JwksServer::start().await;
    let verifier = idp.verifier();
    let other = EncodingKey::from_rsa_pem(RSA_OTHER_PEM).unwrap();
    let token = sign(
        header(Algorithm::RS256, Some("rsa-1")),
        &other,
        &claims(ALICE),
    );
    assert_eq!(
        refusal(&verifier, ALICE, &token).await,
        TokenRefusal::BadSignature
    );
}

#[tokio::test]
async fn a_key_offered_by_the_token_itself_is_ignored() {
    let idp = JwksServer::start().await;
    let verifier = idp.verifier();
    let other = EncodingKey::from_rsa_pem(RSA_OTHER_PEM).unwrap();
    let mut forged = header(Algorithm::RS256, Some("rsa-1"));
    forged.jwk = Some(serde_json::from_str(RSA_OTHER_JWK).unwrap());
    forged.jku = Some("http://127.0.0.1:9/evil-jwks".into());
    forged.x5u = Some("http://127.0.0.1:9/evil.pem".into());
    let token = sign(forged, &other, &claims(ALICE));
    assert_eq!(
        refusal(&verifier, ALICE, &token).await,
        TokenRefusal::BadSignature
    );
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    // Algorithm confusion: a verifier that let the token pick the algorithm would check this
    // HMAC with the public key as the secret, and accept it.
    let idp = JwksServer::start().await;
    let verifier = idp.verifier();
    let token = sign(
        header(Algorithm::HS256, Some("rsa-1")),
        &EncodingKey::from_secret(RSA_PUBLIC_PEM),
        &claims(ALICE),
    );
    assert_eq!(
        refusal(&verifier, ALICE, &token).await,
        TokenRefusal::UnsupportedAlgorithm
    );
}

#[tokio::test]
async fn a_token_whose_alg_does_not_fit_its_key_is_refused() {
    let idp = JwksServer::start().await;
    let verifier = idp.verifier();
    let token = sign(
        header(Algorithm::ES256, Some("rsa-1")),
        &ec_key(),
        &claims(ALICE),
    );
    assert_eq!(
        refusal(&verifier, ALICE, &token).await,
        TokenRefusal::UnsupportedAlgorithm
    );
}

#[tokio::test]
async fn an_unsigned_alg_none_token_is_refused() {
    let idp = JwksServer::start().await;
    let verifier = idp.verifier();
    let encode = |json: &Value| URL_SAFE_NO_PAD.encode(json.to_string());
    let token = format!(
        "{}.{}.",
        encode(&json!({"alg": "none", "kid": "rsa-1"})),
        encode(&claims(ALICE))
    );
    assert_eq!(
        refusal(&verifier, ALICE, &token).await,
        TokenRefusal::UnsupportedAlgorithm
    );
}

#[tokio::test]
async fn a_token_without_the_username_claim_is_refused() {
    let idp = JwksServer::start().await;
    let verifier = idp.verifier();
    let cases = [
        without(claims(ALICE), "phone_number"),
        with(claims(ALICE), "phone_number", json!(919999900001_u64)),
        with(claims(ALICE), "phone_number", json!([ALICE])),
        with(claims(ALICE), "phone_number", json!("")),
    ];
    for claims in cases {
        assert_eq!(
            refusal(&verifier, ALICE, &rs256(&claims)).await,
            TokenRefusal::MissingUsername,
            "{claims}"
        );
    }
}

#[tokio::test]
async fn empty_and_garbage_tokens_are_refused_without_fetching() {
    let idp = JwksServer::start().await;
    let verifier = idp.verifier();
    assert_eq!(refusal(&verifier, ALICE, "").await, TokenRefusal::Empty);
    for garbage in ["abc", "a.b.c", "..", &"x".repeat(64 * 1024)] {
        assert_eq!(
            refusal(&verifier, ALICE, garbage).await,
            TokenRefusal::Malformed
        );
    }
    assert_eq!(idp.hits(), 0);
}

#[tokio::test]
async fn keys_for_encryption_or_another_algorithm_are_not_used() {
    let mut jwks: Value = serde_json::from_str(JWKS).unwrap();
    let other: Value = serde_json::from_str(RSA_OTHER_JWK).unwrap();
    let keys = jwks["keys"].as_array_mut().unwrap();
    keys.push(with(
        with(other.clone(), "kid", json!("rsa-enc")),
        "use",
        json!("enc"),
    ));
    keys.push(with(
        with(other, "kid", json!("rsa-as-es")),
        "alg",
        json!("ES256"),
    ));
    let idp = JwksServer::serving(jwks.to_string()).await;
    let verifier = idp.verifier();
    let other = EncodingKey::from_rsa_pem(RSA_OTHER_PEM).unwrap();
    for kid in ["rsa-enc", "rsa-as-es"] {
        let token = sign(header(Algorithm::RS256, Some(kid)), &other, &claims(ALICE));
        assert_eq!(
            refusal(&verifier, ALICE, &token).await,
            TokenRefusal::UnknownKey,
            "{kid}"
        );
    }
    // The usable keys of the same set still work.
    verifier
        .verify(ALICE, &es256(&claims(ALICE)))
        .await
        .unwrap();
}

// --- fetching the JWKS ---------------------------------------------------------------------

#[tokio::test]
async fn the_jwks_is_fetched_once_and_cached() {
    let idp = JwksServer::start().await;
    let verifier = idp.verifier();
    verifier
        .verify(ALICE, &rs256(&claims(ALICE)))
        .await
        .unwrap();
    verifier.verify(BOB, &es256(&claims(BOB))).await.unwrap();
    verifier
        .verify(ALICE, &rs256(&claims(ALICE)))
        .await
        .unwrap();
    assert_eq!(idp.hits(), 1);
}

#[tokio::test]
async fn unknown_kids_fetch_the_jwks_only_once_within_30_seconds() {
    let idp = JwksServer::start().await;
    let verifier = idp.verifier();
    for kid in ["made-up-1", "made-up-2", "made-up-1"] {
        let token = sign(
            header(Algorithm::RS256, Some(kid)),
            &rsa_key(),
            &claims(ALICE),
        );
        assert_eq!(
            refusal(&verifier, ALICE, &token).await,
            TokenRefusal::UnknownKey
        );
    }
    assert_eq!(idp.hits(), 1);
    // Known kids are still served from the cache.
    verifier
        .verify(ALICE, &rs256(&claims(ALICE)))
        .await
        .unwrap();
    assert_eq!(idp.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_share_one_fetch() {
    let idp = JwksServer::start().await;
    let verifier = Arc::new(idp.verifier());
    let mut logins = tokio::task::JoinSet::new();
    for i in 0..16 {
        let verifier = Arc::clone(&verifier);
        let token = if i % 2 == 0 {
            rs256(&claims(ALICE))
        } else {
            es256(&claims(ALICE))
        };
        logins.spawn(async move { verifier.verify(ALICE, &token).await });
    }
    while let Some(outcome) = logins.join_next().await {
        outcome.unwrap().unwrap();
    }
    assert_eq!(idp.hits(), 1);
}

#[tokio::test]
async fn an_unreachable_jwks_is_our_error_not_the_clients() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let verifier = verifier_for(&format!("http://127.0.0.1:{port}/jwks"));
    let error = verifier
        .verify(ALICE, &rs256(&claims(ALICE)))
        .await
        .unwrap_err();
    assert!(
        matches!(error, AuthError::JwksUnavailable { .. }),
        "{error:?}"
    );
    assert!(!error.is_client_error());
    assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_failing_jwks_is_our_error_and_not_retried_on_every_login() {
    let idp = JwksServer::start().await;
    idp.fail_from_now_on();
    let verifier = idp.verifier();
    for _ in 0..3 {
        let error = verifier
            .verify(ALICE, &rs256(&claims(ALICE)))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, AuthError::JwksUnavailable { detail } if detail.contains("503")),
            "{error:?}"
        );
    }
    assert_eq!(idp.hits(), 1);
}

#[tokio::test]
async fn an_oversized_jwks_is_refused() {
    let mut jwks: Value = serde_json::from_str(JWKS).unwrap();
    jwks["padding"] = json!("x".repeat(1024 * 1024));
    let idp = JwksServer::serving(jwks.to_string()).await;
    let verifier = idp.verifier();
    let error = verifier
        .verify(ALICE, &rs256(&claims(ALICE)))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, AuthError::JwksUnavailable { detail } if detail.contains("exceeds")),
        "{error:?}"
    );
}
