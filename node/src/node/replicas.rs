//! Replicas coming and going on a running node: a move's first step creates an empty
//! replica here for the leader to fill, its last step drops the old one; and the
//! node's shard map follows each local shard's own membership (DESIGN.md: a data
//! shard's log is the truth for its replicas).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use super::{Node, ShardSet, refused, start_shard};
use crate::error::Error;
use crate::raft::replica_id;
use crate::router::{Epoch, LiveMap, ShardId};
use crate::storage::node_meta;

/// How often the map is brought up to date with the local shards' memberships.
const MAP_FOLLOW_INTERVAL_MS: u64 = 500;

impl Node {
    /// Starts an empty replica `replica` of `shard_id` here (recorded first, so a
    /// restart starts it again). Idempotent; refused when another replica of the
    /// shard runs here (one node holds at most one replica of a shard).
    pub async fn create_replica(&self, shard_id: ShardId, replica: u64) -> Result<bool, Error> {
        let step = "create_replica";
        if replica_id::node_of(replica) != self.id {
            return Err(refused(
                shard_id,
                self.id,
                step,
                format!(
                    "replica id {replica} belongs to node {}",
                    replica_id::node_of(replica)
                ),
            ));
        }
        let _one = self.replica_changes.lock().await;
        if let Ok(existing) = self.local_shard(shard_id) {
            let id = existing.raft.replica_id();
            return if id == replica {
                Ok(false)
            } else {
                Err(refused(
                    shard_id,
                    self.id,
                    step,
                    format!("this node already holds replica {id} of the shard"),
                ))
            };
        }
        let d = self
            .map
            .get()
            .shard(shard_id)
            .cloned()
            .ok_or(Error::ShardNotFound { shard_id })?;
        let record = node_meta::ShardDescriptor {
            start: d.range.start.clone(),
            end: d.range.end.clone(),
            replicas: d.replicas.clone(),
        };
        node_meta::write_replica(&self.store, shard_id, &record, replica)
            .map_err(|e| refused(shard_id, self.id, step, e.to_string()))?;
        let shard = start_shard(d, replica, &self.shared, &self.shutdown)
            .await
            .map_err(|e| refused(shard_id, self.id, step, e.to_string()))?;
        self.shards
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(shard_id, shard);
        tracing::info!(%shard_id, replica, "created an empty replica for a move");
        Ok(true)
    }

    /// Stops and deletes replica `replica` (0: whichever this node holds) of
    /// `shard_id`, which the committed membership `voters` (replica ids) no longer
    /// holds. Idempotent; refused when the replica is still a voter (deleting a
    /// voter's data could lose acknowledged writes) or another replica id runs here.
    pub async fn drop_replica(
        &self,
        shard_id: ShardId,
        replica: u64,
        voters: &[u64],
    ) -> Result<bool, Error> {
        let step = "drop_replica";
        let _one = self.replica_changes.lock().await;
        let Ok(shard) = self.local_shard(shard_id) else {
            return Ok(false);
        };
        let held = shard.raft.replica_id();
        if replica != 0 && held != replica {
            return Err(refused(
                shard_id,
                self.id,
                step,
                format!("this node holds replica {held} of the shard, not {replica}"),
            ));
        }
        if voters.is_empty() || voters.contains(&held) {
            return Err(refused(
                shard_id,
                self.id,
                step,
                format!("replica {held} is still a voter of the shard (voters {voters:?})"),
            ));
        }
        #[cfg(feature = "planted-bugs")]
        if crate::planted::active() == crate::planted::Bug::KeepRemovedReplicas {
            return Ok(true);
        }
        self.shards
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&shard_id);
        if let Err(e) = shard.raft.shutdown().await {
            tracing::warn!(%shard_id, error = %e, "raft shutdown of a dropped replica");
        }
        node_meta::delete_shard(&self.store, &self.data_dir.join("snapshots"), shard_id)
            .map_err(|e| refused(shard_id, self.id, step, e.to_string()))?;
        tracing::info!(%shard_id, replica, "dropped a replica removed from its shard");
        Ok(true)
    }
}

/// Keeps `map` up to date with each local shard's membership: a shard's replicas are
/// its uniform voters, its `conf_ver` the membership entry's index (newer wins).
pub fn spawn_map_follower(shards: ShardSet, map: LiveMap, mut shutdown: broadcast::Receiver<()>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(MAP_FOLLOW_INTERVAL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.recv() => return,
            }
            let local: Vec<Arc<crate::shard::Shard>> = shards
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect();
            for shard in local {
                let st = shard.raft.status();
                if st.voters.is_empty() || st.joint {
                    continue;
                }
                let epoch = Epoch {
                    version: 0,
                    conf_ver: st.membership_index,
                };
                if map.update_replicas(shard.id(), st.voters.into_iter().collect(), epoch) {
                    tracing::debug!(shard_id = %shard.id(), ?epoch, "shard map follows the shard's membership");
                }
            }
        }
    });
}
