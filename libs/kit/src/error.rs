//! The one table from errors to what an HTTP client sees: a status and `{"error": "..."}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use samvad_auth::AuthError;

/// An error answered to an HTTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            message: message.into(),
        }
    }

    pub fn too_many(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: message.into(),
        }
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: message.into(),
        }
    }

    /// The request names a host this server does not answer for.
    pub fn misdirected(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::MISDIRECTED_REQUEST,
            message: message.into(),
        }
    }

    /// Our failure, not the client's: the detail goes to the log, the client gets a generic
    /// message.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "request failed");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "internal error; try again".into(),
        }
    }

    pub fn unavailable(error: impl std::fmt::Display) -> Self {
        tracing::warn!(%error, "dependency unavailable");
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "temporarily unavailable; try again".into(),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        if e.is_client_error() {
            Self {
                status: StatusCode::UNAUTHORIZED,
                message: e.to_string(),
            }
        } else {
            Self::unavailable(e)
        }
    }
}

impl From<samvad_store::StoreError> for ApiError {
    fn from(e: samvad_store::StoreError) -> Self {
        Self::unavailable(e)
    }
}

impl From<samvad_bus::BusError> for ApiError {
    fn from(e: samvad_bus::BusError) -> Self {
        Self::unavailable(e)
    }
}

/// The body of every error answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": "name must be 1 to 64 characters"}))]
pub struct ErrorBody {
    /// What went wrong, for a person to read.
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}
