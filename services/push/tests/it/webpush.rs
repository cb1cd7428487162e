//! Web Push: a browser's subscription gets a VAPID-signed request whose body only that
//! browser can decrypt; dead subscriptions are forgotten, busy services retried.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use push::{Vapid, WebPush, generate_keys};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::fake::{Fake, Reply};
use crate::{Setup, chat, decode_v2, fast_retry, http, text_of, webpush};

const SUBJECT: &str = "mailto:ops@samvad.test";

/// The browser's side of a subscription: its key pair and auth secret.
struct Browser {
    secret: SecretKey,
    auth: [u8; 16],
}

impl Browser {
    fn new() -> Self {
        Self {
            secret: SecretKey::from_slice(&rand::random::<[u8; 32]>()).unwrap(),
            auth: rand::random(),
        }
    }

    /// `PushSubscription.toJSON()`, the device's notificationToken.
    fn subscription(&self, endpoint: &str) -> String {
        json!({
            "endpoint": endpoint,
            "expirationTime": null,
            "keys": {
                "p256dh": URL_SAFE_NO_PAD.encode(self.secret.public_key().to_encoded_point(false).as_bytes()),
                "auth": URL_SAFE_NO_PAD.encode(self.auth),
            }
        })
        .to_string()
    }

    /// What the browser does with a push body (RFC 8291 from the receiving end).
    fn decrypt(&self, body: &[u8]) -> Vec<u8> {
        let salt = &body[..16];
        let record_size = u32::from_be_bytes(body[16..20].try_into().unwrap()) as usize;
        let key_len = body[20] as usize;
        let sender = &body[21..21 + key_len];
        let sealed = &body[21 + key_len..];
        assert!(sealed.len() <= record_size, "one record");
        let sender_key = PublicKey::from_sec1_bytes(sender).unwrap();
        let shared =
            p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), sender_key.as_affine());
        let mut info = b"WebPush: info\0".to_vec();
        info.extend_from_slice(self.secret.public_key().to_encoded_point(false).as_bytes());
        info.extend_from_slice(sender);
        let mut ikm = [0; 32];
        Hkdf::<Sha256>::new(Some(&self.auth), shared.raw_secret_bytes())
            .expand(&info, &mut ikm)
            .unwrap();
        let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
        let (mut key, mut nonce) = ([0; 16], [0; 12]);
        prk.expand(b"Content-Encoding: aes128gcm\0", &mut key)
            .unwrap();
        prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
            .unwrap();
        let mut plain = Aes128Gcm::new_from_slice(&key)
            .unwrap()
            .decrypt(&Nonce::from(nonce), sealed)
            .expect("the push decrypts with the subscription's keys");
        let end = plain.iter().rposition(|b| *b != 0).unwrap();
        assert_eq!(plain[end], 2, "the last record's delimiter");
        plain.truncate(end);
        plain
    }
}

fn vapid() -> (Vapid, String) {
    let (private, public) = generate_keys();
    (Vapid::new(&private, SUBJECT).unwrap(), public)
}

#[tokio::test]
async fn a_browser_gets_an_encrypted_vapid_signed_push() {
    let fake = Fake::start().await;
    let browser = Browser::new();
    let (vapid, public_key) = vapid();
    let setup = Setup::new(
        vec![webpush(vapid)],
        &[("web", &browser.subscription(&fake.endpoint("sub-1")), 2.1)],
    )
    .await;

    setup.push(&[chat("m1", "hello browser")]).await;

    let sends = fake.wait_for_sends(1).await;
    assert_eq!(sends.len(), 1);
    let send = &sends[0];
    assert_eq!(send.path, "/push/sub-1");
    assert_eq!(send.header("content-encoding"), "aes128gcm");
    assert_eq!(send.header("content-type"), "application/octet-stream");
    assert_eq!(send.header("ttl"), "86400");
    assert_eq!(send.header("urgency"), "high");

    // Authorization: vapid t=<JWT>, k=<public key>; the JWT verifies with that key.
    let (t, k) = send
        .header("authorization")
        .strip_prefix("vapid t=")
        .expect("a vapid authorization")
        .split_once(", k=")
        .unwrap();
    assert_eq!(k, public_key);
    let point = URL_SAFE_NO_PAD.decode(k).unwrap();
    let key = DecodingKey::from_ec_components(
        &URL_SAFE_NO_PAD.encode(&point[1..33]),
        &URL_SAFE_NO_PAD.encode(&point[33..65]),
    )
    .unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[&fake.url]);
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<Value>(t, &key, &validation)
        .expect("the VAPID token verifies with k, for the endpoint's origin")
        .claims;
    assert_eq!(claims["aud"], fake.url, "the origin, no path");
    assert_eq!(claims["sub"], SUBJECT);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(claims["exp"].as_u64().unwrap() <= now + 24 * 3600);

    // Only the browser can read it, and it carries the message like FCM's data does.
    let plain: Value = serde_json::from_slice(&browser.decrypt(&send.body)).unwrap();
    let pushed = decode_v2(plain["message"].as_str().unwrap());
    assert_eq!(pushed.id, "m1");
    assert_eq!(pushed.source, "alice");
    assert_eq!(text_of(&pushed), "hello browser");
    assert_eq!(setup.sent(), 1);
}

#[tokio::test]
async fn expired_subscriptions_are_forgotten() {
    let fake = Fake::start().await;
    let browser = Browser::new();
    fake.script([Reply::status(410), Reply::status(404)]);
    let setup = Setup::new(
        vec![webpush(vapid().0)],
        &[
            ("web-1", &browser.subscription(&fake.endpoint("gone")), 2.1),
            (
                "web-2",
                &browser.subscription(&fake.endpoint("missing")),
                2.1,
            ),
        ],
    )
    .await;

    setup.push(&[chat("m1", "hello")]).await;

    assert_eq!(fake.sends().len(), 2, "neither is retried");
    assert!(setup.tokens().await.is_empty());
    assert_eq!(
        (setup.sent(), setup.failed("gone"), setup.removed()),
        (0, 2, 2)
    );
}

#[tokio::test]
async fn a_busy_push_service_is_tried_again() {
    let fake = Fake::start().await;
    let browser = Browser::new();
    fake.script([Reply::status(503)]);
    let setup = Setup::new(
        vec![webpush(vapid().0)],
        &[("web", &browser.subscription(&fake.endpoint("s")), 2.1)],
    )
    .await;

    setup.push(&[chat("m1", "hello")]).await;

    let sends = fake.sends();
    assert_eq!(sends.len(), 2);
    // Encrypted once: the retry carries the same body.
    assert_eq!(sends[0].body, sends[1].body);
    assert_eq!(
        browser.decrypt(&sends[1].body),
        browser.decrypt(&sends[0].body)
    );
    assert_eq!(setup.sent(), 1);
}

#[tokio::test]
async fn a_message_too_big_for_web_push_is_not_sent() {
    let fake = Fake::start().await;
    let browser = Browser::new();
    let setup = Setup::new(
        vec![webpush(vapid().0)],
        &[("web", &browser.subscription(&fake.endpoint("s")), 2.1)],
    )
    .await;

    setup.push(&[chat("m1", &"x".repeat(5000))]).await;

    assert!(fake.sends().is_empty());
    assert_eq!(setup.failed("too_large"), 1);
    assert_eq!(setup.tokens().await.len(), 1, "the subscription is kept");
}

#[tokio::test]
async fn a_plain_http_endpoint_is_never_called() {
    let fake = Fake::start().await;
    let browser = Browser::new();
    // Without the test switch, as the server runs it.
    let provider = WebPush::new(vapid().0, http(), fast_retry());
    let setup = Setup::new(
        vec![Arc::new(provider)],
        &[("web", &browser.subscription(&fake.endpoint("s")), 2.1)],
    )
    .await;

    setup.push(&[chat("m1", "hello")]).await;

    assert!(fake.sends().is_empty());
    assert!(
        setup.tokens().await.is_empty(),
        "an unusable subscription is forgotten"
    );
    assert_eq!(setup.removed(), 1);
}

#[tokio::test]
async fn an_endpoint_on_a_private_address_is_never_called() {
    let fake = Fake::start().await;
    let port = fake.url.rsplit(':').next().unwrap().to_owned();
    let browser = Browser::new();
    // As the server runs it: https only, public addresses only.
    let provider = WebPush::new(vapid().0, http(), fast_retry());
    let endpoints = [
        format!("https://127.0.0.1:{port}/push/s"),
        format!("https://[::1]:{port}/push/s"),
        "https://169.254.169.254/latest/meta-data".to_owned(),
        "https://10.0.0.1/s".to_owned(),
    ];
    let subscriptions: Vec<String> = endpoints.iter().map(|e| browser.subscription(e)).collect();
    let devices: Vec<(&str, &str, f32)> = ["d1", "d2", "d3", "d4"]
        .into_iter()
        .zip(&subscriptions)
        .map(|(d, s)| (d, s.as_str(), 2.1))
        .collect();
    let setup = Setup::new(vec![Arc::new(provider)], &devices).await;

    setup.push(&[chat("m1", "hello")]).await;

    assert!(fake.sends().is_empty());
    assert!(setup.tokens().await.is_empty(), "each is forgotten");
    assert_eq!(setup.removed(), 4);
}
