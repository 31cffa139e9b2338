//! Every metric the node emits: its name (ending in its unit), its labels, and its
//! description, in one table. Code names metrics only through these constants.

/// The label every per-shard series carries.
pub const SHARD_ID: &str = "shard_id";

pub const REQUESTS_TOTAL: &str = "stockpile_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "stockpile_request_duration_seconds";
pub const REQUESTS_IN_FLIGHT: &str = "stockpile_requests_in_flight";
pub const BATCH_OPS: &str = "stockpile_batch_ops";
pub const BATCH_OPERATIONS_TOTAL: &str = "stockpile_batch_operations_total";
pub const ADMISSION_REJECTIONS_TOTAL: &str = "stockpile_admission_rejections_total";
pub const CONNECTIONS_OPEN: &str = "stockpile_connections_open";
pub const CONNECTIONS_REFUSED_TOTAL: &str = "stockpile_connections_refused_total";
pub const ACCEPT_ERRORS_TOTAL: &str = "stockpile_accept_errors_total";
pub const PROPOSALS_TOTAL: &str = "stockpile_proposals_total";
pub const RAFT_ENTRIES_PROPOSED_TOTAL: &str = "stockpile_raft_entries_proposed_total";
pub const RAFT_ENTRY_OPS: &str = "stockpile_raft_entry_ops";
pub const PROPOSALS_IN_FLIGHT: &str = "stockpile_proposals_in_flight";
pub const PROPOSAL_QUEUE_FULL_TOTAL: &str = "stockpile_proposal_queue_full_total";
pub const OPS_APPLIED_TOTAL: &str = "stockpile_ops_applied_total";
pub const OPS_REPLAYED_TOTAL: &str = "stockpile_ops_replayed_total";
pub const ENTRIES_APPLIED_TOTAL: &str = "stockpile_entries_applied_total";
pub const LOG_APPENDS_TOTAL: &str = "stockpile_log_appends_total";
pub const LOG_SYNCS_TOTAL: &str = "stockpile_log_syncs_total";
pub const LOG_APPEND_DURATION_SECONDS: &str = "stockpile_log_append_duration_seconds";
pub const LOG_SYNC_DURATION_SECONDS: &str = "stockpile_log_sync_duration_seconds";
pub const SNAPSHOT_BUILDS_TOTAL: &str = "stockpile_snapshot_builds_total";
pub const SNAPSHOT_INSTALLS_TOTAL: &str = "stockpile_snapshot_installs_total";
pub const SNAPSHOT_BYTES: &str = "stockpile_snapshot_bytes";
pub const SNAPSHOT_RECEIVES_REFUSED_TOTAL: &str = "stockpile_snapshot_receives_refused_total";
pub const RAFT_MESSAGES_REFUSED_TOTAL: &str = "stockpile_raft_messages_refused_total";
pub const BALANCER_STEPS_TOTAL: &str = "stockpile_balancer_steps_total";
pub const REPAIRS_TOTAL: &str = "stockpile_repairs_total";
pub const AUTH_DENIED_TOTAL: &str = "stockpile_auth_denied_total";
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "stockpile_tls_handshake_failures_total";
pub const SHARDS_ASLEEP: &str = "stockpile_shards_asleep";
pub const RAFT_IS_LEADER: &str = "stockpile_raft_is_leader";
pub const RAFT_TERM: &str = "stockpile_raft_term";
pub const RAFT_LAST_LOG_INDEX: &str = "stockpile_raft_last_log_index";
pub const RAFT_COMMIT_INDEX: &str = "stockpile_raft_commit_index";
pub const RAFT_APPLIED_INDEX: &str = "stockpile_raft_applied_index";
pub const RAFT_SNAPSHOT_INDEX: &str = "stockpile_raft_snapshot_index";
pub const RAFT_PURGED_INDEX: &str = "stockpile_raft_purged_index";
pub const RAFT_REPLICATION_LAG_ENTRIES: &str = "stockpile_raft_replication_lag_entries";
pub const DATA_DIR_AVAILABLE_BYTES: &str = "stockpile_data_dir_available_bytes";
pub const DATA_DIR_CAPACITY_BYTES: &str = "stockpile_data_dir_capacity_bytes";

/// (name, kind, labels, description) of every series, for `describe` and the docs.
pub const ALL: &[(&str, Kind, &str, &str)] = &[
    (
        REQUESTS_TOTAL,
        Kind::Counter,
        "rpc, reason",
        "RPCs answered, by RPC and outcome reason (OK or the error reason)",
    ),
    (
        REQUEST_DURATION_SECONDS,
        Kind::Histogram,
        "rpc",
        "RPC latency",
    ),
    (
        REQUESTS_IN_FLIGHT,
        Kind::Gauge,
        "kind",
        "Requests being served, by kind (read, write)",
    ),
    (BATCH_OPS, Kind::Histogram, "", "Operations per Batch RPC"),
    (
        BATCH_OPERATIONS_TOTAL,
        Kind::Counter,
        "reason",
        "Operations inside Batch RPCs, by outcome reason",
    ),
    (
        ADMISSION_REJECTIONS_TOTAL,
        Kind::Counter,
        "kind, bound",
        "Requests refused by admission control",
    ),
    (
        CONNECTIONS_OPEN,
        Kind::Gauge,
        "",
        "Open connections (clients and peers)",
    ),
    (
        CONNECTIONS_REFUSED_TOTAL,
        Kind::Counter,
        "",
        "Connections closed at once because server.connections_max were open",
    ),
    (
        ACCEPT_ERRORS_TOTAL,
        Kind::Counter,
        "",
        "Failed accepts (for example, out of file descriptors)",
    ),
    (
        PROPOSALS_TOTAL,
        Kind::Counter,
        "",
        "Requests (groups of operations) handed to shard proposers",
    ),
    (
        RAFT_ENTRIES_PROPOSED_TOTAL,
        Kind::Counter,
        "",
        "Raft entries proposed for them (fewer: requests share entries)",
    ),
    (
        RAFT_ENTRY_OPS,
        Kind::Histogram,
        "",
        "Operations per proposed Raft entry",
    ),
    (
        PROPOSALS_IN_FLIGHT,
        Kind::Gauge,
        SHARD_ID,
        "Raft entries proposed and not yet applied",
    ),
    (
        PROPOSAL_QUEUE_FULL_TOTAL,
        Kind::Counter,
        "",
        "Requests refused because a shard's proposal queue was full",
    ),
    (
        OPS_APPLIED_TOTAL,
        Kind::Counter,
        "",
        "Operations executed by state machines for the first time",
    ),
    (
        OPS_REPLAYED_TOTAL,
        Kind::Counter,
        "",
        "Operations answered from a stored outcome (retries)",
    ),
    (
        ENTRIES_APPLIED_TOTAL,
        Kind::Counter,
        "",
        "Normal log entries applied by state machines",
    ),
    (LOG_APPENDS_TOTAL, Kind::Counter, "", "Raft log appends"),
    (
        LOG_SYNCS_TOTAL,
        Kind::Counter,
        "",
        "WAL syncs (group commit: fewer than appends)",
    ),
    (
        LOG_APPEND_DURATION_SECONDS,
        Kind::Histogram,
        "",
        "Writing one log append to RocksDB, before its sync",
    ),
    (
        LOG_SYNC_DURATION_SECONDS,
        Kind::Histogram,
        "",
        "One WAL sync",
    ),
    (SNAPSHOT_BUILDS_TOTAL, Kind::Counter, "", "Snapshots built"),
    (
        SNAPSHOT_INSTALLS_TOTAL,
        Kind::Counter,
        "",
        "Snapshots installed",
    ),
    (
        SNAPSHOT_BYTES,
        Kind::Gauge,
        SHARD_ID,
        "Size of the shard's last built snapshot",
    ),
    (
        SNAPSHOT_RECEIVES_REFUSED_TOTAL,
        Kind::Counter,
        "",
        "Snapshot streams refused because server.snapshots_in_flight_max were being received",
    ),
    (
        RAFT_MESSAGES_REFUSED_TOTAL,
        Kind::Counter,
        "rpc",
        "Raft messages from peers refused by the guard, undecodable, or addressed to a replica the node does not hold",
    ),
    (
        BALANCER_STEPS_TOTAL,
        Kind::Counter,
        "kind",
        "Balancer steps started on the meta leader: kind move (a replica) or lead (a leadership)",
    ),
    (
        REPAIRS_TOTAL,
        Kind::Counter,
        "",
        "Unreachable nodes the meta leader declared dead (automatic repair started)",
    ),
    (
        SHARDS_ASLEEP,
        Kind::Gauge,
        "",
        "Replicas on this node whose Raft timer is stopped (quiet shards)",
    ),
    (
        RAFT_IS_LEADER,
        Kind::Gauge,
        SHARD_ID,
        "1 when this node leads the shard",
    ),
    (
        RAFT_TERM,
        Kind::Gauge,
        SHARD_ID,
        "The shard's current Raft term on this node",
    ),
    (
        RAFT_LAST_LOG_INDEX,
        Kind::Gauge,
        SHARD_ID,
        "Last log index of the shard on this node",
    ),
    (
        RAFT_COMMIT_INDEX,
        Kind::Gauge,
        SHARD_ID,
        "Committed log index known to this node",
    ),
    (
        RAFT_APPLIED_INDEX,
        Kind::Gauge,
        SHARD_ID,
        "Applied log index of the shard on this node",
    ),
    (
        RAFT_SNAPSHOT_INDEX,
        Kind::Gauge,
        SHARD_ID,
        "Last log index in the shard's snapshot",
    ),
    (
        RAFT_PURGED_INDEX,
        Kind::Gauge,
        SHARD_ID,
        "Last purged log index of the shard",
    ),
    (
        RAFT_REPLICATION_LAG_ENTRIES,
        Kind::Gauge,
        "shard_id, follower",
        "On the leader: its last log index minus a follower's matched index",
    ),
    (
        DATA_DIR_AVAILABLE_BYTES,
        Kind::Gauge,
        "",
        "Bytes available to the node on its data directory's filesystem",
    ),
    (
        DATA_DIR_CAPACITY_BYTES,
        Kind::Gauge,
        "",
        "Size of the data directory's filesystem",
    ),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Registers every description with the installed recorder.
pub fn describe() {
    for (name, kind, _, text) in ALL {
        match kind {
            Kind::Counter => metrics::describe_counter!(*name, *text),
            Kind::Gauge => metrics::describe_gauge!(*name, *text),
            Kind::Histogram => metrics::describe_histogram!(*name, *text),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_name_is_described_once_and_ends_in_a_unit_or_kind() {
        let mut seen = std::collections::BTreeSet::new();
        for (name, _, _, text) in super::ALL {
            assert!(seen.insert(*name), "{name} described twice");
            assert!(!text.is_empty());
            assert!(name.starts_with("stockpile_"), "{name}");
        }
    }
}
