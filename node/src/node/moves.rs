//! A replica move, run by the shard's leader (DESIGN.md, "Elastic cluster"): a
//! learner with a fresh replica id on the target node, caught up within a deadline
//! (else removed again), one guarded membership change replacing the old voter by
//! it, then the old replica dropped (its data deleted only after the removal
//! committed).
//!
//! The procedure is a loop over the shard's current membership, each pass taking the
//! next step that membership calls for. So the same command resumes a move
//! interrupted anywhere (a crash, a leader change, a lost reply): it finishes a joint
//! membership left half done, reuses a learner already added, and only cleans up
//! when the move is already done. Every change is guarded by the membership it was
//! decided on (`raft::membership`), so two moves of one shard never interleave.

use std::time::Duration;

use stockpile_proto::v1 as pb;
use stockpile_proto::v1::admin_client::AdminClient;

use super::{Node, refused};
use crate::error::Error;
use crate::inventory::cluster::NodeState;
use crate::raft::membership::{ChangeError, Members};
use crate::router::ShardId;
use crate::shard::Shard;

/// Passes over the membership one move may take: each pass takes one step (finish a
/// joint change, add the learner, catch up and replace, clean up), so a move needs
/// four; the rest absorbs steps other movers' conflicts forced again.
const MOVE_PASSES_MAX: usize = 8;
/// How long a create/drop call to another node may take.
const REPLICA_CALL_TIMEOUT_MS: u64 = 10_000;
/// How long a leader moving away waits for its successor.
const HAND_OVER_TIMEOUT_MS: u64 = 5_000;
/// Attempts to drop the source's replica at the end of a move, `DROP_RETRY_MS` apart.
const DROP_ATTEMPTS_MAX: usize = 3;
const DROP_RETRY_MS: u64 = 1_000;
/// Times a move follows the cluster map, `JOINED_WAIT_MS` apart, before it calls a
/// node it does not know unknown (about 3 s: a join reaches every meta replica well
/// within that unless the replica is cut off).
const JOINED_WAIT_ROUNDS_MAX: usize = 10;
const JOINED_WAIT_MS: u64 = 300;

/// What to move.
#[derive(Clone, Copy, Debug)]
pub struct MoveOptions {
    pub from: u64,
    pub to: u64,
    /// How long the new replica may take to catch up before the move is undone.
    pub catch_up_timeout: Duration,
    /// The source node is gone for good: its replica is not asked to drop itself.
    pub from_dead: bool,
}

/// What a move did.
#[derive(Clone, Debug, Default)]
pub struct MoveReport {
    pub steps: Vec<String>,
    /// The shard's voters (node ids) afterwards.
    pub replicas: Vec<u64>,
    pub conf_ver: u64,
    pub replica_id: u64,
}

/// The node error of a membership step.
fn change_error(node: &Node, shard_id: ShardId, step: &'static str, e: ChangeError) -> Error {
    match e {
        ChangeError::NotLeader { leader } => node.map.get().not_leader(shard_id, leader, node.id),
        ChangeError::Conflict(m) => refused(
            shard_id,
            node.id,
            step,
            format!("{m}; run the command again to continue from the current membership"),
        ),
        ChangeError::Refused(m) => refused(shard_id, node.id, step, m),
        ChangeError::Unknown(reason) => Error::OutcomeUnknown { shard_id, reason },
    }
}

/// Removes a shard from the node's running moves when its move ends, however it ends.
struct Running<'a> {
    set: &'a std::sync::Mutex<std::collections::BTreeSet<ShardId>>,
    shard_id: ShardId,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.shard_id);
    }
}

impl Node {
    /// Moves `shard_id`'s replica from `o.from` to `o.to` (see the module's comment),
    /// recorded in the cluster map first and forgotten there when it finished or was
    /// undone; a move that stops otherwise stays recorded, and the meta leader drives
    /// it again when it has been silent for a while (`meta`).
    pub async fn move_replica(
        &self,
        shard_id: ShardId,
        o: MoveOptions,
    ) -> Result<MoveReport, Error> {
        self.check_move(shard_id, &o).await?;
        let shard = self.local_shard(shard_id)?;
        shard.check_leader()?;
        let bounds = shard.bounds.get();
        if bounds.frozen {
            return Err(refused(
                shard_id,
                self.id,
                "plan",
                "the shard is frozen for a merge into its left neighbour and goes with it".into(),
            ));
        }
        // A merge into this shard under way: its leader must keep holding the frozen
        // neighbour's replica to carry its state (`node::merge`).
        if let Some(right) = self.shards().into_iter().find(|s| {
            let b = s.bounds.get();
            b.frozen && !bounds.range.end.is_empty() && b.range.start == bounds.range.end
        }) {
            return Err(refused(
                shard_id,
                self.id,
                "plan",
                format!(
                    "shard {} is frozen for a merge into this shard; move after the merge",
                    right.id()
                ),
            ));
        }
        let _running = self.start_running(shard_id)?;
        self.record_move(shard_id, &o, "started").await?;
        let result = self.run_move(shard_id, &o).await;
        let ended = match &result {
            Ok(_) => true,
            // Nothing to move (any more), or a learner that could not catch up was
            // removed again: the move is over either way.
            Err(Error::MoveRefused { step, .. }) => matches!(*step, "plan" | "catch_up"),
            Err(_) => false,
        };
        if ended && let Err(e) = self.end_move(shard_id, &o).await {
            tracing::warn!(%shard_id, error = %e, "a finished move stays recorded; the meta leader will forget it");
        }
        result
    }

    /// Marks `shard_id` as being moved by this node; MOVE_REFUSED when it already is.
    fn start_running(&self, shard_id: ShardId) -> Result<Running<'_>, Error> {
        let mut set = self.moves_running.lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(shard_id) {
            return Err(refused(
                shard_id,
                self.id,
                "start",
                format!(
                    "a move of shard {shard_id} is already running on node {}; wait for it",
                    self.id
                ),
            ));
        }
        Ok(Running {
            set: &self.moves_running,
            shard_id,
        })
    }

    async fn run_move(&self, shard_id: ShardId, o: &MoveOptions) -> Result<MoveReport, Error> {
        let o = *o;
        let shard = self.local_shard(shard_id)?;
        shard.check_leader()?;
        let mut report = MoveReport::default();
        // The replica id the source held, once seen (to drop it after the change).
        let mut old_replica = 0;
        for _ in 0..MOVE_PASSES_MAX {
            let m = shard.raft.members();
            if m.joint {
                shard
                    .raft
                    .finish_joint(&m)
                    .await
                    .map_err(|e| change_error(self, shard_id, "finish_joint", e))?;
                report
                    .steps
                    .push("finished a membership change left half done".into());
                continue;
            }
            let source = m.voters.get(&o.from).copied();
            old_replica = source.unwrap_or(old_replica);
            match (source, m.voters.get(&o.to), m.learners.get(&o.to)) {
                (None, Some(new), _) => {
                    if old_replica == 0 {
                        report.steps.push(format!(
                            "node {} holds no voter and node {} holds one: nothing to move",
                            o.from, o.to
                        ));
                    }
                    report.replica_id = *new;
                    self.finish(&shard, &m, old_replica, &o, &mut report).await;
                    return Ok(report);
                }
                (Some(_), Some(_), _) => {
                    return Err(refused(
                        shard_id,
                        o.to,
                        "plan",
                        format!("node {} already holds a voter of the shard", o.to),
                    ));
                }
                (None, None, _) => {
                    return Err(refused(
                        shard_id,
                        o.from,
                        "plan",
                        format!("node {} holds no replica of the shard", o.from),
                    ));
                }
                (Some(_), None, None) => {
                    if o.from == self.id {
                        return Err(self.hand_over(&shard, o.from, &m).await);
                    }
                    self.check_target_up(shard_id, o.to).await?;
                    let id = self.add_learner(&shard, &m, o.to).await?;
                    report.replica_id = id;
                    report
                        .steps
                        .push(format!("added replica {id} on node {} as a learner", o.to));
                    self.note_step(shard_id, &o, "learner added").await;
                }
                (Some(_), None, Some(new)) => {
                    match self.check_target_up(shard_id, o.to).await {
                        Ok(()) => {}
                        Err(e @ Error::MoveRefused { .. }) => {
                            return Err(self.undo_learner(&shard, o.to, *new, e).await);
                        }
                        Err(e) => return Err(e),
                    }
                    self.catch_up(&shard, o.to, *new, o.catch_up_timeout)
                        .await?;
                    report
                        .steps
                        .push(format!("replica {new} on node {} caught up", o.to));
                    let m = shard.raft.members();
                    shard
                        .raft
                        .replace_voter(o.from, o.to, &m)
                        .await
                        .map_err(|e| change_error(self, shard_id, "replace_voter", e))?;
                    report.steps.push(format!(
                        "replaced the voter on node {} by the one on node {} (committed)",
                        o.from, o.to
                    ));
                }
            }
        }
        Err(refused(
            shard_id,
            self.id,
            "plan",
            format!("no progress after {MOVE_PASSES_MAX} steps; run the command again"),
        ))
    }

    /// Notes a step in the move's record (best effort: the record only says how far
    /// the move got), then pauses if a test asked for it (`StartOptions`).
    async fn note_step(&self, shard_id: ShardId, o: &MoveOptions, step: &str) {
        if let Err(e) = self.record_move(shard_id, o, step).await {
            tracing::warn!(%shard_id, step, error = %e, "a move's step was not recorded");
        }
        if self.move_step_pause_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.move_step_pause_ms)).await;
        }
    }

    async fn check_move(&self, shard_id: ShardId, o: &MoveOptions) -> Result<(), Error> {
        for node_id in [o.from, o.to] {
            if !self.knows_node(node_id).await {
                return Err(Error::NodeNotFound { node_id });
            }
        }
        if o.from == o.to {
            return Err(Error::InvalidArgument {
                field: "to_node_id".into(),
                rule: format!("node {} is the source too; name another node", o.to),
            });
        }
        if self.map.get().shard(shard_id).is_none() {
            return Err(Error::ShardNotFound { shard_id });
        }
        Ok(())
    }

    /// Whether `node_id` is in this node's book. A node that joined a moment ago may
    /// not be yet: the book, and this node's replica of the meta shard, can lag the
    /// map for a heartbeat or two, so the map is followed a few times first.
    async fn knows_node(&self, node_id: u64) -> bool {
        for round in 0..JOINED_WAIT_ROUNDS_MAX {
            if self.map.get().node(node_id).is_some() {
                return true;
            }
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(JOINED_WAIT_MS)).await;
            }
            self.follow_cluster_nodes().await;
        }
        self.map.get().node(node_id).is_some()
    }

    /// Refuses a target the cluster map does not record as up: a node being drained
    /// or removed takes no new replica, also not from a move recorded before its
    /// drain began and driven again after (its replica would outlive the drain).
    async fn check_target_up(&self, shard_id: ShardId, to: u64) -> Result<(), Error> {
        let records = self.cluster_map().await?;
        match records.nodes.iter().find(|n| n.id == to) {
            Some(n) if n.state != NodeState::Up => Err(refused(
                shard_id,
                to,
                "plan",
                format!("node {to} is {}: it takes no new replica", n.state.as_str()),
            )),
            _ => Ok(()),
        }
    }

    /// Removes the learner `learner` on `to` again and drops it there, then answers
    /// `why` (the learner's node may not take the replica after all).
    async fn undo_learner(&self, shard: &Shard, to: u64, learner: u64, why: Error) -> Error {
        let m = shard.raft.members();
        let voters: Vec<u64> = m.voters.values().copied().collect();
        match shard.raft.remove_learner(to, &m).await {
            Ok(_) => {
                self.drop_on(shard.id(), to, learner, &voters).await;
                why
            }
            Err(e) => change_error(self, shard.id(), "remove_learner", e),
        }
    }

    /// The leader is the replica to move: hands leadership to the most caught-up
    /// other voter and answers NOT_LEADER naming it, so that the caller resends there.
    async fn hand_over(&self, shard: &Shard, from: u64, m: &Members) -> Error {
        let matched = shard.raft.status().matched.unwrap_or_default();
        let target = m
            .voters
            .keys()
            .filter(|n| **n != from)
            .max_by_key(|n| matched.get(n).copied().unwrap_or(0))
            .copied();
        let leader = match target {
            Some(t) => shard
                .transfer_leadership(t, Duration::from_millis(HAND_OVER_TIMEOUT_MS))
                .await
                .ok()
                .flatten(),
            None => None,
        };
        self.map.get().not_leader(shard.id(), leader, self.id)
    }

    /// Allocates a replica id on `to`, starts the empty replica there, and adds it as
    /// a learner (guarded by `m`).
    async fn add_learner(&self, shard: &Shard, m: &Members, to: u64) -> Result<u64, Error> {
        let shard_id = shard.id();
        let id = shard
            .raft
            .allocate_replica_id(to)
            .map_err(|e| change_error(self, shard_id, "allocate_replica_id", e))?;
        let addr = self.addr_of(to)?;
        // `to` holds no member of the shard (voter or learner): a replica still
        // there was left by a move that stopped between creating it and adding it.
        let voters: Vec<u64> = m.voters.values().copied().collect();
        self.drop_on(shard_id, to, 0, &voters).await;
        let mut client = AdminClient::new(self.peer_channel(to, &addr, shard_id)?);
        let mut request = tonic::Request::new(pb::CreateReplicaRequest {
            shard_id: shard_id.0,
            replica_id: id,
        });
        request.set_timeout(Duration::from_millis(REPLICA_CALL_TIMEOUT_MS));
        client
            .create_replica(request)
            .await
            .map_err(|s| refused(shard_id, to, "create_replica", s.message().to_string()))?;
        if let Err(e) = shard.raft.add_learner(id, &addr, m).await {
            if !matches!(e, ChangeError::Unknown(_)) {
                // Not added for sure: the empty replica would only linger.
                self.drop_on(shard_id, to, id, &voters).await;
            }
            return Err(change_error(self, shard_id, "add_learner", e));
        }
        Ok(id)
    }

    /// Waits until the learner on `to` has every entry committed when the wait began;
    /// past the deadline the learner is removed again (never left forever) and the
    /// move is refused.
    async fn catch_up(
        &self,
        shard: &Shard,
        to: u64,
        learner: u64,
        within: Duration,
    ) -> Result<(), Error> {
        let target = shard.raft.status().commit_index;
        let caught_up = crate::raft::wait_until(within, || {
            let st = shard.raft.status();
            st.matched
                .and_then(|m| m.get(&to).copied())
                .is_some_and(|matched| matched >= target)
        })
        .await;
        if caught_up {
            return Ok(());
        }
        let m = shard.raft.members();
        let undo = shard.raft.remove_learner(to, &m).await;
        let voters: Vec<u64> = m.voters.values().copied().collect();
        if undo.is_ok() {
            self.drop_on(shard.id(), to, learner, &voters).await;
        }
        Err(refused(
            shard.id(),
            to,
            "catch_up",
            format!(
                "replica {learner} did not reach index {target} within {} ms; it was {}",
                within.as_millis(),
                if undo.is_ok() {
                    "removed again"
                } else {
                    "left as a learner (removing it failed; run the command again)"
                }
            ),
        ))
    }

    /// The move is done: drops the source's replica (unless the node is dead) and
    /// fills in the report.
    async fn finish(
        &self,
        shard: &Shard,
        m: &Members,
        old_replica: u64,
        o: &MoveOptions,
        report: &mut MoveReport,
    ) {
        let voters: Vec<u64> = m.voters.values().copied().collect();
        if o.from_dead {
            report.steps.push(format!(
                "node {} is dead: its replica was not asked to drop itself",
                o.from
            ));
        } else if self
            .drop_retried(shard.id(), o.from, old_replica, &voters)
            .await
        {
            report
                .steps
                .push(format!("dropped the replica on node {}", o.from));
        } else {
            report.steps.push(format!(
                "the replica on node {} could not be dropped now; run the command again to retry",
                o.from
            ));
        }
        report.replicas = m.voters.keys().copied().collect();
        report.conf_ver = m.index;
    }

    /// `drop_on`, tried `DROP_ATTEMPTS_MAX` times `DROP_RETRY_MS` apart: a source
    /// that is busy or was cut off for a moment should not keep a replica its shard
    /// removed (it would only lag, and count as a replica it no longer is).
    async fn drop_retried(
        &self,
        shard_id: ShardId,
        node: u64,
        replica: u64,
        voters: &[u64],
    ) -> bool {
        for attempt in 0..DROP_ATTEMPTS_MAX {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(DROP_RETRY_MS)).await;
            }
            if self.drop_on(shard_id, node, replica, voters).await {
                return true;
            }
        }
        false
    }

    /// Asks `node` to drop its replica `replica` (0: whichever it holds) of `shard_id`,
    /// which `voters` no longer holds. True when it did or had none.
    async fn drop_on(&self, shard_id: ShardId, node: u64, replica: u64, voters: &[u64]) -> bool {
        let call = async {
            let addr = self.addr_of(node)?;
            let mut client = AdminClient::new(self.peer_channel(node, &addr, shard_id)?);
            let mut request = tonic::Request::new(pb::DropReplicaRequest {
                shard_id: shard_id.0,
                replica_id: replica,
                voters: voters.to_vec(),
            });
            request.set_timeout(Duration::from_millis(REPLICA_CALL_TIMEOUT_MS));
            client
                .drop_replica(request)
                .await
                .map_err(|s| refused(shard_id, node, "drop_replica", s.message().to_string()))
        };
        match call.await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(%shard_id, node, error = %e, "dropping a removed replica failed");
                false
            }
        }
    }

    fn addr_of(&self, node_id: u64) -> Result<String, Error> {
        self.map
            .get()
            .addr(node_id)
            .map(str::to_string)
            .ok_or(Error::NodeNotFound { node_id })
    }

    fn peer_channel(
        &self,
        node: u64,
        addr: &str,
        shard_id: ShardId,
    ) -> Result<tonic::transport::Channel, Error> {
        self.peers
            .channel(node, addr)
            .map_err(|e| refused(shard_id, node, "connect", e))
    }
}
