//! The all-in-one server: every service in one process, plus the chat page at `/` (with its
//! scripts, styles and service worker), the protocol console at `/console` and the HTTP API's
//! description at `/openapi.json`. `samvad` runs
//! them all; `samvad <service>` runs one, so one image serves every role. `samvad vapid-keys` prints a new Web Push key pair.

use std::io::Write;
use std::process::ExitCode;

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use samvad_runtime::ServiceDef;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

/// The chat page, served at `/`, the protocol console at `/console`, the page's service
/// worker (Web Push) at `/sw.js`, and the description of every service's routes at
/// `/openapi.json` (so that behind nginx, which sends what no service claims here, it
/// describes the whole API whichever services run where).
pub const WWW: ServiceDef = ServiceDef {
    name: "www",
    start: |_| Box::pin(async { Ok(www()) }),
    api: None,
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
const JSON: &str = "application/json";

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

/// The HTTP API of every service (OpenAPI 3.1), as `/openapi.json` serves it.
pub fn openapi() -> OpenApi {
    let mut doc = utoipa::openapi::OpenApiBuilder::new()
        .info(
            utoipa::openapi::InfoBuilder::new()
                .title("Samvad")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The chat server's HTTP API: identity, profiles, devices, groups, messages \
                     and their history, attachments, push, and the chat connection itself. \
                     The client protocol, message encodings included, is PROTOCOL.md.",
                ))
                .build(),
        )
        .build();
    for api in SERVICES.iter().filter_map(|s| s.api) {
        doc.merge(api());
    }
    let components = doc.components.get_or_insert_with(Default::default);
    let key = |name: &str, what: &str| {
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(name, what)))
    };
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "`Authorization: Bearer <accesskey>` (the login's key)",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        "accesskey",
        key(
            "accesskey",
            "The login's key, with the `user` header (or cookies `user=` and `accesskey=`)",
        ),
    );
    components.add_security_scheme("user", key("user", "The username the key was issued to"));
    // An operation served on several methods (`/v1.0/auth`, the asset mark) is described once
    // per method, and operation ids must be unique: each method's gets the method's name.
    for item in doc.paths.paths.values_mut() {
        let mut served: Vec<_> = [
            ("Get", item.get.as_mut()),
            ("Put", item.put.as_mut()),
            ("Post", item.post.as_mut()),
            ("Delete", item.delete.as_mut()),
            ("Patch", item.patch.as_mut()),
            ("Head", item.head.as_mut()),
        ]
        .into_iter()
        .filter_map(|(method, op)| Some((method, op?)))
        .collect();
        let ids: Vec<Option<String>> = served
            .iter()
            .map(|(_, op)| op.operation_id.clone())
            .collect();
        for (method, op) in &mut served {
            let shared = ids.iter().filter(|id| **id == op.operation_id).count() > 1;
            if let Some(id) = op.operation_id.as_mut().filter(|_| shared) {
                id.push_str(method);
            }
        }
    }
    doc
}

#[expect(
    clippy::disallowed_methods,
    reason = "the page's files and the API's description, not routes of the API"
)]
fn www() -> Router {
    let openapi = openapi()
        .to_pretty_json()
        .expect("the API description is JSON");
    let files = FILES.iter().map(|&(path, kind, policy, body)| {
        (path, kind, policy, Bytes::from_static(body.as_bytes()))
    });
    let described = std::iter::once(("/openapi.json", JSON, false, Bytes::from(openapi)));
    files
        .chain(described)
        .fold(Router::new(), |router, (path, kind, policy, body)| {
            router.route(
                path,
                get(move || {
                    let body = body.clone();
                    async move {
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
                    }
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
