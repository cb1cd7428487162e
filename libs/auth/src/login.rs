use crate::{AuthError, JwksVerifier, TokenRefusal};

/// How `POST /v1.0/login`'s authToken is checked.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one long-lived value per process; boxing would only add an indirection"
)]
pub enum LoginProvider {
    /// Accepts any non-empty token for any username: for the test page and local runs only.
    /// Whoever configures it must say so loudly in the log.
    Dev,
    /// An OpenID-style ID token, verified against the provider's JWKS.
    Jwks(JwksVerifier),
}

impl LoginProvider {
    /// Ok(()) when `auth_token` proves `username`. Dev accepts any non-empty token.
    pub async fn verify(&self, username: &str, auth_token: &str) -> Result<(), AuthError> {
        match self {
            LoginProvider::Dev if auth_token.trim().is_empty() => {
                Err(AuthError::TokenRefused(TokenRefusal::Empty))
            }
            LoginProvider::Dev => Ok(()),
            LoginProvider::Jwks(verifier) => verifier.verify(username, auth_token).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dev_accepts_any_non_empty_token_and_refuses_an_empty_one() {
        let dev = LoginProvider::Dev;
        assert!(dev.verify("alice", "anything").await.is_ok());
        for empty in ["", "  "] {
            assert!(matches!(
                dev.verify("alice", empty).await,
                Err(AuthError::TokenRefused(TokenRefusal::Empty))
            ));
        }
    }
}
