//! The all-in-one server: every service in one process, plus the browser test page at `/`
//! and its service worker at `/sw.js`. `samvad` runs them all; `samvad <service>` runs one, so
//! one image serves every role. `samvad vapid-keys` prints a new Web Push key pair.

use std::io::Write;
use std::process::ExitCode;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use samvad_kit::ServiceDef;

/// The browser client, served at `/`, and its service worker (Web Push), at `/sw.js`.
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
    assets::SERVICE,
    rest_gateway::SERVICE,
    ws_gateway::SERVICE,
    WWW,
];

fn www() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    include_str!("../../../www/index.html"),
                )
                    .into_response()
            }),
        )
        .route(
            "/sw.js",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                        // Browsers look for a new worker on every visit when it is not cached.
                        (header::CACHE_CONTROL, "no-cache"),
                    ],
                    include_str!("../../../www/sw.js"),
                )
                    .into_response()
            }),
        )
}

/// `samvad vapid-keys`: prints a new VAPID key pair for Web Push, the private key as the
/// environment line to paste.
pub fn vapid_keys() -> ExitCode {
    let (private, public) = push::generate_keys();
    let text = format!(
        "# Web Push (VAPID) keys, made just now. The private key is a secret: keep it with the\n\
         # server's other secrets. Browsers get the public key from GET /v1.0/push/vapid.\n\
         # Public key: {public}\n\
         SAMVAD_VAPID_PRIVATE_KEY={private}\n"
    );
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}
