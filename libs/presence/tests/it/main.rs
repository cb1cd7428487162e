#![allow(clippy::unwrap_used, clippy::expect_used)]
//! One contract, every backend: the in-process presence and Redis (a real `redis-server`
//! started on a free loopback port for the test run).

use std::time::Duration;

use samvad_presence::{MemoryPresence, Presence, RedisPresence};

async fn presence(redis: &samvad_testkit::Server, prefix: &str, ttl: Duration) -> RedisPresence {
    for _ in 0..100 {
        if let Ok(p) = RedisPresence::connect(&redis.url, prefix, ttl).await {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-server did not come up at {}", redis.url);
}

async fn sorted(p: &dyn Presence, user: &str) -> Vec<String> {
    let mut g = p.gateways(user).await.expect("gateways");
    g.sort();
    g
}

/// What every backend must do: a user is on a gateway while any connection there is open.
async fn contract(p: &dyn Presence) {
    assert!(sorted(p, "bob").await.is_empty());
    p.connected("bob", "g1").await.unwrap();
    p.connected("bob", "g1").await.unwrap();
    p.connected("bob", "g2").await.unwrap();
    p.connected("ann", "g2").await.unwrap();
    assert_eq!(sorted(p, "bob").await, ["g1", "g2"]);
    p.disconnected("bob", "g1").await.unwrap();
    assert_eq!(
        sorted(p, "bob").await,
        ["g1", "g2"],
        "one connection on g1 remains"
    );
    p.disconnected("bob", "g1").await.unwrap();
    assert_eq!(sorted(p, "bob").await, ["g2"]);
    p.disconnected("bob", "g2").await.unwrap();
    assert!(sorted(p, "bob").await.is_empty());
    assert_eq!(sorted(p, "ann").await, ["g2"], "other users are untouched");
    p.connected("bob", "g3").await.unwrap();
    let each = p.gateways_each(&["ann", "nobody", "bob", "ann"]).await;
    assert_eq!(
        each.unwrap(),
        [vec!["g2"], vec![], vec!["g3"], vec!["g2"]],
        "one answer per user asked, in order"
    );
    p.disconnected("bob", "g3").await.unwrap();
    p.heartbeat().await.unwrap();
    assert_eq!(sorted(p, "ann").await, ["g2"]);

    assert_eq!(p.last_seen("bob").await.unwrap(), None);
    p.went_offline("bob", 1_000).await.unwrap();
    p.went_offline("bob", 2_000).await.unwrap();
    assert_eq!(p.last_seen("bob").await.unwrap(), Some(2_000));
    assert_eq!(p.last_seen("ann").await.unwrap(), None);
}

#[tokio::test]
async fn memory_presence_keeps_the_contract() {
    contract(&MemoryPresence::default()).await;
}

#[tokio::test]
async fn redis_presence_keeps_the_contract() {
    let redis = samvad_testkit::redis();
    contract(&presence(&redis, "t1:", Duration::from_secs(30)).await).await;
}

#[tokio::test]
async fn redis_presence_is_shared_by_gateways_and_isolated_by_prefix() {
    let redis = samvad_testkit::redis();
    let g1 = presence(&redis, "a:", Duration::from_secs(30)).await;
    let g2 = presence(&redis, "a:", Duration::from_secs(30)).await;
    let other = presence(&redis, "b:", Duration::from_secs(30)).await;
    g1.connected("bob", "g1").await.unwrap();
    g2.connected("bob", "g2").await.unwrap();
    assert_eq!(sorted(&g2, "bob").await, ["g1", "g2"]);
    assert!(sorted(&other, "bob").await.is_empty());
}

#[tokio::test]
async fn a_dead_gateways_entries_expire_and_a_live_ones_do_not() {
    let redis = samvad_testkit::redis();
    let ttl = Duration::from_millis(300);
    let dead = presence(&redis, "e:", ttl).await;
    let live = presence(&redis, "e:", ttl).await;
    assert_eq!(live.heartbeat_every(), Some(ttl / 3));
    dead.connected("bob", "dead").await.unwrap();
    live.connected("bob", "live").await.unwrap();
    for _ in 0..10 {
        tokio::time::sleep(ttl / 3).await;
        live.heartbeat().await.unwrap();
    }
    assert_eq!(sorted(&live, "bob").await, ["live"]);
}

#[tokio::test]
async fn redis_presence_keeps_the_contract_on_a_redis_cluster() {
    let cluster = samvad_testkit::redis_cluster();
    let p = RedisPresence::connect_cluster(&cluster.urls, "c1:", Duration::from_secs(30))
        .await
        .expect("connect to the cluster");
    contract(&p).await;
    // Users whose keys live on different nodes are all renewed by one heartbeat.
    let users: Vec<String> = (0..50).map(|i| format!("user-{i}")).collect();
    for user in &users {
        p.connected(user, "g1").await.unwrap();
    }
    p.heartbeat().await.unwrap();
    for user in &users {
        assert_eq!(sorted(&p, user).await, ["g1"], "{user}");
    }
}

/// Found by the cluster fault run (deployment/faults/cluster.py, `restart:redis`): after Redis
/// restarted, each process's first command failed with "broken pipe" — a gateway's heartbeat,
/// so presence came back 30 s later than it could have, or a client's connection start, so the
/// client was turned away. A dropped connection is opened again, and the command sent again.
#[tokio::test]
async fn the_first_command_after_a_redis_restart_succeeds() {
    let mut redis = samvad_testkit::redis();
    let p = presence(&redis, "r:", Duration::from_secs(30)).await;
    p.connected("bob", "g1").await.unwrap();
    redis.restart();
    p.heartbeat().await.expect("the heartbeat after a restart");
    assert_eq!(sorted(&p, "bob").await, ["g1"]);
    redis.restart();
    p.connected("alice", "g1")
        .await
        .expect("a connection after a restart");
}
