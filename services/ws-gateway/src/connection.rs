//! One WebSocket connection, from open to close.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as Frame, WebSocket, close_code};
use futures_util::SinkExt;
use samvad_bus::{ConnectionEvent, Record, Topic};
use samvad_ingress::{Rejection, TokenBucket};
use samvad_protocol::MessageType;
use serde_json::json;

use crate::{Format, Gateway, Item, Outbound, Registration, encode};

/// A connection that sends nothing (clients ping every 30 s) for this long is closed.
const IDLE: Duration = Duration::from_secs(120);
/// How long a new connection waits for its replay before giving up.
const REPLAY_WAIT: Duration = Duration::from_secs(30);
/// Live messages held for a connection while its replay is still coming.
const HOLD_MAX: usize = 10_000;
/// How long a closing connection waits for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Refusals for sending too fast after which the connection is closed.
const FLOOD_CLOSE: u32 = 100;

struct Conn {
    gateway: Gateway,
    socket: WebSocket,
    user: String,
    format: Format,
    ack: bool,
    /// Until delivery's replay is complete, live messages wait here.
    replaying: bool,
    held: Vec<Arc<Item>>,
    /// Highest inbox sequence written out; replays and live copies at or below it are dupes.
    sent_seq: u64,
    bucket: TokenBucket,
    refusals: u32,
}

/// Why the connection ended, for the close frame.
enum End {
    ClientClosed,
    Close(u16, &'static str),
}

pub(crate) async fn run(
    gateway: Gateway,
    mut registration: Registration,
    socket: WebSocket,
    format: Format,
    ack: bool,
) {
    let (id, user, slow) = (
        registration.id,
        registration.user.clone(),
        registration.slow.clone(),
    );
    let mut conn = Conn {
        gateway: gateway.clone(),
        socket,
        user: user.clone(),
        format,
        ack,
        replaying: true,
        held: Vec::new(),
        sent_seq: 0,
        bucket: TokenBucket::new(
            gateway.ctx.settings.rate_limit,
            gateway.ctx.settings.rate_burst,
        ),
        refusals: 0,
    };
    gateway.ctx.metrics.connections.inc();
    // The rarely run steps are boxed: an idle connection's task then holds only what waiting
    // needs, not room for their state machines (with the shared Gateway: 4.4 KB → 1.5 KB).
    let end = match Box::pin(announce(&gateway, &user, id, true)).await {
        Ok(()) => conn.serve(&mut registration.queue, &slow).await,
        Err(e) => {
            tracing::warn!(user = %user, error = %e, "cannot register connection");
            End::Close(close_code::AGAIN, "server busy; reconnect")
        }
    };
    drop(registration);
    gateway.ctx.metrics.connections.dec();
    if let Err(e) = Box::pin(announce(&gateway, &user, id, false)).await {
        tracing::warn!(user = %user, error = %e, "cannot record disconnect");
    }
    if let End::ClientClosed = end {
        // Sends the close reply the WebSocket library queued, completing the handshake.
        let _ = tokio::time::timeout(CLOSE_GRACE, conn.socket.flush()).await;
    }
    if let End::Close(code, reason) = end {
        let frame = Frame::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        // A client that reads nothing cannot take the close frame either.
        if let Ok(Ok(())) = tokio::time::timeout(CLOSE_GRACE, conn.socket.send(frame)).await {
            // Read on until the client answers the close, so that frames it had in flight do
            // not make the kernel reset the connection before it sees why it was closed.
            let drain = async { while let Some(Ok(_)) = conn.socket.recv().await {} };
            let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
        }
    }
}

/// Records the connection in presence, then tells delivery (which replays on connect).
async fn announce(
    gateway: &Gateway,
    user: &str,
    connection: u64,
    connected: bool,
) -> anyhow::Result<()> {
    let ctx = &gateway.ctx;
    let gateway_id = &ctx.settings.instance_id;
    if connected {
        ctx.presence.connected(user, gateway_id).await?;
    } else {
        ctx.presence.disconnected(user, gateway_id).await?;
    }
    let event = ConnectionEvent {
        user: user.to_owned(),
        gateway: gateway_id.clone(),
        connection,
        connected,
    };
    ctx.bus
        .publish(
            &Topic::Connections,
            vec![Record::json(user.to_owned(), &event)?],
        )
        .await?;
    Ok(())
}

impl Conn {
    async fn serve(
        &mut self,
        queue: &mut tokio::sync::mpsc::Receiver<Outbound>,
        slow: &tokio_util::sync::CancellationToken,
    ) -> End {
        let shutdown = self.gateway.ctx.shutdown();
        let closing = self.gateway.ctx.closing();
        // One timer, for whichever comes first: the end of the wait for the replay, then (once
        // the process drains) this connection's own moment to close within the spread.
        let deadline = tokio::time::sleep(REPLAY_WAIT);
        tokio::pin!(deadline);
        let mut draining = false;
        loop {
            let result = tokio::select! {
                _ = shutdown.cancelled() => return End::Close(close_code::AWAY, "server restarting"),
                _ = closing.cancelled(), if !draining => {
                    draining = true;
                    let spread = self.gateway.ctx.settings.close_spread;
                    let delay = spread.mul_f64(rand::random::<f64>());
                    deadline.as_mut().reset(tokio::time::Instant::now() + delay);
                    Ok(())
                }
                _ = &mut deadline, if self.replaying || draining => {
                    if draining {
                        return End::Close(close_code::AWAY, "server restarting");
                    }
                    // Delivery never answered the connect: rather than hold live messages
                    // forever, ask the client to come back (its pending messages are safe in
                    // the inbox).
                    return End::Close(close_code::AGAIN, "server busy; reconnect");
                }
                _ = slow.cancelled() => return self.too_slow(),
                frame = tokio::time::timeout(IDLE, self.socket.recv()) => match frame {
                    Err(_) => return End::Close(close_code::AWAY, "idle"),
                    Ok(None) | Ok(Some(Ok(Frame::Close(_)))) => return End::ClientClosed,
                    Ok(Some(Err(e))) => return read_error(&e),
                    Ok(Some(Ok(frame))) => Box::pin(self.received(frame)).await,
                },
                Some(event) = queue.recv() => self.outbound(event).await,
            };
            if let Err(end) = result {
                return end;
            }
        }
    }

    async fn outbound(&mut self, event: Outbound) -> Result<(), End> {
        match event {
            Outbound::Live(items) if self.replaying => {
                self.held.extend(items.iter().cloned());
                if self.held.len() > HOLD_MAX {
                    return Err(self.too_slow());
                }
                Ok(())
            }
            Outbound::Live(items) => self.write(&items).await,
            Outbound::Replay { items, done } => {
                self.write(&items).await?;
                if done {
                    self.replaying = false;
                    let held = std::mem::take(&mut self.held);
                    self.write(&held).await?;
                }
                Ok(())
            }
        }
    }

    /// Writes messages in order, skipping stored ones already written, with one flush.
    async fn write(&mut self, items: &[Arc<Item>]) -> Result<(), End> {
        let limit = self.gateway.ctx.settings.slow_client;
        match tokio::time::timeout(limit, self.write_unbounded(items)).await {
            Ok(result) => result,
            Err(_) => Err(self.too_slow()),
        }
    }

    /// A client that falls behind — its queue or held messages overflow, or it has not taken a
    /// write for `SAMVAD_SLOW_CLIENT_SECS` — is let go, counted: it holds a task and buffers,
    /// and everything it is owed waits safely for its return.
    fn too_slow(&self) -> End {
        self.gateway.ctx.metrics.slow_closes.inc();
        End::Close(close_code::AGAIN, "too far behind; reconnect")
    }

    async fn write_unbounded(&mut self, items: &[Arc<Item>]) -> Result<(), End> {
        let mut wrote = false;
        for item in items {
            if let Some(seq) = item.seq {
                if seq <= self.sent_seq {
                    continue;
                }
                self.sent_seq = seq;
            }
            self.socket
                .feed(item.frame(self.format))
                .await
                .map_err(gone)?;
            wrote = true;
        }
        if wrote {
            self.socket.flush().await.map_err(gone)?;
        }
        Ok(())
    }

    async fn received(&mut self, frame: Frame) -> Result<(), End> {
        let limits = *self.gateway.ingress.limits();
        let decoded = match &frame {
            Frame::Text(text) if text.as_str() == "ping" => {
                return self.send(Frame::Text("pong".into())).await;
            }
            Frame::Text(text) => samvad_protocol::decode_text(text.as_str(), &limits),
            Frame::Binary(bytes) => samvad_protocol::decode_binary(bytes, &limits),
            Frame::Ping(_) | Frame::Pong(_) | Frame::Close(_) => return Ok(()),
        };
        if !self.bucket.take() {
            self.gateway.ingress.count_refusal("rate_limit");
            self.refusals += 1;
            if self.refusals >= FLOOD_CLOSE {
                return Err(End::Close(close_code::POLICY, "sending too fast"));
            }
            return self
                .refuse(
                    None,
                    "rate limit exceeded: message dropped; slow down and send it again",
                )
                .await;
        }
        let message = match decoded {
            Ok(m) => m,
            Err(e) => {
                let rejection = Rejection::Decode(e);
                self.gateway.ingress.count_refusal(rejection.reason());
                return self.rejected(None, rejection).await;
            }
        };
        let id = message.id.clone();
        let accepted = match self.gateway.ingress.accept(&self.user, message).await {
            Ok(m) => m,
            Err(e) => return self.rejected(Some(&id), e).await,
        };
        if let Err(e) = self
            .gateway
            .ingress
            .publish(std::slice::from_ref(&accepted))
            .await
        {
            tracing::warn!(user = %self.user, error = %e, "publish failed; message not acked");
            return self
                .refuse(
                    Some(&id),
                    "the server could not take the message; send it again",
                )
                .await;
        }
        if self.ack && accepted.kind != MessageType::ClientAck {
            let ack = accepted.server_ack();
            return self.send(encode(&ack, self.format)).await;
        }
        Ok(())
    }

    async fn rejected(&mut self, id: Option<&str>, rejection: Rejection) -> Result<(), End> {
        if rejection.is_too_large() {
            return Err(End::Close(close_code::SIZE, "message too large"));
        }
        self.refuse(id, &rejection.to_string()).await
    }

    /// The error frame (a Samvad extension): a text frame `{"error": ..., "id": ...}`.
    async fn refuse(&mut self, id: Option<&str>, error: &str) -> Result<(), End> {
        let mut body = json!({ "error": error });
        if let Some(id) = id {
            body["id"] = json!(id);
        }
        self.send(Frame::Text(body.to_string().into())).await
    }

    async fn send(&mut self, frame: Frame) -> Result<(), End> {
        let limit = self.gateway.ctx.settings.slow_client;
        match tokio::time::timeout(limit, self.socket.send(frame)).await {
            Ok(result) => result.map_err(gone),
            Err(_) => Err(self.too_slow()),
        }
    }
}

fn gone(_: axum::Error) -> End {
    End::ClientClosed
}

/// A read failed: a frame over the size limit gets close 1009, anything else ends quietly.
fn read_error(e: &axum::Error) -> End {
    let text = e.to_string();
    if text.contains("too long") || text.contains("Space limit") || text.contains("size") {
        End::Close(close_code::SIZE, "message too large")
    } else {
        End::ClientClosed
    }
}
