//! Replicas their shard no longer names, found and dropped by the node that holds
//! them (`server.replica_gc_after_ms`). A move drops its source's replica at its end,
//! but a source that is cut off or busy then keeps it: removed from its shard, it
//! hears from no leader again. A move stopped between creating its empty replica and
//! adding it leaves one that no membership ever named. Both sit leaderless, lagging,
//! counted as replicas they are not.
//!
//! Every `GC_CHECK_INTERVAL_MS` each node looks at its replicas that have had no leader
//! for `replica_gc_after_ms`, asks the other nodes for their status, and drops such a
//! replica only when the shard's leader (the highest term claiming it) knows a
//! membership newer than the one the replica knows, not joint, naming it neither as a
//! voter nor as a learner. A replica cut off by a partition is leaderless too, but no
//! leader answers, or the leader still names it: it stays. An old leader cut off with
//! an older membership cannot condemn a replica added later: its membership is not
//! newer than the replica's own. (TiKV's stale-peer check asks PD the same question.)

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use stockpile_proto::v1 as pb;

use super::Node;
use super::repair::Probe;
use crate::router::ShardId;

/// How often a node looks for leaderless replicas.
pub const GC_CHECK_INTERVAL_MS: u64 = 5_000;
/// Replicas checked per round at most: a node cut off from everything has every
/// replica leaderless, and each round then stays short.
const GC_CHECKS_PER_ROUND_MAX: usize = 64;

/// Since when each local replica (shard, replica id) has had no leader.
#[derive(Default)]
pub(super) struct GcWatch {
    leaderless_since: BTreeMap<(ShardId, u64), Instant>,
}

impl Node {
    /// One round: note leaderless replicas, check those leaderless for long, and drop
    /// the ones their shard's leader no longer names.
    pub(super) async fn collect_garbage(&self, watch: &mut GcWatch) {
        let after = Duration::from_millis(self.cluster.server.replica_gc_after_ms);
        if after.is_zero() {
            return;
        }
        let due = self.leaderless_for(after, watch);
        if due.is_empty() {
            return;
        }
        let Ok(records) = self.cluster_map().await else {
            return;
        };
        let probes = self.probe_all(&records).await;
        let views = leader_views(&probes);
        for (shard_id, replica) in due {
            let Ok(shard) = self.local_shard(shard_id) else {
                continue;
            };
            let mine = shard.raft.members();
            let Some(view) = views.get(&shard_id.0) else {
                continue;
            };
            let own_named = mine
                .voters
                .values()
                .chain(mine.learners.values())
                .any(|r| *r == replica);
            if !no_longer_named(view, replica, mine.index, own_named) {
                continue;
            }
            tracing::info!(%shard_id, replica, leader_membership_index = view.membership_index,
                own_membership_index = mine.index, "dropping a replica its shard no longer names");
            if let Err(e) = self
                .drop_replica(shard_id, replica, &view.replica_ids)
                .await
            {
                tracing::warn!(%shard_id, replica, error = %e, "dropping a stale replica failed");
            }
        }
    }

    /// The local replicas without a leader for at least `after` (at most
    /// `GC_CHECKS_PER_ROUND_MAX`), updating `watch`.
    fn leaderless_for(&self, after: Duration, watch: &mut GcWatch) -> Vec<(ShardId, u64)> {
        let now = Instant::now();
        let mut seen = BTreeSet::new();
        let mut due = Vec::new();
        for shard in self.shards() {
            if shard.leader_id().is_some() {
                continue;
            }
            let key = (shard.id(), shard.raft.replica_id());
            seen.insert(key);
            let since = *watch.leaderless_since.entry(key).or_insert(now);
            if now.duration_since(since) >= after && due.len() < GC_CHECKS_PER_ROUND_MAX {
                due.push(key);
            }
        }
        watch.leaderless_since.retain(|k, _| seen.contains(k));
        due
    }
}

/// Each shard's status as reported by the node claiming its leadership at the highest
/// term (an old leader cut off may still claim it at a lower one).
fn leader_views(probes: &[Probe]) -> BTreeMap<u64, pb::ShardStatus> {
    let mut views: BTreeMap<u64, pb::ShardStatus> = BTreeMap::new();
    for status in probes.iter().filter_map(|(_, s)| s.as_ref()) {
        for s in status.shards.iter().filter(|s| s.role == "leader") {
            if views.get(&s.shard_id).is_none_or(|v| v.term < s.term) {
                views.insert(s.shard_id, s.clone());
            }
        }
    }
    views
}

/// Whether the leader's `view` says replica `replica` is no longer part of the shard.
/// The replica knows the membership at `own_index`, which names it or not
/// (`own_named`). A replica its own membership does not name was never made a voter
/// (a voter has the entry that added it) and holds nothing the shard needs; one it
/// names is condemned only by a newer membership (not by an old leader cut off).
fn no_longer_named(view: &pb::ShardStatus, replica: u64, own_index: u64, own_named: bool) -> bool {
    (view.membership_index > own_index || !own_named)
        && !view.membership_joint
        && !view.replica_ids.is_empty()
        && !view.replica_ids.contains(&replica)
        && !view.learner_replica_ids.contains(&replica)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(index: u64, voters: &[u64], learners: &[u64]) -> pb::ShardStatus {
        pb::ShardStatus {
            membership_index: index,
            replica_ids: voters.to_vec(),
            learner_replica_ids: learners.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn a_replica_is_condemned_only_by_a_newer_membership_that_omits_it() {
        assert!(no_longer_named(&view(9, &[1, 2, 4], &[]), 3, 5, true));
        // Still a voter, or a learner catching up.
        assert!(!no_longer_named(&view(9, &[1, 2, 3], &[]), 3, 5, true));
        assert!(!no_longer_named(&view(9, &[1, 2], &[3]), 3, 5, true));
        // A leader whose membership is not newer than the replica's own (an old
        // leader cut off before the replica was added).
        assert!(!no_longer_named(&view(5, &[1, 2, 4], &[]), 3, 5, true));
        assert!(!no_longer_named(&view(4, &[1, 2, 4], &[]), 3, 5, true));
        // A change half made.
        let mut joint = view(9, &[1, 2, 4], &[]);
        joint.membership_joint = true;
        assert!(!no_longer_named(&joint, 3, 5, true));
        // An empty replica no membership named, beside a shard whose membership is
        // still its first (index 0).
        assert!(no_longer_named(&view(0, &[1, 2, 4], &[]), 3, 0, false));
        assert!(!no_longer_named(&view(0, &[1, 2, 3], &[]), 3, 0, false));
    }

    #[test]
    fn the_highest_term_claiming_leadership_speaks_for_the_shard() {
        let status = |term: u64, voters: &[u64]| pb::NodeStatusReply {
            shards: vec![pb::ShardStatus {
                shard_id: 7,
                role: "leader".into(),
                term,
                replica_ids: voters.to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let probes: Vec<Probe> = vec![
            (1, Some(status(3, &[1, 2, 3]))),
            (2, Some(status(5, &[1, 2, 4]))),
            (4, None),
        ];
        let views = leader_views(&probes);
        assert_eq!(views[&7].term, 5);
        assert_eq!(views[&7].replica_ids, vec![1, 2, 4]);
    }
}
