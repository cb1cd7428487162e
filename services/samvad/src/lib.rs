//! The all-in-one server: every service in one process, plus the chat page at `/` (with its
//! scripts, styles and service worker) and the protocol console at `/console`. `samvad` runs
//! them all; `samvad <service>` runs one, so one image serves every role. `samvad vapid-keys` prints a new Web Push key pair.

use std::io::Write;
use std::process::ExitCode;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use samvad_kit::ServiceDef;

/// The chat page, served at `/`, the protocol console at `/console`, and the page's service
/// worker (Web Push) at `/sw.js`.
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

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The chat page runs only its own scripts and styles; pictures and uploads may live on an
/// object store elsewhere (presigned URLs). The console, a developer's page of inline script,
/// goes without.
const PAGE_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data: blob: http: https:; connect-src 'self' ws: wss: http: https:; \
    object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Path, content type, whether the chat page's policy applies, and the file.
const FILES: &[(&str, &str, bool, &str)] = &[
    ("/", HTML, true, include_str!("../../../www/index.html")),
    ("/app.js", JS, true, include_str!("../../../www/app.js")),
    (
        "/client.js",
        JS,
        true,
        include_str!("../../../www/client.js"),
    ),
    ("/app.css", CSS, true, include_str!("../../../www/app.css")),
    ("/sw.js", JS, true, include_str!("../../../www/sw.js")),
    (
        "/console",
        HTML,
        false,
        include_str!("../../../www/console.html"),
    ),
];

fn www() -> Router {
    FILES
        .iter()
        .fold(Router::new(), |router, &(path, kind, policy, body)| {
            router.route(
                path,
                get(move || async move {
                    // Compiled into the binary: asked again on every visit (browsers look for
                    // a new service worker then too), answered from memory.
                    let mut response = (
                        [
                            (header::CONTENT_TYPE, kind),
                            (header::CACHE_CONTROL, "no-cache"),
                            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                        ],
                        body,
                    )
                        .into_response();
                    if policy {
                        response.headers_mut().insert(
                            header::CONTENT_SECURITY_POLICY,
                            header::HeaderValue::from_static(PAGE_POLICY),
                        );
                    }
                    response
                }),
            )
        })
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
