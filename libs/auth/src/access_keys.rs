use std::fmt;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::{AuthError, Credentials, UrlSigner, unix_now};

/// HS256 is only as strong as its secret; 32 bytes is the size of its output.
const MIN_SECRET_LEN: usize = 32;
/// Our keys are ~250 bytes; anything much longer is not ours and is refused unparsed.
const MAX_KEY_LEN: usize = 4096;
/// Clock skew tolerated between the service that issued a key and the one checking it.
const LEEWAY_SECS: u64 = 60;

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    /// The device the key was issued to (PROTOCOL §7); keys issued before devices had one
    /// act as the default device.
    #[serde(default = "default_device")]
    dev: String,
    /// The device's session (the device's link to its user, made at its first login and ended
    /// by its logout): a key outlives neither. Keys from before sessions have none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    sid: String,
    iat: u64,
    exp: u64,
}

/// The device a login names when it names none.
pub const DEFAULT_DEVICE: &str = "default";

fn default_device() -> String {
    DEFAULT_DEVICE.to_owned()
}

/// Who an access key speaks for: a user, on one of their devices.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub user: String,
    pub device: String,
}

impl Identity {
    pub fn new(user: impl Into<String>, device: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            device: device.into(),
        }
    }
}

/// What a genuine, unexpired access key says: whom it speaks for, the device session it was
/// issued in (empty for a key from before sessions), and when it stops being accepted (its
/// expiry plus the clock skew tolerated, in seconds since the Unix epoch). Whether that
/// session still stands is the caller's to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub who: Identity,
    pub session: String,
    pub expires: u64,
}

/// Signed, expiring access keys (HS256 JWTs with a `kid` header; claims: sub=username,
/// dev=device id, sid=device session, iat, exp).
///
/// Several `(kid, secret)` pairs can be configured: the first signs, all verify, so a secret is
/// rotated by putting a new pair first and dropping the old one once its keys have expired.
pub struct AccessKeys {
    signing_kid: String,
    signing_key: EncodingKey,
    verifying: Vec<(String, DecodingKey)>,
    ttl: Duration,
    validation: Validation,
    urls: UrlSigner,
}

impl fmt::Debug for AccessKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessKeys")
            .field(
                "kids",
                &self
                    .verifying
                    .iter()
                    .map(|(kid, _)| kid)
                    .collect::<Vec<_>>(),
            )
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl AccessKeys {
    /// `keys`: (kid, secret bytes) pairs, the first one signs, all verify (key rotation).
    /// Error if empty, if a kid is empty or repeated, if a secret is shorter than 32 bytes, or if
    /// `ttl` is under a second.
    pub fn new(keys: Vec<(String, Vec<u8>)>, ttl: Duration) -> Result<Self, AuthError> {
        let misconfigured = |what: String| Err(AuthError::Misconfigured(what));
        let Some((signing_kid, signing_secret)) = keys.first() else {
            return misconfigured("no access-key secret is configured".into());
        };
        if ttl.as_secs() == 0 {
            return misconfigured("the access-key lifetime must be at least one second".into());
        }
        for (i, (kid, secret)) in keys.iter().enumerate() {
            if kid.is_empty() {
                return misconfigured(format!("access-key secret #{} has an empty kid", i + 1));
            }
            if keys[..i].iter().any(|(earlier, _)| earlier == kid) {
                return misconfigured(format!("access-key kid {kid:?} is configured twice"));
            }
            if secret.len() < MIN_SECRET_LEN {
                return misconfigured(format!(
                    "access-key secret {kid:?} is {} bytes; at least {MIN_SECRET_LEN} are required",
                    secret.len()
                ));
            }
        }

        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let access_keys = AccessKeys {
            signing_kid: signing_kid.clone(),
            signing_key: EncodingKey::from_secret(signing_secret),
            verifying: keys
                .iter()
                .map(|(kid, secret)| (kid.clone(), DecodingKey::from_secret(secret)))
                .collect(),
            ttl,
            validation,
            urls: UrlSigner::new(keys.iter().map(|(_, secret)| secret.as_slice())),
        };
        // Sign once now, so that `issue` cannot fail later on a request path.
        access_keys.sign(
            &Identity::new("probe", DEFAULT_DEVICE),
            "probe",
            unix_now(),
            unix_now() + 1,
        )?;
        Ok(access_keys)
    }

    /// Signs and checks expiring URLs, with keys derived from the same secrets.
    pub fn urls(&self) -> &UrlSigner {
        &self.urls
    }

    /// A fresh access key for `who` in device session `session`, valid for the configured
    /// lifetime.
    pub fn issue(&self, who: &Identity, session: &str) -> String {
        let now = unix_now();
        self.sign(who, session, now, now.saturating_add(self.ttl.as_secs()))
            // `new` proved that signing works: HS256 over claims we serialise ourselves has no
            // failure mode left.
            .expect("HS256 signing with a validated key cannot fail")
    }

    fn sign(&self, who: &Identity, session: &str, iat: u64, exp: u64) -> Result<String, AuthError> {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.signing_kid.clone());
        let claims = Claims {
            sub: who.user.clone(),
            dev: who.device.clone(),
            sid: session.to_owned(),
            iat,
            exp,
        };
        jsonwebtoken::encode(&header, &claims, &self.signing_key)
            .map_err(|e| AuthError::Misconfigured(format!("cannot sign access keys: {e}")))
    }

    /// Verifies signature (key chosen by kid among ours; unknown kid refused), expiry, algorithm
    /// HS256 only. Returns what the key says.
    pub fn verify(&self, key: &str) -> Result<Access, AuthError> {
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(AuthError::InvalidAccessKey);
        }
        // `alg: none` and unknown algorithms already fail to parse here.
        let header = jsonwebtoken::decode_header(key).map_err(|_| AuthError::InvalidAccessKey)?;
        if header.alg != Algorithm::HS256 {
            return Err(AuthError::InvalidAccessKey);
        }
        let kid = header.kid.ok_or(AuthError::InvalidAccessKey)?;
        let (_, secret) = self
            .verifying
            .iter()
            .find(|(ours, _)| *ours == kid)
            .ok_or(AuthError::InvalidAccessKey)?;
        let claims = jsonwebtoken::decode::<Claims>(key, secret, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::ExpiredAccessKey,
                _ => AuthError::InvalidAccessKey,
            })?
            .claims;
        if claims.sub.is_empty()
            || claims.dev.is_empty()
            || claims.iat > unix_now().saturating_add(LEEWAY_SECS)
        {
            return Err(AuthError::InvalidAccessKey);
        }
        Ok(Access {
            who: Identity {
                user: claims.sub,
                device: claims.dev,
            },
            session: claims.sid,
            expires: claims.exp.saturating_add(LEEWAY_SECS),
        })
    }

    /// Verify credentials: key valid, and if `user` is present it must equal the key's username
    /// (else [`AuthError::UserMismatch`]). Returns what the key says.
    pub fn authenticate(&self, creds: &Credentials) -> Result<Access, AuthError> {
        let access = self.verify(&creds.key)?;
        match &creds.user {
            Some(user) if *user != access.who.user => Err(AuthError::UserMismatch),
            _ => Ok(access),
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn pair(kid: &str, fill: u8) -> (String, Vec<u8>) {
        (kid.to_owned(), vec![fill; 32])
    }

    fn keys(pairs: &[(String, Vec<u8>)]) -> AccessKeys {
        AccessKeys::new(pairs.to_vec(), DAY).unwrap()
    }

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn an_issued_key_verifies_to_its_username() {
        let keys = keys(&[pair("k1", 1)]);
        let key = keys.issue(&Identity::new("+919999900001", DEFAULT_DEVICE), "s1");
        assert_eq!(keys.verify(&key).unwrap().who.user, "+919999900001");
    }

    #[test]
    fn an_issued_key_carries_kid_and_expires_after_the_ttl() {
        let keys = AccessKeys::new(vec![pair("k1", 1)], Duration::from_secs(600)).unwrap();
        let key = keys.issue(&Identity::new("alice", DEFAULT_DEVICE), "s1");
        let header = jsonwebtoken::decode_header(&key).unwrap();
        assert_eq!(header.alg, Algorithm::HS256);
        assert_eq!(header.kid.as_deref(), Some("k1"));
        let claims: Claims = jsonwebtoken::dangerous::insecure_decode(&key)
            .unwrap()
            .claims;
        assert_eq!(claims.exp - claims.iat, 600);
    }

    #[test]
    fn an_expired_key_is_refused_as_expired() {
        let keys = keys(&[pair("k1", 1)]);
        let now = unix_now();
        let key = keys
            .sign(
                &Identity::new("alice", DEFAULT_DEVICE),
                "s1",
                now - 7200,
                now - 3600,
            )
            .unwrap();
        assert!(matches!(
            keys.verify(&key),
            Err(AuthError::ExpiredAccessKey)
        ));
    }

    #[test]
    fn a_key_issued_in_the_future_is_refused() {
        let keys = keys(&[pair("k1", 1)]);
        let now = unix_now();
        let key = keys
            .sign(
                &Identity::new("alice", DEFAULT_DEVICE),
                "s1",
                now + 3600,
                now + 7200,
            )
            .unwrap();
        assert!(matches!(
            keys.verify(&key),
            Err(AuthError::InvalidAccessKey)
        ));
    }

    #[test]
    fn a_tampered_key_is_refused() {
        let keys = keys(&[pair("k1", 1)]);
        let key = keys.issue(&Identity::new("alice", DEFAULT_DEVICE), "s1");
        let mut parts: Vec<String> = key.split('.').map(str::to_owned).collect();
        let now = unix_now();
        parts[1] = b64(&format!(
            r#"{{"sub":"mallory","iat":{now},"exp":{}}}"#,
            now + 3600
        ));
        let forged = parts.join(".");
        assert!(matches!(
            keys.verify(&forged),
            Err(AuthError::InvalidAccessKey)
        ));

        // One flipped character in the signature.
        let mut bytes = key.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(bytes).unwrap();
        assert!(matches!(
            keys.verify(&flipped),
            Err(AuthError::InvalidAccessKey)
        ));
    }

    #[test]
    fn a_key_with_an_unknown_kid_is_refused() {
        let theirs = keys(&[pair("k9", 1)]);
        // Same secret, other kid: the kid alone decides, and "k9" is not ours.
        let ours = keys(&[pair("k1", 1)]);
        assert!(matches!(
            ours.verify(&theirs.issue(&Identity::new("alice", DEFAULT_DEVICE), "s1")),
            Err(AuthError::InvalidAccessKey)
        ));
    }

    #[test]
    fn a_key_signed_with_another_secret_under_our_kid_is_refused() {
        let theirs = keys(&[pair("k1", 2)]);
        let ours = keys(&[pair("k1", 1)]);
        assert!(matches!(
            ours.verify(&theirs.issue(&Identity::new("alice", DEFAULT_DEVICE), "s1")),
            Err(AuthError::InvalidAccessKey)
        ));
    }

    #[test]
    fn a_key_speaks_for_one_device_and_an_older_key_for_the_default_one() {
        let keys = keys(&[pair("k1", 1)]);
        let tablet = Identity::new("alice", "tablet");
        let access = keys.verify(&keys.issue(&tablet, "s7")).unwrap();
        assert_eq!((access.who, access.session.as_str()), (tablet, "s7"));
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let now = unix_now();
        let without_device = serde_json::json!({ "sub": "alice", "iat": now, "exp": now + 60 });
        let key = jsonwebtoken::encode(
            &header,
            &without_device,
            &EncodingKey::from_secret(&[1; 32]),
        )
        .unwrap();
        let access = keys.verify(&key).unwrap();
        assert_eq!(access.who, Identity::new("alice", DEFAULT_DEVICE));
        assert_eq!(access.session, "", "a key from before sessions has none");
    }

    #[test]
    fn a_key_without_kid_is_refused() {
        let keys = keys(&[pair("k1", 1)]);
        let now = unix_now();
        let claims = Claims {
            sub: "alice".into(),
            dev: DEFAULT_DEVICE.into(),
            sid: String::new(),
            iat: now,
            exp: now + 60,
        };
        let key = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&[1; 32]),
        )
        .unwrap();
        assert!(matches!(
            keys.verify(&key),
            Err(AuthError::InvalidAccessKey)
        ));
    }

    #[test]
    fn rotation_keeps_keys_signed_by_the_older_secret_valid() {
        let old = keys(&[pair("2024", 1)]);
        let issued_before_rotation = old.issue(&Identity::new("alice", DEFAULT_DEVICE), "s1");
        let rotated = keys(&[pair("2025", 2), pair("2024", 1)]);
        assert_eq!(
            rotated.verify(&issued_before_rotation).unwrap().who.user,
            "alice"
        );

        let issued_after_rotation = rotated.issue(&Identity::new("bob", DEFAULT_DEVICE), "s1");
        assert_eq!(
            jsonwebtoken::decode_header(&issued_after_rotation)
                .unwrap()
                .kid
                .as_deref(),
            Some("2025")
        );
        assert_eq!(
            rotated.verify(&issued_after_rotation).unwrap().who.user,
            "bob"
        );
        // Once the old secret is dropped, its keys stop working.
        let retired = keys(&[pair("2025", 2)]);
        assert!(matches!(
            retired.verify(&issued_before_rotation),
            Err(AuthError::InvalidAccessKey)
        ));
    }

    #[test]
    fn an_unsigned_alg_none_key_is_refused() {
        let keys = keys(&[pair("k1", 1)]);
        let now = unix_now();
        let header = b64(r#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
        let claims = b64(&format!(
            r#"{{"sub":"alice","iat":{now},"exp":{}}}"#,
            now + 3600
        ));
        for key in [format!("{header}.{claims}."), format!("{header}.{claims}")] {
            assert!(matches!(
                keys.verify(&key),
                Err(AuthError::InvalidAccessKey)
            ));
        }
    }

    #[test]
    fn an_rs256_signed_key_is_refused() {
        let keys = keys(&[pair("k1", 1)]);
        let rsa = EncodingKey::from_rsa_pem(include_bytes!("../tests/fixtures/rsa.pem")).unwrap();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("k1".into());
        let now = unix_now();
        let claims = Claims {
            sub: "alice".into(),
            dev: DEFAULT_DEVICE.into(),
            sid: String::new(),
            iat: now,
            exp: now + 3600,
        };
        let key = jsonwebtoken::encode(&header, &claims, &rsa).unwrap();
        assert!(matches!(
            keys.verify(&key),
            Err(AuthError::InvalidAccessKey)
        ));
    }

    #[test]
    fn garbage_and_oversized_keys_are_refused() {
        let keys = keys(&[pair("k1", 1)]);
        let huge = format!(
            "{}.{}.x",
            keys.issue(&Identity::new("alice", DEFAULT_DEVICE), "s1"),
            "A".repeat(MAX_KEY_LEN)
        );
        for key in ["", "not-a-jwt", "a.b.c", huge.as_str()] {
            assert!(matches!(keys.verify(key), Err(AuthError::InvalidAccessKey)));
        }
    }

    #[test]
    fn unusable_configurations_are_refused_at_construction() {
        let cases = [
            (vec![], DAY),
            (vec![(String::from("k1"), vec![1; 31])], DAY),
            (vec![pair("", 1)], DAY),
            (vec![pair("k1", 1), pair("k1", 2)], DAY),
            (vec![pair("k1", 1)], Duration::from_millis(500)),
        ];
        for (pairs, ttl) in cases {
            let result = AccessKeys::new(pairs.clone(), ttl);
            assert!(
                matches!(result, Err(AuthError::Misconfigured(_))),
                "{pairs:?} / {ttl:?}"
            );
        }
    }

    #[test]
    fn debug_output_shows_kids_but_never_secrets() {
        let keys = keys(&[(
            String::from("k1"),
            b"0123456789abcdef0123456789abcdef".to_vec(),
        )]);
        let debug = format!("{keys:?}");
        assert!(debug.contains("k1"));
        assert!(!debug.contains("0123456789abcdef"));
    }

    #[test]
    fn authenticate_accepts_a_matching_or_absent_user_and_refuses_another() {
        let keys = keys(&[pair("k1", 1)]);
        let creds = |user: Option<&str>| Credentials {
            user: user.map(str::to_owned),
            key: keys.issue(&Identity::new("alice", DEFAULT_DEVICE), "s1"),
            subprotocol: None,
        };
        assert_eq!(
            keys.authenticate(&creds(Some("alice"))).unwrap().who.user,
            "alice"
        );
        assert_eq!(keys.authenticate(&creds(None)).unwrap().who.user, "alice");
        assert!(matches!(
            keys.authenticate(&creds(Some("bob"))),
            Err(AuthError::UserMismatch)
        ));
        let forged = Credentials {
            user: Some("alice".into()),
            key: "forged".into(),
            subprotocol: None,
        };
        assert!(matches!(
            keys.authenticate(&forged),
            Err(AuthError::InvalidAccessKey)
        ));
    }
}
