//! Spans exported over OTLP/HTTP to a collector (`SAMVAD_OTLP_ENDPOINT`). No OpenTelemetry
//! collector can be installed here, so the collector is an HTTP endpoint that keeps what is
//! posted to `/v1/traces`; the export is the real exporter's, in protobuf, whose strings (span
//! names, attribute values) travel as they are.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use tokio::sync::mpsc;

use crate::durability::Server;
use crate::support::chat;

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn a_connection_s_span_reaches_the_collector_under_the_service_s_name() {
    let (posted, mut received) = mpsc::unbounded_channel::<(String, Bytes)>();
    let collector = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let kind = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let _ = posted.send((kind, body));
            async { StatusCode::OK }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        &[
            ("SAMVAD_OTLP_ENDPOINT", endpoint.as_str()),
            ("SAMVAD_DRAIN_SECS", "0"),
            ("SAMVAD_CLOSE_SPREAD_SECS", "0"),
        ],
    );
    let app = server.app();
    app.user("bob").await;
    let mut alice = app
        .connect(&app.device("alice", "phone-7f3a").await, "text", true)
        .await;
    alice.send(&chat("traced-1", "alice", "bob", "hello")).await;
    alice.message().await;
    alice.close().await;
    // At the stop, what is still batched is sent.
    server.signal("-TERM");

    let mut spans = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some((kind, body)) = received.recv().await {
            assert_eq!(kind, "application/x-protobuf");
            spans.extend_from_slice(&body);
            if contains(&spans, "connection") && contains(&spans, "phone-7f3a") {
                return;
            }
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "no connection span for the device reached the collector; received {} bytes",
        spans.len()
    );
    assert!(contains(&spans, "service.name") && contains(&spans, "samvad"));
    drop(server);
}
