//! rest-gateway: messages over HTTP. `POST /v1.0/messages` — a batch of encoded messages,
//! checked and made durable exactly as the WebSocket gateway does, answered with their acks;
//! and the history routes, `GET /v1.0/conversations` and
//! `GET /v1.0/conversations/{conv}/messages`.

mod history;

use std::sync::Arc;

use axum::extract::{FromRef, Query, State};
use axum::http::StatusCode;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use samvad_http::{ApiError, ErrorBody, Gate, User};
use samvad_ingress::{Ingress, MAX_BATCH};
use samvad_protocol::{Encoding, MessageType};
use samvad_runtime::{Context, ServiceDef};
use samvad_store::TimelineStore;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub const SERVICE: ServiceDef = ServiceDef {
    name: "rest-gateway",
    start: |ctx| Box::pin(async move { Ok(routes(ctx)) }),
    api: Some(|| api().into_openapi()),
};

/// What the message routes work with.
#[derive(Clone, FromRef)]
struct Rest {
    /// Where the history routes read.
    timeline: Arc<dyn TimelineStore>,
    gate: Gate,
    /// Where sent messages go in, as over the WebSocket.
    ingress: Ingress,
}

/// The routes, each where its handler's `#[utoipa::path]` says.
fn api() -> OpenApiRouter<Rest> {
    OpenApiRouter::new()
        .routes(routes!(send))
        .routes(routes!(history::conversations))
        .routes(routes!(history::messages))
}

fn routes(ctx: &Context) -> Router {
    let (router, _) = api().split_for_parts();
    router.with_state(Rest {
        timeline: ctx.stores.timeline.clone(),
        gate: ctx.gate.clone(),
        ingress: Ingress::new(ctx, "rest"),
    })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Params {
    /// `text` (v1, v2 or v2.1 JSON strings; the default) or `binary` (base64 of v3 bytes).
    format: Option<String>,
    /// `true`: answer with a `SERVER_ACK` for each message, encoded like the request.
    ack: Option<String>,
}

/// Send messages
///
/// A batch of encoded messages, checked and made durable exactly as over the WebSocket: the
/// answer comes once every message in it is durable. Client acks (`CLIENT_ACK`) may be sent
/// this way too. A batch is all or nothing: one refused message refuses the batch.
#[utoipa::path(post, path = "/v1.0/messages", operation_id = "sendMessages", tag = "messages", params(Params),
    request_body(content = Vec<String>, description = "1 to 100 encoded messages",
        example = json!([r#"{"_v":2.1,"id":"m1","head":{"type":"chat","to":"bob","from":"alice","chatid":"alice","contentType":"text","action":"message"},"body":{"text":"hi bob"}}"#])),
    security(("bearer" = []), ("user" = [], "accesskey" = [])),
    responses(
        (status = 201, description = "Every message is durable; `acks` only with `ack=true`",
            body = Object, example = json!({"acks": ["…"]})),
        (status = 400, description = "A message is malformed or refused (named by its index)", body = ErrorBody),
        (status = 401, description = "Credentials refused", body = ErrorBody),
        (status = 429, description = "The sender's send budget is spent", body = ErrorBody),
        (status = 503, description = "Not stored (a backend is unavailable); nothing was acked, send again", body = ErrorBody)))]
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
