//! The node's metrics: one closed list, registered once per process however many services run
//! in it, exposed at `/metrics` in the Prometheus text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DoorLabel {
    /// `ws` or `rest`.
    pub door: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TopicLabel {
    pub topic: String,
}

/// Latencies from 0.25 ms to about 33 s, each bucket twice the last.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 18))
}

/// Seconds since `at_ms` (milliseconds since the Unix epoch, a message's `server_timestamp`).
pub fn seconds_since(at_ms: u64) -> f64 {
    crate::now_ms().saturating_sub(at_ms) as f64 / 1000.0
}

/// Handles to every metric; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    /// Messages made durable and acked, by the gateway they came in by.
    pub accepted: Family<DoorLabel, Counter>,
    /// Client messages refused, by reason.
    pub refused: Family<ReasonLabel, Counter>,
    /// Requests refused by a rate limit other than a message flood (`login`, `contact_sync`).
    pub limited: Family<ReasonLabel, Counter>,
    /// Requests refused before any service saw them, by reason (`host`).
    pub refused_requests: Family<ReasonLabel, Counter>,
    /// Open client connections of the gateway, whatever the door (the name is older than the
    /// other doors).
    pub connections: Gauge,
    /// Messages handled by delivery: `live`, `offline`, `repeat`, `ephemeral_dropped`.
    pub deliveries: Family<OutcomeLabel, Counter>,
    /// Connections closed for falling behind or flooding.
    pub slow_closes: Counter,
    /// Consumer batches retried after a handler failure, by topic.
    pub retries: Family<TopicLabel, Counter>,
    /// Records set aside on the parked topic because they did not decode, by topic.
    pub parked: Family<TopicLabel, Counter>,
    /// Pushes a provider accepted for a device.
    pub pushes_sent: Counter,
    /// Pushes that were not sent, by reason.
    pub pushes_failed: Family<ReasonLabel, Counter>,
    /// Device tokens removed because a provider said they no longer exist.
    pub push_tokens_removed: Counter,
    /// Seconds from a message reaching a gateway to its being durable (its server ack), by
    /// gateway.
    pub accept_latency: Family<DoorLabel, Histogram, fn() -> Histogram>,
    /// Seconds from a message's acceptance to its being written to a connection live (not
    /// what a device catches up on when it connects).
    pub delivery_latency: Histogram,
    /// Seconds from a message's acceptance to a push provider taking it for a device.
    pub push_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            accepted: Family::default(),
            refused: Family::default(),
            limited: Family::default(),
            refused_requests: Family::default(),
            connections: Gauge::default(),
            deliveries: Family::default(),
            slow_closes: Counter::default(),
            retries: Family::default(),
            parked: Family::default(),
            pushes_sent: Counter::default(),
            pushes_failed: Family::default(),
            push_tokens_removed: Counter::default(),
            accept_latency: Family::new_with_constructor(latency),
            delivery_latency: latency(),
            push_latency: latency(),
        }
    }
}

impl Metrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "messages_accepted",
            "Messages made durable and acked, by gateway",
            self.accepted.clone(),
        );
        registry.register(
            "messages_refused",
            "Client messages refused, by reason",
            self.refused.clone(),
        );
        registry.register(
            "requests_limited",
            "Requests refused by a rate limit (logins, contact syncs), by what was limited",
            self.limited.clone(),
        );
        registry.register(
            "requests_refused",
            "Requests refused before any service saw them (a Host not served here), by reason",
            self.refused_requests.clone(),
        );
        registry.register(
            "ws_connections",
            "Open client connections of the gateway, whatever the door (WebSocket, MQTT, gRPC Connect)",
            self.connections.clone(),
        );
        registry.register(
            "deliveries",
            "Messages handled by delivery, by outcome",
            self.deliveries.clone(),
        );
        registry.register(
            "slow_closes",
            "Connections closed for falling behind",
            self.slow_closes.clone(),
        );
        registry.register(
            "consumer_retries",
            "Consumer batches retried after a failure, by topic",
            self.retries.clone(),
        );
        registry.register(
            "records_parked",
            "Records set aside on the parked topic because they did not decode, by topic",
            self.parked.clone(),
        );
        registry.register(
            "pushes_sent",
            "Pushes a provider accepted for a device",
            self.pushes_sent.clone(),
        );
        registry.register(
            "pushes_failed",
            "Pushes not sent, by reason",
            self.pushes_failed.clone(),
        );
        registry.register(
            "push_tokens_removed",
            "Device tokens removed because a provider said they no longer exist",
            self.push_tokens_removed.clone(),
        );
        registry.register(
            "accept_latency_seconds",
            "From a message reaching a gateway to its being durable (its server ack), by gateway",
            self.accept_latency.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "From a message's acceptance to its being written to a connection live",
            self.delivery_latency.clone(),
        );
        registry.register(
            "push_latency_seconds",
            "From a message's acceptance to a push provider taking it for a device",
            self.push_latency.clone(),
        );
    }
}
