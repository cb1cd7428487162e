//! The service harness every Samvad binary runs on: configuration, tracing, the backends a
//! service talks through (bus, stores, presence, auth), the HTTP server with `/healthz`,
//! `/readyz` and `/metrics`, tracked tasks and graceful shutdown. A service is a
//! [`ServiceDef`]; a binary is `kit::main` over one or more of them, so the same services run
//! one per process or all in one.

mod config;
mod consume;
mod error;
mod http;
mod metrics;
mod node;
mod user;

pub use config::{
    AuthProvider, BusSettings, Config, PresenceSettings, PushSettings, Settings, StoreSettings,
};
pub use error::{ApiError, JsonBody};
pub use metrics::{DoorLabel, Metrics, OutcomeLabel, ReasonLabel, TopicLabel};
pub use node::{Context, Node, ServiceDef, main, start};
pub use user::User;

/// mimalloc rather than glibc's malloc, whose per-thread arenas fragment under many
/// long-lived small allocations (a connection's buffers and queues): measured at 19,500 idle
/// connections, see docs/BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Milliseconds since the Unix epoch: the protocol's timestamps.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
