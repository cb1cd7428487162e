//! Samvad's settings, shared sections and each service's: every one an environment variable and a flag of the same meaning (`--help` lists
//! them, `.env.tmpl` documents them), which a `.env` file in the working directory may also
//! give ([`Environment`]). Values are read as text and checked together by
//! [`Config::validate`], so a bad start-up reports every problem at once.
//!
//! The loader takes its environment as a parameter, so tests never touch the process's.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser};

mod assets;
mod backends;
mod hosts;
mod push;

pub use assets::{AssetArgs, AssetSettings, AssetStorage, S3Settings};
pub use backends::{BackendArgs, BusSettings, PresenceSettings, StoreSettings};
pub use hosts::AllowedHosts;
pub use push::{PushArgs, PushSettings};

/// Every setting any service reads. Services use the sections they need.
#[derive(Debug, Clone, Parser)]
#[command(
    version,
    about = "Samvad chat server",
    long_about = "Samvad chat server.\n\nThe all-in-one `samvad` takes an optional first \
                  argument: `serve` (every service; the default) or one service's name \
                  (ws-gateway, rest-gateway, profile, group, message-router, group-router, \
                  delivery, push, assets, www), or `vapid-keys` to print a new Web Push key pair. \
                  Every binary also takes `check-config`: it prints each setting as the process \
                  would take it (secrets hidden) and every problem with them."
)]
pub struct Config {
    /// Address the HTTP/WebSocket server binds.
    #[arg(long, env = "SAMVAD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// Address the MQTT door (3.1.1 and 5, TCP) binds; unset, none. MQTT over WebSocket is
    /// served at `/mqtt` on SAMVAD_LISTEN whenever a ws-gateway runs.
    #[arg(long, env = "SAMVAD_MQTT_LISTEN")]
    pub mqtt_listen: Option<String>,

    /// Address the gRPC door (HTTP/2, `samvad.chat.v1.Chat` with health and reflection) binds;
    /// unset, none.
    #[arg(long, env = "SAMVAD_GRPC_LISTEN")]
    pub grpc_listen: Option<String>,

    /// Seconds after which a gRPC connection is asked to move on (GOAWAY): calls in progress go
    /// on, new ones come on a new connection, which may reach another gateway. Also how long a
    /// connection that opens no call is kept.
    #[arg(
        long,
        env = "SAMVAD_GRPC_MAX_CONNECTION_AGE_SECS",
        default_value = "1800"
    )]
    pub grpc_max_connection_age_secs: String,

    /// The `{app}` of MQTT topics: `apps/{app}/users/{user}/…`.
    #[arg(long, env = "SAMVAD_MQTT_APP", default_value = "samvad")]
    pub mqtt_app: String,

    /// Where the embedded store keeps its files.
    #[arg(long, env = "SAMVAD_DATA_DIR", default_value = "./samvad-data")]
    pub data_dir: PathBuf,

    /// Log format: `human` or `json`. The filter is RUST_LOG (default `info`).
    #[arg(long, env = "SAMVAD_LOG_FORMAT", default_value = "human")]
    pub log_format: String,

    /// An OpenTelemetry collector's OTLP/HTTP address (`http://collector:4318`): each span is
    /// also exported there, to `/v1/traces`. Unset: spans are only logged.
    #[arg(long, env = "SAMVAD_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    #[command(flatten)]
    pub backends: BackendArgs,

    /// This process's stable id, unique among the replicas of its services (a StatefulSet pod
    /// name). A ws-gateway's deliveries travel on a topic named after it; Kafka consumers join
    /// their groups as static members under it, so a restart takes its partitions back at once.
    /// Unset: a random id per start and dynamic group membership.
    #[arg(long, env = "SAMVAD_INSTANCE_ID")]
    pub instance_id: Option<String>,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub push: PushArgs,

    #[command(flatten)]
    pub assets: AssetArgs,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Login and access keys")]
pub struct AuthArgs {
    /// Login token check: `jwks`, or `dev` (accept any token for any username: for trying
    /// Samvad on one's own machine). Required: a server never lets anyone log in as anyone
    /// unless asked to.
    #[arg(long, env = "SAMVAD_AUTH_PROVIDER")]
    pub auth_provider: Option<String>,

    /// Allow the `dev` provider on a non-loopback address (`1` to allow).
    #[arg(long, env = "SAMVAD_ALLOW_DEV_AUTH", default_value = "0")]
    pub allow_dev_auth: String,

    /// `jwks`: URL of the JSON Web Key Set that signs login tokens.
    #[arg(long, env = "SAMVAD_AUTH_JWKS_URL")]
    pub auth_jwks_url: Option<String>,

    /// `jwks`: required `iss` of login tokens.
    #[arg(long, env = "SAMVAD_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,

    /// `jwks`: required `aud` of login tokens.
    #[arg(long, env = "SAMVAD_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,

    /// `jwks`: Firebase project id; presets the JWKS URL, issuer and audience for Firebase
    /// phone-auth ID tokens.
    #[arg(long, env = "SAMVAD_AUTH_FIREBASE_PROJECT")]
    pub auth_firebase_project: Option<String>,

    /// `jwks`: the token claim that must equal the username.
    #[arg(
        long,
        env = "SAMVAD_AUTH_USERNAME_CLAIM",
        default_value = "phone_number"
    )]
    pub auth_username_claim: String,

    /// Access-key signing secrets, `kid:secret` comma separated (secrets of 32+ bytes); the
    /// first signs, all verify. Unset: one is generated and kept in the data directory.
    #[arg(long, env = "SAMVAD_ACCESS_KEY_SECRETS", hide_env_values = true)]
    pub access_key_secrets: Option<String>,

    /// Lifetime of an access key, in seconds.
    #[arg(long, env = "SAMVAD_ACCESS_KEY_TTL_SECS", default_value = "2592000")]
    pub access_key_ttl_secs: String,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Limits, drain and retention")]
pub struct LimitArgs {
    /// Largest frame or message accepted, in bytes.
    #[arg(long, env = "SAMVAD_MAX_MESSAGE_BYTES", default_value = "65536")]
    pub max_message_bytes: String,

    /// Messages per second one connection may send (sustained), and one user through every door
    /// of the process together, client acks aside.
    #[arg(long, env = "SAMVAD_RATE_LIMIT", default_value = "50")]
    pub rate_limit: String,

    /// Messages one connection, or one user through every door, may send in a burst.
    #[arg(long, env = "SAMVAD_RATE_BURST", default_value = "200")]
    pub rate_burst: String,

    /// Seconds a write to a client may stay blocked (the client reads nothing) before the
    /// connection is closed.
    #[arg(long, env = "SAMVAD_SLOW_CLIENT_SECS", default_value = "10")]
    pub slow_client_secs: String,

    /// Logins one username may make per minute (and at once); more get 429.
    #[arg(long, env = "SAMVAD_LOGINS_PER_MINUTE", default_value = "10")]
    pub logins_per_minute: String,

    /// Contact syncs one user may make per minute (and at once); more get 429.
    #[arg(long, env = "SAMVAD_CONTACT_SYNCS_PER_MINUTE", default_value = "30")]
    pub contact_syncs_per_minute: String,

    /// Seconds a client has to send a request's line and headers, and on a kept-alive HTTP
    /// connection to start its next request; slower connections are closed.
    #[arg(long, env = "SAMVAD_REQUEST_HEAD_SECS", default_value = "10")]
    pub request_head_secs: String,

    /// Most WebSocket connections one user may hold open on one gateway.
    #[arg(long, env = "SAMVAD_MAX_CONNECTIONS_PER_USER", default_value = "32")]
    pub max_connections_per_user: String,

    /// Most devices one user may have linked; a login from one more unlinks the device that
    /// logged in longest ago.
    #[arg(long, env = "SAMVAD_MAX_DEVICES_PER_USER", default_value = "10")]
    pub max_devices_per_user: String,

    /// Seconds a stopping process keeps serving, not ready, before it closes connections.
    #[arg(long, env = "SAMVAD_DRAIN_SECS", default_value = "5")]
    pub drain_secs: String,

    /// Seconds over which a stopping process spreads the closing of its WebSockets (1001).
    #[arg(long, env = "SAMVAD_CLOSE_SPREAD_SECS", default_value = "5")]
    pub close_spread_secs: String,

    /// Seconds a stored message is kept in its conversation's history (0: for ever).
    #[arg(long, env = "SAMVAD_RETENTION_SECS", default_value = "0")]
    pub retention_secs: String,

    /// Most members a group may have, its creator included.
    #[arg(long, env = "SAMVAD_MAX_GROUP_MEMBERS", default_value = "1024")]
    pub max_group_members: String,

    /// A bearer token `GET /metrics` asks for (`Authorization: Bearer <token>`); unset, the
    /// metrics are open to whoever reaches the port.
    #[arg(long, env = "SAMVAD_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// Web origins allowed to open WebSockets, comma separated, besides the server's own
    /// host; `*` allows any.
    #[arg(long, env = "SAMVAD_ALLOWED_ORIGINS", default_value = "")]
    pub allowed_origins: String,

    /// Host names requests may address, comma separated; `*` for any. Unset: any, unless the
    /// server listens on loopback, where only loopback names and SAMVAD_PUBLIC_URL's host.
    #[arg(long, env = "SAMVAD_ALLOWED_HOSTS", default_value = "")]
    pub allowed_hosts: String,
}

/// Which login-token check to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthProvider {
    Dev,
    Jwks {
        jwks_url: String,
        issuer: String,
        audience: String,
        username_claim: String,
    },
}

/// The checked, typed form of [`Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub mqtt_listen: Option<SocketAddr>,
    pub grpc_listen: Option<SocketAddr>,
    pub grpc_max_connection_age: Duration,
    pub mqtt_app: String,
    pub data_dir: PathBuf,
    pub json_logs: bool,
    /// Where spans are exported (OTLP/HTTP, traces at `{endpoint}/v1/traces`), if anywhere.
    pub otlp_traces: Option<String>,
    /// [`Config::instance_id`], or a random id for this run.
    pub instance_id: String,
    pub auth: AuthProvider,
    pub access_key_secrets: Option<Vec<(String, Vec<u8>)>>,
    pub access_key_ttl: Duration,
    pub max_message_bytes: usize,
    pub rate_limit: u32,
    pub rate_burst: u32,
    pub max_group_members: usize,
    pub slow_client: Duration,
    pub request_head: Duration,
    pub logins_per_minute: u32,
    pub contact_syncs_per_minute: u32,
    pub max_connections_per_user: usize,
    pub max_devices_per_user: usize,
    pub drain: Duration,
    pub close_spread: Duration,
    /// How long history is kept; `None`: for ever.
    pub retention: Option<Duration>,
    pub allowed_origins: Vec<String>,
    pub allowed_hosts: AllowedHosts,
    pub metrics_token: Option<String>,
    pub push: PushSettings,
    pub assets: AssetSettings,
    pub bus: BusSettings,
    pub store: StoreSettings,
    pub presence: PresenceSettings,
}

impl Config {
    /// Parses `args` (the first is the program name) with `env` standing in for the process
    /// environment.
    pub fn parse_with_env<I, T>(args: I, env: &HashMap<String, String>) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        parse_with_env(args, env)
    }

    /// Checks every setting, reporting all problems together.
    pub fn validate(&self) -> Result<Settings, Vec<String>> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, problem: String| {
            if !ok {
                problems.push(problem);
            }
        };

        let listen = self.listen.parse::<SocketAddr>();
        check(
            listen.is_ok(),
            format!(
                "SAMVAD_LISTEN: `{}` is not an address like 127.0.0.1:8080",
                self.listen
            ),
        );
        let mqtt_listen = self.mqtt_listen.as_deref().map(str::parse::<SocketAddr>);
        check(
            !matches!(mqtt_listen, Some(Err(_))),
            format!(
                "SAMVAD_MQTT_LISTEN: `{}` is not an address like 127.0.0.1:1883",
                self.mqtt_listen.as_deref().unwrap_or_default()
            ),
        );
        let grpc_listen = self.grpc_listen.as_deref().map(str::parse::<SocketAddr>);
        check(
            !matches!(grpc_listen, Some(Err(_))),
            format!(
                "SAMVAD_GRPC_LISTEN: `{}` is not an address like 127.0.0.1:50051",
                self.grpc_listen.as_deref().unwrap_or_default()
            ),
        );
        let mqtt_app_ok = !self.mqtt_app.is_empty()
            && !self.mqtt_app.contains(['/', '+', '#'])
            && !self.mqtt_app.chars().any(char::is_control);
        check(
            mqtt_app_ok,
            format!(
                "SAMVAD_MQTT_APP: `{}` must be one topic level: not empty, no `/`, `+` or `#`",
                self.mqtt_app
            ),
        );
        let json_logs = self.log_format == "json";
        check(
            matches!(self.log_format.as_str(), "human" | "json"),
            format!(
                "SAMVAD_LOG_FORMAT: `{}` is not `human` or `json`",
                self.log_format
            ),
        );
        let otlp_traces = self
            .otlp_endpoint
            .as_deref()
            .filter(|e| !e.is_empty())
            .and_then(|endpoint| match url::Url::parse(endpoint) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
                    Some(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
                }
                _ => {
                    check(
                        false,
                        format!(
                            "SAMVAD_OTLP_ENDPOINT: `{endpoint}` is not an http(s) URL such as \
                             http://collector:4318"
                        ),
                    );
                    None
                }
            });
        if let Some(id) = &self.instance_id {
            check(
                !id.is_empty()
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                format!("SAMVAD_INSTANCE_ID: `{id}` must be letters, digits, `-` or `_`"),
            );
        }

        let push = self.push.validate(&mut problems);
        let assets = self.assets.validate(&mut problems);
        let (bus, store, presence) = self
            .backends
            .validate(self.instance_id.as_deref(), &mut problems);
        let loopback = listen.as_ref().is_ok_and(|a| a.ip().is_loopback());
        let auth = self.auth.validate(loopback, &mut problems);
        let access_key_secrets = self.auth.access_key_secrets.as_deref().map(|list| {
            list.split(',')
                .filter_map(|entry| match entry.split_once(':') {
                    Some((kid, secret)) if !kid.is_empty() && secret.len() >= 32 => {
                        Some((kid.to_owned(), secret.as_bytes().to_vec()))
                    }
                    _ => {
                        problems.push(
                            "SAMVAD_ACCESS_KEY_SECRETS: every entry must be `kid:secret` with a \
                             secret of at least 32 bytes"
                                .into(),
                        );
                        None
                    }
                })
                .collect::<Vec<_>>()
        });
        if bus != BusSettings::Memory && access_key_secrets.is_none() {
            problems.push(
                "SAMVAD_ACCESS_KEY_SECRETS: required with a broker's bus (SAMVAD_BUS=kafka or \
                 nats): every process must verify the access keys the profile service signs"
                    .into(),
            );
        }
        let ttl = number(
            &mut problems,
            "SAMVAD_ACCESS_KEY_TTL_SECS",
            &self.auth.access_key_ttl_secs,
            60..=31_536_000,
        );
        let max_message_bytes = number(
            &mut problems,
            "SAMVAD_MAX_MESSAGE_BYTES",
            &self.limits.max_message_bytes,
            256..=16 * 1024 * 1024,
        );
        // A message travels in one broker record, beside a group's member list: Kafka and
        // NATS refuse records over 1 MB by default (Kafka's producer and broker, NATS's
        // max_payload), and a record a broker refuses could never be delivered.
        if matches!(self.backends.bus.as_str(), "kafka" | "nats")
            && max_message_bytes > BROKER_MAX_MESSAGE_BYTES
        {
            problems.push(format!(
                "SAMVAD_MAX_MESSAGE_BYTES: {max_message_bytes} is more than SAMVAD_BUS={} \
                 carries ({BROKER_MAX_MESSAGE_BYTES}: one record of 1 MB holds a message with a \
                 group's members)",
                self.backends.bus
            ));
        }
        let rate_limit = number(
            &mut problems,
            "SAMVAD_RATE_LIMIT",
            &self.limits.rate_limit,
            1..=1_000_000,
        );
        let rate_burst = number(
            &mut problems,
            "SAMVAD_RATE_BURST",
            &self.limits.rate_burst,
            1..=1_000_000,
        );
        let slow_client_secs = number(
            &mut problems,
            "SAMVAD_SLOW_CLIENT_SECS",
            &self.limits.slow_client_secs,
            1..=600,
        );
        let request_head_secs = number(
            &mut problems,
            "SAMVAD_REQUEST_HEAD_SECS",
            &self.limits.request_head_secs,
            1..=600,
        );
        let grpc_max_connection_age_secs = number(
            &mut problems,
            "SAMVAD_GRPC_MAX_CONNECTION_AGE_SECS",
            &self.grpc_max_connection_age_secs,
            1..=86_400,
        );
        let logins_per_minute = number(
            &mut problems,
            "SAMVAD_LOGINS_PER_MINUTE",
            &self.limits.logins_per_minute,
            1..=100_000,
        );
        let contact_syncs_per_minute = number(
            &mut problems,
            "SAMVAD_CONTACT_SYNCS_PER_MINUTE",
            &self.limits.contact_syncs_per_minute,
            1..=100_000,
        );
        let max_connections_per_user = number(
            &mut problems,
            "SAMVAD_MAX_CONNECTIONS_PER_USER",
            &self.limits.max_connections_per_user,
            1..=10_000,
        );
        let max_devices_per_user = number(
            &mut problems,
            "SAMVAD_MAX_DEVICES_PER_USER",
            &self.limits.max_devices_per_user,
            1..=1_000,
        );
        let drain_secs = number(
            &mut problems,
            "SAMVAD_DRAIN_SECS",
            &self.limits.drain_secs,
            0..=600,
        );
        let close_spread_secs = number(
            &mut problems,
            "SAMVAD_CLOSE_SPREAD_SECS",
            &self.limits.close_spread_secs,
            0..=600,
        );
        let retention_secs = number(
            &mut problems,
            "SAMVAD_RETENTION_SECS",
            &self.limits.retention_secs,
            0..=100 * 365 * 86_400,
        );
        let max_group_members = number(
            &mut problems,
            "SAMVAD_MAX_GROUP_MEMBERS",
            &self.limits.max_group_members,
            2..=100_000,
        );

        if let Some(token) = self.limits.metrics_token.as_deref()
            && !token.is_empty()
            && token.len() < 16
        {
            problems.push(
                "SAMVAD_METRICS_TOKEN must be at least 16 characters (it guards /metrics)".into(),
            );
        }
        let allowed_hosts = self.allowed_hosts(listen.as_ref().ok(), &assets);
        match (listen, auth) {
            (Ok(listen), Some(auth)) if problems.is_empty() => Ok(Settings {
                listen,
                mqtt_listen: mqtt_listen.and_then(Result::ok),
                grpc_listen: grpc_listen.and_then(Result::ok),
                mqtt_app: self.mqtt_app.clone(),
                data_dir: self.data_dir.clone(),
                json_logs,
                otlp_traces,
                instance_id: self
                    .instance_id
                    .clone()
                    .unwrap_or_else(|| format!("gw-{}", uuid::Uuid::now_v7().simple())),
                auth,
                access_key_secrets,
                access_key_ttl: Duration::from_secs(ttl),
                max_message_bytes: max_message_bytes as usize,
                rate_limit: rate_limit as u32,
                rate_burst: rate_burst as u32,
                max_group_members: max_group_members as usize,
                slow_client: Duration::from_secs(slow_client_secs),
                request_head: Duration::from_secs(request_head_secs),
                grpc_max_connection_age: Duration::from_secs(grpc_max_connection_age_secs),
                logins_per_minute: logins_per_minute as u32,
                contact_syncs_per_minute: contact_syncs_per_minute as u32,
                max_connections_per_user: max_connections_per_user as usize,
                max_devices_per_user: max_devices_per_user as usize,
                drain: Duration::from_secs(drain_secs),
                close_spread: Duration::from_secs(close_spread_secs),
                retention: (retention_secs > 0).then(|| Duration::from_secs(retention_secs)),
                allowed_origins: self
                    .limits
                    .allowed_origins
                    .split(',')
                    .map(str::trim)
                    .filter(|o| !o.is_empty())
                    .map(str::to_owned)
                    .collect(),
                allowed_hosts,
                metrics_token: self.limits.metrics_token.clone().filter(|t| !t.is_empty()),
                push,
                assets,
                bus,
                store,
                presence,
            }),
            _ => Err(problems),
        }
    }

    /// Every environment variable the configuration reads.
    pub fn env_names() -> Vec<String> {
        Self::command()
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect()
    }
}

impl AuthArgs {
    fn validate(&self, loopback: bool, problems: &mut Vec<String>) -> Option<AuthProvider> {
        let Some(provider) = self.auth_provider.as_deref() else {
            problems.push(
                "SAMVAD_AUTH_PROVIDER (--auth-provider): required: `jwks` to check login tokens \
                 against your identity provider, or `dev` to accept any token for any username \
                 (to try Samvad on your own machine)"
                    .into(),
            );
            return None;
        };
        match provider {
            "dev" => {
                if !loopback && self.allow_dev_auth != "1" {
                    problems.push(
                        "SAMVAD_AUTH_PROVIDER: `dev` accepts any login token; it is refused on a \
                         non-loopback address unless SAMVAD_ALLOW_DEV_AUTH=1"
                            .into(),
                    );
                    return None;
                }
                Some(AuthProvider::Dev)
            }
            "jwks" => {
                let project = self.auth_firebase_project.as_deref();
                let pick = |given: &Option<String>, preset: Option<String>, name: &str| {
                    given.clone().or(preset).ok_or_else(|| {
                        format!("{name}: required with SAMVAD_AUTH_PROVIDER=jwks (or set SAMVAD_AUTH_FIREBASE_PROJECT)")
                    })
                };
                let jwks_url = pick(
                    &self.auth_jwks_url,
                    project.map(|_| samvad_auth::JwksConfig::firebase("").jwks_url),
                    "SAMVAD_AUTH_JWKS_URL",
                );
                let issuer = pick(
                    &self.auth_issuer,
                    project.map(|p| samvad_auth::JwksConfig::firebase(p).issuer),
                    "SAMVAD_AUTH_ISSUER",
                );
                let audience = pick(
                    &self.auth_audience,
                    project.map(str::to_owned),
                    "SAMVAD_AUTH_AUDIENCE",
                );
                match (jwks_url, issuer, audience) {
                    (Ok(jwks_url), Ok(issuer), Ok(audience)) => Some(AuthProvider::Jwks {
                        jwks_url,
                        issuer,
                        audience,
                        username_claim: self.auth_username_claim.clone(),
                    }),
                    (a, b, c) => {
                        problems.extend([a.err(), b.err(), c.err()].into_iter().flatten());
                        None
                    }
                }
            }
            other => {
                problems.push(format!(
                    "SAMVAD_AUTH_PROVIDER: `{other}` is not `dev` or `jwks`"
                ));
                None
            }
        }
    }
}

/// The largest message the cluster shape carries (see `SAMVAD_MAX_MESSAGE_BYTES`).
const BROKER_MAX_MESSAGE_BYTES: u64 = 512 * 1024;

impl Config {
    /// What `SAMVAD_ALLOWED_HOSTS` says, or the default for where the server listens: a server
    /// on loopback is meant to be reached as localhost (or behind a proxy on the same host), so
    /// it answers for loopback names and its public URL's host only.
    fn allowed_hosts(&self, listen: Option<&SocketAddr>, assets: &AssetSettings) -> AllowedHosts {
        let names: Vec<String> = self
            .limits
            .allowed_hosts
            .split(',')
            .map(|h| hosts::host_name(h.trim()))
            .filter(|h| !h.is_empty())
            .collect();
        if names.iter().any(|h| h == "*") {
            return AllowedHosts::Any;
        }
        if !names.is_empty() {
            return AllowedHosts::Only {
                names,
                loopback: false,
            };
        }
        if !listen.is_some_and(|addr| addr.ip().is_loopback()) {
            return AllowedHosts::Any;
        }
        let public = assets.public_url.as_deref().and_then(|url| {
            let authority = url.split_once("://")?.1.split('/').next()?;
            Some(hosts::host_name(authority))
        });
        AllowedHosts::Only {
            names: public.into_iter().collect(),
            loopback: true,
        }
    }
}

pub(crate) fn number(
    problems: &mut Vec<String>,
    name: &str,
    value: &str,
    range: std::ops::RangeInclusive<u64>,
) -> u64 {
    match value.parse::<u64>() {
        Ok(n) if range.contains(&n) => n,
        _ => {
            problems.push(format!(
                "{name}: `{value}` is not a whole number from {} to {}",
                range.start(),
                range.end()
            ));
            *range.start()
        }
    }
}

/// The file of settings a process reads from its working directory, as `.env.tmpl` says.
pub const ENV_FILE: &str = ".env";

/// What a process is given besides its command line: its environment, over the settings in
/// [`ENV_FILE`] if there is one. A variable set in the environment wins over the file.
///
/// The file is `KEY=VALUE` lines (`export ` before one is allowed), blank lines and `#`
/// comments; a later line wins over an earlier one. A value is taken as it is written: one
/// pair of quotes around it is removed, and nothing else is changed — no `$NAME` expansion and
/// no escapes, so a secret reads the same from the file as from the environment. (The dotenv
/// crates expand `$` in values and repeat the line they cannot read in their error, which
/// would put a secret in the log: hence the few lines here.)
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub vars: HashMap<String, String>,
    /// Those whose value came from the file.
    from_file: HashSet<String>,
}

impl Environment {
    /// The process's environment over `./.env`; an error names the file, and the line, it
    /// cannot read.
    pub fn read() -> Result<Self, String> {
        Self::over_file(std::env::vars().collect(), Path::new(ENV_FILE))
    }

    fn over_file(mut vars: HashMap<String, String>, file: &Path) -> Result<Self, String> {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::from(vars)),
            Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
        };
        let mut given = HashMap::new();
        for (n, line) in text.trim_start_matches('\u{feff}').lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // Never the line itself in the error: it may hold a secret.
            let (var, value) = env_line(line).ok_or_else(|| {
                format!("{} line {}: not a KEY=VALUE setting", file.display(), n + 1)
            })?;
            given.insert(var.to_owned(), value.to_owned());
        }
        let mut from_file = HashSet::new();
        for (var, value) in given {
            if !vars.contains_key(&var) {
                vars.insert(var.clone(), value);
                from_file.insert(var);
            }
        }
        Ok(Self { vars, from_file })
    }
}

/// `KEY=VALUE` (or `export KEY=VALUE`), the value without one pair of quotes around it.
fn env_line(line: &str) -> Option<(&str, &str)> {
    let line = line.strip_prefix("export ").unwrap_or(line);
    let (var, value) = line.split_once('=')?;
    let var = var.trim();
    let named = !var.is_empty()
        && !var.starts_with(|c: char| c.is_ascii_digit())
        && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !named {
        return None;
    }
    let value = value.trim();
    let unquoted = ['"', '\'']
        .iter()
        .find_map(|&q| value.strip_prefix(q)?.strip_suffix(q));
    Some((var, unquoted.unwrap_or(value)))
}

impl From<HashMap<String, String>> for Environment {
    fn from(vars: HashMap<String, String>) -> Self {
        Self {
            vars,
            from_file: HashSet::new(),
        }
    }
}

/// One setting as a process given `args` and `env` would take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// Its environment variable.
    pub var: String,
    /// Its value as it may be shown: a secret hidden, a URL's password too; `None` if unset.
    pub shown: Option<String>,
    /// Where the value came from: `flag`, `environment`, `.env` or `default`.
    pub source: &'static str,
}

impl Config {
    /// Every setting as a process given `args` (its own name first) and `env` would take it,
    /// in `--help`'s order, secrets hidden.
    pub fn effective(args: &[String], env: &Environment) -> Vec<Effective> {
        Self::command()
            .get_arguments()
            .filter_map(|arg| {
                let var = arg.get_env()?.to_string_lossy().into_owned();
                let flag = format!("--{}", arg.get_long()?);
                let given =
                    args.iter()
                        .enumerate()
                        .find_map(|(i, a)| match a.strip_prefix(&flag) {
                            Some(rest) if rest.starts_with('=') => Some(rest[1..].to_owned()),
                            Some("") => args.get(i + 1).cloned(),
                            _ => None,
                        });
                let (value, source) = match (given, env.vars.get(&var)) {
                    (Some(value), _) => (Some(value), "flag"),
                    (None, Some(value)) if env.from_file.contains(&var) => {
                        (Some(value.clone()), ENV_FILE)
                    }
                    (None, Some(value)) => (Some(value.clone()), "environment"),
                    (None, None) => (
                        arg.get_default_values()
                            .first()
                            .map(|v| v.to_string_lossy().into_owned()),
                        "default",
                    ),
                };
                let shown = value.map(|v| {
                    if arg.is_hide_env_values_set() && !v.is_empty() {
                        "(set, hidden)".to_owned()
                    } else {
                        without_password(&v)
                    }
                });
                Some(Effective { var, shown, source })
            })
            .collect()
    }
}

/// `value` with the password of a URL in it (`redis://:secret@host`) hidden.
fn without_password(value: &str) -> String {
    match url::Url::parse(value) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("hidden"));
            url.to_string()
        }
        _ => value.to_owned(),
    }
}

/// clap reads `env` attributes from the process environment; this strips them and feeds
/// values from `env` instead, as flags, unless the same flag is on the command line.
fn parse_with_env<P, I, T>(args: I, env: &HashMap<String, String>) -> Result<P, clap::Error>
where
    P: CommandFactory + FromArgMatches,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut extra = Vec::new();
    let command = P::command();
    for arg in command.get_arguments() {
        let (Some(var), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        let flag = format!("--{long}");
        let given = args.iter().any(|a| {
            a.to_str()
                .is_some_and(|a| a == flag || a.starts_with(&format!("{flag}=")))
        });
        if let Some(value) = env.get(&*var.to_string_lossy())
            && !given
        {
            extra.push(OsString::from(format!("{flag}={value}")));
        }
    }
    // `--help` shows each setting's variable; parsing must not read the process's.
    let wants_help = args.iter().any(|a| a == "-h" || a == "--help");
    let command = if wants_help {
        command
    } else {
        command.mut_args(|a| a.env(None::<&str>))
    };
    let mut all = args;
    all.extend(extra);
    let matches = command.try_get_matches_from(all)?;
    P::from_arg_matches(&matches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_settings_say_where_each_came_from_and_hide_secrets() {
        let args: Vec<String> = ["samvad", "--listen", "0.0.0.0:9000", "--rate-limit=7"]
            .map(String::from)
            .to_vec();
        let env = env(&[
            ("SAMVAD_REDIS_URL", "redis://:hunter2@cache:6379"),
            (
                "SAMVAD_ACCESS_KEY_SECRETS",
                "k1:0123456789abcdef0123456789abcdef",
            ),
            ("SAMVAD_RATE_LIMIT", "9"),
            ("SAMVAD_METRICS_TOKEN", "scrape-me-0123456789"),
        ]);
        let all = Config::effective(&args, &env.into());
        let find = |var: &str| all.iter().find(|s| s.var == var).unwrap().clone();
        let shown = |var: &str| (find(var).shown, find(var).source);
        assert_eq!(
            shown("SAMVAD_LISTEN"),
            (Some("0.0.0.0:9000".into()), "flag")
        );
        assert_eq!(shown("SAMVAD_RATE_LIMIT"), (Some("7".into()), "flag"));
        assert_eq!(shown("SAMVAD_RATE_BURST"), (Some("200".into()), "default"));
        assert_eq!(
            shown("SAMVAD_REDIS_URL"),
            (Some("redis://:hidden@cache:6379".into()), "environment")
        );
        for secret in ["SAMVAD_ACCESS_KEY_SECRETS", "SAMVAD_METRICS_TOKEN"] {
            assert_eq!(shown(secret), (Some("(set, hidden)".into()), "environment"));
        }
        assert_eq!(shown("SAMVAD_INSTANCE_ID"), (None, "default"));
        let listed = format!("{all:?}");
        assert!(!listed.contains("hunter2") && !listed.contains("0123456789abcdef"));
    }

    #[test]
    fn a_dotenv_file_gives_what_the_environment_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".env");
        std::fs::write(
            &file,
            "\u{feff}# copied from .env.tmpl\nSAMVAD_RATE_LIMIT=6\nexport SAMVAD_RATE_BURST=3\n\n\
             SAMVAD_AUTH_PROVIDER=\"dev\"\nSAMVAD_METRICS_TOKEN='pa$word\\x \"q\"'\n\
             SAMVAD_RATE_LIMIT=7\n",
        )
        .unwrap();
        let given = env(&[("SAMVAD_RATE_BURST", "9")]);
        let env = Environment::over_file(given.clone(), &file).unwrap();
        let all = Config::effective(&["samvad".into()], &env);
        let shown = |var: &str| {
            let s = all.iter().find(|s| s.var == var).unwrap();
            (s.shown.clone().unwrap(), s.source)
        };
        assert_eq!(shown("SAMVAD_RATE_LIMIT"), ("7".into(), ".env"));
        assert_eq!(shown("SAMVAD_RATE_BURST"), ("9".into(), "environment"));
        assert_eq!(shown("SAMVAD_AUTH_PROVIDER"), ("dev".into(), ".env"));
        assert_eq!(
            env.vars["SAMVAD_METRICS_TOKEN"], "pa$word\\x \"q\"",
            "as written: no expansion, no escapes"
        );

        let missing = Environment::over_file(given.clone(), &dir.path().join("none")).unwrap();
        assert_eq!(missing.vars, given);
        std::fs::write(
            &file,
            "SAMVAD_RATE_LIMIT=7\nsecret-123 in the wrong place\n",
        )
        .unwrap();
        let problem = Environment::over_file(given, &file).unwrap_err();
        assert!(problem.contains(".env line 2"), "{problem}");
        assert!(
            !problem.contains("secret-123"),
            "the line is not repeated: {problem}"
        );
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn env_template_documents_exactly_the_settings() {
        let template = include_str!("../../../.env.tmpl");
        let mut documented: Vec<String> = template
            .lines()
            .map(|l| l.trim_start_matches('#').trim())
            .filter_map(|l| l.split_once('='))
            .map(|(name, _)| name.to_owned())
            .filter(|name| name.starts_with("SAMVAD_"))
            .collect();
        documented.sort();
        let mut read = Config::env_names();
        read.sort();
        assert_eq!(documented, read);
        assert!(template.contains("RUST_LOG="));
    }

    #[test]
    fn defaults_run_on_loopback_once_a_login_check_is_chosen() {
        let problems = Config::parse_with_env(["samvad"], &env(&[]))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("SAMVAD_AUTH_PROVIDER")),
            "dev login is never the default: {problems:?}"
        );
        let config =
            Config::parse_with_env(["samvad", "--auth-provider", "dev"], &env(&[])).unwrap();
        let settings = config.validate().unwrap();
        assert_eq!(settings.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(settings.auth, AuthProvider::Dev);
        assert_eq!(settings.max_message_bytes, 65536);
    }

    #[test]
    fn environment_is_read_and_flags_win() {
        let e = env(&[
            ("SAMVAD_LISTEN", "127.0.0.1:9000"),
            ("SAMVAD_MAX_MESSAGE_BYTES", "1024"),
            ("SAMVAD_AUTH_PROVIDER", "dev"),
        ]);
        let config = Config::parse_with_env(["samvad", "--listen", "127.0.0.1:7000"], &e).unwrap();
        let settings = config.validate().unwrap();
        assert_eq!(settings.listen.port(), 7000);
        assert_eq!(settings.max_message_bytes, 1024);
    }

    #[test]
    fn a_message_limit_kafka_cannot_carry_is_refused() {
        let settings = |bytes: &str| {
            Config::parse_with_env(
                ["samvad"],
                &env(&[
                    ("SAMVAD_AUTH_PROVIDER", "dev"),
                    ("SAMVAD_BUS", "kafka"),
                    ("SAMVAD_KAFKA_BROKERS", "127.0.0.1:9092"),
                    (
                        "SAMVAD_ACCESS_KEY_SECRETS",
                        "k1:0123456789abcdef0123456789abcdef",
                    ),
                    ("SAMVAD_MAX_MESSAGE_BYTES", bytes),
                ]),
            )
            .unwrap()
            .validate()
        };
        assert_eq!(settings("524288").unwrap().max_message_bytes, 524_288);
        let problems = settings("1048576").unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("SAMVAD_MAX_MESSAGE_BYTES: 1048576 is more than")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_metrics_token_too_short_to_guard_anything_is_refused() {
        let validate = |token: &str| {
            Config::parse_with_env(
                ["samvad"],
                &env(&[
                    ("SAMVAD_AUTH_PROVIDER", "dev"),
                    ("SAMVAD_METRICS_TOKEN", token),
                ]),
            )
            .unwrap()
            .validate()
        };
        assert_eq!(validate("").unwrap().metrics_token, None, "empty is unset");
        assert_eq!(
            validate("0123456789abcdef")
                .unwrap()
                .metrics_token
                .as_deref(),
            Some("0123456789abcdef")
        );
        let problems = validate("secret").unwrap_err();
        assert!(
            problems[0].starts_with("SAMVAD_METRICS_TOKEN"),
            "{problems:?}"
        );
    }

    #[test]
    fn nats_settings_are_read_and_checked() {
        let validate = |extra: &[(&str, &str)]| {
            let mut vars = vec![
                ("SAMVAD_AUTH_PROVIDER", "dev"),
                ("SAMVAD_BUS", "nats"),
                (
                    "SAMVAD_ACCESS_KEY_SECRETS",
                    "k1:0123456789abcdef0123456789abcdef",
                ),
            ];
            vars.extend_from_slice(extra);
            Config::parse_with_env(["samvad"], &env(&vars))
                .unwrap()
                .validate()
        };
        let settings = validate(&[
            ("SAMVAD_NATS_URL", "tls://n1:4222,tls://n2:4222"),
            ("SAMVAD_NATS_REPLICAS", "3"),
            ("SAMVAD_INSTANCE_ID", "delivery-0"),
        ])
        .unwrap();
        assert_eq!(
            settings.bus,
            BusSettings::Nats(samvad_bus::NatsConfig {
                url: "tls://n1:4222,tls://n2:4222".into(),
                credentials: None,
                ca_file: None,
                prefix: "samvad.".into(),
                partitions: 6,
                replicas: 3,
                instance: Some("delivery-0".into()),
            })
        );
        let problems = validate(&[
            ("SAMVAD_NATS_REPLICAS", "2"),
            ("SAMVAD_NATS_CREDENTIALS", "/nonexistent/samvad.creds"),
            ("SAMVAD_MAX_MESSAGE_BYTES", "1048576"),
        ])
        .unwrap_err()
        .join("\n");
        for expected in [
            "SAMVAD_NATS_URL: required with SAMVAD_BUS=nats",
            "SAMVAD_NATS_REPLICAS: 2 is even",
            "SAMVAD_NATS_CREDENTIALS: /nonexistent/samvad.creds is not a readable file",
            "SAMVAD_MAX_MESSAGE_BYTES: 1048576 is more than SAMVAD_BUS=nats carries",
        ] {
            assert!(
                problems.contains(expected),
                "{expected} missing from:\n{problems}"
            );
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = env(&[
            ("SAMVAD_LISTEN", "0.0.0.0:80"),
            ("SAMVAD_MAX_MESSAGE_BYTES", "lots"),
            ("SAMVAD_BUS", "carrier-pigeon"),
            ("SAMVAD_LOG_FORMAT", "xml"),
            ("SAMVAD_OTLP_ENDPOINT", "collector:4318"),
        ]);
        let problems = Config::parse_with_env(["samvad"], &e)
            .unwrap()
            .validate()
            .unwrap_err();
        let text = problems.join("\n");
        for name in [
            "SAMVAD_AUTH_PROVIDER",
            "SAMVAD_MAX_MESSAGE_BYTES",
            "SAMVAD_BUS",
            "SAMVAD_LOG_FORMAT",
            "SAMVAD_OTLP_ENDPOINT",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }

    #[test]
    fn spans_go_to_the_collector_s_traces_path() {
        let otlp = |endpoint: &str| {
            Config::parse_with_env(
                ["samvad"],
                &env(&[
                    ("SAMVAD_AUTH_PROVIDER", "dev"),
                    ("SAMVAD_OTLP_ENDPOINT", endpoint),
                ]),
            )
            .unwrap()
            .validate()
            .unwrap()
            .otlp_traces
        };
        assert_eq!(
            otlp("http://collector:4318/").as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(otlp(""), None, "empty is unset");
    }

    #[test]
    fn attachment_settings_are_checked_together() {
        let problems = Config::parse_with_env(
            ["samvad"],
            &env(&[
                ("SAMVAD_AUTH_PROVIDER", "dev"),
                ("SAMVAD_ASSETS_STORAGE", "s3"),
                ("SAMVAD_S3_ENDPOINT", "s3.example.com"),
                ("SAMVAD_ASSETS_TYPES", ".png=image/png,html"),
                ("SAMVAD_ASSETS_URL_TTL_SECS", "600"),
                ("SAMVAD_ASSETS_UPLOAD_TTL_SECS", "600"),
            ]),
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .join("\n");
        for expected in [
            "SAMVAD_S3_ENDPOINT: `s3.example.com`",
            "SAMVAD_S3_BUCKET: required",
            "SAMVAD_S3_ACCESS_KEY_ID: required",
            "SAMVAD_S3_SECRET_ACCESS_KEY: required",
            "SAMVAD_ASSETS_TYPES: `html`",
            "SAMVAD_ASSETS_UPLOAD_TTL_SECS: 600 must be more",
        ] {
            assert!(
                problems.contains(expected),
                "{expected} missing from:\n{problems}"
            );
        }
        let settings = Config::parse_with_env(["samvad", "--auth-provider", "dev"], &env(&[]))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(settings.assets.storage, AssetStorage::Local);
        assert_eq!(
            settings.assets.file_type(".PNG"),
            Some((".png", "image/png"))
        );
        assert_eq!(
            settings.assets.file_type("jpg"),
            Some((".jpg", "image/jpeg"))
        );
        assert_eq!(settings.assets.file_type(".svg"), None);
        assert_eq!(settings.assets.file_type("."), None);
    }

    #[test]
    fn dev_auth_is_refused_beyond_loopback_unless_allowed() {
        let e = env(&[
            ("SAMVAD_LISTEN", "0.0.0.0:80"),
            ("SAMVAD_AUTH_PROVIDER", "dev"),
        ]);
        let problems = Config::parse_with_env(["samvad"], &e)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(problems[0].contains("SAMVAD_ALLOW_DEV_AUTH"));
        let mut e = e;
        e.insert("SAMVAD_ALLOW_DEV_AUTH".into(), "1".into());
        let settings = Config::parse_with_env(["samvad"], &e)
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(settings.auth, AuthProvider::Dev);
    }

    #[test]
    fn firebase_preset_fills_jwks_settings() {
        let e = env(&[
            ("SAMVAD_AUTH_PROVIDER", "jwks"),
            ("SAMVAD_AUTH_FIREBASE_PROJECT", "chat-app"),
        ]);
        let settings = Config::parse_with_env(["samvad"], &e)
            .unwrap()
            .validate()
            .unwrap();
        let AuthProvider::Jwks {
            issuer,
            audience,
            username_claim,
            ..
        } = settings.auth
        else {
            panic!("expected jwks");
        };
        assert_eq!(issuer, "https://securetoken.google.com/chat-app");
        assert_eq!(audience, "chat-app");
        assert_eq!(username_claim, "phone_number");
    }
}
