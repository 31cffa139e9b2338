//! The split and merge nemeses: a random SKU shard split at one of the workload's SKUs
//! (which goes to the new shard with its stock, holds and stored outcomes), or two
//! random neighbours merged (the right one's state carried into the left one), while
//! the other faults strike. Each split or merge and its outcome go into the history;
//! those done are kept, so that the exactly-once audit counts a shard's outcomes
//! against the requests sent to every shard it shares outcomes with.

use std::time::{Duration, Instant};

use rand::seq::IndexedRandom;

use super::Nemesis;
use crate::workload::{IDEMPOTENCY_SKUS, REGISTER_SKUS, RESERVATION_SKUS};

/// How long one split or merge may take (it may wait out a partition or a kill).
const SPLIT_TIMEOUT_MS: u64 = 20_000;

impl Nemesis {
    /// Splits a random shard at a workload SKU that is not its first; a refusal (the shard is being moved, a hold spans the point) is logged.
    pub(super) async fn split(&mut self) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(3);
        let Ok(map) = client.refresh_map(deadline).await else {
            return self.log("split-skipped", "no shard map now".into());
        };
        let points: Vec<(u64, String)> = REGISTER_SKUS
            .iter()
            .chain(RESERVATION_SKUS.iter())
            .chain(IDEMPOTENCY_SKUS.iter())
            .filter_map(|at| {
                let at = at.to_string();
                let shard = map.shard_for(&at)?;
                (at.as_str() > shard.start.as_str()).then_some((shard.shard_id, at))
            })
            .collect();
        let Some((shard, at)) = points.choose(&mut self.rng).cloned() else {
            return self.log("split-skipped", "no split point left".into());
        };
        self.log("split-start", format!("shard {shard} at {at:?}"));
        let call = client.split_shard(shard, Some(&at));
        let detail = match tokio::time::timeout(Duration::from_millis(SPLIT_TIMEOUT_MS), call).await
        {
            Ok(Ok(r)) => {
                self.reshapes.push((r.parent.shard_id, r.child.shard_id));
                format!(
                    "shard {} kept [{:?}, {:?}), shard {} took [{:?}, {:?})",
                    r.parent.shard_id,
                    r.parent.start,
                    r.parent.end,
                    r.child.shard_id,
                    r.child.start,
                    r.child.end
                )
            }
            Ok(Err(e)) => format!("shard {shard} at {at:?}: {e}"),
            Err(_) => format!("shard {shard} at {at:?}: no answer within {SPLIT_TIMEOUT_MS} ms"),
        };
        self.log("split-end", detail);
    }

    /// Merges a random shard into its left neighbour; a refusal (a move under way, a
    /// frozen neighbour) is logged.
    pub(super) async fn merge(&mut self) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(3);
        let Ok(map) = client.refresh_map(deadline).await else {
            return self.log("merge-skipped", "no shard map now".into());
        };
        let pairs: Vec<(u64, u64)> = map
            .shards
            .windows(2)
            .map(|w| (w[0].shard_id, w[1].shard_id))
            .collect();
        let Some((left, right)) = pairs.choose(&mut self.rng).copied() else {
            return self.log("merge-skipped", "one shard left".into());
        };
        self.log("merge-start", format!("shard {right} into shard {left}"));
        let call = client.merge_shards(left, right);
        let detail = match tokio::time::timeout(Duration::from_millis(SPLIT_TIMEOUT_MS), call).await
        {
            Ok(Ok(m)) => {
                self.reshapes.push((left, right));
                format!("shard {left} took [{:?}, {:?})", m.start, m.end)
            }
            Ok(Err(e)) => format!("shard {right} into {left}: {e}"),
            Err(_) => format!("shard {right} into {left}: no answer within {SPLIT_TIMEOUT_MS} ms"),
        };
        self.log("merge-end", detail);
    }
}
