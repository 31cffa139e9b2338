//! The split nemesis: a random SKU shard split at one of the workload's SKUs (which
//! goes to the new shard with its stock, holds and stored outcomes), while the other
//! faults strike. Each split and
//! its outcome go into the history; the splits done are kept, so that the
//! exactly-once audit counts a child's copied outcomes against its parent's requests.

use std::time::{Duration, Instant};

use rand::seq::IndexedRandom;

use super::Nemesis;
use crate::workload::{IDEMPOTENCY_SKUS, REGISTER_SKUS, RESERVATION_SKUS};

/// How long one split may take (it may wait out a partition or a kill).
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
                self.splits.push((r.parent.shard_id, r.child.shard_id));
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
}
