//! Who is calling, and how we know it. `samvad-auth` issues and checks Samvad's access keys
//! (HS256 JWTs whose signing secret can be rotated), extracts the credentials a request presents
//! (header, `Authorization: Bearer`, WebSocket subprotocol or cookie, in that order) and checks
//! the `authToken` a client presents to `POST /v1.0/login`: with the explicit `dev` provider, or
//! as an OpenID-style ID token verified against a JWKS (Firebase phone auth is a preset). It is a
//! pure library with no HTTP server: the HTTP layer turns an [`AuthError`] into a status with
//! [`AuthError::status`] and into `{"error": "<its message>"}`.

mod access_keys;
mod credentials;
mod error;
mod jwks;
mod key_cache;
mod login;
mod url_signer;

pub use access_keys::{Access, AccessKeys, DEFAULT_DEVICE, Identity};
pub use credentials::{Credentials, credentials};
pub use error::{AuthError, TokenRefusal};
pub use jwks::{JwksConfig, JwksVerifier};
pub use login::LoginProvider;
pub use url_signer::UrlSigner;

/// Seconds since the Unix epoch, the unit of JWT time claims; 0 if the clock is before 1970.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
