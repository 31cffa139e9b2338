//! The Admin gRPC service: the shard map for clients, and each node's (or the whole
//! cluster's) Raft state for operators.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::ServerState;
use stockpile_proto::v1 as pb;
use stockpile_proto::v1::admin_client::AdminClient;
use stockpile_proto::v1::admin_server::Admin;
use tonic::{Request, Response, Status};

use super::status::to_status;
use crate::error::Error;
use crate::node::Node;

/// How long ClusterStatus waits for each other node.
const PEER_STATUS_TIMEOUT_MS: u64 = 1_000;

/// The shard map's epoch: 1 while shards come only from the static config.
pub const SHARD_MAP_EPOCH: u64 = 1;

pub struct AdminService {
    node: Arc<Node>,
}

impl AdminService {
    pub fn new(node: Arc<Node>) -> Self {
        AdminService { node }
    }
}

pub fn node_info(n: &crate::config::NodeConfig) -> pb::NodeInfo {
    pb::NodeInfo {
        node_id: n.id,
        addr: n.addr.clone(),
        region: n.region.clone(),
        zone: n.zone.clone(),
    }
}

fn role(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

pub fn node_status(node: &Node) -> pb::NodeStatusReply {
    let mut shards = Vec::with_capacity(node.shards.len());
    for (id, shard) in &node.shards {
        let m = crate::raft::metrics(&shard.raft);
        let last = m.last_log_index.unwrap_or(0);
        let purged = m.purged.map(|l| l.index).unwrap_or(0);
        let replication = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(peer, matched)| {
                        let matched = matched.map(|l| l.index).unwrap_or(0);
                        pb::ReplicaProgress {
                            node_id: *peer,
                            matched_index: matched,
                            lag: last.saturating_sub(matched),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        shards.push(pb::ShardStatus {
            shard_id: *id,
            start: shard.config.start.clone(),
            end: shard.config.end.clone(),
            replicas: shard.config.replicas.clone(),
            role: role(m.state).to_string(),
            leader_id: m.current_leader.unwrap_or(0),
            term: m.current_term,
            last_log_index: last,
            commit_index: m.local_committed.map(|l| l.index).unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: purged,
            log_entries: last.saturating_sub(purged),
            replication,
        });
    }
    let w = &node.write_stats;
    pb::NodeStatusReply {
        node: Some(node_info(&node.me)),
        shards,
        uptime_ms: node.started_at.elapsed().as_millis() as u64,
        log_appends_total: w.log_appends.load(Ordering::Relaxed),
        log_syncs_total: w.log_syncs.load(Ordering::Relaxed),
        proposals_total: node.propose_stats.requests.load(Ordering::Relaxed),
        raft_entries_proposed_total: node.propose_stats.entries.load(Ordering::Relaxed),
        requests_applied_total: node.apply_stats.ops_applied.load(Ordering::Relaxed),
        requests_replayed_total: node.apply_stats.ops_replayed.load(Ordering::Relaxed),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn shard_map(
        &self,
        _: Request<pb::ShardMapRequest>,
    ) -> Result<Response<pb::ShardMapReply>, Status> {
        let c = &self.node.cluster;
        let shards = c
            .shards
            .iter()
            .map(|s| {
                let (leader_id, term) = match self.node.shards.get(&s.id) {
                    Some(shard) => {
                        let m = crate::raft::metrics(&shard.raft);
                        (m.current_leader.unwrap_or(0), m.current_term)
                    }
                    None => (0, 0),
                };
                pb::ShardInfo {
                    shard_id: s.id,
                    start: s.start.clone(),
                    end: s.end.clone(),
                    replicas: s.replicas.clone(),
                    leader_id,
                    term,
                }
            })
            .collect();
        Ok(Response::new(pb::ShardMapReply {
            epoch: SHARD_MAP_EPOCH,
            nodes: c.nodes.iter().map(node_info).collect(),
            shards,
            node_id: self.node.id,
        }))
    }

    async fn node_status(
        &self,
        _: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusReply>, Status> {
        Ok(Response::new(node_status(&self.node)))
    }

    async fn cluster_status(
        &self,
        _: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusReply>, Status> {
        let node = &self.node;
        let views = node.cluster.nodes.iter().map(|n| async move {
            if n.id == node.id {
                return pb::NodeView {
                    node: Some(node_info(n)),
                    reachable: true,
                    error: String::new(),
                    status: Some(node_status(node)),
                };
            }
            let result = async {
                let channel = node.peers.channel(n.id, &n.addr)?;
                let mut request = Request::new(pb::NodeStatusRequest {});
                request.set_timeout(Duration::from_millis(PEER_STATUS_TIMEOUT_MS));
                let mut client = AdminClient::new(channel);
                match tokio::time::timeout(
                    Duration::from_millis(PEER_STATUS_TIMEOUT_MS),
                    client.node_status(request),
                )
                .await
                {
                    Ok(Ok(r)) => Ok(r.into_inner()),
                    Ok(Err(s)) => Err(s.message().to_string()),
                    Err(_) => Err(format!("no answer within {PEER_STATUS_TIMEOUT_MS} ms")),
                }
            }
            .await;
            match result {
                Ok(status) => pb::NodeView {
                    node: Some(node_info(n)),
                    reachable: true,
                    error: String::new(),
                    status: Some(status),
                },
                Err(e) => pb::NodeView {
                    node: Some(node_info(n)),
                    reachable: false,
                    error: e,
                    status: None,
                },
            }
        });
        let nodes = futures::future::join_all(views).await;
        Ok(Response::new(pb::ClusterStatusReply {
            epoch: SHARD_MAP_EPOCH,
            nodes,
        }))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderReply>, Status> {
        let req = request.into_inner();
        if self.node.cluster.node(req.to_node_id).is_none() {
            return Err(to_status(Error::NodeNotFound {
                node_id: req.to_node_id,
            }));
        }
        let shard = self.node.local_shard(req.shard_id).map_err(to_status)?;
        if !shard.config.replicas.contains(&req.to_node_id) {
            return Err(to_status(Error::InvalidArgument {
                field: "to_node_id".into(),
                rule: format!(
                    "node {} holds no replica of shard {}",
                    req.to_node_id, req.shard_id
                ),
            }));
        }
        let leader = shard
            .transfer_leadership(
                req.to_node_id,
                Duration::from_millis(if req.timeout_ms == 0 {
                    5_000
                } else {
                    req.timeout_ms
                }),
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::TransferLeaderReply {
            leader_id: leader.unwrap_or(0),
        }))
    }

    async fn allow_rebuild(
        &self,
        request: Request<pb::AllowRebuildRequest>,
    ) -> Result<Response<pb::AllowRebuildReply>, Status> {
        let target = request.into_inner().node_id;
        if self.node.cluster.node(target).is_none() {
            return Err(to_status(Error::NodeNotFound { node_id: target }));
        }
        if target == self.node.id {
            return Err(to_status(Error::InvalidArgument {
                field: "node_id".into(),
                rule: format!(
                    "node {target} is the node you asked; ask a node that leads the shards of the wiped node"
                ),
            }));
        }
        let mut shard_ids = Vec::new();
        for (id, shard) in &self.node.shards {
            if !shard.is_leader()
                || !shard.config.replicas.contains(&target)
                || target == self.node.id
            {
                continue;
            }
            match shard.raft.trigger().allow_next_revert(&target, true).await {
                Ok(Ok(())) => shard_ids.push(*id),
                Ok(Err(e)) => {
                    tracing::warn!(shard_id = id, target, error = %e, "allow_next_revert refused")
                }
                Err(e) => return Err(Status::unavailable(format!("shard {id}: {e}"))),
            }
        }
        tracing::warn!(
            target,
            ?shard_ids,
            "allowed the next log reversion of a replica (rebuild after wipe)"
        );
        Ok(Response::new(pb::AllowRebuildReply { shard_ids }))
    }

    async fn shard_digests(
        &self,
        _: Request<pb::ShardDigestsRequest>,
    ) -> Result<Response<pb::ShardDigestsReply>, Status> {
        let node = self.node.clone();
        let shards = tokio::task::spawn_blocking(move || {
            node.shards
                .iter()
                .map(|(id, shard)| {
                    shard
                        .reader
                        .digest()
                        .map(|(applied_index, digest, outcomes_count)| pb::ShardDigest {
                            shard_id: *id,
                            applied_index,
                            digest,
                            outcomes_count,
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ShardDigestsReply {
            node_id: self.node.id,
            shards,
        }))
    }
}
