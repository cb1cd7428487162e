//! Signed, expiring URLs: an HMAC-SHA256 over what a URL may do (its method, path, expiry and
//! anything else the caller binds to it), with keys derived (HKDF) from the access-key
//! secrets, so one configured secret serves both and rotating it rotates both.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::unix_now;

type HmacSha256 = Hmac<Sha256>;

/// What the derived keys are for, so that they are never the access keys' own.
const INFO: &[u8] = b"samvad signed urls v1";

/// Signs with the first key, verifies with any (rotation, as for access keys).
#[derive(Clone)]
pub struct UrlSigner {
    keys: Vec<[u8; 32]>,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlSigner").finish_non_exhaustive()
    }
}

impl UrlSigner {
    pub(crate) fn new<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let keys = secrets
            .into_iter()
            .map(|secret| {
                let mut key = [0; 32];
                hkdf::Hkdf::<Sha256>::new(None, secret)
                    .expand(INFO, &mut key)
                    .expect("32 bytes is a valid HKDF-SHA256 output length");
                key
            })
            .collect();
        Self { keys }
    }

    fn mac(key: &[u8; 32], parts: &[&str], expires: u64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
        for part in parts {
            // Length-prefixed, so no two different lists of parts sign the same bytes.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.update(&expires.to_be_bytes());
        mac
    }

    /// The signature (base64url) of `parts`, valid until `expires` (Unix seconds).
    pub fn sign(&self, parts: &[&str], expires: u64) -> String {
        let key = self
            .keys
            .first()
            .expect("AccessKeys has at least one secret");
        URL_SAFE_NO_PAD.encode(Self::mac(key, parts, expires).finalize().into_bytes())
    }

    /// Whether `signature` signs `parts` with any key and `expires` has not passed. The
    /// comparison takes the same time whatever the signature.
    pub fn verify(&self, parts: &[&str], expires: u64, signature: &str) -> bool {
        let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
            return false;
        };
        expires >= unix_now()
            && self.keys.iter().any(|key| {
                Self::mac(key, parts, expires)
                    .verify_slice(&signature)
                    .is_ok()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_holds_only_for_what_it_signed_until_it_expires() {
        let old = UrlSigner::new([[1u8; 32].as_slice()]);
        let rotated = UrlSigner::new([[2u8; 32].as_slice(), [1u8; 32].as_slice()]);
        let later = unix_now() + 60;
        let sig = old.sign(&["GET", "/a"], later);
        assert!(old.verify(&["GET", "/a"], later, &sig));
        assert!(
            rotated.verify(&["GET", "/a"], later, &sig),
            "old keys verify"
        );
        assert!(!old.verify(&["GET", "/b"], later, &sig));
        assert!(!old.verify(&["PUT", "/a"], later, &sig));
        assert!(
            !old.verify(&["GET/", "a"], later, &sig),
            "parts are not concatenated"
        );
        assert!(!old.verify(&["GET", "/a"], later + 1, &sig));
        assert!(!old.verify(&["GET", "/a"], later, "not base64!"));
        let past = unix_now() - 1;
        assert!(!old.verify(&["GET", "/a"], past, &old.sign(&["GET", "/a"], past)));
        assert!(!UrlSigner::new([[2u8; 32].as_slice()]).verify(&["GET", "/a"], later, &sig));
    }
}
