//! The node's side of the meta shard (`ShardId(0)`, DESIGN.md): writing a change of
//! the cluster map on the meta shard's leader, wherever that is; reading the map from
//! a meta replica; and the meta leader's duties: seed the map once from the config,
//! drive again every recorded move that went silent (its driver crashed or lost its
//! leadership), so that an interrupted move finishes or is undone, watch for nodes to
//! repair (`repair`), and balance replicas and leaders (`balance`).

use std::collections::BTreeSet;
use std::time::Duration;

use stockpile_proto::v1 as pb;
use stockpile_proto::v1::admin_client::AdminClient;

use super::balance::Balancer;
use super::repair::RepairWatch;
use super::{MoveOptions, Node};
use crate::codec;
use crate::error::Error;
use crate::inventory::cluster::{
    ClusterCommand, ClusterOutcome, MoveRecord, NodeRecord, NodeState,
};
use crate::inventory::{Command, Op, OpGroup, Outcome, RequestId};
use crate::router::{META_SHARD_ID, NodeEntry, ShardId};
use crate::storage::ClusterMapRecords;

/// Attempts one cluster-map write makes to find the meta shard's leader (an election
/// takes a few hundred ms; the attempts span several).
const CLUSTER_WRITE_ATTEMPTS_MAX: u32 = 30;
/// Pause between those attempts.
const CLUSTER_WRITE_RETRY_MS: u64 = 200;
/// How long one call to another node about the cluster map may take.
const CLUSTER_CALL_TIMEOUT_MS: u64 = 3_000;
/// How often the meta leader looks at the map (seed, silent moves).
pub(super) const META_DUTY_INTERVAL_MS: u64 = 1_000;
/// A recorded move whose last step is older than this is driven again by the meta
/// leader. Longer than a move's steps take, shorter than an operator's patience.
const MOVE_SILENT_MS: u64 = 5_000;
/// How long a driven move may wait for its new learner to catch up.
const RESUMED_CATCH_UP_TIMEOUT_MS: u64 = 30_000;
/// Attempts a joining node makes to register (one every second).
const REGISTER_ATTEMPTS_MAX: u32 = 60;
/// The request id of the map's seeding: the same on every node, so it applies once.
const SEED_REQUEST_ID: RequestId = *b"cluster-map-seed";

/// What a cluster-map change came to: applied, or refused with the problem (nothing
/// changed).
pub type Applied = Result<(), String>;

/// A fresh random request id for one cluster-map change (retries reuse it).
pub fn cluster_request_id() -> RequestId {
    rand::random()
}

impl Node {
    /// Applies `command` to the cluster map on the meta shard's leader (this node or
    /// another), retrying across a leader change with the same request id. A node
    /// that answers NOT_LEADER naming the leader is tried next: this node's map
    /// of the meta replicas may lag a move by seconds.
    pub async fn cluster_write(
        &self,
        request_id: RequestId,
        command: ClusterCommand,
    ) -> Result<Applied, Error> {
        let mut last = String::from("no meta replica known");
        let mut hint: Option<u64> = None;
        for attempt in 0..CLUSTER_WRITE_ATTEMPTS_MAX {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(CLUSTER_WRITE_RETRY_MS)).await;
            }
            match self.local_shard(META_SHARD_ID) {
                Ok(meta) if meta.is_leader() => {
                    match self.cluster_write_here(request_id, command.clone()).await {
                        Ok(outcome) => return Ok(outcome),
                        Err(e) => last = e.to_string(),
                    }
                    continue;
                }
                _ => {}
            }
            let target = hint
                .take()
                .unwrap_or_else(|| self.meta_leader_guess(attempt));
            match self.cluster_write_on(target, request_id, &command).await {
                Ok(outcome) => return Ok(outcome),
                Err(status) => {
                    hint = crate::api::status::leader_hint(&status).filter(|l| *l != target);
                    last = format!("node {target}: {}", status.message());
                }
            }
        }
        Err(Error::ShardUnavailable {
            shard_id: META_SHARD_ID,
            reason: format!("the cluster map could not be changed: {last}"),
        })
    }

    /// Proposes `command` on the local meta replica, which must lead (NOT_LEADER
    /// otherwise; SHARD_NOT_HERE when this node holds no meta replica).
    pub async fn cluster_write_here(
        &self,
        request_id: RequestId,
        command: ClusterCommand,
    ) -> Result<Applied, Error> {
        let meta = self.local_shard(META_SHARD_ID)?;
        let group = OpGroup {
            atomic: false,
            ops: vec![Op {
                request_id,
                command: Command::Cluster(command),
            }],
        };
        let proposed = meta.propose(group).await?;
        match proposed.results.into_iter().next().map(|r| r.outcome) {
            Some(Outcome::Cluster(ClusterOutcome::Done)) => Ok(Ok(())),
            Some(Outcome::Cluster(ClusterOutcome::Refused { problem })) => Ok(Err(problem)),
            Some(Outcome::Cluster(ClusterOutcome::Unseeded)) => Err(Error::ShardUnavailable {
                shard_id: META_SHARD_ID,
                reason: "the cluster map is not seeded yet (the meta leader seeds it)".into(),
            }),
            Some(Outcome::Rejected(r)) => Err(r.into()),
            other => Err(Error::internal(format!(
                "a cluster command came back as {other:?}"
            ))),
        }
    }

    /// The node most likely to lead the meta shard: the leader this node knows, else
    /// the meta replicas in turn.
    fn meta_leader_guess(&self, attempt: u32) -> u64 {
        if let Ok(meta) = self.local_shard(META_SHARD_ID)
            && let Some(l) = meta.leader_id()
            && attempt.is_multiple_of(2)
        {
            return l;
        }
        let replicas = self.map.get().meta().replicas.clone();
        let i = attempt as usize % replicas.len().max(1);
        replicas.get(i).copied().unwrap_or(self.id)
    }

    async fn cluster_write_on(
        &self,
        target: u64,
        request_id: RequestId,
        command: &ClusterCommand,
    ) -> Result<Applied, tonic::Status> {
        let mut client = self.admin_of(target).map_err(tonic::Status::unavailable)?;
        let mut request = tonic::Request::new(pb::ClusterProposeRequest {
            request_id: request_id.to_vec(),
            command: codec::encode(command).map_err(|e| tonic::Status::internal(e.to_string()))?,
        });
        request.set_timeout(Duration::from_millis(CLUSTER_CALL_TIMEOUT_MS));
        let reply = client.cluster_propose(request).await?.into_inner();
        Ok(if reply.done {
            Ok(())
        } else {
            Err(reply.problem)
        })
    }

    /// The Admin service of node `target`, at the address this node's book has.
    pub(super) fn admin_of(
        &self,
        target: u64,
    ) -> Result<AdminClient<tonic::transport::Channel>, String> {
        let addr = self
            .map
            .get()
            .addr(target)
            .ok_or_else(|| format!("node {target} has no known address"))?
            .to_string();
        Ok(AdminClient::new(self.peers.channel(target, &addr)?))
    }

    /// The cluster map, as the meta shard's leader holds it. A follower's replica
    /// may lag (a node just cut off, or one whose meta replica was moved away and not
    /// yet dropped), so this node reads its own replica only when it leads; else it
    /// asks the leader it knows, then the other meta replicas, taking the first
    /// answer from a replica that leads. When no leader answers, the most advanced
    /// answer seen (a replica's own view, maybe behind) is better than none.
    pub async fn cluster_map(&self) -> Result<ClusterMapRecords, Error> {
        let local = self.local_shard(META_SHARD_ID).ok();
        if let Some(meta) = &local
            && meta.is_leader()
        {
            return meta.reader.cluster_map().map_err(Error::from);
        }
        let mut targets: Vec<u64> = local.iter().filter_map(|m| m.leader_id()).collect();
        for r in self.map.get().meta().replicas.iter().copied() {
            if !targets.contains(&r) {
                targets.push(r);
            }
        }
        let mut best: Option<(u64, ClusterMapRecords)> = None;
        let mut last = String::from("no meta replica known");
        for target in targets.into_iter().filter(|t| *t != self.id) {
            match self.cluster_map_on(target).await {
                Ok((records, leads, _)) if leads => return Ok(records),
                Ok((records, _, applied)) => {
                    if best.as_ref().is_none_or(|(a, _)| applied > *a) {
                        best = Some((applied, records));
                    }
                }
                Err(e) => last = format!("node {target}: {e}"),
            }
        }
        if let Some((_, records)) = best {
            return Ok(records);
        }
        if let Some(meta) = local {
            return meta.reader.cluster_map().map_err(Error::from);
        }
        Err(Error::ShardUnavailable {
            shard_id: META_SHARD_ID,
            reason: format!("the cluster map could not be read: {last}"),
        })
    }

    /// `target`'s replica of the cluster map: the records, whether `target` leads the
    /// meta shard, and the index they were read at.
    async fn cluster_map_on(&self, target: u64) -> Result<(ClusterMapRecords, bool, u64), String> {
        let mut client = self.admin_of(target)?;
        let mut request = tonic::Request::new(pb::ClusterMapRequest {});
        request.set_timeout(Duration::from_millis(CLUSTER_CALL_TIMEOUT_MS));
        let reply = client
            .cluster_map(request)
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        let records = records_from_pb(&reply)?;
        Ok((records, reply.meta_leader_id == target, reply.applied_index))
    }

    /// Notes a move's step in the cluster map (first: records the move). Refused
    /// when another move of the shard is recorded.
    pub(super) async fn record_move(
        &self,
        shard_id: ShardId,
        o: &MoveOptions,
        step: &str,
    ) -> Result<(), Error> {
        let record = MoveRecord {
            shard_id: shard_id.0,
            from: o.from,
            to: o.to,
            from_dead: o.from_dead,
            step: step.to_string(),
            updated_ms: 0,
        };
        self.cluster_write(cluster_request_id(), ClusterCommand::Move { record })
            .await?
            .map_err(|problem| super::refused(shard_id, self.id, "record", problem))
    }

    /// Forgets a recorded move (it finished or was undone).
    pub(super) async fn end_move(&self, shard_id: ShardId, o: &MoveOptions) -> Result<(), Error> {
        let end = ClusterCommand::EndMove {
            shard_id: shard_id.0,
            from: o.from,
            to: o.to,
        };
        self.cluster_write(cluster_request_id(), end)
            .await
            .map(|_| ())
    }

    /// Takes the cluster map's nodes (those not removed) as this node's book of
    /// nodes: joined nodes become reachable, removed ones are refused.
    pub(super) async fn follow_cluster_nodes(&self) {
        let Ok(records) = self.cluster_map().await else {
            return;
        };
        if records.nodes.is_empty() {
            return;
        }
        let nodes = records
            .nodes
            .into_iter()
            .filter(|n| n.state != NodeState::Removed)
            .map(|n| {
                let entry = NodeEntry {
                    id: n.id,
                    addr: n.addr,
                    region: n.region,
                    zone: n.zone,
                };
                (n.id, entry)
            })
            .collect();
        if self.map.update_nodes(nodes) {
            let ids: Vec<u64> = self.map.get().nodes().map(|n| n.id).collect();
            tracing::info!(nodes = ?ids, "the node book follows the cluster map");
        }
    }

    /// Registers this node in the cluster map through one of `via` (host:port of
    /// running nodes; the config's other nodes when empty), retrying for a while.
    /// Err: refused for good (a removed id), or nobody answered.
    pub async fn register(&self, via: &[String]) -> Result<(), String> {
        let via: Vec<String> = if via.is_empty() {
            self.cluster
                .nodes
                .iter()
                .filter(|n| n.id != self.id)
                .map(|n| n.addr.clone())
                .collect()
        } else {
            via.to_vec()
        };
        let info = pb::NodeInfo {
            node_id: self.id,
            addr: self.me.addr.clone(),
            region: self.me.region.clone(),
            zone: self.me.zone.clone(),
        };
        let mut last = String::from("no address to join through");
        for attempt in 0..REGISTER_ATTEMPTS_MAX {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(CLUSTER_WRITE_RETRY_MS * 5)).await;
            }
            let addr = &via[attempt as usize % via.len().max(1)];
            let call = async {
                let mut client = AdminClient::new(self.peers.channel_to(addr)?);
                let mut request = tonic::Request::new(pb::JoinClusterRequest {
                    node: Some(info.clone()),
                });
                request.set_timeout(Duration::from_millis(CLUSTER_CALL_TIMEOUT_MS * 3));
                client
                    .join_cluster(request)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| s.message().to_string())
            };
            match call.await {
                Ok(r) if r.registered => return Ok(()),
                Ok(r) => return Err(r.problem),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(format!("no node registered this one: {last}"))
    }

    /// The meta leader's duties, once: seed the map from the config, then drive every
    /// silent move again (each in its own task; `driving` keeps one per shard).
    pub(super) async fn meta_duties(
        self: &std::sync::Arc<Self>,
        driving: &std::sync::Arc<std::sync::Mutex<BTreeSet<u64>>>,
        watch: &mut RepairWatch,
        balancer: &mut Balancer,
    ) {
        self.follow_cluster_nodes().await;
        let Ok(meta) = self.local_shard(META_SHARD_ID) else {
            return watch.reset();
        };
        if !meta.is_leader() {
            return watch.reset();
        }
        let Ok(records) = meta.reader.cluster_map() else {
            return;
        };
        let recorded = |id: u64| records.nodes.iter().any(|n| n.id == id);
        if !self.cluster.nodes.iter().all(|n| recorded(n.id)) {
            let seed = ClusterCommand::Seed {
                nodes: self.cluster.nodes.iter().map(seed_record).collect(),
            };
            if let Err(e) = self.cluster_write_here(SEED_REQUEST_ID, seed).await {
                tracing::warn!(error = %e, "seeding the cluster map failed");
            }
            return;
        }
        let repair_on = self.cluster.server.repair_after_ms > 0;
        if repair_on || self.cluster.balancer.enabled {
            let probes = self.probe_all(&records).await;
            if repair_on {
                self.watch_for_repair(&records, &probes, watch);
            }
            if self.cluster.balancer.enabled && !watch.busy() {
                self.balance(&records, &probes, balancer);
            }
        }
        let now_ms = self.shared.ctx.clock.now_ms();
        for m in records.moves {
            if now_ms.saturating_sub(m.updated_ms) < MOVE_SILENT_MS {
                continue;
            }
            if !driving
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(m.shard_id)
            {
                continue;
            }
            let (node, driving) = (self.clone(), driving.clone());
            tokio::spawn(async move {
                node.drive_recorded_move(&m).await;
                driving
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&m.shard_id);
            });
        }
    }

    /// Drives a recorded move again through the shard's leader (the same idempotent
    /// MoveReplica an operator sends): it finishes the move, or, when the move cannot
    /// happen any more, the record is forgotten (the move's own undo already removed
    /// a learner that could not catch up).
    async fn drive_recorded_move(&self, m: &MoveRecord) {
        let shard_id = ShardId(m.shard_id);
        tracing::info!(%shard_id, from = m.from, to = m.to, step = %m.step, "driving a silent recorded move again");
        let request = pb::MoveReplicaRequest {
            shard_id: m.shard_id,
            from_node_id: m.from,
            to_node_id: m.to,
            catch_up_timeout_ms: RESUMED_CATCH_UP_TIMEOUT_MS,
            from_dead: m.from_dead,
        };
        match self.send_move(shard_id, request, &[]).await {
            Ok(steps) => tracing::info!(%shard_id, ?steps, "a recorded move was driven to its end"),
            Err(e) => {
                tracing::warn!(%shard_id, error = %e, "driving a recorded move failed; it stays recorded")
            }
        }
    }

    /// Sends MoveReplica to the shard's leader, trying this node's view of the leader
    /// and `candidates` (the shard's replicas as last seen; empty: this node's map).
    pub(super) async fn send_move(
        &self,
        shard_id: ShardId,
        request: pb::MoveReplicaRequest,
        candidates: &[u64],
    ) -> Result<Vec<String>, String> {
        let mut last = String::new();
        let replicas = if candidates.is_empty() {
            self.map
                .get()
                .shard(shard_id)
                .map(|d| d.replicas.clone())
                .unwrap_or_default()
        } else {
            candidates.to_vec()
        };
        for attempt in 0..CLUSTER_WRITE_ATTEMPTS_MAX {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(CLUSTER_WRITE_RETRY_MS)).await;
            }
            let local_leader = self.local_shard(shard_id).ok().and_then(|s| s.leader_id());
            let target = match local_leader {
                Some(l) if attempt.is_multiple_of(2) => l,
                _ => replicas[attempt as usize % replicas.len().max(1)],
            };
            let call = async {
                let mut client = self.admin_of(target)?;
                client
                    .move_replica(tonic::Request::new(request))
                    .await
                    .map(|r| r.into_inner().steps)
                    .map_err(|s| s.message().to_string())
            };
            match call.await {
                Ok(steps) => return Ok(steps),
                Err(e) => last = format!("node {target}: {e}"),
            }
        }
        Err(last)
    }
}

fn seed_record(n: &crate::config::NodeConfig) -> NodeRecord {
    NodeRecord {
        id: n.id,
        addr: n.addr.clone(),
        region: n.region.clone(),
        zone: n.zone.clone(),
        state: NodeState::Up,
    }
}

/// The reply's records (a peer's answer to ClusterMap).
fn records_from_pb(reply: &pb::ClusterMapReply) -> Result<ClusterMapRecords, String> {
    let state = |s: &str| NodeState::parse(s).ok_or_else(|| format!("unknown node state {s:?}"));
    let nodes = reply
        .nodes
        .iter()
        .map(|n| {
            Ok(NodeRecord {
                id: n.node_id,
                addr: n.addr.clone(),
                region: n.region.clone(),
                zone: n.zone.clone(),
                state: state(&n.state)?,
            })
        })
        .collect::<Result<_, String>>()?;
    let moves = reply
        .moves
        .iter()
        .map(|m| MoveRecord {
            shard_id: m.shard_id,
            from: m.from_node_id,
            to: m.to_node_id,
            from_dead: m.from_dead,
            step: m.step.clone(),
            updated_ms: m.updated_ms,
        })
        .collect();
    Ok(ClusterMapRecords { nodes, moves })
}

/// The cluster map as the ClusterMap reply carries it.
pub fn records_to_pb(
    records: &ClusterMapRecords,
    meta_leader_id: u64,
    applied_index: u64,
) -> pb::ClusterMapReply {
    pb::ClusterMapReply {
        nodes: records
            .nodes
            .iter()
            .map(|n| pb::ClusterNode {
                node_id: n.id,
                addr: n.addr.clone(),
                region: n.region.clone(),
                zone: n.zone.clone(),
                state: n.state.as_str().to_string(),
            })
            .collect(),
        moves: records
            .moves
            .iter()
            .map(|m| pb::ClusterMove {
                shard_id: m.shard_id,
                from_node_id: m.from,
                to_node_id: m.to,
                from_dead: m.from_dead,
                step: m.step.clone(),
                updated_ms: m.updated_ms,
            })
            .collect(),
        meta_leader_id,
        applied_index,
    }
}
