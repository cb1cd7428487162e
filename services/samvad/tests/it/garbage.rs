//! Every REST route, fed garbage: good bodies with parts replaced by anything JSON can say,
//! with keys dropped or added, bodies that are not JSON at all, and path and query values of
//! every shape. Whatever comes in, the answer is a clear client error (a 4xx with a JSON
//! `error`) or a success, never a 5xx, a panic or a dropped connection, and the server goes on
//! serving everyone else.
//!
//! `SAMVAD_GARBAGE_CASES` (default 400) sets how many requests; `SAMVAD_GARBAGE_SEED` replays
//! a run (a failure prints its seed).

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use reqwest::Method;
use samvad_protocol::Encoding;
use serde_json::{Value, json};

use crate::groups::create_group;
use crate::support::{TestApp, call, chat, text_of};

/// Strings that have broken servers: empty, huge, control and invisible characters, numbers
/// and names that mean something here, and anything else.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("server".to_owned()),
        Just("x".repeat(70_000)),
        Just("../../etc/passwd".to_owned()),
        Just("%00%2F%2e%2e".to_owned()),
        Just("alice\u{202e}".to_owned()),
        Just("-1".to_owned()),
        Just("18446744073709551616".to_owned()),
        "[a-z]{1,12}",
        "\\PC{0,40}",
        any::<String>(),
    ]
}

/// Any JSON value, a few levels deep.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// What to do to a good body.
#[derive(Debug, Clone)]
enum Change {
    /// Send it as it is.
    Keep,
    /// Put `value` where the key at this index (of the top level, or of the first member of
    /// an array) was.
    Replace(usize, Value),
    /// Leave that key out.
    Drop(usize),
    /// Add a key nobody asked for.
    Add(String, Value),
    /// Send a value of its own instead.
    Whole(Value),
    /// Send bytes that are not JSON.
    Bytes(Vec<u8>),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        1 => Just(Change::Keep),
        4 => (0..6usize, value()).prop_map(|(i, v)| Change::Replace(i, v)),
        2 => (0..6usize).prop_map(Change::Drop),
        1 => (text(), value()).prop_map(|(k, v)| Change::Add(k, v)),
        2 => value().prop_map(Change::Whole),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Change::Bytes),
    ]
}

/// One request: a route (by index into [`routes`]), what to change of its good body, and a
/// value for its path or query.
fn case() -> impl Strategy<Value = (usize, Change, String)> {
    (0..ROUTES, change(), text())
}

const ROUTES: usize = 17;

/// Route `i` with `param` in its path or query: (method, path, good body).
fn route(i: usize, param: &str, group: &str) -> (Method, String, Option<Value>) {
    // A URL has room for a few KB; bodies carry the long strings.
    let p = urlencode(&param.chars().take(500).collect::<String>());
    let message =
        |id: &str| samvad_protocol::encode_text(&chat(id, "mallory", "bob", "hi"), Encoding::V2_1);
    match i {
        0 => (
            Method::POST,
            "/v1.0/login".into(),
            Some(
                json!({"username": "mallory", "authToken": "dev", "notificationToken": "",
                        "deviceId": "fuzz", "messageVersion": 2.1}),
            ),
        ),
        1 => (
            Method::PUT,
            "/v1.0/profile/".into(),
            Some(json!({"name": "Mallory", "profilePic": null, "showPresence": true})),
        ),
        2 => (
            Method::POST,
            "/v1.0/contactbook/sync".into(),
            Some(json!({"users": ["bob", "nobody"]})),
        ),
        3 => (
            Method::POST,
            "/v1.0/groups/".into(),
            Some(json!({"name": "fuzz", "members": ["bob"], "profilePic": null})),
        ),
        4 => (
            Method::POST,
            format!("/v1.0/groups/{group}/members"),
            Some(json!({"members": ["alice"]})),
        ),
        5 => (
            Method::DELETE,
            format!("/v1.0/groups/{group}/members"),
            Some(json!({"member": "alice"})),
        ),
        6 => (
            Method::POST,
            "/v1.0/messages?format=text".into(),
            Some(json!([message("fuzz-1"), message("fuzz-2")])),
        ),
        7 => (
            Method::POST,
            format!("/v1.0/messages?format={p}"),
            Some(json!([message("fuzz-3")])),
        ),
        8 => (
            Method::GET,
            format!("/v1.0/conversations/{p}/messages?limit=5"),
            None,
        ),
        9 => (
            Method::GET,
            format!(
                "/v1.0/conversations/chat:bob/messages?before={p}&after={p}&limit={p}&format={p}"
            ),
            None,
        ),
        10 => (Method::GET, format!("/v1.0/presence?users={p}"), None),
        11 => (
            Method::GET,
            format!("/v1.0/assets/upload/presigned_url?ext={p}&category={p}"),
            None,
        ),
        12 => (
            Method::PUT,
            format!("/v1.0/assets/{p}/status"),
            Some(json!({"status": true})),
        ),
        13 => (
            Method::GET,
            format!("/v1.0/assets/download/{p}/presigned_url"),
            None,
        ),
        14 => (Method::GET, format!("/v1.0/profile/{p}"), None),
        15 => (Method::GET, format!("/v1.0/groups/{p}"), None),
        _ => (Method::DELETE, format!("/v1.0/devices/{p}x"), None),
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The good body with `change` made to it, as bytes.
fn changed(good: Option<Value>, change: &Change) -> Option<Vec<u8>> {
    let edit = |body: &mut Value, f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let object = match body {
            Value::Array(items) => items.first_mut().and_then(Value::as_object_mut),
            other => other.as_object_mut(),
        };
        if let Some(object) = object {
            f(object);
        }
    };
    let mut body = match (good, change) {
        (_, Change::Bytes(bytes)) => return Some(bytes.clone()),
        (_, Change::Whole(v)) => v.clone(),
        (None, _) => return None,
        (Some(body), _) => body,
    };
    match change {
        Change::Replace(i, v) => edit(&mut body, &|o| {
            if let Some(key) = o.keys().nth(*i % o.len().max(1)).cloned() {
                o.insert(key, v.clone());
            }
        }),
        Change::Drop(i) => edit(&mut body, &|o| {
            if let Some(key) = o.keys().nth(*i % o.len().max(1)).cloned() {
                o.remove(&key);
            }
        }),
        Change::Add(k, v) => edit(&mut body, &|o| {
            o.insert(k.clone(), v.clone());
        }),
        Change::Keep | Change::Whole(_) | Change::Bytes(_) => {}
    }
    Some(serde_json::to_vec(&body).unwrap())
}

#[tokio::test]
async fn every_route_answers_garbage_with_a_clear_client_error() {
    let app = TestApp::spawn_with(&[
        // Garbage comes fast: budgets are not what this is about.
        ("SAMVAD_LOGINS_PER_MINUTE", "100000"),
        ("SAMVAD_RATE_LIMIT", "100000"),
        ("SAMVAD_RATE_BURST", "100000"),
        ("SAMVAD_MAX_DEVICES_PER_USER", "1000"),
    ])
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mallory = app.user("mallory").await;
    let group = create_group(&app, &mallory, "g", &["bob"]).await;

    let cases: usize = std::env::var("SAMVAD_GARBAGE_CASES")
        .map_or(400, |n| n.parse().expect("SAMVAD_GARBAGE_CASES: a number"));
    let seed: u64 = std::env::var("SAMVAD_GARBAGE_SEED").map_or_else(
        |_| rand_seed(),
        |s| s.parse().expect("SAMVAD_GARBAGE_SEED: a number"),
    );
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    );
    let strategy = case();
    for n in 0..cases {
        let (i, change, param) = strategy.new_tree(&mut runner).unwrap().current();
        let (method, path, good) = route(i, &param, &group);
        let body = changed(good, &change);
        let mut request = app.as_user(method.clone(), &path, &mallory);
        if let Some(body) = &body {
            request = request
                .header("content-type", "application/json")
                .body(body.clone());
        }
        let said = format!(
            "case {n} (SAMVAD_GARBAGE_SEED={seed}): {method} {} {}",
            path.chars().take(400).collect::<String>(),
            body.as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .chars()
                .take(400)
                .collect::<String>()
        );
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("no answer ({}) to {said}", e.without_url()));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        assert!(status < 500, "{status} {text} for {said}");
        if status >= 400 {
            let answer: Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{status} without a JSON body ({text}) for {said}"));
            assert!(
                answer["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{status} {text} without a clear error for {said}"
            );
        }
    }

    // Everyone else is served as before.
    let mut a = app.connect(&alice, "text", false).await;
    let mut b = app.connect(&bob, "text", false).await;
    a.send(&chat("after-garbage", "alice", "bob", "still here"))
        .await;
    // Past what mallory's good requests sent him.
    let from_alice = loop {
        let got = b.chat_message().await;
        if got.source == "alice" {
            break got;
        }
    };
    assert_eq!(text_of(&from_alice), "still here");
    let (status, _) = call(app.as_user(Method::GET, "/v1.0/conversations", &alice)).await;
    assert_eq!(status, 200);
    app.stop().await;
}

/// A seed that differs from run to run.
fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
