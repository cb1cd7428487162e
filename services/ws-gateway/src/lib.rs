//! ws-gateway: holds the WebSocket connections. It authenticates the upgrade, answers `ping`,
//! decodes each frame in the connection's format, acks a message only once it is durable, and
//! feeds each connection its device's conversations: what the device is owed, read from the
//! timeline, then what delivery hands it live, in seq order per conversation.
//!
//! A connection acts as its access key's device (PROTOCOL §7): it is sent what that device has
//! not acked, and its `CLIENT_ACK`s end that device's duty only. A connection that cannot keep
//! up (its bounded queue is full) is closed rather than allowed to grow memory; what it missed
//! is read from the timeline when it returns.

mod grpc;
mod mqtt;
mod presence;
mod session;
mod signal;
mod websocket;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use anyhow::Context as _;
use axum::Router;
use axum::extract::ws::{Message as Frame, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use samvad_auth::Access;
use samvad_bus::{GatewayEvent, Outgoing, Topic};
use samvad_http::{ApiError, ErrorBody};
use samvad_ingress::Ingress;
use samvad_protocol::{Encoding, Message};
use samvad_runtime::{Context, Metrics, ServiceDef};
use samvad_store::Conv;
use serde::Deserialize;
use tokio::sync::mpsc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::session::Wants;
use crate::signal::{Reason, Signal};
use crate::websocket::WebSocketDoor;

pub const SERVICE: ServiceDef = ServiceDef {
    name: "ws-gateway",
    start: |ctx| Box::pin(start(ctx)),
    api: Some(|| api().into_openapi()),
};

/// Events queued for one connection before it counts as too slow.
const QUEUE: usize = 512;

/// How a connection's frames are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// v1/v2 JSON text in, v2.1 text out.
    Text,
    /// v3 protobuf binary both ways.
    Binary,
}

/// A message on its way to one user's connections, encoded at most once per format however
/// many of them get it.
pub(crate) struct Item {
    /// Its conversation and seq there (`None` for an ephemeral message).
    pub(crate) place: Option<(Conv, u64)>,
    /// The device that sent it (empty for the server's own notices).
    pub(crate) device: String,
    pub(crate) message: Message,
    /// By `Format as usize`.
    frames: [OnceLock<Frame>; 2],
    /// As a gRPC `Connect` call sends it.
    event: OnceLock<grpc::Event>,
}

impl Item {
    /// `outgoing` as `viewer` sees it: a stored message names its conversation from the
    /// viewer's side and its seq (`meta.conv`, `meta.seq`).
    pub(crate) fn new(viewer: &str, outgoing: Outgoing) -> Arc<Self> {
        let Outgoing {
            seq,
            device,
            mut message,
        } = outgoing;
        let place = seq.map(|seq| (samvad_store::stamp(&mut message, viewer, seq), seq));
        Arc::new(Self {
            place,
            device,
            message,
            frames: Default::default(),
            event: OnceLock::new(),
        })
    }

    pub(crate) fn frame(&self, format: Format) -> Frame {
        self.frames[format as usize]
            .get_or_init(|| encode(&self.message, format))
            .clone()
    }

    pub(crate) fn event(&self) -> grpc::Event {
        self.event
            .get_or_init(|| grpc::Event::message(&self.message))
            .clone()
    }
}

/// `message` as a frame of the connection's format.
pub(crate) fn encode(message: &Message, format: Format) -> Frame {
    match format {
        Format::Text => Frame::Text(samvad_protocol::encode_text(message, Encoding::V2_1).into()),
        Format::Binary => Frame::Binary(samvad_protocol::encode_binary(message).into()),
    }
}

/// What the dispatcher hands a connection: live messages for its user, in order.
pub(crate) type Outbound = Arc<[Arc<Item>]>;

struct Conn {
    /// Tells a user's connections apart.
    id: u64,
    /// The device it acts as.
    device: String,
    queue: mpsc::Sender<Outbound>,
    /// Raised to end the connection: it fell behind, its device was unlinked, the process
    /// drains or stops.
    signal: Arc<Signal>,
}

/// The gateway's state, shared by its connections: one pointer per connection, not a copy.
#[derive(Clone)]
pub(crate) struct Gateway(Arc<GatewayState>);

/// The door a connection came in by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    WebSocket,
    Mqtt,
    Grpc,
}

pub(crate) struct GatewayState {
    pub(crate) ctx: Context,
    /// Each door's front door to the system (counted apart).
    ws: Ingress,
    mqtt: Ingress,
    pub(crate) grpc: Ingress,
    conns: Mutex<HashMap<String, Vec<Conn>>>,
    next_id: AtomicU64,
}

impl GatewayState {
    /// The front door of connections that came in `via`, which counts their messages apart.
    pub(crate) fn ingress(&self, via: Via) -> &Ingress {
        match via {
            Via::WebSocket => &self.ws,
            Via::Mqtt => &self.mqtt,
            Via::Grpc => &self.grpc,
        }
    }
}

impl std::ops::Deref for Gateway {
    type Target = GatewayState;

    fn deref(&self) -> &GatewayState {
        &self.0
    }
}

async fn start(ctx: &Context) -> Result<Router, samvad_runtime::Cause> {
    let gateway = Gateway(Arc::new(GatewayState {
        ctx: ctx.clone(),
        ws: Ingress::new(ctx, "ws"),
        mqtt: Ingress::new(ctx, "mqtt"),
        grpc: Ingress::new(ctx, "grpc"),
        conns: Mutex::default(),
        next_id: AtomicU64::new(0),
    }));
    let id = &ctx.settings.instance_id;
    let dispatcher = gateway.clone();
    ctx.consume(Topic::Gateway(id.clone()), id, move |batch| {
        dispatcher.dispatch(batch);
        async { Ok(()) }
    })
    .await?;
    ctx.spawn_detached(tell_the_stop(gateway.clone()));
    if let Some(addr) = ctx.settings.mqtt_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for MQTT on {addr}"))?;
        tracing::info!(%addr, "MQTT listening");
        let mqtt = gateway.clone();
        let serve = move |stream| mqtt::serve(mqtt.clone(), mqtt::Wire::Tcp(stream));
        ctx.spawn(
            "mqtt listener",
            accept(gateway.clone(), listener, "MQTT", serve),
        );
    }
    if let Some(addr) = ctx.settings.grpc_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for gRPC on {addr}"))?;
        tracing::info!(%addr, "gRPC listening");
        ctx.spawn("grpc server", grpc::serve(gateway.clone(), listener));
    }
    let (router, _) = api().split_for_parts();
    Ok(router.with_state(gateway))
}

/// Tells every connection when the process drains, then when it stops.
async fn tell_the_stop(gateway: Gateway) {
    let (closing, shutdown) = (gateway.ctx.closing(), gateway.ctx.shutdown());
    closing.cancelled().await;
    gateway.raise_all(Reason::Closing);
    shutdown.cancelled().await;
    gateway.raise_all(Reason::Stop);
}

/// The routes, each where its handler's `#[utoipa::path]` says.
fn api() -> OpenApiRouter<Gateway> {
    OpenApiRouter::new()
        .routes(routes!(upgrade))
        .routes(routes!(upgrade_unslashed))
        .routes(routes!(upgrade_mqtt))
}

/// Takes connections on `listener` for `door` until the node stops, and serves each in a task
/// of its own.
pub(crate) async fn accept<S, F>(
    gateway: Gateway,
    listener: tokio::net::TcpListener,
    door: &'static str,
    serve: S,
) -> Result<(), samvad_runtime::Cause>
where
    S: Fn(tokio::net::TcpStream) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let shutdown = gateway.ctx.shutdown();
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: pause rather than spin.
                    tracing::warn!(door, error = %e, "cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        gateway.ctx.spawn_detached(serve(stream));
    }
}

/// Connect over MQTT
///
/// MQTT 3.1.1 or 5 over a WebSocket (subprotocol `mqtt`): the client logs in with its
/// CONNECT (username and access key), as over TCP. See docs/TRANSPORTS.md.
#[utoipa::path(get, path = "/mqtt", operation_id = "connectMqtt", tag = "connections",
    responses(
        (status = 101, description = "Switched to the WebSocket; MQTT from here on"),
        (status = 403, description = "A browser page from an origin not allowed", body = ErrorBody)))]
async fn upgrade_mqtt(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Err(e) = check_origin(&headers, &gateway.ctx.settings.allowed_origins) {
        return e.into_response();
    }
    let ws = bounded(ws, gateway.ctx.settings.max_message_bytes + 1024).protocols(["mqtt"]);
    let ctx = gateway.ctx.clone();
    ws.on_upgrade(move |socket| async move {
        ctx.spawn_detached(mqtt::serve(
            gateway,
            mqtt::Wire::WebSocket(Box::new(socket)),
        ));
    })
}

impl Gateway {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a new connection of `user`, unless they hold as many as one user may.
    fn register(&self, access: Access, via: Via) -> Result<Registration, ApiError> {
        let who = &access.who;
        let max = self.ctx.settings.max_connections_per_user;
        let mut conns = self.lock();
        if conns.get(&who.user).map_or(0, Vec::len) >= max {
            self.ingress(via).count_refusal("too_many_connections");
            return Err(ApiError::too_many(format!(
                "at most {max} connections per user; close one first"
            )));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (queue, rx) = mpsc::channel(QUEUE);
        let signal = Arc::new(Signal::default());
        // Under the lock that `raise_all` takes: a stop that began before this look is raised
        // here, one that begins after it finds the connection listed.
        if self.ctx.closing().is_cancelled() {
            signal.raise(Reason::Closing);
        }
        if self.ctx.shutdown().is_cancelled() {
            signal.raise(Reason::Stop);
        }
        conns.entry(who.user.clone()).or_default().push(Conn {
            id,
            device: who.device.clone(),
            queue,
            signal: Arc::clone(&signal),
        });
        Ok(Registration {
            gateway: self.clone(),
            access,
            id,
            queue: rx,
            signal,
        })
    }

    /// Raises `reason` for every connection.
    fn raise_all(&self, reason: Reason) {
        for conn in self.lock().values().flatten() {
            conn.signal.raise(reason);
        }
    }

    /// How many connections `user` holds here.
    fn connections_of(&self, user: &str) -> usize {
        self.lock().get(user).map_or(0, Vec::len)
    }

    fn unregister(&self, user: &str, id: u64) {
        let mut conns = self.lock();
        if let Some(list) = conns.get_mut(user) {
            list.retain(|c| c.id != id);
            if list.is_empty() {
                conns.remove(user);
            }
        }
    }

    /// Hands delivery's events to the connections they are for, and closes those of unlinked
    /// devices. Never waits: a full queue closes that connection.
    fn dispatch(&self, batch: Vec<GatewayEvent>) {
        let conns = self.lock();
        for GatewayEvent {
            users,
            items,
            unlinked,
        } in batch
        {
            for conn in users
                .iter()
                .filter_map(|user| conns.get(user))
                .flatten()
                .filter(|conn| unlinked.contains(&conn.device))
            {
                conn.signal.raise(Reason::Unlinked);
            }
            // Made once per way of naming the conversations in it: the same for every member
            // of a group, one per side of a 1:1 chat. So encoded once per format.
            let convs: Vec<Conv> = items.iter().map(|i| Conv::of(&i.message)).collect();
            // Each way made, with the first user it was made for.
            let mut made: Vec<(&str, Outbound)> = Vec::new();
            for user in &users {
                // Stale presence: the connection has gone, and its device reads the timeline
                // when it is back.
                let Some(list) = conns.get(user) else {
                    continue;
                };
                let alike = |other: &str| convs.iter().all(|c| c.named_alike(other, user));
                let outbound = match made.iter().find(|(other, _)| alike(other)) {
                    Some((_, outbound)) => Arc::clone(outbound),
                    None => {
                        let outbound: Outbound =
                            items.iter().map(|i| Item::new(user, i.clone())).collect();
                        made.push((user, Arc::clone(&outbound)));
                        outbound
                    }
                };
                for conn in list {
                    offer(conn, Arc::clone(&outbound), &self.ctx.metrics);
                }
            }
        }
    }
}

/// A connection's place in the gateway, taken at the upgrade: the connection's queue and the
/// signal that tells it to end. Dropping it — the connection ended, or the upgrade never completed — gives
/// the place back.
pub(crate) struct Registration {
    gateway: Gateway,
    /// What its access key says: the connection acts as its device, and closes when the key
    /// expires.
    pub(crate) access: Access,
    pub(crate) id: u64,
    pub(crate) queue: mpsc::Receiver<Outbound>,
    pub(crate) signal: Arc<Signal>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.gateway.unregister(&self.access.who.user, self.id);
        let left = i64::try_from(self.queue.len()).unwrap_or(i64::MAX);
        self.gateway.ctx.metrics.queued.dec_by(left);
    }
}

/// Queues `event` for `conn`, counted as queued until the connection takes it (or ends).
fn offer(conn: &Conn, event: Outbound, metrics: &Metrics) {
    metrics.queued.inc();
    if conn.queue.try_send(event).is_err() {
        metrics.queued.dec();
        conn.signal.raise(Reason::Slow);
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Params {
    /// `true`: each stored message the client sends is answered with a `SERVER_ACK` once it
    /// is durable.
    ack: Option<String>,
    /// `text` (v1/v2 JSON in, v2.1 out; the default) or `binary` (v3 protobuf both ways).
    format: Option<String>,
    /// `true`: also the messages the user sent from other devices.
    sync: Option<String>,
    /// `true`: also presence notices of those who share a conversation.
    presence: Option<String>,
}

/// Connect
///
/// The chat connection: a WebSocket on which the device sends messages and acks and is sent
/// what it is owed, in order per conversation, until it acks it. Credentials as elsewhere, or,
/// from a browser, cookies or the subprotocol `accesskey.<key>`. See PROTOCOL §3–7.
#[utoipa::path(get, path = "/v1.0/wss/", operation_id = "connect", tag = "connections", params(Params),
    security(("bearer" = []), ("user" = [], "accesskey" = [])),
    responses(
        (status = 101, description = "Switched to the WebSocket"),
        (status = 401, description = "Credentials refused", body = ErrorBody),
        (status = 403, description = "A browser page from an origin not allowed", body = ErrorBody),
        (status = 429, description = "The user has as many connections as they may", body = ErrorBody)))]
async fn upgrade(
    State(gateway): State<Gateway>,
    Query(params): Query<Params>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Err(e) = check_origin(&headers, &gateway.ctx.settings.allowed_origins) {
        return e.into_response();
    }
    let creds = match samvad_auth::credentials(&headers) {
        Ok(creds) => creds,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let access = match gateway.ctx.gate.authenticate(&creds).await {
        Ok(access) => access,
        Err(e) => return e.into_response(),
    };
    let format = match params.format.as_deref() {
        Some("binary") => Format::Binary,
        _ => Format::Text,
    };
    let wants = Wants {
        sync: params.sync.as_deref() == Some("true"),
        presence: params.presence.as_deref() == Some("true"),
    };
    let mut ws = bounded(ws, gateway.ctx.settings.max_message_bytes);
    if let Some(sub) = creds.subprotocol {
        ws = ws.protocols([sub]);
    }
    let registration = match gateway.register(access, Via::WebSocket) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let ctx = gateway.ctx.clone();
    let ack = params.ack.as_deref() == Some("true");
    ws.on_upgrade(move |socket| async move {
        let door = WebSocketDoor {
            socket,
            format,
            ack,
            slow_client: gateway.ctx.settings.slow_client,
            idle: session::Idle::new(websocket::IDLE),
        };
        let serve = session::run(gateway, registration, door, Via::WebSocket, wants);
        ctx.spawn_detached(serve);
    })
}

/// Connect (without the trailing slash)
///
/// The same as `GET /v1.0/wss/`, refusals included.
#[utoipa::path(get, path = "/v1.0/wss", operation_id = "connectWithoutSlash", tag = "connections",
    params(Params), security(("bearer" = []), ("user" = [], "accesskey" = [])),
    responses((status = 101, description = "Switched to the WebSocket")))]
async fn upgrade_unslashed(
    gateway: State<Gateway>,
    params: Query<Params>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(gateway, params, headers, ws).await
}

/// A WebSocket's buffers, bounded: a small read buffer that grows only for a frame that needs
/// it, writes sent as they are made, at most 1 MiB waiting for a client that reads slowly, and
/// frames of at most `max` bytes.
fn bounded(ws: WebSocketUpgrade, max: usize) -> WebSocketUpgrade {
    ws.read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(max)
        .max_frame_size(max)
}

/// Browsers send `Origin` on WebSocket upgrades and do not apply CORS to them, so without this
/// check any web page could open a socket with the user's cookies. Non-browser clients send no
/// `Origin` and pass.
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    if origin_host == host || allowed.iter().any(|a| a == "*" || a == origin) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "origin {origin} may not open WebSockets here (see SAMVAD_ALLOWED_ORIGINS)"
        )))
    }
}
