//! The authenticated caller of an HTTP route.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;

use crate::{ApiError, Context};

/// The user whose access key the request carries (headers, cookies, Bearer or WebSocket
/// subprotocol, PROTOCOL §1), and the device it was issued to (§7). Extracting it refuses the
/// request with 401 otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub device: String,
}

impl<S> FromRequestParts<S> for User
where
    S: Send + Sync,
    Context: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let ctx = Context::from_ref(state);
        let creds = samvad_auth::credentials(&parts.headers)?;
        let who = ctx.access_keys.authenticate(&creds)?;
        Ok(Self {
            name: who.user,
            device: who.device,
        })
    }
}
