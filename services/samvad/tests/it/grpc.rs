//! The gRPC door, driven by a client this project did not write: Python's grpcio, with stubs
//! that grpcio-tools generates from the published `libs/protocol/proto/chat.proto`
//! (`grpc_client.py` only carries messages between it and the test). A WebSocket user, an
//! MQTT user (mosquitto) and a gRPC user share one 1:1 chat and one group.

use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use samvad_protocol::{Limits, Message, MessageType};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::durability::Server;
use crate::groups::create_group;
use crate::mqtt::{self, Subscriber};
use crate::support::{TestApp, User, WAIT, chat, group_chat, text_of};

const PYTHON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../target/tools/k8s-venv/bin/python"
);
const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/grpc_client.py");

/// An all-in-one server with its gRPC door (and its MQTT door) open, and their ports.
async fn spawn() -> (TestApp, u16, u16) {
    let mqtt = samvad_testkit::free_port();
    let mqtt_listen = format!("127.0.0.1:{mqtt}");
    let (app, grpc) = spawn_with(&[("SAMVAD_MQTT_LISTEN", mqtt_listen.as_str())]).await;
    (app, grpc, mqtt)
}

/// An all-in-one server with its gRPC door open and `extra` settings, and the door's port.
async fn spawn_with(extra: &[(&str, &str)]) -> (TestApp, u16) {
    let grpc = samvad_testkit::free_port();
    let listen = format!("127.0.0.1:{grpc}");
    let mut settings = vec![("SAMVAD_GRPC_LISTEN", listen.as_str())];
    settings.extend_from_slice(extra);
    (TestApp::spawn_with(&settings).await, grpc)
}

fn b64(m: &Message) -> String {
    STANDARD.encode(samvad_protocol::encode_binary(m))
}

fn unb64(v: &Value) -> Message {
    let bytes = STANDARD.decode(v.as_str().expect("base64")).unwrap();
    samvad_protocol::decode_binary(&bytes, &Limits { max_bytes: 1 << 22 }).unwrap()
}

fn client(port: u16, key: &str) -> Command {
    let mut cmd = Command::new(PYTHON);
    cmd.args([CLIENT, &format!("127.0.0.1:{port}"), key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd
}

/// A one-shot call: what the client printed.
async fn call(port: u16, key: &str, args: &[&str]) -> Value {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        client(port, key).args(args).stdin(Stdio::null()).output(),
    )
    .await
    .expect("the gRPC client in time")
    .expect("the test command's venv with grpcio (deployment/scripts/test)");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)))
}

/// What a `Connect` call sees.
#[derive(Debug)]
enum Event {
    Message(Message),
    Refusal(Value),
    /// The call ended: its status code's name and details.
    Ended(String, String),
}

/// A `Connect` call of one device.
struct Connection {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Connection {
    async fn open(port: u16, user: &User, sync: bool) -> Self {
        let mut cmd = client(port, &user.key);
        cmd.arg("connect");
        if sync {
            cmd.arg("sync");
        }
        let mut child = cmd.spawn().expect("the test command's venv with grpcio");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            stdin,
            lines,
        }
    }

    async fn send(&mut self, m: &Message) {
        let line = format!("{}\n", json!({ "send": b64(m) }));
        self.stdin.write_all(line.as_bytes()).await.unwrap();
    }

    async fn try_next(&mut self, wait: Duration) -> Option<Event> {
        let line = tokio::time::timeout(wait, self.lines.next_line())
            .await
            .ok()?;
        let line = line.unwrap().expect("the gRPC client still running");
        let v: Value = serde_json::from_str(&line).unwrap();
        Some(if let Some(m) = v.get("message") {
            Event::Message(unb64(m))
        } else if let Some(r) = v.get("refusal") {
            Event::Refusal(r.clone())
        } else {
            Event::Ended(
                v["status"].as_str().unwrap().to_owned(),
                v["details"].as_str().unwrap_or_default().to_owned(),
            )
        })
    }

    async fn next(&mut self) -> Event {
        self.try_next(WAIT).await.expect("an event in time")
    }

    async fn message(&mut self) -> Message {
        match self.next().await {
            Event::Message(m) => m,
            other => panic!("expected a message, saw {other:?}"),
        }
    }

    /// The next message that is not a notice (a group's membership, say).
    async fn chat_message(&mut self) -> Message {
        loop {
            let m = self.message().await;
            if m.kind != MessageType::Notification {
                return m;
            }
        }
    }

    /// The server ack of `id`, and no other message before it.
    async fn server_ack(&mut self, id: &str) {
        let m = self.chat_message().await;
        assert_eq!((m.kind, m.id.as_str()), (MessageType::ServerAck, id));
    }

    async fn ended(&mut self) -> (String, String) {
        loop {
            if let Event::Ended(code, details) = self.next().await {
                return (code, details);
            }
        }
    }

    async fn quiet(&mut self) {
        if let Some(seen) = self.try_next(Duration::from_millis(500)).await {
            panic!("expected nothing, saw {seen:?}");
        }
    }

    async fn client_ack(&mut self, m: &Message) {
        let ack = Message {
            version: 3.0,
            id: m.id.clone(),
            kind: MessageType::ClientAck,
            destination: "server".into(),
            ..Message::default()
        };
        self.send(&ack).await;
    }

    /// Cancels the call (the client process goes away).
    async fn close(mut self) {
        let _ = self.child.kill().await;
    }
}

#[tokio::test]
async fn grpc_websocket_and_mqtt_users_share_a_chat_and_a_group() {
    let (app, grpc, port) = spawn().await;
    let alice = app.user("alice").await;
    let bob = app.device("bob", "phone").await;
    let carol = app.device("carol", "tablet").await;
    let mut ws = app.connect(&alice, "text", true).await;
    let mut sub = Subscriber::start(port, &bob, "phone", "mqttv5", "apps/samvad/users/bob/#").await;
    let mut rpc = Connection::open(grpc, &carol, false).await;

    // gRPC → WebSocket, acked once stored.
    rpc.send(&chat("g1", "carol", "alice", "hello from grpc"))
        .await;
    rpc.server_ack("g1").await;
    let got = ws.chat_message().await;
    assert_eq!((got.id.as_str(), got.source.as_str()), ("g1", "carol"));
    assert_eq!(text_of(&got), "hello from grpc");
    assert_eq!(got.meta["conv"], "chat:carol");

    // WebSocket → gRPC, with its place in the conversation.
    ws.send(&chat("w1", "alice", "carol", "hello over grpc"))
        .await;
    let got = rpc.message().await;
    assert_eq!(
        (got.id.as_str(), text_of(&got).as_str()),
        ("w1", "hello over grpc")
    );
    assert_eq!(got.meta["conv"], "chat:alice");
    assert_eq!(got.meta["seq"], "2");
    rpc.client_ack(&got).await;

    // One group of the three: each door's message reaches the two others.
    let group = create_group(&app, &alice, "doors", &["bob", "carol"]).await;
    rpc.send(&group_chat("g2", "carol", &group, "to the group from grpc"))
        .await;
    rpc.server_ack("g2").await;
    let got = loop {
        let m = ws.chat_message().await;
        if m.kind != MessageType::Notification {
            break m;
        }
    };
    assert_eq!((got.id.as_str(), got.source.as_str()), ("g2", "carol"));
    loop {
        let (topic, m) = sub.next().await;
        if m["id"] == "g2" {
            assert_eq!(
                topic,
                format!("apps/samvad/users/bob/groups/{group}/messages/clientadded")
            );
            break;
        }
    }
    let (code, said) = mqtt::publish(
        port,
        &bob,
        "phone",
        "mqttv5",
        &format!("apps/samvad/users/bob/groups/{group}/messages/outgoing"),
        &mqtt::json(&group_chat("q1", "bob", &group, "to the group from mqtt")),
    )
    .await;
    assert_eq!(code, 0, "{said}");
    let got = rpc.chat_message().await;
    assert_eq!((got.id.as_str(), got.source.as_str()), ("q1", "bob"));
    assert_eq!(got.meta["conv"], format!("group:{group}"));
    rpc.close().await;
    sub.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_grpc_device_acks_resumes_and_reads_history() {
    let (app, grpc, _) = spawn().await;
    let alice = app.user("alice").await;
    let carol = app.device("carol", "tablet").await;
    let mut ws = app.connect(&alice, "text", true).await;
    for i in 1..=3 {
        let id = format!("m{i}");
        ws.send(&chat(&id, "alice", "carol", &format!("#{i}")))
            .await;
        assert_eq!(ws.message().await.id, id); // the server ack
    }

    // Offline until now: everything owed, in order; two acked.
    let mut rpc = Connection::open(grpc, &carol, false).await;
    let got: Vec<Message> = vec![
        rpc.message().await,
        rpc.message().await,
        rpc.message().await,
    ];
    let ids: Vec<&str> = got.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["m1", "m2", "m3"]);
    rpc.client_ack(&got[0]).await;
    rpc.client_ack(&got[1]).await;
    rpc.quiet().await;
    rpc.close().await;

    // Back again: only what it did not ack.
    let mut rpc = Connection::open(grpc, &carol, false).await;
    assert_eq!(rpc.message().await.id, "m3");
    rpc.quiet().await;
    rpc.close().await;

    // The unary calls: send a batch, acked once durable; list and page the conversation.
    let batch = [
        chat("s1", "carol", "alice", "one"),
        chat("s2", "carol", "alice", "two"),
    ];
    let sent = call(
        grpc,
        &carol.key,
        &["send", &b64(&batch[0]), &b64(&batch[1])],
    )
    .await;
    let acks: Vec<Message> = sent["acks"].as_array().unwrap().iter().map(unb64).collect();
    assert!(
        acks.iter().map(|a| (a.kind, a.id.as_str())).eq([
            (MessageType::ServerAck, "s1"),
            (MessageType::ServerAck, "s2")
        ]),
        "{sent}"
    );
    assert_eq!(ws.chat_message().await.id, "s1");
    assert_eq!(ws.chat_message().await.id, "s2");
    let convs = call(grpc, &carol.key, &["conversations"]).await;
    assert_eq!(convs["conversations"][0]["conv"], "chat:alice", "{convs}");
    assert_eq!(convs["conversations"][0]["last_seq"], 5, "{convs}");
    let page = call(
        grpc,
        &carol.key,
        &["history", "chat:alice", "before", "5", "2"],
    )
    .await;
    let ids: Vec<String> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| unb64(m).id)
        .collect();
    assert_eq!(ids, ["m3", "s1"], "{page}");
    assert_eq!(page["more"], true);
    let absent = call(
        grpc,
        &carol.key,
        &["history", "chat:nobody", "latest", "0", "0"],
    )
    .await;
    assert_eq!(absent["status"], "NOT_FOUND", "{absent}");
    app.stop().await;
}

#[tokio::test]
async fn grpc_refusals_harm_only_that_client() {
    let (app, grpc, _) = spawn().await;
    let alice = app.user("alice").await;
    let carol = app.device("carol", "tablet").await;
    let dave = app.device("dave", "phone").await;
    let group = create_group(&app, &alice, "closed", &["dave"]).await;
    let mut bystander = Connection::open(grpc, &dave, false).await;

    // A wrong or missing key.
    let wrong = call(grpc, "not-a-key", &["conversations"]).await;
    assert_eq!(wrong["status"], "UNAUTHENTICATED", "{wrong}");
    let mut nobody = Connection::open(
        grpc,
        &User {
            name: "x".into(),
            key: "bad".into(),
        },
        false,
    )
    .await;
    assert_eq!(nobody.ended().await.0, "UNAUTHENTICATED");

    // A group one is not in: refused, that message alone, and the call goes on.
    let mut rpc = Connection::open(grpc, &carol, false).await;
    rpc.send(&group_chat("x1", "carol", &group, "let me in"))
        .await;
    match rpc.next().await {
        Event::Refusal(r) => {
            assert_eq!(r["id"], "x1", "{r}");
            assert_eq!(r["forbidden"], true, "{r}");
        }
        other => panic!("expected a refusal, saw {other:?}"),
    }
    rpc.send(&chat("ok1", "carol", "dave", "still here")).await;
    rpc.server_ack("ok1").await;
    assert_eq!(bystander.chat_message().await.id, "ok1");

    // A batch with a refused message sends nothing, and says which.
    let batch = [
        chat("b1", "carol", "dave", "fine"),
        group_chat("b2", "carol", &group, "no"),
    ];
    let refused = call(
        grpc,
        &carol.key,
        &["send", &b64(&batch[0]), &b64(&batch[1])],
    )
    .await;
    assert_eq!(refused["status"], "PERMISSION_DENIED", "{refused}");
    assert!(
        refused["details"]
            .as_str()
            .unwrap()
            .starts_with("message 1:"),
        "{refused}"
    );
    let empty = call(grpc, &carol.key, &["send"]).await;
    assert_eq!(empty["status"], "INVALID_ARGUMENT", "{empty}");

    // Not a protobuf message at all: that call ends.
    let garbage = call(grpc, &carol.key, &["garbage", "0affffffff0f"]).await;
    assert_eq!(garbage["status"], "INVALID_ARGUMENT", "{garbage}");

    // Over the size limit: that call ends, the others go on.
    let big = chat("big", "carol", "dave", &"x".repeat(70 * 1024));
    rpc.send(&big).await;
    let (code, details) = rpc.ended().await;
    assert_eq!(code, "RESOURCE_EXHAUSTED", "{details}");
    let sent = call(
        grpc,
        &alice.key,
        &["send", &b64(&chat("a1", "alice", "dave", "hi"))],
    )
    .await;
    assert!(sent.get("acks").is_some(), "{sent}");
    assert_eq!(bystander.chat_message().await.id, "a1");
    bystander.quiet().await;
    assert!(
        app.metrics()
            .await
            .lines()
            .any(|l| l.starts_with("samvad_messages_refused_total") && l.contains("not_member")),
        "refusals are counted"
    );
    bystander.close().await;
    app.stop().await;
}

/// `sender` sends `recipient` a message with a unary `Send`; the recipient's `Connect` call
/// receives it and answers on the stream; the sender finds both in `History`.
pub(crate) async fn round_trip(port: u16, sender: &User, recipient: &User) {
    let mut rpc = Connection::open(port, recipient, false).await;
    let hello = chat("rt-1", &sender.name, &recipient.name, "over grpc");
    let sent = call(port, &sender.key, &["send", &b64(&hello)]).await;
    assert_eq!(sent["acks"].as_array().map(Vec::len), Some(1), "{sent}");
    let got = rpc.chat_message().await;
    assert_eq!((got.id.as_str(), got.meta["seq"].as_str()), ("rt-1", "1"));
    rpc.client_ack(&got).await;
    rpc.send(&chat(
        "rt-2",
        &recipient.name,
        &sender.name,
        "back over grpc",
    ))
    .await;
    rpc.server_ack("rt-2").await;
    let conv = format!("chat:{}", recipient.name);
    let page = call(port, &sender.key, &["history", &conv, "latest", "0", "0"]).await;
    let ids: Vec<String> = page["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        .map(|m| unb64(m).id)
        .collect();
    assert_eq!(ids, ["rt-1", "rt-2"]);
    rpc.close().await;
}

#[tokio::test]
async fn a_grpc_client_that_stops_reading_is_let_go_and_told_why() {
    let (app, grpc) = spawn_with(&[
        ("SAMVAD_SLOW_CLIENT_SECS", "1"),
        ("SAMVAD_RATE_LIMIT", "100000"),
        ("SAMVAD_RATE_BURST", "100000"),
    ])
    .await;
    let alice = app.user("alice").await;
    let bob = app.device("bob", "phone").await;
    // 40 MB owed: more than HTTP/2's windows, grpcio's buffers and loopback's socket buffers
    // (which the kernel grows to several MB) hold between them.
    const SENT: usize = 2500;
    let text = "x".repeat(16 * 1024);
    for batch in 0..SENT / 50 {
        let frames: Vec<String> = (0..50)
            .map(|i| {
                let m = chat(&format!("s{batch}-{i}"), "alice", "bob", &text);
                samvad_protocol::encode_text(&m, samvad_protocol::Encoding::V2_1)
            })
            .collect();
        let sent = app
            .as_user(reqwest::Method::POST, "/v1.0/messages?format=text", &alice)
            .json(&frames)
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 201);
    }
    // bob's call takes one event, then none for 5 s: it is let go, and hears why after what
    // was on its way.
    let seen = call(grpc, &bob.key, &["paused", "5"]).await;
    assert_eq!(seen["status"], "RESOURCE_EXHAUSTED", "{seen}");
    let taken = seen["events"].as_u64().unwrap() as usize;
    assert!((1..SENT).contains(&taken), "{seen}");
    assert!(
        app.metrics()
            .await
            .lines()
            .any(|l| l.starts_with("samvad_slow_closes_total") && !l.ends_with(" 0")),
        "counted"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_grpc_connection_that_says_nothing_is_closed() {
    let (app, grpc) = spawn_with(&[("SAMVAD_REQUEST_HEAD_SECS", "1")]).await;
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", grpc))
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("closed within the request-head bound");
    assert_eq!(read.unwrap_or(0), 0, "closed, having said nothing");
    // A client that speaks is served.
    let health = call(grpc, "-", &["health", ""]).await;
    assert_eq!(health["status"], "SERVING", "{health}");
    app.stop().await;
}

#[tokio::test]
async fn a_grpc_connection_past_its_age_is_asked_to_move_on_and_its_calls_go_on() {
    let (app, grpc) = spawn_with(&[("SAMVAD_GRPC_MAX_CONNECTION_AGE_SECS", "2")]).await;
    let carol = app.user("carol").await;
    let mut on_phone = Connection::open(grpc, &carol, false).await;
    // A connection that opens no call: told GOAWAY once its age is up, then closed.
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", grpc))
        .await
        .unwrap();
    // The client preface and an empty SETTINGS frame.
    idle.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    // What a well-behaved client does: SETTINGS and PINGs answered, frame types noted.
    let talk = async {
        let mut frames = Vec::new();
        let mut head = [0u8; 9];
        while idle.read_exact(&mut head).await.is_ok() {
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let (kind, ack) = (head[3], head[4] & 1 == 1);
            let mut payload = vec![0u8; len];
            if idle.read_exact(&mut payload).await.is_err() {
                break;
            }
            frames.push(kind);
            let answer = match (kind, ack) {
                (0x4, false) => Some(Vec::new()),
                (0x6, false) => Some(payload),
                _ => None,
            };
            if let Some(body) = answer {
                let mut frame = vec![0, 0, body.len() as u8, kind, 1, 0, 0, 0, 0];
                frame.extend_from_slice(&body);
                let _ = idle.write_all(&frame).await;
            }
        }
        frames
    };
    let frames = tokio::time::timeout(Duration::from_secs(15), talk)
        .await
        .expect("the idle connection is closed after its age");
    assert!(
        frames.contains(&0x7),
        "a GOAWAY frame before the close: {frames:?}"
    );
    // The call that was open through it all is still served.
    let alice = app.user("alice").await;
    let sent = call(
        grpc,
        &alice.key,
        &["send", &b64(&chat("c1", "alice", "carol", "still there?"))],
    )
    .await;
    assert!(sent.get("acks").is_some(), "{sent}");
    assert_eq!(on_phone.chat_message().await.id, "c1");
    on_phone.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_grpc_call_ends_with_a_logout_and_past_the_connection_cap() {
    let (app, grpc) = spawn_with(&[("SAMVAD_MAX_CONNECTIONS_PER_USER", "2")]).await;
    let phone = app.device("carol", "phone").await;
    let laptop = app.device("carol", "laptop").await;
    let mut on_phone = Connection::open(grpc, &phone, false).await;
    let mut on_laptop = Connection::open(grpc, &laptop, false).await;
    // Both calls are in once each is fed (a message each way proves it).
    let alice = app.user("alice").await;
    let sent = call(
        grpc,
        &alice.key,
        &["send", &b64(&chat("c1", "alice", "carol", "hi"))],
    )
    .await;
    assert!(sent.get("acks").is_some(), "{sent}");
    assert_eq!(on_phone.chat_message().await.id, "c1");
    assert_eq!(on_laptop.chat_message().await.id, "c1");

    // A third connection of the user is one too many, whatever its door.
    let mut third = Connection::open(grpc, &phone, false).await;
    let (code, details) = third.ended().await;
    assert_eq!(code, "RESOURCE_EXHAUSTED", "{details}");

    // The laptop logs out: its call ends, the phone's goes on.
    let (status, _) =
        crate::support::call(app.as_user(reqwest::Method::POST, "/v1.0/logout", &laptop)).await;
    assert_eq!(status, 200);
    let (code, details) = on_laptop.ended().await;
    assert_eq!(code, "UNAUTHENTICATED", "{details}");
    let sent = call(
        grpc,
        &alice.key,
        &["send", &b64(&chat("c2", "alice", "carol", "still?"))],
    )
    .await;
    assert!(sent.get("acks").is_some(), "{sent}");
    assert_eq!(on_phone.chat_message().await.id, "c2");
    on_phone.close().await;
    app.stop().await;
}

#[tokio::test]
async fn grpc_health_and_reflection() {
    let (app, grpc, _) = spawn().await;
    let health = call(grpc, "-", &["health", "samvad.chat.v1.Chat"]).await;
    assert_eq!(health["status"], "SERVING", "{health}");
    let overall = call(grpc, "-", &["health", ""]).await;
    assert_eq!(overall["status"], "SERVING", "{overall}");
    let reflected = call(grpc, "-", &["reflect"]).await;
    let services = reflected["services"].as_array().unwrap();
    for name in ["samvad.chat.v1.Chat", "grpc.health.v1.Health"] {
        assert!(services.iter().any(|s| s == name), "{name} in {reflected}");
    }
    assert_eq!(
        reflected["chat_methods"],
        json!(["Connect", "Send", "Conversations", "History"])
    );
    app.stop().await;
}

#[tokio::test]
async fn kill_9_after_a_grpc_server_ack_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = samvad_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let env = [("SAMVAD_GRPC_LISTEN", listen.as_str())];
    let server = Server::start_with(dir.path(), &env);
    let app = server.app();
    let alice = app.user("alice").await;
    let carol = app.device("carol", "tablet").await;
    let mut rpc = Connection::open(port, &carol, false).await;
    const SENT: usize = 20;
    for i in 0..SENT {
        let id = format!("k-{i:02}");
        rpc.send(&chat(&id, "carol", "alice", &format!("#{i}")))
            .await;
        rpc.server_ack(&id).await;
    }
    server.kill9();
    assert_eq!(rpc.ended().await.0, "UNAVAILABLE");

    let server = Server::start_with(dir.path(), &env);
    let mut a = server.app().connect(&alice, "text", false).await;
    let mut received = Vec::new();
    while let Some(crate::support::Seen::Message(m)) = a.try_next(Duration::from_secs(2)).await {
        received.push(m.id);
    }
    let expected: Vec<String> = (0..SENT).map(|i| format!("k-{i:02}")).collect();
    assert_eq!(received, expected, "every acked message, in order");
}
