//! Credentials: nothing is trusted from `user` alone, and a key dies with its device's link.

use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{Client, Seen, TestApp, User, call, chat, text_of};

async fn ws_status(app: &TestApp, headers: &[(&'static str, String)]) -> u16 {
    let mut request = format!("ws://{}/v1.0/wss/?format=text", app.addr)
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        request.headers_mut().insert(*k, v.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("unexpected {e}"),
    }
}

#[tokio::test]
async fn spoofed_users_are_refused_by_header_and_by_cookie() {
    let app = TestApp::spawn().await;
    let alice = app.login("alice").await;
    app.login("bob").await;
    assert_eq!(
        ws_status(
            &app,
            &[("user", "bob".into()), ("accesskey", alice.clone())]
        )
        .await,
        401
    );
    assert_eq!(
        ws_status(&app, &[("cookie", format!("user=bob; accesskey={alice}"))]).await,
        401
    );
    assert_eq!(
        ws_status(&app, &[("user", "alice".into())]).await,
        401,
        "user alone is nothing"
    );
    assert_eq!(
        ws_status(
            &app,
            &[("cookie", format!("user=alice; accesskey={alice}"))]
        )
        .await,
        101
    );
    // A browser writes a phone-number username into a cookie as encodeURIComponent does.
    let phone = app.login("+919999900001").await;
    assert_eq!(
        ws_status(
            &app,
            &[("cookie", format!("user=%2B919999900001; accesskey={phone}"))]
        )
        .await,
        101
    );
    assert_eq!(
        ws_status(
            &app,
            &[("sec-websocket-protocol", format!("accesskey.{alice}"))]
        )
        .await,
        101
    );
    let res = app
        .http
        .post(app.url("/v1.0/messages?format=text"))
        .header("user", "bob")
        .header("accesskey", &alice)
        .json(&json!(["{}"]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.json::<Value>().await.unwrap()["error"].is_string());
    app.stop().await;
}

#[tokio::test]
async fn the_auth_route_answers_nginx() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let ok = app
        .as_user(Method::GET, "/v1.0/auth", &alice)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<Value>().await.unwrap(), json!({}));
    let bearer = app
        .http
        .post(app.url("/v1.0/auth"))
        .bearer_auth(&alice.key)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    for key in ["", "garbage", "a.b.c"] {
        let no = app
            .http
            .get(app.url("/v1.0/auth"))
            .header("accesskey", key)
            .send()
            .await
            .unwrap();
        assert_eq!(no.status(), 401);
        assert_eq!(no.json::<Value>().await.unwrap(), json!({}));
    }
    app.stop().await;
}

#[tokio::test]
async fn a_foreign_web_origin_cannot_open_a_socket() {
    let app = TestApp::spawn().await;
    let alice = app.login("alice").await;
    let creds = ("cookie", format!("user=alice; accesskey={alice}"));
    assert_eq!(
        ws_status(
            &app,
            &[creds.clone(), ("origin", "https://evil.example".into())]
        )
        .await,
        403
    );
    assert_eq!(
        ws_status(&app, &[creds, ("origin", format!("http://{}", app.addr))]).await,
        101
    );
    app.stop().await;
}

#[tokio::test]
async fn login_refuses_bad_requests() {
    let app = TestApp::spawn().await;
    for (body, status) in [
        (json!({"username": "", "authToken": "x"}), 400),
        (json!({"username": "server", "authToken": "x"}), 400),
        (json!({"username": "alice\u{202e}", "authToken": "x"}), 400),
        (json!({"username": "al\u{200b}ice", "authToken": "x"}), 400),
        (json!({"username": "\u{feff}alice", "authToken": "x"}), 400),
        (json!({"username": "alice", "authToken": ""}), 401),
        (json!({"username": "alice"}), 422),
        (
            json!({"username": "alice", "authToken": "x", "deviceId": ""}),
            400,
        ),
        (
            json!({"username": "alice", "authToken": "x", "deviceId": "a\u{1}b"}),
            400,
        ),
        (
            json!({"username": "alice", "authToken": "x", "deviceId": "d".repeat(129)}),
            400,
        ),
    ] {
        let res = app
            .http
            .post(app.url("/v1.0/login"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{body}");
        assert!(res.json::<Value>().await.unwrap()["error"].is_string());
    }
    app.stop().await;
}

#[tokio::test]
async fn metrics_ask_for_their_token_when_one_is_set() {
    let token = "scrape-me-0123456789";
    let app = TestApp::spawn_with(&[("SAMVAD_METRICS_TOKEN", token)]).await;
    let url = app.url("/metrics");
    let open = app.http.get(&url).send().await.unwrap();
    assert_eq!(open.status(), 401);
    let wrong = app
        .http
        .get(&url)
        .bearer_auth("scrape-me-0123456780")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let scraped = app.http.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(
        scraped
            .text()
            .await
            .unwrap()
            .contains("samvad_ws_connections")
    );
    app.stop().await;
}

/// `user`'s connection is closed as logged out, and their key works nowhere any more.
async fn is_logged_out(app: &TestApp, user: &User, socket: &mut Client) {
    match socket.next().await {
        Seen::Closed(code) => assert_eq!(code, Some(CloseCode::Policy)),
        other => panic!("expected close 1008, saw {other:?}"),
    }
    let (status, body) = call(app.as_user(Method::GET, "/v1.0/conversations", user)).await;
    assert_eq!(status, 401);
    assert!(
        body["error"].as_str().unwrap().contains("logged out"),
        "{body}"
    );
    match app.try_connect(user, "text", false).await {
        Err(WsError::Http(refused)) => assert_eq!(refused.status(), 401),
        Err(e) => panic!("expected 401, got {e}"),
        Ok(_) => panic!("a logged-out key opened a socket"),
    }
}

#[tokio::test]
async fn a_logout_ends_that_devices_keys_and_sockets_and_no_other() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let laptop = app.device("bob", "laptop").await;
    let phone = app.device("bob", "phone").await;
    let mut a = app.connect(&alice, "text", false).await;
    let mut l = app.connect(&laptop, "text", false).await;
    let mut p = app.connect(&phone, "text", false).await;

    let (status, _) = call(app.as_user(Method::POST, "/v1.0/logout", &laptop)).await;
    assert_eq!(status, 200);
    is_logged_out(&app, &laptop, &mut l).await;

    // The phone goes on as before.
    a.send(&chat("after-logout", "alice", "bob", "still there?"))
        .await;
    assert_eq!(text_of(&p.message().await), "still there?");

    // Logged in again, the laptop has a new key, owed nothing from before; the old key stays
    // dead.
    let again = app.device("bob", "laptop").await;
    let mut l = app.connect(&again, "text", false).await;
    l.quiet().await;
    let (status, _) = call(app.as_user(Method::GET, "/v1.0/conversations", &laptop)).await;
    assert_eq!(status, 401);
    app.stop().await;
}

#[tokio::test]
async fn a_user_lists_their_devices_and_unlinks_a_lost_one() {
    let app = TestApp::spawn().await;
    let laptop = app.device("bob", "laptop").await;
    let phone = app.device("bob", "phone").await;
    let mut p = app.connect(&phone, "text", false).await;

    let (status, listed) = call(app.as_user(Method::GET, "/v1.0/devices", &laptop)).await;
    assert_eq!(status, 200);
    let seen: Vec<(&str, bool, bool)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert!(d["lastLogin"].as_i64().unwrap() > 0, "{d}");
            (
                d["deviceId"].as_str().unwrap(),
                d["current"].as_bool().unwrap(),
                d["push"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [("laptop", true, true), ("phone", false, true)]);

    let (status, _) = call(app.as_user(Method::DELETE, "/v1.0/devices/phone", &laptop)).await;
    assert_eq!(status, 200);
    is_logged_out(&app, &phone, &mut p).await;
    let (status, body) = call(app.as_user(Method::DELETE, "/v1.0/devices/phone", &laptop)).await;
    assert_eq!((status, body["error"].is_string()), (404, true));
    let (_, listed) = call(app.as_user(Method::GET, "/v1.0/devices", &laptop)).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    // Someone else's device is not one's own to unlink.
    let mallory = app.user("mallory").await;
    let (status, _) = call(app.as_user(Method::DELETE, "/v1.0/devices/laptop", &mallory)).await;
    assert_eq!(status, 404);
    let (status, _) = call(app.as_user(Method::GET, "/v1.0/devices", &laptop)).await;
    assert_eq!(status, 200, "bob's laptop is untouched");
    app.stop().await;
}

#[tokio::test]
async fn a_login_past_the_device_limit_unlinks_the_device_that_logged_in_longest_ago() {
    let app = TestApp::spawn_with(&[("SAMVAD_MAX_DEVICES_PER_USER", "2")]).await;
    let first = app.device("bob", "first").await;
    let mut f = app.connect(&first, "text", false).await;
    let second = app.device("bob", "second").await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    // The first device logs in again: now the second is the one longest unseen.
    let first = app.device("bob", "first").await;
    f.quiet().await;
    let mut s = app.connect(&second, "text", false).await;
    let third = app.device("bob", "third").await;
    is_logged_out(&app, &second, &mut s).await;
    for user in [&first, &third] {
        let (status, _) = call(app.as_user(Method::GET, "/v1.0/devices", user)).await;
        assert_eq!(status, 200);
    }
    f.quiet().await;
    app.stop().await;
}
