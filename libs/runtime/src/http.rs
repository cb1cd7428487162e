//! The routes every process answers — liveness, readiness and Prometheus metrics —, the check
//! every request passes first (the `Host` it names), and the shape of every API error.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::node::Shared;
use samvad_http::ApiError;

use crate::ReasonLabel;
use samvad_config::AllowedHosts;

#[expect(
    clippy::disallowed_methods,
    reason = "the operator's routes, described in docs/OPERATIONS.md, not the API"
)]
pub(crate) fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// Ready means this process does its work now: not draining, its database answers, and each
/// of its consumers holds its partitions (a consumer still joining its group leaves what is
/// sent to the service waiting on the bus — on tansu, for seconds after start).
async fn ready(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if shared.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining".to_owned());
    }
    let waiting = shared.bus.unassigned();
    if !waiting.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("waiting for partitions: {}", waiting.join(", ")),
        );
    }
    if let Some(db) = &shared.db
        && db
            .read(|c| c.query_row("SELECT 1", [], |_| Ok(())))
            .await
            .is_err()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "database unavailable".to_owned(),
        );
    }
    (StatusCode::OK, "ready".to_owned())
}

/// Whether `given` is the token, compared in constant time: the time taken says nothing of how
/// much of a guess was right.
fn same_token(given: &[u8], token: &[u8]) -> bool {
    given.len() == token.len() && given.iter().zip(token).fold(0, |d, (a, b)| d | (a ^ b)) == 0
}

async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> impl IntoResponse {
    if let Some(token) = &shared.metrics_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same_token(given.as_bytes(), token.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::CONTENT_TYPE, "text/plain")],
                "metrics need Authorization: Bearer <SAMVAD_METRICS_TOKEN>".to_owned(),
            );
        }
    }
    let mut text = String::new();
    let registry = shared
        .registry
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            e.to_string(),
        );
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

/// Refuses a request whose `Host` names a host this server is not (421), so that a web page
/// whose name an attacker points at 127.0.0.1 (DNS rebinding) cannot talk to a server on
/// loopback as if it were its own origin. Requests without a `Host` pass: no browser sends one.
pub(crate) async fn check_host(
    State(check): State<Arc<HostCheck>>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}"));
    match host {
        Some(host) if !check.allowed.allows(host) => {
            check
                .refused
                .get_or_create(&ReasonLabel { reason: "host" })
                .inc();
            ApiError::misdirected(format!(
                "this server does not answer for host {host:?} (see SAMVAD_ALLOWED_HOSTS)"
            ))
            .into_response()
        }
        _ => next.run(request).await,
    }
}

/// What [`check_host`] needs.
pub(crate) struct HostCheck {
    pub(crate) allowed: AllowedHosts,
    /// Where refusals are counted.
    pub(crate) refused: Family<ReasonLabel, Counter>,
}
