//! Integration tests of the inventory semantics on real 3-node clusters: expiry on
//! the replicated clock, exactly-once retries, snapshot-rebuilt replicas, the race for
//! the last units, and batches as one Raft entry per shard.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use prost::Message;
use stockpile_client::proto as pb;
use stockpile_client::proto::inventory_client::InventoryClient;
use stockpile_client::{Consistency, Error, Item, ReservationState, new_request_id};

async fn raw_inventory(
    cluster: &TestCluster,
    addr: &str,
) -> InventoryClient<tonic::transport::Channel> {
    InventoryClient::new(cluster.channel(addr).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reservation_expires_while_the_leader_that_accepted_it_is_dead() {
    let mut cluster = TestCluster::start(Options {
        extra_toml: "[server]\nsweep_interval_ms = 200\n".into(),
        ..Default::default()
    });
    let client = cluster.client().await;
    cluster.wait_leaders(&client).await;
    client.set_stock("nectarine-x", 10).await.expect("set");
    let held = client
        .reserve(&[Item::new("nectarine-x", 4)], Duration::from_millis(2_000))
        .await
        .expect("reserve");
    assert_eq!(held.stock[0].reserved, 4);
    let accepted_by = held.applied.node_id;
    cluster.kill9(accepted_by);
    // No one touches the reservation: the new leader's sweep must return the stock.
    let (stock, took) = eventually(Duration::from_secs(20), || async {
        let s = client
            .get_one("nectarine-x", Consistency::Linearizable)
            .await?
            .expect("present");
        if s.reserved == 0 {
            Ok(s)
        } else {
            Err(Error::Unavailable {
                message: format!("still reserved: {}", s.reserved),
            })
        }
    })
    .await;
    assert_eq!((stock.on_hand, stock.available), (10, 10));
    eprintln!("stock returned {took:?} after the kill (TTL 2 s)");
    let r = client
        .get_reservation(
            &held.reservation.reservation_id,
            Some("nectarine-x"),
            Consistency::Linearizable,
        )
        .await
        .expect("get");
    assert_eq!(r.state, ReservationState::Expired);
    must_fail_with(
        client
            .confirm(&held.reservation.reservation_id, Some("nectarine-x"))
            .await,
        "RESERVATION_EXPIRED",
    );
    // The restarted node agrees: expiry is the same on every replica.
    cluster.start_node(accepted_by);
    cluster.wait_converged(&client).await;
    let on_node = client
        .get_from_node(accepted_by, &["nectarine-x"])
        .await
        .expect("stale read");
    assert_eq!(on_node[0].stock.as_ref().map(|s| s.reserved), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_decrement_whose_reply_is_lost_is_applied_exactly_once() {
    let mut cluster = TestCluster::start(Options::default());
    let client = cluster.client().await;
    cluster.wait_leaders(&client).await;
    client.set_stock("grape-x", 1_000).await.expect("set");
    let mut expected = 1_000u64;
    // Forced: the shard's followers are paused (for less than an election timeout),
    // so the leader cannot commit before the client's deadline: the client gets no
    // reply. Once they resume, the entry commits; the retry is answered from the
    // stored outcome, and the stock moved once.
    let leader = cluster.leader_of(&client, 2).await;
    let followers: Vec<u64> = (1..=3).filter(|n| *n != leader).collect();
    let rid = new_request_id();
    let mut raw = raw_inventory(&cluster, &cluster.addrs[&leader]).await;
    let mut req = tonic::Request::new(pb::DecrementRequest {
        request_id: rid.to_vec(),
        sku: "grape-x".into(),
        quantity: 5,
    });
    req.set_timeout(Duration::from_millis(150));
    for f in &followers {
        cluster.pause(*f);
    }
    let lost = raw.decrement(req).await;
    tokio::time::sleep(Duration::from_millis(250)).await; // the pause itself: < 600 ms
    for f in &followers {
        cluster.resume(*f);
    }
    let status = lost.expect_err("no reply within the deadline");
    assert!(
        matches!(
            status.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "the client's deadline passed without a reply: {status:?}"
    );
    let retry = client
        .decrement_with_id(rid, "grape-x", 5)
        .await
        .expect("the retry gets the first outcome");
    assert!(
        retry.applied.replayed,
        "the lost reply's decrement was applied, and the retry replayed it"
    );
    expected -= 5;
    assert_eq!(retry.stock.on_hand, expected, "applied exactly once");
    // And with leaders killed right after the request was sent (the reply may or may
    // not be lost): still exactly once.
    let mut replayed = 0;
    for round in 0..4u64 {
        let leader = cluster.leader_of(&client, 2).await;
        let rid = new_request_id();
        let qty = 7 + round;
        // Send straight to the leader and kill it right after: the reply is lost.
        let mut raw = raw_inventory(&cluster, &cluster.addrs[&leader]).await;
        let req = pb::DecrementRequest {
            request_id: rid.to_vec(),
            sku: "grape-x".into(),
            quantity: qty,
        };
        let sent = tokio::spawn(async move { raw.decrement(req).await });
        tokio::time::sleep(Duration::from_millis(5 * round)).await;
        cluster.kill9(leader);
        let first = sent.await.expect("task");
        // The retry with the same request id lands on the new leader.
        let retry = client
            .decrement_with_id(rid, "grape-x", qty)
            .await
            .expect("retry gets a definite answer");
        expected -= qty;
        assert_eq!(
            retry.stock.on_hand,
            expected,
            "round {round}: applied exactly once (first attempt: {:?})",
            first.map(|r| r.into_inner().record)
        );
        replayed += u32::from(retry.applied.replayed);
        cluster.start_node(leader);
        cluster.wait_leaders(&client).await;
    }
    assert_eq!(
        must_get(&client, "grape-x").await.expect("present").on_hand,
        expected
    );
    // Deterministically: an acknowledged decrement retried on another leader is replayed.
    let rid = new_request_id();
    let first = client
        .decrement_with_id(rid, "grape-x", 1)
        .await
        .expect("decrement");
    let leader = cluster.leader_of(&client, 2).await;
    let other = (1..=3).find(|n| *n != leader).expect("another node");
    assert_eq!(
        client.transfer_leader(2, other).await.expect("transfer"),
        other
    );
    let again = client
        .decrement_with_id(rid, "grape-x", 1)
        .await
        .expect("retry");
    assert!(
        again.applied.replayed,
        "the new leader answered from the stored outcome"
    );
    assert_eq!(again.applied.node_id, other);
    assert_eq!(
        again.stock, first.stock,
        "the retry returns the first outcome"
    );
    assert_eq!(
        must_get(&client, "grape-x").await.expect("present").on_hand,
        expected - 1,
        "and changes nothing"
    );
    // The same id with a different request is refused.
    must_fail_with(
        client.decrement_with_id(rid, "grape-x", 2).await,
        "REQUEST_ID_REUSED",
    );
    eprintln!("lost-reply rounds answered from the stored outcome: {replayed} of 4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_rebuilt_node_keeps_reservations_and_idempotency() {
    let mut cluster = TestCluster::start(Options {
        snapshot_after_entries: 100,
        logs_kept_after_snapshot: 20,
        ..Default::default()
    });
    let client = cluster.client().await;
    let leaders = cluster.wait_leaders(&client).await;
    let victim = (1..=3).find(|n| *n != leaders[&1]).expect("a follower");
    client.set_stock("apple-cart", 10).await.expect("set");
    client.set_stock("apple-filler", 1_000).await.expect("set");
    let cart = client
        .reserve_with_id(
            new_request_id(),
            Some("cart-1"),
            &[Item::new("apple-cart", 3)],
            Duration::from_secs(600),
        )
        .await
        .expect("reserve");
    let rid = new_request_id();
    let first = client
        .decrement_with_id(rid, "apple-cart", 2)
        .await
        .expect("decrement");
    assert_eq!(cluster.stop(victim), Some(0));
    for _ in 0..300 {
        client.decrement("apple-filler", 1).await.expect("filler");
    }
    client.allow_rebuild(victim).await.expect("allow rebuild");
    cluster.wipe(victim);
    cluster.start_node(victim);
    cluster.wait_converged(&client).await;
    let status = client.node_status(victim).await.expect("status");
    assert!(
        status
            .shards
            .iter()
            .find(|s| s.shard_id == 1)
            .expect("shard 1")
            .snapshot_index
            > 0,
        "rebuilt from a snapshot"
    );
    // Let the rebuilt node lead shard 1 and answer for itself.
    assert_eq!(
        client.transfer_leader(1, victim).await.expect("transfer"),
        victim
    );
    let again = client
        .decrement_with_id(rid, "apple-cart", 2)
        .await
        .expect("retry");
    assert!(
        again.applied.replayed,
        "the rebuilt node holds the stored outcome"
    );
    assert_eq!(again.applied.node_id, victim);
    assert_eq!(again.stock, first.stock);
    let r = client
        .get_reservation("cart-1", Some("apple-cart"), Consistency::Linearizable)
        .await
        .expect("reservation on the rebuilt node");
    assert_eq!(
        (r.state, r.items.clone()),
        (ReservationState::Active, cart.reservation.items.clone())
    );
    let confirmed = client
        .confirm("cart-1", Some("apple-cart"))
        .await
        .expect("confirm");
    assert_eq!(confirmed.stock[0].on_hand, 5, "10 - 2 sold - 3 confirmed");
    assert_eq!(confirmed.applied.node_id, victim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_clients_race_for_the_last_fifty_units() {
    let cluster = TestCluster::start(Options {
        extra_toml: "[server]\nsweep_interval_ms = 200\n".into(),
        ..Default::default()
    });
    let client = Arc::new(cluster.client().await);
    cluster.wait_leaders(&client).await;
    client.set_stock("tomato-last", 50).await.expect("set");
    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move {
                c.reserve(&[Item::new("tomato-last", 1)], Duration::from_secs(3))
                    .await
            })
        })
        .collect();
    let mut held = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(u) => held.push(u.reservation.reservation_id),
            Err(Error::InsufficientStock { .. }) => refused += 1,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!(
        (held.len(), refused),
        (50, 450),
        "exactly the stock was held"
    );
    let s = must_get(&client, "tomato-last").await.expect("present");
    assert_eq!(
        (s.on_hand, s.reserved, s.available),
        (50, 50, 0),
        "no oversell"
    );
    for id in &held[..25] {
        client
            .release(id, Some("tomato-last"))
            .await
            .expect("release");
    }
    let s = must_get(&client, "tomato-last").await.expect("present");
    assert_eq!((s.reserved, s.available), (25, 25));
    // The other 25 expire on their own.
    let (s, _) = eventually(Duration::from_secs(20), || async {
        let s = client
            .get_one("tomato-last", Consistency::Linearizable)
            .await?
            .expect("present");
        if s.reserved == 0 {
            Ok(s)
        } else {
            Err(Error::Unavailable {
                message: format!("{} still reserved", s.reserved),
            })
        }
    })
    .await;
    assert_eq!(
        (s.on_hand, s.available),
        (50, 50),
        "releases and expiries returned every unit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_over_four_shards_takes_one_raft_entry_per_shard() {
    let cluster = TestCluster::start(Options::default());
    let client = cluster.client().await;
    cluster.wait_leaders(&client).await;
    for (shard, _) in SHARD_SKUS {
        client.transfer_leader(shard, 1).await.expect("transfer");
    }
    let skus: Vec<String> = skus_on_every_shard("b", 40);
    for s in &skus {
        client.set_stock(s, 100).await.expect("set");
    }
    cluster.wait_leaders(&client).await;
    let entries_before = client
        .node_status(1)
        .await
        .expect("status")
        .raft_entries_proposed_total;
    let ops: Vec<pb::Operation> = (0..1_000)
        .map(|i| pb::Operation {
            op: Some(pb::operation::Op::Decrement(pb::DecrementRequest {
                request_id: new_request_id().to_vec(),
                sku: skus[i % skus.len()].clone(),
                quantity: 1,
            })),
        })
        .collect();
    let mut raw = raw_inventory(&cluster, &cluster.addrs[&1]).await;
    let reply = raw
        .batch(pb::BatchRequest { ops, atomic: false })
        .await
        .expect("batch")
        .into_inner();
    assert_eq!(reply.results.len(), 1_000);
    assert!(
        reply
            .results
            .iter()
            .all(|r| matches!(r.result, Some(pb::operation_result::Result::Stock(_)))),
        "every decrement succeeded"
    );
    let entries_after = client
        .node_status(1)
        .await
        .expect("status")
        .raft_entries_proposed_total;
    assert_eq!(
        entries_after - entries_before,
        4,
        "1,000 decrements over 4 shards took 4 Raft entries"
    );
    for s in &skus {
        assert_eq!(must_get(&client, s).await.expect("present").on_hand, 75);
    }

    // Independent operations: one may fail while the others succeed.
    let op = |sku: &str, qty: u64| pb::Operation {
        op: Some(pb::operation::Op::Decrement(pb::DecrementRequest {
            request_id: new_request_id().to_vec(),
            sku: sku.into(),
            quantity: qty,
        })),
    };
    let reply = raw
        .batch(pb::BatchRequest {
            ops: vec![op("apple-b00", 1), op("apple-b04", 1_000), op("", 1)],
            atomic: false,
        })
        .await
        .expect("batch")
        .into_inner();
    let reasons: Vec<Option<i32>> = reply
        .results
        .iter()
        .map(|r| match &r.result {
            Some(pb::operation_result::Result::Error(d)) => Some(d.reason),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            None,
            Some(pb::Reason::InsufficientStock as i32),
            Some(pb::Reason::InvalidArgument as i32)
        ]
    );
    // All-or-nothing inside one shard: one refusal refuses all.
    let reply = raw
        .batch(pb::BatchRequest {
            ops: vec![op("apple-b00", 1), op("apple-b04", 1_000)],
            atomic: true,
        })
        .await
        .expect("batch")
        .into_inner();
    assert!(
        reply
            .results
            .iter()
            .all(|r| matches!(r.result, Some(pb::operation_result::Result::Error(_))))
    );
    assert_eq!(
        must_get(&client, "apple-b00")
            .await
            .expect("present")
            .on_hand,
        74,
        "the atomic batch changed nothing"
    );
    // All-or-nothing across shards is refused, naming the shards.
    let err = raw
        .batch(pb::BatchRequest {
            ops: vec![op("apple-b00", 1), op("grape-b01", 1)],
            atomic: true,
        })
        .await
        .expect_err("cross-shard");
    let d = pb::ErrorDetail::decode(err.details()).expect("detail");
    assert_eq!(
        (d.reason(), d.shard_ids),
        (pb::Reason::CrossShard, vec![1, 2])
    );
    // A reservation's items must share a shard.
    let e = must_fail_with(
        client
            .reserve(
                &[Item::new("apple-b00", 1), Item::new("grape-b01", 1)],
                Duration::from_secs(5),
            )
            .await,
        "CROSS_SHARD",
    );
    assert!(
        matches!(&e, Error::CrossShard { shard_ids, .. } if shard_ids == &vec![1, 2]),
        "{e:?}"
    );
}
