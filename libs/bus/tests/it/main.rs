//! One contract, every subscription bus: Kafka as librdkafka's own mock cluster, and a real
//! Kafka-protocol broker (tansu) started for the test. (The all-in-one in-line bus has no
//! subscriptions; its tests are beside it.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rdkafka::mocking::MockCluster;
use samvad_bus::{Bus, KafkaBus, KafkaConfig, Received, Record, Subscription, Topic};

const WAIT: Duration = Duration::from_secs(30);

fn record(key: &str, i: u32) -> Record {
    Record {
        key: key.into(),
        value: i.to_be_bytes().to_vec().into(),
    }
}

fn value(r: &Received) -> u32 {
    u32::from_be_bytes(r.value.to_bytes().unwrap()[..].try_into().unwrap())
}

/// Reads until `n` records have arrived.
async fn read(sub: &mut Box<dyn Subscription>, n: usize, what: &str) -> Vec<Received> {
    let mut got = Vec::new();
    while got.len() < n {
        let batch = tokio::time::timeout(WAIT, sub.next_batch(64))
            .await
            .unwrap_or_else(|_| panic!("{what}: {} of {n} records within {WAIT:?}", got.len()))
            .unwrap();
        got.extend(batch);
    }
    got
}

/// What every bus must do. `fresh` names keep runs and backends apart.
async fn contract(bus: &dyn Bus, fresh: &str) {
    // Each key keeps its publish order, whatever partition it lands on.
    let mut sub = bus
        .subscribe(&Topic::Send, &format!("{fresh}-delivery"))
        .await
        .unwrap();
    for i in 0..30 {
        let key = ["ann", "bob", "cat"][i as usize % 3];
        bus.publish(&Topic::Send, vec![record(key, i)])
            .await
            .unwrap();
    }
    let got = read(&mut sub, 30, "first group").await;
    for key in ["ann", "bob", "cat"] {
        let values: Vec<u32> = got.iter().filter(|r| r.key == key).map(value).collect();
        let mut sorted = values.clone();
        sorted.sort_unstable();
        assert_eq!(values, sorted, "{key}'s records in order");
        assert_eq!(values.len(), 10);
    }

    // Another group sees everything too.
    let mut audit = bus
        .subscribe(&Topic::Send, &format!("{fresh}-audit"))
        .await
        .unwrap();
    assert_eq!(read(&mut audit, 30, "second group").await.len(), 30);

    // Committed work is not handed out again; uncommitted work is.
    sub.commit(&got).await.unwrap();
    bus.publish(&Topic::Send, vec![record("ann", 100), record("ann", 101)])
        .await
        .unwrap();
    let after = read(&mut sub, 2, "after commit").await;
    assert_eq!(after.iter().map(value).collect::<Vec<_>>(), [100, 101]);
    drop(sub);
    let mut again = bus
        .subscribe(&Topic::Send, &format!("{fresh}-delivery"))
        .await
        .unwrap();
    let redelivered = read(&mut again, 2, "after rejoining").await;
    assert_eq!(
        redelivered.iter().map(value).collect::<Vec<_>>(),
        [100, 101],
        "read but uncommitted: handed out again"
    );
}

/// A gateway's topic: what is published once it subscribed reaches it, even before the
/// broker has finished assigning it partitions.
async fn gateway_contract(bus: &dyn Bus, fresh: &str) {
    let topic = Topic::Gateway(fresh.into());
    let mut sub = bus.subscribe(&topic, fresh).await.unwrap();
    bus.publish(&topic, vec![record("bob", 7)]).await.unwrap();
    assert_eq!(value(&read(&mut sub, 1, "gateway").await[0]), 7);
}

fn kafka_config(brokers: String, prefix: &str) -> KafkaConfig {
    KafkaConfig {
        brokers,
        prefix: prefix.into(),
        partitions: 3,
        replication: 1,
        instance: None,
        fetch_wait: std::time::Duration::from_millis(10),
    }
}

#[tokio::test]
async fn kafka_keeps_the_contract_on_the_mock_cluster() {
    let cluster = MockCluster::new(1).unwrap();
    // The mock cluster has no CreateTopics; an operator would have made the topics like this.
    let topics = Topic::DURABLE
        .into_iter()
        .chain([Topic::Gateway("g1".into())])
        .map(|t| format!("mock.{}", t.name()));
    for name in topics {
        cluster.create_topic(&name, 3, 1).unwrap();
    }
    let bus = KafkaBus::connect(kafka_config(cluster.bootstrap_servers(), "mock."))
        .await
        .unwrap();
    contract(&bus, "k").await;
    gateway_contract(&bus, "g1").await;
}

#[tokio::test]
async fn kafka_keeps_the_contract_on_a_real_broker() {
    let broker = samvad_testkit::kafka();
    let mut bus = None;
    for _ in 0..100 {
        match KafkaBus::connect(kafka_config(broker.url.clone(), "t.")).await {
            Ok(b) => {
                bus = Some(b);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let bus = bus.expect("tansu came up");
    contract(&bus, "k").await;
    gateway_contract(&bus, "g1").await;
}
