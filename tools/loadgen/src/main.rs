//! samvad-load: the load generator behind docs/BENCHMARKS.md. One client drives Samvad and its
//! peers (Bun's WebSocket pub/sub, nats-server over WebSocket) with the same open-loop
//! schedule, from as many worker processes as the sockets need, and reports HDR latency
//! percentiles taken from each message's intended send time.

mod adapter;
mod coordinator;
mod grpc;
mod http;
mod mqtt;
mod plan;
mod procfs;
mod report;
mod stats;
mod wire;
mod worker;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "samvad-load", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one scenario against one target and print (or save) the result as JSON.
    Run(Box<coordinator::RunArgs>),
    /// Summarize the JSON results in a directory as a markdown report.
    Report {
        /// Directory of result files (`*.json`) written by `run --json`.
        dir: PathBuf,
        /// Where to write the markdown (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// One worker process (started by `run`; reads commands on stdin).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        spec: String,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Run(args) => {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(coordinator::run(*args))?;
            Ok(())
        }
        Cmd::Report { dir, out } => report::write(&dir, out.as_deref()),
        Cmd::Worker { spec } => {
            worker::main(serde_json::from_str(&spec).context("bad worker spec")?)
        }
    }
}
