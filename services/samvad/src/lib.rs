//! The all-in-one server: every service in one process, plus the browser test page at `/`.
//! `samvad` runs them all; `samvad <service>` runs one, so one image serves every role.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use samvad_kit::ServiceDef;

/// The browser client, served at `/`.
pub const WWW: ServiceDef = ServiceDef {
    name: "www",
    start: |_| Box::pin(async { Ok(www()) }),
};

/// Every service, in start order: consumers before the gateways that feed them.
pub const SERVICES: &[ServiceDef] = &[
    delivery::SERVICE,
    push::SERVICE,
    group_router::SERVICE,
    message_router::SERVICE,
    profile::SERVICE,
    group::SERVICE,
    rest_gateway::SERVICE,
    ws_gateway::SERVICE,
    WWW,
];

fn www() -> Router {
    Router::new().route(
        "/",
        get(|| async {
            (
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                include_str!("../../../www/index.html"),
            )
                .into_response()
        }),
    )
}
