//! A node's boot: its data directory's identity, the replicas it starts, and the
//! first boot's one decision: seed the config's layout, start empty (`--join`: it
//! receives replicas by moves), or refuse because this node's old replicas are still
//! members of a running cluster that saw them store entries: its data was lost, and
//! coming back as those replicas would reuse their ids (a replica that forgot its
//! votes can help elect a second leader).

use std::time::Duration;

use stockpile_proto::v1 as pb;
use stockpile_proto::v1::admin_client::AdminClient;

use super::{StartError, storage};
use crate::config::ClusterConfig;
use crate::raft::network::PeerPool;
use crate::raft::replica_id;
use crate::router::{Epoch, ShardDescriptor, ShardMap, SkuRange};
use crate::storage::node_meta::{self, NodeIdentity};
use crate::storage::{StorageError, Store};

/// How long a first boot waits for each peer's status.
const PEER_PROBE_TIMEOUT_MS: u64 = 1_000;
/// Probe rounds while the peers still name this node as a leader (an election after
/// it died): about ten seconds at most.
const PROBE_ROUNDS_MAX: u32 = 10;

/// Writes the identity of a first boot.
pub(super) fn write_identity(
    store: &Store,
    cluster: &ClusterConfig,
    node_id: u64,
) -> Result<(), StartError> {
    let identity = NodeIdentity {
        cluster_name: cluster.cluster_name.clone(),
        node_id,
    };
    node_meta::write_identity(store, &identity).map_err(storage("cannot write the node identity"))
}

/// First boot without `--join`: refuses when a running leader saw this node's replica
/// store entries (it has matched entries there) and was not told to accept a rebuild
/// (`stockpile cluster allow-rebuild`). Peers that do not answer are skipped: a fresh
/// cluster's nodes boot together. While the peers still name this node as a shard's
/// leader (it led when it died), the probe waits a bounded number of rounds for the
/// election that replaces it; a fresh cluster's peers name no such leader.
pub(super) async fn check_not_wiped(
    cluster: &ClusterConfig,
    node_id: u64,
    peers: &PeerPool,
) -> Result<(), StartError> {
    let mut evidence = Vec::new();
    for round in 0..PROBE_ROUNDS_MAX {
        let answers = ask_peers(cluster, node_id, peers).await;
        evidence = wiped_evidence(&answers, node_id);
        let settled = answers
            .iter()
            .flat_map(|s| s.shards.iter())
            .all(|sh| sh.leader_id != node_id);
        tracing::info!(
            round,
            answers = answers.len(),
            settled,
            "first boot: asked the other nodes whether this node's replicas ran before"
        );
        if !evidence.is_empty() || settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(PEER_PROBE_TIMEOUT_MS / 2)).await;
    }
    if evidence.is_empty() {
        return Ok(());
    }
    Err(StartError::Mismatch(format!(
        "node {node_id}'s data directory is empty, but its replicas had stored entries of a running cluster \
         (shard, reported by node): {evidence:?}. Its data was lost; it cannot come back as its old replicas (their ids \
         would be reused). Either declare it dead (`stockpile node remove {node_id} --dead`; its replicas are recreated \
         on other nodes) and add the machine back under a new node id with `--join` (a removed id is never used \
         again), or, while every shard has a leader, \
         `stockpile cluster allow-rebuild {node_id}` and start it again (docs/OPERATIONS.md)"
    )))
}

/// Every other node's status that arrives within the probe timeout.
async fn ask_peers(
    cluster: &ClusterConfig,
    node_id: u64,
    peers: &PeerPool,
) -> Vec<pb::NodeStatusReply> {
    let probes = cluster
        .nodes
        .iter()
        .filter(|n| n.id != node_id)
        .map(|n| async move {
            let channel = peers.channel(n.id, &n.addr).ok()?;
            let mut request = tonic::Request::new(pb::NodeStatusRequest {});
            let timeout = Duration::from_millis(PEER_PROBE_TIMEOUT_MS);
            request.set_timeout(timeout);
            let mut client = AdminClient::new(channel);
            let reply = tokio::time::timeout(timeout, client.node_status(request))
                .await
                .ok()?
                .ok()?;
            Some(reply.into_inner())
        });
    futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// (shard, node) pairs that show this node's replicas ran before, from peers not told
/// to let it rebuild: a leader with entries matched on its replica, or any replica
/// with an allocated id on it (made by a move: this node held data since).
fn wiped_evidence(answers: &[pb::NodeStatusReply], node_id: u64) -> Vec<(u64, u64)> {
    let mut evidence = Vec::new();
    for status in answers {
        if status.rebuild_allowed_node_ids.contains(&node_id) {
            continue;
        }
        let peer = status.node.as_ref().map_or(0, |n| n.node_id);
        for sh in &status.shards {
            let matched = sh.role == "leader"
                && sh
                    .replication
                    .iter()
                    .any(|r| r.node_id == node_id && r.matched_index > 0);
            let moved_here = sh.replica_ids.iter().any(|id| {
                replica_id::node_of(*id) == node_id && *id != replica_id::seeded(node_id)
            });
            if matched || moved_here {
                evidence.push((sh.shard_id, peer));
            }
        }
    }
    evidence
}

/// Checks the data directory's identity. Returns true on a first boot (an empty data
/// directory), whose identity the caller writes once it decided to boot.
pub(super) fn check_identity(
    store: &Store,
    cluster: &ClusterConfig,
    node_id: u64,
) -> Result<bool, StartError> {
    let wanted = NodeIdentity {
        cluster_name: cluster.cluster_name.clone(),
        node_id,
    };
    let stored = node_meta::read_identity(store).map_err(|e| match e {
        StorageError::Codec(e) => StartError::Mismatch(format!(
            "cannot read this data directory's node identity ({e}): it was written in another storage format. \
             Start it with the build that wrote it, or rebuild this node from an empty data directory (docs/OPERATIONS.md)"
        )),
        e => storage("cannot read the node identity")(e),
    })?;
    match stored {
        Some(stored) if stored == wanted => Ok(false),
        Some(stored) => Err(StartError::Mismatch(format!(
            "this data directory belongs to node {} of cluster {:?}, but this is node {} of cluster {:?}",
            stored.node_id, stored.cluster_name, node_id, cluster.cluster_name
        ))),
        None => {
            let stored =
                node_meta::stored_shards(store).map_err(storage("cannot list stored shards"))?;
            if !stored.is_empty() {
                return Err(StartError::Mismatch(format!(
                    "the data directory holds shards {stored:?} but no node identity"
                )));
            }
            Ok(true)
        }
    }
}

/// First boot: records the config's replicas of this node (seeded replica ids).
pub(super) fn seed_replicas(store: &Store, map: &ShardMap, node_id: u64) -> Result<(), StartError> {
    for d in map.all_shards().filter(|d| d.replicas.contains(&node_id)) {
        let record = node_meta::ShardDescriptor {
            start: d.range.start.clone(),
            end: d.range.end.clone(),
            replicas: d.replicas.clone(),
        };
        node_meta::write_replica(store, d.id, &record, replica_id::seeded(node_id)).map_err(
            storage(format!("shard {}: cannot record its replica", d.id)),
        )?;
    }
    Ok(())
}

/// The replicas this node holds (its records) with their replica ids, each checked
/// against the config: a shard the config does not know, or whose range differs, is
/// refused (ranges change only by splits, which do not exist yet).
pub(super) fn replica_records(
    store: &Store,
    map: &ShardMap,
    node_id: u64,
) -> Result<Vec<(ShardDescriptor, u64)>, StartError> {
    let mut out = Vec::new();
    for id in node_meta::stored_shards(store).map_err(storage("cannot list stored shards"))? {
        let what = |w: &str| storage(format!("shard {id}: cannot read its {w}"));
        let stored = node_meta::read_descriptor(store, id)
            .map_err(what("descriptor"))?
            .ok_or_else(|| StartError::Mismatch(format!("shard {id}: its descriptor vanished")))?;
        let range = SkuRange {
            start: stored.start.clone(),
            end: stored.end.clone(),
        };
        let descriptor = match map.shard(id) {
            Some(configured) if range != configured.range => {
                return Err(StartError::Mismatch(format!(
                    "the config says shard {id} covers {} but this node stored {range}",
                    configured.range
                )));
            }
            Some(configured) => configured.clone(),
            // A shard born by a split (or a replica of one a move created here): the
            // config never names it; its record is the truth.
            None => ShardDescriptor {
                id,
                range,
                replicas: stored.replicas.clone(),
                epoch: Epoch::default(),
            },
        };
        let replica = node_meta::read_replica_id(store, id)
            .map_err(what("replica id"))?
            .unwrap_or(replica_id::seeded(node_id));
        out.push((descriptor, replica));
    }
    Ok(out)
}
