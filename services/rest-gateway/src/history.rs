//! History (PROTOCOL §7): a user's conversations, and pages of one conversation's messages,
//! encoded as the WebSocket would send them.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use samvad_http::{ApiError, ErrorBody, User};
use samvad_protocol::Encoding;
use samvad_store::{Conv, HISTORY_PAGE, HISTORY_PAGE_MAX, Page, TimelineStore};
use serde::Deserialize;
use serde_json::{Value, json};

/// One's conversations
///
/// Every conversation the caller takes part in, most recently active first, with its last
/// seq, the caller's read position and how many messages from others are unread.
#[utoipa::path(get, path = "/v1.0/conversations", operation_id = "listConversations", tag = "history",
    security(("bearer" = []), ("user" = [], "accesskey" = [])),
    responses(
        (status = 200, description = "The caller's conversations", body = Object, example = json!([
            {"conv": "bob", "type": "chat", "lastSeq": 42, "lastAt": 1_765_000_000_000_u64,
             "readSeq": 40, "unread": 2}])),
        (status = 401, description = "Credentials refused", body = ErrorBody)))]
pub(crate) async fn conversations(
    State(timeline): State<Arc<dyn TimelineStore>>,
    User { name, .. }: User,
) -> Result<Json<Value>, ApiError> {
    let states = timeline.conversations(&name).await?;
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageParams {
    /// The page that ends just before this seq.
    before: Option<u64>,
    /// The page that starts just after this seq (not with `before`).
    after: Option<u64>,
    /// Messages on the page: 1 to 200, 50 if not given.
    limit: Option<usize>,
    /// `text` (v2.1 JSON strings; the default) or `binary` (base64 of v3 bytes).
    format: Option<String>,
}

/// A page of history
///
/// The latest page of a conversation, or the one before or after a seq, oldest first, each
/// message encoded as the WebSocket would send it, with `meta.conv` and `meta.seq`. A group
/// member sees nothing from before they joined.
#[utoipa::path(get, path = "/v1.0/conversations/{conv}/messages", operation_id = "getHistory", tag = "history",
    params(("conv" = String, Path, description = "A username (a chat) or a `groupId`"), PageParams),
    security(("bearer" = []), ("user" = [], "accesskey" = [])),
    responses(
        (status = 200, description = "The page, and whether there is more beyond it", body = Object,
            example = json!({"messages": ["…"], "more": true})),
        (status = 400, description = "A parameter is refused", body = ErrorBody),
        (status = 401, description = "Credentials refused", body = ErrorBody),
        (status = 404, description = "The caller takes no part in that conversation", body = ErrorBody)))]
pub(crate) async fn messages(
    State(timeline): State<Arc<dyn TimelineStore>>,
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
    let (messages, more) = samvad_store::history(&*timeline, &name, &conv, page, limit)
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
