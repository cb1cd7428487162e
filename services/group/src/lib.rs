//! group: groups and their membership. The creator is the first admin; admins add and remove
//! members, anyone may leave, and when the last admin leaves the longest-standing member
//! becomes admin. Every change sends each affected member a NOTIFICATION system message.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use samvad_bus::{Record, Routed, Topic};
use samvad_kit::{ApiError, Context, ServiceDef, User};
use samvad_protocol::Channel;
use samvad_store::{Conv, Group, Member, Role, SYSTEM_DEVICE};
use serde::Deserialize;
use serde_json::{Value, json};

pub const SERVICE: ServiceDef = ServiceDef {
    name: "group",
    start: |ctx| Box::pin(async move { Ok(routes(ctx)) }),
};

const MAX_CREATE_MEMBERS: usize = 100;
const MAX_ADD_MEMBERS: usize = 50;
const MAX_NAME: usize = 200;
/// A group picture is a URL or an attachment id, not the picture itself.
const MAX_PROFILE_PIC: usize = 2048;

/// Refuses a group that would have more than the configured number of members.
fn check_size(ctx: &Context, members: usize) -> Result<(), ApiError> {
    let max = ctx.settings.max_group_members;
    if members > max {
        return Err(ApiError::bad_request(format!(
            "a group may have at most {max} members"
        )));
    }
    Ok(())
}

fn routes(ctx: &Context) -> Router {
    Router::new()
        .route("/v1.0/groups/", get(list).post(create))
        .route("/v1.0/groups/{id}", get(fetch))
        .route("/v1.0/groups/{id}/members", post(add).delete(remove))
        .with_state(ctx.clone())
}

async fn list(
    State(ctx): State<Context>,
    User { name: user, .. }: User,
) -> Result<Json<Vec<Group>>, ApiError> {
    Ok(Json(ctx.stores.groups.groups_of(&user).await?))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Create {
    name: String,
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    profile_pic: Option<String>,
}

async fn create(
    State(ctx): State<Context>,
    User { name: user, .. }: User,
    Json(req): Json<Create>,
) -> Result<Json<Value>, ApiError> {
    if req.name.trim().is_empty() || req.name.len() > MAX_NAME {
        return Err(ApiError::bad_request(format!(
            "group name must be 1 to {MAX_NAME} bytes"
        )));
    }
    if req
        .profile_pic
        .as_ref()
        .is_some_and(|p| p.len() > MAX_PROFILE_PIC)
    {
        return Err(ApiError::bad_request(format!(
            "profilePic must be at most {MAX_PROFILE_PIC} bytes: a URL or an attachment id"
        )));
    }
    let mut members: Vec<String> = Vec::new();
    for m in req.members.into_iter().filter(|m| *m != user) {
        if !members.contains(&m) {
            members.push(m);
        }
    }
    if members.len() > MAX_CREATE_MEMBERS {
        return Err(ApiError::bad_request(format!(
            "a new group may have at most {MAX_CREATE_MEMBERS} members"
        )));
    }
    check_size(&ctx, members.len() + 1)?;
    check_users_exist(&ctx, &members).await?;
    let group = Group {
        group_id: uuid::Uuid::now_v7().to_string(),
        name: req.name,
        members: std::iter::once(Member {
            username: user.clone(),
            role: Role::Admin,
        })
        .chain(members.iter().map(|m| Member {
            username: m.clone(),
            role: Role::User,
        }))
        .collect(),
        profile_pic: req.profile_pic,
    };
    ctx.stores.groups.create(&group).await?;
    let everyone: Vec<String> = group.members.iter().map(|m| m.username.clone()).collect();
    ctx.stores.timeline.join(&group.group_id, &everyone).await?;
    notify(
        &ctx,
        &group.group_id,
        &user,
        Change::Added(&everyone),
        &everyone,
    )
    .await?;
    Ok(Json(json!({ "groupId": group.group_id })))
}

/// 404 `{"status": false}` for a group that is absent or that the caller is not in (the
/// protocol's shape, with the `error` every refusal carries; not telling the two apart keeps
/// group ids from being probed).
fn not_found() -> (axum::http::StatusCode, Json<Value>) {
    (
        axum::http::StatusCode::NOT_FOUND,
        Json(json!({ "status": false, "error": "no such group of yours" })),
    )
}

async fn fetch(
    State(ctx): State<Context>,
    User { name: user, .. }: User,
    Path(id): Path<String>,
) -> Result<Result<Json<Group>, (axum::http::StatusCode, Json<Value>)>, ApiError> {
    Ok(match ctx.stores.groups.group(&id).await? {
        Some(group) if group.member(&user).is_some() => Ok(Json(group)),
        _ => Err(not_found()),
    })
}

/// The group, if `user` is in it.
async fn group_of_member(ctx: &Context, id: &str, user: &str) -> Result<Group, ApiError> {
    match ctx.stores.groups.group(id).await? {
        Some(group) if group.member(user).is_some() => Ok(group),
        _ => Err(ApiError::not_found(format!("unknown group `{id}`"))),
    }
}

#[derive(Deserialize)]
struct Add {
    members: Vec<String>,
}

async fn add(
    State(ctx): State<Context>,
    User { name: user, .. }: User,
    Path(id): Path<String>,
    Json(req): Json<Add>,
) -> Result<Json<Value>, ApiError> {
    if req.members.len() > MAX_ADD_MEMBERS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_ADD_MEMBERS} members may be added at once"
        )));
    }
    let group = group_of_member(&ctx, &id, &user).await?;
    if group.member(&user).map(|m| m.role) != Some(Role::Admin) {
        return Err(ApiError::forbidden("only a group admin may add members"));
    }
    let joining = req
        .members
        .iter()
        .filter(|m| group.member(m).is_none())
        .collect::<std::collections::HashSet<_>>()
        .len();
    check_size(&ctx, group.members.len() + joining)?;
    check_users_exist(&ctx, &req.members).await?;
    let added = ctx.stores.groups.add_members(&id, &req.members).await?;
    // Every requested member is in the group now; joining is idempotent, so a retry after a
    // crash between the two writes completes the join.
    ctx.stores.timeline.join(&id, &req.members).await?;
    if !added.is_empty() {
        let mut everyone: Vec<String> = group.members.iter().map(|m| m.username.clone()).collect();
        everyone.extend(added.iter().cloned());
        notify(&ctx, &id, &user, Change::Added(&added), &everyone).await?;
    }
    Ok(Json(json!({ "status": true })))
}

#[derive(Deserialize)]
struct Remove {
    member: String,
}

async fn remove(
    State(ctx): State<Context>,
    User { name: user, .. }: User,
    Path(id): Path<String>,
    Json(req): Json<Remove>,
) -> Result<Json<Value>, ApiError> {
    let group = group_of_member(&ctx, &id, &user).await?;
    let is_admin = group.member(&user).map(|m| m.role) == Some(Role::Admin);
    if req.member != user && !is_admin {
        return Err(ApiError::forbidden(
            "only a group admin may remove others; anyone may remove themself",
        ));
    }
    let mut everyone: Vec<String> = group.members.iter().map(|m| m.username.clone()).collect();
    if ctx
        .stores
        .groups
        .remove_member(&id, &req.member)
        .await?
        .is_none()
    {
        // Not a member: unless a removal was cut short between its two writes, and they still
        // take part in the timeline. Then this retry completes it.
        let conv = Conv::group(&id);
        if ctx
            .stores
            .timeline
            .conversation(&req.member, &conv)
            .await?
            .is_none()
        {
            return Err(ApiError::not_found(format!(
                "`{}` is not a member of this group",
                req.member
            )));
        }
        everyone.push(req.member.clone());
    }
    // The notice ends their part in the timeline where it is stored; they still receive it.
    notify(
        &ctx,
        &id,
        &user,
        Change::Removed(std::slice::from_ref(&req.member)),
        &everyone,
    )
    .await?;
    Ok(Json(json!({ "status": true })))
}

async fn check_users_exist(ctx: &Context, users: &[String]) -> Result<(), ApiError> {
    let found = ctx.stores.profiles.existing(users).await?;
    let unknown: Vec<&str> = users
        .iter()
        .filter(|u| !found.contains(u))
        .map(String::as_str)
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "unknown users: {}",
            unknown.join(", ")
        )))
    }
}

enum Change<'a> {
    Added(&'a [String]),
    Removed(&'a [String]),
}

/// Stores the system message for `change` in the group's conversation and tells `recipients`,
/// durably, before the request is answered.
async fn notify(
    ctx: &Context,
    group_id: &str,
    actor: &str,
    change: Change<'_>,
    recipients: &[String],
) -> Result<(), ApiError> {
    let (action, content, leaving) = match change {
        Change::Added(users) => ("add", json!({ "added": users }), Vec::new()),
        Change::Removed(users) => ("remove", json!({ "removed": users }), users.to_vec()),
    };
    let message = samvad_kit::notice(
        action,
        Channel::Group,
        actor,
        group_id,
        false,
        &content,
        &[
            ("chatId", group_id.to_owned()),
            ("chatid", group_id.to_owned()),
        ],
    );
    let routed = Routed {
        recipients: recipients.to_vec(),
        device: SYSTEM_DEVICE.to_owned(),
        message,
        leaving,
    };
    let records = vec![Record::event(Conv::group(group_id).key(), routed)];
    ctx.bus.publish(&Topic::Send, records).await?;
    Ok(())
}
