//! Attachments on local disk, for the all-in-one: files under `<data dir>/assets/`, sent and
//! fetched at `/v1.0/assets/files/{fileId}` with an expiry and a signature in the query. The
//! signature binds the method, the path and the expiry (and, for an upload, the content type
//! the file must carry), so a URL does one thing to one file until it expires. The directory
//! and its files are the server's alone (0700 and 0600), like its database.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use samvad_auth::UrlSigner;
use samvad_config::AssetSettings;
use samvad_http::{ApiError, ErrorBody};
use samvad_store::{Asset, Stores};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::is_file_id;

const FILES: &str = "/v1.0/assets/files";
/// A piece of an upload (`{fileId}.part.{random}`) is stale once it has not grown for this
/// long past the URL lifetime: no upload can still be writing it.
const STALE_PART_GRACE: Duration = Duration::from_secs(3600);

#[derive(Clone)]
pub(super) struct Disk {
    dir: Arc<PathBuf>,
    signer: UrlSigner,
    settings: Arc<AssetSettings>,
}

/// Creates `dir` if need be, readable by this process's user alone (an existing one too).
fn private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| anyhow::anyhow!("cannot make {} private: {e}", dir.display()))?;
    }
    Ok(())
}

fn unix_now() -> u64 {
    samvad_protocol::now_ms() / 1000
}

impl Disk {
    pub(super) fn open(
        dir: PathBuf,
        signer: UrlSigner,
        settings: Arc<AssetSettings>,
    ) -> anyhow::Result<Self> {
        private_dir(&dir)?;
        Ok(Self {
            dir: Arc::new(dir),
            signer,
            settings,
        })
    }

    fn url(
        &self,
        headers: &HeaderMap,
        method: &str,
        asset: &Asset,
        bound: &[&str],
    ) -> Result<String, ApiError> {
        let base = self.base_url(headers)?;
        let path = format!("{FILES}/{}", asset.file_id);
        let expires = unix_now() + self.settings.url_ttl.as_secs();
        let parts: Vec<&str> = [method, path.as_str()]
            .iter()
            .chain(bound)
            .copied()
            .collect();
        let signature = self.signer.sign(&parts, expires);
        Ok(format!(
            "{base}{path}?expires={expires}&signature={signature}"
        ))
    }

    pub(super) fn upload_url(
        &self,
        headers: &HeaderMap,
        asset: &Asset,
    ) -> Result<String, ApiError> {
        self.url(headers, "PUT", asset, &[&asset.content_type])
    }

    pub(super) fn download_url(
        &self,
        headers: &HeaderMap,
        asset: &Asset,
    ) -> Result<String, ApiError> {
        self.url(headers, "GET", asset, &[])
    }

    /// Where clients reach this server: `SAMVAD_PUBLIC_URL`, or the request's own host.
    fn base_url(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        if let Some(url) = &self.settings.public_url {
            return Ok(url.clone());
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            })
            .ok_or_else(|| ApiError::bad_request("the request has no valid Host header"))?;
        let https = headers
            .get("x-forwarded-proto")
            .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
        Ok(format!("{}://{host}", if https { "https" } else { "http" }))
    }

    fn path(&self, file_id: &str) -> PathBuf {
        self.dir.join(file_id)
    }

    /// The size of the file's bytes, if they are all here (an upload checks the limits
    /// before it puts a file in place).
    pub(super) async fn uploaded_size(&self, asset: &Asset) -> Result<Option<u64>, ApiError> {
        match tokio::fs::metadata(self.path(&asset.file_id)).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ApiError::unavailable(format!(
                "cannot read {}: {e}",
                asset.file_id
            ))),
        }
    }

    pub(super) async fn remove(&self, file_id: &str) {
        match tokio::fs::remove_file(self.path(file_id)).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file_id, error = %e, "cannot delete an expired upload"),
        }
    }

    /// Deletes the pieces of uploads that were cut short (a dropped connection, a crash).
    pub(super) async fn remove_stale_parts(&self) {
        let Ok(mut entries) = tokio::fs::read_dir(&*self.dir).await else {
            return;
        };
        let stale = self.settings.url_ttl + STALE_PART_GRACE;
        while let Ok(Some(entry)) = entries.next_entry().await {
            let is_part = entry.file_name().to_string_lossy().contains(".part.");
            let old = entry
                .metadata()
                .await
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > stale);
            if is_part && old {
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
    }
}

/// The file routes, each where its handler's `#[utoipa::path]` says (under [`FILES`]).
pub(super) fn api() -> OpenApiRouter<(Disk, Stores)> {
    OpenApiRouter::new().routes(routes!(fetch, store))
}

pub(super) fn routes<S>(disk: Disk, stores: Stores) -> Router<S> {
    let (router, _) = api().split_for_parts();
    router.with_state((disk, stores))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Signed {
    /// When the URL stops working (seconds since the Unix epoch).
    expires: u64,
    /// Binds the method, the path, the expiry and (for an upload) the content type.
    signature: String,
}

fn refused() -> ApiError {
    ApiError::forbidden("this URL is not valid: it has expired or was altered")
}

/// The asset a signed request is about, once its signature checks out.
async fn signed_asset(
    stores: &Stores,
    disk: &Disk,
    method: &str,
    file_id: &str,
    signed: &Signed,
) -> Result<Asset, ApiError> {
    if !is_file_id(file_id) {
        return Err(refused());
    }
    let asset = stores.assets.asset(file_id).await?.ok_or_else(refused)?;
    let path = format!("{FILES}/{file_id}");
    let mut parts = vec![method, path.as_str()];
    if method == "PUT" {
        parts.push(&asset.content_type);
    }
    if !disk
        .signer
        .verify(&parts, signed.expires, &signed.signature)
    {
        return Err(refused());
    }
    Ok(asset)
}

/// The media type of a `Content-Type` header, without parameters, lower case.
fn essence(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next()?.trim().to_ascii_lowercase())
}

/// Upload a file (local storage)
///
/// The upload URL `GET /v1.0/assets/upload/presigned_url` answers, when attachments are kept
/// on the server's disk (`SAMVAD_ASSETS_STORAGE=local`, the default): the file's bytes, with
/// the content type that answer named.
#[utoipa::path(put, path = "/v1.0/assets/files/{file_id}", operation_id = "uploadFile", tag = "assets", params(
        ("file_id" = String, Path, description = "The `fileId`"), Signed),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The file, with the `Content-Type` its upload URL was issued for"),
    responses(
        (status = 201, description = "Stored; mark it uploaded next"),
        (status = 403, description = "The URL has expired or was altered", body = ErrorBody),
        (status = 409, description = "The file is marked uploaded already", body = ErrorBody),
        (status = 413, description = "Larger than the size limit", body = ErrorBody),
        (status = 415, description = "Not the content type the URL was issued for", body = ErrorBody)))]
async fn store(
    State((disk, stores)): State<(Disk, Stores)>,
    Path(file_id): Path<String>,
    Query(signed): Query<Signed>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let asset = signed_asset(&stores, &disk, "PUT", &file_id, &signed).await?;
    if asset.size.is_some() {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            message: format!("{file_id} is uploaded and marked already; it cannot change"),
        });
    }
    if essence(&headers).as_deref() != Some(asset.content_type.as_str()) {
        return Err(ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message: format!(
                "this upload must have Content-Type {} (its extension {})",
                asset.content_type, asset.ext
            ),
        });
    }
    let max = disk.settings.max_bytes;
    let too_large = || ApiError::too_large(format!("a file may be at most {max} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }

    let part = disk
        .dir
        .join(format!("{file_id}.part.{:016x}", rand::random::<u64>()));
    let written = write_part(&part, body, max).await;
    let done = match written {
        Ok(_) => {
            // Into place only while the upload is still pending: the sweeper may have expired
            // it meanwhile, or a concurrent upload been marked.
            match stores.assets.asset(&file_id).await {
                Ok(Some(now)) if now.size.is_none() => {
                    tokio::fs::rename(&part, disk.path(&file_id))
                        .await
                        .map_err(ApiError::internal)
                        .and(sync_dir(&disk.dir).await)
                }
                Ok(_) => Err(refused()),
                Err(e) => Err(e.into()),
            }
        }
        Err(Written::TooLarge) => Err(too_large()),
        Err(Written::Body(e)) => Err(ApiError::bad_request(format!(
            "the upload was cut short: {e}"
        ))),
        Err(Written::Disk(e)) => {
            tracing::error!(file_id, error = %e, "cannot store an upload");
            Err(ApiError::unavailable("cannot store the file now"))
        }
    };
    if done.is_err() {
        let _ = tokio::fs::remove_file(&part).await;
    }
    done.map(|()| StatusCode::OK)
}

enum Written {
    TooLarge,
    Body(axum::Error),
    Disk(std::io::Error),
}

/// Streams `body` into a new file at `part`, at most `max` bytes, and syncs it.
async fn write_part(part: &std::path::Path, body: Body, max: u64) -> Result<u64, Written> {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(part).await.map_err(Written::Disk)?;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(Written::Body)?;
        total += chunk.len() as u64;
        if total > max {
            return Err(Written::TooLarge);
        }
        file.write_all(&chunk).await.map_err(Written::Disk)?;
    }
    file.sync_all().await.map_err(Written::Disk)?;
    Ok(total)
}

/// Makes a rename in `dir` durable.
async fn sync_dir(dir: &std::path::Path) -> Result<(), ApiError> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

/// Download a file (local storage)
///
/// The download URL `GET /v1.0/assets/download/{file_id}/presigned_url` answers when
/// attachments are kept on the server's disk.
#[utoipa::path(get, path = "/v1.0/assets/files/{file_id}", operation_id = "downloadFile", tag = "assets", params(
        ("file_id" = String, Path, description = "The `fileId`"), Signed),
    responses(
        (status = 200, description = "The file, with its content type", content_type = "application/octet-stream"),
        (status = 403, description = "The URL has expired or was altered", body = ErrorBody),
        (status = 404, description = "Not uploaded", body = ErrorBody)))]
async fn fetch(
    State((disk, stores)): State<(Disk, Stores)>,
    Path(file_id): Path<String>,
    Query(signed): Query<Signed>,
) -> Result<Response, ApiError> {
    let asset = signed_asset(&stores, &disk, "GET", &file_id, &signed).await?;
    let gone = || ApiError::not_found(format!("{file_id} has not been uploaded"));
    if asset.size.is_none() {
        return Err(gone());
    }
    let file = tokio::fs::File::open(disk.path(&file_id))
        .await
        .map_err(|_| gone())?;
    let len = file.metadata().await.map_err(ApiError::internal)?.len();
    let name = format!("{file_id}{}", asset.ext);
    Ok((
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CONTENT_LENGTH, len.to_string()),
            // Never run as a page of this origin, whatever the bytes are.
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
            (header::CONTENT_SECURITY_POLICY, "sandbox".into()),
            (
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"{name}\""),
            ),
            (header::CACHE_CONTROL, "private, max-age=3600".into()),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    )
        .into_response())
}

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &std::path::Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn attachments_are_readable_by_the_server_alone() {
        let root = std::env::temp_dir().join(format!("samvad-assets-{}", rand::random::<u64>()));
        let dir = root.join("assets");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700, "an existing directory is made private");
        let part = dir.join("a.part.1");
        let written = write_part(&part, Body::from("bytes"), 100).await;
        assert!(matches!(written, Ok(5)));
        assert_eq!(mode(&part), 0o600);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
