//! The authenticated caller of an HTTP route, and the check its credentials pass.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use samvad_auth::{Access, AccessKeys, AuthError, Credentials};
use samvad_store::{ProfileStore, StoreError};

use crate::ApiError;

/// What checks a client's credentials: the access keys, and the store that says which
/// devices are still linked. Cheap to clone.
#[derive(Clone)]
pub struct Gate {
    keys: Arc<AccessKeys>,
    profiles: Arc<dyn ProfileStore>,
}

impl Gate {
    pub fn new(keys: Arc<AccessKeys>, profiles: Arc<dyn ProfileStore>) -> Self {
        Self { keys, profiles }
    }

    /// What `creds` prove: a genuine, unexpired access key whose device is still linked in
    /// the session the key was issued in. A key from before a logout (or before the device was
    /// unlinked to make room for another) is refused, however long it has left to run.
    pub async fn authenticate(&self, creds: &Credentials) -> Result<Access, ApiError> {
        let access = self.keys.authenticate(creds)?;
        if !self.still_linked(&access).await? {
            return Err(AuthError::RevokedAccessKey.into());
        }
        Ok(access)
    }

    /// Whether the device `access` speaks for is still linked in the session its key was
    /// issued in.
    pub async fn still_linked(&self, access: &Access) -> Result<bool, StoreError> {
        let linked = self
            .profiles
            .session(&access.who.user, &access.who.device)
            .await?;
        Ok(linked.as_deref() == Some(access.session.as_str()))
    }
}

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
    Gate: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let creds = samvad_auth::credentials(&parts.headers)?;
        let access = Gate::from_ref(state).authenticate(&creds).await?;
        Ok(Self {
            name: access.who.user,
            device: access.who.device,
        })
    }
}
