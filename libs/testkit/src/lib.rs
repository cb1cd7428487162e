//! Test-only helpers: private instances of the real servers the backends talk to, each on a
//! free loopback port with its own scratch directory, stopped when dropped. Tests that use them
//! share nothing, so they can run in parallel. `deployment/scripts/test` installs the servers.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// A child process stopped (SIGKILL) when dropped, with a scratch directory.
pub struct Server {
    child: Child,
    /// Where to reach it, e.g. `redis://127.0.0.1:41234/`.
    pub url: String,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    fn spawn(program: &str, args: &[&str], url: String, port: u16, dir: tempfile::TempDir) -> Self {
        let child = Command::new(program)
            .args(args)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {program} ({e}); deployment/scripts/test installs it")
            });
        Self {
            child,
            url,
            port,
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("no temp dir: {e}"))
}

/// A private `redis-server` without persistence.
pub fn redis() -> Server {
    let port = free_port();
    let p = port.to_string();
    Server::spawn(
        "redis-server",
        &[
            "--bind",
            "127.0.0.1",
            "--port",
            &p,
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        format!("redis://127.0.0.1:{port}/"),
        port,
        scratch(),
    )
}

/// A private Kafka-protocol broker (tansu, storing in SQLite in its scratch directory).
/// `url` is the bootstrap address `127.0.0.1:PORT`.
pub fn kafka() -> Server {
    let port = free_port();
    let dir = scratch();
    let listener = format!("tcp://127.0.0.1:{port}");
    let storage = format!("sqlite://{}/tansu.db", dir.path().display());
    Server::spawn(
        "tansu",
        &[
            "broker",
            "--listener-url",
            &listener,
            "--advertised-listener-url",
            &listener,
            "--storage-engine",
            &storage,
        ],
        format!("127.0.0.1:{port}"),
        port,
        dir,
    )
}
