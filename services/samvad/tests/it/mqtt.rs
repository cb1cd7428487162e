//! The MQTT door, driven by clients this project did not write: Eclipse Mosquitto's
//! `mosquitto_pub` and `mosquitto_sub` (Debian's `mosquitto-clients`), MQTT 5 and 3.1.1,
//! talking with WebSocket users in one 1:1 chat and one group.

use std::process::Stdio;
use std::time::Duration;

use samvad_protocol::{Encoding, MessageType};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::durability::Server;
use crate::groups::create_group;
use crate::support::{Seen, TestApp, User, WAIT, chat, group_chat, text_of};

/// An all-in-one server with its MQTT door open, and its MQTT port.
async fn spawn() -> (TestApp, u16) {
    let port = samvad_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let app = TestApp::spawn_with(&[("SAMVAD_MQTT_LISTEN", listen.as_str())]).await;
    (app, port)
}

/// `mosquitto_pub`/`mosquitto_sub` as `user` on `device`, speaking `version`
/// (`mqttv5`, `mqttv311`).
fn mosquitto(tool: &str, port: u16, user: &User, device: &str, version: &str) -> Command {
    let mut cmd = Command::new(tool);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-u", &user.name, "-P", &user.key, "-i", device, "-V", version,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Publishes `payload` at QoS 1 and returns the exit code and what the tool printed.
pub(crate) async fn publish(
    port: u16,
    user: &User,
    device: &str,
    version: &str,
    topic: &str,
    payload: &str,
) -> (i32, String) {
    let out = mosquitto("mosquitto_pub", port, user, device, version)
        .args(["-q", "1", "-t", topic, "-m", payload])
        .output()
        .await
        .expect("mosquitto_pub (apt install mosquitto-clients)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), said)
}

/// A `mosquitto_sub` subscribed at QoS 1 to `filter`, printing `topic payload` lines.
pub(crate) struct Subscriber {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Subscriber {
    pub(crate) async fn start(
        port: u16,
        user: &User,
        device: &str,
        version: &str,
        filter: &str,
    ) -> Self {
        let mut child = mosquitto("mosquitto_sub", port, user, device, version)
            .args(["-q", "1", "-v", "-t", filter])
            .spawn()
            .expect("mosquitto_sub (apt install mosquitto-clients)");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Its SUBSCRIBE is in once the server has answered it; there is no sign of that in
        // mosquitto_sub's output, so give it a moment.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Self { child, lines }
    }

    /// The next delivery: its topic and the message in it.
    pub(crate) async fn next(&mut self) -> (String, Value) {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("a delivery in time")
            .unwrap()
            .expect("mosquitto_sub still running");
        let (topic, payload) = line.split_once(' ').expect("topic and payload");
        (topic.to_owned(), serde_json::from_str(payload).unwrap())
    }

    /// Nothing more arrives for a while.
    async fn quiet(&mut self) {
        let got = tokio::time::timeout(Duration::from_secs(2), self.lines.next_line()).await;
        assert!(got.is_err(), "nothing more expected, got {got:?}");
    }

    /// Disconnects (its PUBACKs of what it printed are sent by then).
    pub(crate) async fn stop(mut self) {
        // SIGTERM: mosquitto_sub disconnects cleanly.
        let pid = self.child.id().unwrap();
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
    }
}

pub(crate) fn json(m: &samvad_protocol::Message) -> String {
    samvad_protocol::encode_text(m, Encoding::V2_1)
}

async fn chat_between_doors(version: &str) {
    let (app, port) = spawn().await;
    let alice = app.user("alice").await;
    let bob = app.device("bob", "phone").await;
    let mut ws = app.connect(&alice, "text", true).await;
    let mut sub = Subscriber::start(port, &bob, "phone", version, "apps/samvad/users/bob/#").await;

    // WebSocket → MQTT
    ws.send(&chat("w1", "alice", "bob", "hello over mqtt"))
        .await;
    let (topic, got) = sub.next().await;
    assert_eq!(topic, "apps/samvad/users/bob/alice/messages/clientadded");
    assert_eq!(got["body"]["text"], "hello over mqtt");
    assert_eq!(got["meta"]["conv"], "chat:alice");
    assert_eq!(got["meta"]["seq"], 1);

    // MQTT → WebSocket: PUBACK (mosquitto_pub's exit 0) only once it is stored.
    let (code, said) = publish(
        port,
        &bob,
        "phone",
        version,
        "apps/samvad/users/bob/alice/messages/outgoing",
        &json(&chat("q1", "bob", "alice", "hello over websocket")),
    )
    .await;
    assert_eq!(code, 0, "{said}");
    let m = loop {
        match ws.next().await {
            Seen::Message(m) if m.kind == MessageType::ServerAck => {}
            Seen::Message(m) => break m,
            other => panic!("expected a message, got {other:?}"),
        }
    };
    assert_eq!((m.id.as_str(), m.source.as_str()), ("q1", "bob"));
    assert_eq!(text_of(&m), "hello over websocket");
    assert_eq!(m.meta["seq"], "2");

    // bob's own message comes back to his device's subscription? Never to the device that sent
    // it; here that is the same device, so nothing.
    sub.quiet().await;
    sub.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn an_mqtt5_user_and_a_websocket_user_chat() {
    chat_between_doors("mqttv5").await;
}

#[tokio::test]
async fn an_mqtt311_user_and_a_websocket_user_chat() {
    chat_between_doors("mqttv311").await;
}

#[tokio::test]
async fn an_mqtt_device_is_sent_what_it_has_not_acked_once() {
    let (app, port) = spawn().await;
    let alice = app.user("alice").await;
    let bob = app.device("bob", "phone").await;
    let mut ws = app.connect(&alice, "text", true).await;
    let filter = "apps/samvad/users/bob/+/messages/clientadded";

    // Sent while bob is offline: his device gets it when it connects and subscribes.
    ws.send(&chat("m1", "alice", "bob", "one")).await;
    ws.next().await; // the server ack
    let mut sub = Subscriber::start(port, &bob, "phone", "mqttv311", filter).await;
    assert_eq!(sub.next().await.1["body"]["text"], "one");
    sub.quiet().await;
    sub.stop().await; // PUBACKed: acked for the device

    ws.send(&chat("m2", "alice", "bob", "two")).await;
    ws.next().await;
    let mut sub = Subscriber::start(port, &bob, "phone", "mqttv5", filter).await;
    assert_eq!(sub.next().await.1["body"]["text"], "two");
    sub.quiet().await;
    sub.stop().await;

    // A second device of bob's is owed its own duty, from its login on.
    let laptop = app.device("bob", "laptop").await;
    ws.send(&chat("m3", "alice", "bob", "three")).await;
    ws.next().await;
    let mut phone = Subscriber::start(port, &bob, "phone", "mqttv5", filter).await;
    let mut on_laptop = Subscriber::start(port, &laptop, "laptop", "mqttv5", filter).await;
    assert_eq!(phone.next().await.1["body"]["text"], "three");
    assert_eq!(on_laptop.next().await.1["body"]["text"], "three");
    phone.stop().await;
    on_laptop.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn mqtt_and_websocket_members_talk_in_a_group() {
    let (app, port) = spawn().await;
    let alice = app.user("alice").await;
    let bob = app.device("bob", "phone").await;
    let carol = app.device("carol", "tablet").await;
    let gid = create_group(&app, &alice, "doors", &["bob", "carol"]).await;
    let mut ws = app.connect(&alice, "text", true).await;
    let group_topic = format!("apps/samvad/users/carol/groups/{gid}/messages/clientadded");
    let mut sub = Subscriber::start(port, &carol, "tablet", "mqttv5", &group_topic).await;
    // The group's own notices (carol added) come first.
    let (topic, notice) = sub.next().await;
    assert_eq!(topic, group_topic);
    assert_eq!(notice["meta"]["conv"], format!("group:{gid}"));

    let (code, said) = publish(
        port,
        &bob,
        "phone",
        "mqttv311",
        &format!("apps/samvad/users/bob/groups/{gid}/messages/outgoing"),
        &json(&group_chat("g1", "bob", &gid, "from mqtt to the group")),
    )
    .await;
    assert_eq!(code, 0, "{said}");
    loop {
        let (_, m) = sub.next().await;
        if m["id"] == "g1" {
            assert_eq!(m["body"]["text"], "from mqtt to the group");
            break;
        }
    }
    loop {
        match ws.next().await {
            Seen::Message(m) if m.id == "g1" => {
                assert_eq!(text_of(&m), "from mqtt to the group");
                break;
            }
            Seen::Message(_) => {}
            other => panic!("expected the group message, got {other:?}"),
        }
    }
    sub.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn mqtt_refuses_what_is_not_the_users_own_and_only_that_client() {
    let (app, port) = spawn().await;
    let alice = app.device("alice", "d1").await;
    let bob = app.device("bob", "phone").await;
    let mut watcher =
        Subscriber::start(port, &alice, "d1", "mqttv5", "apps/samvad/users/alice/#").await;

    // Another user's tree: SUBACK failure on both versions.
    for version in ["mqttv5", "mqttv311"] {
        let out = mosquitto("mosquitto_sub", port, &bob, "phone", version)
            .args([
                "-q",
                "1",
                "-t",
                "apps/samvad/users/alice/#",
                "-C",
                "1",
                "-W",
                "3",
            ])
            .output()
            .await
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("denied"), "{version}: {said}");
    }
    // Publishing as someone else: MQTT 5 hears why in its PUBACK (mosquitto_pub prints the
    // failure, and exits 0 all the same); 3.1.1 has no way to be told but the connection
    // closing, and nothing is acked.
    let forged = json(&chat("f1", "alice", "bob", "forged"));
    let topic = "apps/samvad/users/alice/bob/messages/outgoing";
    let (_, said) = publish(port, &bob, "phone", "mqttv5", topic, &forged).await;
    assert!(said.contains("Publish 1 failed: Not authorized"), "{said}");
    let (code, said) = publish(port, &bob, "phone", "mqttv311", topic, &forged).await;
    assert_ne!(code, 0, "{said}");
    // A payload that is no message, a bad password, a client id that is not the key's device.
    let mine = "apps/samvad/users/bob/alice/messages/outgoing";
    let (_, said) = publish(port, &bob, "phone", "mqttv5", mine, "not json").await;
    assert!(said.contains("failed: Payload format invalid"), "{said}");
    let wrong = User {
        key: "not-a-key".into(),
        ..bob.clone()
    };
    let (code, said) = publish(port, &wrong, "phone", "mqttv5", mine, "{}").await;
    assert!(
        code != 0 && said.contains("Bad User Name or Password"),
        "{said}"
    );
    let (code, said) = publish(port, &wrong, "phone", "mqttv311", mine, "{}").await;
    assert!(
        code != 0 && said.contains("bad user name or password"),
        "{said}"
    );
    let (code, said) = publish(port, &bob, "laptop", "mqttv5", mine, "{}").await;
    assert!(
        code != 0 && said.contains("Client Identifier not valid"),
        "{said}"
    );
    // Garbage instead of a CONNECT, and a packet over the size limit: that connection closes.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut raw, &mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    let big = format!("{{\"x\":\"{}\"}}", "a".repeat(70_000));
    // (An MQTT 5 client knows the limit from CONNACK, and mosquitto_pub then sends nothing.)
    let (code, said) = publish(port, &bob, "phone", "mqttv311", mine, &big).await;
    assert_ne!(code, 0, "{said}");

    // The others carry on: alice's subscriber saw none of it, and still gets bob's message.
    let (code, said) = publish(
        port,
        &bob,
        "phone",
        "mqttv5",
        mine,
        &json(&chat("ok1", "bob", "alice", "still here")),
    )
    .await;
    assert_eq!(code, 0, "{said}");
    let (_, m) = watcher.next().await;
    assert_eq!(
        (m["id"].as_str(), m["body"]["text"].as_str()),
        (Some("ok1"), Some("still here"))
    );
    watcher.quiet().await;
    watcher.stop().await;
    let metrics = app.metrics().await;
    assert!(metrics.contains("reason=\"mqtt_topic\""), "{metrics}");
    app.stop().await;
}

#[tokio::test]
async fn kill_9_after_an_mqtt_puback_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = samvad_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let env = [("SAMVAD_MQTT_LISTEN", listen.as_str())];
    let server = Server::start_with(dir.path(), &env);
    let app = server.app();
    let alice = app.user("alice").await;
    let bob = app.device("bob", "phone").await;
    // Each mosquitto_pub exits 0 only after its PUBACK; the last one is followed at once by
    // kill -9.
    const SENT: usize = 20;
    for i in 0..SENT {
        let m = chat(&format!("p-{i:02}"), "bob", "alice", &format!("#{i}"));
        let (code, said) = publish(
            port,
            &bob,
            "phone",
            if i % 2 == 0 { "mqttv5" } else { "mqttv311" },
            "apps/samvad/users/bob/alice/messages/outgoing",
            &json(&m),
        )
        .await;
        assert_eq!(code, 0, "{said}");
    }
    server.kill9();

    let server = Server::start_with(dir.path(), &env);
    let mut a = server.app().connect(&alice, "text", false).await;
    let mut received = Vec::new();
    while let Some(Seen::Message(m)) = a.try_next(Duration::from_secs(2)).await {
        received.push(m.id);
    }
    let expected: Vec<String> = (0..SENT).map(|i| format!("p-{i:02}")).collect();
    assert_eq!(received, expected, "every PUBACKed message, in order");
}

/// paho-mqtt (PyPI), the Eclipse client most MQTT apps are written with, over WebSocket at
/// `/mqtt`: the recipient's MQTT 5 subscriber, then the sender's 3.1.1 publisher.
const PAHO_OVER_WEBSOCKET: &str = r#"
import json, sys, time
import paho.mqtt.client as mqtt
port, sender, sender_key, recipient, recipient_key, payload = sys.argv[1:7]
got = []
def client(user, key, device, protocol):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device,
                    transport="websockets", protocol=protocol)
    c.ws_set_options(path="/mqtt")
    c.username_pw_set(user, key)
    return c
to = client(recipient, recipient_key, "phone", mqtt.MQTTv5)
to.on_message = lambda c, u, m: got.append([m.topic, json.loads(m.payload)])
to.on_connect = lambda c, u, f, rc, p: c.subscribe(f"apps/samvad/users/{recipient}/#", qos=1)
to.connect("127.0.0.1", int(port)); to.loop_start()
frm = client(sender, sender_key, "laptop", mqtt.MQTTv311)
frm.connect("127.0.0.1", int(port)); frm.loop_start()
time.sleep(1)
sent = frm.publish(f"apps/samvad/users/{sender}/{recipient}/messages/outgoing", payload, qos=1)
sent.wait_for_publish(10)
deadline = time.time() + 10
while not got and time.time() < deadline:
    time.sleep(0.05)
print(json.dumps({"acked": sent.is_published(), "got": got}))
"#;

/// `sender` (device `laptop`) writes `text` to `recipient` (device `phone`) with paho over
/// MQTT-over-WebSocket on `port`: asserts the PUBACK and what the recipient's subscriber got.
pub(crate) async fn paho_over_websocket(port: u16, sender: &User, recipient: &User, text: &str) {
    let python = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/tools/k8s-venv/bin/python"
    );
    let payload = json(&chat("pw1", &sender.name, &recipient.name, text));
    let port = port.to_string();
    let args = [
        "-c",
        PAHO_OVER_WEBSOCKET,
        &port,
        &sender.name,
        &sender.key,
        &recipient.name,
        &recipient.key,
        &payload,
    ];
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(python).args(args).output(),
    )
    .await
    .expect("paho in time")
    .expect("the test command's venv with paho-mqtt (deployment/scripts/test)");
    let said: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(said["acked"], true, "{said}");
    let got = &said["got"][0];
    assert_eq!(
        got[0],
        format!(
            "apps/samvad/users/{}/{}/messages/clientadded",
            recipient.name, sender.name
        )
    );
    assert_eq!(got[1]["body"]["text"], text);
}

#[tokio::test]
async fn paho_speaks_mqtt_over_websocket() {
    let app = TestApp::spawn().await;
    let alice = app.device("alice", "laptop").await;
    let bob = app.device("bob", "phone").await;
    paho_over_websocket(app.addr.port(), &alice, &bob, "over a websocket").await;
    app.stop().await;
}
