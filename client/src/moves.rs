//! Replica moves for operators: one move (`move_replica`, sent to the shard's leader
//! and following leader changes), and a node's drain or removal as a plan of moves
//! (`plan_evacuation`, pure and unit-tested) carried out one at a time.
//!
//! Where a replica goes: a node that holds no replica of the shard, preferring a zone
//! (then a region) none of the shard's other replicas is in, then the node holding
//! the fewest replicas, then the lowest id, so that plans are deterministic.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::Serialize;
use stockpile_proto::v1 as pb;
use stockpile_proto::v1::admin_client::AdminClient;

use crate::transport::with_timeout;
use crate::{Client, Error, NodeInfo, Target};

/// How long the new replica may take to catch up, per move.
pub const CATCH_UP_TIMEOUT_MS: u64 = 30_000;
/// Rounds of 500 ms a plan waits for every shard to have a leader.
const LEADER_WAIT_ROUNDS_MAX: usize = 20;
/// How long one move may take in all (catch-up, changes, clean-up, retries).
const MOVE_DEADLINE_MS: u64 = 120_000;
/// Checks a drain makes that its node runs nothing any more, `EVACUATE_RECHECK_MS`
/// apart: long enough for a stopped move toward the node to be driven again by the
/// meta leader (after 5 s of silence) and undone.
const EVACUATE_ROUNDS_MAX: usize = 60;
const EVACUATE_RECHECK_MS: u64 = 1_000;
/// The steps at which a refused move is planned again rather than fail the drain:
/// another move of the shard runs (`start`) or is recorded (`record`), or the shard's
/// replicas are no longer what the plan saw (`plan`).
const REPLAN_STEPS: [&str; 3] = ["start", "record", "plan"];

/// What one move did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MoveReport {
    /// The shard moved.
    pub shard_id: u64,
    /// The node the replica left.
    pub from: u64,
    /// The node it went to.
    pub to: u64,
    /// What happened, step by step.
    pub steps: Vec<String>,
    /// The shard's voters (node ids) afterwards.
    pub replicas: Vec<u64>,
    /// The membership epoch (`conf_ver`) afterwards.
    pub conf_ver: u64,
    /// The new replica's id.
    pub replica_id: u64,
}

/// One planned move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedMove {
    /// The shard.
    pub shard_id: u64,
    /// From this node.
    pub from: u64,
    /// To this node.
    pub to: u64,
}

/// The moves that take every replica off `node`: for each shard in `replicas`
/// (shard → voters) holding one, a target among `nodes` minus `node` and the shard's
/// other replicas (see the module's comment). A shard with no possible target is
/// reported as an error naming it.
pub fn plan_evacuation(
    node: u64,
    nodes: &[NodeInfo],
    replicas: &BTreeMap<u64, Vec<u64>>,
) -> Result<Vec<PlannedMove>, Error> {
    let by_id: BTreeMap<u64, &NodeInfo> = nodes.iter().map(|n| (n.node_id, n)).collect();
    let mut load: BTreeMap<u64, usize> = by_id.keys().map(|id| (*id, 0)).collect();
    for held in replicas.values() {
        for n in held {
            *load.entry(*n).or_default() += 1;
        }
    }
    let mut plan = Vec::new();
    for (shard_id, held) in replicas.iter().filter(|(_, h)| h.contains(&node)) {
        let others: Vec<&NodeInfo> = held
            .iter()
            .filter(|n| **n != node)
            .filter_map(|n| by_id.get(n).copied())
            .collect();
        let zones: BTreeSet<(&str, &str)> = others
            .iter()
            .map(|n| (n.region.as_str(), n.zone.as_str()))
            .collect();
        let regions: BTreeSet<&str> = others.iter().map(|n| n.region.as_str()).collect();
        let target = by_id
            .values()
            .filter(|n| n.node_id != node && !held.contains(&n.node_id))
            .min_by_key(|n| {
                (
                    zones.contains(&(n.region.as_str(), n.zone.as_str())),
                    regions.contains(n.region.as_str()),
                    load.get(&n.node_id).copied().unwrap_or(0),
                    n.node_id,
                )
            })
            .ok_or_else(|| Error::InvalidArgument {
                field: "node".into(),
                message: format!(
                    "shard {shard_id} has replicas on {held:?}; no other node can take node {node}'s replica"
                ),
            })?;
        *load.entry(target.node_id).or_default() += 1;
        plan.push(PlannedMove {
            shard_id: *shard_id,
            from: node,
            to: target.node_id,
        });
    }
    Ok(plan)
}

impl Client {
    /// Moves `shard_id`'s replica from `from` to `to` (docs/OPERATIONS.md), sent to
    /// the shard's leader; resumes an interrupted move; `from_dead`: the source is
    /// gone for good and is not asked to drop its replica.
    pub async fn move_replica(
        &self,
        shard_id: u64,
        from: u64,
        to: u64,
        from_dead: bool,
    ) -> Result<MoveReport, Error> {
        let req = pb::MoveReplicaRequest {
            shard_id,
            from_node_id: from,
            to_node_id: to,
            catch_up_timeout_ms: CATCH_UP_TIMEOUT_MS,
            from_dead,
        };
        let attempt = Duration::from_millis(CATCH_UP_TIMEOUT_MS + 30_000);
        let reply = self
            .call_within(
                shard_id,
                Target::Leader,
                None,
                Instant::now() + Duration::from_millis(MOVE_DEADLINE_MS),
                attempt,
                |ch, t| {
                    let r = with_timeout(req, t);
                    async move { AdminClient::new(ch).move_replica(r).await }
                },
            )
            .await?
            .into_inner();
        Ok(MoveReport {
            shard_id,
            from,
            to,
            steps: reply.steps,
            replicas: reply.replicas,
            conf_ver: reply.conf_ver,
            replica_id: reply.replica_id,
        })
    }

    /// Each shard's voters (node ids), from the leaders' views in the cluster status.
    pub async fn shard_replicas(&self) -> Result<BTreeMap<u64, Vec<u64>>, Error> {
        let views = self.leader_views().await?;
        Ok(views
            .into_iter()
            .map(|(id, view)| (id, view.replicas))
            .collect())
    }

    /// Each shard's status as its leader reports it (shards without a leader now
    /// are missing).
    async fn leader_views(&self) -> Result<BTreeMap<u64, pb::ShardStatus>, Error> {
        let status = self.cluster_status().await?;
        let mut out = BTreeMap::new();
        for st in status.nodes.into_iter().filter_map(|v| v.status) {
            for sh in st.shards.into_iter().filter(|s| s.role == "leader") {
                out.insert(sh.shard_id, sh);
            }
        }
        Ok(out)
    }

    /// The moves that would take every replica off `node` (nothing is changed).
    pub async fn plan_drain(&self, node: u64) -> Result<Vec<PlannedMove>, Error> {
        self.refresh_map(Instant::now() + Duration::from_secs(10))
            .await?;
        // The meta shard's map is the truth about nodes: a node that just joined is
        // there before every cached map has it. Only nodes that are up receive
        // replicas (not one being drained).
        let states = self.cluster_map().await?;
        if !states.nodes.iter().any(|n| n.node_id == node) {
            return Err(Error::NodeNotFound { node_id: node });
        }
        let nodes: Vec<NodeInfo> = states
            .nodes
            .iter()
            .filter(|n| n.node_id == node || n.state == "up")
            .map(|n| NodeInfo {
                node_id: n.node_id,
                addr: n.addr.clone(),
                region: n.region.clone(),
                zone: n.zone.clone(),
            })
            .collect();
        // A shard whose leader just died elects another within an election timeout
        // or two: wait for that rather than refuse at once.
        let mut missing = Vec::new();
        for _ in 0..LEADER_WAIT_ROUNDS_MAX {
            let replicas = self.shard_replicas().await?;
            let map = self.shard_map();
            missing = map
                .meta
                .iter()
                .chain(map.shards.iter())
                .map(|s| s.shard_id)
                .filter(|id| !replicas.contains_key(id))
                .collect();
            if missing.is_empty() {
                return plan_evacuation(node, &nodes, &replicas);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(Error::Unavailable {
            message: format!("shards {missing:?} have no leader; try again"),
        })
    }

    /// Takes every replica (and so every leadership) off `node`, one move at a time;
    /// `dead`: the node is gone for good (`node remove --dead`). Returns what each
    /// move did; stops at the first refusal. See `evacuate`.
    pub async fn drain_node(&self, node: u64, dead: bool) -> Result<Vec<MoveReport>, Error> {
        let plan = self.plan_drain(node).await?;
        self.evacuate(node, dead, &plan).await
    }

    /// Carries out `plan` (from `plan_drain`): `node` is marked draining in the
    /// cluster map (placement gives it nothing more), the moves are made one at a
    /// time, and then `node` is marked removed: its id is never used again.
    ///
    /// Before that the drain is verified: planned again until no shard has a voter
    /// on `node` (a move toward it that was under way when the drain began may land
    /// after the first plan), and, unless `node` is dead, until the node itself runs
    /// no replica (a replica a move could not drop is asked again; a learner left
    /// there by a stopped move is undone by that move's driver, since a draining
    /// node takes no new replica). A planned move another move of the shard got in
    /// the way of is planned again next round. Past `EVACUATE_ROUNDS_MAX` rounds the node stays
    /// draining and MOVE_REFUSED (step `verify_drained`) says what it still runs.
    pub async fn evacuate(
        &self,
        node: u64,
        dead: bool,
        plan: &[PlannedMove],
    ) -> Result<Vec<MoveReport>, Error> {
        self.set_node_state(node, "draining").await?;
        let mut done: Vec<MoveReport> = Vec::with_capacity(plan.len());
        let mut plan = plan.to_vec();
        let mut problem = String::new();
        for round in 0..EVACUATE_ROUNDS_MAX {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(EVACUATE_RECHECK_MS)).await;
            }
            for m in &plan {
                match self.move_replica(m.shard_id, m.from, m.to, dead).await {
                    Ok(r) => done.push(r),
                    // Another move of the shard (the balancer's, repair's, an
                    // operator's) came first or changed what to do: planned again.
                    Err(Error::MoveRefused { step, .. })
                        if REPLAN_STEPS.contains(&step.as_str()) => {}
                    Err(e) => return Err(e),
                }
            }
            plan = self.plan_drain(node).await?;
            if !plan.is_empty() {
                let shards: Vec<u64> = plan.iter().map(|m| m.shard_id).collect();
                problem = format!("shards {shards:?} have voters on it");
                continue;
            }
            if !dead {
                match self.still_running(node).await {
                    Ok(held) if held.is_empty() => {}
                    Ok(held) => {
                        problem = format!("it still runs replicas of shards {held:?}");
                        continue;
                    }
                    Err(e) => {
                        problem = format!("its status is unknown: {e}");
                        continue;
                    }
                }
            }
            self.set_node_state(node, "removed").await?;
            return Ok(done);
        }
        Err(Error::MoveRefused {
            shard_id: plan.first().map_or(0, |m| m.shard_id),
            node_id: node,
            step: "verify_drained".into(),
            message: format!(
                "node {node} stays draining after {EVACUATE_ROUNDS_MAX} checks: {problem}; \
                 run the drain again"
            ),
        })
    }

    /// The shards `node` still runs a replica of (its own status). Each is asked to
    /// drop itself, for the next check; the node refuses when its replica is among
    /// the voters the shard's leader reports.
    async fn still_running(&self, node: u64) -> Result<Vec<u64>, Error> {
        let status = self.node_status(node).await?;
        let held: Vec<u64> = status.shards.iter().map(|s| s.shard_id).collect();
        if held.is_empty() {
            return Ok(held);
        }
        let views = self.leader_views().await?;
        for shard_id in &held {
            let Some(view) = views.get(shard_id) else {
                continue;
            };
            let req = pb::DropReplicaRequest {
                shard_id: *shard_id,
                replica_id: 0,
                voters: view.replica_ids.clone(),
            };
            // An error leaves the replica for the next check to see.
            let _ = self
                .at_node(node, |ch, t| async move {
                    AdminClient::new(ch)
                        .drop_replica(with_timeout(req, t))
                        .await
                })
                .await;
        }
        Ok(held)
    }

    /// Sets `node`'s state in the cluster map (up, draining, removed).
    pub async fn set_node_state(&self, node: u64, state: &str) -> Result<(), Error> {
        let mut last = Error::Unavailable {
            message: "no node answered".into(),
        };
        let nodes: Vec<u64> = self.shard_map().nodes.keys().copied().collect();
        for via in nodes.into_iter().filter(|n| *n != node) {
            let req = pb::SetNodeStateRequest {
                node_id: node,
                state: state.to_string(),
            };
            let reply = self
                .at_node(via, |ch, t| async move {
                    AdminClient::new(ch)
                        .set_node_state(with_timeout(req, t))
                        .await
                })
                .await;
            match reply {
                Ok(r) if r.done => return Ok(()),
                Ok(r) => {
                    return Err(Error::InvalidArgument {
                        field: "state".into(),
                        message: r.problem,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A node of region "local" in `zone` (the balancer's tests use it too).
    pub(crate) fn node(id: u64, zone: &str) -> NodeInfo {
        NodeInfo {
            node_id: id,
            addr: format!("127.0.0.1:{}", 7000 + id),
            region: "local".into(),
            zone: zone.into(),
        }
    }

    #[test]
    fn a_drain_moves_each_replica_to_a_free_zone_then_the_least_loaded_node() {
        let nodes = [
            node(1, "a"),
            node(2, "b"),
            node(3, "c"),
            node(4, "a"),
            node(5, "d"),
        ];
        let replicas = BTreeMap::from([(1, vec![1, 2, 3]), (2, vec![1, 2, 3]), (3, vec![2, 3, 4])]);
        let plan = plan_evacuation(1, &nodes, &replicas).unwrap();
        // Zone "a" is free once node 1 leaves; node 5 (zone d) is free too, and empty.
        assert_eq!(
            plan,
            vec![
                PlannedMove {
                    shard_id: 1,
                    from: 1,
                    to: 5
                },
                PlannedMove {
                    shard_id: 2,
                    from: 1,
                    to: 4
                },
            ]
        );
    }

    #[test]
    fn a_shard_with_nowhere_to_go_is_named() {
        let nodes = [node(1, "a"), node(2, "b"), node(3, "c")];
        let replicas = BTreeMap::from([(7, vec![1, 2, 3])]);
        let err = plan_evacuation(1, &nodes, &replicas).unwrap_err();
        assert!(err.to_string().contains("shard 7"), "{err}");
    }

    #[test]
    fn a_node_without_replicas_needs_no_moves() {
        let nodes = [node(1, "a"), node(2, "b")];
        let replicas = BTreeMap::from([(1, vec![2])]);
        assert_eq!(plan_evacuation(1, &nodes, &replicas).unwrap(), vec![]);
    }
}
