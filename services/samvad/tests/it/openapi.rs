//! `/openapi.json`: the HTTP API's description, checked by a validator this project did not
//! write and against the running server, route by route.

use std::process::Command;

use reqwest::Method;
use serde_json::Value;

use crate::support::TestApp;

const VALIDATOR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../target/tools/k8s-venv/bin/openapi-spec-validator"
);

const METHODS: [&str; 6] = ["get", "put", "post", "delete", "patch", "head"];

#[tokio::test]
async fn the_api_description_is_valid_openapi_and_every_route_it_names_is_served() {
    let app = TestApp::spawn().await;
    let res = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let text = res.text().await.unwrap();

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &text).unwrap();
    let out = Command::new(VALIDATOR)
        .arg(file.path())
        .output()
        .expect("the test command's venv with openapi-spec-validator (deployment/scripts/test)");
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["info"]["title"], "Samvad");
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            operations += 1;
            let name = format!("{} {path}", method.to_uppercase());
            let summary = op["summary"].as_str().unwrap_or_default();
            assert!(!summary.is_empty(), "{name} has no summary");
            assert!(
                !op["responses"].as_object().unwrap().is_empty(),
                "{name} names no response"
            );
            for requirement in op["security"].as_array().into_iter().flatten() {
                for scheme in requirement.as_object().unwrap().keys() {
                    assert!(schemes.contains_key(scheme), "{name}: no scheme {scheme}");
                }
            }
            // Served: a route the router lacks is answered 404 with an empty body (every
            // refusal of a handler carries a JSON body), a method it lacks 405.
            let url = path.replace(['{', '}'], "");
            let res = app
                .http
                .request(
                    Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                    app.url(&url),
                )
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let body = res.bytes().await.unwrap();
            assert_ne!(status, 405, "{name} is described but not served");
            assert!(
                status != 404 || !body.is_empty() || method == "head",
                "{name} is described but not served"
            );
        }
    }
    // Every service with routes is in the description.
    for path in [
        "/v1.0/login",
        "/v1.0/groups/",
        "/v1.0/messages",
        "/v1.0/assets/upload/presigned_url",
        "/v1.0/push/vapid",
        "/v1.0/wss/",
    ] {
        assert!(paths.contains_key(path), "{path} is not described");
    }
    assert!(operations >= 25, "only {operations} operations described");
    app.stop().await;
}
