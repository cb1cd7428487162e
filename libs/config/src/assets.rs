//! Attachment settings: which files are accepted, how large, how long URLs and unfinished
//! uploads live, and where the bytes are kept.

use std::time::Duration;

use clap::Args;

use super::number;

/// The file types accepted when none are configured: pictures, video, voice and documents a
/// chat client shows or hands to another app. Nothing a browser would run as a page (HTML,
/// SVG) is among them.
const DEFAULT_TYPES: &str = ".jpg=image/jpeg,.jpeg=image/jpeg,.png=image/png,.gif=image/gif,\
.webp=image/webp,.heic=image/heic,.mp4=video/mp4,.mov=video/quicktime,.webm=video/webm,\
.mp3=audio/mpeg,.m4a=audio/mp4,.aac=audio/aac,.ogg=audio/ogg,.opus=audio/opus,.wav=audio/wav,\
.pdf=application/pdf,.txt=text/plain";

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Attachments")]
pub struct AssetArgs {
    /// Where attachment bytes are kept: `local` (files under the data directory, served by
    /// this process at signed URLs; one process, or a shared volume) or `s3` (an
    /// S3-compatible bucket, reached by clients through presigned URLs).
    #[arg(long, env = "SAMVAD_ASSETS_STORAGE", default_value = "local")]
    pub assets_storage: String,

    /// `s3`: the endpoint, as clients and the assets service both reach it
    /// (`https://s3.eu-west-1.amazonaws.com`, `http://minio:9000`).
    #[arg(long, env = "SAMVAD_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// `s3`: the bucket; it must exist.
    #[arg(long, env = "SAMVAD_S3_BUCKET")]
    pub s3_bucket: Option<String>,

    /// `s3`: the region the signatures name.
    #[arg(long, env = "SAMVAD_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,

    /// `s3`: `virtual-host` (`https://bucket.endpoint/key`, as AWS wants) or `path`
    /// (`https://endpoint/bucket/key`, as MinIO and most self-hosted servers want).
    #[arg(long, env = "SAMVAD_S3_URL_STYLE", default_value = "virtual-host")]
    pub s3_url_style: String,

    /// `s3`: the access key id the assets service signs with.
    #[arg(long, env = "SAMVAD_S3_ACCESS_KEY_ID")]
    pub s3_access_key_id: Option<String>,

    /// `s3`: its secret.
    #[arg(long, env = "SAMVAD_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,

    /// Largest attachment accepted, in bytes.
    #[arg(long, env = "SAMVAD_ASSETS_MAX_BYTES", default_value = "26214400")]
    pub assets_max_bytes: String,

    /// Accepted file types, comma separated `.ext=content/type` pairs; an upload must carry
    /// the content type of the extension it was asked for with.
    #[arg(long, env = "SAMVAD_ASSETS_TYPES", default_value = DEFAULT_TYPES)]
    pub assets_types: String,

    /// Most uploads one user may have pending (asked for, not yet marked) at once.
    #[arg(long, env = "SAMVAD_ASSETS_MAX_PENDING", default_value = "100")]
    pub assets_max_pending: String,

    /// Seconds an upload or download URL stays valid.
    #[arg(long, env = "SAMVAD_ASSETS_URL_TTL_SECS", default_value = "900")]
    pub assets_url_ttl_secs: String,

    /// Seconds an upload may stay unmarked before it is deleted; more than the URL lifetime.
    #[arg(long, env = "SAMVAD_ASSETS_UPLOAD_TTL_SECS", default_value = "86400")]
    pub assets_upload_ttl_secs: String,

    /// The URL clients reach this server at (`https://chat.example.com`), for the upload and
    /// download URLs of files kept on local disk. Unset: from each request's `Host` and
    /// `X-Forwarded-Proto` headers.
    #[arg(long, env = "SAMVAD_PUBLIC_URL")]
    pub public_url: Option<String>,
}

/// Where attachment bytes are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssetStorage {
    /// Under `<data dir>/assets/`.
    Local,
    S3(S3Settings),
}

#[derive(Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// `http://` or `https://`, without a trailing `/`.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// The checked attachment settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetSettings {
    pub storage: AssetStorage,
    pub max_bytes: u64,
    pub max_pending: u64,
    /// (extension with its dot, lower case; content type), in the configured order.
    pub types: Vec<(String, String)>,
    pub url_ttl: Duration,
    pub upload_ttl: Duration,
    /// Without a trailing `/`.
    pub public_url: Option<String>,
}

impl AssetSettings {
    /// An accepted extension (`png` or `.PNG`) as configured (`.png`), with its content type.
    pub fn file_type(&self, ext: &str) -> Option<(&str, &str)> {
        let ext = ext.strip_prefix('.').unwrap_or(ext);
        self.types
            .iter()
            .find(|(e, _)| e[1..].eq_ignore_ascii_case(ext))
            .map(|(e, t)| (e.as_str(), t.as_str()))
    }
}

fn is_http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

impl AssetArgs {
    pub(super) fn validate(&self, problems: &mut Vec<String>) -> AssetSettings {
        let max_bytes = number(
            problems,
            "SAMVAD_ASSETS_MAX_BYTES",
            &self.assets_max_bytes,
            1..=5 * 1024 * 1024 * 1024,
        );
        let max_pending = number(
            problems,
            "SAMVAD_ASSETS_MAX_PENDING",
            &self.assets_max_pending,
            1..=100_000,
        );
        let url_ttl = number(
            problems,
            "SAMVAD_ASSETS_URL_TTL_SECS",
            &self.assets_url_ttl_secs,
            1..=7 * 86_400,
        );
        let upload_ttl = number(
            problems,
            "SAMVAD_ASSETS_UPLOAD_TTL_SECS",
            &self.assets_upload_ttl_secs,
            2..=30 * 86_400,
        );
        if upload_ttl <= url_ttl {
            problems.push(format!(
                "SAMVAD_ASSETS_UPLOAD_TTL_SECS: {upload_ttl} must be more than \
                 SAMVAD_ASSETS_URL_TTL_SECS ({url_ttl}), or an upload could finish after it expired"
            ));
        }
        let mut types = Vec::new();
        for pair in self.assets_types.split(',').map(str::trim) {
            let token = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+-._".contains(&b))
            };
            match pair.split_once('=') {
                Some((ext, kind))
                    if ext.len() > 1
                        && ext.starts_with('.')
                        && token(&ext[1..])
                        && kind
                            .split_once('/')
                            .is_some_and(|(a, b)| token(a) && token(b)) =>
                {
                    types.push((ext.to_ascii_lowercase(), kind.to_ascii_lowercase()));
                }
                _ => problems.push(format!(
                    "SAMVAD_ASSETS_TYPES: `{pair}` is not `.ext=type/subtype`"
                )),
            }
        }
        let public_url = self.public_url.as_deref().map(|url| {
            if !is_http_url(url) {
                problems.push(format!(
                    "SAMVAD_PUBLIC_URL: `{url}` is not an http:// or https:// URL"
                ));
            }
            url.trim_end_matches('/').to_owned()
        });
        let storage = match self.assets_storage.as_str() {
            "local" => AssetStorage::Local,
            "s3" => self.s3(problems),
            other => {
                problems.push(format!(
                    "SAMVAD_ASSETS_STORAGE: `{other}` is not `local` or `s3`"
                ));
                AssetStorage::Local
            }
        };
        AssetSettings {
            storage,
            max_bytes,
            max_pending,
            types,
            url_ttl: Duration::from_secs(url_ttl),
            upload_ttl: Duration::from_secs(upload_ttl),
            public_url,
        }
    }
}

impl AssetArgs {
    fn s3(&self, problems: &mut Vec<String>) -> AssetStorage {
        let mut required = |value: &Option<String>, name: &str| match value {
            Some(v) if !v.is_empty() => v.clone(),
            _ => {
                problems.push(format!("{name}: required with SAMVAD_ASSETS_STORAGE=s3"));
                String::new()
            }
        };
        let endpoint = required(&self.s3_endpoint, "SAMVAD_S3_ENDPOINT");
        let bucket = required(&self.s3_bucket, "SAMVAD_S3_BUCKET");
        let access_key_id = required(&self.s3_access_key_id, "SAMVAD_S3_ACCESS_KEY_ID");
        let secret_access_key = required(&self.s3_secret_access_key, "SAMVAD_S3_SECRET_ACCESS_KEY");
        if !endpoint.is_empty() && !is_http_url(&endpoint) {
            problems.push(format!(
                "SAMVAD_S3_ENDPOINT: `{endpoint}` is not an http:// or https:// URL"
            ));
        }
        let path_style = match self.s3_url_style.as_str() {
            "path" => true,
            "virtual-host" => false,
            other => {
                problems.push(format!(
                    "SAMVAD_S3_URL_STYLE: `{other}` is not `virtual-host` or `path`"
                ));
                false
            }
        };
        AssetStorage::S3(S3Settings {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            bucket,
            region: self.s3_region.clone(),
            path_style,
            access_key_id,
            secret_access_key,
        })
    }
}
