//! Integration tests of the client library on real multi-node clusters: failover
//! across the kill of every shard leader, regions, exactly-once retries counted on
//! the server, coalescing, and carts across shards.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::*;
use stockpile_client::{Client, Consistency, Error, Item, new_request_id};

#[derive(Default, Debug, Clone, Copy)]
struct Tally {
    acked: u64,
    refused: u64,
    unknown: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operations_continue_across_killing_every_shard_leader_in_turn() {
    let mut cluster = TestCluster::start(Options::default());
    let client = cluster.client().await;
    cluster.wait_leaders(&client).await;
    let skus: Vec<String> = skus_on_every_shard("stream", 8);
    const STOCK: u64 = 1_000_000;
    for s in &skus {
        client.set_stock(s, STOCK).await.expect("set");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = skus
        .iter()
        .cloned()
        .map(|sku| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut t = Tally::default();
                let mut other = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match client.decrement(&sku, 1).await {
                        Ok(_) => t.acked += 1,
                        Err(Error::OutcomeUnknown { .. }) => t.unknown += 1,
                        Err(e) if e.is_definite() => {
                            t.refused += 1;
                            other.push(e.to_string());
                        }
                        Err(e) => other.push(format!("neither definite nor unknown: {e}")),
                    }
                }
                (sku, t, other)
            })
        })
        .collect();
    let mut progress = Vec::new();
    for shard in 1..=4u64 {
        let leader = cluster.leader_of(&client, shard).await;
        let before = client
            .node_status(if leader == 1 { 2 } else { 1 })
            .await
            .expect("status")
            .requests_applied_total;
        cluster.kill9(leader);
        // The stream goes on without the killed leader: poll until the survivors have
        // applied more (the new leader's elected and the clients found it).
        let survivor = (1..=3).find(|n| *n != leader).expect("survivor");
        let killed_at = std::time::Instant::now();
        let after = loop {
            let applied = client
                .node_status(survivor)
                .await
                .expect("status")
                .requests_applied_total;
            if applied > before + 10 || killed_at.elapsed() > Duration::from_secs(15) {
                break applied;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        progress.push(after.saturating_sub(before));
        cluster.start_node(leader);
        cluster.wait_leaders(&client).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    for w in workers {
        let (sku, t, other) = w.await.expect("worker");
        assert!(
            other.iter().all(|e| !e.starts_with("neither")),
            "{sku}: {other:?}"
        );
        let left = must_get(&client, &sku).await.expect("present").on_hand;
        let taken = STOCK - left;
        assert!(
            taken >= t.acked,
            "{sku}: an acknowledged decrement was lost ({taken} taken, {} acked)",
            t.acked
        );
        assert!(
            taken <= t.acked + t.unknown,
            "{sku}: more taken ({taken}) than acked ({}) + unknown ({})",
            t.acked,
            t.unknown
        );
        total.acked += t.acked;
        total.refused += t.refused;
        total.unknown += t.unknown;
    }
    eprintln!(
        "stream across 4 leader kills: {total:?}; operations applied during each kill window: {progress:?}"
    );
    assert!(
        progress.iter().all(|p| *p > 0),
        "the stream kept going through every kill: {progress:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_regions_local_stale_reads_and_surviving_a_region_loss() {
    let regions: BTreeMap<u64, String> = [
        (1, "eu-west"),
        (2, "eu-west"),
        (3, "us-east"),
        (4, "us-east"),
        (5, "ap-south"),
    ]
    .into_iter()
    .map(|(n, r)| (n, r.to_string()))
    .collect();
    let mut cluster = TestCluster::start(Options {
        nodes: 5,
        regions: regions.clone(),
        shard_replicas: Some([vec![1, 3, 5], vec![2, 4, 5], vec![1, 4, 5], vec![2, 3, 5]]),
        ..Default::default()
    });
    let eu = cluster.client_in(Some("eu-west")).await;
    cluster.wait_leaders(&eu).await;
    let skus: Vec<&str> = SHARD_SKUS.iter().map(|(_, s)| *s).collect();
    for s in &skus {
        eu.set_stock(s, 10).await.expect("set");
    }
    cluster.wait_converged(&eu).await;
    for _ in 0..5 {
        for r in eu.get(&skus, Consistency::Stale).await.expect("stale read") {
            assert_eq!(
                regions[&r.node_id], "eu-west",
                "{} was read from node {} in {}",
                r.sku, r.node_id, regions[&r.node_id]
            );
            assert_eq!(r.stock.map(|s| s.on_hand), Some(10));
        }
    }
    // Lose all of us-east: every shard keeps a majority in eu-west + ap-south.
    cluster.kill9(3);
    cluster.kill9(4);
    for s in &skus {
        let (u, _) = eventually(Duration::from_secs(20), || eu.decrement(s, 1)).await;
        assert_eq!(u.stock.on_hand, 9);
    }
    let reads = eu
        .get(&skus, Consistency::Linearizable)
        .await
        .expect("linearizable read");
    assert!(
        reads
            .iter()
            .all(|r| r.stock.as_ref().map(|s| s.on_hand) == Some(9))
    );
    // A client whose own region is gone fails over to the others.
    let us = cluster.client_in(Some("us-east")).await;
    for s in &skus {
        assert_eq!(
            us.decrement(s, 1)
                .await
                .expect("write from us-east client")
                .stock
                .on_hand,
            8
        );
        let r = us.get(&[s], Consistency::Stale).await.expect("stale read");
        assert_ne!(regions[&r[0].node_id], "us-east");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_mutation_is_applied_once_counted_on_the_servers() {
    let cluster = TestCluster::start(Options::default());
    let client = cluster.client().await;
    cluster.wait_leaders(&client).await;
    client.set_stock("kiwi-once", 100).await.expect("set");
    cluster.wait_converged(&client).await;
    let counts = |client: Client| async move {
        let mut v = Vec::new();
        for id in 1..=3 {
            let s = client.node_status(id).await.expect("status");
            v.push((s.requests_applied_total, s.requests_replayed_total));
        }
        v
    };
    let before = counts(client.clone()).await;
    let rid = new_request_id();
    for _ in 0..3 {
        let u = client
            .decrement_with_id(rid, "kiwi-once", 5)
            .await
            .expect("decrement");
        assert_eq!(u.stock.on_hand, 95);
    }
    cluster.wait_converged(&client).await;
    let after = counts(client.clone()).await;
    for (node, (b, a)) in before.iter().zip(&after).enumerate() {
        assert_eq!(
            a.0 - b.0,
            1,
            "node {}: the decrement was executed once",
            node + 1
        );
        assert_eq!(
            a.1 - b.1,
            2,
            "node {}: the two retries were answered from the stored outcome",
            node + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_decrements_are_coalesced_into_few_rpcs() {
    let cluster = TestCluster::start(Options::default());
    let client = cluster.client().await;
    cluster.wait_leaders(&client).await;
    let skus: Vec<String> = skus_on_every_shard("co", 20);
    for s in &skus {
        client.set_stock(s, 1_000).await.expect("set");
    }
    let run = |client: Client| {
        let skus = skus.clone();
        async move {
            let before = client.rpcs_sent();
            let tasks: Vec<_> = (0..1_000)
                .map(|i| {
                    let (c, sku) = (client.clone(), skus[i % skus.len()].clone());
                    tokio::spawn(async move { c.decrement(&sku, 1).await })
                })
                .collect();
            for t in tasks {
                t.await.expect("task").expect("decrement");
            }
            client.rpcs_sent() - before
        }
    };
    let coalesced = run(client.clone()).await;
    let plain = run(cluster.client().await).await;
    let separate = {
        let c = cluster
            .builder()
            .no_coalescing()
            .build()
            .await
            .expect("client");
        run(c).await
    };
    eprintln!(
        "1,000 concurrent decrements: {coalesced} RPCs coalesced (again: {plain}), {separate} without coalescing"
    );
    assert!(
        coalesced <= 200,
        "coalescing sent {coalesced} RPCs for 1,000 decrements"
    );
    assert!(separate >= 1_000);
    for s in &skus {
        assert_eq!(
            must_get(&client, s).await.expect("present").on_hand,
            1_000 - 150
        );
    }
    // The explicit batch API: one result per mutation, in order.
    let results = client
        .batch(vec![
            stockpile_client::Mutation::Decrement {
                sku: skus[0].clone(),
                quantity: 1,
            },
            stockpile_client::Mutation::Decrement {
                sku: skus[1].clone(),
                quantity: 100_000,
            },
            stockpile_client::Mutation::SetStock {
                sku: "zebra-new".into(),
                on_hand: 3,
                expected_version: None,
            },
        ])
        .await
        .expect("batch");
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(Error::InsufficientStock { .. })));
    assert_eq!(
        results[2]
            .clone()
            .expect("set")
            .stock()
            .expect("stock")
            .stock
            .on_hand,
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cart_that_one_shard_cannot_fill_leaves_no_hold_behind() {
    let cluster = TestCluster::start(Options::default());
    let client = cluster.client().await;
    cluster.wait_leaders(&client).await;
    client.set_stock("apple-cart", 10).await.expect("set");
    client.set_stock("grape-cart", 1).await.expect("set");
    let e = must_fail_with(
        client
            .reserve_cart(
                &[Item::new("apple-cart", 3), Item::new("grape-cart", 2)],
                Duration::from_secs(60),
            )
            .await,
        "INSUFFICIENT_STOCK",
    );
    assert!(
        matches!(&e, Error::InsufficientStock { sku, available: 1 } if sku == "grape-cart"),
        "{e:?}"
    );
    for sku in ["apple-cart", "grape-cart"] {
        let s = must_get(&client, sku).await.expect("present");
        assert_eq!(s.reserved, 0, "{sku}: no hold left behind");
    }
    let cart = client
        .reserve_cart(
            &[Item::new("apple-cart", 3), Item::new("grape-cart", 1)],
            Duration::from_secs(60),
        )
        .await
        .expect("cart");
    assert_eq!(cart.parts.len(), 2);
    assert_eq!(
        must_get(&client, "apple-cart")
            .await
            .expect("present")
            .reserved,
        3
    );
    let (found, _) = client.find_cart(&cart.cart_id).await.expect("find");
    assert_eq!(found.parts.len(), 2);
    for r in client.confirm_cart(&found).await {
        r.expect("confirm part");
    }
    let (a, g) = (
        must_get(&client, "apple-cart").await.expect("a"),
        must_get(&client, "grape-cart").await.expect("g"),
    );
    assert_eq!((a.on_hand, a.reserved, g.on_hand, g.reserved), (7, 0, 0, 0));
}
