//! Attachments (PROTOCOL §7, Vartalap's assets routes): upload through a signed URL, mark,
//! send the `fileId` in a message, download through a signed URL — and everyone who should
//! not read a file refused.

use std::time::Duration;

use reqwest::Method;
use samvad_protocol::Encoding;
use serde_json::{Value, json};

use crate::groups::{create_group, remove_member};
use crate::support::{TestApp, User, call, chat, group_chat};

pub(crate) const PNG: &[u8] = b"\x89PNG\r\n\x1a\n not really a picture, but bytes all the same";

/// Asks for an upload URL as `user`; returns (url, fileId).
pub(crate) async fn upload_url(app: &TestApp, user: &User, ext: &str) -> (String, String) {
    let (status, body) = call(app.as_user(
        Method::GET,
        &format!("/v1.0/assets/upload/presigned_url?ext={ext}&category=chat"),
        user,
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["assetId"], body["fileId"], "Vartalap's mobile name");
    (
        body["url"].as_str().unwrap().to_owned(),
        body["fileId"].as_str().unwrap().to_owned(),
    )
}

/// `PUT`s `bytes` to a signed URL, as a client does (no credentials: the URL is the grant).
pub(crate) async fn put(app: &TestApp, url: &str, content_type: &str, bytes: &[u8]) -> u16 {
    app.http
        .put(url)
        .header("content-type", content_type)
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `PUT`s `count` chunks of `size` bytes with chunked transfer encoding (no length given);
/// returns the status.
async fn put_chunked(
    app: &TestApp,
    url: &str,
    content_type: &str,
    count: usize,
    size: usize,
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target = url.strip_prefix(&app.url("")).unwrap();
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "PUT {target} HTTP/1.1\r\nhost: {}\r\ncontent-type: {content_type}\r\n\
         transfer-encoding: chunked\r\n\r\n",
        app.addr
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let chunk = [
        format!("{size:x}\r\n").into_bytes(),
        vec![0; size],
        b"\r\n".to_vec(),
    ]
    .concat();
    for _ in 0..count {
        // The server may answer and close before the last chunk.
        if tcp.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let _ = tcp.write_all(b"0\r\n\r\n").await;
    let mut answer = vec![0; 12];
    tcp.read_exact(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer[9..12]).parse().unwrap()
}

pub(crate) async fn mark(app: &TestApp, user: &User, file_id: &str) -> (u16, Value) {
    call(
        app.as_user(Method::PUT, &format!("/v1.0/assets/{file_id}/status"), user)
            .json(&json!({ "status": true })),
    )
    .await
}

/// A file `user` uploaded and marked; returns its id.
pub(crate) async fn uploaded(app: &TestApp, user: &User) -> String {
    let (url, file_id) = upload_url(app, user, ".png").await;
    assert_eq!(put(app, &url, "image/png", PNG).await, 200);
    let (status, body) = mark(app, user, &file_id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["size"], PNG.len());
    file_id
}

pub(crate) async fn download_url(app: &TestApp, user: &User, file_id: &str) -> (u16, Value) {
    call(app.as_user(
        Method::GET,
        &format!("/v1.0/assets/download/{file_id}/presigned_url"),
        user,
    ))
    .await
}

/// Downloads `file_id` as `user`: its bytes, or the status that refused them.
pub(crate) async fn download(app: &TestApp, user: &User, file_id: &str) -> Result<Vec<u8>, u16> {
    let (status, body) = download_url(app, user, file_id).await;
    if status != 200 {
        return Err(status);
    }
    let res = app
        .http
        .get(body["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    if res.status() != 200 {
        return Err(res.status().as_u16());
    }
    Ok(res.bytes().await.unwrap().to_vec())
}

/// Sends `m` over REST, carrying `file_id` as Vartalap's clients send a picture, and waits
/// for its server ack (the message is stored).
pub(crate) async fn send_picture(
    app: &TestApp,
    user: &User,
    mut m: samvad_protocol::Message,
    file_id: &str,
) {
    m.content = json!({ "text": "a picture", "fileId": file_id })
        .to_string()
        .into_bytes();
    let frame = samvad_protocol::encode_text(&m, Encoding::V2_1);
    let res = app
        .as_user(Method::POST, "/v1.0/messages?format=text&ack=true", user)
        .json(&[frame])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
}

#[tokio::test]
async fn a_picture_goes_up_and_its_recipient_downloads_the_same_bytes() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;

    let (url, file_id) = upload_url(&app, &alice, ".png").await;
    assert!(url.starts_with(&app.url("/")), "{url}");
    assert_eq!(put(&app, &url, "image/png", PNG).await, 200);
    // Only the owner marks it; to anyone else it does not exist.
    assert_eq!(mark(&app, &bob, &file_id).await.0, 404);
    assert_eq!(mark(&app, &alice, &file_id).await.0, 200);
    assert_eq!(mark(&app, &alice, &file_id).await.0, 400, "marked once");
    assert_eq!(
        put(&app, &url, "image/png", b"something else").await,
        409,
        "a marked file never changes"
    );
    assert_eq!(download(&app, &alice, &file_id).await.unwrap(), PNG);
    // Before any message carries it, nobody else may read it.
    assert_eq!(download(&app, &bob, &file_id).await, Err(404));

    send_picture(&app, &alice, chat("p-1", "alice", "bob", ""), &file_id).await;
    let (status, body) = download_url(&app, &bob, &file_id).await;
    assert_eq!(status, 200);
    let res = app
        .http
        .get(body["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/png");
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    assert_eq!(res.bytes().await.unwrap(), PNG);

    // A stranger who learns the id gets nothing, not even a URL.
    assert_eq!(download_url(&app, &carol, &file_id).await.0, 404);
    // Naming someone else's file in one's own message grants nobody anything.
    let dave = app.user("dave").await;
    send_picture(&app, &carol, chat("p-2", "carol", "dave", ""), &file_id).await;
    assert_eq!(download(&app, &dave, &file_id).await, Err(404));
    // Forwarding one's own copy does: bob may read it, so dave may now too.
    send_picture(&app, &bob, chat("p-3", "bob", "dave", ""), &file_id).await;
    assert_eq!(download(&app, &dave, &file_id).await.unwrap(), PNG);
    app.stop().await;
}

#[tokio::test]
async fn in_a_group_only_members_who_saw_the_message_may_download() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    let late = app.user("late").await;
    let gid = create_group(&app, &alice, "team", &["bob", "carol"]).await;
    let file_id = uploaded(&app, &alice).await;
    send_picture(&app, &alice, group_chat("g-1", "alice", &gid, ""), &file_id).await;
    assert_eq!(download(&app, &bob, &file_id).await.unwrap(), PNG);
    assert_eq!(download(&app, &carol, &file_id).await.unwrap(), PNG);

    // Joined after the message: not theirs to see.
    let (status, _) = call(
        app.as_user(Method::POST, &format!("/v1.0/groups/{gid}/members"), &alice)
            .json(&json!({ "members": ["late"] })),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(download_url(&app, &late, &file_id).await.0, 404);
    // Removed: no longer.
    let (status, _) = remove_member(&app, &alice, &gid, "carol").await;
    assert_eq!(status, 200);
    assert_eq!(download_url(&app, &carol, &file_id).await.0, 404);
    assert_eq!(download(&app, &bob, &file_id).await.unwrap(), PNG);
    app.stop().await;
}

#[tokio::test]
async fn a_signed_url_does_one_thing_to_one_file() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let (url, file_id) = upload_url(&app, &alice, ".png").await;
    let (other_url, other_id) = upload_url(&app, &alice, ".png").await;

    // Altered signature, altered expiry, another file's signature, an upload URL used to
    // read: all refused alike.
    let signature = url.split("signature=").nth(1).unwrap();
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    let altered = url.replace(
        &format!("signature={signature}"),
        &format!("signature={flipped}{}", &signature[1..]),
    );
    assert_eq!(put(&app, &altered, "image/png", PNG).await, 403);
    let expires: u64 = url
        .split("expires=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let later = url.replace(
        &format!("expires={expires}"),
        &format!("expires={}", expires + 3600),
    );
    assert_eq!(put(&app, &later, "image/png", PNG).await, 403);
    let other_signature = other_url.split("signature=").nth(1).unwrap();
    let replayed = url.replace(signature, other_signature);
    assert_eq!(put(&app, &replayed, "image/png", PNG).await, 403);
    let swapped = url.replace(&file_id, &other_id);
    assert_eq!(put(&app, &swapped, "image/png", PNG).await, 403);
    assert_eq!(app.http.get(&url).send().await.unwrap().status(), 403);
    let unsigned = url.split('?').next().unwrap();
    assert_eq!(
        app.http
            .put(unsigned)
            .body(PNG)
            .send()
            .await
            .unwrap()
            .status(),
        400
    );

    // Nothing of that stored anything.
    assert_eq!(mark(&app, &alice, &file_id).await.0, 400);
    assert_eq!(put(&app, &url, "image/png", PNG).await, 200);
    assert_eq!(mark(&app, &alice, &file_id).await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn oversize_and_disallowed_files_are_refused() {
    let app = TestApp::spawn_with(&[
        ("SAMVAD_ASSETS_MAX_BYTES", "1000"),
        ("SAMVAD_ASSETS_MAX_PENDING", "3"),
    ])
    .await;
    let alice = app.user("alice").await;
    for ext in [".html", ".svg", ".exe", ""] {
        let (status, body) = call(app.as_user(
            Method::GET,
            &format!("/v1.0/assets/upload/presigned_url?ext={ext}"),
            &alice,
        ))
        .await;
        assert_eq!(status, 400, "{ext}: {body}");
        assert!(body["error"].as_str().unwrap().contains(".png"), "{body}");
    }
    let (url, file_id) = upload_url(&app, &alice, "JPG").await;
    assert_eq!(
        put(&app, &url, "image/png", PNG).await,
        415,
        "the type it asked for"
    );
    assert_eq!(put(&app, &url, "image/jpeg", &[0; 1001]).await, 413);
    // Streamed without a length, it is cut off past the limit all the same.
    assert_eq!(put_chunked(&app, &url, "image/jpeg", 20, 100).await, 413);
    assert_eq!(
        mark(&app, &alice, &file_id).await.0,
        400,
        "nothing was stored to mark"
    );
    assert_eq!(
        put(&app, &url, "image/jpeg; charset=binary", &[7; 1000]).await,
        200
    );
    assert_eq!(mark(&app, &alice, &file_id).await.1["size"], 1000);

    // Upload URLs asked for and never used are bounded per user, and only for that user.
    let pending: Vec<(String, String)> = [
        upload_url(&app, &alice, ".png").await,
        upload_url(&app, &alice, ".png").await,
        upload_url(&app, &alice, ".png").await,
    ]
    .into();
    let ask = |user: &crate::support::User| {
        app.as_user(
            Method::GET,
            "/v1.0/assets/upload/presigned_url?ext=.png",
            user,
        )
    };
    let (status, body) = call(ask(&alice)).await;
    assert_eq!(status, 429, "{body}");
    let bob = app.user("bob").await;
    assert_eq!(call(ask(&bob)).await.0, 200);
    let (url, id) = &pending[0];
    assert_eq!(put(&app, url, "image/png", PNG).await, 200);
    assert_eq!(mark(&app, &alice, id).await.0, 200);
    assert_eq!(
        call(ask(&alice)).await.0,
        200,
        "marking one frees its place"
    );
    app.stop().await;
}

#[tokio::test]
async fn urls_and_unfinished_uploads_expire() {
    let app = TestApp::spawn_with(&[
        ("SAMVAD_ASSETS_URL_TTL_SECS", "1"),
        ("SAMVAD_ASSETS_UPLOAD_TTL_SECS", "2"),
    ])
    .await;
    let alice = app.user("alice").await;
    let (late_url, _) = upload_url(&app, &alice, ".png").await;
    let (url, unmarked) = upload_url(&app, &alice, ".png").await;
    assert_eq!(put(&app, &url, "image/png", PNG).await, 200);
    let file_id = uploaded(&app, &alice).await;
    let (_, body) = download_url(&app, &alice, &file_id).await;
    let read_url = body["url"].as_str().unwrap().to_owned();

    tokio::time::sleep(Duration::from_millis(3_200)).await;
    assert_eq!(put(&app, &late_url, "image/png", PNG).await, 403);
    assert_eq!(app.http.get(&read_url).send().await.unwrap().status(), 403);
    assert_eq!(
        mark(&app, &alice, &unmarked).await.0,
        404,
        "an upload never marked is gone"
    );
    // A marked file stays, at a fresh URL.
    assert_eq!(download(&app, &alice, &file_id).await.unwrap(), PNG);
    app.stop().await;
}

/// The all-in-one with its attachments in a private S3-compatible server that checks
/// signatures (`s3s-fs`); the server is stopped with the returned guard.
async fn with_s3(extra: &[(&str, &str)]) -> (TestApp, samvad_testkit::Server) {
    let s3 = samvad_testkit::s3();
    let mut settings = vec![
        ("SAMVAD_ASSETS_STORAGE", "s3"),
        ("SAMVAD_S3_ENDPOINT", s3.url.as_str()),
        ("SAMVAD_S3_BUCKET", samvad_testkit::S3_BUCKET),
        ("SAMVAD_S3_URL_STYLE", "path"),
        ("SAMVAD_S3_ACCESS_KEY_ID", samvad_testkit::S3_ACCESS_KEY),
        ("SAMVAD_S3_SECRET_ACCESS_KEY", samvad_testkit::S3_SECRET_KEY),
    ];
    settings.extend_from_slice(extra);
    (TestApp::spawn_with(&settings).await, s3)
}

#[tokio::test]
async fn in_s3_a_picture_goes_up_and_comes_down_through_presigned_urls() {
    let (app, s3) = with_s3(&[("SAMVAD_ASSETS_MAX_BYTES", "1000")]).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;

    let (url, file_id) = upload_url(&app, &alice, ".png").await;
    assert!(url.starts_with(&s3.url), "{url}");
    // The store checks the signature, which covers the content type.
    assert_eq!(put(&app, &url, "image/jpeg", PNG).await, 403);
    let signature = url.split("X-Amz-Signature=").nth(1).unwrap();
    let flipped = if signature.starts_with('0') { "1" } else { "0" };
    let altered = url.replace(signature, &format!("{flipped}{}", &signature[1..]));
    assert_eq!(put(&app, &altered, "image/png", PNG).await, 403);
    assert_eq!(
        mark(&app, &alice, &file_id).await.0,
        400,
        "nothing there yet"
    );
    assert_eq!(put(&app, &url, "image/png", PNG).await, 200);
    assert_eq!(mark(&app, &bob, &file_id).await.0, 404);
    let (status, body) = mark(&app, &alice, &file_id).await;
    assert_eq!((status, &body["size"]), (200, &json!(PNG.len())), "{body}");

    assert_eq!(download_url(&app, &bob, &file_id).await.0, 404);
    send_picture(&app, &alice, chat("s3-1", "alice", "bob", ""), &file_id).await;
    let (status, body) = download_url(&app, &bob, &file_id).await;
    assert_eq!(status, 200);
    let link = body["url"].as_str().unwrap();
    assert!(link.starts_with(&s3.url), "{link}");
    assert_eq!(download(&app, &bob, &file_id).await.unwrap(), PNG);
    let other = uploaded(&app, &alice).await;
    let swapped = link.replace(&file_id, &other);
    assert_eq!(
        app.http.get(&swapped).send().await.unwrap().status(),
        403,
        "a URL for one object does not open another"
    );

    // The store cannot bound a presigned upload's size: marking does, and deletes it.
    let (url, big) = upload_url(&app, &alice, ".png").await;
    assert_eq!(put(&app, &url, "image/png", &[1; 1001]).await, 200);
    assert_eq!(mark(&app, &alice, &big).await.0, 413);
    assert_eq!(mark(&app, &alice, &big).await.0, 400, "the object is gone");
    app.stop().await;
}

#[tokio::test]
async fn in_s3_presigned_urls_expire() {
    let (app, _s3) = with_s3(&[
        ("SAMVAD_ASSETS_URL_TTL_SECS", "1"),
        ("SAMVAD_ASSETS_UPLOAD_TTL_SECS", "60"),
    ])
    .await;
    let alice = app.user("alice").await;
    let (url, _) = upload_url(&app, &alice, ".png").await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(put(&app, &url, "image/png", PNG).await, 403);
    app.stop().await;
}
