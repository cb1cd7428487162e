//! The WebSocket door: Vartalap's protocol over `/v1.0/wss`, v1/v2 JSON text in and v2.1 out,
//! or v3 protobuf both ways (`format=binary`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as Frame, WebSocket, close_code};
use futures_util::SinkExt;
use serde_json::json;

use crate::session::{Door, End, Idle, Refused, Session, Why};
use crate::{Format, Item, encode};

/// A connection that sends nothing (clients ping every 30 s) for this long is closed.
pub(crate) const IDLE: Duration = Duration::from_secs(120);
/// How long a closing connection waits for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

pub(crate) struct WebSocketDoor {
    pub(crate) socket: WebSocket,
    pub(crate) format: Format,
    /// Send a `SERVER_ACK` for each message accepted (`ack=true`).
    pub(crate) ack: bool,
    /// How long a write may stay blocked.
    pub(crate) slow_client: Duration,
    /// Closes the connection after [`IDLE`].
    pub(crate) idle: Idle,
}

impl Door for WebSocketDoor {
    type Input = Frame;

    async fn read(&mut self) -> Result<Frame, End> {
        let frame = tokio::select! {
            frame = self.socket.recv() => frame,
            () = self.idle.expired() => return Err(End::Close(Why::Idle)),
        };
        self.idle.active();
        match frame {
            None | Some(Ok(Frame::Close(_))) => Err(End::ClientClosed),
            Some(Err(e)) => Err(read_error(&e)),
            Some(Ok(frame)) => Ok(frame),
        }
    }

    async fn handle(&mut self, session: &mut Session, frame: Frame) -> Result<(), End> {
        let limits = *session.gateway.ingress(crate::Via::WebSocket).limits();
        let decoded = match &frame {
            Frame::Text(text) if text.as_str() == "ping" => {
                self.send(session, Frame::Text("pong".into())).await?;
                session.pinged().await;
                return Ok(());
            }
            Frame::Text(text) => samvad_protocol::decode_text(text.as_str(), &limits),
            Frame::Binary(bytes) => samvad_protocol::decode_binary(bytes, &limits),
            Frame::Ping(_) | Frame::Pong(_) | Frame::Close(_) => return Ok(()),
        };
        match session.submit(decoded).await {
            Ok(accepted) => {
                if self.ack && accepted.kind != samvad_protocol::MessageType::ClientAck {
                    let ack = accepted.server_ack();
                    return self.send(session, encode(&ack, self.format)).await;
                }
                Ok(())
            }
            Err(Refused::Flood) => Err(End::Close(Why::Flood)),
            Err(Refused::TooLarge) => Err(End::Close(Why::TooLarge)),
            // The error frame (a Samvad extension): a text frame `{"error": ..., "id": ...}`.
            Err(Refused::Message { id, error, .. }) => {
                let mut body = json!({ "error": error });
                if let Some(id) = id {
                    body["id"] = json!(id);
                }
                self.send(session, Frame::Text(body.to_string().into()))
                    .await
            }
        }
    }

    /// Writes messages in order, with one flush.
    async fn write(&mut self, session: &mut Session, items: &[Arc<Item>]) -> Result<(), End> {
        if items.is_empty() {
            return Ok(());
        }
        let write = async {
            for item in items {
                session.written(item);
                self.socket
                    .feed(item.frame(self.format))
                    .await
                    .map_err(gone)?;
            }
            self.socket.flush().await.map_err(gone)
        };
        match tokio::time::timeout(self.slow_client, write).await {
            Ok(result) => result,
            Err(_) => Err(session.too_slow()),
        }
    }

    async fn close(mut self, end: End) {
        let why = match end {
            End::ClientClosed => {
                // Sends the close reply the WebSocket library queued, completing the handshake.
                let _ = tokio::time::timeout(CLOSE_GRACE, self.socket.flush()).await;
                return;
            }
            End::Close(why) => why,
        };
        let code = match why {
            Why::Restarting | Why::Idle => close_code::AWAY,
            Why::TooSlow | Why::Busy => close_code::AGAIN,
            Why::LoggedOut | Why::KeyExpired | Why::Flood => close_code::POLICY,
            Why::TooLarge => close_code::SIZE,
            Why::Malformed => close_code::PROTOCOL,
        };
        let frame = Frame::Close(Some(CloseFrame {
            code,
            reason: why.text().into(),
        }));
        // A client that reads nothing cannot take the close frame either.
        if let Ok(Ok(())) = tokio::time::timeout(CLOSE_GRACE, self.socket.send(frame)).await {
            // Read on until the client answers the close, so that frames it had in flight do
            // not make the kernel reset the connection before it sees why it was closed.
            let drain = async { while let Some(Ok(_)) = self.socket.recv().await {} };
            let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
        }
    }
}

impl WebSocketDoor {
    async fn send(&mut self, session: &Session, frame: Frame) -> Result<(), End> {
        match tokio::time::timeout(self.slow_client, self.socket.send(frame)).await {
            Ok(result) => result.map_err(gone),
            Err(_) => Err(session.too_slow()),
        }
    }
}

fn gone(_: axum::Error) -> End {
    End::ClientClosed
}

/// A read failed: a frame over the size limit gets close 1009, anything else ends quietly.
/// axum's error wraps the WebSocket library's, which says which it was.
fn read_error(e: &axum::Error) -> End {
    use std::error::Error as _;
    match e
        .source()
        .and_then(|s| s.downcast_ref::<tungstenite::Error>())
    {
        Some(tungstenite::Error::Capacity(_)) => End::Close(Why::TooLarge),
        _ => End::ClientClosed,
    }
}
