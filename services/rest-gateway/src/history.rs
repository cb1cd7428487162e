//! History (PROTOCOL §7): a user's conversations, and pages of one conversation's messages,
//! encoded as the WebSocket would send them.

use axum::Json;
use axum::extract::{Path, Query, State};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use samvad_kit::{ApiError, Context, User};
use samvad_protocol::Encoding;
use samvad_store::{Conv, HISTORY_PAGE, HISTORY_PAGE_MAX, Page};
use serde::Deserialize;
use serde_json::{Value, json};

/// `GET /v1.0/conversations`: every conversation the caller takes part in, most recently
/// active first.
pub(crate) async fn conversations(
    State(ctx): State<Context>,
    User { name, .. }: User,
) -> Result<Json<Value>, ApiError> {
    let states = ctx.stores.timeline.conversations(&name).await?;
    let list: Vec<Value> = states
        .iter()
        .map(|c| {
            json!({
                "conv": c.conv.name_for(&name),
                "type": match c.conv { Conv::Direct { .. } => "chat", Conv::Group(_) => "group" },
                "lastSeq": c.last_seq,
                "lastAt": c.last_at,
                "readSeq": c.read_seq,
                "unread": c.unread,
            })
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

#[derive(Deserialize)]
pub(crate) struct PageParams {
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<usize>,
    format: Option<String>,
}

/// `GET /v1.0/conversations/{conv}/messages`: the latest page, or the one before or after a
/// seq, oldest first; a group member sees nothing from before they joined.
pub(crate) async fn messages(
    State(ctx): State<Context>,
    User { name, .. }: User,
    Path(conv_name): Path<String>,
    Query(params): Query<PageParams>,
) -> Result<Json<Value>, ApiError> {
    let page = match (params.before, params.after) {
        (None, None) => Page::Latest,
        (Some(before), None) => Page::Before(before),
        (None, Some(after)) => Page::After(after),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give `before` or `after`, not both"));
        }
    };
    let limit = params.limit.unwrap_or(HISTORY_PAGE);
    if !(1..=HISTORY_PAGE_MAX).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {HISTORY_PAGE_MAX}"
        )));
    }
    let binary = match params.format.as_deref() {
        None | Some("text") => false,
        Some("binary") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format must be text or binary, not {other:?}"
            )));
        }
    };
    let not_found = || ApiError::not_found(format!("you take no part in {conv_name}"));
    let conv = Conv::parse_for(&name, &conv_name).ok_or_else(not_found)?;
    let (messages, more) = samvad_store::history(&*ctx.stores.timeline, &name, &conv, page, limit)
        .await?
        .ok_or_else(not_found)?;
    let messages: Vec<String> = messages
        .iter()
        .map(|message| {
            if binary {
                STANDARD.encode(samvad_protocol::encode_binary(message))
            } else {
                samvad_protocol::encode_text(message, Encoding::V2_1)
            }
        })
        .collect();
    Ok(Json(json!({ "messages": messages, "more": more })))
}
