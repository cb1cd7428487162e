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
pub struct AssetArgs {
    /// Largest attachment accepted, in bytes.
    #[arg(long, env = "SAMVAD_ASSETS_MAX_BYTES", default_value = "26214400")]
    pub assets_max_bytes: String,

    /// Accepted file types, comma separated `.ext=content/type` pairs; an upload must carry
    /// the content type of the extension it was asked for with.
    #[arg(long, env = "SAMVAD_ASSETS_TYPES", default_value = DEFAULT_TYPES)]
    pub assets_types: String,

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

/// The checked attachment settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetSettings {
    pub max_bytes: u64,
    /// (extension with its dot, lower case; content type), in the configured order.
    pub types: Vec<(String, String)>,
    pub url_ttl: Duration,
    pub upload_ttl: Duration,
    /// Without a trailing `/`.
    pub public_url: Option<String>,
}

impl AssetSettings {
    /// The content type of an extension (`png` or `.PNG`), if accepted.
    pub fn content_type(&self, ext: &str) -> Option<&str> {
        let ext = ext.strip_prefix('.').unwrap_or(ext).to_ascii_lowercase();
        self.types
            .iter()
            .find(|(e, _)| e[1..] == ext)
            .map(|(_, t)| t.as_str())
    }
}

impl AssetArgs {
    pub(super) fn validate(&self, problems: &mut Vec<String>) -> AssetSettings {
        let max_bytes = number(
            problems,
            "SAMVAD_ASSETS_MAX_BYTES",
            &self.assets_max_bytes,
            1..=5 * 1024 * 1024 * 1024,
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
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                problems.push(format!(
                    "SAMVAD_PUBLIC_URL: `{url}` is not an http:// or https:// URL"
                ));
            }
            url.trim_end_matches('/').to_owned()
        });
        AssetSettings {
            max_bytes,
            types,
            url_ttl: Duration::from_secs(url_ttl),
            upload_ttl: Duration::from_secs(upload_ttl),
            public_url,
        }
    }
}
