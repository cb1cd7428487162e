//! A node: one process running one or more services over shared backends.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::serve::ListenerExt;
use prometheus_client::registry::Registry;
use samvad_auth::{AccessKeys, AuthError, JwksConfig, JwksVerifier, LoginProvider};
use samvad_bus::{Bus, BusError, InlineBus, KafkaBus, NatsBus};
use samvad_http::Gate;
use samvad_presence::{MemoryPresence, Presence, PresenceError, RedisPresence};
use samvad_sqlite::{Db, DbError};
use samvad_store::{EmbeddedStore, MongoStore, StoreError, Stores};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::PerUser;
use crate::metrics::Metrics;
use samvad_config::{
    AuthProvider, BusSettings, Config, Environment, PresenceSettings, Settings, StoreSettings,
};

/// How long a stopping node gives its in-flight work (requests, consumer batches, the consumers'
/// leaving their groups) once its connections are closed. The orchestrator's grace period must
/// exceed `SAMVAD_DRAIN_SECS` + `SAMVAD_CLOSE_SPREAD_SECS` + 1 s + this + [`STOP_RUNTIME`]
/// (`deployment/k8s/policy.py` checks it).
const STOP_WORK: Duration = Duration::from_secs(10);
/// How long the runtime then waits for blocking work (a consumer's close) before the process
/// exits anyway.
const STOP_RUNTIME: Duration = Duration::from_secs(1);

/// What a service's start gives: its routes, or why it could not start.
type StartFuture<'a> = Pin<Box<dyn Future<Output = Result<Router, Cause>> + Send + 'a>>;

/// Why a service or a task failed, as it said.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why a node could not start, or stopped with an error. Each says what was being done and
/// keeps what went wrong as its cause.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the database: {0}")]
    Database(#[from] DbError),
    #[error("connecting to the bus: {0}")]
    Bus(#[from] BusError),
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
    #[error("connecting to Redis: {0}")]
    Presence(#[from] PresenceError),
    #[error("access keys or login: {0}")]
    Auth(#[from] AuthError),
    #[error("building the HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    #[error("starting {service}: {source}")]
    Service {
        service: &'static str,
        #[source]
        source: Cause,
    },
    #[error("the HTTP server task: {0}")]
    Server(#[from] tokio::task::JoinError),
    #[error("a task failed (logged above)")]
    TaskFailed,
}

/// An error and its causes in one line, each cause once: an error whose message already
/// ends with its cause's (as ours say `what: cause`) is not repeated.
pub fn report(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let said = e.to_string();
        if !line.ends_with(&said) {
            line.push_str(": ");
            line.push_str(&said);
        }
        cause = e.source();
    }
    line
}

impl NodeError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// A service: its name (the binary and container name) and how to start it on a node. `start`
/// spawns the service's consumers with [`Context::spawn`] and returns its HTTP routes; `api`
/// describes those routes (OpenAPI), built from the same annotated handlers as the router
/// (`utoipa_axum::routes!`), so neither can name a route the other lacks.
#[derive(Clone, Copy)]
pub struct ServiceDef {
    pub name: &'static str,
    pub start: for<'a> fn(&'a Context) -> StartFuture<'a>,
    /// `None` for a service that serves no API routes.
    pub api: Option<fn() -> utoipa::openapi::OpenApi>,
}

/// What a service is given at its start: settings, backends, and the node's task and metric
/// plumbing. A service takes what it uses into a state of its own; its handlers do not reach
/// back here for backends.
#[derive(Clone)]
pub struct Context {
    pub settings: Arc<Settings>,
    pub bus: Arc<dyn Bus>,
    pub stores: Stores,
    pub presence: Arc<dyn Presence>,
    pub access_keys: Arc<AccessKeys>,
    /// What checks a client's credentials (the [`samvad_http::User`] of a route).
    pub gate: Gate,
    pub login: Arc<LoginProvider>,
    pub metrics: Metrics,
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) shutdown: CancellationToken,
    /// Cancelled at a stop signal (and by `shutdown`): `/readyz` turns 503 so that new work
    /// goes elsewhere, while everything here keeps serving.
    pub(crate) draining: CancellationToken,
    /// Cancelled once the drain period is over (and by `shutdown`): long-lived connections
    /// close, each at its own moment within the spread.
    pub(crate) closing: CancellationToken,
    pub(crate) registry: Mutex<Registry>,
    /// The embedded database, if this node has one, asked at `/readyz` whether it answers.
    pub(crate) db: Option<Db>,
    /// The bus, asked at `/readyz` whether every consumer holds its partitions: until it
    /// does, what is sent to this service waits.
    pub(crate) bus: Arc<dyn Bus>,
    /// The in-line bus, if this node runs one: consumers attach to it.
    pub(crate) inline: Option<InlineBus>,
    /// The bearer token `/metrics` asks for, if one is set.
    pub(crate) metrics_token: Option<String>,
    /// What each user may send here, through every door together.
    sends: PerUser,
    tasks: TaskTracker,
    failed: AtomicBool,
}

/// A route that takes a [`samvad_http::User`] on a service whose state is the context.
impl axum::extract::FromRef<Context> for Gate {
    fn from_ref(ctx: &Context) -> Self {
        ctx.gate.clone()
    }
}

impl Context {
    /// Cancelled when the node begins to stop.
    pub fn shutdown(&self) -> CancellationToken {
        self.shared.shutdown.clone()
    }

    /// Cancelled at a stop signal: the node is draining (`/readyz` says 503), so that new work
    /// goes elsewhere while it still serves.
    pub fn draining(&self) -> CancellationToken {
        self.shared.draining.clone()
    }

    /// What each user may send (acks aside) through this process, whatever the door or the
    /// connection: `SAMVAD_RATE_LIMIT` a second with bursts of `SAMVAD_RATE_BURST`, so that
    /// more sockets or another door do not buy a faster flood.
    pub fn sends(&self) -> &PerUser {
        &self.shared.sends
    }

    /// Cancelled when long-lived connections should close, each after a random delay within
    /// `SAMVAD_CLOSE_SPREAD_SECS` (a restart then brings no reconnect storm).
    pub fn closing(&self) -> CancellationToken {
        self.shared.closing.clone()
    }

    /// Runs a long-lived task the node waits for on shutdown. If it fails, the failure is
    /// logged and the whole node stops with an error: a crash-only service restarts from its
    /// committed positions rather than limp on.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), Cause>> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        self.shared.tasks.spawn(async move {
            if let Err(error) = task.await {
                tracing::error!(
                    task = name,
                    error = report(&*error),
                    "task failed; stopping"
                );
                shared.failed.store(true, Ordering::SeqCst);
                shared.shutdown.cancel();
            }
        });
    }

    /// Spawns a short task (one connection, one request's background work) that is waited for
    /// on shutdown but whose failure concerns only itself.
    pub fn spawn_detached<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.shared.tasks.spawn(task);
    }
}

/// A running node.
pub struct Node {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Node {
    /// The address the HTTP server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts stopping the node.
    pub fn stop(&self) {
        self.shared.shutdown.cancel();
    }

    /// Waits until the node has stopped (after [`Node::stop`], a signal or a failed task):
    /// until its tasks and its HTTP server are done, or [`STOP_WORK`] has passed, whichever
    /// comes first. A task still waiting then (on a broker, a store or Redis that no longer
    /// answers) is abandoned: nothing is lost by that, since offsets are committed only after
    /// effects and acks are sent only after writes.
    pub async fn stopped(self) -> Result<(), NodeError> {
        self.shared.shutdown.cancelled().await;
        self.shared.tasks.close();
        let done = async {
            self.shared.tasks.wait().await;
            self.server.await
        };
        match tokio::time::timeout(STOP_WORK, done).await {
            Ok(served) => served?,
            Err(_) => tracing::warn!(
                secs = STOP_WORK.as_secs(),
                "work still in progress after the stop allowance; stopping anyway"
            ),
        }
        if self.shared.failed.load(Ordering::SeqCst) {
            return Err(NodeError::TaskFailed);
        }
        Ok(())
    }
}

/// Builds the backends `settings` name and starts `services` on `listener`.
pub async fn start(
    settings: Settings,
    services: &[ServiceDef],
    listener: TcpListener,
) -> Result<Node, NodeError> {
    use_ring();
    let mut inline = None;
    let bus: Arc<dyn Bus> = match &settings.bus {
        BusSettings::Memory => {
            let bus = InlineBus::new();
            inline = Some(bus.clone());
            Arc::new(bus)
        }
        BusSettings::Kafka(config) => {
            let bus = KafkaBus::connect(config.clone()).await?;
            Arc::new(bus)
        }
        BusSettings::Nats(config) => {
            let bus = NatsBus::connect(config.clone()).await?;
            Arc::new(bus)
        }
    };
    let (db, stores) = match &settings.store {
        StoreSettings::Embedded => {
            std::fs::create_dir_all(&settings.data_dir).map_err(NodeError::io(format!(
                "creating data directory {}",
                settings.data_dir.display()
            )))?;
            let db = Db::open(&settings.data_dir.join("samvad.db"))?;
            let store = EmbeddedStore::open(db.clone()).await?;
            (Some(db), Stores::from(store))
        }
        StoreSettings::MongoDb { url, database } => (
            None,
            Stores::from(MongoStore::connect(url, database).await?),
        ),
    };
    let secrets = match &settings.access_key_secrets {
        Some(secrets) => secrets.clone(),
        None => vec![("local".into(), local_secret(&settings.data_dir)?)],
    };
    let access_keys = AccessKeys::new(secrets, settings.access_key_ttl)?;
    let login = match &settings.auth {
        AuthProvider::Dev => {
            tracing::warn!(
                "DEV AUTH: any login token is accepted for any username. For local use only; \
                 set SAMVAD_AUTH_PROVIDER=jwks for real users."
            );
            LoginProvider::Dev
        }
        AuthProvider::Jwks {
            jwks_url,
            issuer,
            audience,
            username_claim,
        } => LoginProvider::Jwks(JwksVerifier::new(
            JwksConfig {
                jwks_url: jwks_url.clone(),
                issuer: issuer.clone(),
                audience: audience.clone(),
                username_claim: username_claim.clone(),
            },
            reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        )?),
    };

    let presence: Arc<dyn Presence> = match &settings.presence {
        PresenceSettings::Memory => Arc::new(MemoryPresence::default()),
        PresenceSettings::Redis {
            urls,
            cluster,
            prefix,
            ttl,
        } => Arc::new(if *cluster {
            RedisPresence::connect_cluster(urls, prefix, *ttl).await
        } else {
            RedisPresence::connect(&urls[0], prefix, *ttl).await
        }?),
    };
    let metrics = Metrics::default();
    let mut registry = Registry::with_prefix("samvad");
    metrics.register(&mut registry);
    let shutdown = CancellationToken::new();
    let shared = Arc::new(Shared {
        draining: shutdown.child_token(),
        closing: shutdown.child_token(),
        shutdown,
        registry: Mutex::new(registry),
        db,
        bus: Arc::clone(&bus),
        inline,
        metrics_token: settings.metrics_token.clone(),
        sends: PerUser::new(crate::per_second(settings.rate_limit, settings.rate_burst)),
        tasks: TaskTracker::new(),
        failed: AtomicBool::new(false),
    });
    let access_keys = Arc::new(access_keys);
    let ctx = Context {
        settings: Arc::new(settings),
        bus,
        gate: Gate::new(Arc::clone(&access_keys), Arc::clone(&stores.profiles)),
        stores,
        presence,
        access_keys,
        login: Arc::new(login),
        metrics,
        shared: Arc::clone(&shared),
    };

    if let Some(every) = ctx.presence.heartbeat_every() {
        let presence = Arc::clone(&ctx.presence);
        let shutdown = ctx.shutdown();
        ctx.spawn("presence heartbeat", async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tick.tick() => {}
                }
                // A missed beat is retried on the next tick; entries outlive a few of them.
                if let Err(e) = presence.heartbeat().await {
                    tracing::warn!(error = %e, "presence heartbeat failed");
                }
            }
        });
    }

    let mut router = crate::http::routes(Arc::clone(&shared));
    for service in services {
        let routes = (service.start)(&ctx)
            .await
            .map_err(|source| NodeError::Service {
                service: service.name,
                source,
            })?;
        router = router.merge(routes);
        tracing::info!(service = service.name, "started");
    }

    router = router.layer(axum::middleware::from_fn(samvad_http::json_errors));
    // Answering for any host costs a request nothing.
    if ctx.settings.allowed_hosts != samvad_config::AllowedHosts::Any {
        router = router.layer(axum::middleware::from_fn_with_state(
            Arc::new(crate::http::HostCheck {
                allowed: ctx.settings.allowed_hosts.clone(),
                refused: ctx.metrics.refused_requests.clone(),
            }),
            crate::http::check_host,
        ));
    }
    let addr = listener
        .local_addr()
        .map_err(NodeError::io("reading the listener's address"))?;
    let shutdown = shared.shutdown.clone();
    // Without TCP_NODELAY, a small frame written while the client has not yet acknowledged the
    // previous one waits for its delayed ACK: 40 ms on Linux, on every busy chat connection.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let server = tokio::spawn(samvad_http::serve(
        listener,
        router,
        ctx.settings.request_head,
        shutdown,
    ));
    tracing::info!(%addr, "listening");
    Ok(Node {
        addr,
        shared,
        server,
    })
}

/// The access-key secret of a node that was given none: made once, kept in the data directory.
fn local_secret(data_dir: &Path) -> Result<Vec<u8>, NodeError> {
    let path = data_dir.join("access-key.secret");
    if let Ok(secret) = std::fs::read(&path)
        && secret.len() >= 32
    {
        return Ok(secret);
    }
    let secret: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..64)
            .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
            .collect()
    };
    write_private(&path, secret.as_bytes())
        .map_err(NodeError::io(format!("writing {}", path.display())))?;
    Ok(secret.into_bytes())
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// The `main` of every binary. With more than one service, the first argument may name one
/// (`samvad delivery`) or `serve` for all of them; otherwise all run.
pub fn main(services: &[ServiceDef]) -> ExitCode {
    let mut args: Vec<String> = std::env::args().collect();
    let env = match Environment::read() {
        Ok(env) => env,
        Err(problem) => {
            eprintln!("samvad cannot start: {problem}");
            return ExitCode::from(2);
        }
    };
    if args.get(1).map(String::as_str) == Some("check-config") {
        args.remove(1);
        return check_config(&args, &env);
    }
    let mut chosen = services.to_vec();
    if services.len() > 1
        && let Some(role) = args.get(1).filter(|a| !a.starts_with('-')).cloned()
    {
        args.remove(1);
        if role != "serve" {
            match services.iter().find(|s| s.name == role) {
                Some(service) => chosen = vec![*service],
                None => {
                    let names: Vec<&str> = services.iter().map(|s| s.name).collect();
                    eprintln!(
                        "unknown role `{role}`; use `serve` or one of: {}",
                        names.join(", ")
                    );
                    return ExitCode::from(2);
                }
            }
        }
    }
    let config = match Config::parse_with_env(&args, &env.vars) {
        Ok(config) => config,
        Err(e) => e.exit(),
    };
    let settings = match config.validate() {
        Ok(settings) => settings,
        Err(problems) => {
            eprintln!("samvad cannot start; fix these settings:");
            for p in problems {
                eprintln!("  - {p}");
            }
            return ExitCode::from(2);
        }
    };
    // One service: its name; all of them in one process: `samvad`.
    let name = match chosen.as_slice() {
        [one] => one.name,
        _ => "samvad",
    };
    use_ring();
    let exporting = init_tracing(
        settings.json_logs,
        env.vars.get("RUST_LOG"),
        settings.otlp_traces.as_deref(),
        name,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let stopped = runtime.block_on(run(settings, &chosen));
    // Not a plain drop, which would wait for every blocking thread however long it is stuck.
    runtime.shutdown_timeout(STOP_RUNTIME);
    // The spans still batched go out now (the exporter gives up after its own timeout).
    if let Some(provider) = exporting
        && let Err(e) = provider.shutdown()
    {
        tracing::warn!(error = %e, "spans not exported at the stop");
    }
    match stopped {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = report(&e), "stopped with an error");
            ExitCode::FAILURE
        }
    }
}

/// `check-config`: every setting as this process would take it (secrets hidden) and where it
/// came from, then every problem with them; exit status 0 when the process could start with
/// them, 2 when not.
fn check_config(args: &[String], env: &Environment) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for setting in Config::effective(args, env) {
        let value = setting.shown.as_deref().unwrap_or("(unset)");
        let _ = writeln!(out, "{}={value}  # {}", setting.var, setting.source);
    }
    let problems = match Config::parse_with_env(args, &env.vars) {
        Ok(config) => config.validate().err().unwrap_or_default(),
        Err(e) => vec![e.to_string()],
    };
    if problems.is_empty() {
        let _ = writeln!(out, "\nThese settings are usable.");
        return ExitCode::SUCCESS;
    }
    let _ = writeln!(out, "\nFix these settings:");
    for p in problems {
        let _ = writeln!(out, "  - {p}");
    }
    ExitCode::from(2)
}

async fn run(settings: Settings, services: &[ServiceDef]) -> Result<(), NodeError> {
    survive_file_size_limit();
    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(NodeError::io(format!("binding {}", settings.listen)))?;
    let (drain, spread) = (settings.drain, settings.close_spread);
    let node = start(settings, services, listener).await?;
    let shared = Arc::clone(&node.shared);
    tokio::spawn(async move {
        if wait_for_signal().await == Stop::Drain {
            // Not ready at once, so load balancers stop sending new work; serving on meanwhile.
            // A Ctrl-C cuts any of it short.
            tracing::info!(drain_secs = drain.as_secs(), "SIGTERM; draining");
            shared.draining.cancel();
            let phases = async {
                tokio::time::sleep(drain).await;
                tracing::info!(spread_secs = spread.as_secs(), "closing connections");
                shared.closing.cancel();
                // A margin for the last close handshakes.
                tokio::time::sleep(spread + Duration::from_secs(1)).await;
            };
            tokio::select! {
                () = phases => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        tracing::info!("stopping");
        shared.shutdown.cancel();
    });
    node.stopped().await
}

/// A write past the file-size limit (`ulimit -f`) raises SIGXFSZ, which kills the process by
/// default. Caught, the write fails with an I/O error instead: the messages in it are refused,
/// never acked, and writes work again once the limit is raised, as after a full disk.
fn survive_file_size_limit() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::from_raw(libc::SIGXFSZ)) {
            Ok(mut xfsz) => {
                tokio::spawn(async move {
                    while xfsz.recv().await.is_some() {
                        tracing::error!("a write went past the file-size limit and failed");
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot catch SIGXFSZ"),
        }
    }
}

/// How a signal asks the process to stop.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// SIGTERM (an orchestrator's rolling update): drain first.
    Drain,
    /// Ctrl-C (a person at a terminal): stop now.
    Now,
}

async fn wait_for_signal() -> Stop {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => Stop::Now,
                    _ = term.recv() => Stop::Drain,
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                Stop::Now
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        Stop::Now
    }
}

/// reqwest (push, JWK sets, the span exporter) is built without a TLS crypto provider of its
/// own; this process uses ring's. Installed before the first client is built: by `main`
/// before the span exporter, by `start` for a node started on its own (the tests').
fn use_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Logs as `filter` (`RUST_LOG`) says, `info` and above by default.
/// Logs to stdout, filtered by RUST_LOG; with `otlp` (a collector's traces URL), each span
/// is also exported there, in batches, under `service`. The provider returned is to be shut
/// down at the end, which sends what is still batched.
fn init_tracing(
    json: bool,
    filter: Option<&String>,
    otlp: Option<&str>,
    service: &'static str,
) -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _};
    let filter = filter
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // A log that cannot be written (a full disk under a log file, its file-size limit) must
    // cost only the lines: by default the subscriber would say so with `eprintln!`, which
    // panics when stderr fails too, and take down whichever thread logged — the database
    // writer, reporting the very failure, so that no write ever succeeded again.
    let lines = tracing_subscriber::fmt::layer().log_internal_errors(false);
    let lines = if json {
        lines.json().boxed()
    } else {
        lines.boxed()
    };
    let exporter = otlp.map(|endpoint| {
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .build()
    });
    let provider = match exporter {
        Some(Ok(exporter)) => Some(
            opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(service)
                        .build(),
                )
                .build(),
        ),
        Some(Err(e)) => {
            eprintln!("spans will not be exported: {e}");
            None
        }
        None => None,
    };
    let spans = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("samvad"))
            .boxed()
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(spans)
        .init();
    provider
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_names_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("delivering to alice")]
        struct Delivering(#[source] StoreError);
        let refused = StoreError::Backend(std::io::Error::other("connection refused").into());
        assert_eq!(
            report(&Delivering(refused)),
            "delivering to alice: storage backend: connection refused"
        );
        let bind = NodeError::io("binding 127.0.0.1:1")(std::io::Error::other("in use"));
        assert_eq!(report(&bind), "binding 127.0.0.1:1: in use");
    }
}
