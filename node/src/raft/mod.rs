//! The adapter to openraft: type configuration, per-shard Raft configuration, and
//! the network. Storage implementations live in `storage`; nothing outside this
//! module and `storage` names openraft's traits.

pub mod guard;
pub mod network;
pub mod types;

use std::sync::Arc;

use crate::config::{ClusterConfig, ReadPolicyConfig};
use crate::storage::StateMachineStore;

pub type Raft = openraft::Raft<types::TypeConfig, StateMachineStore>;

#[derive(Debug, thiserror::Error)]
#[error("raft configuration for shard {shard_id}: {source}")]
pub struct RaftConfigError {
    shard_id: u64,
    source: openraft::ConfigError,
}

/// openraft's configuration for one shard, from the cluster config.
pub fn shard_raft_config(
    cluster: &ClusterConfig,
    shard_id: u64,
) -> Result<Arc<openraft::Config>, RaftConfigError> {
    let t = &cluster.raft;
    let config = openraft::Config {
        cluster_name: format!("{}-shard-{shard_id}", cluster.cluster_name),
        heartbeat_interval: t.heartbeat_interval_ms,
        election_timeout_min: t.election_timeout_min_ms,
        election_timeout_max: t.election_timeout_max_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(t.snapshot_after_entries),
        max_in_snapshot_log_to_keep: t.logs_kept_after_snapshot,
        snapshot_max_chunk_size: t.snapshot_chunk_bytes,
        max_payload_entries: t.append_entries_max,
        // Pre-vote keeps a node that was partitioned away from disrupting the leader
        // when it comes back with a higher term.
        enable_pre_vote: Some(true),
        // A restarted leader must win an election again: our state machine does not
        // sync before `apply` returns, which openraft's leader restore would require.
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|source| RaftConfigError { shard_id, source })
}

/// openraft's read policy from the config.
pub fn read_policy(cluster: &ClusterConfig) -> openraft::ReadPolicy {
    match cluster.raft.read_policy {
        ReadPolicyConfig::ReadIndex => openraft::ReadPolicy::ReadIndex,
        ReadPolicyConfig::Lease => openraft::ReadPolicy::LeaseRead,
    }
}

/// The latest metrics of a shard's Raft group (a cheap copy of the watched value).
pub fn metrics(raft: &Raft) -> openraft::RaftMetrics<types::TypeConfig> {
    use openraft::type_config::async_runtime::WatchReceiver;
    raft.metrics().borrow_watched().clone()
}

/// The leader as this node's Raft group knows it, without copying all metrics.
pub fn current_leader(raft: &Raft) -> Option<types::NodeId> {
    use openraft::type_config::async_runtime::WatchReceiver;
    raft.metrics().borrow_watched().current_leader
}

/// This replica's current term (for the guard), without copying all metrics.
pub fn current_term(raft: &Raft) -> u64 {
    use openraft::type_config::async_runtime::WatchReceiver;
    raft.metrics().borrow_watched().current_term
}
