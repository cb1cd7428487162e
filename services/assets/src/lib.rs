//! assets: attachments, as Vartalap's clients send them. A client asks for an upload URL,
//! sends the file there, marks it uploaded, and sends a message naming its `fileId`; a
//! reader asks for a download URL. The bytes never pass through a chat connection.
//!
//! Who may download: `Stores::may_read` — the owner, and whoever can see a stored message
//! that carried the `fileId` (delivery records where such messages were:
//! `Stores::attach_carried`). Unfinished uploads are deleted after
//! `SAMVAD_ASSETS_UPLOAD_TTL_SECS`.

mod disk;
mod s3;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, Path, Query, State};
use axum::http::HeaderMap;
use axum::{Json, Router};
use samvad_config::{AssetSettings, AssetStorage};
use samvad_http::{ApiError, ErrorBody, Gate, User};
use samvad_protocol::now_ms;
use samvad_runtime::{Context, ServiceDef};
use samvad_store::{Asset, FILE_ID_PREFIX, Stores, is_file_id};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub const SERVICE: ServiceDef = ServiceDef {
    name: "assets",
    start: |ctx| Box::pin(start(ctx)),
    // The file routes are only served with local storage; they are described whatever the
    // storage, as what its URLs lead to.
    api: Some(|| {
        let mut doc = api().into_openapi();
        doc.merge(disk::api().into_openapi());
        doc
    }),
};

/// Longest category accepted.
const MAX_CATEGORY: usize = 32;
/// Pending uploads expired per store call.
const SWEEP_CHUNK: usize = 500;

fn new_file_id() -> String {
    format!("{FILE_ID_PREFIX}{:032x}", rand::random::<u128>())
}

/// What the attachment routes and the sweeper work with.
#[derive(Clone, FromRef)]
struct Assets {
    /// Attachments, and who may read one (who shares its conversation).
    stores: Stores,
    gate: Gate,
    settings: Arc<AssetSettings>,
    blobs: Blobs,
}

/// Where the bytes are.
#[derive(Clone)]
enum Blobs {
    Disk(disk::Disk),
    S3(s3::S3),
}

impl Blobs {
    /// Where the owner sends the file; the request must carry the asset's content type.
    fn upload_url(&self, headers: &HeaderMap, asset: &Asset) -> Result<String, ApiError> {
        match self {
            Self::Disk(disk) => disk.upload_url(headers, asset),
            Self::S3(s3) => Ok(s3.upload_url(asset)),
        }
    }

    fn download_url(&self, headers: &HeaderMap, asset: &Asset) -> Result<String, ApiError> {
        match self {
            Self::Disk(disk) => disk.download_url(headers, asset),
            Self::S3(s3) => Ok(s3.download_url(asset)),
        }
    }

    /// The size of the uploaded bytes, `None` while none are there. Bytes that break the
    /// size limit or the content type are deleted and refused.
    async fn uploaded_size(&self, asset: &Asset) -> Result<Option<u64>, ApiError> {
        match self {
            Self::Disk(disk) => disk.uploaded_size(asset).await,
            Self::S3(s3) => s3.uploaded_size(asset).await,
        }
    }

    async fn remove(&self, file_id: &str) {
        match self {
            Self::Disk(disk) => disk.remove(file_id).await,
            Self::S3(s3) => s3.remove(file_id).await,
        }
    }
}

async fn start(ctx: &Context) -> Result<Router, samvad_runtime::Cause> {
    let settings = Arc::new(ctx.settings.assets.clone());
    let mut router = Router::new();
    let blobs = match &settings.storage {
        AssetStorage::Local => {
            let disk = disk::Disk::open(
                ctx.settings.data_dir.join("assets"),
                ctx.access_keys.urls().clone(),
                Arc::clone(&settings),
            )?;
            router = disk::routes(disk.clone(), ctx.stores.clone());
            Blobs::Disk(disk)
        }
        AssetStorage::S3(s3) => Blobs::S3(s3::S3::new(s3, Arc::clone(&settings))?),
    };
    let assets = Assets {
        stores: ctx.stores.clone(),
        gate: ctx.gate.clone(),
        settings,
        blobs,
    };
    ctx.spawn("assets-sweeper", sweep(assets.clone(), ctx.shutdown()));
    let (api, _) = api().split_for_parts();
    Ok(router.merge(api.with_state(assets)))
}

/// The routes, each where its handler's `#[utoipa::path]` says.
fn api() -> OpenApiRouter<Assets> {
    OpenApiRouter::new()
        .routes(routes!(upload_url))
        .routes(routes!(mark))
        .routes(routes!(download_url))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct UploadQuery {
    /// The file's extension, one of the accepted types (`SAMVAD_ASSETS_TYPES`), e.g. `jpg`.
    ext: String,
    /// What the file is for: 1 to 32 letters, digits, `-` or `_`; `chat` if not given.
    #[serde(default)]
    category: Option<String>,
}

/// Ask for an upload URL
///
/// A new `fileId` and where to `PUT` its bytes, with the content type to send them with. The
/// upload stays pending until it is marked, and is deleted if not marked in time.
#[utoipa::path(get, path = "/v1.0/assets/upload/presigned_url", operation_id = "getUploadUrl", tag = "assets", params(UploadQuery),
    security(("bearer" = []), ("user" = [], "accesskey" = [])),
    responses(
        (status = 200, description = "Where to upload", body = Object, example = json!({
            "url": "http://127.0.0.1:8080/v1.0/assets/files/asset-…?expires=…&signature=…",
            "fileId": "asset-…", "assetId": "asset-…", "contentType": "image/jpeg", "maxBytes": 10_485_760})),
        (status = 400, description = "The extension or category is refused", body = ErrorBody),
        (status = 401, description = "Credentials refused", body = ErrorBody),
        (status = 429, description = "Too many uploads pending", body = ErrorBody)))]
async fn upload_url(
    State(assets): State<Assets>,
    user: User,
    headers: HeaderMap,
    Query(query): Query<UploadQuery>,
) -> Result<Json<Value>, ApiError> {
    let settings = &assets.settings;
    let Some((ext, content_type)) = settings.file_type(&query.ext) else {
        let accepted: Vec<&str> = settings.types.iter().map(|(e, _)| e.as_str()).collect();
        return Err(ApiError::bad_request(format!(
            "ext `{}` is not accepted; accepted: {}",
            query.ext,
            accepted.join(" ")
        )));
    };
    let category = query.category.unwrap_or_else(|| "chat".into());
    if category.is_empty()
        || category.len() > MAX_CATEGORY
        || !category
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    {
        return Err(ApiError::bad_request(format!(
            "category must be 1 to {MAX_CATEGORY} letters, digits, `-` or `_`"
        )));
    }
    if assets.stores.assets.pending_uploads(&user.name).await? >= settings.max_pending {
        return Err(ApiError::too_many(format!(
            "at most {} uploads may be pending at once: mark or finish some first (unmarked \
             ones expire after {} s)",
            settings.max_pending,
            settings.upload_ttl.as_secs()
        )));
    }
    let asset = Asset {
        file_id: new_file_id(),
        owner: user.name,
        ext: ext.to_owned(),
        content_type: content_type.to_owned(),
        category,
        created_at: now_ms() as i64,
        size: None,
    };
    assets.stores.assets.create_asset(&asset).await?;
    Ok(Json(json!({
        "url": assets.blobs.upload_url(&headers, &asset)?,
        "fileId": asset.file_id,
        // Vartalap's mobile client reads the id under this name.
        "assetId": asset.file_id,
        "contentType": asset.content_type,
        "maxBytes": settings.max_bytes,
    })))
}

#[derive(Deserialize, ToSchema)]
struct Mark {
    /// `true`: the file is uploaded.
    status: bool,
}

/// The asset `user` owns, or 404 — whether it is someone else's or nobody's is not told.
async fn owned(assets: &Assets, user: &User, file_id: &str) -> Result<Asset, ApiError> {
    let not_found = || ApiError::not_found(format!("no file {file_id} of yours"));
    if !is_file_id(file_id) {
        return Err(not_found());
    }
    match assets.stores.assets.asset(file_id).await? {
        Some(asset) if asset.owner == user.name => Ok(asset),
        _ => Err(not_found()),
    }
}

/// Mark a file uploaded
///
/// Once its bytes are at the upload URL. From then on it cannot change, and a message may
/// name its `fileId`. Vartalap's clients mark with `PUT`; older ones `POST`.
#[utoipa::path(method(put, post), path = "/v1.0/assets/{file_id}/status", operation_id = "markUploaded", tag = "assets",
    params(("file_id" = String, Path, description = "The `fileId`")),
    request_body = Mark,
    security(("bearer" = []), ("user" = [], "accesskey" = [])),
    responses(
        (status = 200, description = "Marked", body = Object,
            example = json!({"fileId": "asset-…", "status": true, "size": 48_213})),
        (status = 400, description = "Not uploaded yet, or marked already", body = ErrorBody),
        (status = 401, description = "Credentials refused", body = ErrorBody),
        (status = 404, description = "No such file of the caller's", body = ErrorBody)))]
async fn mark(
    State(assets): State<Assets>,
    user: User,
    Path(file_id): Path<String>,
    Json(body): Json<Mark>,
) -> Result<Json<Value>, ApiError> {
    let asset = owned(&assets, &user, &file_id).await?;
    if !body.status {
        return Err(ApiError::bad_request(
            "status must be true: mark a file once it is uploaded",
        ));
    }
    if asset.size.is_some() {
        return Err(ApiError::bad_request(format!(
            "{file_id} is marked uploaded already"
        )));
    }
    let Some(size) = assets.blobs.uploaded_size(&asset).await? else {
        return Err(ApiError::bad_request(format!(
            "{file_id} has not been uploaded: PUT the file to its upload URL first"
        )));
    };
    if !assets.stores.assets.mark_uploaded(&file_id, size).await? {
        return Err(ApiError::bad_request(format!(
            "{file_id} is marked uploaded already"
        )));
    }
    Ok(Json(
        json!({ "fileId": file_id, "status": true, "size": size }),
    ))
}

/// Ask for a download URL
///
/// For the owner, and for whoever can see a stored message that named the `fileId`.
#[utoipa::path(get, path = "/v1.0/assets/download/{file_id}/presigned_url", operation_id = "getDownloadUrl", tag = "assets",
    params(("file_id" = String, Path, description = "The `fileId`")),
    security(("bearer" = []), ("user" = [], "accesskey" = [])),
    responses(
        (status = 200, description = "Where to download it", body = Object,
            example = json!({"url": "http://127.0.0.1:8080/v1.0/assets/files/asset-…?expires=…&signature=…"})),
        (status = 401, description = "Credentials refused", body = ErrorBody),
        (status = 404, description = "No such file the caller may read", body = ErrorBody)))]
async fn download_url(
    State(assets): State<Assets>,
    user: User,
    headers: HeaderMap,
    Path(file_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let not_found = || ApiError::not_found(format!("no file {file_id} you may read"));
    if !is_file_id(&file_id) {
        return Err(not_found());
    }
    let Some(asset) = assets.stores.assets.asset(&file_id).await? else {
        return Err(not_found());
    };
    if asset.size.is_none() || !assets.stores.may_read(&user.name, &asset).await? {
        return Err(not_found());
    }
    let url = assets.blobs.download_url(&headers, &asset)?;
    Ok(Json(json!({ "url": url })))
}

/// Deletes uploads never marked, with their bytes, and pieces of uploads cut short; again
/// every tenth of the upload lifetime (at most a minute).
async fn sweep(
    assets: Assets,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), samvad_runtime::Cause> {
    let pause = (assets.settings.upload_ttl / 10).min(Duration::from_secs(60));
    loop {
        let before = now_ms().saturating_sub(assets.settings.upload_ttl.as_millis() as u64);
        loop {
            match assets
                .stores
                .assets
                .expire_uploads(before as i64, SWEEP_CHUNK)
                .await
            {
                Ok(gone) => {
                    for id in &gone {
                        assets.blobs.remove(id).await;
                    }
                    if gone.len() < SWEEP_CHUNK || shutdown.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot expire unfinished uploads");
                    break;
                }
            }
        }
        if let Blobs::Disk(disk) = &assets.blobs {
            disk.remove_stale_parts().await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_file_ids_are_file_ids_and_differ() {
        let (a, b) = (new_file_id(), new_file_id());
        assert!(is_file_id(&a) && is_file_id(&b) && a != b);
    }
}
