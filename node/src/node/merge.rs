//! A merge, driven by the left shard's leader (DESIGN.md: merge): the right
//! neighbour must have its replicas on the same nodes and carry at most half an entry
//! of state; its leadership is brought here, it is frozen by an entry in its own log,
//! and its frozen state is proposed alone in the left shard's log
//! (`storage::state_machine::merge`). Every node then drops its replica of the merged
//! shard once its left replica has applied the merge (`retire_merged`), from the map
//! follower's round.
//!
//! A frozen shard serves nothing until its left neighbour takes it, so a merge that
//! stopped half-way (a leader change, a crash) is driven again by whichever node leads
//! the left neighbour (`resume_merges`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Node, refused};
use crate::error::Error;
use crate::inventory::cluster::ClusterOutcome;
use crate::inventory::{Command, Op, Outcome};
use crate::router::{META_SHARD_ID, ShardBounds, ShardId, SkuRange};
use crate::shard::Shard;

/// How long the driver waits for the right shard's leadership to come here, and for
/// this node's replica of it to apply the freeze.
const HANDOVER_WAIT_MS: u64 = 5_000;

const STEP: &str = "merge";

/// A merge that happened: the left shard's range and version after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeDone {
    pub range: SkuRange,
    pub version: u64,
}

impl Node {
    /// Merges `right_id` into its left neighbour `left_id` (led here). A retry after
    /// the merge answers with the merge that happened.
    pub async fn merge_shards(
        &self,
        left_id: ShardId,
        right_id: ShardId,
    ) -> Result<MergeDone, Error> {
        if left_id == META_SHARD_ID || right_id == META_SHARD_ID || left_id == right_id {
            return Err(Error::InvalidArgument {
                field: "shard_id".into(),
                rule: "two different SKU shards (the meta shard 0 never merges)".into(),
            });
        }
        let left = self.local_shard(left_id)?;
        left.check_leader()?;
        if let Some(version) = left.reader.merged(right_id).map_err(Error::internal)? {
            return Ok(MergeDone {
                range: left.bounds.get().range,
                version,
            });
        }
        let right = self.local_shard(right_id).map_err(|_| {
            refused(
                right_id,
                self.id,
                STEP,
                format!("no replica of shard {right_id} here: a merge needs both shards on the same nodes"),
            )
        })?;
        let (lb, rb) = (left.bounds.get(), right.bounds.get());
        if lb.frozen || lb.range.end.is_empty() || lb.range.end != rb.range.start {
            return Err(Error::InvalidArgument {
                field: "right_shard_id".into(),
                rule: format!(
                    "shard {right_id} {} is not the right neighbour of shard {left_id} {}",
                    rb.range, lb.range
                ),
            });
        }
        same_replicas(&left, &right, self.id)?;
        if !rb.frozen {
            self.check_merge_size(&right)?;
            self.freeze(&right, rb.version).await?;
        }
        self.absorb(&left, &right).await
    }

    /// Refuses a right shard whose state would not fit half a log entry.
    fn check_merge_size(&self, right: &Shard) -> Result<(), Error> {
        let max = self.cluster.raft.entry_bytes_max / 2;
        let bytes = right.reader.state_bytes(max).map_err(Error::internal)?;
        if bytes > max {
            return Err(refused(
                right.id(),
                self.id,
                STEP,
                format!(
                    "shard {} holds more than {max} bytes; a merge carries it in one entry (half of raft.entry_bytes_max)",
                    right.id()
                ),
            ));
        }
        Ok(())
    }

    /// Brings `right`'s leadership here and freezes it at `version`.
    async fn freeze(&self, right: &Shard, version: u64) -> Result<(), Error> {
        if !right.is_leader() {
            let shard_id = right.id();
            let leader = right.leader_id().ok_or_else(|| Error::ShardUnavailable {
                shard_id,
                reason: "no leader to freeze it".into(),
            })?;
            self.transfer_on(leader, shard_id.0, self.id)
                .await
                .map_err(|reason| Error::ShardUnavailable { shard_id, reason })?;
            let wait = Duration::from_millis(HANDOVER_WAIT_MS);
            crate::raft::wait_until(wait, || right.is_leader()).await;
            right.check_leader()?;
        }
        let op = Op {
            request_id: rand::random(),
            command: Command::Freeze {
                expected_version: version,
            },
        };
        match right.propose_alone(op).await?.outcome {
            Outcome::Cluster(ClusterOutcome::Done) => {
                tracing::info!(shard_id = %right.id(), "froze the shard for a merge");
                Ok(())
            }
            Outcome::Cluster(ClusterOutcome::Refused { problem }) => {
                Err(refused(right.id(), self.id, STEP, problem))
            }
            other => Err(Error::internal(format!("a freeze came back as {other:?}"))),
        }
    }

    /// Proposes the frozen `right`'s state in `left`'s log.
    async fn absorb(&self, left: &Shard, right: &Shard) -> Result<MergeDone, Error> {
        let wait = Duration::from_millis(HANDOVER_WAIT_MS);
        crate::raft::wait_until(wait, || right.bounds.get().frozen).await;
        let source = right
            .reader
            .merge_source()
            .map_err(Error::internal)?
            .ok_or_else(|| {
                refused(
                    right.id(),
                    self.id,
                    STEP,
                    "this node's replica has not applied the freeze yet; try again".into(),
                )
            })?;
        let expected_version = left.bounds.get().version;
        let op = Op {
            request_id: rand::random(),
            command: Command::Merge {
                source,
                expected_version,
            },
        };
        match left.propose_alone(op).await?.outcome {
            Outcome::Cluster(ClusterOutcome::Done) => {
                let bounds = left.bounds.get();
                tracing::info!(
                    shard_id = %left.id(),
                    merged_id = %right.id(),
                    range = %bounds.range,
                    "merged the right neighbour"
                );
                Ok(MergeDone {
                    range: bounds.range,
                    version: bounds.version,
                })
            }
            Outcome::Cluster(ClusterOutcome::Refused { problem }) => {
                Err(refused(left.id(), self.id, STEP, problem))
            }
            other => Err(Error::internal(format!("a merge came back as {other:?}"))),
        }
    }

    /// Drops every replica here of a shard its left neighbour has merged, and drives
    /// again every merge of a frozen shard here whose left neighbour this node leads
    /// (a merge that stopped half-way). From the map follower's round; O(n log n) in
    /// the node's replicas, one RocksDB read per candidate. Skipped while no replica
    /// came or went and no range version or frozen mark changed since the round that
    /// set `last` (the caller resets it now and then: a stopped merge waits on a
    /// leadership, which the fingerprint does not see).
    pub(super) async fn reshape_round(&self, last: &mut u64) {
        let shards = self.shards();
        let fingerprint = shards.iter().fold(shards.len() as u64, |h, s| {
            let (version, frozen) = s.bounds.mark();
            super::replicas::mix(h, &[s.id().0, version, u64::from(frozen)])
        });
        if fingerprint == *last {
            return;
        }
        *last = fingerprint;
        let local: Vec<(Arc<Shard>, ShardBounds)> = shards
            .into_iter()
            .map(|s| {
                let b = s.bounds.get();
                (s, b)
            })
            .collect();
        let serving = || local.iter().enumerate().filter(|(_, (_, b))| !b.frozen);
        let by_start: BTreeMap<&str, usize> = serving()
            .map(|(i, (_, b))| (b.range.start.as_str(), i))
            .collect();
        let by_end: BTreeMap<&str, usize> = serving()
            .filter(|(_, (_, b))| !b.range.end.is_empty())
            .map(|(i, (_, b))| (b.range.end.as_str(), i))
            .collect();
        for (right, rb) in &local {
            if rb.range.start.is_empty() {
                continue;
            }
            // Only a merge widens a range: a shard here covering this one at a newer
            // version may have merged it.
            let cover = by_start
                .range(..=rb.range.start.as_str())
                .rev()
                .map(|(_, j)| &local[*j])
                .find(|(s, _)| s.id() != right.id());
            if let Some((left, lb)) = cover
                && lb.version > rb.version
                && covers(&lb.range, &rb.range)
                && left.reader.merged(right.id()).ok().flatten().is_some()
            {
                self.retire_merged(right).await;
                continue;
            }
            let Some((left, _)) = by_end.get(rb.range.start.as_str()).map(|j| &local[*j]) else {
                continue;
            };
            if rb.frozen && left.is_leader() {
                match self.merge_shards(left.id(), right.id()).await {
                    Ok(_) => tracing::info!(
                        left_id = %left.id(),
                        right_id = %right.id(),
                        "finished a merge that had stopped half-way"
                    ),
                    Err(e) => tracing::warn!(
                        left_id = %left.id(),
                        right_id = %right.id(),
                        error = %e,
                        "a frozen shard's merge is not finished yet"
                    ),
                }
            }
        }
    }

    /// Stops and deletes this node's replica of `merged`, whose left neighbour here
    /// has applied its merge (so its state lives on there).
    async fn retire_merged(&self, merged: &Arc<Shard>) {
        let shard_id = merged.id();
        let _one = self.replica_changes.lock().await;
        match self.retire(merged).await {
            Ok(()) => tracing::info!(%shard_id, "dropped the replica of a merged shard"),
            Err(e) => tracing::warn!(%shard_id, error = %e, "cannot delete a merged replica"),
        }
    }
}

/// Whether `outer` holds every SKU of `inner`.
fn covers(outer: &SkuRange, inner: &SkuRange) -> bool {
    outer.start <= inner.start
        && (outer.end.is_empty() || (!inner.end.is_empty() && inner.end <= outer.end))
}

/// Refuses unless `left` and `right` are replicated on the same nodes, neither
/// changing its replicas.
fn same_replicas(left: &Shard, right: &Shard, node_id: u64) -> Result<(), Error> {
    let (l, r) = (left.raft.status(), right.raft.status());
    let problem = if l.joint || r.joint || !l.learners.is_empty() || !r.learners.is_empty() {
        Some("one of the shards is changing its replicas; merge after the move".to_string())
    } else if l.voters != r.voters {
        Some(format!(
            "shard {} is on nodes {:?} and shard {} on {:?}: move one first",
            left.id(),
            l.voters,
            right.id(),
            r.voters
        ))
    } else {
        None
    };
    match problem {
        Some(p) => Err(refused(right.id(), node_id, STEP, p)),
        None => Ok(()),
    }
}
