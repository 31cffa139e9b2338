//! Splits a node makes by itself, on the shards it leads (`[split]`): by size (more
//! SKUs than `keys_max`: at the middle SKU) and by load (more operations per second
//! than `load_ops_per_s` over `load_window_ms`: at the median of the SKUs sampled
//! from its proposals, so that both halves carry comparable load; never inside one
//! SKU, so one hot SKU never splits). Each split goes through `node::split`, like a
//! split by command; each decision is logged with its reason.
//!
//! And merges (`[merge]`, off by default): a shard led here and its right neighbour,
//! together holding at most `merge.keys_max` SKUs and applying at most
//! `merge.cold_entries_per_s` entries per second over `merge.cold_window_ms`, merge
//! through `node::merge`, like a merge by command.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Node;
use crate::router::{META_SHARD_ID, ShardId};
use crate::shard::Shard;

/// What the merger remembers of one shard it leads and its right neighbour.
struct Cold {
    since: Instant,
    right: ShardId,
    /// Both shards' applied indexes summed at `since`.
    applied: u64,
}

/// What the splitter remembers of one shard it leads.
struct Watch {
    window_start: Instant,
    ops_at_window_start: u64,
    size_checked: Instant,
    ops_at_size_check: u64,
}

impl Node {
    /// Starts the splitter: every `split.check_interval_ms`, at most one split.
    pub fn spawn_autosplit(self: &Arc<Self>) {
        let cfg = self.cluster.split.clone();
        if cfg.keys_max == 0 && cfg.load_ops_per_s == 0 && self.cluster.merge.keys_max == 0 {
            return;
        }
        let node = self.clone();
        let mut shutdown = self.shutdown.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(cfg.check_interval_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut watches: HashMap<ShardId, Watch> = HashMap::new();
            let mut colds: HashMap<ShardId, Cold> = HashMap::new();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.recv() => return,
                }
                if !node.autosplit_round(&mut watches).await {
                    node.automerge_round(&mut colds).await;
                }
            }
        });
    }

    /// At most one split of a shard led here; whether one was tried.
    async fn autosplit_round(&self, watches: &mut HashMap<ShardId, Watch>) -> bool {
        let led: Vec<Arc<Shard>> = self
            .shards()
            .into_iter()
            .filter(|s| s.id() != META_SHARD_ID && s.is_leader())
            .collect();
        let led_ids: std::collections::HashSet<ShardId> = led.iter().map(|s| s.id()).collect();
        watches.retain(|id, _| led_ids.contains(id));
        if led.len() + 1 >= self.cluster.split.node_shards_max {
            return false;
        }
        for shard in led {
            let Some((at, reason)) = self.split_wanted(&shard, watches) else {
                continue;
            };
            match self.split_shard(shard.id(), at).await {
                Ok(done) => {
                    watches.remove(&shard.id());
                    tracing::info!(
                        shard_id = %shard.id(),
                        child_id = %done.child_id,
                        at = %done.child_range.start,
                        %reason,
                        "automatic split"
                    );
                }
                Err(e) => {
                    // Looked at again after the intervals, written since or not.
                    if let Some(w) = watches.get_mut(&shard.id()) {
                        w.ops_at_size_check = u64::MAX;
                    }
                    tracing::warn!(shard_id = %shard.id(), %reason, error = %e, "automatic split refused");
                }
            }
            return true;
        }
        false
    }

    /// At most one merge of a shard led here with its right neighbour, when both are
    /// small and cold (`[merge]`).
    async fn automerge_round(&self, colds: &mut HashMap<ShardId, Cold>) {
        let cfg = &self.cluster.merge;
        if cfg.keys_max == 0 {
            return;
        }
        let local = self.shards();
        let by_start: HashMap<String, &Arc<Shard>> = local
            .iter()
            .filter_map(|s| {
                let b = s.bounds.get();
                (!b.frozen && s.id() != META_SHARD_ID).then_some((b.range.start, s))
            })
            .collect();
        let led: std::collections::HashSet<ShardId> = local
            .iter()
            .filter(|s| s.is_leader())
            .map(|s| s.id())
            .collect();
        colds.retain(|id, _| led.contains(id));
        let now = Instant::now();
        for left in local
            .iter()
            .filter(|s| s.id() != META_SHARD_ID && s.is_leader())
        {
            let lb = left.bounds.get();
            let right = by_start
                .get(&lb.range.end)
                .filter(|_| !lb.range.end.is_empty());
            let Some(right) = right.filter(|_| !lb.frozen) else {
                colds.remove(&left.id());
                continue;
            };
            let applied = left.raft.status().applied_index + right.raft.status().applied_index;
            let fresh = Cold {
                since: now,
                right: right.id(),
                applied,
            };
            let c = colds.entry(left.id()).or_insert(Cold { ..fresh });
            if c.right != right.id() || applied < c.applied {
                *c = fresh;
                continue;
            }
            let window = now.duration_since(c.since);
            if window < Duration::from_millis(cfg.cold_window_ms) {
                continue;
            }
            let rate = (applied - c.applied) as f64 / window.as_secs_f64();
            *c = fresh;
            if rate > cfg.cold_entries_per_s as f64 {
                continue;
            }
            let count = |s: &Shard| s.reader.count_skus(cfg.keys_max + 1).unwrap_or(u64::MAX);
            let keys = count(left).saturating_add(count(right));
            if keys > cfg.keys_max {
                continue;
            }
            let reason = format!("cold: {rate:.1} entries/s, {keys} SKUs in both");
            match self.merge_shards(left.id(), right.id()).await {
                Ok(done) => tracing::info!(
                    shard_id = %left.id(),
                    merged_id = %right.id(),
                    range = %done.range,
                    %reason,
                    "automatic merge"
                ),
                Err(e) => tracing::warn!(
                    shard_id = %left.id(),
                    merged_id = %right.id(),
                    %reason,
                    error = %e,
                    "automatic merge refused"
                ),
            }
            return;
        }
    }

    /// Whether `shard` should split now, where (None: its middle SKU) and why.
    fn split_wanted(
        &self,
        shard: &Shard,
        watches: &mut HashMap<ShardId, Watch>,
    ) -> Option<(Option<String>, String)> {
        let cfg = &self.cluster.split;
        let now = Instant::now();
        let ops = shard.ops_proposed();
        let w = watches.entry(shard.id()).or_insert(Watch {
            window_start: now,
            ops_at_window_start: ops,
            size_checked: now,
            // Counted once after the interval, written or not: it may have grown
            // before this node led it.
            ops_at_size_check: u64::MAX,
        });
        let window = now.duration_since(w.window_start);
        if cfg.load_ops_per_s > 0 && window >= Duration::from_millis(cfg.load_window_ms) {
            let rate = (ops - w.ops_at_window_start) as f64 / window.as_secs_f64();
            (w.window_start, w.ops_at_window_start) = (now, ops);
            let samples = shard.take_load_samples();
            if rate > cfg.load_ops_per_s as f64
                && let Some(at) = load_split_point(samples, &shard.bounds.get().range.start)
            {
                return Some((Some(at), format!("load {rate:.0} ops/s")));
            }
        }
        let since = now.duration_since(w.size_checked);
        if cfg.keys_max > 0
            && ops != w.ops_at_size_check
            && since >= Duration::from_millis(cfg.size_check_interval_ms)
        {
            (w.size_checked, w.ops_at_size_check) = (now, ops);
            let count = shard.reader.count_skus(cfg.keys_max + 1).ok()?;
            if count > cfg.keys_max {
                return Some((None, format!("size: more than {} SKUs", cfg.keys_max)));
            }
        }
        None
    }
}

/// The median of the sampled SKUs, if it lies after the shard's first SKU and the
/// samples are not all one SKU (one SKU cannot be divided).
fn load_split_point(mut samples: Vec<String>, start: &str) -> Option<String> {
    samples.sort_unstable();
    let first = samples.first()?.clone();
    if samples.last() == Some(&first) {
        return None;
    }
    let median = samples[samples.len() / 2].clone();
    let at = if median > first {
        median
    } else {
        // Most samples are the first SKU: cut just after it.
        samples.into_iter().find(|s| *s > first)?
    };
    (at.as_str() > start).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::load_split_point;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn load_splits_at_the_median_and_never_inside_one_sku() {
        assert_eq!(
            load_split_point(v(&["d", "a", "c", "b", "e"]), ""),
            Some("c".into())
        );
        assert_eq!(load_split_point(v(&["hot", "hot", "hot"]), ""), None);
        assert_eq!(
            load_split_point(v(&["a", "a", "a", "a", "b"]), ""),
            Some("b".into()),
            "a hot first SKU stays, the rest goes"
        );
        assert_eq!(load_split_point(v(&["m", "m", "z"]), "m"), Some("z".into()));
        assert_eq!(load_split_point(Vec::new(), ""), None);
    }
}
