//! Shards merge while they sell (issue: Elastic cluster II, merge): the right shard is
//! frozen, its stock, reservations (with their expiry timers) and stored outcomes are
//! carried into its left neighbour at one log index on every replica; the merged shard
//! serves; a client whose map predates the merge follows SHARD_MOVED without an error
//! reaching the caller; a request retried across the merge applies once; a List walked
//! across it returns every SKU exactly once; a replica that was down during the merge
//! drops its copy of the merged shard when it catches up; two cold neighbours merge by
//! themselves.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use stockpile_client::{Client, Consistency, Item, ReservationState, new_request_id};

use crate::common::{Options, TestCluster, eventually, must_get};
use crate::split::{converged, sell};

const STOCK: u64 = 1_000_000;
/// Shard 4 of the test layout covers ["t", ""): every SKU here lives in it.
const LEFT: u64 = 4;
const SPLIT_AT: &str = "tomato-20";

fn skus() -> Vec<String> {
    (0..40).map(|i| format!("tomato-{i:02}")).collect()
}

/// Every shard's digests once all replicas agree and `gone` runs nowhere.
async fn converged_without(
    cluster: &TestCluster,
    client: &Client,
    gone: u64,
) -> BTreeMap<u64, (u64, u64)> {
    let (digests, _) = eventually(Duration::from_secs(30), || async {
        let d = converged(cluster, client).await;
        if d.contains_key(&gone) {
            Err(stockpile_client::Error::Internal {
                message: format!("shard {gone} still runs: {d:?}"),
            })
        } else {
            Ok(d)
        }
    })
    .await;
    digests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(clippy::too_many_lines)] // one scenario, told in order
async fn a_split_shard_merges_back_under_load_and_clients_follow() {
    let mut cluster = TestCluster::start(Options::default());
    let client = cluster.client().await;
    let leaders = cluster.wait_leaders(&client).await;
    let skus = skus();
    for s in &skus {
        client.set_stock(s, STOCK).await.expect("set stock");
    }
    let split = client
        .split_shard(LEFT, Some(SPLIT_AT))
        .await
        .expect("split");
    let right = split.child.shard_id;
    // Before the merge, on the right shard: a hold that is confirmed after it, one that
    // expires after it, and a decrement whose request id is retried after it.
    let hold = |sku: &str, quantity| Item {
        sku: sku.to_string(),
        quantity,
    };
    let kept = client
        .reserve(&[hold("tomato-30", 5)], Duration::from_secs(600))
        .await
        .expect("reserve");
    assert_eq!(kept.applied.shard_id, right);
    let expiring = client
        .reserve(&[hold("tomato-35", 3)], Duration::from_secs(4))
        .await
        .expect("reserve expiring");
    let retried_id = new_request_id();
    let first = client
        .decrement_with_id(retried_id, "tomato-25", 7)
        .await
        .expect("decrement before the merge");
    assert_eq!(first.applied.shard_id, right);

    // A node that misses the merge and catches up afterwards.
    let victim = (1..=3).find(|n| *n != leaders[&LEFT]).expect("a follower");
    let stale = cluster.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    let sold = sell(stale.clone(), skus.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cluster.stop(victim), Some(0), "SIGTERM exits 0");

    // A List's first page, taken before the merge (its position is continued after).
    let first_page = client
        .list(Some("t"), 7, Consistency::Linearizable)
        .await
        .expect("list before the merge");
    let merged = client.merge_shards(LEFT, right).await.expect("merge");
    assert_eq!(merged.shard_id, LEFT);
    assert_eq!((merged.start.as_str(), merged.end.as_str()), ("t", ""));
    assert!(
        merged.epoch.0 > split.parent.epoch.0 + 1,
        "a split then a merge at the same SKU is a change: version {} after {}",
        merged.epoch.0,
        split.parent.epoch.0
    );
    let again = client
        .merge_shards(LEFT, right)
        .await
        .expect("the same merge again is answered, not refused");
    assert_eq!(again.epoch.0, merged.epoch.0);
    cluster.start_node(victim);

    // The stale client keeps selling on both sides of the old boundary.
    let at_merge: Vec<u64> = sold.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    eventually(Duration::from_secs(20), || async {
        let grew = |k: usize| sold[k].load(Ordering::Relaxed) >= at_merge[k] + 5;
        if grew(0) && grew(39) {
            Ok(())
        } else {
            Err(stockpile_client::Error::Internal {
                message: "no sales on both sides since the merge".into(),
            })
        }
    })
    .await;

    // The right shard's hold, timer and stored outcome live on in the left shard.
    let confirmed = client
        .confirm(&kept.reservation.reservation_id, Some("tomato-30"))
        .await
        .expect("confirm after the merge");
    assert_eq!(confirmed.reservation.state, ReservationState::Confirmed);
    assert_eq!(confirmed.applied.shard_id, LEFT);
    let (expired, _) = eventually(Duration::from_secs(20), || async {
        let r = client
            .get_reservation(
                &expiring.reservation.reservation_id,
                Some("tomato-35"),
                Consistency::Linearizable,
            )
            .await?;
        match r.state {
            ReservationState::Expired => Ok(r),
            s => Err(stockpile_client::Error::Internal {
                message: format!("still {s:?}"),
            }),
        }
    })
    .await;
    assert_eq!(expired.shard_id, LEFT, "the left shard's timer expired it");
    let retried = client
        .decrement_with_id(retried_id, "tomato-25", 7)
        .await
        .expect("retry");
    assert!(retried.applied.replayed, "applied once, answered again");
    assert_eq!(retried.applied.shard_id, LEFT);

    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The walk begun before the merge goes on after it: every SKU once, in order.
    let mut walked: Vec<String> = first_page.into_iter().map(|s| s.sku).collect();
    let mut after: Option<String> = walked.last().cloned();
    loop {
        let page = client
            .list(after.as_deref(), 7, Consistency::Linearizable)
            .await
            .expect("list");
        if page.is_empty() {
            break;
        }
        after = page.last().map(|s| s.sku.clone());
        walked.extend(page.into_iter().map(|s| s.sku));
    }
    assert_eq!(walked, skus, "every SKU once, in order, across the merge");
    for (k, sku) in skus.iter().enumerate() {
        let mut expected = STOCK - sold[k].load(Ordering::Relaxed);
        if sku == "tomato-25" {
            expected -= 7;
        }
        if sku == "tomato-30" {
            expected -= 5;
        }
        let got = must_get(&client, sku).await.expect("record");
        assert_eq!(got.on_hand, expected, "{sku}");
        assert_eq!(got.reserved, 0, "{sku}: no hold left");
    }
    // Every node, the one that missed the merge too, ends without the merged shard.
    converged_without(&cluster, &client, right).await;
    let log = std::fs::read_to_string(cluster.log_path(victim)).expect("victim's log");
    assert!(
        log.contains("dropped the replica of a merged shard"),
        "the victim dropped its copy when it caught up"
    );
    let map = client
        .refresh_map(std::time::Instant::now() + Duration::from_secs(5))
        .await
        .expect("map");
    assert!(map.shard(right).is_none(), "{:?}", map.shards);

    // Refusals name what was wrong.
    let e = client.merge_shards(0, 1).await.expect_err("meta");
    assert_eq!(e.reason(), "INVALID_ARGUMENT", "{e}");
    let e = client.merge_shards(1, 3).await.expect_err("not neighbours");
    assert_eq!(e.reason(), "INVALID_ARGUMENT", "{e}");
    assert!(e.to_string().contains("not the right neighbour"), "{e}");
}

/// With `[merge]` on: small, cold neighbours merge by themselves, one pair at a time,
/// until one shard is left; every SKU keeps its stock and is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_neighbours_merge_by_themselves() {
    let cluster = TestCluster::start(Options {
        extra_toml: "[split]\ncheck_interval_ms = 250\n\
                     [merge]\nkeys_max = 100\ncold_entries_per_s = 5\ncold_window_ms = 1500\n"
            .into(),
        ..Default::default()
    });
    let client = cluster.client().await;
    cluster.wait_leaders(&client).await;
    let skus = ["apple", "grape", "kiwi", "peach", "tomato"];
    for (i, s) in skus.iter().enumerate() {
        client.set_stock(s, 10 + i as u64).await.expect("set stock");
    }
    let (map, _) = eventually(Duration::from_secs(60), || async {
        let map = client
            .refresh_map(std::time::Instant::now() + Duration::from_secs(2))
            .await?;
        if map.shards.len() == 1 {
            Ok(map)
        } else {
            Err(stockpile_client::Error::Internal {
                message: format!("{} shards still", map.shards.len()),
            })
        }
    })
    .await;
    let only = &map.shards[0];
    assert_eq!((only.start.as_str(), only.end.as_str()), ("", ""));
    for (i, s) in skus.iter().enumerate() {
        let got = must_get(&client, s).await.expect("record");
        assert_eq!(got.on_hand, 10 + i as u64, "{s}");
        client
            .decrement(s, 1)
            .await
            .expect("served after the merges");
    }
    converged(&cluster, &client).await;
}
