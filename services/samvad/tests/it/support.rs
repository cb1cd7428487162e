//! A real all-in-one server on port 0 and real clients for it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use samvad_protocol::{Channel, Encoding, Limits, Message, MessageType};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as Frame};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for something a user should see.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    node: Option<samvad_runtime::Node>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// Starts every service with the given settings on top of a fresh data directory.
    pub async fn spawn_with(extra: &[(&str, &str)]) -> Self {
        // `RUST_LOG=debug cargo test ...` shows the server's log beside a failing test.
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir().unwrap();
        let mut env: HashMap<String, String> = HashMap::from([
            ("SAMVAD_LISTEN".into(), "127.0.0.1:0".into()),
            ("SAMVAD_AUTH_PROVIDER".into(), "dev".into()),
            (
                "SAMVAD_DATA_DIR".into(),
                dir.path().to_string_lossy().into_owned(),
            ),
        ]);
        for (k, v) in extra {
            env.insert((*k).into(), (*v).into());
        }
        let settings = samvad_config::Config::parse_with_env(["samvad"], &env)
            .unwrap()
            .validate()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node = samvad_runtime::start(settings, samvad::SERVICES, listener)
            .await
            .unwrap();
        Self {
            addr: node.addr(),
            http: reqwest::Client::new(),
            node: Some(node),
            _dir: dir,
        }
    }

    /// Clients for a server that is already running elsewhere (the cluster behind nginx).
    pub fn at(addr: SocketAddr) -> Self {
        // reqwest needs a TLS provider even for plain HTTP (a node in-process installs it).
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            addr,
            http: reqwest::Client::new(),
            node: None,
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Logs `username` in and returns their access key.
    pub async fn login(&self, username: &str) -> String {
        self.login_device(username, "default").await
    }

    /// Logs `username` in on device `device` and returns the device's access key.
    pub async fn login_device(&self, username: &str, device: &str) -> String {
        let res = self
            .http
            .post(self.url("/v1.0/login"))
            .json(&json!({"username": username, "authToken": "dev", "deviceId": device, "notificationToken": format!("token-{username}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        body["accesskey"].as_str().unwrap().to_owned()
    }

    pub async fn user(&self, username: &str) -> User {
        User {
            name: username.into(),
            key: self.login(username).await,
        }
    }

    /// `username` logged in on device `device`.
    pub async fn device(&self, username: &str, device: &str) -> User {
        User {
            name: username.into(),
            key: self.login_device(username, device).await,
        }
    }

    pub async fn connect(&self, user: &User, format: &str, ack: bool) -> Client {
        self.try_connect(user, format, ack).await.unwrap()
    }

    /// A text connection that also receives what its user sent from other devices.
    pub async fn connect_synced(&self, user: &User) -> Client {
        self.open(user, "ack=false&format=text&sync=true")
            .await
            .unwrap()
    }

    /// A text connection that is also told when those who share a conversation come and go.
    pub async fn connect_presence(&self, user: &User) -> Client {
        self.open(user, "ack=false&format=text&presence=true")
            .await
            .unwrap()
    }

    /// Opens a WebSocket as `user`, or says why the server refused it.
    pub async fn try_connect(
        &self,
        user: &User,
        format: &str,
        ack: bool,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        self.open(user, &format!("ack={ack}&format={format}")).await
    }

    async fn open(
        &self,
        user: &User,
        query: &str,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let mut request = format!("ws://{}/v1.0/wss/?{query}", self.addr)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("user", user.name.parse().unwrap());
        request
            .headers_mut()
            .insert("accesskey", user.key.parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Client {
            ws,
            binary: query.contains("format=binary"),
            name: user.name.clone(),
        })
    }

    /// An authenticated HTTP request as `user`.
    pub fn as_user(
        &self,
        method: reqwest::Method,
        path: &str,
        user: &User,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .header("user", &user.name)
            .header("accesskey", &user.key)
    }

    /// The server's /metrics page.
    pub async fn metrics(&self) -> String {
        let res = self.http.get(self.url("/metrics")).send().await.unwrap();
        res.text().await.unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(node) = self.node.take() {
            node.stop();
            node.stopped().await.unwrap();
        }
    }
}

/// Sends a request and returns its status and JSON body.
pub async fn call(request: reqwest::RequestBuilder) -> (u16, Value) {
    let res = request.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[derive(Clone)]
pub struct User {
    pub name: String,
    pub key: String,
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    binary: bool,
    pub name: String,
}

/// A chat message from `from` to `to` in the canonical form.
pub fn chat(id: &str, from: &str, to: &str, text: &str) -> Message {
    Message {
        version: 2.1,
        id: id.into(),
        kind: MessageType::Message,
        channel: Channel::Individual,
        source: from.into(),
        destination: to.into(),
        content: json!({ "text": text }).to_string().into_bytes(),
        ..Message::default()
    }
}

pub fn group_chat(id: &str, from: &str, group: &str, text: &str) -> Message {
    Message {
        channel: Channel::Group,
        ..chat(id, from, group, text)
    }
}

pub fn text_of(m: &Message) -> String {
    let v: Value = serde_json::from_slice(&m.content).unwrap_or(Value::Null);
    v["text"].as_str().unwrap_or_default().to_owned()
}

/// What a client sees arrive.
#[derive(Debug)]
pub enum Seen {
    Message(Message),
    Error(Value),
    Pong,
    Closed(Option<CloseCode>),
}

impl Client {
    /// Sends `m` in this connection's format (v2.1 text or v3 binary).
    pub async fn send(&mut self, m: &Message) {
        let frame = if self.binary {
            Frame::Binary(samvad_protocol::encode_binary(m).into())
        } else {
            Frame::Text(samvad_protocol::encode_text(m, Encoding::V2_1).into())
        };
        self.ws.send(frame).await.unwrap();
    }

    pub async fn send_raw(&mut self, frame: Frame) {
        self.ws.send(frame).await.unwrap();
    }

    pub async fn next(&mut self) -> Seen {
        self.try_next(WAIT)
            .await
            .unwrap_or_else(|| panic!("{} saw nothing within {WAIT:?}", self.name))
    }

    pub async fn try_next(&mut self, wait: Duration) -> Option<Seen> {
        loop {
            let frame = match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => return Some(Seen::Closed(None)),
                Ok(Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::Protocol(_),
                ))) => {
                    return Some(Seen::Closed(None));
                }
                Ok(Some(Err(e))) => panic!("{}: websocket error {e}", self.name),
                Ok(Some(Ok(frame))) => frame,
            };
            let limits = Limits { max_bytes: 1 << 20 };
            return Some(match frame {
                Frame::Text(t) if t.as_str() == "pong" => Seen::Pong,
                Frame::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v.get("error").is_some() {
                        Seen::Error(v)
                    } else {
                        Seen::Message(samvad_protocol::decode_text(t.as_str(), &limits).unwrap())
                    }
                }
                Frame::Binary(b) => {
                    Seen::Message(samvad_protocol::decode_binary(&b, &limits).unwrap())
                }
                Frame::Close(c) => Seen::Closed(c.map(|c| c.code)),
                Frame::Ping(_) | Frame::Pong(_) | Frame::Frame(_) => continue,
            });
        }
    }

    pub async fn message(&mut self) -> Message {
        match self.next().await {
            Seen::Message(m) => m,
            other => panic!("{} expected a message, saw {other:?}", self.name),
        }
    }

    /// The next message that is not a server ack.
    pub async fn chat_message(&mut self) -> Message {
        loop {
            let m = self.message().await;
            if m.kind != MessageType::ServerAck {
                return m;
            }
        }
    }

    pub async fn error(&mut self) -> Value {
        match self.next().await {
            Seen::Error(e) => e,
            other => panic!("{} expected an error frame, saw {other:?}", self.name),
        }
    }

    /// Acknowledges a received message, as every client does.
    pub async fn client_ack(&mut self, m: &Message) {
        let ack = Message {
            version: 2.1,
            id: m.id.clone(),
            kind: MessageType::ClientAck,
            channel: Channel::Individual,
            destination: "server".into(),
            ..Message::default()
        };
        self.send(&ack).await;
    }

    /// Acknowledges everything in conversation `conv` up to `seq` (PROTOCOL §7).
    pub async fn ack_upto(&mut self, conv: &str, seq: u64) {
        let mut ack = Message {
            version: 2.1,
            id: format!("upto-{seq}"),
            kind: MessageType::ClientAck,
            channel: Channel::Individual,
            destination: "server".into(),
            ..Message::default()
        };
        ack.meta.insert("conv".into(), conv.into());
        ack.meta.insert("seq".into(), seq.to_string());
        self.send(&ack).await;
    }

    /// Asserts nothing more arrives for a short while.
    pub async fn quiet(&mut self) {
        if let Some(seen) = self.try_next(Duration::from_millis(300)).await {
            panic!("{} expected nothing, saw {seen:?}", self.name);
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Let the server see the close before the test goes on.
        while let Ok(Some(_)) = tokio::time::timeout(WAIT, self.ws.next()).await {}
    }
}
