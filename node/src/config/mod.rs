//! The cluster configuration: one TOML file shared by every node (DESIGN.md:
//! cluster-config/). It names the nodes, the shards with their SKU ranges and
//! replicas, and the tuning every node must agree on. docs/CONFIG.md documents every
//! field; a bad file fails at start with the file, the field and the problem.

use std::path::{Path, PathBuf};

pub mod topology;
mod validate;

use serde::{Deserialize, Serialize};

use crate::inventory::Retention;
use crate::inventory::validate::Limits;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: {field}: {problem}")]
    Invalid {
        file: String,
        field: String,
        problem: String,
    },
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// A name for the cluster; a node refuses data created for another cluster.
    pub cluster_name: String,
    pub nodes: Vec<NodeConfig>,
    pub shards: Vec<ShardConfig>,
    #[serde(default)]
    pub raft: RaftTuning,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub server: ServerTuning,
    #[serde(default)]
    pub admission: AdmissionConfig,
    #[serde(default)]
    pub security: SecurityConfig,
    #[serde(default)]
    pub balancer: BalancerConfig,
    #[serde(default)]
    pub split: SplitConfig,
    #[serde(default)]
    pub merge: MergeConfig,
}

/// Splits a shard's leader makes by itself (`node::autosplit`, docs/OPERATIONS.md).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SplitConfig {
    /// A shard holding more SKUs than this splits at its middle SKU (0: never).
    pub keys_max: u64,
    /// How often a written shard's SKUs are counted against `keys_max` (a count walks
    /// at most `keys_max + 1` keys).
    pub size_check_interval_ms: u64,
    /// A shard whose leader proposed more operations per second than this, on average
    /// over `load_window_ms`, splits where its sampled load divides in two (0: never).
    pub load_ops_per_s: u64,
    pub load_window_ms: u64,
    /// How often each node looks at the shards it leads.
    pub check_interval_ms: u64,
    /// No automatic split while the node holds this many replicas or more.
    pub node_shards_max: usize,
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            keys_max: 1_000_000,
            size_check_interval_ms: 60_000,
            load_ops_per_s: 20_000,
            load_window_ms: 30_000,
            check_interval_ms: 1_000,
            node_shards_max: 10_000,
        }
    }
}

/// Merges a shard's leader makes by itself (`node::autosplit`, docs/OPERATIONS.md):
/// off by default, because a shard split by command is small and cold at first and
/// would be merged straight back.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct MergeConfig {
    /// Two neighbours holding together at most this many SKUs may merge (0: never).
    /// At most half of `split.keys_max`, so that the merged shard does not split.
    pub keys_max: u64,
    /// ... and together applying at most this many log entries per second, on average
    /// over `cold_window_ms`, on the left shard's leader.
    pub cold_entries_per_s: u64,
    pub cold_window_ms: u64,
}

impl Default for MergeConfig {
    fn default() -> Self {
        MergeConfig {
            keys_max: 0,
            cold_entries_per_s: 1,
            cold_window_ms: 600_000,
        }
    }
}

/// The balancer, run by the meta shard's leader (`node::balance`, docs/OPERATIONS.md).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct BalancerConfig {
    /// Even replica and leader counts across the nodes that are up.
    pub enabled: bool,
    /// How often the balancer looks for a step (each step then waits for fresh views).
    pub interval_ms: u64,
    /// The difference in replica (and in leader) counts between two nodes left alone.
    pub tolerance: u64,
    /// Replica moves of the balancer under way at once at most.
    pub moves_max: usize,
    /// Where the leaders of SKU ranges belong (near their traffic): the first entry
    /// whose range holds a shard's first SKU applies to that shard.
    pub leader_preferences: Vec<LeaderPreference>,
}

/// The regions a range's shard leaders belong in.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LeaderPreference {
    /// The range `[start, end)` (an empty `end` is unbounded).
    #[serde(default)]
    pub start: String,
    #[serde(default)]
    pub end: String,
    /// Preferred regions, any of them.
    pub leader_regions: Vec<String>,
}

impl BalancerConfig {
    /// The preferred regions of a shard whose range starts at `start`, if any.
    pub fn preferred_regions(&self, start: &str) -> Option<&[String]> {
        self.leader_preferences
            .iter()
            .find(|p| start >= p.start.as_str() && (p.end.is_empty() || start < p.end.as_str()))
            .map(|p| p.leader_regions.as_slice())
    }
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
            enabled: false,
            interval_ms: 5_000,
            tolerance: 1,
            moves_max: 1,
            leader_preferences: Vec::new(),
        }
    }
}

/// TLS and access control (docs/SECURITY.md). Paths may hold `{id}`, replaced by the
/// node's id. Without `tls`, a node serves plaintext only on a loopback address, unless
/// it is started with `--insecure`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Serve and connect over TLS, nodes authenticating each other mutually.
    pub tls: bool,
    /// The cluster's CA certificates (PEM; during a CA rotation, the old and the new).
    pub ca: Option<PathBuf>,
    /// This node's certificate and key (PEM), e.g. `data/certs/node-{id}.pem`.
    pub cert: Option<String>,
    pub key: Option<String>,
    /// Client identities and tokens with their roles (TOML; see docs/SECURITY.md).
    pub access: Option<PathBuf>,
}

/// Admission control: bounds checked before a request costs a Raft round.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Write RPCs (mutations, batches) being served by this node at once.
    pub node_writes_in_flight_max: usize,
    /// Read RPCs being served by this node at once.
    pub node_reads_in_flight_max: usize,
    /// Sustained mutations per second per client identity (0 = unlimited).
    pub client_writes_per_s: u64,
    /// Mutations a client identity may send in a burst.
    pub client_write_burst: u64,
    /// Sustained reads (SKUs read) per second per client identity (0 = unlimited).
    pub client_reads_per_s: u64,
    /// Reads a client identity may send in a burst.
    pub client_read_burst: u64,
    /// Client identities tracked at most (the longest idle are forgotten first).
    pub client_identities_max: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            node_writes_in_flight_max: 8_192,
            node_reads_in_flight_max: 8_192,
            client_writes_per_s: 0,
            client_write_burst: 10_000,
            client_reads_per_s: 0,
            client_read_burst: 10_000,
            client_identities_max: 10_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: u64,
    /// host:port of the node's gRPC server (Inventory, Admin and Raft services).
    pub addr: String,
    #[serde(default = "default_region")]
    pub region: String,
    #[serde(default = "default_zone")]
    pub zone: String,
    /// Where the node keeps its RocksDB and snapshots (relative to the working directory).
    pub data_dir: PathBuf,
    /// host:port serving Prometheus metrics at /metrics (none when absent).
    #[serde(default)]
    pub metrics_addr: Option<String>,
}

fn default_region() -> String {
    "local".into()
}
fn default_zone() -> String {
    "a".into()
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    pub id: u64,
    /// First SKU of the range (inclusive); "" for the lowest shard.
    pub start: String,
    /// End of the range (exclusive); "" for the highest shard (no upper bound).
    pub end: String,
    /// Node ids holding a replica. On a fresh cluster one of them initializes the shard
    /// (`node::initializer_of`).
    pub replicas: Vec<u64>,
}

impl ShardConfig {
    pub fn contains(&self, sku: &str) -> bool {
        sku >= self.start.as_str() && (self.end.is_empty() || sku < self.end.as_str())
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTuning {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot, for followers slightly behind.
    pub logs_kept_after_snapshot: u64,
    /// Bytes per snapshot chunk on the wire.
    pub snapshot_chunk_bytes: u64,
    /// Entries per AppendEntries message at most.
    pub append_entries_max: u64,
    /// Bytes of one log entry at most (the proposer stops adding requests to an entry
    /// here). Must be at least twice `limits.request_bytes_max`, so any legal request
    /// fits one entry.
    pub entry_bytes_max: u64,
    /// Bytes of entries per AppendEntries call at most; a longer run of entries goes
    /// over several calls (one entry larger than this goes alone).
    pub append_bytes_max: u64,
    /// The slowest link between nodes that replication must still work over, in bytes
    /// per second: every AppendEntries and snapshot deadline grows with its payload at
    /// this rate, so a large legal entry is never cut off and resent forever.
    pub link_bytes_per_s_min: u64,
    /// The deadline of an AppendEntries call that carries entries, before adding the
    /// payload's time at `link_bytes_per_s_min`.
    pub append_timeout_min_ms: u64,
    /// Reads confirm leadership with a quorum round ("read_index") or trust the
    /// leader's lease ("lease"; assumes bounded clock drift).
    pub read_policy: ReadPolicyConfig,
    /// A shard whose leader saw no client call and no Raft message for this long, with
    /// every replica up to date, goes quiet: its replicas stop their Raft timers (no
    /// heartbeats, no election timers) until work or a lost peer wakes them. 0: never
    /// (every shard ticks always).
    pub quiet_after_ms: u64,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReadPolicyConfig {
    ReadIndex,
    Lease,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 1_000,
            election_timeout_max_ms: 2_000,
            snapshot_after_entries: 20_000,
            logs_kept_after_snapshot: 5_000,
            snapshot_chunk_bytes: 1 << 20,
            append_entries_max: 1_000,
            entry_bytes_max: 8 << 20,
            append_bytes_max: 4 << 20,
            link_bytes_per_s_min: 1 << 20,
            append_timeout_min_ms: 1_000,
            read_policy: ReadPolicyConfig::ReadIndex,
            // Half a second: five heartbeats at the default interval. A shard written
            // to less often sleeps between writes, which costs less than heartbeating
            // it awake: 1,000 shards all served did ~1,090 ops/s at 500 ms against
            // ~576 at 2 s (docs/PERFORMANCE.md, "What was changed", 20).
            quiet_after_ms: 500,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Stored outcomes (for retries) and closed reservations are kept this long.
    pub retention_ms: u64,
    /// At most this many stored outcomes per shard.
    pub outcomes_max: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        let r = Retention::default();
        RetentionConfig {
            retention_ms: r.retention_ms,
            outcomes_max: r.outcomes_max,
        }
    }
}

impl RetentionConfig {
    pub fn to_retention(&self) -> Retention {
        Retention {
            retention_ms: self.retention_ms,
            outcomes_max: self.outcomes_max,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerTuning {
    /// How long a node waits for a proposal to be applied before answering
    /// OUTCOME_UNKNOWN.
    pub propose_timeout_ms: u64,
    /// How long a linearizable read may wait for leadership confirmation.
    pub read_timeout_ms: u64,
    /// Operations of concurrent requests to one shard combined into one log entry at most.
    pub entry_ops_max: usize,
    /// Requests queued for one shard's proposer at most; beyond, RATE_LIMITED.
    pub shard_queue_max: usize,
    /// Log entries of one shard proposed and not yet applied at most. One by default:
    /// the CPU of an entry (log append and sync on every replica, AppendEntries RPCs
    /// to each follower, three applies) dwarfs that of an op in it, so on a CPU-bound
    /// node fewer, larger entries serve more (docs/PERFORMANCE.md, "What was
    /// changed", 10).
    pub shard_entries_in_flight_max: usize,
    /// How often a leader checks for due reservation timers.
    pub sweep_interval_ms: u64,
    /// How long SIGTERM waits for in-flight requests before stopping.
    pub shutdown_grace_ms: u64,
    /// Open client and peer connections at most; a connection beyond is closed at once
    /// (and counted), so a flood of connections cannot exhaust the node.
    pub connections_max: usize,
    /// Concurrent HTTP/2 streams (calls) per connection at most.
    pub streams_per_connection_max: u32,
    /// Idle connections are probed (HTTP/2 ping) this often and closed when a probe is
    /// not answered within the same time.
    pub keepalive_interval_ms: u64,
    /// Snapshots being received at once at most; a sender beyond is refused and retries.
    pub snapshots_in_flight_max: usize,
    /// A snapshot stream that delivers no chunk for this long is dropped, freeing its slot.
    pub snapshot_chunk_timeout_ms: u64,
    /// A node the meta leader cannot reach for this long is declared dead: its
    /// replicas are recreated on other nodes and its id is removed for good (0: never;
    /// an operator runs `node remove N --dead`). Long enough that a restart or an
    /// upgrade never triggers it.
    pub repair_after_ms: u64,
    /// A replica of this node that has heard from no leader for this long is checked
    /// against its shard's leader and dropped when the shard no longer names it (a
    /// replica its move could not drop, an empty one a stopped move left; 0: never).
    pub replica_gc_after_ms: u64,
}

impl Default for ServerTuning {
    fn default() -> Self {
        ServerTuning {
            propose_timeout_ms: 5_000,
            read_timeout_ms: 5_000,
            entry_ops_max: 4_096,
            shard_queue_max: 8_192,
            shard_entries_in_flight_max: 1,
            sweep_interval_ms: 500,
            shutdown_grace_ms: 5_000,
            connections_max: 4_096,
            streams_per_connection_max: 1_024,
            keepalive_interval_ms: 10_000,
            snapshots_in_flight_max: 2,
            snapshot_chunk_timeout_ms: 10_000,
            repair_after_ms: 300_000,
            replica_gc_after_ms: 60_000,
        }
    }
}

impl ClusterConfig {
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&file, &text)
    }

    /// Parses and validates `text`; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<ClusterConfig, ConfigError> {
        let config: ClusterConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.validate(file)?;
        Ok(config)
    }

    pub fn node(&self, id: u64) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == id)
    }

    pub fn shard(&self, id: u64) -> Option<&ShardConfig> {
        self.shards.iter().find(|s| s.id == id)
    }

    /// The shard whose range holds `sku` (validation guarantees exactly one).
    pub fn shard_for(&self, sku: &str) -> Option<&ShardConfig> {
        self.shards.iter().find(|s| s.contains(sku))
    }

    /// Shards with a replica on `node_id`.
    pub fn shards_of(&self, node_id: u64) -> impl Iterator<Item = &ShardConfig> {
        self.shards
            .iter()
            .filter(move |s| s.replicas.contains(&node_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
cluster_name = "t"
[[nodes]]
id = 1
addr = "127.0.0.1:7001"
data_dir = "d1"
[[nodes]]
id = 2
addr = "127.0.0.1:7002"
data_dir = "d2"
[[shards]]
id = 1
start = ""
end = "m"
replicas = [1, 2]
[[shards]]
id = 2
start = "m"
end = ""
replicas = [2, 1]
"#;

    fn must_fail_with(text: &str, expected: &str) {
        let err = ClusterConfig::parse("test.toml", text)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "expected {expected:?} in {err:?}");
        assert!(err.starts_with("test.toml"), "errors name the file: {err}");
    }

    #[test]
    fn accepts_a_good_config_and_routes_skus() {
        let c = ClusterConfig::parse("test.toml", GOOD).unwrap();
        assert_eq!(c.shard_for("apple").unwrap().id, 1);
        assert_eq!(c.shard_for("m").unwrap().id, 2);
        assert_eq!(c.shard_for("zzz").unwrap().id, 2);
        assert_eq!(c.shard_for("").unwrap().id, 1);
        assert_eq!(c.shards_of(1).count(), 2);
        assert_eq!(c.raft, RaftTuning::default());
    }

    #[test]
    fn the_shipped_configs_are_valid() {
        for f in ["dev.toml", "local-3node.toml", "three-region-5node.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../cluster-config")
                .join(f);
            ClusterConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn names_file_field_and_problem() {
        must_fail_with(
            &GOOD.replace("end = \"m\"", "end = \"n\""),
            "shards[0].end: ranges must meet",
        );
        must_fail_with(
            &GOOD.replace("replicas = [1, 2]", "replicas = [1, 3]"),
            "shards[0].replicas: node 3 is not in [[nodes]]",
        );
        must_fail_with(
            &GOOD.replace("replicas = [1, 2]", "replicas = [1, 1]"),
            "node 1 appears twice",
        );
        must_fail_with(
            &GOOD.replace("127.0.0.1:7002", "127.0.0.1:7001"),
            "nodes[1].addr",
        );
        must_fail_with(
            &GOOD.replace("127.0.0.1:7002", "localhost"),
            "not an ip:port",
        );
        must_fail_with(&GOOD.replace("id = 2\naddr", "id = 0\naddr"), "nodes[1].id");
        must_fail_with(
            &GOOD.replace("start = \"m\"", "start = \"m\"\ncolour = 1"),
            "unknown field `colour`",
        );
        must_fail_with(
            &GOOD.replace("end = \"\"", "end = \"z\""),
            "the highest shard must end",
        );
        must_fail_with(
            &format!("{GOOD}\n[server]\nrepair_after_ms = 500\n"),
            "server.repair_after_ms: 500 ms would declare a node dead during an ordinary restart",
        );
        must_fail_with(
            &format!("{GOOD}\n[raft]\nelection_timeout_min_ms = 50\n"),
            "raft.election_timeout_min_ms",
        );
        must_fail_with(
            &format!("{GOOD}\n[raft]\nelection_timeout_min_ms = 210\n"),
            "raft.election_timeout_min_ms: must exceed 220 ms",
        );
        must_fail_with(
            &GOOD.replace("cluster_name = \"t\"", ""),
            "missing field `cluster_name`",
        );
        must_fail_with(
            &GOOD.replace("id = 2\nstart", "id = 1\nstart"),
            "shard id 1 appears twice",
        );
    }
}
