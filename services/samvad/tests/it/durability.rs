//! A server ack is a promise: `kill -9` of the real binary after acks loses none of them.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use samvad_protocol::{Encoding, Limits, MessageType};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{WAIT, chat};

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Starts the `samvad` binary on a free port and waits for its `listening` log line.
    fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    fn start_with(data_dir: &Path, extra: &[(&str, &str)]) -> Self {
        // reqwest needs a TLS provider even for plain HTTP, and this server is not in-process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut child = Command::new(env!("CARGO_BIN_EXE_samvad"))
            .envs(extra.iter().copied())
            .env("SAMVAD_LISTEN", "127.0.0.1:0")
            .env("SAMVAD_AUTH_PROVIDER", "dev")
            .env("SAMVAD_DATA_DIR", data_dir)
            .env("SAMVAD_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent
                    && let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["fields"]["message"] == "listening"
                {
                    let _ = tx.send(v["fields"]["addr"].as_str().unwrap_or_default().to_owned());
                    sent = true;
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server did not start listening")
            .parse()
            .unwrap();
        Self { child, addr }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn kill9(mut self) {
        self.signal("-9");
        self.child.wait().unwrap();
    }

    async fn login(&self, user: &str) -> String {
        let body: Value = reqwest::Client::new()
            .post(format!("http://{}/v1.0/login", self.addr))
            .json(&json!({"username": user, "authToken": "dev"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["accesskey"].as_str().unwrap().to_owned()
    }

    async fn connect(
        &self,
        user: &str,
        key: &str,
        ack: bool,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
    {
        let mut request = format!("ws://{}/v1.0/wss/?ack={ack}&format=text", self.addr)
            .into_client_request()
            .unwrap();
        request.headers_mut().insert("user", user.parse().unwrap());
        request
            .headers_mut()
            .insert("accesskey", key.parse().unwrap());
        tokio_tungstenite::connect_async(request).await.unwrap().0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn kill_9_after_acks_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let alice_key = server.login("alice").await;
    server.login("bob").await;
    let mut alice = server.connect("alice", &alice_key, true).await;

    // Stream messages and kill the server while acks are still arriving.
    const SENT: usize = 400;
    for i in 0..SENT {
        let m = chat(&format!("m-{i:04}"), "alice", "bob", &format!("#{i}"));
        alice
            .feed(Frame::Text(
                samvad_protocol::encode_text(&m, Encoding::V2_1).into(),
            ))
            .await
            .unwrap();
    }
    alice.flush().await.unwrap();
    let mut acked = Vec::new();
    let limits = Limits::DEFAULT;
    while acked.len() < SENT / 2 {
        let Some(Ok(Frame::Text(t))) = tokio::time::timeout(WAIT, alice.next()).await.unwrap()
        else {
            panic!("expected an ack");
        };
        let ack = samvad_protocol::decode_text(t.as_str(), &limits).unwrap();
        assert_eq!(ack.kind, MessageType::ServerAck);
        acked.push(ack.id);
    }
    server.kill9();

    let server = Server::start(dir.path());
    let bob_key = server.login("bob").await;
    let mut bob = server.connect("bob", &bob_key, false).await;
    let mut received = Vec::new();
    while let Ok(Some(Ok(Frame::Text(t)))) =
        tokio::time::timeout(Duration::from_secs(2), bob.next()).await
    {
        received.push(
            samvad_protocol::decode_text(t.as_str(), &limits)
                .unwrap()
                .id,
        );
    }
    let got: HashSet<&String> = received.iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !got.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    let mut in_order = received.clone();
    in_order.sort();
    assert_eq!(
        received, in_order,
        "bob sees alice's messages in the order she sent them"
    );
    eprintln!(
        "acked before kill: {}, delivered after restart: {}",
        acked.len(),
        received.len()
    );
}

#[tokio::test]
async fn sigterm_drains_then_closes_sockets_with_1001_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_with(
        dir.path(),
        &[
            ("SAMVAD_DRAIN_SECS", "2"),
            ("SAMVAD_CLOSE_SPREAD_SECS", "1"),
        ],
    );
    let alice_key = server.login("alice").await;
    let bob_key = server.login("bob").await;
    let mut alice = server.connect("alice", &alice_key, true).await;
    let mut bob = server.connect("bob", &bob_key, false).await;
    let limits = Limits::DEFAULT;
    let readyz = format!("http://{}/readyz", server.addr);
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 200);

    server.signal("-TERM");
    let signalled = std::time::Instant::now();
    let mut status = 200;
    for _ in 0..50 {
        status = reqwest::get(&readyz).await.unwrap().status().as_u16();
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 503, "not ready once the signal arrives");

    // While draining, the sockets it has still carry a conversation, acks and all.
    let m = chat("while-draining", "alice", "bob", "still here");
    let text = samvad_protocol::encode_text(&m, Encoding::V2_1);
    alice.send(Frame::Text(text.into())).await.unwrap();
    let Some(Ok(Frame::Text(ack))) = tokio::time::timeout(WAIT, alice.next()).await.unwrap() else {
        panic!("expected an ack");
    };
    assert_eq!(
        samvad_protocol::decode_text(ack.as_str(), &limits)
            .unwrap()
            .kind,
        MessageType::ServerAck
    );
    let Some(Ok(Frame::Text(got))) = tokio::time::timeout(WAIT, bob.next()).await.unwrap() else {
        panic!("expected the message");
    };
    assert_eq!(
        samvad_protocol::decode_text(got.as_str(), &limits)
            .unwrap()
            .id,
        "while-draining"
    );

    // Then each socket is closed with 1001, not before the drain period is over.
    for socket in [&mut alice, &mut bob] {
        let close = loop {
            match tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .expect("closed within the drain and the spread")
            {
                Some(Ok(Frame::Close(frame))) => break frame,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, saw {other:?}"),
            }
        };
        assert_eq!(u16::from(close.unwrap().code), 1001);
    }
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "closed after the drain period"
    );
    let mut exited = None;
    for _ in 0..100 {
        exited = server.child.try_wait().unwrap();
        if exited.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(exited.expect("the process exited").success());
}
