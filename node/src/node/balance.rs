//! The balancer (`[balancer]`), run by the meta shard's leader: every `interval_ms` it
//! takes one step that puts a range's leader in its preferred regions
//! (`leader_preferences`), or evens replica counts, then leader counts, across the
//! nodes that are up (the plan is the client library's `plan_balance`, beside the drain's
//! `plan_evacuation`). A replica step is an ordinary recorded move (learner, catch-up,
//! guarded change, drop); a leader step is a leadership transfer. Each step is logged
//! with its reason, counted (`stockpile_balancer_steps_total`) and kept with its
//! outcome for the node's status (`stockpile cluster status`).
//!
//! It stands down while anything else changes the cluster's shape: a node that did not
//! answer (repair's business), a node draining, a move recorded in the map beyond
//! `moves_max`; and it never touches a shard whose move is under way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use stockpile_client::{BalanceStep, BalanceView, plan_balance};
use stockpile_proto::v1 as pb;

use super::Node;
use super::repair::{Probe, up_nodes};
use crate::inventory::cluster::NodeState;
use crate::router::ShardId;
use crate::storage::ClusterMapRecords;
use crate::telemetry::names;

/// How long a balancer move's learner may take to catch up.
const BALANCE_CATCH_UP_TIMEOUT_MS: u64 = 30_000;
/// How long a balancer leadership transfer may take.
const TRANSFER_TIMEOUT_MS: u64 = 5_000;

/// How many of the balancer's latest steps a node keeps for its status: enough to
/// see what the last few minutes did, small enough to send in every status.
pub const DECISIONS_MAX: usize = 16;

/// One balancer step as the node's status shows it.
#[derive(Clone, Debug)]
pub struct Decision {
    /// When it was decided (Unix ms).
    pub at_ms: u64,
    /// "move" or "lead".
    pub kind: &'static str,
    pub shard_id: u64,
    pub from: u64,
    pub to: u64,
    pub reason: String,
    /// "running", "done", or "failed: ..." (filled in when the step ends).
    pub outcome: String,
}

/// The balancer's memory on the meta leader: when it last stepped, and its steps
/// still running.
#[derive(Default)]
pub(super) struct Balancer {
    last_step: Option<Instant>,
    running: Vec<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// One look of the balancer: stand down, wait, or start the next step.
    pub(super) fn balance(
        self: &Arc<Self>,
        records: &ClusterMapRecords,
        probes: &[Probe],
        balancer: &mut Balancer,
    ) {
        let cfg = &self.cluster.balancer;
        balancer.running.retain(|t| !t.is_finished());
        let due = balancer
            .last_step
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(cfg.interval_ms));
        let unsettled = probes.iter().any(|(_, status)| status.is_none())
            || records.nodes.iter().any(|n| n.state == NodeState::Draining)
            || records.moves.len() >= cfg.moves_max
            || balancer.running.len() >= cfg.moves_max;
        if !due || unsettled {
            return;
        }
        let Some((voters, leaders)) = self.shard_views(probes) else {
            return;
        };
        let map = self.map.get();
        let preferred = map
            .shards()
            .iter()
            .filter_map(|d| {
                let regions = cfg.preferred_regions(&d.range.start)?;
                Some((d.id.0, regions.to_vec()))
            })
            .collect();
        let view = BalanceView {
            nodes: up_nodes(records),
            replicas: voters,
            leaders,
            preferred,
            busy: records.moves.iter().map(|m| m.shard_id).collect(),
        };
        let Some(step) = plan_balance(&view, cfg.tolerance) else {
            return;
        };
        balancer.last_step = Some(Instant::now());
        let candidates = match &step {
            BalanceStep::Move { shard_id, .. } | BalanceStep::Lead { shard_id, .. } => {
                view.replicas.get(shard_id).cloned().unwrap_or_default()
            }
        };
        let node = self.clone();
        balancer.running.push(tokio::spawn(async move {
            node.take_step(step, candidates).await;
        }));
    }

    /// Carries out one balancer step, logging what it did and why, and keeping it
    /// with its outcome for the node's status.
    async fn take_step(&self, step: BalanceStep, candidates: Vec<u64>) {
        let (kind, shard_id, from, to, reason) = match step {
            BalanceStep::Move {
                shard_id,
                from,
                to,
                reason,
            } => ("move", shard_id, from, to, reason),
            BalanceStep::Lead {
                shard_id,
                from,
                to,
                reason,
            } => ("lead", shard_id, from, to, reason),
        };
        metrics::counter!(names::BALANCER_STEPS_TOTAL, "kind" => kind).increment(1);
        let at_ms = self.shared.ctx.clock.now_ms();
        self.note_decision(Decision {
            at_ms,
            kind,
            shard_id,
            from,
            to,
            reason: reason.clone(),
            outcome: "running".into(),
        });
        let outcome = if kind == "move" {
            tracing::info!(shard_id, from, to, %reason, "balancer: moving a replica");
            let request = pb::MoveReplicaRequest {
                shard_id,
                from_node_id: from,
                to_node_id: to,
                catch_up_timeout_ms: BALANCE_CATCH_UP_TIMEOUT_MS,
                from_dead: false,
            };
            let sent = self
                .send_move(ShardId(shard_id), request, &candidates)
                .await;
            match &sent {
                Ok(steps) => tracing::info!(shard_id, from, to, ?steps, "balancer: replica moved"),
                Err(e) => tracing::warn!(shard_id, from, to, error = %e, "balancer: move failed"),
            }
            sent.map(|_| ())
        } else {
            tracing::info!(shard_id, from, to, %reason, "balancer: transferring a leadership");
            let sent = self.transfer_on(from, shard_id, to).await;
            match &sent {
                Ok(()) => tracing::info!(shard_id, from, to, "balancer: leadership transferred"),
                Err(e) => {
                    tracing::warn!(shard_id, from, to, error = %e, "balancer: transfer failed")
                }
            }
            sent
        };
        let outcome = match outcome {
            Ok(()) => "done".to_string(),
            Err(e) => format!("failed: {e}"),
        };
        self.end_decision(at_ms, shard_id, outcome);
    }

    /// Keeps `d` for the node's status, forgetting the oldest past `DECISIONS_MAX`.
    fn note_decision(&self, d: Decision) {
        let mut kept = self
            .balancer_decisions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        kept.push_back(d);
        while kept.len() > DECISIONS_MAX {
            kept.pop_front();
        }
    }

    /// Fills in the outcome of the step decided at `at_ms` for `shard_id`.
    fn end_decision(&self, at_ms: u64, shard_id: u64, outcome: String) {
        let mut kept = self
            .balancer_decisions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(d) = kept
            .iter_mut()
            .rev()
            .find(|d| d.at_ms == at_ms && d.shard_id == shard_id)
        {
            d.outcome = outcome;
        }
    }

    /// Asks node `leader` (this one or another) to hand `shard_id`'s leadership to `to`.
    pub(super) async fn transfer_on(
        &self,
        leader: u64,
        shard_id: u64,
        to: u64,
    ) -> Result<(), String> {
        let mut client = self.admin_of(leader)?;
        let mut request = tonic::Request::new(pb::TransferLeaderRequest {
            shard_id,
            to_node_id: to,
            timeout_ms: TRANSFER_TIMEOUT_MS,
        });
        request.set_timeout(Duration::from_millis(TRANSFER_TIMEOUT_MS + 1_000));
        client
            .transfer_leader(request)
            .await
            .map(|_| ())
            .map_err(|s| s.message().to_string())
    }
}
