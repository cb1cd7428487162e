//! FCM HTTP v1: the exact request, the service-account token flow, retries and dead tokens.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use push::{Fcm, ServiceAccount};
use samvad_protocol::Limits;
use samvad_store::ProfileStore;
use serde_json::json;

use crate::fake::{self, Fake, Reply};
use crate::{Setup, chat, decode_v2, fast_retry, fcm, http, service_account, text_of};

#[tokio::test]
async fn an_offline_message_reaches_the_device_through_fcm() {
    let fake = Fake::start().await;
    let setup = Setup::new(vec![fcm(&fake)], &[("phone", "fcm-token-bob", 2.1)]).await;

    setup.push(&[chat("m1", "hello bob")]).await;

    let sends = fake.wait_for_sends(1).await;
    assert_eq!(sends.len(), 1);
    let send = &sends[0];
    assert_eq!(send.path, "/v1/projects/test-project/messages:send");
    assert_eq!(send.header("authorization"), "Bearer access-1");
    assert!(send.header("content-type").starts_with("application/json"));
    let body = send.json();
    let data = body["message"]["data"]["message"].clone();
    assert!(data.is_string());
    // Exactly the shape Vartalap's app reads, and nothing else.
    assert_eq!(
        body,
        json!({"message": {
            "token": "fcm-token-bob",
            "data": { "message": data },
            "android": { "priority": "high" },
        }})
    );
    let pushed = decode_v2(body["message"]["data"]["message"].as_str().unwrap());
    assert_eq!(pushed.id, "m1");
    assert_eq!(pushed.source, "alice");
    assert_eq!(pushed.destination, "bob");
    assert_eq!(text_of(&pushed), "hello bob");

    // The service account asked for its token as Google's OAuth flow says.
    let assertions = fake.assertions();
    assert_eq!(assertions.len(), 1);
    let claims = &assertions[0];
    assert_eq!(claims["iss"], fake::CLIENT_EMAIL);
    assert_eq!(
        claims["scope"],
        "https://www.googleapis.com/auth/firebase.messaging"
    );
    assert_eq!(claims["aud"], fake.token_uri());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let iat = claims["iat"].as_u64().unwrap();
    assert!(iat.abs_diff(now) < 60, "iat is now");
    assert!(claims["exp"].as_u64().unwrap() - iat <= 3600);

    assert_eq!((setup.sent(), setup.removed()), (1, 0));
}

#[tokio::test]
async fn a_v3_device_gets_base64_of_the_binary_message() {
    let fake = Fake::start().await;
    let setup = Setup::new(vec![fcm(&fake)], &[("phone", "fcm-token-bob", 3.0)]).await;

    setup.push(&[chat("m1", "binary please")]).await;

    let body = fake.wait_for_sends(1).await[0].json();
    let bytes = STANDARD
        .decode(body["message"]["data"]["message"].as_str().unwrap())
        .unwrap();
    let pushed = samvad_protocol::decode_binary(&bytes, &Limits { max_bytes: 1 << 20 }).unwrap();
    assert_eq!(pushed.id, "m1");
    assert_eq!(text_of(&pushed), "binary please");
}

#[tokio::test]
async fn one_access_token_serves_many_pushes() {
    let fake = Fake::start().await;
    let setup = Setup::new(vec![fcm(&fake)], &[("phone", "fcm-token-bob", 2.1)]).await;

    setup.push(&[chat("m1", "one")]).await;
    setup.push(&[chat("m2", "two")]).await;

    let sends = fake.wait_for_sends(2).await;
    assert_eq!(fake.token_requests(), 1);
    for send in &sends {
        assert_eq!(send.header("authorization"), "Bearer access-1");
    }
    assert_eq!(setup.sent(), 2);
}

#[tokio::test]
async fn pushes_at_the_same_moment_wait_for_one_token_request() {
    let fake = Fake::start().await;
    let devices: Vec<(String, String)> = (0..8)
        .map(|i| (format!("d{i}"), format!("fcm-token-{i}")))
        .collect();
    let devices: Vec<(&str, &str, f32)> = devices
        .iter()
        .map(|(d, t)| (d.as_str(), t.as_str(), 2.1))
        .collect();
    let setup = Setup::new(vec![fcm(&fake)], &devices).await;

    // Eight devices are pushed to at once, before any token exists.
    setup.push(&[chat("m1", "to every device")]).await;

    let sends = fake.wait_for_sends(8).await;
    assert_eq!(fake.token_requests(), 1, "one refresh, shared");
    let mut tokens: Vec<String> = sends
        .iter()
        .map(|s| s.json()["message"]["token"].as_str().unwrap().to_owned())
        .collect();
    tokens.sort();
    assert_eq!(tokens.len(), 8);
    tokens.dedup();
    assert_eq!(tokens.len(), 8, "each device once");
    assert_eq!(setup.sent(), 8);
}

#[tokio::test]
async fn a_503_is_retried_until_fcm_takes_the_push() {
    let fake = Fake::start().await;
    fake.script([Reply::json(
        503,
        json!({"error": {"code": 503, "status": "UNAVAILABLE"}}),
    )]);
    let setup = Setup::new(vec![fcm(&fake)], &[("phone", "fcm-token-bob", 2.1)]).await;

    setup.push(&[chat("m1", "hello")]).await;

    let sends = fake.sends();
    assert_eq!(sends.len(), 2, "the 503 and the retry");
    assert_eq!(sends[0].body, sends[1].body, "the same push again");
    assert_eq!((setup.sent(), setup.failed("unavailable")), (1, 0));
}

#[tokio::test]
async fn a_429_is_retried_no_sooner_than_retry_after_says() {
    let fake = Fake::start().await;
    fake.script([Reply::json(
        429,
        json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}),
    )
    .with_header("retry-after", "1")]);
    let setup = Setup::new(vec![fcm(&fake)], &[("phone", "fcm-token-bob", 2.1)]).await;

    setup.push(&[chat("m1", "hello")]).await;

    let sends = fake.sends();
    assert_eq!(sends.len(), 2);
    let waited = sends[1].at.duration_since(sends[0].at);
    assert!(
        waited >= Duration::from_millis(950),
        "retried after {waited:?}, before Retry-After: 1"
    );
    assert_eq!(setup.sent(), 1);
}

#[tokio::test]
async fn an_fcm_that_stays_down_is_given_up_after_a_bounded_number_of_tries() {
    let fake = Fake::start().await;
    fake.always(Reply::status(500));
    let setup = Setup::new(vec![fcm(&fake)], &[("phone", "fcm-token-bob", 2.1)]).await;

    setup.push(&[chat("m1", "hello")]).await;

    assert_eq!(fake.sends().len(), fast_retry().attempts as usize);
    assert_eq!((setup.sent(), setup.failed("unavailable")), (0, 1));
    assert_eq!(
        setup.tokens().await,
        vec!["fcm-token-bob"],
        "the token is kept"
    );
}

#[tokio::test]
async fn an_unregistered_token_is_forgotten() {
    let fake = Fake::start().await;
    fake.script([Reply::unregistered()]);
    let setup = Setup::new(
        vec![fcm(&fake)],
        &[("old-phone", "fcm-dead", 2.1), ("phone", "fcm-alive", 2.1)],
    )
    .await;

    setup.push(&[chat("m1", "hello")]).await;

    assert_eq!(fake.sends().len(), 2, "a 404 is not retried");
    let dead = fake
        .sends()
        .iter()
        .filter(|s| s.json()["message"]["token"] == "fcm-dead")
        .count();
    assert_eq!(dead, 1);
    assert_eq!(setup.tokens().await, vec!["fcm-alive"]);
    assert_eq!(
        (setup.sent(), setup.failed("gone"), setup.removed()),
        (1, 1, 1)
    );

    // The next message goes only to the device that is left.
    setup.push(&[chat("m2", "again")]).await;
    let sends = fake.sends();
    assert_eq!(sends.len(), 3);
    assert_eq!(sends[2].json()["message"]["token"], "fcm-alive");
}

#[tokio::test]
async fn an_invalid_token_is_forgotten_but_other_refusals_keep_the_token() {
    let fake = Fake::start().await;
    let setup = Setup::new(vec![fcm(&fake)], &[("phone", "not-a-token", 2.1)]).await;

    fake.script([Reply::invalid_token()]);
    setup.push(&[chat("m1", "hello")]).await;
    assert!(setup.tokens().await.is_empty());
    assert_eq!(setup.removed(), 1);

    setup
        .store
        .login(
            "bob",
            &samvad_store::Device {
                device_id: "phone".into(),
                notification_token: "fcm-token-bob".into(),
                message_version: 2.1,
            },
            10,
        )
        .await
        .unwrap();
    fake.script([Reply::json(
        400,
        json!({"error": {"code": 400, "status": "INVALID_ARGUMENT",
                         "message": "Request contains an invalid argument."}}),
    )]);
    setup.push(&[chat("m2", "hello")]).await;
    assert_eq!(fake.sends().len(), 2, "a 400 is not retried");
    assert_eq!(setup.tokens().await, vec!["fcm-token-bob"]);
    assert_eq!((setup.failed("rejected"), setup.removed()), (1, 1));
}

#[tokio::test]
async fn a_401_gets_a_new_access_token_and_one_more_try() {
    let fake = Fake::start().await;
    fake.script([Reply::json(
        401,
        json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}}),
    )]);
    let setup = Setup::new(vec![fcm(&fake)], &[("phone", "fcm-token-bob", 2.1)]).await;

    setup.push(&[chat("m1", "hello")]).await;

    let sends = fake.sends();
    assert_eq!(sends.len(), 2);
    assert_eq!(sends[0].header("authorization"), "Bearer access-1");
    assert_eq!(sends[1].header("authorization"), "Bearer access-2");
    assert_eq!((fake.token_requests(), setup.sent()), (2, 1));
}

#[tokio::test]
async fn a_service_account_the_token_endpoint_refuses_sends_nothing() {
    let fake = Fake::start().await;
    let stranger = ServiceAccount {
        client_email: "someone-else@test-project.iam.gserviceaccount.com".into(),
        ..service_account(&fake)
    };
    let provider = Fcm::new(stranger, &fake.url, http(), fast_retry()).unwrap();
    let setup = Setup::new(
        vec![std::sync::Arc::new(provider)],
        &[("phone", "fcm-token-bob", 2.1)],
    )
    .await;

    setup.push(&[chat("m1", "hello")]).await;

    assert!(fake.sends().is_empty());
    assert_eq!(fake.token_requests(), 1, "a refusal is not retried");
    assert_eq!((setup.sent(), setup.failed("auth")), (0, 1));
    assert_eq!(setup.tokens().await, vec!["fcm-token-bob"]);
}

#[test]
fn a_key_that_cannot_sign_is_refused_at_start() {
    let account = ServiceAccount {
        project_id: "p".into(),
        client_email: "e".into(),
        private_key: "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
            .into(),
        token_uri: "http://127.0.0.1:9/token".into(),
    };
    assert!(Fcm::new(account, "http://127.0.0.1:9", http(), fast_retry()).is_err());
}
