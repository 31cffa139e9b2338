//! The Admin gRPC service: the shard map for clients, and each node's (or the whole
//! cluster's) Raft state for operators.

use std::sync::Arc;
use std::time::Duration;

use stockpile_proto::v1 as pb;
use stockpile_proto::v1::admin_client::AdminClient;
use stockpile_proto::v1::admin_server::Admin;
use tonic::{Request, Response, Status};

use super::status::to_status;
use crate::error::Error;
use crate::inventory::RequestId;
use crate::inventory::cluster::ClusterCommand;
use crate::node::Node;
use crate::node::records_to_pb;
use crate::router::{META_SHARD_ID, ShardId};
use crate::security::{Caller, Need, audit_call, audit_denied};

/// How long ClusterStatus waits for each other node.
const PEER_STATUS_TIMEOUT_MS: u64 = 1_000;

pub struct AdminService {
    node: Arc<Node>,
}

impl AdminService {
    pub fn new(node: Arc<Node>) -> Self {
        AdminService { node }
    }
}

pub fn node_info(n: &crate::router::NodeEntry) -> pb::NodeInfo {
    pb::NodeInfo {
        node_id: n.id,
        addr: n.addr.clone(),
        region: n.region.clone(),
        zone: n.zone.clone(),
    }
}

pub fn node_status(node: &Node) -> pb::NodeStatusReply {
    let local = node.shards();
    let mut shards = Vec::with_capacity(local.len());
    for shard in &local {
        let id = shard.id();
        let st = shard.raft.status();
        let replication = st
            .matched
            .iter()
            .flatten()
            .map(|(peer, matched)| pb::ReplicaProgress {
                node_id: *peer,
                matched_index: *matched,
                lag: st.last_log_index.saturating_sub(*matched),
            })
            .collect();
        let members = shard.raft.members();
        let range = shard.bounds.get().range;
        shards.push(pb::ShardStatus {
            shard_id: id.0,
            start: range.start,
            end: range.end,
            replicas: st.voters.iter().copied().collect(),
            replica_ids: members.voters.into_values().collect(),
            learner_replica_ids: members.learners.into_values().collect(),
            membership_index: members.index,
            membership_joint: members.joint,
            role: st.role.to_string(),
            leader_id: st.leader.unwrap_or(0),
            term: st.term,
            last_log_index: st.last_log_index,
            commit_index: st.commit_index,
            applied_index: st.applied_index,
            snapshot_index: st.snapshot_index,
            purged_index: st.purged_index,
            log_entries: st.last_log_index.saturating_sub(st.purged_index),
            replication,
            asleep: st.asleep,
        });
    }
    let t = node.totals();
    pb::NodeStatusReply {
        node: Some(node_info(&crate::router::NodeEntry {
            id: node.id,
            addr: node.me.addr.clone(),
            region: node.me.region.clone(),
            zone: node.me.zone.clone(),
        })),
        shards,
        uptime_ms: node.started_at.elapsed().as_millis() as u64,
        log_appends_total: t.log_appends,
        log_syncs_total: t.log_syncs,
        proposals_total: t.proposals,
        raft_entries_proposed_total: t.entries_proposed,
        requests_applied_total: t.ops_applied,
        requests_replayed_total: t.ops_replayed,
        rebuild_allowed_node_ids: node
            .rebuild_allowed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect(),
        balancer_decisions: node
            .balancer_decisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|d| pb::BalancerDecision {
                at_ms: d.at_ms,
                kind: d.kind.to_string(),
                shard_id: d.shard_id,
                from_node_id: d.from,
                to_node_id: d.to,
                reason: d.reason.clone(),
                outcome: d.outcome.clone(),
            })
            .collect(),
    }
}

impl AdminService {
    /// The caller of `request` if it may make `call`; else the refusal, audited.
    /// Authenticates and authorizes one call (also the HTTP console's).
    pub(crate) fn authorized<T>(
        &self,
        call: &'static str,
        request: &Request<T>,
        need: Need,
    ) -> Result<Caller, Status> {
        let caller = self.node.security.caller(request).map_err(|e| {
            audit_denied("unauthenticated", call, &e);
            to_status(e)
        })?;
        caller.authorize(call, need).map_err(to_status)?;
        Ok(caller)
    }

    async fn transfer(
        &self,
        req: pb::TransferLeaderRequest,
    ) -> Result<pb::TransferLeaderReply, Error> {
        if self.node.map.get().node(req.to_node_id).is_none() {
            return Err(Error::NodeNotFound {
                node_id: req.to_node_id,
            });
        }
        let shard_id = ShardId(req.shard_id);
        if self.node.map.get().shard(shard_id).is_none() {
            return Err(Error::ShardNotFound { shard_id });
        }
        let shard = self.node.local_shard(shard_id)?;
        if !shard.raft.status().voters.contains(&req.to_node_id) {
            return Err(Error::InvalidArgument {
                field: "to_node_id".into(),
                rule: format!(
                    "node {} holds no replica of shard {}",
                    req.to_node_id, req.shard_id
                ),
            });
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
            .await?;
        Ok(pb::TransferLeaderReply {
            leader_id: leader.unwrap_or(0),
        })
    }

    async fn rebuild(&self, target: u64) -> Result<pb::AllowRebuildReply, Error> {
        if self.node.map.get().node(target).is_none() {
            return Err(Error::NodeNotFound { node_id: target });
        }
        if target == self.node.id {
            return Err(Error::InvalidArgument {
                field: "node_id".into(),
                rule: format!(
                    "node {target} is the node you asked; ask a node that leads the shards of the wiped node"
                ),
            });
        }
        let mut shard_ids = Vec::new();
        for shard in self.node.shards() {
            let id = &shard.id();
            if !shard.is_leader() || !shard.raft.status().voters.contains(&target) {
                continue;
            }
            match shard.raft.allow_next_revert(target).await {
                Ok(Ok(())) => shard_ids.push(id.0),
                Ok(Err(e)) => {
                    tracing::warn!(shard_id = %id, target, error = %e, "allow_next_revert refused")
                }
                Err(reason) => {
                    return Err(Error::ShardUnavailable {
                        shard_id: *id,
                        reason,
                    });
                }
            }
        }
        self.node
            .rebuild_allowed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(target);
        tracing::warn!(
            target,
            ?shard_ids,
            "allowed the next log reversion of a replica (rebuild after wipe)"
        );
        Ok(pb::AllowRebuildReply { shard_ids })
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn shard_map(
        &self,
        request: Request<pb::ShardMapRequest>,
    ) -> Result<Response<pb::ShardMapReply>, Status> {
        self.authorized("shard_map", &request, Need::Status)?;
        let map = self.node.map.get();
        let info = |d: &crate::router::ShardDescriptor| {
            let (leader_id, term) = match self.node.local_shard(d.id) {
                Ok(shard) => (shard.raft.leader().unwrap_or(0), shard.raft.term()),
                Err(_) => (0, 0),
            };
            pb::ShardInfo {
                shard_id: d.id.0,
                start: d.range.start.clone(),
                end: d.range.end.clone(),
                replicas: d.replicas.clone(),
                leader_id,
                term,
                version: d.epoch.version,
                conf_ver: d.epoch.conf_ver,
            }
        };
        let shards = map.shards().iter().map(info).collect();
        Ok(Response::new(pb::ShardMapReply {
            epoch: map.epoch(),
            nodes: map.nodes().map(node_info).collect(),
            shards,
            node_id: self.node.id,
            meta: Some(info(map.meta())),
        }))
    }

    async fn node_status(
        &self,
        request: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusReply>, Status> {
        self.authorized("node_status", &request, Need::Status)?;
        Ok(Response::new(node_status(&self.node)))
    }

    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusReply>, Status> {
        self.authorized("cluster_status", &request, Need::Status)?;
        let node = &self.node;
        let map = node.map.get();
        let views = map.nodes().map(|n| async move {
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
            epoch: node.map.get().epoch(),
            nodes,
        }))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderReply>, Status> {
        let caller = self.authorized("transfer_leader", &request, Need::Replica)?;
        let result = self.transfer(request.into_inner()).await;
        audit_call(
            &caller.name,
            "transfer_leader",
            &result.as_ref().map(|_| ()),
        );
        result.map(Response::new).map_err(to_status)
    }

    async fn allow_rebuild(
        &self,
        request: Request<pb::AllowRebuildRequest>,
    ) -> Result<Response<pb::AllowRebuildReply>, Status> {
        let caller = self.authorized("allow_rebuild", &request, Need::Operator)?;
        let result = self.rebuild(request.into_inner().node_id).await;
        audit_call(&caller.name, "allow_rebuild", &result.as_ref().map(|_| ()));
        result.map(Response::new).map_err(to_status)
    }

    async fn move_replica(
        &self,
        request: Request<pb::MoveReplicaRequest>,
    ) -> Result<Response<pb::MoveReplicaReply>, Status> {
        let caller = self.authorized("move_replica", &request, Need::Replica)?;
        let result = super::admin_moves::move_replica(&self.node, request.into_inner()).await;
        audit_call(&caller.name, "move_replica", &result.as_ref().map(|_| ()));
        result.map(Response::new).map_err(to_status)
    }

    async fn split_shard(
        &self,
        request: Request<pb::SplitShardRequest>,
    ) -> Result<Response<pb::SplitShardReply>, Status> {
        let caller = self.authorized("split_shard", &request, Need::Operator)?;
        let result = super::admin_moves::split_shard(&self.node, request.into_inner()).await;
        audit_call(&caller.name, "split_shard", &result.as_ref().map(|_| ()));
        result.map(Response::new).map_err(to_status)
    }

    async fn merge_shards(
        &self,
        request: Request<pb::MergeShardsRequest>,
    ) -> Result<Response<pb::MergeShardsReply>, Status> {
        let caller = self.authorized("merge_shards", &request, Need::Operator)?;
        let result = super::admin_moves::merge_shards(&self.node, request.into_inner()).await;
        audit_call(&caller.name, "merge_shards", &result.as_ref().map(|_| ()));
        result.map(Response::new).map_err(to_status)
    }

    async fn create_replica(
        &self,
        request: Request<pb::CreateReplicaRequest>,
    ) -> Result<Response<pb::CreateReplicaReply>, Status> {
        let caller = self.authorized("create_replica", &request, Need::Replica)?;
        let req = request.into_inner();
        let result = self
            .node
            .create_replica(ShardId(req.shard_id), req.replica_id)
            .await
            .map(|created| pb::CreateReplicaReply { created });
        audit_call(&caller.name, "create_replica", &result.as_ref().map(|_| ()));
        result.map(Response::new).map_err(to_status)
    }

    async fn drop_replica(
        &self,
        request: Request<pb::DropReplicaRequest>,
    ) -> Result<Response<pb::DropReplicaReply>, Status> {
        let caller = self.authorized("drop_replica", &request, Need::Replica)?;
        let req = request.into_inner();
        let result = self
            .node
            .drop_replica(ShardId(req.shard_id), req.replica_id, &req.voters)
            .await
            .map(|dropped| pb::DropReplicaReply { dropped });
        audit_call(&caller.name, "drop_replica", &result.as_ref().map(|_| ()));
        result.map(Response::new).map_err(to_status)
    }

    async fn cluster_map(
        &self,
        request: Request<pb::ClusterMapRequest>,
    ) -> Result<Response<pb::ClusterMapReply>, Status> {
        self.authorized("cluster_map", &request, Need::Status)?;
        let meta = self.node.local_shard(META_SHARD_ID).map_err(to_status)?;
        let reader = meta.reader.clone();
        let (records, applied) = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::storage::StorageError>((reader.cluster_map()?, reader.meta()?))
        })
        .await
        .map_err(|e| to_status(Error::internal(e)))?
        .map_err(|e| to_status(e.into()))?;
        let applied_index = applied.last_applied.map(|l| l.index).unwrap_or(0);
        Ok(Response::new(records_to_pb(
            &records,
            meta.leader_id().unwrap_or(0),
            applied_index,
        )))
    }

    async fn cluster_propose(
        &self,
        request: Request<pb::ClusterProposeRequest>,
    ) -> Result<Response<pb::ClusterProposeReply>, Status> {
        self.authorized("cluster_propose", &request, Need::Raft)?;
        let req = request.into_inner();
        let request_id: RequestId = req.request_id.as_slice().try_into().map_err(|_| {
            to_status(Error::InvalidArgument {
                field: "request_id".into(),
                rule: format!("must be 16 bytes, got {}", req.request_id.len()),
            })
        })?;
        let command: ClusterCommand = crate::codec::decode(&req.command).map_err(|e| {
            to_status(Error::InvalidArgument {
                field: "command".into(),
                rule: format!("not a cluster command: {e}"),
            })
        })?;
        let outcome = self
            .node
            .cluster_write_here(request_id, command)
            .await
            .map_err(to_status)?;
        Ok(Response::new(match outcome {
            Ok(()) => pb::ClusterProposeReply {
                done: true,
                problem: String::new(),
            },
            Err(problem) => pb::ClusterProposeReply {
                done: false,
                problem,
            },
        }))
    }

    async fn join_cluster(
        &self,
        request: Request<pb::JoinClusterRequest>,
    ) -> Result<Response<pb::JoinClusterReply>, Status> {
        let caller = self.authorized("join_cluster", &request, Need::Replica)?;
        let info = request.into_inner().node.unwrap_or_default();
        let result = super::admin_moves::join(&self.node, &caller, info).await;
        audit_call(&caller.name, "join_cluster", &result.as_ref().map(|_| ()));
        let (registered, problem) = result.map_err(to_status)?;
        Ok(Response::new(pb::JoinClusterReply {
            registered,
            problem,
        }))
    }

    async fn set_node_state(
        &self,
        request: Request<pb::SetNodeStateRequest>,
    ) -> Result<Response<pb::SetNodeStateReply>, Status> {
        let caller = self.authorized("set_node_state", &request, Need::Operator)?;
        let req = request.into_inner();
        let result = super::admin_moves::set_node_state(&self.node, req).await;
        audit_call(&caller.name, "set_node_state", &result.as_ref().map(|_| ()));
        let (done, problem) = result.map_err(to_status)?;
        Ok(Response::new(pb::SetNodeStateReply { done, problem }))
    }

    async fn shard_digests(
        &self,
        request: Request<pb::ShardDigestsRequest>,
    ) -> Result<Response<pb::ShardDigestsReply>, Status> {
        self.authorized("shard_digests", &request, Need::Status)?;
        let node = self.node.clone();
        let shards = tokio::task::spawn_blocking(move || {
            node.shards()
                .iter()
                .map(|shard| {
                    shard.reader.digest().map(|d| pb::ShardDigest {
                        shard_id: shard.id().0,
                        applied_index: d.applied_index,
                        digest: d.digest,
                        outcomes_count: d.outcomes_count,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| to_status(Error::internal(e)))?
        .map_err(|e| to_status(e.into()))?;
        Ok(Response::new(pb::ShardDigestsReply {
            node_id: self.node.id,
            shards,
        }))
    }
}
