//! The eager half of reservation expiry, one task per node: for every shard this node
//! leads, propose an empty entry (a tick) when a reservation timer is due, so that
//! expired holds return their stock without anyone asking. The due time comes from the
//! state machine's in-memory hint; the timer index is read only when it is unknown.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::broadcast;

use super::Shard;
use crate::inventory::OpGroup;

pub fn spawn_sweeper(
    shards: crate::node::ShardSet,
    interval_ms: u64,
    mut shutdown: broadcast::Receiver<()>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(interval_ms.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.recv() => return,
            }
            // The in-memory hint first: most shards have nothing due, and asking the
            // Raft state of thousands of replicas each interval is not free.
            let due_here: Vec<Arc<Shard>> = shards
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .filter(|s| may_be_due(s) && s.is_leader())
                .cloned()
                .collect();
            for shard in due_here {
                if due(&shard).is_none_or(|t| t > shard.clock.now_ms()) {
                    continue;
                }
                tokio::spawn(async move {
                    let tick = OpGroup {
                        atomic: false,
                        ops: Vec::new(),
                    };
                    if let Err(e) = shard.propose(tick).await {
                        tracing::debug!(shard_id = %shard.id(), error = %e, "expiry tick not applied");
                    }
                });
            }
        }
    });
}

/// From the hint alone: a timer is due, or the hint does not know.
fn may_be_due(shard: &Shard) -> bool {
    match shard.next_timer_ms.load(Ordering::Relaxed) {
        u64::MAX => false,
        0 => true,
        t => t <= shard.clock.now_ms(),
    }
}

/// The shard's earliest timer, from the hint or (when unknown) the timer index.
fn due(shard: &Shard) -> Option<u64> {
    match shard.next_timer_ms.load(Ordering::Relaxed) {
        u64::MAX => None,
        0 => match shard.reader.earliest_timer_ms() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(shard_id = %shard.id(), error = %e, "cannot read the timer index");
                None
            }
        },
        t => Some(t),
    }
}
