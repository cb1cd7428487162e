//! A worker process: holds up to 15,000 connections on one thread, sends on an open-loop
//! schedule kept by a pacing thread, and measures what comes back.
//!
//! The pacing thread computes the intended send time of every message (`start + k / rate`),
//! sleeps until it is due, and hands it to the connection's writer task; when it is late (the
//! process is busy) it hands over everything overdue at once, each message keeping its own
//! intended time. Latency is always measured from that intended time, so a stall in the load
//! generator or the server shows up in the figures instead of silently lowering the rate
//! (coordinated omission). Tokio's timer has millisecond granularity; a thread's sleep is
//! accurate to tens of microseconds, which is what a 1 ms p99 needs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::{Sink, SinkExt as _, Stream, StreamExt as _, TryStreamExt as _};
use tokio::io::AsyncBufReadExt as _;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::adapter::{Adapter, ConnState, Event as Seen};
use crate::http::{self, Http};
use crate::plan::{Dest, Target};
use crate::stats::{self, Clock, StepStats};
use crate::wire::{Command, Event, Progress, WorkerSpec, emit};

/// What a connection's writer writes to, whatever the door: a WebSocket, or a gRPC door's
/// `Connect` call (its frames are v3 messages out and `Event`s in).
pub type FrameSink = Pin<Box<dyn Sink<Frame, Error = String> + Send>>;
/// What a connection's reader reads from.
pub type FrameStream = Pin<Box<dyn Stream<Item = Result<Frame, String>> + Send>>;

/// Small buffers: a connection costs a few KiB here, as it should on the server.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// What a connection's writer task is handed.
enum Out {
    /// Send one load message with this intended send time.
    Send {
        step: usize,
        t_ns: u64,
    },
    Frame(Frame),
}

#[derive(Default)]
struct State {
    steps: Vec<StepStats>,
    /// Steps at or below this were reported: what arrives for them now is late.
    reported: usize,
    current: Option<usize>,
    late: u64,
    frames: u64,
    closed: u64,
    error: Option<String>,
}

impl State {
    fn step(&mut self, i: usize) -> Option<&mut StepStats> {
        if i < self.reported {
            self.late += 1;
            return None;
        }
        if self.steps.len() <= i {
            self.steps.resize_with(i + 1, StepStats::default);
        }
        self.steps.get_mut(i)
    }

    fn note_error(&mut self, e: impl std::fmt::Display) {
        if self.error.is_none() {
            self.error = Some(e.to_string());
        }
    }
}

struct Shared {
    clock: Clock,
    adapter: Adapter,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub fn main(spec: WorkerSpec) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(spec))
}

async fn run(spec: WorkerSpec) -> anyhow::Result<()> {
    let conns: Vec<usize> = spec.layout.worker_connections(spec.index).collect();
    let mut commands = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let keys = if spec.target.is_samvad() {
        login_all(&spec, &conns).await?
    } else {
        vec![String::new(); conns.len()]
    };
    emit(&Event::LoggedIn {
        connections: conns.len(),
    })?;

    let groups = match next_command(&mut commands).await? {
        Some(Command::Connect { groups }) => groups,
        Some(Command::Quit) | None => return Ok(()),
        Some(other) => bail!("expected connect, got {other:?}"),
    };
    let shared = Arc::new(Shared {
        clock: Clock::new(),
        adapter: Adapter::new(spec.target, spec.layout.clone(), groups, spec.payload_bytes),
        state: Mutex::default(),
    });
    let (senders, failed) = connect_all(&spec, &shared, &conns, &keys).await;
    let error = shared.lock().error.clone();
    emit(&Event::Connected {
        ok: conns.len() - failed,
        failed,
        error,
    })?;

    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            command = next_command(&mut commands) => match command? {
                Some(Command::Step { index, rate, start_ns, secs }) => {
                    shared.lock().current = Some(index);
                    let pacer = Pacer {
                        shared: Arc::clone(&shared),
                        senders: senders.clone(),
                        fanout: spec.layout.fanout(),
                        step: index,
                        rate,
                        start_ns,
                        end_ns: start_ns + (secs * 1e9) as u64,
                    };
                    std::thread::Builder::new()
                        .name("pacer".into())
                        .spawn(move || pacer.run())
                        .context("cannot start the pacing thread")?;
                }
                Some(Command::Report { index }) => report(&shared, index)?,
                Some(Command::Connect { .. }) => bail!("already connected"),
                Some(Command::Quit) | None => break,
            },
            _ = tick.tick() => progress(&shared)?,
        }
    }
    Ok(())
}

async fn next_command(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>,
) -> anyhow::Result<Option<Command>> {
    match lines.next_line().await? {
        None => Ok(None),
        Some(line) => Ok(Some(
            serde_json::from_str(&line).with_context(|| format!("bad command {line:?}"))?,
        )),
    }
}

fn progress(shared: &Shared) -> anyhow::Result<()> {
    let event = {
        let mut s = shared.lock();
        let (frames, closed) = (s.frames, s.closed);
        let current = s.current;
        let counts = current
            .and_then(|i| s.step(i))
            .map(|st| st.counts)
            .unwrap_or_default();
        Event::Progress(Progress {
            step: current,
            counts,
            frames,
            closed,
        })
    };
    emit(&event)
}

fn report(shared: &Shared, index: usize) -> anyhow::Result<()> {
    let event = {
        let mut s = shared.lock();
        let stats = s.step(index).map(|st| st.to_wire()).transpose()?;
        s.reported = s.reported.max(index + 1);
        Event::Step {
            index,
            stats: match stats {
                Some(w) => w,
                None => StepStats::default().to_wire()?,
            },
            late: s.late,
            closed: s.closed,
            error: s.error.clone(),
        }
    };
    emit(&event)
}

/// Logs every connection's device in over a few kept-alive HTTP connections.
async fn login_all(spec: &WorkerSpec, conns: &[usize]) -> anyhow::Result<Vec<String>> {
    let addr: SocketAddr = spec.addr.parse().context("--addr must be IP:PORT")?;
    let lanes = 16.min(conns.len().max(1));
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..lanes {
        let layout = &spec.layout;
        let devices: Vec<(usize, String, Option<String>)> = conns
            .iter()
            .enumerate()
            .skip(lane)
            .step_by(lanes)
            .map(|(i, &c)| (i, layout.user_name(layout.user_of(c)), layout.device_id(c)))
            .collect();
        tasks.spawn(async move {
            let mut http = Http::new(addr);
            let mut keys = Vec::with_capacity(devices.len());
            for (i, name, device) in devices {
                keys.push((i, http::login(&mut http, &name, device.as_deref()).await?));
            }
            anyhow::Ok(keys)
        });
    }
    let mut keys = vec![String::new(); conns.len()];
    while let Some(done) = tasks.join_next().await {
        for (i, key) in done?? {
            keys[i] = key;
        }
    }
    Ok(keys)
}

/// Opens every connection, a few at a time; returns the writers of those that send, in
/// connection order, and how many failed to open.
async fn connect_all(
    spec: &WorkerSpec,
    shared: &Arc<Shared>,
    conns: &[usize],
    keys: &[String],
) -> (Vec<UnboundedSender<Out>>, usize) {
    let opened: Vec<_> = futures_util::stream::iter(conns.iter().zip(keys))
        .map(|(&c, key)| async move { (c, open(spec, shared, c, key).await) })
        .buffer_unordered(spec.connect_concurrency.max(1))
        .collect()
        .await;
    let mut senders: Vec<(usize, UnboundedSender<Out>)> = Vec::new();
    let mut failed = 0;
    for (c, conn) in opened {
        match conn {
            Ok(conn) => {
                let key = &keys[conns.iter().position(|&k| k == c).expect("one of ours")];
                let tx = start_connection(shared, c, key, conn);
                if spec.layout.dest(c).is_some() {
                    senders.push((c, tx));
                }
            }
            Err(e) => {
                failed += 1;
                shared.lock().note_error(format!("{e:#}"));
            }
        }
    }
    senders.sort_by_key(|(c, _)| *c);
    (senders.into_iter().map(|(_, tx)| tx).collect(), failed)
}

async fn open(
    spec: &WorkerSpec,
    shared: &Shared,
    conn: usize,
    key: &str,
) -> anyhow::Result<(FrameSink, FrameStream)> {
    if shared.adapter.target == Target::SamvadGrpc {
        let addr = spec
            .grpc_addr
            .as_deref()
            .context("--grpc-addr is needed for the gRPC door")?
            .parse()
            .context("--grpc-addr must be IP:PORT")?;
        return crate::grpc::connect(addr, spec.source_ip, key).await;
    }
    let addr: SocketAddr = spec.addr.parse().context("--addr must be IP:PORT")?;
    let stream = tcp(addr, spec.source_ip).await?;
    let user = shared.adapter.layout().user_of(conn);
    let request = shared.adapter.request(&spec.addr, user, key)?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config()))
        .await
        .context("WebSocket handshake")?;
    let (sink, stream) = ws.split();
    Ok((
        Box::pin(sink.sink_map_err(|e| e.to_string())),
        Box::pin(stream.map_err(|e| e.to_string())),
    ))
}

/// A TCP connection to `addr` from `source_ip` (if given), without Nagle's delay.
pub async fn tcp(addr: SocketAddr, source_ip: Option<Ipv4Addr>) -> anyhow::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source_ip {
        socket
            .bind(SocketAddr::new(IpAddr::V4(ip), 0))
            .with_context(|| format!("cannot bind {ip}"))?;
    }
    let stream = socket
        .connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn start_connection(
    shared: &Arc<Shared>,
    conn: usize,
    key: &str,
    (sink, stream): (FrameSink, FrameStream),
) -> UnboundedSender<Out> {
    let (tx, rx) = unbounded_channel();
    let layout = shared.adapter.layout();
    let user = layout.user_of(conn);
    for frame in shared.adapter.on_open(user, key) {
        let _ = tx.send(Out::Frame(frame));
    }
    let dest = layout.dest(conn);
    // The writer notes what it sent that awaits an answer (MQTT's packet ids), the reader
    // reads the answers.
    let state = Arc::new(Mutex::new(ConnState::default()));
    tokio::spawn(write(
        Arc::clone(shared),
        user,
        dest,
        sink,
        rx,
        Arc::clone(&state),
    ));
    tokio::spawn(read(Arc::clone(shared), stream, tx.clone(), state));
    tx
}

/// Writes what the pacer and the reader hand over, batching whatever is queued into one flush.
async fn write(
    shared: Arc<Shared>,
    user: usize,
    dest: Option<Dest>,
    mut sink: FrameSink,
    mut rx: UnboundedReceiver<Out>,
    state: Arc<Mutex<ConnState>>,
) {
    let mut seq: u64 = 0;
    let keepalive = shared.adapter.keepalive();
    let mut ping = tokio::time::interval(Duration::from_secs(30));
    ping.tick().await;
    loop {
        let first = tokio::select! {
            out = rx.recv() => match out {
                Some(out) => out,
                None => break,
            },
            _ = ping.tick(), if keepalive.is_some() => match &keepalive {
                Some(frame) => Out::Frame(frame.clone()),
                None => continue,
            }
        };
        let mut next = Some(first);
        let mut result = Ok(());
        while let Some(out) = next.take() {
            let frame = match out {
                Out::Frame(f) => f,
                Out::Send { step, t_ns } => {
                    seq += 1;
                    let id = format!("{step}.{t_ns}.{seq}");
                    match &dest {
                        Some(d) => {
                            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                            shared.adapter.message(&mut state, user, d, &id)
                        }
                        None => continue,
                    }
                }
            };
            result = sink.feed(frame).await;
            if result.is_err() {
                break;
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = result.and(sink.flush().await) {
            shared.lock().note_error(format!("write: {e}"));
            break;
        }
    }
}

/// Reads frames, measures, and hands acks and replies to the writer.
async fn read(
    shared: Arc<Shared>,
    mut stream: FrameStream,
    tx: UnboundedSender<Out>,
    state: Arc<Mutex<ConnState>>,
) {
    let mut events = Vec::new();
    loop {
        let frame = match stream.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                let mut s = shared.lock();
                s.closed += 1;
                s.note_error(format!("read: {e}"));
                break;
            }
            None => {
                shared.lock().closed += 1;
                break;
            }
        };
        if let Frame::Close(c) = &frame {
            let mut s = shared.lock();
            s.closed += 1;
            s.note_error(format!("closed by the server: {c:?}"));
            break;
        }
        {
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            shared.adapter.parse(&mut state, &frame, &mut events);
        }
        let now = shared.clock.now_ns();
        let mut s = shared.lock();
        s.frames += 1;
        for event in events.drain(..) {
            match event {
                Seen::ServerAck(id) => {
                    if let Some((step, t)) = parse_id(&id)
                        && let Some(st) = s.step(step)
                    {
                        st.counts.acked += 1;
                        stats::record(&mut st.ack_us, t, now);
                    }
                }
                Seen::Delivery(id) => {
                    let ack = shared.adapter.client_ack(&id);
                    delivered(&mut s, &id, now, ack, &tx);
                }
                Seen::DeliveryAcked(id, ack) => delivered(&mut s, &id, now, Some(ack), &tx),
                Seen::System(id) => {
                    if let Some(ack) = shared.adapter.client_ack(&id) {
                        let _ = tx.send(Out::Frame(ack));
                    }
                }
                Seen::Error(e) => {
                    if let Some(i) = s.current
                        && let Some(st) = s.step(i)
                    {
                        st.counts.errors += 1;
                    }
                    s.note_error(format!("error frame: {e}"));
                }
                Seen::Reply(frame) => {
                    let _ = tx.send(Out::Frame(frame));
                }
            }
        }
    }
}

/// Counts a delivery of message `id` at `now` in its step, and sends its client ack, if any.
fn delivered(s: &mut State, id: &str, now: u64, ack: Option<Frame>, tx: &UnboundedSender<Out>) {
    if let Some((step, t)) = parse_id(id)
        && let Some(st) = s.step(step)
    {
        st.counts.delivered += 1;
        stats::record(&mut st.delivery_us, t, now);
        if let Some(ack) = ack {
            st.counts.client_acks += 1;
            let _ = tx.send(Out::Frame(ack));
        }
    }
}

/// `STEP.INTENDED_NS.SEQ` → (step, intended_ns).
fn parse_id(id: &str) -> Option<(usize, u64)> {
    let mut parts = id.split('.');
    let step = parts.next()?.parse().ok()?;
    let t = parts.next()?.parse().ok()?;
    Some((step, t))
}

/// The open-loop schedule of one step, on its own thread.
struct Pacer {
    shared: Arc<Shared>,
    senders: Vec<UnboundedSender<Out>>,
    fanout: u64,
    step: usize,
    rate: f64,
    start_ns: u64,
    end_ns: u64,
}

impl Pacer {
    fn run(self) {
        if self.senders.is_empty() || self.rate <= 0.0 {
            return;
        }
        let clock = self.shared.clock;
        let period = 1e9 / self.rate;
        let at = |k: u64| self.start_ns + (k as f64 * period) as u64;
        let n = self.senders.len() as u64;
        let mut k: u64 = 0;
        loop {
            let now = clock.now_ns();
            let first = k;
            while at(k) <= now && at(k) < self.end_ns {
                // Round robin: each sender sends every nth message, evenly spaced.
                let _ = self.senders[(k % n) as usize].send(Out::Send {
                    step: self.step,
                    t_ns: at(k),
                });
                k += 1;
            }
            if k > first {
                let mut s = self.shared.lock();
                if let Some(st) = s.step(self.step) {
                    st.counts.sent += k - first;
                    st.counts.expected += (k - first) * self.fanout;
                }
            }
            let next = at(k);
            if next >= self.end_ns {
                break;
            }
            let now = clock.now_ns();
            if next > now {
                std::thread::sleep(Duration::from_nanos(next - now));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_step_and_intended_time() {
        assert_eq!(parse_id("3.1700000000123.42"), Some((3, 1_700_000_000_123)));
        assert_eq!(parse_id("x.1.2"), None);
        assert_eq!(parse_id("3"), None);
    }
}
