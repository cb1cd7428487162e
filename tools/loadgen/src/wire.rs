//! What the coordinator and its worker processes say to each other: one JSON object a line,
//! commands on the worker's stdin, events on its stdout.

use std::io::Write as _;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::plan::{Layout, Target};
use crate::stats::{Counts, WireStep};

/// Everything a worker needs to know, passed as one JSON argument.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub index: usize,
    pub target: Target,
    pub addr: String,
    /// The gRPC door's address (`samvad-grpc`).
    pub grpc_addr: Option<String>,
    pub layout: Layout,
    pub payload_bytes: usize,
    /// Local address to bind before connecting (spreads sockets over loopback addresses).
    pub source_ip: Option<Ipv4Addr>,
    pub connect_concurrency: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Open every connection (samvad: with these group ids, by room).
    Connect {
        groups: Vec<String>,
    },
    /// Send at `rate` msgs/s (this worker's share) from `start_ns` for `secs`.
    Step {
        index: usize,
        rate: f64,
        start_ns: u64,
        secs: f64,
    },
    /// Print the stats of step `index`; what arrives for it later counts as late.
    Report {
        index: usize,
    },
    Quit,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    LoggedIn {
        connections: usize,
    },
    Connected {
        ok: usize,
        failed: usize,
        error: Option<String>,
    },
    Progress(Progress),
    Step {
        index: usize,
        stats: WireStep,
        late: u64,
        closed: u64,
        error: Option<String>,
    },
}

/// A worker's counts so far: the current step's, and frames and closed connections in all.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Progress {
    pub step: Option<usize>,
    #[serde(flatten)]
    pub counts: Counts,
    pub frames: u64,
    pub closed: u64,
}

/// Prints one event line on stdout (the coordinator reads it from the pipe).
pub fn emit(event: &Event) -> anyhow::Result<()> {
    let line = serde_json::to_string(event)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}
