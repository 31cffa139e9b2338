//! Replicas coming and going on a running node: a move's first step creates an empty
//! replica here for the leader to fill, its last step drops the old one; and the
//! node's shard map follows each local shard's own membership (DESIGN.md: a data
//! shard's log is the truth for its replicas).

use std::sync::Arc;
use std::time::Duration;

use stockpile_proto::v1 as pb;

use super::{Node, ShardSet, refused, start_shard};
use crate::error::Error;
use crate::raft::replica_id;
use crate::router::{Epoch, LiveMap, ShardDescriptor, ShardId, SkuRange};
use crate::shard::Shard;
use crate::storage::StorageError;
use crate::storage::node_meta;

/// How often the map is brought up to date with the local shards' memberships.
const MAP_FOLLOW_INTERVAL_MS: u64 = 500;

/// Every this many map-follower rounds, the map also takes the newer descriptors of
/// one other node's map: how a node learns the shards it holds no replica of (a split
/// child of a parent it never held, a merge of shards it never held), so that a move
/// can create a replica of such a shard here.
const PEER_MAP_EVERY_ROUNDS: u64 = 10;

/// How long a peer's map may take to arrive.
const PEER_MAP_TIMEOUT_MS: u64 = 2_000;

/// A split child's replica on the node that leads its parent stands for the child's
/// first election at once instead of after an election timeout (1–2 s with the
/// default `[raft]`, during which the child's SKUs had no leader), and again every
/// `CHILD_CAMPAIGN_INTERVAL_MS` until the child has a leader: the other replicas start
/// the child when their own parents apply the split, a little later, and grant
/// nothing before. Bounded: the election timeout stays the fallback.
const CHILD_CAMPAIGN_INTERVAL_MS: u64 = 100;
const CHILD_CAMPAIGN_TRIES_MAX: u32 = 20;

/// How long a started child may take to load its membership before the map
/// follower's round goes on without it (it is then taken in a later round).
const CHILD_MEMBERSHIP_WAIT_MS: u64 = 200;

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
        self.retire(&shard)
            .await
            .map_err(|e| refused(shard_id, self.id, step, e.to_string()))?;
        tracing::info!(%shard_id, replica, "dropped a replica removed from its shard");
        Ok(true)
    }

    /// Stops this node's replica `shard` for good and deletes everything it stored:
    /// out of the node's shards, its Raft group shut down, its write fence closed (an
    /// apply or snapshot openraft still had under way lands before the delete or not
    /// at all), then its data. The caller holds `replica_changes`.
    pub(super) async fn retire(&self, shard: &Arc<Shard>) -> Result<(), StorageError> {
        let shard_id = shard.id();
        self.shards
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&shard_id);
        if let Err(e) = shard.raft.shutdown().await {
            tracing::warn!(%shard_id, error = %e, "raft shutdown of a retired replica");
        }
        // Closing waits for a write under way, which may be a whole snapshot install.
        let fence = shard.fence.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || fence.close()).await {
            return Err(StorageError::Io(std::io::Error::other(e)));
        }
        node_meta::delete_shard(&self.store, &self.data_dir.join("snapshots"), shard_id)
    }
}

impl Node {
    /// Starts the map follower: every `MAP_FOLLOW_INTERVAL_MS` it starts the children
    /// of splits this node's replicas applied (once an apply recorded one), drops
    /// replicas of merged shards and resumes stopped merges (`reshape_round`), then
    /// takes every local shard's descriptor into the node's map (`follow_local_shards`).
    pub fn spawn_map_follower(self: &Arc<Self>) {
        let node = self.clone();
        let mut shutdown = self.shutdown.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(MAP_FOLLOW_INTERVAL_MS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut followed, mut reshaped) = (0u64, 0u64);
            let mut recorded = None;
            for round in 1u64.. {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = node.store.replicas_recorded_wait() => {}
                    _ = shutdown.recv() => return,
                }
                if round % PEER_MAP_EVERY_ROUNDS == 0 {
                    // Now and then in full, whatever the fingerprints say: an update
                    // the map refused (a split's halves not yet both here) is retried,
                    // a stopped merge whose left shard came to be led here resumes,
                    // and a child whose start failed is started again.
                    (followed, reshaped, recorded) = (0, 0, None);
                }
                let mark = node.store.replicas_recorded_mark();
                if recorded != Some(mark) {
                    recorded = Some(mark);
                    node.start_split_children().await;
                }
                node.reshape_round(&mut reshaped).await;
                follow_local_shards(&node.shards, &node.map, &mut followed);
                if round % PEER_MAP_EVERY_ROUNDS == 0 {
                    node.follow_a_peer_map().await;
                }
            }
        });
    }

    /// Takes the newer descriptors of a random other node's map (`with_layout`: only
    /// newer ones, and only a result that tiles). Best effort: a peer that does not
    /// answer is tried again later.
    async fn follow_a_peer_map(&self) {
        let peers: Vec<u64> = self
            .map
            .get()
            .nodes()
            .map(|n| n.id)
            .filter(|id| *id != self.id)
            .collect();
        let Some(peer) = peers.get(rand::random_range(0..peers.len().max(1))) else {
            return;
        };
        let Ok(mut admin) = self.admin_of(*peer) else {
            return;
        };
        let mut request = tonic::Request::new(pb::ShardMapRequest {});
        request.set_timeout(Duration::from_millis(PEER_MAP_TIMEOUT_MS));
        let Ok(reply) = admin.shard_map(request).await else {
            return;
        };
        let reply = reply.into_inner();
        // The meta shard travels beside the data shards: a node without a meta
        // replica learns where the map's leader may be only this way.
        let descriptors: Vec<ShardDescriptor> = reply
            .shards
            .into_iter()
            .chain(reply.meta)
            .map(|s| ShardDescriptor {
                id: ShardId(s.shard_id),
                range: SkuRange {
                    start: s.start,
                    end: s.end,
                },
                replicas: s.replicas,
                epoch: Epoch {
                    version: s.version,
                    conf_ver: s.conf_ver,
                },
            })
            .collect();
        if self.map.update_layout(&descriptors) {
            tracing::debug!(peer, "shard map takes a peer's newer descriptors");
        }
    }

    /// Starts every replica recorded here but not running: the children of splits
    /// this node's replicas applied (a split writes the child's records in its apply
    /// batch; creating and dropping replicas hold the same lock, so nothing else is
    /// recorded and not running while it is held).
    async fn start_split_children(&self) {
        let _one = self.replica_changes.lock().await;
        let stored = match node_meta::stored_shards(&self.store) {
            Ok(s) => s,
            Err(e) => return tracing::warn!(error = %e, "cannot list stored shards"),
        };
        let missing: Vec<ShardId> = {
            let running = self.shards.read().unwrap_or_else(|p| p.into_inner());
            stored
                .into_iter()
                .filter(|id| !running.contains_key(id))
                .collect()
        };
        for shard_id in missing {
            if let Err(e) = self.start_split_child(shard_id).await {
                tracing::warn!(%shard_id, error = %e, "cannot start the child of a split");
            }
        }
    }

    async fn start_split_child(&self, shard_id: ShardId) -> Result<(), String> {
        let record = node_meta::read_descriptor(&self.store, shard_id)
            .map_err(|e| e.to_string())?
            .ok_or("its descriptor vanished")?;
        let replica = node_meta::read_replica_id(&self.store, shard_id)
            .map_err(|e| e.to_string())?
            .unwrap_or(replica_id::seeded(self.id));
        let d = ShardDescriptor {
            id: shard_id,
            range: SkuRange {
                start: record.start,
                end: record.end,
            },
            replicas: record.replicas,
            epoch: Epoch::default(),
        };
        let parent_led_here = self.leads_parent_of(&d.range.start);
        let shard = start_shard(d, replica, &self.shared, &self.shutdown)
            .await
            .map_err(|e| e.to_string())?;
        self.shards
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(shard_id, shard.clone());
        tracing::info!(%shard_id, replica, parent_led_here, "started the child of a split");
        if parent_led_here {
            campaign_for_child(shard.clone());
        }
        // Its voters loaded, the child is taken into the map in this round, with its
        // parent's narrowed range: until then the map sends the child's SKUs to the
        // parent, which refuses them (SHARD_MOVED).
        let loaded = Duration::from_millis(CHILD_MEMBERSHIP_WAIT_MS);
        crate::raft::wait_until(loaded, || !shard.raft.status().voters.is_empty()).await;
        Ok(())
    }

    /// Whether this node leads the shard that a split narrowed to end where a child
    /// starting at `child_start` begins: the child's parent.
    fn leads_parent_of(&self, child_start: &str) -> bool {
        !child_start.is_empty()
            && self
                .shards
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .any(|s| s.is_leader() && s.bounds.get().range.end == child_start)
    }
}

/// Stands for `child`'s first election until it has a leader
/// (`CHILD_CAMPAIGN_INTERVAL_MS`, at most `CHILD_CAMPAIGN_TRIES_MAX` tries).
fn campaign_for_child(child: Arc<Shard>) {
    tokio::spawn(async move {
        for _ in 0..CHILD_CAMPAIGN_TRIES_MAX {
            if child.leader_id().is_some() {
                return;
            }
            if let Err(e) = child.raft.campaign().await {
                return tracing::debug!(shard_id = %child.id(), error = %e, "cannot stand for election");
            }
            tokio::time::sleep(Duration::from_millis(CHILD_CAMPAIGN_INTERVAL_MS)).await;
        }
    });
}

/// Folds `parts` into the running fingerprint `h` (an FNV-style mix): the map
/// follower's rounds compare fingerprints of every replica's marks to skip work
/// when nothing changed. Not a checksum: a collision only delays a round until the
/// next full one.
pub(super) fn mix(h: u64, parts: &[u64]) -> u64 {
    parts.iter().fold(h, |h, p| {
        (h ^ p).wrapping_mul(0x0100_0000_01b3).rotate_left(7)
    })
}

/// Takes each local shard's descriptor into `map`: its range and version from its
/// state machine's bounds, its replicas the uniform voters, its `conf_ver` the
/// membership entry's index (newer wins; a split's parent and child are taken
/// together, so the map always tiles).
fn follow_local_shards(shards: &ShardSet, map: &LiveMap, last: &mut u64) {
    let local: Vec<Arc<crate::shard::Shard>> = shards
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect();
    // Nothing to do unless some replica's range version or membership changed (or
    // replicas came or went): with thousands of replicas, rebuilding the layout
    // every round costs more than all of them idling.
    let fingerprint = local.iter().fold(local.len() as u64, |h, shard| {
        let h = mix(h, &[shard.id().0, shard.bounds.version()]);
        mix(h, &shard.raft.membership_mark())
    });
    if fingerprint == *last {
        return;
    }
    *last = fingerprint;
    let mut descriptors = Vec::with_capacity(local.len());
    for shard in local {
        let st = shard.raft.status();
        if st.voters.is_empty() || st.joint {
            continue;
        }
        let bounds = shard.bounds.get();
        descriptors.push(ShardDescriptor {
            id: shard.id(),
            range: bounds.range,
            replicas: st.voters.into_iter().collect(),
            epoch: Epoch {
                version: bounds.version,
                conf_ver: st.membership_index,
            },
        });
    }
    if map.update_layout(&descriptors) {
        tracing::debug!("shard map follows the local shards");
    }
}
