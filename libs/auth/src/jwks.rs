use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use http::header::{ACCEPT, CACHE_CONTROL};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::key_cache::{JwkKey, KeyCache, KeySet};
use crate::{AuthError, TokenRefusal, unix_now};

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECS: u64 = 60;
/// ID tokens are 1–2 KiB; a much larger one is refused before any parsing.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// A JWKS is a few KiB; a provider sending more is broken or hostile.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// How long a key set is fresh when the provider sends no `Cache-Control: max-age`.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);
/// A longer `max-age` is shortened to this, so a key the provider withdraws stops working
/// within a day.
const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Every waiting login is held up by a slow fetch, so it must not hang.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// RSA keys shorter than 2048 bits are ignored.
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// Where and how to check OpenID-style ID tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksConfig {
    /// The provider's key set (`https://`; `http://` only for a loopback host).
    pub jwks_url: String,
    /// The exact `iss` the tokens must carry.
    pub issuer: String,
    /// The `aud` the tokens must carry.
    pub audience: String,
    /// The claim that holds the username: `phone_number` for Firebase phone auth, `sub`, …
    pub username_claim: String,
}

impl JwksConfig {
    /// Firebase Authentication ID tokens of `project_id`, the username being the verified phone
    /// number.
    pub fn firebase(project_id: &str) -> Self {
        JwksConfig {
            jwks_url: "https://www.googleapis.com/service_accounts/v1/jwk/securetoken@system.gserviceaccount.com".to_owned(),
            issuer: format!("https://securetoken.google.com/{project_id}"),
            audience: project_id.to_owned(),
            username_claim: "phone_number".to_owned(),
        }
    }
}

/// Verifies RS256/ES256 ID tokens against a JWKS, which it fetches and caches in memory.
///
/// The key is chosen only by the token's `kid` among the configured JWKS (never from `jku`,
/// `x5u` or an embedded `jwk`). The JWKS is cached for its `Cache-Control: max-age` (1 h when
/// absent, at most 24 h), fetched by one caller at a time, and at most once per 30 s however
/// many unknown kids are presented.
pub struct JwksVerifier {
    config: JwksConfig,
    url: reqwest::Url,
    client: reqwest::Client,
    cache: RwLock<KeyCache>,
    /// Held while fetching, so that concurrent verifications wait for one fetch.
    refresh: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for JwksVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksVerifier")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl JwksVerifier {
    /// Checks `config` and keeps `client` for fetching the JWKS. Nothing is fetched until the
    /// first verification.
    ///
    /// `client` must be able to reach the URL: with reqwest's `rustls-tls-*-no-provider`
    /// features, a rustls `CryptoProvider` must have been installed before it was built.
    pub fn new(config: JwksConfig, client: reqwest::Client) -> Result<Self, AuthError> {
        let misconfigured = |what: &str| Err(AuthError::Misconfigured(what.to_owned()));
        if config.issuer.is_empty() {
            return misconfigured("the JWKS issuer is empty");
        }
        if config.audience.is_empty() {
            return misconfigured("the JWKS audience is empty");
        }
        if config.username_claim.is_empty() {
            return misconfigured("the JWKS username claim is empty");
        }
        let url = reqwest::Url::parse(&config.jwks_url).map_err(|e| {
            AuthError::Misconfigured(format!(
                "the JWKS URL {:?} is invalid: {e}",
                config.jwks_url
            ))
        })?;
        let loopback = url.host_str().is_some_and(|host| {
            host == "localhost"
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        if !(url.scheme() == "https" || url.scheme() == "http" && loopback) {
            return Err(AuthError::Misconfigured(format!(
                "the JWKS URL {:?} must use https (http only for a loopback host)",
                config.jwks_url
            )));
        }
        Ok(JwksVerifier {
            config,
            url,
            client,
            cache: RwLock::default(),
            refresh: tokio::sync::Mutex::new(()),
        })
    }

    /// Ok(()) when `token` is a valid ID token from the configured issuer, for the configured
    /// audience, whose username claim is exactly `username`.
    pub async fn verify(&self, username: &str, token: &str) -> Result<(), AuthError> {
        let refuse = |reason| Err(AuthError::TokenRefused(reason));
        if token.is_empty() {
            return refuse(TokenRefusal::Empty);
        }
        if token.len() > MAX_TOKEN_LEN {
            return refuse(TokenRefusal::Malformed);
        }
        let header = match jsonwebtoken::decode_header(token) {
            Ok(header) => header,
            // `none` and algorithms jsonwebtoken does not know fail to parse at all.
            Err(_) if declared_alg(token).is_some_and(|alg| alg != "RS256" && alg != "ES256") => {
                return refuse(TokenRefusal::UnsupportedAlgorithm);
            }
            Err(_) => return refuse(TokenRefusal::Malformed),
        };
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return refuse(TokenRefusal::UnsupportedAlgorithm);
        }
        if header.crit.is_some() {
            return refuse(TokenRefusal::UnsupportedHeader);
        }
        let Some(kid) = header.kid.filter(|kid| !kid.is_empty()) else {
            return refuse(TokenRefusal::MissingKeyId);
        };
        let key = self.key(&kid).await?;
        // The key decides the algorithm, never the token.
        if key.alg != header.alg {
            return refuse(TokenRefusal::UnsupportedAlgorithm);
        }

        let mut validation = Validation::new(key.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| AuthError::TokenRefused(refusal(e.kind())))?
            .claims;

        match claims.get("iat").and_then(Value::as_u64) {
            None => return refuse(TokenRefusal::Malformed),
            Some(iat) if iat > unix_now().saturating_add(LEEWAY_SECS) => {
                return refuse(TokenRefusal::NotYetValid);
            }
            Some(_) => {}
        }
        match claims.get(&self.config.username_claim) {
            Some(Value::String(claimed)) if !claimed.is_empty() => {
                if claimed == username {
                    Ok(())
                } else {
                    refuse(TokenRefusal::UsernameMismatch)
                }
            }
            _ => refuse(TokenRefusal::MissingUsername),
        }
    }

    /// The key named `kid`, fetching the JWKS when the cache rules allow it.
    async fn key(&self, kid: &str) -> Result<Arc<JwkKey>, AuthError> {
        if let Some(key) = self.read_cache().fresh(kid, Instant::now()) {
            return Ok(key);
        }
        let _single_flight = self.refresh.lock().await;
        // Whoever held the lock before us may have fetched already: decide again.
        if self.read_cache().should_fetch(kid, Instant::now()) {
            let fetched = self.fetch().await;
            let now = Instant::now();
            let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
            match fetched {
                Ok((keys, max_age)) => {
                    tracing::debug!(url = %self.url, keys = keys.len(), ?max_age, "fetched JWKS");
                    cache.store(keys, max_age, now);
                }
                Err(detail) => {
                    tracing::warn!(url = %self.url, error = %detail, "cannot fetch JWKS");
                    cache.record_failure(detail, now);
                }
            }
        }
        self.read_cache().resolve(kid, Instant::now())
    }

    fn read_cache(&self) -> RwLockReadGuard<'_, KeyCache> {
        // The lock is never held across a panic-prone section; a poisoned cache is still valid.
        self.cache.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// GETs and parses the JWKS; the error is a line for the log.
    async fn fetch(&self) -> Result<(KeySet, Duration), String> {
        let url = &self.url;
        let mut response = self
            .client
            .get(url.clone())
            .header(ACCEPT, "application/json")
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", response.status()));
        }
        let max_age = cache_max_age(response.headers());
        if response
            .content_length()
            .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
        {
            return Err(format!(
                "GET {url}: the JWKS exceeds {MAX_JWKS_BYTES} bytes"
            ));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!(
                    "GET {url}: the JWKS exceeds {MAX_JWKS_BYTES} bytes"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        let keys = parse_jwks(&body).map_err(|e| format!("GET {url}: {e}"))?;
        Ok((keys, max_age))
    }
}

/// The `alg` a token's header declares, when the header is JSON with a string `alg`.
fn declared_alg(token: &str) -> Option<String> {
    let header = URL_SAFE_NO_PAD.decode(token.split('.').next()?).ok()?;
    let header: Value = serde_json::from_slice(&header).ok()?;
    header.get("alg")?.as_str().map(str::to_owned)
}

/// Maps a failed `decode` to what the client is told.
fn refusal(kind: &ErrorKind) -> TokenRefusal {
    match kind {
        ErrorKind::InvalidSignature => TokenRefusal::BadSignature,
        ErrorKind::ExpiredSignature => TokenRefusal::Expired,
        ErrorKind::ImmatureSignature => TokenRefusal::NotYetValid,
        ErrorKind::InvalidIssuer => TokenRefusal::WrongIssuer,
        ErrorKind::InvalidAudience => TokenRefusal::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => TokenRefusal::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => TokenRefusal::WrongAudience,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            TokenRefusal::UnsupportedAlgorithm
        }
        _ => TokenRefusal::Malformed,
    }
}

/// `Cache-Control: max-age` (capped), `no-cache`/`no-store` meaning 0, else the default.
fn cache_max_age(headers: &HeaderMap) -> Duration {
    let directives = headers
        .get_all(CACHE_CONTROL)
        .into_iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim);
    let mut max_age = None;
    for directive in directives {
        if directive.eq_ignore_ascii_case("no-cache") || directive.eq_ignore_ascii_case("no-store")
        {
            return Duration::ZERO;
        }
        if let Some((name, value)) = directive.split_once('=')
            && name.trim().eq_ignore_ascii_case("max-age")
            && let Ok(secs) = value.trim().trim_matches('"').parse::<u64>()
        {
            max_age.get_or_insert(Duration::from_secs(secs));
        }
    }
    max_age.map_or(DEFAULT_MAX_AGE, |age| age.min(MAX_MAX_AGE))
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Value>,
}

/// The usable signature keys of a JWKS, by kid. Keys we cannot or must not use (no kid, `use`
/// other than `sig`, another key type or curve, an `alg` that does not fit the key, weak or
/// malformed key material, members jsonwebtoken does not read) are skipped, so one odd key
/// does not hide the others.
fn parse_jwks(body: &[u8]) -> Result<KeySet, String> {
    let set: JwkSet =
        serde_json::from_slice(body).map_err(|e| format!("the JWKS is not valid JSON: {e}"))?;
    let mut keys = HashMap::new();
    for value in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone().filter(|kid| !kid.is_empty()) else {
            continue;
        };
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|use_| *use_ != PublicKeyUse::Signature)
        {
            continue;
        }
        match usable_key(&jwk) {
            // A repeated kid is ambiguous; the first one wins.
            Some(key) => {
                keys.entry(kid).or_insert_with(|| Arc::new(key));
            }
            None => tracing::debug!(kid, "skipping an unusable JWK"),
        }
    }
    if keys.is_empty() {
        return Err("the JWKS holds no usable RS256 or ES256 key".to_owned());
    }
    Ok(keys)
}

/// RS256 with a modulus of at least [`MIN_RSA_MODULUS_BYTES`], or ES256 on P-256, and an
/// `alg`, if the key names one, that says so.
fn usable_key(jwk: &Jwk) -> Option<JwkKey> {
    let decoded_len = |b64: &str| URL_SAFE_NO_PAD.decode(b64).ok().map(|bytes| bytes.len());
    let (alg, declared) = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let significant = |b64: &str| {
                let bytes = URL_SAFE_NO_PAD.decode(b64).ok()?;
                Some(bytes.iter().skip_while(|b| **b == 0).count())
            };
            if significant(&rsa.n)? < MIN_RSA_MODULUS_BYTES
                || !(1..=8).contains(&significant(&rsa.e)?)
            {
                return None;
            }
            (Algorithm::RS256, KeyAlgorithm::RS256)
        }
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            if decoded_len(&ec.x)? != 32 || decoded_len(&ec.y)? != 32 {
                return None;
            }
            (Algorithm::ES256, KeyAlgorithm::ES256)
        }
        _ => return None,
    };
    if jwk
        .common
        .key_algorithm
        .is_some_and(|named| named != declared)
    {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(JwkKey { alg, key })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use serde_json::json;

    use super::*;

    const FIXTURE: &str = include_str!("../tests/fixtures/jwks.json");

    fn fixture_keys() -> Vec<Value> {
        let set: Value = serde_json::from_str(FIXTURE).unwrap();
        set["keys"].as_array().unwrap().clone()
    }

    fn with(mut key: Value, member: &str, value: Value) -> Value {
        key[member] = value;
        key
    }

    fn parse(keys: Vec<Value>) -> Result<KeySet, String> {
        parse_jwks(json!({ "keys": keys }).to_string().as_bytes())
    }

    fn max_age(values: &[&str]) -> Duration {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(CACHE_CONTROL, HeaderValue::from_str(value).unwrap());
        }
        cache_max_age(&headers)
    }

    #[test]
    fn the_fixture_yields_one_rs256_and_one_es256_key() {
        let keys = parse(fixture_keys()).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys["rsa-1"].alg, Algorithm::RS256);
        assert_eq!(keys["ec-1"].alg, Algorithm::ES256);
    }

    #[test]
    fn keys_we_must_not_use_are_skipped_and_the_rest_kept() {
        let [rsa, ec] = <[Value; 2]>::try_from(fixture_keys()).unwrap();
        let mut without_kid = rsa.clone();
        without_kid.as_object_mut().unwrap().remove("kid");
        let skipped = [
            with(rsa.clone(), "use", json!("enc")),
            with(rsa.clone(), "alg", json!("RS512")),
            with(ec.clone(), "alg", json!("RS256")),
            with(ec.clone(), "crv", json!("P-384")),
            with(rsa.clone(), "n", json!("AQAB")),
            with(ec.clone(), "x", json!("AAAA")),
            with(rsa.clone(), "kty", json!("oct")),
            without_kid,
            json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "AAAA"}),
            json!("not an object"),
        ];
        for bad in &skipped {
            assert_eq!(
                parse(vec![bad.clone()]).err().as_deref(),
                Some("the JWKS holds no usable RS256 or ES256 key"),
                "{bad}"
            );
        }
        let mut mixed = skipped.to_vec();
        mixed.push(with(ec, "kid", json!("ec-2")));
        let keys = parse(mixed).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["ec-2"]);
    }

    #[test]
    fn a_key_without_use_or_alg_is_accepted() {
        let [mut rsa, _] = <[Value; 2]>::try_from(fixture_keys()).unwrap();
        rsa.as_object_mut().unwrap().remove("use");
        rsa.as_object_mut().unwrap().remove("alg");
        assert_eq!(parse(vec![rsa]).unwrap()["rsa-1"].alg, Algorithm::RS256);
    }

    #[test]
    fn a_body_that_is_not_a_jwks_is_an_error() {
        for body in ["", "<html>", "{}", r#"{"keys": "x"}"#] {
            assert!(parse_jwks(body.as_bytes()).is_err(), "{body}");
        }
    }

    #[test]
    fn max_age_is_honoured_capped_and_defaulted() {
        assert_eq!(
            max_age(&["public, max-age=19813, must-revalidate"]),
            Duration::from_secs(19813)
        );
        assert_eq!(max_age(&["MAX-AGE=\"60\""]), Duration::from_secs(60));
        assert_eq!(max_age(&["max-age=999999999"]), MAX_MAX_AGE);
        assert_eq!(max_age(&[]), DEFAULT_MAX_AGE);
        assert_eq!(max_age(&["public", "max-age=oops"]), DEFAULT_MAX_AGE);
        assert_eq!(max_age(&["no-store"]), Duration::ZERO);
        assert_eq!(max_age(&["max-age=600", "no-cache"]), Duration::ZERO);
    }

    #[test]
    fn the_firebase_preset_checks_the_project_and_the_phone_number() {
        let config = JwksConfig::firebase("samvad-prod");
        assert_eq!(
            config.jwks_url,
            "https://www.googleapis.com/service_accounts/v1/jwk/securetoken@system.gserviceaccount.com"
        );
        assert_eq!(config.issuer, "https://securetoken.google.com/samvad-prod");
        assert_eq!(config.audience, "samvad-prod");
        assert_eq!(config.username_claim, "phone_number");
    }

    #[test]
    fn unusable_configurations_are_refused_at_construction() {
        let base = JwksConfig {
            jwks_url: "https://idp.example/jwks".into(),
            issuer: "https://idp.example".into(),
            audience: "samvad".into(),
            username_claim: "sub".into(),
        };
        // reqwest is built without a default rustls provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let cases = [
            JwksConfig {
                jwks_url: "http://idp.example/jwks".into(),
                ..base.clone()
            },
            JwksConfig {
                jwks_url: "not a url".into(),
                ..base.clone()
            },
            JwksConfig {
                jwks_url: "file:///etc/jwks.json".into(),
                ..base.clone()
            },
            JwksConfig {
                issuer: String::new(),
                ..base.clone()
            },
            JwksConfig {
                audience: String::new(),
                ..base.clone()
            },
            JwksConfig {
                username_claim: String::new(),
                ..base.clone()
            },
        ];
        for config in cases {
            assert!(
                matches!(
                    JwksVerifier::new(config.clone(), client.clone()),
                    Err(AuthError::Misconfigured(_))
                ),
                "{config:?}"
            );
        }
        for url in [
            "https://idp.example/jwks",
            "http://127.0.0.1:8080/jwks",
            "http://[::1]/k",
            "http://localhost/k",
        ] {
            let config = JwksConfig {
                jwks_url: url.into(),
                ..base.clone()
            };
            assert!(JwksVerifier::new(config, client.clone()).is_ok(), "{url}");
        }
    }
}
