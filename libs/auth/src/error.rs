use std::fmt;

use http::StatusCode;

/// Everything that can go wrong when authenticating. The `Display` text of each variant is
/// meant for the client (`{"error": ...}`): it never contains a key, a token or its claims.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    // The client's mistakes.
    /// The request carries no access key at all.
    #[error(
        "missing credentials: send an access key (header `accesskey`, `Authorization: Bearer`, \
         WebSocket subprotocol `accesskey.<key>` or cookie `accesskey`)"
    )]
    MissingCredentials,
    /// The access key is malformed, forged, or signed by a key we do not (or no longer) have.
    #[error("invalid access key; log in again")]
    InvalidAccessKey,
    /// The access key was ours but has expired.
    #[error("access key expired; log in again")]
    ExpiredAccessKey,
    /// The access key was ours, but its device has been logged out since it was issued.
    #[error("access key revoked: this device was logged out; log in again")]
    RevokedAccessKey,
    /// The request names a `user` other than the one the access key was issued to.
    #[error("user does not match the access key")]
    UserMismatch,
    /// The login `authToken` does not prove the username.
    #[error("auth token refused: {0}")]
    TokenRefused(TokenRefusal),

    // Ours.
    /// The identity provider's keys could not be fetched, so no login token can be checked.
    /// `detail` (URL, transport error) is for the server's log, not for the client.
    #[error("login is unavailable: the identity provider's signing keys could not be fetched")]
    JwksUnavailable { detail: String },
    /// The server's own configuration is unusable; reported at start-up.
    #[error("authentication is misconfigured: {0}")]
    Misconfigured(String),
}

impl AuthError {
    /// `true` when the client can fix it (new credentials, another token); `false` when the
    /// fault is ours.
    pub fn is_client_error(&self) -> bool {
        match self {
            AuthError::MissingCredentials
            | AuthError::InvalidAccessKey
            | AuthError::ExpiredAccessKey
            | AuthError::RevokedAccessKey
            | AuthError::UserMismatch
            | AuthError::TokenRefused(_) => true,
            AuthError::JwksUnavailable { .. } | AuthError::Misconfigured(_) => false,
        }
    }

    /// The HTTP status the client sees: 401 for every client mistake, 503 when the identity
    /// provider is unreachable (worth retrying), 500 for our misconfiguration.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::JwksUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AuthError::Misconfigured(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// Why a login token was refused. Deliberately coarse: it tells an honest client what to fix
/// without echoing anything from the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No token at all.
    Empty,
    /// Not a well-formed signed JWT, or a required claim has the wrong type.
    Malformed,
    /// `alg` is not RS256/ES256, or not the algorithm of the key named by `kid`.
    UnsupportedAlgorithm,
    /// The header lists `crit` extensions, none of which we implement.
    UnsupportedHeader,
    /// The header names no `kid`.
    MissingKeyId,
    /// The `kid` is not in the identity provider's key set.
    UnknownKey,
    /// The signature does not verify with the key named by `kid`.
    BadSignature,
    /// `exp` has passed.
    Expired,
    /// `iat` or `nbf` lies in the future.
    NotYetValid,
    /// `iss` is missing or not the configured issuer.
    WrongIssuer,
    /// `aud` is missing or does not contain the configured audience.
    WrongAudience,
    /// The configured username claim is missing, empty or not a string.
    MissingUsername,
    /// The token is valid but proves another username.
    UsernameMismatch,
}

impl fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenRefusal::Empty => "the token is empty",
            TokenRefusal::Malformed => "the token is malformed",
            TokenRefusal::UnsupportedAlgorithm => "the token's signing algorithm is not accepted",
            TokenRefusal::UnsupportedHeader => "the token requires unsupported header extensions",
            TokenRefusal::MissingKeyId => "the token does not name its signing key (kid)",
            TokenRefusal::UnknownKey => "the token's signing key is not known",
            TokenRefusal::BadSignature => "the token's signature is invalid",
            TokenRefusal::Expired => "the token has expired",
            TokenRefusal::NotYetValid => "the token is not valid yet",
            TokenRefusal::WrongIssuer => "the token comes from another issuer",
            TokenRefusal::WrongAudience => "the token is meant for another audience",
            TokenRefusal::MissingUsername => "the token does not carry a username",
            TokenRefusal::UsernameMismatch => "the token does not prove this username",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_mistakes_are_401_and_ours_are_5xx() {
        let cases = [
            (AuthError::MissingCredentials, 401, true),
            (AuthError::InvalidAccessKey, 401, true),
            (AuthError::ExpiredAccessKey, 401, true),
            (AuthError::RevokedAccessKey, 401, true),
            (AuthError::UserMismatch, 401, true),
            (AuthError::TokenRefused(TokenRefusal::Expired), 401, true),
            (
                AuthError::JwksUnavailable {
                    detail: "connection refused".into(),
                },
                503,
                false,
            ),
            (AuthError::Misconfigured("no keys".into()), 500, false),
        ];
        for (error, status, client) in cases {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
            assert_eq!(error.is_client_error(), client, "{error:?}");
        }
    }

    #[test]
    fn messages_say_what_was_wrong_without_internal_detail() {
        assert_eq!(
            AuthError::TokenRefused(TokenRefusal::UsernameMismatch).to_string(),
            "auth token refused: the token does not prove this username"
        );
        assert_eq!(
            AuthError::UserMismatch.to_string(),
            "user does not match the access key"
        );
        let unavailable = AuthError::JwksUnavailable {
            detail: "GET https://idp.example/jwks: connection refused".into(),
        };
        assert!(!unavailable.to_string().contains("idp.example"));
    }
}
