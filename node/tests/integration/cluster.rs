//! Integration tests of the core store on real 3-node clusters (issue: core).

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use stockpile_client::Consistency;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_and_linearizable_reads_on_every_shard() {
    let cluster = TestCluster::start(Options::default());
    let client = cluster.client().await;
    cluster.wait_leaders(&client).await;
    for (shard, sku) in SHARD_SKUS {
        let set = client.set_stock(sku, 50).await.expect("set");
        assert_eq!(set.applied.shard_id, shard, "{sku} lives in shard {shard}");
        let dec = client.decrement(sku, 8).await.expect("decrement");
        assert_eq!(dec.stock.available, 42);
        let adj = client.adjust_stock(sku, -2).await.expect("adjust");
        assert_eq!(adj.stock.on_hand, 40);
        let read = must_get(&client, sku).await.expect("present");
        assert_eq!((read.on_hand, read.reserved, read.version), (40, 0, 3));
    }
    // Listing walks every shard in SKU order, in pages.
    let listed = client
        .list(None, 100, Consistency::Linearizable)
        .await
        .expect("list");
    let skus: Vec<&str> = listed.iter().map(|s| s.sku.as_str()).collect();
    assert_eq!(skus, vec!["apple", "grape", "nectarine", "tomato"]);
    let after = client
        .list(Some("grape"), 1, Consistency::Linearizable)
        .await
        .expect("list");
    assert_eq!(after[0].sku, "nectarine");
    // Bad input is refused with the field named.
    let e = must_fail_with(
        client.set_stock(&"x".repeat(129), 1).await,
        "INVALID_ARGUMENT",
    );
    assert!(e.to_string().contains("sku"), "{e}");
    must_fail_with(client.decrement("apple", 0).await, "INVALID_ARGUMENT");
    must_fail_with(client.decrement("unknown-sku", 1).await, "SKU_NOT_FOUND");
    let e = must_fail_with(client.decrement("apple", 41).await, "INSUFFICIENT_STOCK");
    assert!(
        matches!(
            e,
            stockpile_client::Error::InsufficientStock { available: 40, .. }
        ),
        "{e:?}"
    );
    must_fail_with(
        client.adjust_stock("apple", -41).await,
        "INSUFFICIENT_STOCK",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_leader_fails_over_and_the_restarted_node_catches_up() {
    let mut cluster = TestCluster::start(Options::default());
    let client = cluster.client().await;
    cluster.wait_leaders(&client).await;
    let skus: Vec<String> = skus_on_every_shard("", 40);
    for (i, sku) in skus.iter().enumerate() {
        client
            .set_stock(sku, 1_000 + i as u64)
            .await
            .expect("acknowledged write");
    }
    let victim = cluster.leader_of(&client, 2).await;
    cluster.kill9(victim);
    // A new leader serves shard 2 within a few seconds.
    let (_, took) = eventually(Duration::from_secs(15), || client.decrement("grape-01", 1)).await;
    assert!(took < Duration::from_secs(10), "failover took {took:?}");
    let leaders = cluster.wait_leaders(&client).await;
    assert_ne!(leaders[&2], victim);
    // No acknowledged write was lost.
    for (i, sku) in skus.iter().enumerate() {
        let expected = 1_000 + i as u64 - u64::from(sku == "grape-01");
        assert_eq!(
            must_get(&client, sku).await.expect("present").on_hand,
            expected,
            "{sku}"
        );
    }
    // More writes while the node is down, then restart it: it catches up.
    for sku in &skus {
        client.decrement(sku, 1).await.expect("decrement");
    }
    cluster.start_node(victim);
    cluster.wait_converged(&client).await;
    let refs: Vec<&str> = skus.iter().map(String::as_str).collect();
    let on_victim = client
        .get_from_node(victim, &refs)
        .await
        .expect("stale read from the restarted node");
    let linear = client
        .get(&refs, Consistency::Linearizable)
        .await
        .expect("linearizable read");
    for (a, b) in on_victim.iter().zip(&linear) {
        assert_eq!(
            a.node_id, victim,
            "the stale read was answered by the restarted node"
        );
        assert_eq!(
            a.stock, b.stock,
            "{}: restarted replica differs from the leader",
            a.sku
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_replica_is_rebuilt_from_a_snapshot() {
    let mut cluster = TestCluster::start(Options {
        snapshot_after_entries: 100,
        logs_kept_after_snapshot: 20,
        ..Default::default()
    });
    let client = cluster.client().await;
    let leaders = cluster.wait_leaders(&client).await;
    // The victim must not lead shard 1, so that shard 1 keeps serving while it is down.
    let victim = (1..=3).find(|n| *n != leaders[&1]).expect("a follower");
    for i in 0..20 {
        client
            .set_stock(&format!("apple-{i:02}"), 100)
            .await
            .expect("set");
    }
    let before = client.node_status(victim).await.expect("status");
    let victim_last = before
        .shards
        .iter()
        .find(|s| s.shard_id == 1)
        .expect("shard 1")
        .last_log_index;
    assert_eq!(cluster.stop(victim), Some(0), "SIGTERM exits 0");
    for round in 0..15 {
        for i in 0..20 {
            client
                .decrement(&format!("apple-{i:02}"), 1)
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }
    // The leader purges its log past what the victim had (snapshots are built in the
    // background, so wait for it).
    let leader = cluster.leader_of(&client, 1).await;
    let (purged, _) = eventually(Duration::from_secs(15), || async {
        let s = client.node_status(leader).await?;
        let purged = s
            .shards
            .iter()
            .find(|s| s.shard_id == 1)
            .map(|s| s.purged_index)
            .unwrap_or(0);
        if purged > victim_last {
            Ok(purged)
        } else {
            Err(stockpile_client::Error::Unavailable {
                message: format!("purged only to {purged}"),
            })
        }
    })
    .await;
    assert!(purged > victim_last);
    // The repair procedure: leaders accept the replica's emptied log once.
    let covered = client.allow_rebuild(victim).await.expect("allow rebuild");
    assert_eq!(
        covered,
        vec![0, 1, 2, 3, 4],
        "every shard's leader agreed to rebuild node {victim}"
    );
    cluster.wipe(victim);
    cluster.start_node(victim);
    let digests = cluster.wait_converged(&client).await;
    let after = client.node_status(victim).await.expect("status");
    let s1 = after
        .shards
        .iter()
        .find(|s| s.shard_id == 1)
        .expect("shard 1");
    assert!(
        s1.snapshot_index > 0,
        "the rebuilt replica installed a snapshot"
    );
    assert_eq!(s1.applied_index, digests[&1].0);
    for i in 0..20 {
        let sku = format!("apple-{i:02}");
        let r = client
            .get_from_node(victim, &[&sku])
            .await
            .expect("stale read");
        assert_eq!(
            r[0].stock.as_ref().map(|s| s.on_hand),
            Some(85),
            "{sku} on the rebuilt node"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_decrements_never_oversell() {
    let cluster = TestCluster::start(Options::default());
    let client = cluster.client().await;
    cluster.wait_leaders(&client).await;
    client.set_stock("tomato-hot", 100).await.expect("set");
    // Without client-side coalescing, so that the node's own proposer has to combine
    // the concurrent requests.
    let client = Arc::new(
        cluster
            .builder()
            .no_coalescing()
            .build()
            .await
            .expect("client"),
    );
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.decrement("tomato-hot", 1).await })
        })
        .collect();
    let (mut ok, mut insufficient) = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => ok += 1,
            Err(e) if e.reason() == "INSUFFICIENT_STOCK" => insufficient += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!((ok, insufficient), (100, 100));
    let s = must_get(&client, "tomato-hot").await.expect("present");
    assert_eq!((s.on_hand, s.available), (0, 0));
    // Concurrent writes to all four shards at once, so that log appends of different
    // shards overlap (one shard's appends alone may each find the syncer idle).
    let spread: Vec<_> = skus_on_every_shard("spread", 400)
        .into_iter()
        .map(|sku| {
            let c = client.clone();
            tokio::spawn(async move { c.set_stock(&sku, 1).await })
        })
        .collect();
    for t in spread {
        t.await.expect("task").expect("set");
    }
    // The write path shared work: concurrent requests became fewer Raft entries, and
    // log appends of all nodes shared WAL syncs.
    let (mut requests, mut entries, mut appends, mut syncs) = (0, 0, 0, 0);
    for id in 1..=3 {
        let st = client.node_status(id).await.expect("status");
        requests += st.proposals_total;
        entries += st.raft_entries_proposed_total;
        appends += st.log_appends_total;
        syncs += st.log_syncs_total;
    }
    eprintln!("proposals {requests} in {entries} entries; {appends} log appends in {syncs} syncs");
    assert!(
        entries < requests,
        "concurrent proposals were coalesced: {entries} entries for {requests} requests"
    );
    assert!(
        syncs < appends,
        "appends shared syncs: {syncs} syncs for {appends} appends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_with_a_disagreeing_config_is_refused() {
    let mut cluster = TestCluster::start(Options::default());
    let client = cluster.client().await;
    cluster.wait_leaders(&client).await;
    client.set_stock("apple", 1).await.expect("set");
    assert_eq!(cluster.stop(3), Some(0));
    // Move a shard boundary: node 3's stored ranges disagree now.
    let text = std::fs::read_to_string(&cluster.config)
        .expect("config")
        .replace("end = \"g\"", "end = \"h\"")
        .replace("start = \"g\"", "start = \"h\"");
    std::fs::write(&cluster.config, text).expect("rewrite config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stockpile-node"))
        .arg("--config")
        .arg(&cluster.config)
        .arg("--node-id")
        .arg("3")
        .output()
        .expect("run node");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to start") && stderr.contains("shard 1"),
        "{stderr}"
    );
}
