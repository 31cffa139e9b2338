//! The Admin service's cluster changes: a replica move (the request checked and
//! turned into `node::MoveOptions`, the report into the reply; the procedure is
//! `node::moves`), a node's registration and its state in the cluster map.

use std::time::Duration;

use stockpile_proto::v1 as pb;

use crate::error::Error;
use crate::inventory::cluster::{ClusterCommand, NodeRecord, NodeState};
use crate::node::{Applied, MoveOptions, Node, cluster_request_id};
use crate::router::ShardId;
use crate::security::{Caller, Principal};

/// The catch-up deadline when the request names none.
const CATCH_UP_TIMEOUT_DEFAULT_MS: u64 = 30_000;
/// The longest catch-up deadline a request may ask for (a learner is never left
/// catching up forever).
const CATCH_UP_TIMEOUT_MAX_MS: u64 = 600_000;

pub async fn move_replica(
    node: &Node,
    req: pb::MoveReplicaRequest,
) -> Result<pb::MoveReplicaReply, Error> {
    let timeout_ms = match req.catch_up_timeout_ms {
        0 => CATCH_UP_TIMEOUT_DEFAULT_MS,
        t if t > CATCH_UP_TIMEOUT_MAX_MS => {
            return Err(Error::InvalidArgument {
                field: "catch_up_timeout_ms".into(),
                rule: format!("at most {CATCH_UP_TIMEOUT_MAX_MS} ms, got {t}"),
            });
        }
        t => t,
    };
    let options = MoveOptions {
        from: req.from_node_id,
        to: req.to_node_id,
        catch_up_timeout: Duration::from_millis(timeout_ms),
        from_dead: req.from_dead,
    };
    let report = node.move_replica(ShardId(req.shard_id), options).await?;
    tracing::info!(
        shard_id = req.shard_id,
        from = req.from_node_id,
        to = req.to_node_id,
        steps = ?report.steps,
        "replica move"
    );
    Ok(pb::MoveReplicaReply {
        steps: report.steps,
        replicas: report.replicas,
        conf_ver: report.conf_ver,
        replica_id: report.replica_id,
    })
}

/// (done, problem) of a cluster-map change.
fn outcome(o: Applied) -> (bool, String) {
    match o {
        Ok(()) => (true, String::new()),
        Err(problem) => (false, problem),
    }
}

/// Registers `info` in the cluster map through the meta shard's leader.
pub async fn join(
    node: &Node,
    caller: &Caller,
    info: pb::NodeInfo,
) -> Result<(bool, String), Error> {
    if let Principal::Node(id) = caller.principal
        && id != info.node_id
    {
        return Err(Error::InvalidArgument {
            field: "node.node_id".into(),
            rule: format!("node {id}'s certificate may register only node {id}"),
        });
    }
    if info.node_id == 0 || info.node_id > crate::raft::replica_id::NODE_ID_MAX {
        return Err(Error::InvalidArgument {
            field: "node.node_id".into(),
            rule: format!("must be 1..={}", crate::raft::replica_id::NODE_ID_MAX),
        });
    }
    if info.addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(Error::InvalidArgument {
            field: "node.addr".into(),
            rule: format!("must be ip:port, got {:?}", info.addr),
        });
    }
    let record = NodeRecord {
        id: info.node_id,
        addr: info.addr,
        region: info.region,
        zone: info.zone,
        state: NodeState::Up,
    };
    let o = node
        .cluster_write(cluster_request_id(), ClusterCommand::Join { node: record })
        .await?;
    Ok(outcome(o))
}

/// Sets a node's state in the cluster map.
pub async fn set_node_state(
    node: &Node,
    req: pb::SetNodeStateRequest,
) -> Result<(bool, String), Error> {
    let state = NodeState::parse(&req.state).ok_or_else(|| Error::InvalidArgument {
        field: "state".into(),
        rule: format!("one of up, draining, removed; got {:?}", req.state),
    })?;
    let command = ClusterCommand::SetNodeState {
        node_id: req.node_id,
        state,
    };
    let o = node.cluster_write(cluster_request_id(), command).await?;
    Ok(outcome(o))
}

/// A split by command: `at` checked against the SKU policy, the split driven by
/// `node::split`, its two shards answered.
pub async fn split_shard(
    node: &Node,
    req: pb::SplitShardRequest,
) -> Result<pb::SplitShardReply, Error> {
    let at = if req.at.is_empty() {
        None
    } else {
        crate::inventory::validate::sku("at", &req.at)?;
        Some(req.at)
    };
    let shard_id = ShardId(req.shard_id);
    let done = node.split_shard(shard_id, at).await?;
    tracing::info!(
        shard_id = req.shard_id,
        child_id = done.child_id.0,
        at = %done.child_range.start,
        "split"
    );
    let replicas: Vec<u64> = node
        .local_shard(shard_id)
        .map(|s| s.raft.status().voters.into_iter().collect())
        .unwrap_or_default();
    let info = |id: ShardId, range: &crate::router::SkuRange| pb::ShardInfo {
        shard_id: id.0,
        start: range.start.clone(),
        end: range.end.clone(),
        replicas: replicas.clone(),
        version: done.version,
        ..Default::default()
    };
    Ok(pb::SplitShardReply {
        parent: Some(info(shard_id, &done.parent_range)),
        child: Some(info(done.child_id, &done.child_range)),
    })
}

/// A merge by command, driven by `node::merge`, the merged shard answered.
pub async fn merge_shards(
    node: &Node,
    req: pb::MergeShardsRequest,
) -> Result<pb::MergeShardsReply, Error> {
    let (left, right) = (ShardId(req.shard_id), ShardId(req.right_shard_id));
    let done = node.merge_shards(left, right).await?;
    tracing::info!(
        shard_id = req.shard_id,
        right_shard_id = req.right_shard_id,
        range = %done.range,
        "merge"
    );
    let replicas: Vec<u64> = node
        .local_shard(left)
        .map(|s| s.raft.status().voters.into_iter().collect())
        .unwrap_or_default();
    Ok(pb::MergeShardsReply {
        shard: Some(pb::ShardInfo {
            shard_id: left.0,
            start: done.range.start,
            end: done.range.end,
            replicas,
            version: done.version,
            ..Default::default()
        }),
    })
}
