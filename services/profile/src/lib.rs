//! profile: login (the auth provider proves the username, Samvad issues the access key),
//! `/v1.0/auth` for nginx, devices (each login links one; a user lists theirs, unlinks any,
//! or logs out the one they use, and an unlinked device's keys stop working and its sockets
//! close), profiles (one's own to read and set: a display name, a picture, and whether one's
//! presence is shown; another's for whoever shares a conversation with them) and contact
//! sync. Each login registers the device for push.

use std::sync::Arc;

use axum::extract::{FromRef, Path, Query, State};
use axum::{Json, Router};
use samvad_auth::{AccessKeys, LoginProvider};
use samvad_bus::{Bus, DeviceLogin, GatewayEvent, Record, Topic};
use samvad_http::{ApiError, ErrorBody, Gate, User};
use samvad_presence::Presence;
use samvad_runtime::{Context, Metrics, PerUser, ReasonLabel, ServiceDef, per_minute};
use samvad_store::{Device, DeviceRef, Profile, Stores};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub const SERVICE: ServiceDef = ServiceDef {
    name: "profile",
    start: |ctx| Box::pin(async move { Ok(routes(ctx)) }),
    api: Some(|| api().into_openapi()),
};

/// Longest username accepted.
const MAX_USERNAME: usize = 64;
/// Longest notification token (a Web Push subscription is a few hundred bytes).
const MAX_TOKEN: usize = 4096;
const MAX_DEVICE_ID: usize = 128;
/// Most usernames one contact sync may ask about.
const MAX_SYNC: usize = 5_000;
/// Longest display name, in characters.
const MAX_NAME: usize = 64;
/// Most users one presence request may ask about.
const MAX_PRESENCE: usize = 100;

/// What the identity routes work with.
#[derive(Clone, FromRef)]
struct Profiles {
    /// Profiles and devices; assets (a picture must be the user's own); who shares a
    /// conversation with whom.
    stores: Stores,
    /// Where users are connected, and when they were last seen.
    presence: Arc<dyn Presence>,
    /// What proves a username at login.
    login: Arc<LoginProvider>,
    access_keys: Arc<AccessKeys>,
    /// Where devices are registered for push and unlinked devices' gateways told.
    bus: Arc<dyn Bus>,
    metrics: Metrics,
    max_devices_per_user: usize,
    gate: Gate,
    limits: Limits,
}

/// Per-user budgets: logins per username (each one a device, and a token checked), contact
/// syncs per user (each one a probe of who uses Samvad).
#[derive(Clone)]
struct Limits {
    logins: PerUser,
    syncs: PerUser,
}

impl Limits {
    /// `Ok` while `user` has budget left for `what`; else a 429 saying so, and counted.
    fn take(
        metrics: &Metrics,
        budget: &PerUser,
        user: &str,
        what: &'static str,
    ) -> Result<(), ApiError> {
        if budget.take(user, 1) {
            return Ok(());
        }
        metrics
            .limited
            .get_or_create(&ReasonLabel { reason: what })
            .inc();
        Err(ApiError::too_many(format!(
            "too many {}s for {user}: wait a minute and try again",
            what.replace('_', " ")
        )))
    }
}

/// The routes, each where its handler's `#[utoipa::path]` says.
fn api() -> OpenApiRouter<Profiles> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(auth))
        .routes(routes!(logout))
        .routes(routes!(devices))
        .routes(routes!(unlink))
        .routes(routes!(profile, set_profile))
        .routes(routes!(profile_of))
        .routes(routes!(sync))
        .routes(routes!(presence))
}

fn routes(ctx: &Context) -> Router {
    let (router, _) = api().split_for_parts();
    router.with_state(Profiles {
        stores: ctx.stores.clone(),
        presence: ctx.presence.clone(),
        login: ctx.login.clone(),
        access_keys: ctx.access_keys.clone(),
        bus: ctx.bus.clone(),
        metrics: ctx.metrics.clone(),
        max_devices_per_user: ctx.settings.max_devices_per_user,
        gate: ctx.gate.clone(),
        limits: Limits {
            logins: PerUser::new(per_minute(ctx.settings.logins_per_minute)),
            syncs: PerUser::new(per_minute(ctx.settings.contact_syncs_per_minute)),
        },
    })
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Login {
    /// Who logs in: 1 to 64 bytes, no control or invisible characters.
    #[schema(example = "alice")]
    username: String,
    /// What proves the username to the configured auth provider (a signed JWT; any token with
    /// the `dev` provider).
    auth_token: String,
    /// Where this device is pushed: an FCM registration token or a Web Push subscription
    /// (JSON); empty for none. At most 4,096 bytes.
    #[serde(default)]
    notification_token: String,
    /// Which of the user's devices this is: 1 to 128 bytes, no control characters.
    #[serde(default = "default_device")]
    #[schema(default = "default")]
    device_id: String,
    /// The message version pushes to this device are encoded in (1, 2, 2.1 or 3).
    #[serde(default = "default_version")]
    #[schema(default = 2.1)]
    message_version: f32,
}

fn default_device() -> String {
    samvad_auth::DEFAULT_DEVICE.into()
}

fn default_version() -> f32 {
    2.1
}

/// Characters that change how text around them looks without showing themselves: bidi
/// overrides and isolates (which make `alice\u{202e}` read as someone else), zero-width
/// joiners and spaces, the soft hyphen and the byte-order mark.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{ad}' | '\u{61c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// A username is what people type to reach each other; `server` is the acks' source.
pub fn check_username(username: &str) -> Result<(), ApiError> {
    if username.is_empty()
        || username.len() > MAX_USERNAME
        || username.chars().any(|c| c.is_control() || is_invisible(c))
        || username.trim() != username
    {
        return Err(ApiError::bad_request(format!(
            "username must be 1 to {MAX_USERNAME} bytes, without control or invisible \
             characters or surrounding spaces"
        )));
    }
    if username == samvad_protocol::SERVER_SOURCE {
        return Err(ApiError::bad_request("username `server` is reserved"));
    }
    Ok(())
}

/// Log in
///
/// The auth provider checks `authToken` proves `username`; Samvad then links this device to
/// the user (unlinking the one whose last login is oldest past the device limit) and issues
/// an access key for it. The first login creates the profile (`isNew`).
#[utoipa::path(post, path = "/v1.0/login", operation_id = "login", tag = "identity", request_body = Login,
    responses(
        (status = 200, description = "Logged in", body = Object, example = json!({
            "status": true, "username": "alice", "accesskey": "eyJ…", "isNew": false})),
        (status = 400, description = "A field is malformed", body = ErrorBody),
        (status = 401, description = "The auth provider refused `authToken`", body = ErrorBody),
        (status = 429, description = "Too many logins for this username in a minute", body = ErrorBody),
        (status = 503, description = "A backend is unavailable; try again", body = ErrorBody)))]
async fn login(
    State(state): State<Profiles>,
    Json(login): Json<Login>,
) -> Result<Json<Value>, ApiError> {
    check_username(&login.username)?;
    Limits::take(
        &state.metrics,
        &state.limits.logins,
        &login.username,
        "login",
    )?;
    if login.notification_token.len() > MAX_TOKEN {
        return Err(ApiError::bad_request(format!(
            "notificationToken may be at most {MAX_TOKEN} bytes"
        )));
    }
    if login.device_id.is_empty()
        || login.device_id.len() > MAX_DEVICE_ID
        || login.device_id.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(format!(
            "deviceId must be 1 to {MAX_DEVICE_ID} bytes, without control characters"
        )));
    }
    state
        .login
        .verify(&login.username, &login.auth_token)
        .await?;
    let device = Device {
        device_id: login.device_id,
        notification_token: login.notification_token,
        message_version: login.message_version,
    };
    let linked = state
        .stores
        .profiles
        .login(&login.username, &device, state.max_devices_per_user)
        .await?;
    let who = samvad_auth::Identity::new(login.username.clone(), device.device_id.clone());
    // The device's duty starts here: what its conversations already hold is history to it.
    state
        .stores
        .timeline
        .register(&DeviceRef {
            user: who.user.clone(),
            device: who.device.clone(),
        })
        .await?;
    if !linked.unlinked.is_empty() {
        tracing::info!(user = %who.user, unlinked = ?linked.unlinked, "devices unlinked to make room for a new one");
        unlinked(&state, &who.user, linked.unlinked).await?;
    }
    let event = DeviceLogin {
        user: login.username.clone(),
        device_id: device.device_id,
        notification_token: device.notification_token,
        message_version: device.message_version,
    };
    state
        .bus
        .publish(
            &Topic::Logins,
            vec![Record::event(login.username.clone(), event)],
        )
        .await?;
    tracing::info!(user = %login.username, is_new = linked.is_new, "login");
    Ok(Json(json!({
        "status": true,
        "username": login.username,
        "accesskey": state.access_keys.issue(&who, &linked.session),
        "isNew": linked.is_new,
    })))
}

/// Ends the duty of `devices`, which are no longer linked to `user`, and closes their
/// connections on every gateway that holds one of the user's.
async fn unlinked(state: &Profiles, user: &str, devices: Vec<String>) -> Result<(), ApiError> {
    for device in &devices {
        state
            .stores
            .timeline
            .unregister(&DeviceRef {
                user: user.to_owned(),
                device: device.clone(),
            })
            .await?;
    }
    let gateways = state
        .presence
        .gateways(user)
        .await
        .map_err(ApiError::unavailable)?;
    for gateway in gateways {
        let event = GatewayEvent {
            users: vec![user.to_owned()],
            items: Vec::new(),
            unlinked: devices.clone(),
        };
        state
            .bus
            .publish(
                &Topic::Gateway(gateway),
                vec![Record::event(user.to_owned(), event)],
            )
            .await?;
    }
    Ok(())
}

/// Log out
///
/// Unlinks the device the caller's key was issued to: that key, and every other key of the
/// device, stops working, and its sockets close.
#[utoipa::path(post, path = "/v1.0/logout", operation_id = "logout", tag = "devices",
    security(("bearer" = []), ("user" = [], "accesskey" = [])),
    responses(
        (status = 200, description = "Logged out", body = Object, example = json!({"status": true})),
        (status = 401, description = "Credentials refused", body = ErrorBody),
        (status = 404, description = "The device was not linked (any more)", body = ErrorBody)))]
async fn logout(State(state): State<Profiles>, user: User) -> Result<Json<Value>, ApiError> {
    unlink_device(&state, &user.name, user.device).await
}

/// Unlink a device
///
/// Unlinks one of the caller's devices (a lost phone, say): its keys stop working, its
/// sockets close and it is owed nothing more.
#[utoipa::path(delete, path = "/v1.0/devices/{device}", operation_id = "unlinkDevice", tag = "devices",
    params(("device" = String, Path, description = "The `deviceId` it logged in with")),
    security(("bearer" = []), ("user" = [], "accesskey" = [])),
    responses(
        (status = 200, description = "Unlinked", body = Object, example = json!({"status": true})),
        (status = 401, description = "Credentials refused", body = ErrorBody),
        (status = 404, description = "No such device is linked", body = ErrorBody)))]
async fn unlink(
    State(state): State<Profiles>,
    User { name, .. }: User,
    Path(device): Path<String>,
) -> Result<Json<Value>, ApiError> {
    unlink_device(&state, &name, device).await
}

async fn unlink_device(
    state: &Profiles,
    user: &str,
    device: String,
) -> Result<Json<Value>, ApiError> {
    let was_linked = state.stores.profiles.unlink(user, &device).await?;
    // Even if it was not (any more): a logout cut short after the first step is finished by
    // the next one.
    unlinked(state, user, vec![device.clone()]).await?;
    if !was_linked {
        return Err(ApiError::not_found(format!("no device {device} is linked")));
    }
    tracing::info!(user = %user, device = %device, "device unlinked");
    Ok(Json(json!({ "status": true })))
}

/// List one's devices
///
/// The caller's linked devices: which one is theirs now, when each last logged in (ms since
/// the Unix epoch), and whether it can be pushed to.
#[utoipa::path(get, path = "/v1.0/devices", operation_id = "listDevices", tag = "devices",
    security(("bearer" = []), ("user" = [], "accesskey" = [])),
    responses(
        (status = 200, description = "The linked devices", body = Object, example = json!([{
            "deviceId": "phone", "current": true, "lastLogin": 1_765_000_000_000_u64,
            "push": true, "messageVersion": 2.1}])),
        (status = 401, description = "Credentials refused", body = ErrorBody)))]
async fn devices(State(state): State<Profiles>, user: User) -> Result<Json<Value>, ApiError> {
    let linked = state.stores.profiles.devices(&user.name).await?;
    Ok(Json(Value::Array(
        linked
            .into_iter()
            .map(|l| {
                json!({
                    "deviceId": l.device.device_id,
                    "current": l.device.device_id == user.device,
                    "lastLogin": l.last_login,
                    "push": !l.device.notification_token.is_empty(),
                    "messageVersion": l.device.message_version,
                })
            })
            .collect(),
    )))
}

/// Check credentials
///
/// For nginx's `auth_request`: any method, any body; the answer says whether the request's
/// credentials are good.
#[utoipa::path(method(get, post, put, delete, patch, head), path = "/v1.0/auth", operation_id = "checkCredentials", tag = "identity",
    security(("bearer" = []), ("user" = [], "accesskey" = [])),
    responses(
        (status = 200, description = "The credentials are good", body = Object, example = json!({})),
        (status = 401, description = "They are not", body = Object, example = json!({}))))]
async fn auth(user: Result<User, ApiError>) -> (axum::http::StatusCode, Json<Value>) {
    match user {
        Ok(_) => (axum::http::StatusCode::OK, Json(json!({}))),
        Err(_) => (axum::http::StatusCode::UNAUTHORIZED, Json(json!({}))),
    }
}

/// A profile as the caller may see it: their own with its settings, another's without. A
/// name or picture not set is left out, as before either could be set.
fn profile_json(profile: &Profile, own: bool) -> Value {
    let mut body = json!({ "username": profile.username });
    if let Some(name) = &profile.name {
        body["name"] = json!(name);
    }
    if let Some(pic) = &profile.profile_pic {
        body["profilePic"] = json!(pic);
    }
    if own {
        body["showPresence"] = json!(profile.show_presence);
    }
    body
}

async fn own_profile(state: &Profiles, user: &str) -> Result<Profile, ApiError> {
    state
        .stores
        .profiles
        .profile(user)
        .await?
        .ok_or_else(|| ApiError::not_found("no profile; log in first"))
}

/// One's own profile
///
/// With its settings (`showPresence`). A name or picture not set is left out.
#[utoipa::path(get, path = "/v1.0/profile/", operation_id = "getOwnProfile", tag = "profiles",
    security(("bearer" = []), ("user" = [], "accesskey" = [])),
    responses(
        (status = 200, description = "The caller's profile", body = Object, example = json!({
            "username": "alice", "name": "Alice", "profilePic": "9f1c…", "showPresence": true})),
        (status = 401, description = "Credentials refused", body = ErrorBody),
        (status = 404, description = "No profile: log in first", body = ErrorBody)))]
async fn profile(
    State(state): State<Profiles>,
    User { name: user, .. }: User,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(profile_json(&own_profile(&state, &user).await?, true)))
}

/// Someone's profile
///
/// For whoever shares a conversation with them; to anyone else it does not exist.
#[utoipa::path(get, path = "/v1.0/profile/{username}", operation_id = "getProfile", tag = "profiles",
    params(("username" = String, Path, description = "Whose profile")),
    security(("bearer" = []), ("user" = [], "accesskey" = [])),
    responses(
        (status = 200, description = "Their profile", body = Object, example = json!({
            "username": "bob", "name": "Bob"})),
        (status = 401, description = "Credentials refused", body = ErrorBody),
        (status = 404, description = "No profile the caller may see", body = ErrorBody)))]
async fn profile_of(
    State(state): State<Profiles>,
    User { name: user, .. }: User,
    Path(username): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let not_found = || ApiError::not_found(format!("no profile of {username} you may see"));
    if !state.stores.share_conversation(&user, &username).await? {
        return Err(not_found());
    }
    let profile = state
        .stores
        .profiles
        .profile(&username)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(profile_json(&profile, user == username)))
}

/// `Some(None)` for a JSON `null`, `None` for an absent field: a field not sent is kept.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// What to change; a field left out stays as it is, `null` clears it.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProfileChange {
    /// The display name: 1 to 64 characters, no control or invisible characters or
    /// surrounding spaces.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    name: Option<Option<String>>,
    /// The `fileId` of a picture the caller uploaded and marked.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    profile_pic: Option<Option<String>>,
    /// Whether others who share a conversation see when the caller is online.
    #[serde(default)]
    show_presence: Option<bool>,
}

/// A display name is shown to others beside the username: no control or invisible
/// characters, nothing but spaces around it.
fn check_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty()
        || name.chars().count() > MAX_NAME
        || name.chars().any(|c| c.is_control() || is_invisible(c))
        || name.trim() != name
    {
        return Err(ApiError::bad_request(format!(
            "name must be 1 to {MAX_NAME} characters, without control or invisible characters \
             or surrounding spaces"
        )));
    }
    Ok(())
}

/// Change one's profile
///
/// Sets what the body names of the caller's profile; what it leaves out stays.
#[utoipa::path(put, path = "/v1.0/profile/", operation_id = "setOwnProfile", tag = "profiles", request_body = ProfileChange,
    security(("bearer" = []), ("user" = [], "accesskey" = [])),
    responses(
        (status = 200, description = "The profile as it now is", body = Object, example = json!({
            "username": "alice", "name": "Alice", "showPresence": false})),
        (status = 400, description = "A field is refused", body = ErrorBody),
        (status = 401, description = "Credentials refused", body = ErrorBody),
        (status = 404, description = "No profile: log in first", body = ErrorBody)))]
async fn set_profile(
    State(state): State<Profiles>,
    User { name: user, .. }: User,
    Json(change): Json<ProfileChange>,
) -> Result<Json<Value>, ApiError> {
    let mut profile = own_profile(&state, &user).await?;
    if let Some(name) = change.name {
        if let Some(name) = &name {
            check_name(name)?;
        }
        profile.name = name;
    }
    if let Some(pic) = change.profile_pic {
        if let Some(pic) = &pic {
            let mine = match state.stores.assets.asset(pic).await? {
                Some(asset) => {
                    asset.owner == user
                        && asset.size.is_some()
                        && asset.content_type.starts_with("image/")
                }
                None => false,
            };
            if !mine {
                return Err(ApiError::bad_request(format!(
                    "profilePic must be the fileId of a picture you uploaded and marked; \
                     {pic} is not"
                )));
            }
        }
        profile.profile_pic = pic;
    }
    if let Some(show) = change.show_presence {
        profile.show_presence = show;
    }
    state.stores.profiles.set_profile(&profile).await?;
    Ok(Json(profile_json(&profile, true)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PresenceQuery {
    /// Usernames, comma separated (at most 100).
    users: String,
}

/// Who is online
///
/// Whether each named user is online, and when they were last (ms since the Unix epoch): for
/// those who share a conversation with the caller and show their presence; the others are
/// left out.
#[utoipa::path(get, path = "/v1.0/presence", operation_id = "getPresence", tag = "profiles", params(PresenceQuery),
    security(("bearer" = []), ("user" = [], "accesskey" = [])),
    responses(
        (status = 200, description = "Presence by username", body = Object, example = json!({
            "bob": {"online": true, "lastSeen": null},
            "carol": {"online": false, "lastSeen": 1_765_000_000_000_u64}})),
        (status = 400, description = "Too many users named", body = ErrorBody),
        (status = 401, description = "Credentials refused", body = ErrorBody)))]
async fn presence(
    State(state): State<Profiles>,
    User { name: viewer, .. }: User,
    Query(query): Query<PresenceQuery>,
) -> Result<Json<Value>, ApiError> {
    let mut users: Vec<&str> = query.users.split(',').filter(|u| !u.is_empty()).collect();
    users.sort_unstable();
    users.dedup();
    if users.len() > MAX_PRESENCE {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_PRESENCE} users per presence request"
        )));
    }
    let mut answer = serde_json::Map::new();
    for user in users {
        if !state.stores.shows_presence(user).await?
            || !state.stores.share_conversation(&viewer, user).await?
        {
            continue;
        }
        let online = !state
            .presence
            .gateways(user)
            .await
            .map_err(ApiError::unavailable)?
            .is_empty();
        let last_seen = if online {
            None
        } else {
            state
                .presence
                .last_seen(user)
                .await
                .map_err(ApiError::unavailable)?
        };
        answer.insert(
            user.to_owned(),
            json!({ "online": online, "lastSeen": last_seen }),
        );
    }
    Ok(Json(Value::Object(answer)))
}

#[derive(Deserialize, ToSchema)]
struct Sync {
    /// Usernames from the caller's contact book (at most 5,000).
    #[schema(example = json!(["bob", "carol"]))]
    users: Vec<String>,
}

/// Find contacts
///
/// Which of the named users have Samvad: only those that exist are in the answer.
#[utoipa::path(post, path = "/v1.0/contactbook/sync", operation_id = "syncContacts", tag = "profiles", request_body = Sync,
    security(("bearer" = []), ("user" = [], "accesskey" = [])),
    responses(
        (status = 200, description = "The users that exist", body = Object,
            example = json!({"bob": true})),
        (status = 400, description = "Too many users named", body = ErrorBody),
        (status = 401, description = "Credentials refused", body = ErrorBody),
        (status = 429, description = "Too many syncs in a minute", body = ErrorBody)))]
async fn sync(
    State(state): State<Profiles>,
    User { name, .. }: User,
    Json(sync): Json<Sync>,
) -> Result<Json<Value>, ApiError> {
    Limits::take(&state.metrics, &state.limits.syncs, &name, "contact_sync")?;
    if sync.users.len() > MAX_SYNC {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_SYNC} users per sync"
        )));
    }
    let found = state.stores.profiles.existing(&sync.users).await?;
    Ok(Json(Value::Object(
        found.into_iter().map(|u| (u, Value::Bool(true))).collect(),
    )))
}
