//! The cluster shape end to end: every service its own process on a bus — Kafka (tansu) or
//! NATS JetStream —, MongoDB (SecantusDB) and Redis, two ws-gateways, nginx in front — started
//! and stopped by `deployment/scripts/cluster`, exactly as a developer would.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use samvad_protocol::MessageType;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::assets;
use crate::history::texts;
use crate::presence;
use crate::support::{Client, Seen, TestApp, call, chat, group_chat, text_of};

/// How long a user may wait while the cluster recovers from a killed process.
const RECOVERY: Duration = Duration::from_secs(60);

/// One cluster at a time: two would starve each other of the machine's two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Cluster {
    script: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// `kafka` or `nats`.
    bus: &'static str,
}

impl Cluster {
    fn command(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.script)
            .args(args)
            .env("SAMVAD_CLUSTER_DIR", self.dir.path())
            .env("SAMVAD_CLUSTER_PORT", self.port.to_string())
            .output()
            .unwrap()
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.command(args);
        assert!(
            out.status.success(),
            "cluster {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `cluster status`: whether every process runs and is ready, and its table.
    fn status(&self) -> (bool, String) {
        let out = self.command(&["status"]);
        (out.status.success(), String::from_utf8(out.stdout).unwrap())
    }

    /// `cluster up` on this cluster's directory, ports and bus; the app behind its URL.
    fn start(&self) -> TestApp {
        let out = self.run(&["up", "--bus", self.bus]);
        let url = out.lines().last().unwrap();
        TestApp::at(url.trim_start_matches("http://").parse().unwrap())
    }

    fn up(bus: &'static str) -> (Self, TestApp) {
        let cluster = Self {
            script: PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../deployment/scripts/cluster"
            )),
            dir: tempfile::tempdir().unwrap(),
            // A base port apart from the script's default and from port-0 servers' range.
            port: 21000 + (std::process::id() % 400) as u16 * 20,
            bus,
        };
        let app = cluster.start();
        (cluster, app)
    }

    /// Open WebSocket connections on gateway `n` (1 or 2), from its own /metrics.
    async fn connections_on(&self, n: u16) -> u64 {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port + n))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("samvad_ws_connections "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The logs go with the temporary directory: show their ends while they exist.
            let logs = self.dir.path().join("logs");
            for entry in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("==== {} (last 40 lines)", entry.path().display());
                for line in &lines[lines.len().saturating_sub(40)..] {
                    eprintln!("{line}");
                }
            }
        }
        let _ = Command::new(&self.script)
            .arg("down")
            .env("SAMVAD_CLUSTER_DIR", self.dir.path())
            .env("SAMVAD_CLUSTER_PORT", self.port.to_string())
            .output();
    }
}

/// Sends `n` messages from `from` to `to` and returns the ids the server acked.
async fn stream(sender: &mut Client, to: &str, prefix: &str, n: usize) -> Vec<String> {
    let mut acked = Vec::new();
    for i in 0..n {
        sender
            .send(&chat(
                &format!("{prefix}-{i:04}"),
                &sender.name.clone(),
                to,
                &format!("{prefix}{i}"),
            ))
            .await;
        let ack = sender.message().await;
        assert_eq!(ack.kind, MessageType::ServerAck);
        acked.push(ack.id);
    }
    acked
}

/// Reads until `want` are all in, acking each; returns everything seen, in order.
async fn receive_all(receiver: &mut Client, want: &[String]) -> Vec<String> {
    let missing = |seen: &[String]| {
        let seen: HashSet<&String> = seen.iter().collect();
        want.iter().filter(|id| !seen.contains(id)).count()
    };
    let mut seen = Vec::new();
    while missing(&seen) > 0 {
        // After a kill -9 the consumer group waits out the dead member's session (10 s)
        // before the restarted one takes over: allow for it.
        let m = match receiver.try_next(RECOVERY).await {
            Some(Seen::Message(m)) => m,
            other => panic!(
                "{} waiting for {} more: {other:?}",
                receiver.name,
                missing(&seen)
            ),
        };
        if m.kind == MessageType::ServerAck {
            continue;
        }
        receiver.client_ack(&m).await;
        seen.push(m.id);
    }
    seen
}

/// Reads until message `id` arrives, acking all; its conversation and seq.
async fn place_of(receiver: &mut Client, id: &str) -> (String, String) {
    loop {
        let m = receiver.chat_message().await;
        receiver.client_ack(&m).await;
        if m.id == id {
            return (m.meta["conv"].clone(), m.meta["seq"].clone());
        }
    }
}

/// Sends one message from `a` to `b` and expects `b` to have it within a second, as a person
/// trying the cluster would.
async fn delivered_at_once(a: &mut Client, b: &mut Client, id: &str, text: &str) {
    a.send(&chat(id, &a.name.clone(), &b.name.clone(), text))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match b.try_next(left).await {
            Some(Seen::Message(m)) if m.kind == MessageType::ServerAck => {}
            Some(Seen::Message(m)) => {
                b.client_ack(&m).await;
                if m.id == id {
                    assert_eq!(text_of(&m), text);
                    break;
                }
            }
            other => panic!("{} waiting a second for {id}: {other:?}", b.name),
        }
    }
    // The sender's ack, past anything replayed to the sender meanwhile.
    loop {
        let m = a.message().await;
        if m.kind == MessageType::ServerAck && m.id == id {
            break;
        }
        if m.kind != MessageType::ServerAck {
            a.client_ack(&m).await;
        }
    }
}

#[tokio::test]
async fn the_cluster_on_kafka_delivers_through_nginx_and_survives_kill_9() {
    delivers_through_nginx_and_survives_kill_9("kafka").await;
}

#[tokio::test]
async fn the_cluster_on_nats_delivers_through_nginx_and_survives_kill_9() {
    delivers_through_nginx_and_survives_kill_9("nats").await;
}

async fn delivers_through_nginx_and_survives_kill_9(bus: &'static str) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (cluster, app) = Cluster::up(bus);
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;

    // nginx spreads connections over the two gateways: alice on one, bob on the other.
    let mut a = app.connect(&alice, "text", true).await;
    let mut b = app.connect(&bob, "binary", true).await;
    assert_eq!(
        (
            cluster.connections_on(1).await,
            cluster.connections_on(2).await
        ),
        (1, 1),
        "one user per gateway"
    );

    // 1:1 across gateways: `up` returned, so the first message arrives at once.
    delivered_at_once(&mut a, &mut b, "hello", "hi from gateway 1").await;
    let (ready, table) = cluster.status();
    assert!(ready, "every process runs and is ready:\n{table}");

    // A group, carol offline.
    let (status, body) = call(
        app.as_user(Method::POST, "/v1.0/groups/", &alice)
            .json(&json!({"name": "trio", "members": ["bob", "carol"]})),
    )
    .await;
    assert_eq!(status, 200);
    let gid = body["groupId"].as_str().unwrap().to_owned();
    a.send(&group_chat("g-1", "alice", &gid, "hello trio"))
        .await;
    let mut seen_group = false;
    while !seen_group {
        let m = b.chat_message().await;
        b.client_ack(&m).await;
        seen_group = text_of(&m) == "hello trio";
    }

    // The chat page through nginx: the page, its modules and styles, and the console.
    for (path, kind, has) in [
        ("/", "text/html", "src=\"/app.js\""),
        ("/app.js", "text/javascript", "from './client.js'"),
        ("/client.js", "text/javascript", "export class Connection"),
        ("/app.css", "text/css", ".thread"),
        ("/console", "text/html", "<script"),
    ] {
        let got = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(got.status(), 200, "{path}");
        let headers = got.headers().clone();
        assert!(
            headers["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        assert_eq!(
            headers.contains_key("content-security-policy"),
            path != "/console",
            "{path}"
        );
        assert!(got.text().await.unwrap().contains(has), "{path}");
    }

    // The page's WebSocket through nginx, as a browser opens it: with the page's Origin, which
    // the gateway compares with the Host nginx must pass on (and every service answers only
    // for the Host the client asked for).
    let dave = app.user("dave").await;
    let mut request = format!("ws://{}/v1.0/wss/?format=text", app.addr)
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("origin", format!("http://{}", app.addr).parse().unwrap());
    headers.insert("accesskey", dave.key.parse().unwrap());
    let opened = tokio_tungstenite::connect_async(request).await;
    assert!(
        opened.is_ok(),
        "the page's own origin is refused: {opened:?}"
    );
    drop(opened);

    // Metrics are scraped from each process, never passed on by nginx.
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 404);

    // REST send through nginx.
    let frame = samvad_protocol::encode_text(
        &chat("rest-1", "bob", "alice", "over rest"),
        samvad_protocol::Encoding::V2_1,
    );
    let (status, body) = call(
        app.as_user(Method::POST, "/v1.0/messages?format=text&ack=true", &bob)
            .json(&[frame]),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let mut seen_rest = false;
    while !seen_rest {
        let m = a.chat_message().await;
        a.client_ack(&m).await;
        seen_rest = m.id == "rest-1";
    }

    // MQTT over WebSocket through nginx (`/mqtt`), with paho: the PUBACK once durable, and the
    // delivery on the recipient's topic, whichever gateways the two land on.
    let gina = app.device("gina", "laptop").await;
    let hugo = app.device("hugo", "phone").await;
    crate::mqtt::paho_over_websocket(app.addr.port(), &gina, &hugo, "mqtt through nginx").await;

    // gRPC through nginx's HTTP/2 listener (the base port + 19), with grpcio.
    let ivan = app.device("ivan", "phone").await;
    let judy = app.device("judy", "laptop").await;
    crate::grpc::round_trip(cluster.port + 19, &ivan, &judy).await;

    // Attachments through nginx, in the S3-compatible store (deps runs s3s-fs).
    let erin = app.user("erin").await;
    let frank = app.user("frank").await;
    let (url, file_id) = assets::upload_url(&app, &erin, ".png").await;
    assert!(
        url.contains("X-Amz-Signature="),
        "presigned for the store: {url}"
    );
    assert_eq!(assets::put(&app, &url, "image/gif", assets::PNG).await, 403);
    assert_eq!(assets::put(&app, &url, "image/png", assets::PNG).await, 200);
    assert_eq!(assets::mark(&app, &frank, &file_id).await.0, 404);
    assert_eq!(assets::mark(&app, &erin, &file_id).await.0, 200);
    assert_eq!(assets::download_url(&app, &frank, &file_id).await.0, 404);
    // erin follows presence. Her ping is answered once her connection serves, so once it is
    // in presence: from then on, frank's coming and going is news delivery can hand her.
    let mut e = app.connect_presence(&erin).await;
    e.send_raw(Frame::Text("ping".into())).await;
    assert!(matches!(e.next().await, Seen::Pong));
    // Once frank has the message (the REST ack came when Kafka had it), he may download.
    let mut f = app.connect(&frank, "text", false).await;
    assets::send_picture(&app, &erin, chat("pic-1", "erin", "frank", ""), &file_id).await;
    assert_eq!(f.chat_message().await.id, "pic-1");
    drop(f);
    assert_eq!(
        assets::download(&app, &frank, &file_id).await.unwrap(),
        assets::PNG
    );
    assert_eq!(assets::download_url(&app, &carol, &file_id).await.0, 404);

    // Presence, from Redis, through whichever gateways: frank's first connection closed after
    // they shared a conversation; then he comes and goes again.
    let (who, online, _) = presence::notice(&mut e).await;
    assert_eq!((who.as_str(), online), ("frank", false));
    let f = app.connect(&frank, "text", false).await;
    assert_eq!(presence::notice(&mut e).await, ("frank".into(), true, None));
    drop(f);
    let (who, online, _) = presence::notice(&mut e).await;
    assert_eq!((who.as_str(), online), ("frank", false));
    let seen = presence::presence_of(&app, &erin, "frank").await;
    assert_eq!(seen["frank"]["online"], false);
    assert!(seen["frank"]["lastSeen"].is_u64(), "{seen}");
    drop(e);

    // Offline replay: carol connects and gets the group's news, in order.
    let mut c = app.connect(&carol, "text", false).await;
    assert_eq!(c.message().await.kind, MessageType::Notification);
    assert_eq!(text_of(&c.message().await), "hello trio");

    // Bob's second device, on whichever gateway nginx gives it: both his devices get the next
    // message at the same place in the conversation, and its history through nginx agrees.
    let laptop = app.device("bob", "laptop").await;
    let mut l = app.connect(&laptop, "text", false).await;
    let placed = stream(&mut a, "bob", "both", 1).await;
    let (on_phone, on_laptop) = (
        place_of(&mut b, &placed[0]).await,
        place_of(&mut l, &placed[0]).await,
    );
    assert_eq!(on_phone, on_laptop, "one conversation, one sequence");
    assert_eq!(on_laptop.0, "chat:alice");
    let (status, body) = call(app.as_user(
        Method::GET,
        "/v1.0/conversations/chat:alice/messages?limit=1",
        &laptop,
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(texts(&body), [("both0".to_owned(), on_laptop.1.clone())]);

    // The laptop logs out: profile tells its gateway, wherever it is, to close its socket,
    // and its key stops working through nginx.
    let (status, _) = call(app.as_user(Method::POST, "/v1.0/logout", &laptop)).await;
    assert_eq!(status, 200);
    match l.next().await {
        Seen::Closed(code) => assert_eq!(code, Some(CloseCode::Policy)),
        other => panic!("expected the laptop's socket closed with 1008, saw {other:?}"),
    }
    let (status, _) = call(app.as_user(Method::GET, "/v1.0/conversations", &laptop)).await;
    assert_eq!(status, 401);

    // kill -9 delivery in the middle of a stream, then restart it: nothing acked is lost.
    let mut acked = stream(&mut a, "bob", "d", 20).await;
    cluster.run(&["kill", "delivery"]);
    let (ready, table) = cluster.status();
    assert!(!ready, "status tells that delivery is gone:\n{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("delivery ") && !l.contains("ready")),
        "{table}"
    );
    acked.extend(stream(&mut a, "bob", "e", 20).await);
    cluster.run(&["start", "delivery"]);
    acked.extend(stream(&mut a, "bob", "f", 10).await);
    let seen = receive_all(&mut b, &acked).await;
    let mut unique: Vec<&String> = seen.iter().collect();
    unique.dedup();
    let mut in_order = unique.clone();
    in_order.sort();
    assert_eq!(
        unique, in_order,
        "bob sees alice's stream in order (repeats only as redelivery)"
    );

    // kill -9 bob's gateway mid-stream; bob reconnects (nginx sends him to the survivor).
    let mut acked = stream(&mut a, "bob", "g", 10).await;
    cluster.run(&["kill", "ws-gateway-2"]);
    acked.extend(stream(&mut a, "bob", "h", 10).await);
    drop(b);
    let mut b = app.connect(&bob, "text", false).await;
    receive_all(&mut b, &acked).await;
    cluster.run(&["start", "ws-gateway-2"]);
    acked = stream(&mut a, "bob", "i", 5).await;
    receive_all(&mut b, &acked).await;

    // `down` returns once everything has stopped, so `up` straight after it starts again, on
    // the same ports and data, and delivers at once.
    drop((a, b, c));
    cluster.run(&["down"]);
    let app = cluster.start();
    let mut a = app.connect(&alice, "text", true).await;
    let mut b = app.connect(&bob, "text", true).await;
    delivered_at_once(&mut a, &mut b, "again", "back up").await;
    delivered_at_once(&mut b, &mut a, "again-back", "and back").await;

    // Every service stops on SIGTERM within its allowance even when the broker, the store and
    // Redis went away first; `down` says "killing" of any it had to SIGKILL.
    drop((a, b));
    let deps = cluster.script.with_file_name("deps");
    let out = Command::new(&deps)
        .args(["stop", bus, "mongo", "redis"])
        .env("SAMVAD_CLUSTER_DIR", cluster.dir.path())
        .env("SAMVAD_CLUSTER_PORT", cluster.port.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = cluster.command(&["down"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        !said.contains("killing"),
        "a service ignored SIGTERM: {said}"
    );
}
