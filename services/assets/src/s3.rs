//! Attachments in an S3-compatible bucket, for the cluster: clients send and fetch the bytes
//! at SigV4-presigned URLs (made by `rusty-s3`; the upload's signature covers its content
//! type, so the store refuses another). A presigned `PUT` cannot bound the size, so the
//! upload is checked when it is marked (`HEAD`): an object too large or of another type is
//! deleted and refused.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use rusty_s3::actions::{DeleteObject, GetObject, HeadObject, PutObject};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use samvad_config::{AssetSettings, S3Settings};
use samvad_http::ApiError;
use samvad_store::Asset;

/// How long the assets service's own requests (`HEAD`, `DELETE`) are signed for.
const OWN_REQUEST_TTL: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub(super) struct S3 {
    bucket: Arc<Bucket>,
    credentials: Arc<Credentials>,
    http: reqwest::Client,
    settings: Arc<AssetSettings>,
}

impl S3 {
    pub(super) fn new(s3: &S3Settings, settings: Arc<AssetSettings>) -> anyhow::Result<Self> {
        let endpoint: url::Url = s3
            .endpoint
            .parse()
            .map_err(|e| anyhow::anyhow!("SAMVAD_S3_ENDPOINT `{}`: {e}", s3.endpoint))?;
        let style = if s3.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(endpoint, style, s3.bucket.clone(), s3.region.clone())
            .map_err(|e| anyhow::anyhow!("S3 bucket `{}`: {e}", s3.bucket))?;
        Ok(Self {
            bucket: Arc::new(bucket),
            credentials: Arc::new(Credentials::new(
                s3.access_key_id.clone(),
                s3.secret_access_key.clone(),
            )),
            http: reqwest::Client::builder().timeout(TIMEOUT).build()?,
            settings,
        })
    }

    pub(super) fn upload_url(&self, asset: &Asset) -> String {
        let mut put = PutObject::new(&self.bucket, Some(&self.credentials), &asset.file_id);
        put.headers_mut()
            .insert("content-type", asset.content_type.clone());
        put.sign(self.settings.url_ttl).into()
    }

    pub(super) fn download_url(&self, asset: &Asset) -> String {
        GetObject::new(&self.bucket, Some(&self.credentials), &asset.file_id)
            .sign(self.settings.url_ttl)
            .into()
    }

    pub(super) async fn uploaded_size(&self, asset: &Asset) -> Result<Option<u64>, ApiError> {
        let url = HeadObject::new(&self.bucket, Some(&self.credentials), &asset.file_id)
            .sign(OWN_REQUEST_TTL);
        let res = self
            .http
            .head(url)
            .send()
            .await
            .map_err(|e| ApiError::unavailable(format!("the object store: {e}")))?;
        match res.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            other => {
                return Err(ApiError::unavailable(format!(
                    "the object store answered {other}"
                )));
            }
        }
        let header = |name| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let size = header(reqwest::header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
        let kind = header(reqwest::header::CONTENT_TYPE).map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
        let refused = match (size, kind) {
            (Some(size), _) if size > self.settings.max_bytes => ApiError::too_large(format!(
                "a file may be at most {} bytes; this one is {size}",
                self.settings.max_bytes
            )),
            (Some(size), Some(kind)) if kind == asset.content_type => return Ok(Some(size)),
            (_, kind) => ApiError {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                message: format!(
                    "the upload is {}, not {} (its extension {})",
                    kind.as_deref().unwrap_or("of no type"),
                    asset.content_type,
                    asset.ext
                ),
            },
        };
        self.remove(&asset.file_id).await;
        Err(refused)
    }

    pub(super) async fn remove(&self, file_id: &str) {
        let url =
            DeleteObject::new(&self.bucket, Some(&self.credentials), file_id).sign(OWN_REQUEST_TTL);
        match self.http.delete(url).send().await {
            Ok(res) if res.status().is_success() || res.status() == StatusCode::NOT_FOUND => {}
            Ok(res) => tracing::warn!(file_id, status = %res.status(), "cannot delete an object"),
            Err(e) => tracing::warn!(file_id, error = %e, "cannot delete an object"),
        }
    }
}
