//! rest-gateway: messages over HTTP. `POST /v1.0/messages` — a batch of encoded messages,
//! checked and made durable exactly as the WebSocket gateway does, answered with their acks;
//! and the history routes, `GET /v1.0/conversations` and
//! `GET /v1.0/conversations/{conv}/messages`.

mod history;

use axum::extract::{FromRef, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use samvad_ingress::{Ingress, MAX_BATCH};
use samvad_kit::{ApiError, Context, ServiceDef, User};
use samvad_protocol::{Encoding, MessageType};
use serde::Deserialize;
use serde_json::{Value, json};

pub const SERVICE: ServiceDef = ServiceDef {
    name: "rest-gateway",
    start: |ctx| Box::pin(async move { Ok(routes(ctx)) }),
};

#[derive(Clone, FromRef)]
struct Rest {
    ctx: Context,
    ingress: Ingress,
}

fn routes(ctx: &Context) -> Router {
    Router::new()
        .route("/v1.0/messages", post(send))
        .route("/v1.0/conversations", get(history::conversations))
        .route(
            "/v1.0/conversations/{conv}/messages",
            get(history::messages),
        )
        .with_state(Rest {
            ctx: ctx.clone(),
            ingress: Ingress::new(ctx, "rest"),
        })
}

#[derive(Deserialize)]
struct Params {
    format: Option<String>,
    ack: Option<String>,
}

async fn send(
    State(ingress): State<Ingress>,
    Query(params): Query<Params>,
    User { name: user, device }: User,
    Json(frames): Json<Vec<String>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if frames.is_empty() || frames.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "send 1 to {MAX_BATCH} messages per request"
        )));
    }
    let binary = params.format.as_deref() == Some("binary");
    let limits = ingress.limits();
    let decoded: Vec<_> = if binary {
        let base64 = frames.iter().enumerate().map(|(i, frame)| {
            let bytes = STANDARD
                .decode(frame)
                .map_err(|e| ApiError::bad_request(format!("message {i}: not base64: {e}")))?;
            Ok(samvad_protocol::decode_binary(&bytes, limits))
        });
        base64.collect::<Result<_, ApiError>>()?
    } else {
        let text = |frame: &String| samvad_protocol::decode_text(frame, limits);
        frames.iter().map(text).collect()
    };
    let accepted = ingress.send_batch(&user, &device, decoded).await?;
    if params.ack.as_deref() != Some("true") {
        return Ok((StatusCode::CREATED, Json(json!({}))));
    }
    let acks: Vec<String> = accepted
        .iter()
        .filter(|m| m.kind != MessageType::ClientAck)
        .map(|m| {
            let ack = m.server_ack();
            if binary {
                STANDARD.encode(samvad_protocol::encode_binary(&ack))
            } else {
                samvad_protocol::encode_text(&ack, Encoding::V2_1)
            }
        })
        .collect();
    Ok((StatusCode::CREATED, Json(json!({ "acks": acks }))))
}
