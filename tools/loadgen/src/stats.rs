//! Counts and latency histograms: what a worker measures in one step, how it travels to the
//! coordinator (HDR V2 serialization, base64, inside a JSON line) and how steps are summed up.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, from 1 µs to 60 s, with 3 significant digits.
const MAX_US: u64 = 60_000_000;

/// Wall-clock nanoseconds that advance with the monotonic clock.
///
/// Senders put the intended send time into each message and receivers, possibly in another
/// worker process, subtract it from their own clock. Every process reads the wall clock once
/// and then only adds monotonic time, so NTP steps during a run cannot skew a latency.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    base_ns: u64,
}

impl Clock {
    pub fn new() -> Self {
        let base_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Self {
            base: Instant::now(),
            base_ns,
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.base_ns + u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant at which this clock reads `ns`.
    pub fn instant_at(&self, ns: u64) -> Instant {
        self.base + Duration::from_nanos(ns.saturating_sub(self.base_ns))
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("constant histogram bounds are valid")
}

/// Records `now_ns - intended_ns` in microseconds (a receiver's clock may read a few
/// microseconds behind the sender's: that counts as zero).
pub fn record(h: &mut Histogram<u64>, intended_ns: u64, now_ns: u64) {
    h.saturating_record(now_ns.saturating_sub(intended_ns) / 1_000);
}

/// The counts of one step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Messages scheduled for sending (open loop: each has an intended send time).
    pub sent: u64,
    /// Deliveries those messages should cause (sent × recipients per message).
    pub expected: u64,
    /// Server acks received (samvad only).
    pub acked: u64,
    /// Messages received by recipients.
    pub delivered: u64,
    /// Client acks sent for deliveries (samvad only).
    pub client_acks: u64,
    /// Error frames (refused messages).
    pub errors: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.sent += o.sent;
        self.expected += o.expected;
        self.acked += o.acked;
        self.delivered += o.delivered;
        self.client_acks += o.client_acks;
        self.errors += o.errors;
    }
}

/// What one worker (or, summed, all of them) saw of one step.
#[derive(Debug, Clone)]
pub struct StepStats {
    pub counts: Counts,
    pub ack_us: Histogram<u64>,
    pub delivery_us: Histogram<u64>,
}

impl Default for StepStats {
    fn default() -> Self {
        Self {
            counts: Counts::default(),
            ack_us: histogram(),
            delivery_us: histogram(),
        }
    }
}

impl StepStats {
    pub fn merge(&mut self, other: &StepStats) {
        self.counts.add(&other.counts);
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.ack_us.add(&other.ack_us);
        let _ = self.delivery_us.add(&other.delivery_us);
    }

    pub fn to_wire(&self) -> anyhow::Result<WireStep> {
        Ok(WireStep {
            counts: self.counts,
            ack_us: encode(&self.ack_us)?,
            delivery_us: encode(&self.delivery_us)?,
        })
    }

    pub fn from_wire(w: &WireStep) -> anyhow::Result<Self> {
        Ok(Self {
            counts: w.counts,
            ack_us: decode(&w.ack_us)?,
            delivery_us: decode(&w.delivery_us)?,
        })
    }
}

/// A step's stats as a worker prints them: histograms V2-serialized and base64-encoded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireStep {
    #[serde(flatten)]
    pub counts: Counts,
    pub ack_us: String,
    pub delivery_us: String,
}

fn encode(h: &Histogram<u64>) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .map_err(|e| anyhow::anyhow!("cannot serialize a histogram: {e:?}"))?;
    Ok(B64.encode(buf))
}

fn decode(s: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = B64.decode(s).context("histogram is not base64")?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("cannot read a histogram: {e:?}"))?;
    let mut out = histogram();
    out.add(&h)
        .map_err(|e| anyhow::anyhow!("histogram out of range: {e:?}"))?;
    Ok(out)
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_stats_survive_the_wire_and_add_up() {
        let mut a = StepStats {
            counts: Counts {
                sent: 10,
                expected: 10,
                delivered: 9,
                ..Counts::default()
            },
            ..StepStats::default()
        };
        for us in 1..=1000 {
            a.delivery_us.saturating_record(us);
        }
        let wire = a.to_wire().expect("serializes");
        let line = serde_json::to_string(&wire).expect("json");
        let back: WireStep = serde_json::from_str(&line).expect("json back");
        let mut b = StepStats::from_wire(&back).expect("deserializes");
        assert_eq!(b.counts.delivered, 9);
        assert_eq!(b.delivery_us.len(), 1000);
        b.merge(&a);
        assert_eq!(b.counts.sent, 20);
        let l = Latency::of(&b.delivery_us);
        assert_eq!(l.count, 2000);
        assert!((495..=505).contains(&l.p50), "p50 {}", l.p50);
        assert!((985..=995).contains(&l.p99), "p99 {}", l.p99);
    }

    #[test]
    fn a_receiver_clock_behind_the_sender_records_zero() {
        let mut h = histogram();
        record(&mut h, 2_000_000, 1_999_000);
        record(&mut h, 1_000_000, 3_500_000);
        assert_eq!(h.min(), 0);
        assert!(h.equivalent(h.max(), 2_500), "max {}", h.max());
    }
}
