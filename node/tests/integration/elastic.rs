//! The cluster changes shape while it sells (issue: Elastic cluster I): nodes that no
//! other node's config lists join through the meta shard, replicas move to them, a
//! node is drained and removed, a killed node is declared dead and its replicas are
//! recreated from the survivors, a removed id cannot come back; all under continuous
//! decrements, with no acknowledged write lost, every replica converged, and a request
//! id recognised after every first replica of its shard was replaced. A move whose
//! driver dies with the meta leader is finished by the new meta leader. And a node
//! that stays unreachable is repaired without an operator.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use stockpile_client::proto as pb;
use stockpile_client::{Client, Error, ShardInfo, new_request_id};

use crate::common::{
    Options, SHARDS_WITH_META, TestCluster, eventually, must_get, skus_on_every_shard,
};

/// Stock per SKU: never runs out during the test.
const STOCK: u64 = 1_000_000;

/// Decrements of 1 on `skus`, round robin, until `stop`: per SKU, how many were
/// acknowledged and how many ended with an unknown outcome.
struct Load {
    skus: Vec<String>,
    stop: Arc<AtomicBool>,
    acked: Arc<Vec<AtomicU64>>,
    unknown: Arc<Vec<AtomicU64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(client: Client, skus: Vec<String>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Vec<AtomicU64>> = Arc::new(skus.iter().map(|_| AtomicU64::new(0)).collect());
        let unknown: Arc<Vec<AtomicU64>> =
            Arc::new(skus.iter().map(|_| AtomicU64::new(0)).collect());
        let (s, a, u) = (stop.clone(), acked.clone(), unknown.clone());
        let load_skus = skus.clone();
        let task = tokio::spawn(async move {
            let skus = load_skus;
            let mut i = 0usize;
            while !s.load(Ordering::Relaxed) {
                let k = i % skus.len();
                match client.decrement(&skus[k], 1).await {
                    Ok(_) => a[k].fetch_add(1, Ordering::Relaxed),
                    Err(e) if e.is_definite() => panic!(
                        "decrement {}: {e}; the client's map: {:?}",
                        skus[k],
                        client.shard_map()
                    ),
                    Err(e) => {
                        if u[k].load(Ordering::Relaxed) < 3 {
                            eprintln!("elastic: unknown outcome: {e}");
                        }
                        u[k].fetch_add(1, Ordering::Relaxed)
                    }
                };
                i += 1;
            }
        });
        Load {
            skus,
            stop,
            acked,
            unknown,
            task,
        }
    }

    fn total_acked(&self) -> u64 {
        self.acked.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }

    /// Waits until `more` further decrements were acknowledged (the store sells).
    async fn sells(&self, more: u64) {
        let target = self.total_acked() + more;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.total_acked() < target {
            assert!(
                std::time::Instant::now() < deadline,
                "no sales for 30 s (acked {})",
                self.total_acked()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops, waits until every replica converged, and checks the drain exactly: each
    /// SKU sold at least what was acknowledged and at most that plus the unknown
    /// outcomes. Returns (acknowledged, unknown) per SKU.
    async fn finish_exact(self, cluster: &TestCluster, client: &Client) -> (Vec<u64>, Vec<u64>) {
        let skus = self.skus.clone();
        let (acked, unknown) = self.finish().await;
        check_exact(cluster, client, &skus, &acked, &unknown).await;
        (acked, unknown)
    }

    async fn finish(self) -> (Vec<u64>, Vec<u64>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("load task");
        let read = |v: &Vec<AtomicU64>| v.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        (read(&self.acked), read(&self.unknown))
    }
}

/// Waits until every replica converged, then checks that each SKU sold at least what
/// was acknowledged and at most that plus the unknown outcomes.
async fn check_exact(
    cluster: &TestCluster,
    client: &Client,
    skus: &[String],
    acked: &[u64],
    unknown: &[u64],
) {
    cluster.wait_converged(client).await;
    for (k, sku) in skus.iter().enumerate() {
        let sold = STOCK - must_get(client, sku).await.expect("record").on_hand;
        assert!(
            sold >= acked[k] && sold <= acked[k] + unknown[k],
            "{sku}: sold {sold}, acknowledged {}, unknown {}",
            acked[k],
            unknown[k]
        );
    }
}

/// Whether the log of some running node satisfies `check`.
fn any_log(cluster: &TestCluster, check: impl Fn(&str) -> bool) -> bool {
    cluster
        .running()
        .iter()
        .filter_map(|id| std::fs::read_to_string(cluster.log_path(*id)).ok())
        .any(|log| check(&log))
}

/// Each shard's voters as its leader reports them, once every shard has a leader.
async fn replicas(client: &Client) -> BTreeMap<u64, Vec<u64>> {
    for _ in 0..300 {
        if let Ok(r) = client.shard_replicas().await
            && r.len() == SHARDS_WITH_META
        {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("shards without a leader for 30 s")
}

/// The shards a node runs, from its own status (waiting for a node that is starting).
async fn shards_on(client: &Client, node: u64) -> Vec<u64> {
    let (st, _) = eventually(Duration::from_secs(20), || client.node_status(node)).await;
    st.shards.iter().map(|s| s.shard_id).collect()
}

/// Moves that cannot be made are refused with the reason, a move whose end state
/// holds already does nothing, and nothing changes.
async fn refuses_bad_moves(client: &Client) {
    let done = client
        .move_replica(1, 4, 3, false)
        .await
        .expect("nothing to do");
    assert!(
        done.steps[0].contains("nothing to move") && !done.replicas.contains(&4),
        "{done:?}"
    );
    let err = client
        .move_replica(1, 1, 2, false)
        .await
        .expect_err("a voter already there");
    assert!(
        matches!(&err, Error::MoveRefused { step, node_id: 2, .. } if step == "plan"),
        "{err:?}"
    );
    let err = client
        .move_replica(1, 1, 9, false)
        .await
        .expect_err("no node 9");
    assert!(matches!(err, Error::NodeNotFound { node_id: 9 }), "{err:?}");
    let err = client
        .move_replica(1, 1, 1, false)
        .await
        .expect_err("same node");
    assert_eq!(err.reason(), "INVALID_ARGUMENT", "{err:?}");
    let now = replicas(client).await;
    assert!(
        now.values().all(|v| v.len() == 3 && !v.contains(&4)),
        "{now:?}"
    );
}

/// Node `id` (not in the others' config) starts with `--join` through `via` and is
/// registered in the cluster map; returns once every running node's map knows it.
async fn join(cluster: &mut TestCluster, client: &Client, id: u64, via: u64) {
    cluster.add_node(id);
    let via = cluster.addrs[&via].clone();
    cluster.start_node_with(id, &["--join", &via]);
    eventually(Duration::from_secs(30), || async {
        let map = client.cluster_map().await?;
        let status = client.cluster_status().await?;
        let known = status
            .nodes
            .iter()
            .any(|v| v.node.as_ref().is_some_and(|n| n.node_id == id) && v.reachable);
        match map.nodes.iter().find(|n| n.node_id == id) {
            Some(n) if n.state == "up" && known => Ok(()),
            other => Err(Error::Unavailable {
                message: format!("node {id} not registered yet: {other:?}"),
            }),
        }
    })
    .await;
}

/// The state the cluster map records for `node`.
async fn state_of(client: &Client, node: u64) -> String {
    let map = client.cluster_map().await.expect("cluster map");
    map.nodes
        .iter()
        .find(|n| n.node_id == node)
        .map(|n| n.state.clone())
        .unwrap_or_default()
}

/// Every shard's voters, sorted, are `expected`.
fn all_on(now: &BTreeMap<u64, Vec<u64>>, expected: &[u64]) -> bool {
    now.values().all(|v| same_nodes(v, expected))
}

/// A shard descriptor's replicas, sorted, are `expected`.
fn on_nodes(shard: &ShardInfo, expected: &[u64]) -> bool {
    same_nodes(&shard.replicas, expected)
}

/// `nodes`, sorted, are `expected`.
fn same_nodes(nodes: &[u64], expected: &[u64]) -> bool {
    let mut v = nodes.to_vec();
    v.sort_unstable();
    v == expected
}

/// A node restarted empty under an id that was removed cannot join: refused, saying why.
async fn removed_id_is_refused(cluster: &mut TestCluster, id: u64) {
    cluster.wipe(id);
    let via = cluster.addrs[&3].clone();
    cluster.start_node_with(id, &["--join", &via]);
    assert_ne!(cluster.wait_exit(id, Duration::from_secs(30)), Some(0));
    let log = std::fs::read_to_string(cluster.log_path(id)).expect("log");
    assert!(log.contains("never used again"), "{log}");
}

/// A three-node cluster with every shard led, and node 4, in no other node's config,
/// registered through node 1; with a client.
async fn three_nodes_and_node_4_joined() -> (TestCluster, Client) {
    let mut cluster = TestCluster::start(Options {
        nodes: 3,
        ..Options::default()
    });
    let client = cluster.client().await;
    cluster.wait_leaders(&client).await;
    join(&mut cluster, &client, 4, 1).await;
    (cluster, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_move_drain_and_repair_while_the_store_sells() {
    let (mut cluster, client) = three_nodes_and_node_4_joined().await;
    assert!(
        shards_on(&client, 4).await.is_empty(),
        "node 4 starts empty"
    );
    refuses_bad_moves(&client).await;
    let skus = skus_on_every_shard("elastic", 8);
    for sku in &skus {
        client.set_stock(sku, STOCK).await.expect("seed");
    }
    // A decrement whose request id is retried after every replica of its shard was
    // replaced (below): it must come back as the first outcome, not apply again.
    client.set_stock("apple-once", 10).await.expect("seed");
    let rid = new_request_id();
    let first = client
        .decrement_with_id(rid, "apple-once", 1)
        .await
        .expect("decrement");
    assert_eq!(first.stock.on_hand, 9);
    let load = Load::start(cluster.client().await, skus.clone());
    load.sells(50).await;
    let stale_skus = skus_on_every_shard("stale", 1);
    for sku in &stale_skus {
        client.set_stock(sku, 10).await.expect("seed");
    }

    // 1. One replica of every shard (the meta shard too) moves from node 3 to node 4
    //    (node 3 leads some: it hands its leadership over first).
    for shard in 0..=4 {
        let r = client.move_replica(shard, 3, 4, false).await.expect("move");
        assert!(r.replicas.contains(&4) && !r.replicas.contains(&3), "{r:?}");
        assert_ne!(
            r.replica_id, 4,
            "a fresh replica id, not the node id: {r:?}"
        );
        assert_eq!(r.replica_id & 0xFFFF, 4, "the id names its node: {r:?}");
        load.sells(20).await;
    }
    assert_eq!(shards_on(&client, 4).await, vec![0, 1, 2, 3, 4]);
    assert!(
        shards_on(&client, 3).await.is_empty(),
        "node 3's replicas dropped"
    );
    let again = client
        .move_replica(1, 3, 4, false)
        .await
        .expect("idempotent");
    assert!(
        again.replicas.contains(&4),
        "a move already done: {again:?}"
    );
    // Node 3 holds no meta replica now: it learns where the map lives from its peers,
    // or its cluster-map changes would go to replicas that are gone.
    for node in 1..=4 {
        eventually(Duration::from_secs(20), || async {
            let meta = meta_replicas_at(&cluster, node).await;
            if meta == [1, 2, 4] {
                return Ok(());
            }
            Err(Error::Unavailable {
                message: format!("node {node}'s map puts the meta shard on {meta:?}"),
            })
        })
        .await;
    }
    cluster.adopt(&replicas(&client).await);
    // A client whose map says every shard is on nodes 1, 2 and 4: by the end all three
    // are gone, and only a map asked of node 3 finds the shards (below).
    let stale = cluster.client().await;
    eventually(Duration::from_secs(20), || async {
        let map = stale
            .refresh_map(std::time::Instant::now() + Duration::from_secs(5))
            .await?;
        if map.shards.iter().all(|s| on_nodes(s, &[1, 2, 4])) {
            return Ok(());
        }
        Err(Error::Unavailable {
            message: format!("the nodes' maps lag the moves: {map:?}"),
        })
    })
    .await;

    // 2. Drain node 1 while it sells: no replica, no leadership, removed from the
    //    map; stopping it costs nothing.
    let moves = client.drain_node(1, false).await.expect("drain");
    assert_eq!(moves.len(), SHARDS_WITH_META, "{moves:?}");
    assert!(
        moves.iter().all(|m| m.to == 3),
        "node 3 is the only free node: {moves:?}"
    );
    assert!(
        shards_on(&client, 1).await.is_empty(),
        "node 1 holds nothing"
    );
    assert_eq!(state_of(&client, 1).await, "removed");
    let now = replicas(&client).await;
    assert!(all_on(&now, &[2, 3, 4]), "{now:?}");
    cluster.adopt(&now);
    cluster.stop(1);
    load.sells(100).await;

    // 3. Node 5 joins; node 2 is killed and declared dead: every shard is back to
    //    three replicas, on 3, 4 and 5. Node 2's id cannot come back.
    join(&mut cluster, &client, 5, 3).await;
    cluster.kill9(2);
    let moves = client.drain_node(2, true).await.expect("remove --dead");
    assert_eq!(moves.len(), SHARDS_WITH_META, "{moves:?}");
    let now = replicas(&client).await;
    assert!(all_on(&now, &[3, 4, 5]), "{now:?}");
    cluster.adopt(&now);
    load.sells(100).await;
    removed_id_is_refused(&mut cluster, 2).await;

    // 4. A node holding moved replicas restarts and rejoins them.
    cluster.stop(4);
    load.sells(50).await;
    cluster.start_node(4);
    cluster.wait_leaders(&client).await;
    load.sells(50).await;

    // 5. Node 4 loses its data and restarts with its old identity: refused, saying
    //    what to do (node 3, in its config, answers its probe). It is declared dead;
    //    node 6 joins and takes its replicas.
    cluster.kill9(4);
    cluster.wipe(4);
    cluster.start_node(4);
    assert_ne!(cluster.wait_exit(4, Duration::from_secs(20)), Some(0));
    let log = std::fs::read_to_string(cluster.log_path(4)).expect("log");
    assert!(
        log.contains("cannot come back as its old replicas") && log.contains("--join"),
        "{log}"
    );
    join(&mut cluster, &client, 6, 3).await;
    let moves = client.drain_node(4, true).await.expect("remove 4 --dead");
    assert!(moves.iter().all(|m| m.to == 6), "{moves:?}");
    let now = replicas(&client).await;
    assert!(all_on(&now, &[3, 5, 6]), "{now:?}");
    cluster.adopt(&now);
    load.sells(50).await;

    // Every node the stale client's map names for the shards is gone: a round in
    // which none answers makes it ask the cluster for the map again.
    let old_map = stale.shard_map();
    assert!(
        old_map.shards.iter().all(|s| on_nodes(s, &[1, 2, 4])),
        "the stale map names only nodes that are gone now: {old_map:?}"
    );
    for sku in &stale_skus {
        let sold = stale
            .decrement(sku, 1)
            .await
            .expect("a stale map refreshed");
        assert_eq!(sold.stock.on_hand, 9, "{sku}");
    }

    // Shard 1's first replicas (on nodes 1, 2, 3) have all been replaced by now.
    let retried = client
        .decrement_with_id(rid, "apple-once", 1)
        .await
        .expect("retry");
    assert!(
        retried.applied.replayed,
        "recognised after the moves: {retried:?}"
    );
    assert_eq!(
        must_get(&client, "apple-once").await.map(|s| s.on_hand),
        Some(9)
    );

    let (acked, unknown) = load.finish_exact(&cluster, &client).await;
    eprintln!(
        "elastic: {} decrements acknowledged, {} unknown",
        acked.iter().sum::<u64>(),
        unknown.iter().sum::<u64>()
    );
}

/// Round trips of `a_replica_moved_off_a_node_and_back_answers_only_for_itself`.
const ROUND_TRIPS: u64 = 4;

/// Replicas leave a node while the store sells and come back to it, each time as a
/// new replica with a fresh id. A Raft message addressed to the replica that left is
/// refused by the one that came back (granting its predecessor's vote would let a
/// stale candidate count a member that is gone), one addressed to the new replica is
/// answered, and every replica ends with the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_moved_off_a_node_and_back_answers_only_for_itself() {
    let (mut cluster, client) = three_nodes_and_node_4_joined().await;
    // Three sellers, each on every shard: applies queue up on the replicas that move.
    let skus = skus_on_every_shard("back", 24);
    for sku in &skus {
        client.set_stock(sku, STOCK).await.expect("seed");
    }
    let mut loads = Vec::new();
    for part in skus.chunks(8) {
        loads.push(Load::start(cluster.client().await, part.to_vec()));
    }
    for round in 0..ROUND_TRIPS * 2 {
        let (from, to) = if round % 2 == 0 { (3, 4) } else { (4, 3) };
        for shard in 1..=4 {
            let r = client
                .move_replica(shard, from, to, false)
                .await
                .expect("move");
            assert!(
                r.replicas.contains(&to) && !r.replicas.contains(&from),
                "{r:?}"
            );
        }
        for load in &loads {
            load.sells(10).await;
        }
    }
    // Node 3's first replica of shard 1 was the seeded one, id 3.
    let (term, now_on_3) = replica_at(&client, 1, 3).await;
    assert_ne!(now_on_3, 3, "node 3 holds a new replica");
    let refused = pre_vote(&cluster, 1, term + 1, 3)
        .await
        .expect_err("addressed to a replica that left");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains(&format!(
            "addressed to replica 3, and node 3 holds replica {now_on_3}"
        )),
        "{refused:?}"
    );
    pre_vote(&cluster, 1, term + 1, now_on_3)
        .await
        .expect("a message for the replica there is answered");
    cluster.adopt(&replicas(&client).await);
    let mut finished = Vec::new();
    for load in loads {
        let skus = load.skus.clone();
        finished.push((skus, load.finish().await));
    }
    for (skus, (acked, unknown)) in finished {
        check_exact(&cluster, &client, &skus, &acked, &unknown).await;
    }
}

/// The term of `shard`'s replica on `node`, and its replica id, from the node's status.
async fn replica_at(client: &Client, shard: u64, node: u64) -> (u64, u64) {
    let (st, _) = eventually(Duration::from_secs(20), || client.node_status(node)).await;
    let s = st
        .shards
        .iter()
        .find(|s| s.shard_id == shard)
        .unwrap_or_else(|| panic!("node {node} holds shard {shard}: {st:?}"));
    let id = s
        .replica_ids
        .iter()
        .copied()
        .find(|id| id & 0xFFFF == node)
        .unwrap_or_else(|| panic!("node {node}'s replica among the voters: {s:?}"));
    (s.term, id)
}

/// A PreVote for shard 1 from node 1's seeded replica, sent to node 3 and addressed to
/// replica `to_replica`. A PreVote changes nothing on the replica that answers it.
async fn pre_vote(
    cluster: &TestCluster,
    candidate_node: u64,
    term: u64,
    to_replica: u64,
) -> Result<tonic::Response<pb::RaftMessage>, tonic::Status> {
    use stockpile_node::codec;
    use stockpile_node::raft::types::{TypeConfig, Vote};
    let vote =
        openraft::raft::VoteRequest::<TypeConfig>::new(Vote::new(term, candidate_node), None);
    let message = pb::RaftMessage {
        shard_id: 1,
        from_node_id: candidate_node,
        payload: codec::encode(&vote).expect("encode"),
        to_replica_id: to_replica,
    };
    let channel = cluster
        .endpoint_as(&cluster.addrs[&3], &format!("node-{candidate_node}"))
        .connect()
        .await
        .expect("connect");
    pb::raft_client::RaftClient::new(channel)
        .pre_vote(message)
        .await
}

/// Waits until the cluster map (meta shard) records no move and `check` holds for the
/// shards' voters; returns the voters.
async fn settled(
    client: &Client,
    within: Duration,
    check: impl Fn(&BTreeMap<u64, Vec<u64>>) -> bool,
) -> BTreeMap<u64, Vec<u64>> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Ok(map) = client.cluster_map().await
            && map.moves.is_empty()
            && let Ok(now) = client.shard_replicas().await
            && now.len() == SHARDS_WITH_META
            && check(&now)
        {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the recorded move did not end within {within:?}: {:?}",
            client.cluster_map().await.map(|m| m.moves)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The meta shard's leader (and the moved shard's) is killed in the middle of a move,
/// after the learner was added: the new meta leader finds the recorded move silent and
/// drives it to its end; the shard ends with exactly three voters, the source's replica
/// dropped, and every replica converged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_interrupted_by_killing_the_meta_leader_is_finished() {
    let mut cluster = TestCluster::start(Options {
        nodes: 4,
        shard_replicas: Some([vec![1, 2, 3], vec![1, 2, 3], vec![1, 2, 3], vec![1, 2, 3]]),
        // Each recorded step of a move is followed by a pause: the kill lands between
        // "learner added" and the membership change.
        node_args: vec!["--move-step-pause-ms", "3000"],
        ..Options::default()
    });
    let client = cluster.client().await;
    let leaders = cluster.wait_leaders(&client).await;
    let meta_leader = leaders[&0];
    client.set_stock("apple-meta", 100).await.expect("seed");
    let shard = client
        .shard_map()
        .shard_for("apple-meta")
        .expect("shard")
        .shard_id;
    assert_eq!(
        client
            .transfer_leader(shard, meta_leader)
            .await
            .expect("transfer"),
        meta_leader
    );
    let from = [1, 2, 3]
        .into_iter()
        .find(|n| *n != meta_leader)
        .expect("a source");
    // One raw call, never retried: only the meta leader's duty can finish the move.
    let channel = cluster.channel(&cluster.addrs[&meta_leader]).await;
    let request = stockpile_proto::v1::MoveReplicaRequest {
        shard_id: shard,
        from_node_id: from,
        to_node_id: 4,
        catch_up_timeout_ms: 0,
        from_dead: false,
    };
    let call = tokio::spawn(async move {
        stockpile_proto::v1::admin_client::AdminClient::new(channel)
            .move_replica(request)
            .await
    });
    eventually(Duration::from_secs(20), || async {
        let map = client.cluster_map().await?;
        match map.moves.iter().find(|m| m.shard_id == shard) {
            Some(m) if m.step == "learner added" => Ok(()),
            other => Err(Error::Unavailable {
                message: format!("move not at its learner yet: {other:?}"),
            }),
        }
    })
    .await;
    cluster.kill9(meta_leader);
    assert!(
        call.await.expect("task").is_err(),
        "the call died with its node"
    );
    let now = settled(&client, Duration::from_secs(60), |now| {
        let v = &now[&shard];
        v.len() == 3 && v.contains(&4) && !v.contains(&from)
    })
    .await;
    assert!(
        !shards_on(&client, from).await.contains(&shard),
        "the source's replica was dropped"
    );
    let driven = any_log(&cluster, |log| {
        log.contains("driving a silent recorded move again")
    });
    assert!(driven, "a surviving meta replica drove the move");
    cluster.adopt(&now);
    cluster.start_node(meta_leader);
    cluster.wait_leaders(&client).await;
    cluster.wait_converged(&client).await;
    assert_eq!(
        must_get(&client, "apple-meta").await.map(|s| s.on_hand),
        Some(100)
    );
}

/// Automatic repair (`server.repair_after_ms`): node 2 is killed and stays away; once
/// it has been unreachable for that long, the meta leader declares it dead, recreates
/// its replicas (the meta shard's too) on node 4, the only other node, and removes it,
/// while the store sells; nothing happens before that time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_unreachable_past_repair_after_is_replaced_automatically() {
    const REPAIR_AFTER_MS: u64 = 3_000;
    let mut cluster = TestCluster::start(Options {
        nodes: 4,
        shard_replicas: Some([vec![1, 2, 3], vec![1, 2, 3], vec![1, 2, 3], vec![1, 2, 3]]),
        extra_toml: format!("[server]\nrepair_after_ms = {REPAIR_AFTER_MS}\n"),
        ..Options::default()
    });
    let client = cluster.client().await;
    cluster.wait_leaders(&client).await;
    let skus = skus_on_every_shard("repair", 8);
    for sku in &skus {
        client.set_stock(sku, STOCK).await.expect("seed");
    }
    let load = Load::start(cluster.client().await, skus.clone());
    load.sells(50).await;
    // Healthy nodes are never repaired: well past the time, nothing moved.
    tokio::time::sleep(Duration::from_millis(2 * REPAIR_AFTER_MS)).await;
    assert!(all_on(&replicas(&client).await, &[1, 2, 3]));

    cluster.kill9(2);
    let killed_at = std::time::Instant::now();
    let now = settled(&client, Duration::from_secs(90), |now| {
        all_on(now, &[1, 3, 4])
    })
    .await;
    assert!(
        killed_at.elapsed() >= Duration::from_millis(REPAIR_AFTER_MS),
        "repaired before the node was gone {REPAIR_AFTER_MS} ms"
    );
    eventually(Duration::from_secs(20), || async {
        match state_of(&client, 2).await.as_str() {
            "removed" => Ok(()),
            other => Err(Error::Unavailable {
                message: format!("node 2 is {other}"),
            }),
        }
    })
    .await;
    let declared = any_log(&cluster, |log| {
        log.contains("declaring an unreachable node dead")
    });
    assert!(declared, "the meta leader logged the repair");
    cluster.adopt(&now);
    load.sells(100).await;
    removed_id_is_refused(&mut cluster, 2).await;

    load.finish_exact(&cluster, &client).await;
}

/// The meta shard's replicas as node `node`'s own map has them, sorted.
async fn meta_replicas_at(cluster: &TestCluster, node: u64) -> Vec<u64> {
    let channel = cluster.channel(&cluster.addrs[&node]).await;
    let reply = stockpile_proto::v1::admin_client::AdminClient::new(channel)
        .shard_map(stockpile_proto::v1::ShardMapRequest {})
        .await
        .expect("shard map")
        .into_inner();
    let mut replicas = reply.meta.map(|m| m.replicas).unwrap_or_default();
    replicas.sort_unstable();
    replicas
}

/// A replica id no move allocates (counter 99 on `node`).
fn stray_id(node: u64) -> u64 {
    (99 << 16) | node
}

/// Leaves what a move that stopped between its first two steps leaves: an empty
/// replica of `shard` on `node` that no membership names.
async fn stray(cluster: &TestCluster, node: u64, shard: u64) {
    let channel = cluster.channel(&cluster.addrs[&node]).await;
    stockpile_proto::v1::admin_client::AdminClient::new(channel)
        .create_replica(stockpile_proto::v1::CreateReplicaRequest {
            shard_id: shard,
            replica_id: stray_id(node),
        })
        .await
        .expect("create a stray replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_left_by_a_stopped_move_is_replaced_drained_or_collected() {
    let cluster = TestCluster::start(Options {
        nodes: 5,
        shard_replicas: Some([vec![1, 2, 3], vec![1, 2, 3], vec![1, 2, 3], vec![1, 2, 3]]),
        // Long enough for the move and the drain below to meet their strays first.
        extra_toml: "[server]\nreplica_gc_after_ms = 5000\n".into(),
        ..Options::default()
    });
    let client = cluster.client().await;
    cluster.wait_leaders(&client).await;
    eventually(Duration::from_secs(20), || async {
        let map = client.cluster_map().await?;
        match map.nodes.len() {
            5 => Ok(()),
            n => Err(Error::Unavailable {
                message: format!("the map records {n} nodes, not yet 5"),
            }),
        }
    })
    .await;
    stray(&cluster, 4, 1).await;
    stray(&cluster, 5, 2).await;
    assert_eq!(shards_on(&client, 4).await, vec![1]);

    // A move onto a node holding a stray replica of the shard replaces it.
    let r = client.move_replica(2, 1, 5, false).await.expect("move");
    assert!(r.replicas.contains(&5) && !r.replicas.contains(&1), "{r:?}");
    assert_ne!(r.replica_id, stray_id(5), "a fresh replica: {r:?}");

    // Node 4 holds no voter, only the stray: its drain still leaves it running
    // nothing before it is marked removed.
    client.drain_node(4, false).await.expect("drain");
    assert!(
        shards_on(&client, 4).await.is_empty(),
        "the stray replica was dropped"
    );
    assert_eq!(state_of(&client, 4).await, "removed");

    // A stray nobody moves to or drains is found by its node and dropped; the
    // replicas the shards name stay.
    stray(&cluster, 5, 3).await;
    assert_eq!(shards_on(&client, 5).await, vec![2, 3]);
    eventually(Duration::from_secs(40), || async {
        match shards_on(&client, 5).await {
            held if held == vec![2] => Ok(()),
            held => Err(Error::Unavailable {
                message: format!("node 5 still runs shards {held:?}"),
            }),
        }
    })
    .await;
    assert!(any_log(&cluster, |log| log
        .contains("dropping a replica its shard no longer names")));
    let now = replicas(&client).await;
    assert_eq!(now[&2], vec![2, 3, 5], "{now:?}");
    for shard in [1, 3, 4] {
        assert_eq!(now[&shard], vec![1, 2, 3], "{now:?}");
    }
    for node in [1, 2, 3] {
        let data: Vec<u64> = shards_on(&client, node)
            .await
            .into_iter()
            .filter(|s| *s > 0)
            .collect();
        let want: Vec<u64> = if node == 1 {
            vec![1, 3, 4]
        } else {
            vec![1, 2, 3, 4]
        };
        assert_eq!(data, want, "node {node}");
    }
}

/// Replica and leader counts per node (replicas from each shard's leader's view).
async fn counts(client: &Client) -> Option<(BTreeMap<u64, u64>, BTreeMap<u64, u64>)> {
    let status = client.cluster_status().await.ok()?;
    let mut held: BTreeMap<u64, u64> = BTreeMap::new();
    let mut led: BTreeMap<u64, u64> = BTreeMap::new();
    for view in &status.nodes {
        let node = view.node.as_ref()?.node_id;
        held.entry(node).or_default();
        led.entry(node).or_default();
        for s in view.status.iter().flat_map(|st| st.shards.iter()) {
            if s.role == "leader" {
                *led.entry(node).or_default() += 1;
                for r in &s.replicas {
                    *held.entry(*r).or_default() += 1;
                }
            }
        }
    }
    Some((held, led))
}

/// The spread (most minus fewest) of `counts`' values.
fn spread(counts: &BTreeMap<u64, u64>) -> u64 {
    let most = counts.values().max().copied().unwrap_or(0);
    most - counts.values().min().copied().unwrap_or(0)
}

/// The balancer (issue: Elastic cluster II): a 4th node joins a 3-node cluster whose
/// every replica is on the first three; the meta leader moves replicas and then
/// leaderships onto it until both counts are within the tolerance (1), while the
/// store sells, losing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joined_node_receives_replicas_and_leaders_until_counts_are_even() {
    let mut cluster = TestCluster::start(Options {
        nodes: 3,
        extra_toml: "[balancer]\nenabled = true\ninterval_ms = 1000\ntolerance = 1\n".into(),
        ..Options::default()
    });
    let client = cluster.client().await;
    cluster.wait_leaders(&client).await;
    let skus = skus_on_every_shard("balance", 8);
    for sku in &skus {
        client.set_stock(sku, STOCK).await.expect("seed");
    }
    let (held, _) = counts(&client).await.expect("status");
    assert!(
        held.values().all(|c| *c == SHARDS_WITH_META as u64),
        "balanced already: {held:?}"
    );
    let load = Load::start(cluster.client().await, skus.clone());
    load.sells(50).await;
    join(&mut cluster, &client, 4, 1).await;
    let (even, _) = eventually(Duration::from_secs(120), || async {
        let (held, led) = counts(&client).await.ok_or(Error::Unavailable {
            message: "no status".into(),
        })?;
        let moving = !client.cluster_map().await?.moves.is_empty();
        let four = held.get(&4).copied().unwrap_or(0);
        if moving || four < 3 || spread(&held) > 1 || spread(&led) > 1 || led.len() < 4 {
            return Err(Error::Unavailable {
                message: format!("replicas {held:?}, leaders {led:?}, moving {moving}"),
            });
        }
        Ok((held, led))
    })
    .await;
    eprintln!("balanced: replicas and leaders per node {even:?}");
    assert!(
        even.1.get(&4).copied().unwrap_or(0) >= 1,
        "node 4 leads a shard: {even:?}"
    );
    let logged = any_log(&cluster, |log| {
        log.contains("balancer: moving a replica") && log.contains("node 4 0")
    });
    assert!(
        logged,
        "the meta leader logged its moves with their reasons"
    );
    // The cluster status shows the steps with their reasons and outcomes.
    let status = client.cluster_status().await.expect("status");
    let decisions: Vec<_> = status
        .nodes
        .iter()
        .filter_map(|v| v.status.as_ref())
        .flat_map(|st| st.balancer_decisions.iter())
        .collect();
    assert!(
        decisions.iter().any(|d| d.kind == "move"
            && d.to_node_id == 4
            && d.outcome == "done"
            && d.reason.contains("node 4 0")),
        "a finished move onto node 4 with its reason: {decisions:?}"
    );
    assert!(
        decisions
            .iter()
            .any(|d| d.kind == "lead" && d.to_node_id == 4),
        "a leadership handed to node 4: {decisions:?}"
    );
    cluster.adopt(&replicas(&client).await);
    load.sells(100).await;
    load.finish_exact(&cluster, &client).await;
}

/// The leader of `shard` as the cluster status reports it (0: none now).
async fn leader_of(client: &Client, shard: u64) -> u64 {
    let Ok(status) = client.cluster_status().await else {
        return 0;
    };
    status
        .nodes
        .iter()
        .filter_map(|v| v.status.as_ref())
        .flat_map(|s| s.shards.iter())
        .find(|s| s.shard_id == shard && s.role == "leader")
        .map(|s| s.leader_id)
        .unwrap_or(0)
}

/// Waits until `shard`'s leader satisfies `ok`; returns it.
async fn leader_becomes(client: &Client, shard: u64, ok: impl Fn(u64) -> bool) -> u64 {
    let (leader, _) = eventually(Duration::from_secs(60), || async {
        match leader_of(client, shard).await {
            l if l != 0 && ok(l) => Ok(l),
            l => Err(Error::Unavailable {
                message: format!("shard {shard}'s leader is {l}"),
            }),
        }
    })
    .await;
    leader
}

/// Leader preferences (issue: Elastic cluster II): three nodes in three regions; the
/// range of shard 1 prefers region r2. Its leadership goes to node 2 (r2), leaves
/// with r2's outage (the shard keeps selling), and comes back when r2 recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ranges_leader_sits_in_its_preferred_region_and_returns_after_an_outage() {
    let regions = BTreeMap::from([(1, "r1".into()), (2, "r2".into()), (3, "r3".into())]);
    let mut cluster = TestCluster::start(Options {
        nodes: 3,
        regions,
        extra_toml: concat!(
            "[balancer]\nenabled = true\ninterval_ms = 1000\n",
            "[[balancer.leader_preferences]]\nstart = \"\"\nend = \"g\"\nleader_regions = [\"r2\"]\n"
        )
        .into(),
        ..Options::default()
    });
    let client = cluster.client().await;
    cluster.wait_leaders(&client).await;
    let sku = "apple-region";
    let shard = client.shard_map().shard_for(sku).expect("shard").shard_id;
    assert_eq!(shard, 1);
    client.set_stock(sku, 1_000).await.expect("seed");
    // Somewhere else first, so that the balancer has something to do.
    assert_eq!(client.transfer_leader(1, 1).await.expect("transfer"), 1);
    assert_eq!(leader_becomes(&client, 1, |l| l == 2).await, 2);

    cluster.kill9(2);
    let during = leader_becomes(&client, 1, |l| l != 2).await;
    client
        .decrement(sku, 1)
        .await
        .expect("sells during r2's outage");
    cluster.start_node(2);
    assert_eq!(leader_becomes(&client, 1, |l| l == 2).await, 2);
    client.decrement(sku, 1).await.expect("sells after");
    eprintln!("shard 1 led by node {during} during r2's outage, back on node 2 after");
    assert_eq!(must_get(&client, sku).await.map(|s| s.on_hand), Some(998));
}
