//! A server ack is a promise: `kill -9` of the real binary after acks loses none of them, and a
//! write that fails (here: past the file-size limit, as a full disk would) fails only itself.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use samvad_protocol::MessageType;
use serde_json::Value;

use crate::support::{Client, Seen, TestApp, User, chat, text_of};

pub(crate) struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Starts the `samvad` binary on a free port and waits for its `listening` log line. Its
    /// log goes to `samvad.log` in its data directory, as an operator's `samvad >> samvad.log
    /// 2>&1` would: a full disk fails the log's writes too.
    fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    pub(crate) fn start_with(data_dir: &Path, extra: &[(&str, &str)]) -> Self {
        let path = data_dir.join("samvad.log");
        std::fs::create_dir_all(data_dir).unwrap();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let start = log.metadata().unwrap().len() as usize;
        let child = Command::new(env!("CARGO_BIN_EXE_samvad"))
            .envs(extra.iter().copied())
            .env("SAMVAD_LISTEN", "127.0.0.1:0")
            .env("SAMVAD_AUTH_PROVIDER", "dev")
            .env("SAMVAD_DATA_DIR", data_dir)
            .env("SAMVAD_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let listening = || {
            let text = std::fs::read(&path).unwrap_or_default();
            String::from_utf8_lossy(text.get(start..).unwrap_or_default())
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find(|v| v["fields"]["message"] == "listening")
                .and_then(|v| v["fields"]["addr"].as_str()?.parse().ok())
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Some(addr) = listening() {
                break addr;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Self { child, addr }
    }

    /// Clients of this server.
    pub(crate) fn app(&self) -> TestApp {
        TestApp::at(self.addr)
    }

    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Sets the process's file-size limit (`prlimit --fsize`): every write past it fails.
    fn limit_file_size(&self, limit: &str) {
        let status = Command::new("prlimit")
            .args([
                "--pid",
                &self.child.id().to_string(),
                &format!("--fsize={limit}"),
            ])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub(crate) fn kill9(mut self) {
        self.signal("-9");
        self.child.wait().unwrap();
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
    let app = server.app();
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut a = app.connect(&alice, "text", true).await;

    // Stream messages and kill the server while acks are still arriving.
    const SENT: usize = 400;
    for i in 0..SENT {
        a.send(&chat(
            &format!("m-{i:04}"),
            "alice",
            "bob",
            &format!("#{i}"),
        ))
        .await;
    }
    let mut acked = Vec::new();
    while acked.len() < SENT / 2 {
        let ack = a.message().await;
        assert_eq!(ack.kind, MessageType::ServerAck);
        acked.push(ack.id);
    }
    server.kill9();

    let server = Server::start(dir.path());
    let mut b = server.app().connect(&bob, "text", false).await;
    let mut received = Vec::new();
    while let Some(Seen::Message(m)) = b.try_next(Duration::from_secs(2)).await {
        received.push(m.id);
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
    let app = server.app();
    let mut alice = app.connect(&app.user("alice").await, "text", true).await;
    let mut bob = app.connect(&app.user("bob").await, "text", false).await;
    let readyz = format!("http://{}/readyz", server.addr);
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 200);

    server.signal("-TERM");
    let signalled = std::time::Instant::now();
    let mut status = 200;
    // Within the drain (2 s): on a busy machine the signal can take a while to be handled.
    for _ in 0..100 {
        status = reqwest::get(&readyz).await.unwrap().status().as_u16();
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 503, "not ready once the signal arrives");

    // While draining, the sockets it has still carry a conversation, acks and all.
    alice
        .send(&chat("while-draining", "alice", "bob", "still here"))
        .await;
    assert_eq!(alice.message().await.kind, MessageType::ServerAck);
    assert_eq!(bob.message().await.id, "while-draining");

    // Then each socket is closed with 1001, not before the drain period is over.
    for socket in [&mut alice, &mut bob] {
        let close = loop {
            match socket.try_next(Duration::from_secs(10)).await {
                Some(Seen::Closed(code)) => break code,
                Some(Seen::Message(_)) => continue,
                other => {
                    panic!("expected a close frame within the drain and the spread, saw {other:?}")
                }
            }
        };
        assert_eq!(close.map(u16::from), Some(1001));
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

/// Sends `ids` (text `"#"` + id) to bob, each answered by an ack or an error frame, and returns
/// the ids acked and refused.
async fn send_each(alice: &mut Client, ids: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    for id in ids {
        alice
            .send(&chat(id, "alice", "bob", &format!("#{id}")))
            .await;
        match alice.next().await {
            Seen::Message(m) if m.kind == MessageType::ServerAck => {
                assert_eq!(&m.id, id);
                acked.push(m.id);
            }
            Seen::Error(e) => {
                assert_eq!(e["id"], id.as_str(), "{e}");
                refused.push(id.clone());
            }
            other => panic!("expected an ack or an error for {id}, saw {other:?}"),
        }
    }
    (acked, refused)
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:03}")).collect()
}

/// The next `n` messages a device is sent, as (id, seq), and any more that follow at once.
async fn feed_of(device: &mut Client, n: usize) -> Vec<(String, u64)> {
    let mut seen = Vec::new();
    let pair = |m: samvad_protocol::Message| {
        assert_eq!(text_of(&m), format!("#{}", m.id));
        (m.id, m.meta["seq"].parse().unwrap())
    };
    while seen.len() < n {
        seen.push(pair(device.message().await));
    }
    while let Some(Seen::Message(m)) = device.try_next(Duration::from_millis(500)).await {
        seen.push(pair(m));
    }
    seen
}

#[tokio::test]
async fn a_failed_write_fails_only_itself_and_the_rest_is_kept_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let app = server.app();
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut a = app.connect(&alice, "text", true).await;
    let mut b = app.connect(&bob, "text", false).await;

    let (before, refused) = send_each(&mut a, &ids("before", 50)).await;
    assert!(refused.is_empty(), "refused with no fault: {refused:?}");

    // Every write fails for a while: each message gets an error, none an ack.
    server.limit_file_size("1:unlimited");
    let during = ids("during", 20);
    let (acked, refused) = send_each(&mut a, &during).await;
    assert!(
        acked.is_empty(),
        "acked while no write could succeed: {acked:?}"
    );
    assert_eq!(refused, during);

    // The cause gone, the refused messages sent again and new ones are all stored.
    server.limit_file_size("unlimited");
    let again = during
        .iter()
        .cloned()
        .chain(ids("after", 50))
        .collect::<Vec<_>>();
    let (after, refused) = send_each(&mut a, &again).await;
    assert!(
        refused.is_empty(),
        "refused once writes work again: {refused:?}"
    );
    let acked: Vec<String> = before.into_iter().chain(after).collect();

    // Bob's device gets every acked message once, in order, at seqs 1, 2, 3, ...: no position
    // skipped or taken twice by the failed writes. So it does after a kill -9.
    let want: Vec<(String, u64)> = acked.iter().cloned().zip(1..).collect();
    assert_eq!(feed_of(&mut b, want.len()).await, want, "live");
    drop((a, b));
    server.kill9();
    let server = Server::start(dir.path());
    let app = server.app();
    let bob = app.user("bob").await;
    let mut b = app.connect(&bob, "text", false).await;
    assert_eq!(feed_of(&mut b, want.len()).await, want, "after a restart");
}

/// What a new connection of `device` is sent when it expects `n`; closed after.
async fn owed(app: &TestApp, device: &User, n: usize) -> Vec<(String, u64)> {
    let mut c = app.connect(device, "text", false).await;
    let seen = feed_of(&mut c, n).await;
    c.close().await;
    seen
}

/// Waits until `device`'s acks are stored, seen by a new connection of it being owed `want`.
async fn acks_stored(app: &TestApp, device: &User, want: &[(String, u64)]) {
    for _ in 0..20 {
        if owed(app, device, want.len()).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{}'s acks were never stored", device.name);
}

#[tokio::test]
async fn kill_9_between_acks_and_reconnects_keeps_each_devices_duty() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let app = server.app();
    let alice = app.user("alice").await;
    let phone = app.device("bob", "phone").await;
    let laptop = app.device("bob", "laptop").await;
    let mut a = app.connect(&alice, "text", true).await;

    // The phone online, the laptop not. The phone acks a third cumulatively and then, by the
    // id of the twentieth, up to two thirds; then the server is killed.
    let mut p = app.connect(&phone, "text", false).await;
    let (sent, refused) = send_each(&mut a, &ids("m", 30)).await;
    assert!(refused.is_empty(), "{refused:?}");
    let want: Vec<(String, u64)> = sent.into_iter().zip(1..).collect();
    assert_eq!(feed_of(&mut p, 30).await, want, "the phone, live");
    p.ack_upto("chat:alice", 10).await;
    p.client_ack(&chat(&want[19].0, "alice", "bob", "")).await;
    acks_stored(&app, &phone, &want[20..]).await;
    drop((a, p));
    server.kill9();

    // The laptop, which acked nothing, is owed all of it; the phone only the rest.
    let server = Server::start(dir.path());
    let app = server.app();
    let mut l = app.connect(&laptop, "text", false).await;
    assert_eq!(feed_of(&mut l, 30).await, want, "the laptop");
    let mut p = app.connect(&phone, "text", false).await;
    assert_eq!(feed_of(&mut p, 10).await, want[20..], "the phone");

    // Both online: a new message reaches both, next in sequence. The laptop acks everything,
    // the phone nothing; killed again, the phone is still owed its share and the laptop nothing.
    let mut a = app.connect(&alice, "text", true).await;
    send_each(&mut a, &ids("n", 1)).await;
    let next = vec![("n-000".to_owned(), 31)];
    assert_eq!(feed_of(&mut l, 1).await, next, "the laptop, live");
    assert_eq!(feed_of(&mut p, 1).await, next, "the phone, live");
    l.ack_upto("chat:alice", 31).await;
    acks_stored(&app, &laptop, &[]).await;
    drop((a, l, p));
    server.kill9();
    let server = Server::start(dir.path());
    let app = server.app();
    let mut rest = want[20..].to_vec();
    rest.extend(next);
    assert_eq!(owed(&app, &phone, 11).await, rest);
    // What the laptop is owed comes before anything new: a new message is all it gets.
    let mut l = app.connect(&laptop, "text", false).await;
    let mut a = app.connect(&alice, "text", true).await;
    send_each(&mut a, &ids("z", 1)).await;
    assert_eq!(feed_of(&mut l, 1).await, [("z-000".to_owned(), 32)]);
}
