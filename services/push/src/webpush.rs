//! Web Push for browsers: the payload encrypted for the subscription (RFC 8291, `aes128gcm`
//! of RFC 8188) and the request signed by the server's VAPID key (RFC 8292), sent with our own
//! HTTP client. Written here on RustCrypto (p256, hkdf, sha2, aes-gcm) rather than taken from
//! the `web-push` crate, whose encryption (`ece`) has only an OpenSSL backend; see
//! docs/PUSH.md.
//!
//! A device's token is the browser's subscription JSON: `{"endpoint", "keys": {"p256dh",
//! "auth"}}`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use async_trait::async_trait;
use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use hkdf::Hkdf;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

use crate::provider::{
    Failure, Outcome, Push, PushProvider, Retry, Step, excerpt, read_capped, retry_after,
    transient, with_retries,
};

/// Record size written in the header; one record carries the whole message.
const RECORD_SIZE: u32 = 4096;
/// Largest plaintext a push service must accept (RFC 8291 §4: 4096 octets of body, less the
/// 86-octet header, the 16-octet tag and the padding delimiter).
pub const MAX_PLAINTEXT: usize = 3993;
/// How long a push service keeps an undelivered push, in seconds. The message itself waits
/// in its conversation for as long as it takes; the push only wakes the browser.
pub const TTL_SECS: u64 = 86_400;
/// Lifetime of a VAPID token (RFC 8292 allows at most 24 hours).
const VAPID_LIFETIME_SECS: u64 = 12 * 3600;

/// base64url, with or without padding, as browsers and libraries write it.
const B64_ANY: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebPushError {
    #[error("the VAPID private key is not a P-256 private key in base64url")]
    VapidKey,
    #[error("the subscription's p256dh is not a P-256 public key")]
    UserAgentKey,
    #[error("the subscription's auth secret is not 16 bytes of base64url")]
    AuthSecret,
    #[error("the subscription's endpoint is not an https URL")]
    Endpoint,
    #[error("the subscription's endpoint is not a public address")]
    PrivateEndpoint,
    #[error("encryption failed")]
    Encrypt,
}

/// A browser's push subscription, as `PushSubscription.toJSON()` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Subscription {
    pub endpoint: String,
    pub keys: SubscriptionKeys,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SubscriptionKeys {
    /// The browser's P-256 public key, uncompressed, base64url.
    pub p256dh: String,
    /// 16 random bytes, base64url.
    pub auth: String,
}

impl Subscription {
    /// The subscription a token holds, if it is one (else it is an FCM token).
    pub fn parse(token: &str) -> Option<Self> {
        if !token.trim_start().starts_with('{') {
            return None;
        }
        serde_json::from_str(token).ok()
    }
}

/// The server's VAPID identity: its key pair and the contact it gives push services.
pub struct Vapid {
    key: SigningKey,
    public_key: String,
    subject: String,
}

impl Vapid {
    /// From the private key in base64url (32 bytes) and a `mailto:` or `https:` subject.
    pub fn new(private_key: &str, subject: &str) -> Result<Self, WebPushError> {
        let bytes = B64_ANY
            .decode(private_key.trim())
            .map_err(|_| WebPushError::VapidKey)?;
        let secret = secret_key(&bytes).ok_or(WebPushError::VapidKey)?;
        Ok(Self {
            public_key: public_key(&secret),
            key: SigningKey::from(secret),
            subject: subject.to_owned(),
        })
    }

    /// The public key (uncompressed point, base64url): a browser's `applicationServerKey`.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// `Authorization: vapid t=<JWT>, k=<public key>` for a push service at `audience` (the
    /// endpoint's origin).
    pub fn authorization(&self, audience: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = URL_SAFE_NO_PAD.encode(
            json!({"aud": audience, "exp": now + VAPID_LIFETIME_SECS, "sub": self.subject})
                .to_string(),
        );
        let signing_input = format!("{header}.{claims}");
        let signature: Signature = self.key.sign(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(signature.to_bytes());
        format!("vapid t={signing_input}.{signature}, k={}", self.public_key)
    }
}

/// A new VAPID key pair, base64url: (private, public).
pub fn generate_keys() -> (String, String) {
    loop {
        // Nearly every 32 random bytes are a valid scalar; the loop is for the rest.
        if let Some(secret) = secret_key(&rand::random::<[u8; 32]>()) {
            return (
                URL_SAFE_NO_PAD.encode(secret.to_bytes()),
                public_key(&secret),
            );
        }
    }
}

fn secret_key(bytes: &[u8]) -> Option<SecretKey> {
    (bytes.len() == 32)
        .then(|| SecretKey::from_slice(bytes).ok())
        .flatten()
}

fn public_key(secret: &SecretKey) -> String {
    URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes())
}

/// Encrypts `plaintext` for a browser (RFC 8291): one `aes128gcm` record whose header carries
/// `salt` and the sender's ephemeral public key `as_secret` derives. `ua_public` is the
/// subscription's `p256dh` (65 bytes), `auth_secret` its `auth` (16 bytes).
pub fn encrypt(
    plaintext: &[u8],
    ua_public: &[u8],
    auth_secret: &[u8],
    as_secret: &SecretKey,
    salt: &[u8; 16],
) -> Result<Vec<u8>, WebPushError> {
    let ua = PublicKey::from_sec1_bytes(ua_public).map_err(|_| WebPushError::UserAgentKey)?;
    let ua_public = ua.to_encoded_point(false);
    if auth_secret.len() != 16 {
        return Err(WebPushError::AuthSecret);
    }
    let as_public = as_secret.public_key().to_encoded_point(false);
    let shared = p256::ecdh::diffie_hellman(as_secret.to_nonzero_scalar(), ua.as_affine());

    // IKM = HKDF(auth_secret, ecdh_secret, "WebPush: info" || 0 || ua_public || as_public)
    let mut key_info = b"WebPush: info\0".to_vec();
    key_info.extend_from_slice(ua_public.as_bytes());
    key_info.extend_from_slice(as_public.as_bytes());
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth_secret), shared.raw_secret_bytes())
        .expand(&key_info, &mut ikm)
        .map_err(|_| WebPushError::Encrypt)?;

    // The content-encryption key and nonce (RFC 8188 §2.2, §2.3).
    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .map_err(|_| WebPushError::Encrypt)?;
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .map_err(|_| WebPushError::Encrypt)?;

    // One record, so it is the last: the delimiter 0x02, no padding.
    let mut record = Vec::with_capacity(plaintext.len() + 1);
    record.extend_from_slice(plaintext);
    record.push(2);
    let sealed = Aes128Gcm::new_from_slice(&cek)
        .map_err(|_| WebPushError::Encrypt)?
        .encrypt(&Nonce::from(nonce), record.as_slice())
        .map_err(|_| WebPushError::Encrypt)?;

    let key_id = as_public.as_bytes();
    let mut body = Vec::with_capacity(21 + key_id.len() + sealed.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(key_id.len() as u8);
    body.extend_from_slice(key_id);
    body.extend_from_slice(&sealed);
    Ok(body)
}

/// Whether `ip` is an address on the public internet, where push services live: not
/// loopback, private, link-local, shared (CGNAT), documentation, multicast or reserved space,
/// in IPv4 or IPv6 (an IPv4-mapped IPv6 address counts as its IPv4 address).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let [first, second, ..] = a.octets();
            !(a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_documentation()
                || a.is_multicast()
                || first == 0
                || first >= 240
                || (first == 100 && (second & 0xc0) == 64))
        }
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = a.segments()[0];
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && a.segments()[1] == 0x0db8)
        }
    }
}

/// Resolves names to their public addresses only, so that a subscription naming a host that
/// points into the server's own network is never called.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let public: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if public.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client Web Push sends with: `base` resolving public addresses only.
pub(crate) fn http_client(base: reqwest::ClientBuilder) -> reqwest::Result<reqwest::Client> {
    base.dns_resolver(Arc::new(PublicOnly)).build()
}

/// The Web Push provider.
pub struct WebPush {
    http: reqwest::Client,
    vapid: Vapid,
    retry: Retry,
    allow_local: bool,
}

impl WebPush {
    /// Sends with `http`: in production one from [`http_client`], whose resolver keeps names
    /// that point into the server's own network from being called.
    pub fn new(vapid: Vapid, http: reqwest::Client, retry: Retry) -> Self {
        Self {
            http,
            vapid,
            retry,
            allow_local: false,
        }
    }

    /// Also accepts `http:` endpoints and private addresses, for tests against a local push
    /// service. Real push services are https on public addresses; refusing anything else
    /// keeps a made-up subscription from aiming the server at services on its own network.
    pub fn allow_local_endpoints(mut self) -> Self {
        self.allow_local = true;
        self
    }

    pub fn vapid(&self) -> &Vapid {
        &self.vapid
    }

    /// The endpoint and the encrypted body for a subscription.
    fn prepare(
        &self,
        subscription: &Subscription,
        plaintext: &[u8],
    ) -> Result<(Url, Vec<u8>), WebPushError> {
        let endpoint = Url::parse(&subscription.endpoint).map_err(|_| WebPushError::Endpoint)?;
        let scheme_ok =
            endpoint.scheme() == "https" || (self.allow_local && endpoint.scheme() == "http");
        if !scheme_ok || endpoint.host_str().is_none() {
            return Err(WebPushError::Endpoint);
        }
        // An address written out is never resolved, so the resolver cannot catch it.
        let literal = endpoint
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<IpAddr>().ok());
        if !self.allow_local && literal.is_some_and(|ip| !is_public(ip)) {
            return Err(WebPushError::PrivateEndpoint);
        }
        let ua_public = B64_ANY
            .decode(&subscription.keys.p256dh)
            .map_err(|_| WebPushError::UserAgentKey)?;
        let auth = B64_ANY
            .decode(&subscription.keys.auth)
            .map_err(|_| WebPushError::AuthSecret)?;
        let ephemeral = loop {
            if let Some(key) = secret_key(&rand::random::<[u8; 32]>()) {
                break key;
            }
        };
        let salt = rand::random::<[u8; 16]>();
        let body = encrypt(plaintext, &ua_public, &auth, &ephemeral, &salt)?;
        Ok((endpoint, body))
    }

    async fn attempt(&self, endpoint: &Url, body: &[u8]) -> Step {
        let audience = endpoint.origin().ascii_serialization();
        let response = match self
            .http
            .post(endpoint.clone())
            .header("Authorization", self.vapid.authorization(&audience))
            .header("Content-Encoding", "aes128gcm")
            .header("Content-Type", "application/octet-stream")
            .header("TTL", TTL_SECS.to_string())
            .header("Urgency", "high")
            .body(body.to_vec())
            .send()
            .await
        {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(%audience, %error, "webpush: send failed");
                return Step::Again { retry_after: None };
            }
        };
        let status = response.status();
        let after = retry_after(response.headers());
        let answer = read_capped(response).await;
        if status.is_success() {
            return Step::Done(Outcome::Sent);
        }
        if transient(status) {
            tracing::warn!(%audience, %status, "webpush: unavailable");
            return Step::Again { retry_after: after };
        }
        let outcome = match status {
            StatusCode::NOT_FOUND | StatusCode::GONE => Outcome::Gone,
            StatusCode::PAYLOAD_TOO_LARGE => Outcome::Failed(Failure::TooLarge),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Outcome::Failed(Failure::Auth),
            _ => Outcome::Failed(Failure::Rejected),
        };
        tracing::warn!(
            %audience,
            %status,
            error = %excerpt(&answer),
            "webpush: refused"
        );
        Step::Done(outcome)
    }
}

#[async_trait]
impl PushProvider for WebPush {
    fn name(&self) -> &'static str {
        "webpush"
    }

    fn accepts(&self, token: &str) -> bool {
        Subscription::parse(token).is_some()
    }

    async fn send(&self, push: &Push<'_>) -> Outcome {
        let Some(subscription) = Subscription::parse(push.token) else {
            return Outcome::Failed(Failure::NoProvider);
        };
        // The same shape as FCM's data: the service worker reads `message`.
        let plaintext = json!({ "message": push.message }).to_string();
        if plaintext.len() > MAX_PLAINTEXT {
            return Outcome::Failed(Failure::TooLarge);
        }
        let (endpoint, body) = match self.prepare(&subscription, plaintext.as_bytes()) {
            Ok(prepared) => prepared,
            Err(error) => {
                // It can never be delivered: the subscription is as good as gone.
                tracing::warn!(user = %push.user, device = %push.device_id, %error, "webpush: unusable subscription");
                return Outcome::Gone;
            }
        };
        with_retries(&self.retry, || self.attempt(&endpoint, &body)).await
    }
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::VerifyingKey;
    use p256::ecdsa::signature::Verifier;

    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "8.8.8.8",
            "142.250.1.1",
            "100.128.0.1",
            "2a00:1450::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn a_name_for_a_local_address_does_not_resolve() {
        use reqwest::dns::Resolve;
        let name = "localhost".parse().unwrap();
        assert!(PublicOnly.resolve(name).await.is_err());
    }

    fn b64(s: &str) -> Vec<u8> {
        B64_ANY.decode(s).unwrap()
    }

    /// RFC 8291 Appendix A, every value as the RFC prints it.
    #[test]
    fn rfc8291_example_encrypts_byte_for_byte() {
        let plaintext = b64("V2hlbiBJIGdyb3cgdXAsIEkgd2FudCB0byBiZSBhIHdhdGVybWVsb24");
        assert_eq!(plaintext, b"When I grow up, I want to be a watermelon");
        let as_secret = secret_key(&b64("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw")).unwrap();
        assert_eq!(
            public_key(&as_secret),
            "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8"
        );
        let ua_secret = secret_key(&b64("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94")).unwrap();
        let ua_public = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
        assert_eq!(public_key(&ua_secret), ua_public);
        let salt: [u8; 16] = b64("DGv6ra1nlYgDCS1FRnbzlw").try_into().unwrap();
        let body = encrypt(
            &plaintext,
            &b64(ua_public),
            &b64("BTBZMqHH6r4Tts7J_aSIgg"),
            &as_secret,
            &salt,
        )
        .unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.encode(body),
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocI\
             nmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWG\
             NWQexSgSxsj_Qulcy4a-fN"
        );
    }

    #[test]
    fn bad_subscription_keys_are_refused() {
        let as_secret = secret_key(&[7; 32]).unwrap();
        let salt = [0; 16];
        assert_eq!(
            encrypt(b"x", &[4; 65], &[0; 16], &as_secret, &salt),
            Err(WebPushError::UserAgentKey)
        );
        let ua = b64(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
        );
        assert_eq!(
            encrypt(b"x", &ua, &[0; 15], &as_secret, &salt),
            Err(WebPushError::AuthSecret)
        );
    }

    #[test]
    fn the_public_key_follows_from_the_private_key() {
        let (private, public) = generate_keys();
        let vapid = Vapid::new(&private, "mailto:ops@example.com").unwrap();
        assert_eq!(vapid.public_key(), public);
        assert_eq!(b64(&public).len(), 65);
        assert!(Vapid::new("not a key", "mailto:x@y").is_err());
        assert!(Vapid::new(&URL_SAFE_NO_PAD.encode([0u8; 32]), "mailto:x@y").is_err());
    }

    #[test]
    fn the_vapid_token_is_signed_for_the_audience() {
        let (private, public) = generate_keys();
        let vapid = Vapid::new(&private, "mailto:ops@example.com").unwrap();
        let header = vapid.authorization("https://push.example.net");
        let (t, k) = header
            .strip_prefix("vapid t=")
            .unwrap()
            .split_once(", k=")
            .unwrap();
        assert_eq!(k, public);
        let (signed, signature) = t.rsplit_once('.').unwrap();
        let key = VerifyingKey::from_sec1_bytes(&b64(k)).unwrap();
        let signature = Signature::from_slice(&b64(signature)).unwrap();
        key.verify(signed.as_bytes(), &signature).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&b64(signed.split_once('.').unwrap().1)).unwrap();
        assert_eq!(claims["aud"], "https://push.example.net");
        assert_eq!(claims["sub"], "mailto:ops@example.com");
    }

    #[test]
    fn only_subscription_json_is_a_subscription() {
        let sub = Subscription::parse(
            r#"{"endpoint": "https://push.example.net/s/1", "expirationTime": null,
                "keys": {"p256dh": "BCV", "auth": "BTB"}}"#,
        )
        .unwrap();
        assert_eq!(sub.endpoint, "https://push.example.net/s/1");
        assert_eq!(Subscription::parse("fcm-token:APA91b"), None);
        assert_eq!(Subscription::parse(r#"{"endpoint": "x"}"#), None);
    }
}
