//! One contract, every subscription bus: Kafka as librdkafka's own mock cluster, a real
//! Kafka-protocol broker (tansu) and a real NATS server with JetStream, each started for the
//! test. (The all-in-one in-line bus has no
//! subscriptions; its tests are beside it.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rdkafka::mocking::MockCluster;
use samvad_bus::{
    Bus, KafkaBus, KafkaConfig, NatsBus, NatsConfig, Received, Record, Subscription, Topic,
};

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

/// Waits, waiting for records as a consumer does (the client learns its lag meanwhile), until
/// `sub` says it is `want` records behind. Nothing more may arrive.
async fn lag_becomes(sub: &mut Box<dyn Subscription>, want: u64, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while sub.lag().get() != Some(want) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: lag {:?}, not {want}, within {WAIT:?}",
            sub.lag().get()
        );
        let more = tokio::time::timeout(Duration::from_millis(200), sub.next_batch(64)).await;
        assert!(more.is_err(), "{what}: nothing more to read");
    }
}

/// A member's lag: none once it has done everything; on Kafka, the records after its group's
/// committed offsets, read or not.
async fn lag_contract(bus: &dyn Bus, kafka: bool) {
    let topic = Topic::Gateway("lag".into());
    let mut sub = bus.subscribe(&topic, "lag").await.unwrap();
    let publish = |from: u32, n: u32| {
        let records = (from..from + n).map(|i| record("ann", i)).collect();
        bus.publish(&topic, records)
    };
    publish(0, 10).await.unwrap();
    let got = read(&mut sub, 10, "lag").await;
    sub.commit(&got).await.unwrap();
    lag_becomes(&mut sub, 0, "all done").await;
    if kafka {
        publish(10, 5).await.unwrap();
        let got = read(&mut sub, 5, "five more").await;
        lag_becomes(&mut sub, 5, "five read, none done").await;
        sub.commit(&got).await.unwrap();
        lag_becomes(&mut sub, 0, "the five done").await;
    }
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
    lag_contract(&bus, true).await;
}

fn nats_config(url: String, instance: &str) -> NatsConfig {
    NatsConfig {
        url,
        credentials: None,
        ca_file: None,
        prefix: "t.".into(),
        partitions: 3,
        replicas: 1,
        instance: Some(instance.into()),
    }
}

#[tokio::test]
async fn nats_keeps_the_contract() {
    let server = samvad_testkit::nats();
    let bus = NatsBus::connect(nats_config(server.url.clone(), "one"))
        .await
        .unwrap();
    contract(&bus, "k").await;
    gateway_contract(&bus, "g1").await;
    lag_contract(&bus, false).await;
}

/// Two members of a group on NATS share its partitions, each keeping every key's order; when
/// one leaves, the other takes its partitions over, starting with what the first had read and
/// not committed.
#[tokio::test]
async fn nats_members_share_a_group_and_take_over() {
    use std::collections::{BTreeMap, BTreeSet};

    let server = samvad_testkit::nats();
    let connect = |instance| NatsBus::connect(nats_config(server.url.clone(), instance));
    let (one, two) = (connect("one").await.unwrap(), connect("two").await.unwrap());
    let mut first = one.subscribe(&Topic::Send, "delivery").await.unwrap();
    let mut second = two.subscribe(&Topic::Send, "delivery").await.unwrap();
    let keys: Vec<String> = (0..12).map(|i| format!("user{i}")).collect();
    // (member, key) → the values that member read for that key, in the order read.
    let mut seen: BTreeMap<(u8, String), Vec<u32>> = BTreeMap::new();
    let mut note = |member: u8, batch: &[Received]| {
        for r in batch {
            seen.entry((member, r.key.clone()))
                .or_default()
                .push(value(r));
        }
    };

    // The second member joined with every partition held; it gets its share once the first
    // gives some back, within a few lease rounds.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut round = 0;
    let mut both = false;
    while !both {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second member got no partition"
        );
        round += 1;
        let records = keys.iter().map(|k| record(k, round)).collect();
        one.publish(&Topic::Send, records).await.unwrap();
        let (mut by_first, mut by_second) = (0, 0);
        let until = tokio::time::Instant::now() + Duration::from_millis(500);
        while tokio::time::Instant::now() < until {
            tokio::select! {
                Ok(batch) = first.next_batch(64) => {
                    first.commit(&batch).await.unwrap();
                    by_first += batch.len();
                    note(1, &batch);
                }
                Ok(batch) = second.next_batch(64) => {
                    second.commit(&batch).await.unwrap();
                    by_second += batch.len();
                    note(2, &batch);
                }
                _ = tokio::time::sleep_until(until) => {}
            }
        }
        both = by_first > 0 && by_second > 0;
    }
    for ((member, key), values) in &seen {
        assert!(
            values.is_sorted(),
            "member {member} read {key} out of order: {values:?}"
        );
    }
    for round in 1..=round {
        for key in &keys {
            assert!(
                seen.iter()
                    .any(|((_, k), v)| k == key && v.contains(&round)),
                "{key}'s record of round {round} reached neither member"
            );
        }
    }

    // The second member reads a batch and leaves without committing it.
    for i in 0..5 {
        let records = keys.iter().map(|k| record(k, 1000 + i)).collect();
        one.publish(&Topic::Send, records).await.unwrap();
    }
    let mut uncommitted = BTreeSet::new();
    while uncommitted.is_empty() {
        let batch = tokio::time::timeout(WAIT, second.next_batch(256))
            .await
            .expect("the second member reads its partitions")
            .unwrap();
        uncommitted.extend(
            batch
                .iter()
                .filter(|r| value(r) >= 1000)
                .map(|r| r.key.clone()),
        );
    }
    drop(second);
    let mut again: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    while !uncommitted
        .iter()
        .all(|k| again.get(k).is_some_and(|v| v.len() >= 5))
    {
        let batch = tokio::time::timeout(WAIT, first.next_batch(256))
            .await
            .expect("the first member takes the partitions over")
            .unwrap();
        first.commit(&batch).await.unwrap();
        for r in batch.iter().filter(|r| value(r) >= 1000) {
            again.entry(r.key.clone()).or_default().push(value(r));
        }
    }
    for key in &uncommitted {
        assert_eq!(
            again[key],
            [1000, 1001, 1002, 1003, 1004],
            "{key}: read again, in order"
        );
    }
}

/// A NATS server that crashes and comes back: a publish meanwhile fails (nothing is acked),
/// nothing is lost or reordered, and a member that joins the group afterwards (a service
/// restarted) takes its partitions and reads on.
#[tokio::test]
async fn nats_reads_on_after_the_server_restarts() {
    let mut server = samvad_testkit::nats();
    let bus = NatsBus::connect(nats_config(server.url.clone(), "one"))
        .await
        .unwrap();
    let mut sub = bus.subscribe(&Topic::Send, "delivery").await.unwrap();
    bus.publish(&Topic::Send, vec![record("ann", 1)])
        .await
        .unwrap();
    let got = read(&mut sub, 1, "before the restart").await;
    sub.commit(&got).await.unwrap();
    server.restart();
    // The client reconnects by itself; until it has, publishes fail and are retried here as
    // a gateway's client would retry an unacked message.
    let deadline = tokio::time::Instant::now() + WAIT;
    while bus
        .publish(&Topic::Send, vec![record("ann", 2)])
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no publish within {WAIT:?} of the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(sub);
    let mut sub = bus.subscribe(&Topic::Send, "delivery").await.unwrap();
    let mut after = Vec::new();
    while !after.contains(&2) {
        after.extend(
            read(&mut sub, 1, "after the restart")
                .await
                .iter()
                .map(value),
        );
    }
    // A crash may lose the server's note of the last ack (JetStream writes consumer state
    // behind), so the committed record may come again — before the new one, never after.
    assert!(
        after == [2] || after == [1, 2],
        "read after the restart: {after:?}"
    );
}
