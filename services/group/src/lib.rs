//! group: groups and their membership. The creator is the first admin; admins add and remove
//! members, anyone may leave, and when the last admin leaves the longest-standing member
//! becomes admin. Every change sends each affected member a NOTIFICATION system message.

use std::sync::Arc;

use axum::extract::{FromRef, Path, State};
use axum::{Json, Router};
use samvad_bus::{Bus, Record, Routed, Topic};
use samvad_http::{ApiError, ErrorBody, Gate, User};
use samvad_protocol::Channel;
use samvad_runtime::{Context, ServiceDef};
use samvad_store::{
    Conv, Group, GroupStore, Member, ProfileStore, Role, SYSTEM_DEVICE, TimelineStore,
};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub const SERVICE: ServiceDef = ServiceDef {
    name: "group",
    start: |ctx| Box::pin(async move { Ok(routes(ctx)) }),
    api: Some(|| api().into_openapi()),
};

const MAX_CREATE_MEMBERS: usize = 100;
const MAX_ADD_MEMBERS: usize = 50;
const MAX_NAME: usize = 200;
/// A group picture is a URL or an attachment id, not the picture itself.
const MAX_PROFILE_PIC: usize = 2048;

/// What the group routes work with.
#[derive(Clone, FromRef)]
struct Groups {
    groups: Arc<dyn GroupStore>,
    /// Whether users exist.
    profiles: Arc<dyn ProfileStore>,
    /// Who takes part in a group's conversation, from when.
    timeline: Arc<dyn TimelineStore>,
    /// Where membership notices go.
    bus: Arc<dyn Bus>,
    /// Most members a group may have.
    max_members: usize,
    gate: Gate,
}

/// The routes, each where its handler's `#[utoipa::path]` says.
fn api() -> OpenApiRouter<Groups> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(fetch))
        .routes(routes!(add, remove))
}

fn routes(ctx: &Context) -> Router {
    let (router, _) = api().split_for_parts();
    router.with_state(Groups {
        groups: ctx.stores.groups.clone(),
        profiles: ctx.stores.profiles.clone(),
        timeline: ctx.stores.timeline.clone(),
        bus: ctx.bus.clone(),
        max_members: ctx.settings.max_group_members,
        gate: ctx.gate.clone(),
    })
}

impl Groups {
    /// Refuses a group that would have more than the configured number of members.
    fn check_size(&self, members: usize) -> Result<(), ApiError> {
        let max = self.max_members;
        if members > max {
            return Err(ApiError::bad_request(format!(
                "a group may have at most {max} members"
            )));
        }
        Ok(())
    }

    /// The group, if `user` is in it.
    async fn of_member(&self, id: &str, user: &str) -> Result<Group, ApiError> {
        match self.groups.group(id).await? {
            Some(group) if group.member(user).is_some() => Ok(group),
            _ => Err(ApiError::not_found(format!("unknown group `{id}`"))),
        }
    }

    async fn check_users_exist(&self, users: &[String]) -> Result<(), ApiError> {
        let found = self.profiles.existing(users).await?;
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

    /// Stores the system message for `change` in the group's conversation and tells
    /// `recipients`, durably, before the request is answered.
    async fn notify(
        &self,
        group_id: &str,
        actor: &str,
        change: Change<'_>,
        recipients: &[String],
    ) -> Result<(), ApiError> {
        let (action, content, leaving) = match change {
            Change::Added(users) => ("add", json!({ "added": users }), Vec::new()),
            Change::Removed(users) => ("remove", json!({ "removed": users }), users.to_vec()),
        };
        let message = samvad_runtime::notice(
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
        self.bus.publish(&Topic::Send, records).await?;
        Ok(())
    }
}

/// One's groups
///
/// Every group the caller is in, with its members and their roles.
#[utoipa::path(get, path = "/v1.0/groups/", operation_id = "listGroups", tag = "groups",
    security(("bearer" = []), ("user" = [], "accesskey" = [])),
    responses(
        (status = 200, description = "The caller's groups", body = Object, example = json!([{
            "groupId": "2f0c…", "name": "Climbing", "profilePic": null,
            "members": [{"username": "alice", "role": "admin"}, {"username": "bob", "role": "user"}]}])),
        (status = 401, description = "Credentials refused", body = ErrorBody)))]
async fn list(
    State(groups): State<Groups>,
    User { name: user, .. }: User,
) -> Result<Json<Vec<Group>>, ApiError> {
    Ok(Json(groups.groups.groups_of(&user).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Create {
    /// 1 to 200 bytes.
    #[schema(example = "Climbing")]
    name: String,
    /// Usernames besides the creator's (at most 100; each must exist).
    #[serde(default)]
    #[schema(example = json!(["bob", "carol"]))]
    members: Vec<String>,
    /// A URL or an attachment's `fileId` (at most 2,048 bytes).
    #[serde(default)]
    profile_pic: Option<String>,
}

/// Create a group
///
/// The caller is its first admin. Every member is sent a `NOTIFICATION` of the `add`.
#[utoipa::path(post, path = "/v1.0/groups/", operation_id = "createGroup", tag = "groups", request_body = Create,
    security(("bearer" = []), ("user" = [], "accesskey" = [])),
    responses(
        (status = 200, description = "Created", body = Object, example = json!({"groupId": "2f0c…"})),
        (status = 400, description = "A field is refused, a member does not exist, or the group is too large", body = ErrorBody),
        (status = 401, description = "Credentials refused", body = ErrorBody)))]
async fn create(
    State(groups): State<Groups>,
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
    groups.check_size(members.len() + 1)?;
    groups.check_users_exist(&members).await?;
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
    groups.groups.create(&group).await?;
    let everyone: Vec<String> = group.members.iter().map(|m| m.username.clone()).collect();
    groups.timeline.join(&group.group_id, &everyone).await?;
    groups
        .notify(&group.group_id, &user, Change::Added(&everyone), &everyone)
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

/// One group
#[utoipa::path(get, path = "/v1.0/groups/{id}", operation_id = "getGroup", tag = "groups",
    params(("id" = String, Path, description = "The `groupId`")),
    security(("bearer" = []), ("user" = [], "accesskey" = [])),
    responses(
        (status = 200, description = "The group", body = Object, example = json!({
            "groupId": "2f0c…", "name": "Climbing", "profilePic": null,
            "members": [{"username": "alice", "role": "admin"}]})),
        (status = 401, description = "Credentials refused", body = ErrorBody),
        (status = 404, description = "No such group, or the caller is not in it (the two are not told apart)",
            body = Object, example = json!({"status": false, "error": "no such group of yours"}))))]
async fn fetch(
    State(groups): State<Groups>,
    User { name: user, .. }: User,
    Path(id): Path<String>,
) -> Result<Result<Json<Group>, (axum::http::StatusCode, Json<Value>)>, ApiError> {
    Ok(match groups.groups.group(&id).await? {
        Some(group) if group.member(&user).is_some() => Ok(Json(group)),
        _ => Err(not_found()),
    })
}

#[derive(Deserialize, ToSchema)]
struct Add {
    /// Usernames to add (at most 50; each must exist). Those already in are left as they are.
    #[schema(example = json!(["dave"]))]
    members: Vec<String>,
}

/// Add members
///
/// Admins only. Everyone in the group, the new members included, is sent a `NOTIFICATION`
/// of the `add`; the new members see what is sent from then on.
#[utoipa::path(post, path = "/v1.0/groups/{id}/members", operation_id = "addMembers", tag = "groups", request_body = Add,
    params(("id" = String, Path, description = "The `groupId`")),
    security(("bearer" = []), ("user" = [], "accesskey" = [])),
    responses(
        (status = 200, description = "They are members", body = Object, example = json!({"status": true})),
        (status = 400, description = "Too many, a user does not exist, or the group would be too large", body = ErrorBody),
        (status = 401, description = "Credentials refused", body = ErrorBody),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 404, description = "No such group of the caller's", body = ErrorBody)))]
async fn add(
    State(groups): State<Groups>,
    User { name: user, .. }: User,
    Path(id): Path<String>,
    Json(req): Json<Add>,
) -> Result<Json<Value>, ApiError> {
    if req.members.len() > MAX_ADD_MEMBERS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_ADD_MEMBERS} members may be added at once"
        )));
    }
    let group = groups.of_member(&id, &user).await?;
    if group.member(&user).map(|m| m.role) != Some(Role::Admin) {
        return Err(ApiError::forbidden("only a group admin may add members"));
    }
    let joining = req
        .members
        .iter()
        .filter(|m| group.member(m).is_none())
        .collect::<std::collections::HashSet<_>>()
        .len();
    groups.check_size(group.members.len() + joining)?;
    groups.check_users_exist(&req.members).await?;
    let added = groups.groups.add_members(&id, &req.members).await?;
    // Every requested member is in the group now; joining is idempotent, so a retry after a
    // crash between the two writes completes the join.
    groups.timeline.join(&id, &req.members).await?;
    if !added.is_empty() {
        let mut everyone: Vec<String> = group.members.iter().map(|m| m.username.clone()).collect();
        everyone.extend(added.iter().cloned());
        groups
            .notify(&id, &user, Change::Added(&added), &everyone)
            .await?;
    }
    Ok(Json(json!({ "status": true })))
}

#[derive(Deserialize, ToSchema)]
struct Remove {
    /// The username to remove: anyone may remove themself, admins anyone.
    #[schema(example = "dave")]
    member: String,
}

/// Remove a member
///
/// Everyone who was in the group, the removed member included, is sent a `NOTIFICATION` of
/// the `remove`; the removed member is sent nothing after it. When the last admin leaves, the
/// longest-standing member becomes admin.
#[utoipa::path(delete, path = "/v1.0/groups/{id}/members", operation_id = "removeMember", tag = "groups", request_body = Remove,
    params(("id" = String, Path, description = "The `groupId`")),
    security(("bearer" = []), ("user" = [], "accesskey" = [])),
    responses(
        (status = 200, description = "Removed", body = Object, example = json!({"status": true})),
        (status = 401, description = "Credentials refused", body = ErrorBody),
        (status = 403, description = "Only an admin may remove others", body = ErrorBody),
        (status = 404, description = "No such group of the caller's, or no such member", body = ErrorBody)))]
async fn remove(
    State(groups): State<Groups>,
    User { name: user, .. }: User,
    Path(id): Path<String>,
    Json(req): Json<Remove>,
) -> Result<Json<Value>, ApiError> {
    let group = groups.of_member(&id, &user).await?;
    let is_admin = group.member(&user).map(|m| m.role) == Some(Role::Admin);
    if req.member != user && !is_admin {
        return Err(ApiError::forbidden(
            "only a group admin may remove others; anyone may remove themself",
        ));
    }
    let mut everyone: Vec<String> = group.members.iter().map(|m| m.username.clone()).collect();
    if groups
        .groups
        .remove_member(&id, &req.member)
        .await?
        .is_none()
    {
        // Not a member: unless a removal was cut short between its two writes, and they still
        // take part in the timeline. Then this retry completes it.
        let conv = Conv::group(&id);
        if groups
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
    groups
        .notify(
            &id,
            &user,
            Change::Removed(std::slice::from_ref(&req.member)),
            &everyone,
        )
        .await?;
    Ok(Json(json!({ "status": true })))
}

enum Change<'a> {
    Added(&'a [String]),
    Removed(&'a [String]),
}
