//! profile: login (the auth provider proves the username, Samvad issues the access key),
//! `/v1.0/auth` for nginx, devices (each login links one; a user lists theirs, unlinks any,
//! or logs out the one they use, and an unlinked device's keys stop working and its sockets
//! close), profiles (one's own to read and set: a display name, a picture, and whether one's
//! presence is shown; another's for whoever shares a conversation with them) and contact
//! sync. Each login registers the device for push.

use axum::extract::{FromRef, Path, Query, State};
use axum::routing::{any, delete, get, post};
use axum::{Json, Router};
use samvad_bus::{DeviceLogin, GatewayEvent, Record, Topic};
use samvad_kit::{ApiError, Context, PerUser, ReasonLabel, ServiceDef, User};
use samvad_store::{Device, DeviceRef, Profile};
use serde::Deserialize;
use serde_json::{Value, json};

pub const SERVICE: ServiceDef = ServiceDef {
    name: "profile",
    start: |ctx| Box::pin(async move { Ok(routes(ctx)) }),
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

#[derive(Clone, FromRef)]
struct Profiles {
    ctx: Context,
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
    fn per_minute(n: u32) -> PerUser {
        PerUser::new(f64::from(n) / 60.0, n)
    }

    /// `Ok` while `user` has budget left for `what`; else a 429 saying so, and counted.
    fn take(
        ctx: &Context,
        budget: &PerUser,
        user: &str,
        what: &'static str,
    ) -> Result<(), ApiError> {
        if budget.take(user, 1) {
            return Ok(());
        }
        ctx.metrics
            .limited
            .get_or_create(&ReasonLabel { reason: what })
            .inc();
        Err(ApiError::too_many(format!(
            "too many {}s for {user}: wait a minute and try again",
            what.replace('_', " ")
        )))
    }
}

fn routes(ctx: &Context) -> Router {
    Router::new()
        .route("/v1.0/login", post(login))
        .route("/v1.0/auth", any(auth))
        .route("/v1.0/logout", post(logout))
        .route("/v1.0/devices", get(devices))
        .route("/v1.0/devices/{device}", delete(unlink))
        .route("/v1.0/profile/", get(profile).put(set_profile))
        .route("/v1.0/profile/{username}", get(profile_of))
        .route("/v1.0/contactbook/sync", post(sync))
        .route("/v1.0/presence", get(presence))
        .with_state(Profiles {
            ctx: ctx.clone(),
            limits: Limits {
                logins: Limits::per_minute(ctx.settings.logins_per_minute),
                syncs: Limits::per_minute(ctx.settings.contact_syncs_per_minute),
            },
        })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Login {
    username: String,
    auth_token: String,
    #[serde(default)]
    notification_token: String,
    #[serde(default = "default_device")]
    device_id: String,
    #[serde(default = "default_version")]
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

async fn login(
    State(ctx): State<Context>,
    State(limits): State<Limits>,
    Json(login): Json<Login>,
) -> Result<Json<Value>, ApiError> {
    check_username(&login.username)?;
    Limits::take(&ctx, &limits.logins, &login.username, "login")?;
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
    ctx.login.verify(&login.username, &login.auth_token).await?;
    let device = Device {
        device_id: login.device_id,
        notification_token: login.notification_token,
        message_version: login.message_version,
    };
    let linked = ctx
        .stores
        .profiles
        .login(&login.username, &device, ctx.settings.max_devices_per_user)
        .await?;
    let who = samvad_auth::Identity::new(login.username.clone(), device.device_id.clone());
    // The device's duty starts here: what its conversations already hold is history to it.
    ctx.stores
        .timeline
        .register(&DeviceRef {
            user: who.user.clone(),
            device: who.device.clone(),
        })
        .await?;
    if !linked.unlinked.is_empty() {
        tracing::info!(user = %who.user, unlinked = ?linked.unlinked, "devices unlinked to make room for a new one");
        unlinked(&ctx, &who.user, linked.unlinked).await?;
    }
    let event = DeviceLogin {
        user: login.username.clone(),
        device_id: device.device_id,
        notification_token: device.notification_token,
        message_version: device.message_version,
    };
    ctx.bus
        .publish(
            &Topic::Logins,
            vec![Record::event(login.username.clone(), event)],
        )
        .await?;
    tracing::info!(user = %login.username, is_new = linked.is_new, "login");
    Ok(Json(json!({
        "status": true,
        "username": login.username,
        "accesskey": ctx.access_keys.issue(&who, &linked.session),
        "isNew": linked.is_new,
    })))
}

/// Ends the duty of `devices`, which are no longer linked to `user`, and closes their
/// connections on every gateway that holds one of the user's.
async fn unlinked(ctx: &Context, user: &str, devices: Vec<String>) -> Result<(), ApiError> {
    for device in &devices {
        ctx.stores
            .timeline
            .unregister(&DeviceRef {
                user: user.to_owned(),
                device: device.clone(),
            })
            .await?;
    }
    let gateways = ctx
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
        ctx.bus
            .publish(
                &Topic::Gateway(gateway),
                vec![Record::event(user.to_owned(), event)],
            )
            .await?;
    }
    Ok(())
}

/// Unlinks the device the caller's key was issued to: that key, and every other key of the
/// device, stops working, and its sockets close.
async fn logout(State(ctx): State<Context>, user: User) -> Result<Json<Value>, ApiError> {
    unlink_device(&ctx, &user.name, user.device).await
}

/// Unlinks one of the caller's devices (a lost phone, say).
async fn unlink(
    State(ctx): State<Context>,
    User { name, .. }: User,
    Path(device): Path<String>,
) -> Result<Json<Value>, ApiError> {
    unlink_device(&ctx, &name, device).await
}

async fn unlink_device(ctx: &Context, user: &str, device: String) -> Result<Json<Value>, ApiError> {
    let was_linked = ctx.stores.profiles.unlink(user, &device).await?;
    // Even if it was not (any more): a logout cut short after the first step is finished by
    // the next one.
    unlinked(ctx, user, vec![device.clone()]).await?;
    if !was_linked {
        return Err(ApiError::not_found(format!("no device {device} is linked")));
    }
    tracing::info!(user = %user, device = %device, "device unlinked");
    Ok(Json(json!({ "status": true })))
}

/// The caller's linked devices: which one is theirs now, when each last logged in (ms since
/// the Unix epoch), and whether it can be pushed to.
async fn devices(State(ctx): State<Context>, user: User) -> Result<Json<Value>, ApiError> {
    let linked = ctx.stores.profiles.devices(&user.name).await?;
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

async fn own_profile(ctx: &Context, user: &str) -> Result<Profile, ApiError> {
    ctx.stores
        .profiles
        .profile(user)
        .await?
        .ok_or_else(|| ApiError::not_found("no profile; log in first"))
}

async fn profile(
    State(ctx): State<Context>,
    User { name: user, .. }: User,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(profile_json(&own_profile(&ctx, &user).await?, true)))
}

/// Someone's profile, for whoever shares a conversation with them; to anyone else it does not
/// exist.
async fn profile_of(
    State(ctx): State<Context>,
    User { name: user, .. }: User,
    Path(username): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let not_found = || ApiError::not_found(format!("no profile of {username} you may see"));
    if !ctx.stores.share_conversation(&user, &username).await? {
        return Err(not_found());
    }
    let profile = ctx
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProfileChange {
    #[serde(default, deserialize_with = "present")]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    profile_pic: Option<Option<String>>,
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

/// Sets what the body names of the caller's profile; what it leaves out stays.
async fn set_profile(
    State(ctx): State<Context>,
    User { name: user, .. }: User,
    Json(change): Json<ProfileChange>,
) -> Result<Json<Value>, ApiError> {
    let mut profile = own_profile(&ctx, &user).await?;
    if let Some(name) = change.name {
        if let Some(name) = &name {
            check_name(name)?;
        }
        profile.name = name;
    }
    if let Some(pic) = change.profile_pic {
        if let Some(pic) = &pic {
            let mine = match ctx.stores.assets.asset(pic).await? {
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
    ctx.stores.profiles.set_profile(&profile).await?;
    Ok(Json(profile_json(&profile, true)))
}

#[derive(Deserialize)]
struct PresenceQuery {
    /// Comma separated.
    users: String,
}

/// Whether each named user is online, and when they were last: for those who share a
/// conversation with the caller and show their presence; the others are left out.
async fn presence(
    State(ctx): State<Context>,
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
        if !ctx.stores.shows_presence(user).await?
            || !ctx.stores.share_conversation(&viewer, user).await?
        {
            continue;
        }
        let online = !ctx
            .presence
            .gateways(user)
            .await
            .map_err(ApiError::unavailable)?
            .is_empty();
        let last_seen = if online {
            None
        } else {
            ctx.presence
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

#[derive(Deserialize)]
struct Sync {
    users: Vec<String>,
}

async fn sync(
    State(ctx): State<Context>,
    State(limits): State<Limits>,
    User { name, .. }: User,
    Json(sync): Json<Sync>,
) -> Result<Json<Value>, ApiError> {
    Limits::take(&ctx, &limits.syncs, &name, "contact_sync")?;
    if sync.users.len() > MAX_SYNC {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_SYNC} users per sync"
        )));
    }
    let found = ctx.stores.profiles.existing(&sync.users).await?;
    Ok(Json(Value::Object(
        found.into_iter().map(|u| (u, Value::Bool(true))).collect(),
    )))
}
