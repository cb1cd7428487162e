//! The one table from errors to what a client sees: an HTTP status and `{"error": "..."}`, and
//! the gRPC status code the gRPC door answers with instead.

use axum::Json;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
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

    /// The gRPC status code (`google.rpc.Code`) for this error: what the gRPC door answers.
    pub fn grpc_code(&self) -> i32 {
        // OK 0, INVALID_ARGUMENT 3, NOT_FOUND 5, PERMISSION_DENIED 7, RESOURCE_EXHAUSTED 8,
        // INTERNAL 13, UNAVAILABLE 14, UNAUTHENTICATED 16.
        match self.status.as_u16() {
            400 | 415 => 3,
            401 => 16,
            403 => 7,
            404 => 5,
            413 | 429 => 8,
            503 => 14,
            _ => 13,
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

/// Every error of the API (`/v1.0/...`) is `{"error": "..."}` (PROTOCOL §6), also the ones
/// axum writes itself in plain text: a body, query or path that does not parse, a body too
/// large, an unknown route or method. The probes and `/metrics` answer as they do.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let api = request.uri().path().starts_with("/v1.0/");
    let response = next.run(request).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !api || response.status().as_u16() < 400 || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    // Rejections say in a line what was wrong; a body that is not one is not passed on.
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match text.trim() {
        "" => parts
            .status
            .canonical_reason()
            .unwrap_or("refused")
            .to_owned(),
        said => said.to_owned(),
    };
    let mut answer = ApiError {
        status: parts.status,
        message,
    }
    .into_response();
    // What else it said (`Allow` on a 405, say) stays.
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().append(name, value.clone());
        }
    }
    answer
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::{Value, json};

    use super::*;

    /// The table, pinned: each kind of refusal, the HTTP status and body a client sees, and the
    /// gRPC code the gRPC door answers with.
    #[tokio::test]
    async fn each_error_has_one_answer_per_protocol() {
        let missing = AuthError::MissingCredentials.to_string();
        let table = [
            (ApiError::bad_request("bad"), 400, 3, "bad"),
            (
                ApiError::from(AuthError::MissingCredentials),
                401,
                16,
                missing.as_str(),
            ),
            (ApiError::forbidden("not yours"), 403, 7, "not yours"),
            (ApiError::not_found("gone"), 404, 5, "gone"),
            (ApiError::too_large("big"), 413, 8, "big"),
            (ApiError::misdirected("elsewhere"), 421, 13, "elsewhere"),
            (ApiError::too_many("slow down"), 429, 8, "slow down"),
            (
                ApiError::internal("secret detail"),
                500,
                13,
                "internal error; try again",
            ),
            (
                ApiError::unavailable("secret detail"),
                503,
                14,
                "temporarily unavailable; try again",
            ),
        ];
        for (error, http, grpc, said) in table {
            assert_eq!(error.grpc_code(), grpc, "{error:?}");
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), http);
            let body = axum::body::to_bytes(response.into_body(), 1024)
                .await
                .unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body, json!({ "error": said }), "{http}");
        }
    }
}
