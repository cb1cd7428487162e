//! The top-level command: starts the worker processes, sets the run up (samvad: groups),
//! drives the steps, merges what the workers measured and decides when to stop.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

use crate::http::{self, Http};
use crate::plan::{Layout, Scenario, Target};
use crate::procfs::{self, CpuTime};
use crate::report;
use crate::stats::{Clock, Counts, Latency, StepStats};
use crate::wire::{Command, Event, Progress, WorkerSpec};

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    #[arg(long, value_enum, default_value = "samvad")]
    pub target: Target,
    /// The server (samvad: its HTTP address; bun and nats: their WebSocket listener).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Samvad's gRPC door (`--target samvad-grpc`; logins still go to `--addr`).
    #[arg(long)]
    pub grpc_addr: Option<SocketAddr>,
    /// Idle: connections. One-to-one and multi-device: pairs. Fan-out: rooms.
    #[arg(long)]
    pub count: usize,
    /// Fan-out: members per room.
    #[arg(long, default_value = "10")]
    pub room_size: usize,
    /// Worker processes (default: one per 15,000 connections).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Offered rates, messages per second, one step each, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "5000,10000,20000,30000,50000,75000,100000"
    )]
    pub rates: Vec<f64>,
    #[arg(long, default_value = "10")]
    pub step_secs: f64,
    /// How long after a step's last send to wait for what is still in flight.
    #[arg(long, default_value = "5")]
    pub drain_secs: f64,
    /// The steps stop after one whose p99 exceeds this, or that lost a message.
    #[arg(long, default_value = "10")]
    pub stop_p99_ms: f64,
    /// Idle: how long to hold the connections once all are open.
    #[arg(long, default_value = "10")]
    pub hold_secs: f64,
    /// The server's processes (repeat the option, or give a comma list; for the cluster shape,
    /// every Samvad service). Summed over them: their RSS (idle: before and after connecting)
    /// and the CPU time they use in each step and its drain (user + system, from
    /// /proc/PID/stat), reported per delivery.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Processes the server depends on (the cluster's nginx, broker, stores), the same way:
    /// their CPU time per delivery is reported apart from the server's.
    #[arg(long, value_delimiter = ',')]
    pub dependency_pid: Vec<u32>,
    /// Bytes of text in each message body.
    #[arg(long, default_value = "32")]
    pub payload_bytes: usize,
    /// First loopback source address; worker w binds the third octet plus w. Default: one
    /// chosen per run, so sockets still in TIME_WAIT from a previous run are not in the way.
    #[arg(long)]
    pub source_ip: Option<Ipv4Addr>,
    /// Connections each worker opens at once.
    #[arg(long, default_value = "128")]
    pub connect_concurrency: usize,
    /// The name the report gives this system (default: the target's name; the bench script
    /// says `samvad-cluster` for the cluster shape).
    #[arg(long)]
    pub system: Option<String>,
    /// Which comparison this run belongs to in the report (default: scenario and size).
    #[arg(long)]
    pub case: Option<String>,
    /// Which round of an interleaved A/B series this run belongs to.
    #[arg(long, default_value = "1")]
    pub round: u32,
    /// Write the result as JSON here (default: stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The outcome of one run, as saved in JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub scenario: Scenario,
    pub target: Target,
    pub case: String,
    pub system: String,
    pub round: u32,
    pub addr: String,
    pub workers: usize,
    pub users: usize,
    pub room_size: usize,
    pub connected: usize,
    pub failed: usize,
    pub error: Option<String>,
    pub idle: Option<IdleResult>,
    pub steps: Vec<StepResult>,
    /// The last step that kept p99 within the limit and lost nothing.
    pub sustained: Option<StepResult>,
    pub stopped: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleResult {
    pub held_secs: f64,
    pub closed_during_hold: u64,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub rss_per_connection_bytes: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepResult {
    pub rate: f64,
    pub secs: f64,
    #[serde(flatten)]
    pub counts: Counts,
    /// Deliveries expected but not seen by the end of the drain.
    pub lost: u64,
    pub msgs_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub ack_us: Latency,
    pub delivery_us: Latency,
    pub ok: bool,
    /// CPU seconds the `--server-pid` processes used over the step and its drain.
    pub server_cpu_secs: Option<f64>,
    /// The same for the `--dependency-pid` processes.
    pub dependency_cpu_secs: Option<f64>,
}

impl StepResult {
    /// CPU time per delivery received, in µs, of `cpu_secs` (one of the figures above).
    pub fn cpu_us_per_delivery(&self, cpu_secs: Option<f64>) -> Option<f64> {
        let delivered = self.counts.delivered;
        cpu_secs
            .filter(|_| delivered > 0)
            .map(|s| s * 1e6 / delivered as f64)
    }
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
}

pub async fn run(args: RunArgs) -> anyhow::Result<RunResult> {
    let clock = Clock::new();
    let run_id = clock.now_ns() / 1_000_000 % 1_000_000_000;
    let mut layout = Layout::new(args.scenario, args.count, args.room_size, args.workers);
    layout.prefix = format!("L{run_id}-");
    if layout.scenario == Scenario::Fanout && layout.room_size < 2 {
        bail!("--room-size must be at least 2");
    }
    if args.target == Target::SamvadGrpc && args.grpc_addr.is_none() {
        bail!("--target samvad-grpc needs --grpc-addr (the server's SAMVAD_GRPC_LISTEN)");
    }
    if layout.scenario == Scenario::MultiDevice && !args.target.is_samvad() {
        bail!("multi-device is for Samvad only: the peers have no notion of a user's devices");
    }
    let source = args
        .source_ip
        .unwrap_or_else(|| Ipv4Addr::new(127, 1 + (run_id % 250) as u8, 0, 1));
    let [a, b, c, d] = source.octets();
    if usize::from(c) + layout.workers > 255 {
        bail!("too many workers for source addresses from {source}");
    }

    let (tx, mut events) = mpsc::unbounded_channel::<(usize, Event)>();
    let mut workers = Vec::new();
    for w in 0..layout.workers {
        let spec = WorkerSpec {
            index: w,
            target: args.target,
            addr: args.addr.to_string(),
            grpc_addr: args.grpc_addr.map(|a| a.to_string()),
            layout: layout.clone(),
            payload_bytes: args.payload_bytes,
            source_ip: Some(Ipv4Addr::new(a, b, c + w as u8, d)),
            connect_concurrency: args.connect_concurrency,
        };
        workers.push(spawn_worker(&spec, w, tx.clone())?);
    }
    drop(tx);
    eprintln!(
        "{:?} against {:?} at {}: {} users, {} connections in {} worker(s)",
        args.scenario,
        args.target,
        args.addr,
        layout.users,
        layout.connections(),
        layout.workers
    );

    let result = drive(&args, &layout, &mut workers, &mut events).await;
    for w in &mut workers {
        let _ = send(&mut w.stdin, &Command::Quit).await;
    }
    for w in &mut workers {
        if tokio::time::timeout(Duration::from_secs(10), w.child.wait())
            .await
            .is_err()
        {
            let _ = w.child.kill().await;
        }
    }
    let result = result?;
    let out = serde_json::to_string_pretty(&result)?;
    match &args.json {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(path, out + "\n")
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => {
            use std::io::Write as _;
            writeln!(std::io::stdout().lock(), "{out}")?;
        }
    }
    Ok(result)
}

fn spawn_worker(
    spec: &WorkerSpec,
    index: usize,
    tx: mpsc::UnboundedSender<(usize, Event)>,
) -> anyhow::Result<Worker> {
    let exe = std::env::current_exe().context("cannot find this binary")?;
    let mut child = tokio::process::Command::new(exe)
        .arg("worker")
        .arg("--spec")
        .arg(serde_json::to_string(spec)?)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start a worker")?;
    let stdin = child.stdin.take().context("worker stdin")?;
    let stdout = child.stdout.take().context("worker stdout")?;
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Event>(&line) {
                Ok(event) => {
                    if tx.send((index, event)).is_err() {
                        break;
                    }
                }
                Err(e) => eprintln!("worker {index}: unreadable line ({e}): {line}"),
            }
        }
    });
    Ok(Worker { child, stdin })
}

async fn send(stdin: &mut ChildStdin, command: &Command) -> anyhow::Result<()> {
    let mut line = serde_json::to_string(command)?;
    line.push('\n');
    stdin.write_all(line.as_bytes()).await?;
    stdin.flush().await?;
    Ok(())
}

async fn broadcast(workers: &mut [Worker], command: &Command) -> anyhow::Result<()> {
    for w in workers {
        send(&mut w.stdin, command).await?;
    }
    Ok(())
}

/// Waits for the next event of interest, keeping progress up to date on the way.
struct Events<'a> {
    rx: &'a mut mpsc::UnboundedReceiver<(usize, Event)>,
    progress: Vec<Progress>,
}

impl Events<'_> {
    async fn next(&mut self, within: Duration) -> anyhow::Result<Option<(usize, Event)>> {
        match tokio::time::timeout(within, self.rx.recv()).await {
            Err(_) => Ok(None),
            Ok(None) => bail!("a worker exited early (see its messages above)"),
            Ok(Some((w, event))) => {
                if let Event::Progress(p) = event {
                    self.progress[w] = p;
                }
                Ok(Some((w, event)))
            }
        }
    }

    fn total(&self, step: Option<usize>) -> Progress {
        let mut t = Progress::default();
        for p in &self.progress {
            t.frames += p.frames;
            t.closed += p.closed;
            if p.step == step {
                t.counts.add(&p.counts);
            }
        }
        t
    }

    /// Waits until every worker has sent one event matching `pick`, and returns them.
    async fn gather<T>(
        &mut self,
        n: usize,
        what: &str,
        limit: Duration,
        mut pick: impl FnMut(Event) -> Option<T>,
    ) -> anyhow::Result<Vec<T>> {
        let deadline = Instant::now() + limit;
        let mut got: Vec<Option<T>> = (0..n).map(|_| None).collect();
        while got.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("workers did not report {what} within {limit:?}");
            }
            if let Some((w, event)) = self.next(left).await?
                && let Some(t) = pick(event)
            {
                got[w] = Some(t);
            }
        }
        Ok(got.into_iter().flatten().collect())
    }
}

async fn drive(
    args: &RunArgs,
    layout: &Layout,
    workers: &mut [Worker],
    rx: &mut mpsc::UnboundedReceiver<(usize, Event)>,
) -> anyhow::Result<RunResult> {
    let n = workers.len();
    let mut events = Events {
        rx,
        progress: vec![Progress::default(); n],
    };
    let setup_limit = Duration::from_secs(600);
    events
        .gather(n, "logins", setup_limit, |e| {
            matches!(e, Event::LoggedIn { .. }).then_some(())
        })
        .await?;
    let groups = if args.target.is_samvad() && layout.rooms() > 0 {
        create_groups(args.addr, layout).await?
    } else {
        Vec::new()
    };
    let rss_before = procfs::rss_kib(&args.server_pid);
    broadcast(workers, &Command::Connect { groups }).await?;
    let connected = events
        .gather(n, "connections", setup_limit, |e| match e {
            Event::Connected { ok, failed, error } => Some((ok, failed, error)),
            _ => None,
        })
        .await?;
    let ok: usize = connected.iter().map(|c| c.0).sum();
    let failed: usize = connected.iter().map(|c| c.1).sum();
    let error = connected.into_iter().find_map(|c| c.2);
    eprintln!("connected {ok}, failed {failed}");
    if let Some(e) = &error {
        eprintln!("first error: {e}");
    }
    settle(&mut events).await?;

    let mut result = RunResult {
        scenario: args.scenario,
        target: args.target,
        case: args.case.clone().unwrap_or_else(|| {
            format!("{:?}-{}x{}", args.scenario, layout.users, layout.room_size).to_lowercase()
        }),
        system: args
            .system
            .clone()
            .unwrap_or_else(|| format!("{:?}", args.target).to_lowercase()),
        round: args.round,
        addr: args.addr.to_string(),
        workers: n,
        users: layout.users,
        room_size: layout.room_size,
        connected: ok,
        failed,
        error,
        idle: None,
        steps: Vec::new(),
        sustained: None,
        stopped: String::new(),
    };

    if args.scenario == Scenario::Idle {
        let rss_after = procfs::rss_kib(&args.server_pid);
        let closed_before = events.total(None).closed;
        let bar = bar(args.hold_secs, "hold");
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < args.hold_secs {
            events.next(Duration::from_millis(250)).await?;
            bar.set_position(start.elapsed().as_secs());
            bar.set_message(format!(
                "{} open",
                ok as u64 - events.total(None).closed.min(ok as u64)
            ));
        }
        bar.finish_and_clear();
        let per_conn = match (rss_before, rss_after) {
            (Some(b), Some(a)) if ok > 0 => Some((a as f64 - b as f64) * 1024.0 / ok as f64),
            _ => None,
        };
        result.idle = Some(IdleResult {
            held_secs: args.hold_secs,
            closed_during_hold: events.total(None).closed - closed_before,
            rss_before_kib: rss_before,
            rss_after_kib: rss_after,
            rss_per_connection_bytes: per_conn,
        });
        result.stopped = "held".into();
        eprintln!("{}", idle_line(&result));
        return Ok(result);
    }

    let cpu = if args.server_pid.is_empty() && args.dependency_pid.is_empty() {
        None
    } else {
        Some(CpuTime::new()?)
    };
    let cpu_secs = || {
        let of = |pids: &[u32]| cpu.and_then(|c| c.secs(pids));
        (of(&args.server_pid), of(&args.dependency_pid))
    };
    let clock = Clock::new();
    for (index, &rate) in args.rates.iter().enumerate() {
        let cpu_before = cpu_secs();
        let start_ns = clock.now_ns() + 300_000_000;
        for (w, worker) in workers.iter_mut().enumerate() {
            let command = Command::Step {
                index,
                rate: layout.worker_rate(rate, w),
                start_ns,
                secs: args.step_secs,
            };
            send(&mut worker.stdin, &command).await?;
        }
        let bar = bar(args.step_secs, &format!("{rate:.0}/s"));
        let start = clock.instant_at(start_ns);
        let end = start + Duration::from_secs_f64(args.step_secs);
        while Instant::now() < end {
            events.next(Duration::from_millis(250)).await?;
            let t = events.total(Some(index)).counts;
            let secs = start.elapsed().as_secs_f64().max(0.001);
            bar.set_position(secs as u64);
            bar.set_message(format!(
                "sent {:.0}/s delivered {:.0}/s",
                t.sent as f64 / secs,
                t.delivered as f64 / secs
            ));
        }
        // Drain: what was sent may still be on its way.
        let drain_end = Instant::now() + Duration::from_secs_f64(args.drain_secs);
        let mut settled_at = None;
        while Instant::now() < drain_end {
            events.next(Duration::from_millis(100)).await?;
            let t = events.total(Some(index)).counts;
            let done = t.delivered >= t.expected && (!args.target.is_samvad() || t.acked >= t.sent);
            // Progress lines come every 250 ms: wait for one more after it looks done.
            match (done, settled_at) {
                (true, None) => settled_at = Some(Instant::now()),
                (true, Some(at)) if at.elapsed() > Duration::from_millis(300) => break,
                (false, _) => settled_at = None,
                _ => {}
            }
        }
        bar.finish_and_clear();
        let cpu_after = cpu_secs();
        broadcast(workers, &Command::Report { index }).await?;
        let reports = events
            .gather(n, "step stats", Duration::from_secs(30), |e| match e {
                Event::Step {
                    index: i, stats, ..
                } if i == index => Some(stats),
                _ => None,
            })
            .await?;
        let mut total = StepStats::default();
        for r in &reports {
            total.merge(&StepStats::from_wire(r)?);
        }
        let used = |before: Option<f64>, after: Option<f64>| Some(after? - before?);
        let cpu_used = (
            used(cpu_before.0, cpu_after.0),
            used(cpu_before.1, cpu_after.1),
        );
        let step = summarize(rate, args, &total, cpu_used);
        eprintln!("{}", step_line(&step));
        let ok = step.ok;
        result.steps.push(step.clone());
        if ok {
            result.sustained = Some(step);
        } else {
            result.stopped = stop_reason(&step, args);
            break;
        }
    }
    if result.stopped.is_empty() {
        result.stopped = "all steps passed".into();
    }
    Ok(result)
}

/// Waits until nothing more arrives (samvad replays group notifications on connect).
async fn settle(events: &mut Events<'_>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (events.total(None).frames, Instant::now());
    while Instant::now() < deadline {
        events.next(Duration::from_millis(250)).await?;
        let frames = events.total(None).frames;
        if frames != last.0 {
            last = (frames, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            return Ok(());
        }
    }
    Ok(())
}

/// A step's figures; `cpu_secs`: what the server's processes and their dependencies used.
fn summarize(
    rate: f64,
    args: &RunArgs,
    stats: &StepStats,
    cpu_secs: (Option<f64>, Option<f64>),
) -> StepResult {
    let ack_us = Latency::of(&stats.ack_us);
    let delivery_us = Latency::of(&stats.delivery_us);
    let t = &stats.counts;
    let lost = t.expected.saturating_sub(t.delivered);
    let unacked = if args.target.is_samvad() {
        t.sent.saturating_sub(t.acked)
    } else {
        0
    };
    let limit_us = (args.stop_p99_ms * 1000.0) as u64;
    let ok = lost == 0
        && unacked == 0
        && t.errors == 0
        && delivery_us.p99 <= limit_us
        && ack_us.p99 <= limit_us;
    StepResult {
        rate,
        secs: args.step_secs,
        counts: *t,
        lost,
        msgs_per_sec: t.sent as f64 / args.step_secs,
        deliveries_per_sec: t.delivered as f64 / args.step_secs,
        ack_us,
        delivery_us,
        ok,
        server_cpu_secs: cpu_secs.0,
        dependency_cpu_secs: cpu_secs.1,
    }
}

fn stop_reason(s: &StepResult, args: &RunArgs) -> String {
    let limit_us = (args.stop_p99_ms * 1000.0) as u64;
    let mut why = Vec::new();
    let c = &s.counts;
    if s.lost > 0 {
        why.push(format!("{} of {} deliveries missing", s.lost, c.expected));
    }
    if c.sent > c.acked && args.target.is_samvad() {
        why.push(format!(
            "{} of {} sends not acked",
            c.sent - c.acked,
            c.sent
        ));
    }
    if c.errors > 0 {
        why.push(format!("{} error frames", c.errors));
    }
    if s.delivery_us.p99 > limit_us {
        why.push(format!("delivery p99 {} µs", s.delivery_us.p99));
    }
    if s.ack_us.p99 > limit_us {
        why.push(format!("ack p99 {} µs", s.ack_us.p99));
    }
    format!("at {:.0} msgs/s: {}", s.rate, why.join(", "))
}

pub fn step_line(s: &StepResult) -> String {
    format!(
        "{:>8.0}/s offered: {:>9.0} msgs/s {:>10.0} deliveries/s | delivery p50 {} p99 {} p99.9 {} µs \
         | ack p50 {} p99 {} p99.9 {} µs | server CPU µs/delivery {} \
         | lost {} errors {} {}",
        s.rate,
        s.msgs_per_sec,
        s.deliveries_per_sec,
        s.delivery_us.p50,
        s.delivery_us.p99,
        s.delivery_us.p999,
        s.ack_us.p50,
        s.ack_us.p99,
        s.ack_us.p999,
        report::cpu(
            s.cpu_us_per_delivery(s.server_cpu_secs),
            s.cpu_us_per_delivery(s.dependency_cpu_secs)
        ),
        s.lost,
        s.counts.errors,
        if s.ok { "ok" } else { "STOP" }
    )
}

fn idle_line(r: &RunResult) -> String {
    let Some(idle) = &r.idle else {
        return String::new();
    };
    format!(
        "idle: {} connected, {} failed, {} closed during {:.0} s; server RSS {:?} → {:?} KiB, {} bytes per connection",
        r.connected,
        r.failed,
        idle.closed_during_hold,
        idle.held_secs,
        idle.rss_before_kib,
        idle.rss_after_kib,
        idle.rss_per_connection_bytes
            .map_or("?".into(), |b| format!("{b:.0}"))
    )
}

fn bar(secs: f64, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::new(secs.ceil() as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len}s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_owned());
    bar
}

/// Creates one samvad group per room, the first member as its creator.
async fn create_groups(addr: SocketAddr, layout: &Layout) -> anyhow::Result<Vec<String>> {
    let rooms = layout.rooms();
    let bar = ProgressBar::new(rooms as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} rooms")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix("groups");
    let lanes = 8.min(rooms);
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..lanes {
        let layout = layout.clone();
        let bar = bar.clone();
        tasks.spawn(async move {
            let mut http = Http::new(addr);
            let mut ids = Vec::new();
            for r in (lane..rooms).step_by(lanes) {
                let mut members = layout.room_members(r).map(|u| layout.user_name(u));
                let creator = members.next().context("empty room")?;
                let key = http::login(&mut http, &creator, None).await?;
                let others: Vec<String> = members.collect();
                let id =
                    http::create_group(&mut http, &layout.room_name(r), (&creator, &key), &others)
                        .await?;
                ids.push((r, id));
                bar.inc(1);
            }
            anyhow::Ok(ids)
        });
    }
    let mut groups = vec![String::new(); rooms];
    while let Some(done) = tasks.join_next().await {
        for (r, id) in done?? {
            groups[r] = id;
        }
    }
    bar.finish_and_clear();
    Ok(groups)
}
