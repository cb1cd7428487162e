//! The authenticated caller of an HTTP route.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use samvad_auth::{Access, AuthError, Credentials};
use samvad_store::StoreError;

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
        let access = ctx.authenticate(&creds).await?;
        Ok(Self {
            name: access.who.user,
            device: access.who.device,
        })
    }
}

impl Context {
    /// What `creds` prove: a genuine, unexpired access key whose device is still linked in
    /// the session the key was issued in. A key from before a logout (or before the device was
    /// unlinked to make room for another) is refused, however long it has left to run.
    pub async fn authenticate(&self, creds: &Credentials) -> Result<Access, ApiError> {
        let access = self.access_keys.authenticate(creds)?;
        if !self.still_linked(&access).await? {
            return Err(AuthError::RevokedAccessKey.into());
        }
        Ok(access)
    }

    /// Whether the device `access` speaks for is still linked in the session its key was
    /// issued in.
    pub async fn still_linked(&self, access: &Access) -> Result<bool, StoreError> {
        let linked = self
            .stores
            .profiles
            .session(&access.who.user, &access.who.device)
            .await?;
        Ok(linked.as_deref() == Some(access.session.as_str()))
    }
}
