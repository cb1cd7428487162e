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
    command: Vec<String>,
    /// Where to reach it, e.g. `redis://127.0.0.1:41234/`.
    pub url: String,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    fn spawn(program: &str, args: &[&str], url: String, port: u16, dir: tempfile::TempDir) -> Self {
        let command: Vec<String> = std::iter::once(program)
            .chain(args.iter().copied())
            .map(str::to_owned)
            .collect();
        Self {
            child: Self::start(&command, dir.path()),
            command,
            url,
            port,
            dir,
        }
    }

    fn start(command: &[String], dir: &Path) -> Child {
        Command::new(&command[0])
            .args(&command[1..])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); deployment/scripts/test installs it",
                    command[0]
                )
            })
    }

    /// Kills the server (SIGKILL, as a crash would) and starts it again on the same port and
    /// scratch directory; returns once it accepts connections.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::start(&self.command, self.dir.path());
        wait_for_port(self.port);
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
    redis_server(&[])
}

/// `redis-server` on a free port, without persistence, with `extra` arguments.
fn redis_server(extra: &[&str]) -> Server {
    let port = free_port();
    let p = port.to_string();
    let mut args = vec![
        "--bind",
        "127.0.0.1",
        "--port",
        &p,
        "--save",
        "",
        "--appendonly",
        "no",
    ];
    args.extend_from_slice(extra);
    Server::spawn(
        "redis-server",
        &args,
        format!("redis://127.0.0.1:{port}/"),
        port,
        scratch(),
    )
}

/// A private three-node Redis Cluster (no replicas, no persistence), every slot assigned.
pub struct RedisCluster {
    _nodes: Vec<Server>,
    /// `redis://` URLs of the nodes.
    pub urls: Vec<String>,
}

/// Starts three cluster-enabled `redis-server`s and joins them with `redis-cli --cluster create`.
pub fn redis_cluster() -> RedisCluster {
    let nodes: Vec<Server> = (0..3)
        .map(|_| {
            let bus = free_port().to_string();
            redis_server(&[
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus,
                "--cluster-config-file",
                "nodes.conf",
            ])
        })
        .collect();
    for node in &nodes {
        wait_for_port(node.port);
    }
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run redis-cli ({e}); deployment/scripts/test installs it")
        });
    assert!(
        created.status.success(),
        "redis-cli --cluster create: {}",
        String::from_utf8_lossy(&created.stdout)
    );
    for node in &nodes {
        let p = node.port.to_string();
        let ready = (0..300).any(|_| {
            let info = Command::new("redis-cli")
                .args(["-p", &p, "cluster", "info"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
                .unwrap_or(false);
            if !info {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            info
        });
        assert!(
            ready,
            "redis cluster node {p} never reported cluster_state:ok"
        );
    }
    let urls = nodes.iter().map(|n| n.url.clone()).collect();
    RedisCluster {
        _nodes: nodes,
        urls,
    }
}

/// A private Kafka-protocol broker (tansu, storing in SQLite in its scratch directory).
/// `url` is the bootstrap address `127.0.0.1:PORT`.
pub fn kafka() -> Server {
    let port = free_port();
    let dir = scratch();
    let listener = format!("tcp://127.0.0.1:{port}");
    // tansu reads the path after `sqlite://` relative to its working directory: the scratch.
    let storage = "sqlite://tansu.db".to_owned();
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

/// A private NATS server with JetStream, storing in its scratch directory: `url` is a
/// `nats://` URL. Up once this returns. The one `deployment/scripts/test` installs in
/// `target/tools/venv`, whatever `PATH` holds (the client needs NATS 2.10 or later).
pub fn nats() -> Server {
    let port = free_port();
    let dir = scratch();
    let p = port.to_string();
    let store = dir.path().join("jetstream").to_string_lossy().into_owned();
    let server = Server::spawn(
        &format!("{TOOLS}nats-server"),
        &[
            "--addr",
            "127.0.0.1",
            "--port",
            &p,
            "--jetstream",
            "--store_dir",
            &store,
        ],
        format!("nats://127.0.0.1:{port}"),
        port,
        dir,
    );
    wait_for_port(port);
    server
}

/// Where `deployment/scripts/test` installs the Python-packaged servers.
const TOOLS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/tools/venv/bin/");

/// A private MongoDB-wire server (SecantusDB, in memory): `url` is a `mongodb://` URL.
/// `secantusd-py` is looked up on `PATH`, then in the workspace's `target/tools/venv`, where
/// `deployment/scripts/test` installs it.
pub fn mongo() -> Server {
    let port = free_port();
    let venv = format!("{TOOLS}secantusd-py");
    let program = if Command::new("secantusd-py").arg("--help").output().is_ok() {
        "secantusd-py"
    } else {
        &venv
    };
    let p = port.to_string();
    Server::spawn(
        program,
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &p,
            "--storage-path",
            ":memory:",
            "--log-level",
            "WARNING",
        ],
        format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
        port,
        scratch(),
    )
}

/// The credentials [`s3`] checks signatures against.
pub const S3_ACCESS_KEY: &str = "samvad-test";
pub const S3_SECRET_KEY: &str = "samvad-test-secret-key-0123456789";
/// The bucket [`s3`] holds (a directory of its scratch).
pub const S3_BUCKET: &str = "assets";

/// A private S3-compatible server (`s3s-fs`, files in its scratch directory) that verifies
/// SigV4 signatures, presigned URLs included, with one bucket, [`S3_BUCKET`]. `url` is its
/// endpoint, for path-style requests.
pub fn s3() -> Server {
    let port = free_port();
    let dir = scratch();
    std::fs::create_dir(dir.path().join(S3_BUCKET))
        .unwrap_or_else(|e| panic!("cannot make the bucket's directory: {e}"));
    let p = port.to_string();
    let root = dir.path().to_string_lossy().into_owned();
    let server = Server::spawn(
        "s3s-fs",
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &p,
            "--access-key",
            S3_ACCESS_KEY,
            "--secret-key",
            S3_SECRET_KEY,
            &root,
        ],
        format!("http://127.0.0.1:{port}"),
        port,
        dir,
    );
    wait_for_port(port);
    server
}

/// Waits (up to 30 s) until something accepts connections on the loopback `port`.
pub fn wait_for_port(port: u16) {
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("nothing listens on 127.0.0.1:{port} after 30 s");
}
