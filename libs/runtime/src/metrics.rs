//! The node's metrics: one closed list, registered once per process however many services run
//! in it, exposed at `/metrics` in the Prometheus text format.

use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use samvad_bus::Lag;

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

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConsumerLabel {
    pub topic: String,
    /// `{service}.{topic}`.
    pub group: String,
}

/// Every consumer's lag in this process, read from its subscription at each scrape (so it is
/// as fresh as the backend's figure, whether or not the consumer is moving).
#[derive(Debug, Clone, Default)]
pub(crate) struct Lags(Arc<Mutex<Vec<(ConsumerLabel, Lag)>>>);

impl Lags {
    pub(crate) fn follow(&self, consumer: ConsumerLabel, lag: Lag) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((consumer, lag));
    }
}

impl Collector for Lags {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let lags = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut family = encoder.encode_descriptor(
            "consumer_lag",
            "Records not yet done by a consumer group's member in this process, by topic and group (as the broker last said)",
            None,
            MetricType::Gauge,
        )?;
        for (consumer, lag) in lags.iter() {
            if let Some(records) = lag.get() {
                let records = i64::try_from(records).unwrap_or(i64::MAX);
                ConstGauge::new(records).encode(family.encode_family(consumer)?)?;
            }
        }
        Ok(())
    }
}

/// Latencies from 0.25 ms to about 33 s, each bucket twice the last.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 18))
}

/// Seconds since `at_ms` (milliseconds since the Unix epoch, a message's `server_timestamp`).
pub fn seconds_since(at_ms: u64) -> f64 {
    samvad_protocol::now_ms().saturating_sub(at_ms) as f64 / 1000.0
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
    /// Events queued for a gateway's connections, not yet written to them.
    pub queued: Gauge,
    pub(crate) lags: Lags,
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
            queued: Gauge::default(),
            lags: Lags::default(),
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
        registry.register(
            "gateway_queued_events",
            "Events queued for the gateway's connections, not yet written to them",
            self.queued.clone(),
        );
        registry.register_collector(Box::new(self.lags.clone()));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashSet;

    use prometheus_client::encoding::text::encode;

    use super::*;

    const DASHBOARD: &str = include_str!("../../../deployment/grafana/samvad.json");

    /// Every metric family, each with a sample (a family without one is not exported). The
    /// pattern names every field, so a new metric fails to compile here until it is added.
    fn every_metric() -> String {
        let metrics = Metrics::default();
        let Metrics {
            accepted,
            refused,
            limited,
            refused_requests,
            connections,
            deliveries,
            slow_closes,
            retries,
            parked,
            pushes_sent,
            pushes_failed,
            push_tokens_removed,
            accept_latency,
            delivery_latency,
            push_latency,
            queued,
            lags: _,
        } = &metrics;
        let door = DoorLabel { door: "ws" };
        let reason = ReasonLabel { reason: "test" };
        let topic = TopicLabel {
            topic: "send.v2".into(),
        };
        accepted.get_or_create(&door).inc();
        refused.get_or_create(&reason).inc();
        limited.get_or_create(&reason).inc();
        refused_requests.get_or_create(&reason).inc();
        connections.inc();
        deliveries
            .get_or_create(&OutcomeLabel { outcome: "live" })
            .inc();
        slow_closes.inc();
        retries.get_or_create(&topic).inc();
        parked.get_or_create(&topic).inc();
        pushes_sent.inc();
        pushes_failed.get_or_create(&reason).inc();
        push_tokens_removed.inc();
        accept_latency.get_or_create(&door).observe(0.001);
        delivery_latency.observe(0.001);
        push_latency.observe(0.001);
        queued.inc();
        let mut registry = Registry::with_prefix("samvad");
        metrics.register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn the_dashboard_shows_every_metric_and_only_those_exported() {
        let text = every_metric();
        let exported: HashSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        assert!(exported.contains("samvad_consumer_lag"), "{text}");
        let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
        let mut shown = HashSet::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            let title = panel["title"].as_str().unwrap();
            assert!(
                !panel["description"].as_str().unwrap().is_empty(),
                "{title}"
            );
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                let names = expr
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|word| word.starts_with("samvad_"));
                for name in names {
                    let family = ["_bucket", "_sum", "_count", "_total"]
                        .iter()
                        .find_map(|suffix| name.strip_suffix(suffix))
                        .filter(|family| exported.contains(family))
                        .unwrap_or(name);
                    assert!(
                        exported.contains(family),
                        "panel {title:?} shows {name}, which is not exported"
                    );
                    shown.insert(family);
                }
            }
        }
        for family in &exported {
            assert!(shown.contains(family), "{family} is on no panel");
        }
    }
}
