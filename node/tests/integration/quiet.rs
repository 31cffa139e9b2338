//! Quiet shards (`raft::quiet`): idle shards stop their Raft timers on every replica,
//! wake for traffic, and still fail over when their leader's node is lost.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use stockpile_client::{Client, Error, new_request_id};

use crate::common::{Options, SHARD_SKUS, SHARDS_WITH_META, TestCluster, eventually, scrape};

/// Every running node's view: shard → (asleep, term).
async fn views(
    cluster: &TestCluster,
    client: &Client,
) -> BTreeMap<u64, BTreeMap<u64, (bool, u64)>> {
    let mut all = BTreeMap::new();
    for id in cluster.running() {
        if let Ok(s) = client.node_status(id).await {
            let shards = s
                .shards
                .iter()
                .map(|s| (s.shard_id, (s.asleep, s.term)))
                .collect();
            all.insert(id, shards);
        }
    }
    all
}

/// Waits until every replica on every running node is asleep; returns each shard's
/// term (they agree).
async fn all_asleep(
    cluster: &TestCluster,
    client: &Client,
    within: Duration,
) -> BTreeMap<u64, u64> {
    let (terms, _) = eventually(within, || async {
        let v = views(cluster, client).await;
        let mut terms = BTreeMap::new();
        let asleep = v.len() == cluster.running().len()
            && v.values()
                .all(|shards| shards.values().all(|(asleep, _)| *asleep));
        for shards in v.values() {
            for (shard, (_, term)) in shards {
                terms.entry(*shard).or_insert(*term);
            }
        }
        if asleep && terms.len() == SHARDS_WITH_META {
            Ok(terms)
        } else {
            Err(Error::Unavailable {
                message: format!("not every replica is asleep yet: {v:?}"),
            })
        }
    })
    .await;
    terms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_shards_sleep_wake_for_traffic_and_fail_over_when_their_leaders_node_dies() {
    let mut cluster = TestCluster::start(Options {
        extra_toml: "quiet_after_ms = 1000\n".into(),
        ..Options::default()
    });
    let client = cluster.client().await;
    cluster.wait_leaders(&client).await;
    let skus = SHARD_SKUS.map(|(_, sku)| sku);
    for sku in skus {
        client.set_stock(sku, 1_000).await.expect("set");
    }

    // Idle: every replica stops its timer, and nothing elects while they sleep
    // (the election timeout is 0.6-1.2 s; with timers running and no heartbeats,
    // followers would have stood for election within it).
    let terms = all_asleep(&cluster, &client, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = all_asleep(&cluster, &client, Duration::from_secs(5)).await;
    assert_eq!(terms, later, "no election among sleeping replicas");
    let metrics = scrape(&cluster.metrics_addrs[&1]).await;
    assert!(
        metrics.contains(&format!("stockpile_shards_asleep {SHARDS_WITH_META}")),
        "every replica on node 1 counted asleep"
    );

    // Traffic wakes a shard at once: writes and linearizable reads are served by the
    // sleeping leader on the first try (its lease ran out while it slept; it renews
    // it instead of refusing), and the shard goes back to sleep once idle.
    let started = Instant::now();
    let rpcs = client.rpcs_sent();
    client
        .decrement(skus[0], 1)
        .await
        .expect("decrement wakes shard 1");
    let stock = client
        .get_one(skus[1], stockpile_client::Consistency::Linearizable)
        .await
        .expect("read wakes shard 2");
    assert_eq!(stock.map(|s| s.available), Some(1_000));
    assert_eq!(
        client.rpcs_sent() - rpcs,
        2,
        "the sleeping leaders served the write and the read at the first attempt"
    );
    println!(
        "first write and read on sleeping shards: {:?}",
        started.elapsed()
    );
    let again = all_asleep(&cluster, &client, Duration::from_secs(20)).await;
    assert_eq!(terms, again, "waking for traffic changed no leader");

    // The leader's node is lost: beats stop, followers wake and elect; every shard
    // the node led serves again on the others.
    let leaders = cluster.wait_leaders(&client).await;
    let victim = leaders[&1];
    let led: Vec<u64> = leaders
        .iter()
        .filter(|(_, l)| **l == victim)
        .map(|(s, _)| *s)
        .collect();
    let killed = Instant::now();
    cluster.kill9(victim);
    let rid = new_request_id();
    let (_, took) = eventually(Duration::from_secs(15), || async {
        client.decrement_with_id(rid, skus[0], 1).await
    })
    .await;
    println!(
        "shard 1 served again {:?} after its sleeping leader's node was killed",
        killed.elapsed()
    );
    assert!(took < Duration::from_secs(15));
    let after = cluster.wait_leaders(&client).await;
    for shard in &led {
        assert_ne!(after[shard], victim, "shard {shard} has a new leader");
    }
    for sku in skus {
        client.decrement(sku, 1).await.expect("every shard serves");
    }
    cluster.start_node(victim);
    let final_terms = all_asleep(&cluster, &client, Duration::from_secs(30)).await;
    for shard in &led {
        assert!(
            final_terms[shard] > terms[shard],
            "shard {shard} elected anew"
        );
    }
    let stock = client
        .get_one(skus[0], stockpile_client::Consistency::Linearizable)
        .await
        .expect("read");
    assert_eq!(
        stock.map(|s| s.available),
        Some(997),
        "three sales, each counted once"
    );
}
