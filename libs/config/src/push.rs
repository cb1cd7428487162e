//! Push settings: which providers wake offline users' devices, and their credentials. The FCM
//! service-account file is read and checked here, at start-up, so a missing or broken file is
//! reported with every other problem rather than at the first push.

use std::fmt;
use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;

/// Google's OAuth 2.0 token endpoint, for a service-account file that names none.
const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Push")]
pub struct PushArgs {
    /// Push providers, comma separated: `log` (records what would be sent), `fcm` (Firebase
    /// Cloud Messaging HTTP v1) and/or `webpush` (browsers, VAPID). Empty: no pushes.
    #[arg(long, env = "SAMVAD_PUSH_PROVIDERS", default_value = "log")]
    pub push_providers: String,

    /// `fcm`: path to the Firebase service-account JSON (project_id, client_email,
    /// private_key, token_uri).
    #[arg(long, env = "SAMVAD_FCM_CREDENTIALS")]
    pub fcm_credentials: Option<PathBuf>,

    /// `fcm`: base URL of the FCM HTTP v1 API.
    #[arg(
        long,
        env = "SAMVAD_FCM_API_URL",
        default_value = "https://fcm.googleapis.com"
    )]
    pub fcm_api_url: String,

    /// `webpush`: the VAPID private key, a P-256 scalar in base64url (`samvad vapid-keys`
    /// makes one); the public key is derived from it.
    #[arg(long, env = "SAMVAD_VAPID_PRIVATE_KEY", hide_env_values = true)]
    pub vapid_private_key: Option<String>,

    /// `webpush`: how push services can reach the operator, a `mailto:` or `https:` URL.
    #[arg(long, env = "SAMVAD_VAPID_SUBJECT")]
    pub vapid_subject: Option<String>,
}

/// The checked push settings. A provider is on when its settings are present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSettings {
    pub log: bool,
    pub fcm: Option<FcmSettings>,
    pub webpush: Option<WebPushSettings>,
}

/// FCM HTTP v1: the service account that signs token requests, and where the API is.
#[derive(Clone, PartialEq, Eq)]
pub struct FcmSettings {
    /// The file the account was read from.
    pub credentials: PathBuf,
    pub project_id: String,
    pub client_email: String,
    /// PEM (PKCS#8) RSA private key.
    pub private_key: String,
    pub token_uri: String,
    /// Without a trailing `/`.
    pub api_url: String,
}

impl fmt::Debug for FcmSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FcmSettings")
            .field("credentials", &self.credentials)
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("private_key", &"<redacted>")
            .field("token_uri", &self.token_uri)
            .field("api_url", &self.api_url)
            .finish()
    }
}

/// Web Push with VAPID (RFC 8292).
#[derive(Clone, PartialEq, Eq)]
pub struct WebPushSettings {
    /// base64url, 32 bytes.
    pub private_key: String,
    pub subject: String,
}

impl fmt::Debug for WebPushSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebPushSettings")
            .field("private_key", &"<redacted>")
            .field("subject", &self.subject)
            .finish()
    }
}

/// The fields of a service-account file that FCM needs; the file has more.
#[derive(Deserialize)]
struct ServiceAccountFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    project_id: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    token_uri: Option<String>,
}

impl PushArgs {
    pub(super) fn validate(&self, problems: &mut Vec<String>) -> PushSettings {
        let (mut log, mut fcm, mut webpush) = (false, false, false);
        for provider in self
            .push_providers
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            match provider {
                "log" => log = true,
                "fcm" => fcm = true,
                "webpush" => webpush = true,
                other => problems.push(format!(
                    "SAMVAD_PUSH_PROVIDERS: `{other}` is not a provider; use `log`, `fcm` or \
                     `webpush`"
                )),
            }
        }
        PushSettings {
            log,
            fcm: self.fcm(fcm, problems),
            webpush: self.webpush(webpush, problems),
        }
    }

    fn fcm(&self, on: bool, problems: &mut Vec<String>) -> Option<FcmSettings> {
        let api_url = self.fcm_api_url.trim_end_matches('/').to_owned();
        if !on {
            if self.fcm_credentials.is_some() {
                problems.push(
                    "SAMVAD_FCM_CREDENTIALS: set, but `fcm` is not in SAMVAD_PUSH_PROVIDERS".into(),
                );
            }
            return None;
        }
        if !is_http_url(&api_url) {
            problems.push(format!(
                "SAMVAD_FCM_API_URL: `{}` is not an http(s) URL",
                self.fcm_api_url
            ));
        }
        let Some(path) = &self.fcm_credentials else {
            problems.push(
                "SAMVAD_FCM_CREDENTIALS: required with the `fcm` provider (the path to a \
                 Firebase service-account JSON file)"
                    .into(),
            );
            return None;
        };
        let shown = path.display();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                problems.push(format!("SAMVAD_FCM_CREDENTIALS: cannot read {shown}: {e}"));
                return None;
            }
        };
        let file: ServiceAccountFile = match serde_json::from_str(&text) {
            Ok(file) => file,
            Err(e) => {
                problems.push(format!(
                    "SAMVAD_FCM_CREDENTIALS: {shown} is not a service-account JSON file: {e}"
                ));
                return None;
            }
        };
        let mut found = true;
        if let Some(kind) = file.kind.as_deref().filter(|k| *k != "service_account") {
            problems.push(format!(
                "SAMVAD_FCM_CREDENTIALS: {shown} is a `{kind}` file, not a `service_account` one"
            ));
            found = false;
        }
        let mut field = |value: Option<String>, name: &str| match value.filter(|v| !v.is_empty()) {
            Some(v) => v,
            None => {
                problems.push(format!("SAMVAD_FCM_CREDENTIALS: {shown} has no `{name}`"));
                found = false;
                String::new()
            }
        };
        let project_id = field(file.project_id, "project_id");
        let client_email = field(file.client_email, "client_email");
        let private_key = field(file.private_key, "private_key");
        let token_uri = file.token_uri.unwrap_or_else(|| GOOGLE_TOKEN_URI.into());
        if !private_key.is_empty() && !private_key.contains("PRIVATE KEY-----") {
            problems.push(format!(
                "SAMVAD_FCM_CREDENTIALS: the `private_key` in {shown} is not a PEM private key"
            ));
            found = false;
        }
        if !is_http_url(&token_uri) {
            problems.push(format!(
                "SAMVAD_FCM_CREDENTIALS: the `token_uri` in {shown} is not an http(s) URL"
            ));
            found = false;
        }
        found.then(|| FcmSettings {
            credentials: path.clone(),
            project_id,
            client_email,
            private_key,
            token_uri,
            api_url,
        })
    }

    fn webpush(&self, on: bool, problems: &mut Vec<String>) -> Option<WebPushSettings> {
        if !on {
            for (value, name) in [
                (&self.vapid_private_key, "SAMVAD_VAPID_PRIVATE_KEY"),
                (&self.vapid_subject, "SAMVAD_VAPID_SUBJECT"),
            ] {
                if value.is_some() {
                    problems.push(format!(
                        "{name}: set, but `webpush` is not in SAMVAD_PUSH_PROVIDERS"
                    ));
                }
            }
            return None;
        }
        let key = match self.vapid_private_key.as_deref().map(str::trim) {
            // 32 bytes are 43 base64url characters (unpadded).
            Some(key) if is_vapid_key(key) => Some(key.trim_end_matches('=').to_owned()),
            Some(_) => {
                problems.push(
                    "SAMVAD_VAPID_PRIVATE_KEY: not a P-256 private key in base64url (43 \
                     characters); `samvad vapid-keys` makes one"
                        .into(),
                );
                None
            }
            None => {
                problems.push(
                    "SAMVAD_VAPID_PRIVATE_KEY: required with the `webpush` provider; `samvad \
                     vapid-keys` makes one"
                        .into(),
                );
                None
            }
        };
        let subject = match self.vapid_subject.as_deref().map(str::trim) {
            Some(s) if (s.starts_with("mailto:") && s.len() > 7) || s.starts_with("https://") => {
                Some(s.to_owned())
            }
            _ => {
                problems.push(
                    "SAMVAD_VAPID_SUBJECT: required with the `webpush` provider, a `mailto:` or \
                     `https:` URL where push services can reach you"
                        .into(),
                );
                None
            }
        };
        Some(WebPushSettings {
            private_key: key?,
            subject: subject?,
        })
    }
}

fn is_http_url(url: &str) -> bool {
    ["http://", "https://"].iter().any(|scheme| {
        url.strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty())
    })
}

fn is_vapid_key(key: &str) -> bool {
    let key = key.trim_end_matches('=');
    key.len() == 43
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::Config;
    use super::*;

    const KEY: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";

    fn push(pairs: &[(&str, &str)]) -> Result<PushSettings, Vec<String>> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::parse_with_env(["samvad", "--auth-provider", "dev"], &env)
            .unwrap()
            .validate()
            .map(|s| s.push)
    }

    /// A file in the temp directory, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(text: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("samvad-config-{}.json", uuid::Uuid::now_v7()));
            std::fs::write(&path, text).unwrap();
            Self(path)
        }
        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn log_is_the_default() {
        let settings = push(&[]).unwrap();
        assert_eq!(
            settings,
            PushSettings {
                log: true,
                fcm: None,
                webpush: None
            }
        );
        assert!(!push(&[("SAMVAD_PUSH_PROVIDERS", "")]).unwrap().log);
    }

    #[test]
    fn fcm_reads_the_service_account_file() {
        let file = TempFile::new(
            r#"{"type": "service_account", "project_id": "chat-app", "private_key_id": "k1",
                "private_key": "-----BEGIN PRIVATE KEY-----\nMII\n-----END PRIVATE KEY-----\n",
                "client_email": "push@chat-app.iam.gserviceaccount.com",
                "token_uri": "https://oauth2.googleapis.com/token"}"#,
        );
        let settings = push(&[
            ("SAMVAD_PUSH_PROVIDERS", "fcm, log"),
            ("SAMVAD_FCM_CREDENTIALS", file.path()),
            ("SAMVAD_FCM_API_URL", "http://127.0.0.1:9/"),
        ])
        .unwrap();
        assert!(settings.log);
        let fcm = settings.fcm.unwrap();
        assert_eq!(fcm.project_id, "chat-app");
        assert_eq!(fcm.client_email, "push@chat-app.iam.gserviceaccount.com");
        assert_eq!(fcm.api_url, "http://127.0.0.1:9");
        assert!(
            !format!("{fcm:?}").contains("BEGIN"),
            "the key is never shown"
        );
    }

    #[test]
    fn fcm_problems_are_reported() {
        let missing = push(&[("SAMVAD_PUSH_PROVIDERS", "fcm")]).unwrap_err();
        assert!(missing[0].contains("SAMVAD_FCM_CREDENTIALS: required"));

        let unreadable = push(&[
            ("SAMVAD_PUSH_PROVIDERS", "fcm"),
            ("SAMVAD_FCM_CREDENTIALS", "/nonexistent/samvad/sa.json"),
        ])
        .unwrap_err();
        assert!(unreadable[0].contains("cannot read /nonexistent/samvad/sa.json"));

        let garbage = TempFile::new("not json");
        let problems = push(&[
            ("SAMVAD_PUSH_PROVIDERS", "fcm"),
            ("SAMVAD_FCM_CREDENTIALS", garbage.path()),
        ])
        .unwrap_err();
        assert!(problems[0].contains("is not a service-account JSON file"));

        let incomplete = TempFile::new(r#"{"type": "service_account", "project_id": "p"}"#);
        let problems = push(&[
            ("SAMVAD_PUSH_PROVIDERS", "fcm"),
            ("SAMVAD_FCM_CREDENTIALS", incomplete.path()),
            ("SAMVAD_FCM_API_URL", "fcm.googleapis.com"),
        ])
        .unwrap_err()
        .join("\n");
        for expected in [
            "SAMVAD_FCM_API_URL",
            "no `client_email`",
            "no `private_key`",
        ] {
            assert!(
                problems.contains(expected),
                "{expected} missing from {problems}"
            );
        }
    }

    #[test]
    fn webpush_needs_a_key_and_a_subject() {
        let settings = push(&[
            ("SAMVAD_PUSH_PROVIDERS", "webpush"),
            ("SAMVAD_VAPID_PRIVATE_KEY", KEY),
            ("SAMVAD_VAPID_SUBJECT", "mailto:ops@example.com"),
        ])
        .unwrap();
        let webpush = settings.webpush.unwrap();
        assert_eq!(webpush.private_key, KEY);
        assert!(!format!("{webpush:?}").contains(KEY));

        let problems = push(&[
            ("SAMVAD_PUSH_PROVIDERS", "webpush"),
            ("SAMVAD_VAPID_PRIVATE_KEY", "too-short"),
            ("SAMVAD_VAPID_SUBJECT", "ops@example.com"),
        ])
        .unwrap_err()
        .join("\n");
        assert!(problems.contains("SAMVAD_VAPID_PRIVATE_KEY"));
        assert!(problems.contains("SAMVAD_VAPID_SUBJECT"));
    }

    #[test]
    fn credentials_without_their_provider_are_a_mistake() {
        let problems = push(&[
            ("SAMVAD_VAPID_PRIVATE_KEY", KEY),
            ("SAMVAD_FCM_CREDENTIALS", "/tmp/sa.json"),
            ("SAMVAD_PUSH_PROVIDERS", "log,carrier-pigeon"),
        ])
        .unwrap_err()
        .join("\n");
        for expected in [
            "`carrier-pigeon` is not a provider",
            "SAMVAD_FCM_CREDENTIALS: set, but `fcm`",
            "SAMVAD_VAPID_PRIVATE_KEY: set, but `webpush`",
        ] {
            assert!(
                problems.contains(expected),
                "{expected} missing from {problems}"
            );
        }
    }
}
