//! Automatic repair (`server.repair_after_ms`): the meta leader probes every node the
//! cluster map records as up or draining, once per duty tick. A node it has not
//! reached for that long is declared dead the way an operator's `node remove N --dead`
//! does it: marked draining, each of its replicas recreated on another node (moves
//! from a dead source, so the survivors' majority carries each shard), then marked
//! removed, so that its id never comes back.
//!
//! Where the replicas go is the client library's `plan_evacuation`, the one home of
//! placement (fewest replicas first, a zone none of the shard's other replicas is in
//! when there is one). Timers start when this node first sees a node as meta leader,
//! so a new meta leader waits the whole time before declaring anyone dead. One repair
//! runs at a time; one that stops part-way (no quorum, no target) starts again on a
//! later tick from what the shards then hold.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stockpile_client::{NodeInfo, plan_evacuation};
use stockpile_proto::v1 as pb;

use super::Node;
use super::meta::cluster_request_id;
use crate::inventory::cluster::{ClusterCommand, NodeState};
use crate::router::ShardId;
use crate::storage::ClusterMapRecords;
use crate::telemetry::names;

/// How long one probe of a node may take before it counts as not reached.
const PROBE_TIMEOUT_MS: u64 = 1_000;
/// How long a repair's new replica may take to catch up.
const REPAIR_CATCH_UP_TIMEOUT_MS: u64 = 30_000;

/// The meta leader's memory of who answered when, and the repair under way.
#[derive(Default)]
pub(super) struct RepairWatch {
    /// When each probed node last answered this node while it was meta leader.
    last_seen: BTreeMap<u64, Instant>,
    /// The repair under way (one at a time: each move changes the next one's plan).
    running: Option<tokio::task::JoinHandle<()>>,
}

impl RepairWatch {
    /// Forgets every timer (this node is not the meta leader, or repair is off).
    pub(super) fn reset(&mut self) {
        self.last_seen.clear();
    }

    pub(super) fn busy(&self) -> bool {
        self.running.as_ref().is_some_and(|t| !t.is_finished())
    }
}

/// Each shard's voters (node ids), as the shard's leader reports them.
pub(super) type Voters = BTreeMap<u64, Vec<u64>>;

/// A node and its status, or None when it did not answer.
pub(super) type Probe = (u64, Option<pb::NodeStatusReply>);

impl Node {
    /// Asks every node the map records (removed ones aside) for its status at once;
    /// None for a node that did not answer within `PROBE_TIMEOUT_MS`.
    pub(super) async fn probe_all(&self, records: &ClusterMapRecords) -> Vec<Probe> {
        let watched: Vec<u64> = records
            .nodes
            .iter()
            .filter(|n| n.id != self.id && n.state != NodeState::Removed)
            .map(|n| n.id)
            .collect();
        let answers = futures::future::join_all(watched.iter().map(|id| self.probe(*id))).await;
        watched.into_iter().zip(answers).collect()
    }

    /// Each shard's voters and leader, as the shard's leader (here or in `probes`)
    /// reports them; None until every shard of the map has a leader that answered
    /// (a plan on part of the shards would be wrong about the rest).
    pub(super) fn shard_views(&self, probes: &[Probe]) -> Option<(Voters, BTreeMap<u64, u64>)> {
        let mut voters = Voters::new();
        let mut leaders = BTreeMap::new();
        for s in self.shards().iter().filter(|s| s.is_leader()) {
            voters.insert(s.id().0, s.raft.status().voters.iter().copied().collect());
            leaders.insert(s.id().0, self.id);
        }
        for (node, status) in probes {
            let Some(status) = status else { continue };
            for s in status.shards.iter().filter(|s| s.role == "leader") {
                voters.insert(s.shard_id, s.replicas.clone());
                leaders.insert(s.shard_id, *node);
            }
        }
        (voters.len() >= self.map.get().all_shards().count()).then_some((voters, leaders))
    }

    /// One tick of the watch (on the meta leader): note who answered, and start the
    /// repair of one node silent for `repair_after_ms`.
    pub(super) fn watch_for_repair(
        self: &Arc<Self>,
        records: &ClusterMapRecords,
        probes: &[Probe],
        watch: &mut RepairWatch,
    ) {
        let repair_after = Duration::from_millis(self.cluster.server.repair_after_ms);
        watch
            .last_seen
            .retain(|id, _| probes.iter().any(|(p, _)| p == id));
        let now = Instant::now();
        let mut silent = Vec::new();
        for (id, answer) in probes {
            if answer.is_some() {
                watch.last_seen.insert(*id, now);
                continue;
            }
            let since = *watch.last_seen.entry(*id).or_insert(now);
            if now.duration_since(since) >= repair_after {
                silent.push(*id);
            }
        }
        let Some(dead) = silent.first().copied() else {
            return;
        };
        if watch.busy() {
            return;
        }
        let Some((voters, _)) = self.shard_views(probes) else {
            tracing::info!(
                node = dead,
                "a node is due for repair, but not every shard has a leader to ask; waiting"
            );
            return;
        };
        let mut targets = up_nodes(records);
        targets.retain(|n| n.node_id != dead);
        let node = self.clone();
        watch.running = Some(tokio::spawn(async move {
            node.repair(dead, targets, voters, repair_after).await;
        }));
    }

    /// This node's status as node `id` gives it, or None when it does not answer.
    async fn probe(&self, id: u64) -> Option<pb::NodeStatusReply> {
        let mut client = self.admin_of(id).ok()?;
        let mut request = tonic::Request::new(pb::NodeStatusRequest {});
        request.set_timeout(Duration::from_millis(PROBE_TIMEOUT_MS));
        let call = client.node_status(request);
        match tokio::time::timeout(Duration::from_millis(PROBE_TIMEOUT_MS), call).await {
            Ok(Ok(reply)) => Some(reply.into_inner()),
            _ => None,
        }
    }

    /// Declares `dead` dead: draining, its replicas recreated on `targets`, removed.
    async fn repair(&self, dead: u64, targets: Vec<NodeInfo>, voters: Voters, after: Duration) {
        let plan = match plan_evacuation(dead, &targets, &voters) {
            Ok(plan) => plan,
            Err(e) => {
                tracing::warn!(node = dead, error = %e, "a node is due for repair, but its replicas have nowhere to go");
                return;
            }
        };
        tracing::warn!(
            node = dead,
            unreachable_ms = after.as_millis() as u64,
            moves = plan.len(),
            "declaring an unreachable node dead: recreating its replicas on the other nodes"
        );
        metrics::counter!(names::REPAIRS_TOTAL).increment(1);
        if !self.set_state(dead, NodeState::Draining).await {
            return;
        }
        for m in &plan {
            let shard_id = ShardId(m.shard_id);
            let request = pb::MoveReplicaRequest {
                shard_id: m.shard_id,
                from_node_id: m.from,
                to_node_id: m.to,
                catch_up_timeout_ms: REPAIR_CATCH_UP_TIMEOUT_MS,
                from_dead: true,
            };
            let candidates = voters.get(&m.shard_id).cloned().unwrap_or_default();
            match self.send_move(shard_id, request, &candidates).await {
                Ok(steps) => {
                    tracing::info!(%shard_id, to = m.to, ?steps, "repair: replica recreated")
                }
                Err(e) => {
                    tracing::warn!(%shard_id, error = %e, "repair: a move failed; the repair starts again later");
                    return;
                }
            }
        }
        if self.set_state(dead, NodeState::Removed).await {
            tracing::warn!(
                node = dead,
                "repair done: the node is removed; it may come back only wiped, under a new id"
            );
        }
    }

    /// Sets `node`'s state in the cluster map; false (logged) when that failed.
    async fn set_state(&self, node: u64, state: NodeState) -> bool {
        let command = ClusterCommand::SetNodeState {
            node_id: node,
            state,
        };
        match self.cluster_write(cluster_request_id(), command).await {
            Ok(Ok(())) => true,
            Ok(Err(problem)) => {
                tracing::warn!(node, state = state.as_str(), %problem, "repair: state change refused");
                false
            }
            Err(e) => {
                tracing::warn!(node, state = state.as_str(), error = %e, "repair: state change failed");
                false
            }
        }
    }
}

/// The nodes the cluster map records as up (the only ones placement gives replicas
/// and leaderships to), as the client library's planners take them.
pub(super) fn up_nodes(records: &ClusterMapRecords) -> Vec<NodeInfo> {
    records
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Up)
        .map(|n| NodeInfo {
            node_id: n.id,
            addr: n.addr.clone(),
            region: n.region.clone(),
            zone: n.zone.clone(),
        })
        .collect()
}
