//! Validation of a cluster config, one function per section; each failure names the
//! file, the field and the problem.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use super::{ClusterConfig, ConfigError, ShardConfig};
use crate::inventory::validate;

impl ClusterConfig {
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let ids = nodes(self, file)?;
        shards(self, file, &ids)?;
        tiling(self, file)?;
        raft(self, file)?;
        limits(self, file)?;
        retention(self, file)?;
        server(self, file)?;
        self.validate_sizes(file)?;
        admission(self, file)?;
        security(self, file)
    }
}

/// `cluster_name` and `[[nodes]]`: ids, addresses, places. Returns the node ids.
fn nodes(c: &ClusterConfig, file: &str) -> Result<BTreeSet<u64>, ConfigError> {
    let bad = |field: String, problem: String| ConfigError::Invalid {
        file: file.to_string(),
        field,
        problem,
    };
    if c.cluster_name.is_empty() {
        return Err(bad("cluster_name".into(), "must not be empty".into()));
    }
    if c.nodes.is_empty() {
        return Err(bad("nodes".into(), "at least one node is needed".into()));
    }
    let mut ids = BTreeSet::new();
    let mut addrs = BTreeMap::new();
    for (i, n) in c.nodes.iter().enumerate() {
        if n.id == 0 {
            return Err(bad(
                format!("nodes[{i}].id"),
                "node ids start at 1 (0 means \"no node\")".into(),
            ));
        }
        if n.id > crate::raft::replica_id::NODE_ID_MAX {
            return Err(bad(
                format!("nodes[{i}].id"),
                format!(
                    "node id {} is above {}: a replica id carries its node id in 16 bits",
                    n.id,
                    crate::raft::replica_id::NODE_ID_MAX
                ),
            ));
        }
        if !ids.insert(n.id) {
            return Err(bad(
                format!("nodes[{i}].id"),
                format!("node id {} appears twice", n.id),
            ));
        }
        if n.addr.parse::<SocketAddr>().is_err() {
            return Err(bad(
                format!("nodes[{i}].addr"),
                format!("{:?} is not an ip:port address", n.addr),
            ));
        }
        if let Some(other) = addrs.insert(n.addr.clone(), n.id) {
            return Err(bad(
                format!("nodes[{i}].addr"),
                format!("{} is also node {other}'s address", n.addr),
            ));
        }
        if n.region.is_empty() || n.zone.is_empty() {
            return Err(bad(
                format!("nodes[{i}]"),
                "region and zone must not be empty".into(),
            ));
        }
        if let Some(m) = &n.metrics_addr
            && m.parse::<SocketAddr>().is_err()
        {
            return Err(bad(
                format!("nodes[{i}].metrics_addr"),
                format!("{m:?} is not an ip:port address"),
            ));
        }
        if n.data_dir.as_os_str().is_empty() {
            return Err(bad(
                format!("nodes[{i}].data_dir"),
                "must not be empty".into(),
            ));
        }
    }
    Ok(ids)
}

/// `[[shards]]`: ids, replicas (existing nodes, once each), range bounds.
fn shards(c: &ClusterConfig, file: &str, ids: &BTreeSet<u64>) -> Result<(), ConfigError> {
    let bad = |field: String, problem: String| ConfigError::Invalid {
        file: file.to_string(),
        field,
        problem,
    };
    if c.shards.is_empty() {
        return Err(bad("shards".into(), "at least one shard is needed".into()));
    }
    let mut shard_ids = BTreeSet::new();
    for (i, s) in c.shards.iter().enumerate() {
        if s.id == 0 || s.id == u64::MAX {
            return Err(bad(
                format!("shards[{i}].id"),
                "shard ids are 1..u64::MAX (0 is the meta shard)".into(),
            ));
        }
        if !shard_ids.insert(s.id) {
            return Err(bad(
                format!("shards[{i}].id"),
                format!("shard id {} appears twice", s.id),
            ));
        }
        if s.replicas.is_empty() {
            return Err(bad(
                format!("shards[{i}].replicas"),
                "at least one replica is needed".into(),
            ));
        }
        let mut seen = BTreeSet::new();
        for r in &s.replicas {
            if !ids.contains(r) {
                return Err(bad(
                    format!("shards[{i}].replicas"),
                    format!("node {r} is not in [[nodes]]"),
                ));
            }
            if !seen.insert(r) {
                return Err(bad(
                    format!("shards[{i}].replicas"),
                    format!("node {r} appears twice"),
                ));
            }
        }
        for (field, bound) in [("start", &s.start), ("end", &s.end)] {
            if !bound.is_empty() {
                validate::sku(&format!("shards[{i}].{field}"), bound).map_err(|e| {
                    bad(
                        e.field,
                        format!("a range bound must be a valid SKU: {}", e.rule),
                    )
                })?;
            }
        }
        if !s.end.is_empty() && s.start >= s.end {
            return Err(bad(
                format!("shards[{i}]"),
                format!("start {:?} must sort before end {:?}", s.start, s.end),
            ));
        }
    }
    Ok(())
}

/// The ranges tile the SKU space: sorted by start, each ends where the next begins.
fn tiling(c: &ClusterConfig, file: &str) -> Result<(), ConfigError> {
    let bad = |field: String, problem: String| ConfigError::Invalid {
        file: file.to_string(),
        field,
        problem,
    };
    // The ranges must tile the SKU space: sorted by start, each ends where the next begins.
    let mut sorted: Vec<(usize, &ShardConfig)> = c.shards.iter().enumerate().collect();
    sorted.sort_by(|a, b| a.1.start.cmp(&b.1.start));
    if !sorted[0].1.start.is_empty() {
        return Err(bad(
            format!("shards[{}].start", sorted[0].0),
            "the lowest shard must start at \"\" so every SKU has a shard".into(),
        ));
    }
    for w in sorted.windows(2) {
        let ((ia, a), (ib, b)) = (w[0], w[1]);
        if a.end.is_empty() || a.end != b.start {
            return Err(bad(
                format!("shards[{ia}].end"),
                format!(
                    "ranges must meet: shard {} ends at {:?} but the next shard ({}, shards[{ib}]) starts at {:?}",
                    a.id, a.end, b.id, b.start
                ),
            ));
        }
    }
    let (il, last) = sorted[sorted.len() - 1];
    if !last.end.is_empty() {
        return Err(bad(
            format!("shards[{il}].end"),
            "the highest shard must end at \"\" (unbounded)".into(),
        ));
    }
    Ok(())
}

/// `[raft]` timings and counts.
fn raft(c: &ClusterConfig, file: &str) -> Result<(), ConfigError> {
    let bad = |field: String, problem: String| ConfigError::Invalid {
        file: file.to_string(),
        field,
        problem,
    };
    let r = &c.raft;
    // The longest a follower may wait for a heartbeat: one suppressed after an
    // AppendEntries (`raft::shard_config`) comes up to two intervals and one of
    // openraft's ticks (heartbeat × 13/64) after the last; openraft refuses a shorter
    // election timeout, so it is refused here, naming the field, before any shard starts.
    let hb = r.heartbeat_interval_ms;
    let beat_gap_ms = hb
        .saturating_mul(2)
        .saturating_add((hb.saturating_mul(13) / 64).max(1));
    if hb == 0 || r.election_timeout_min_ms <= beat_gap_ms {
        return Err(bad(
            "raft.election_timeout_min_ms".into(),
            format!(
                "must exceed {beat_gap_ms} ms, twice raft.heartbeat_interval_ms plus a Raft tick (heartbeat × 13/64), and the heartbeat must be > 0"
            ),
        ));
    }
    if r.election_timeout_max_ms <= r.election_timeout_min_ms {
        return Err(bad(
            "raft.election_timeout_max_ms".into(),
            "must exceed raft.election_timeout_min_ms".into(),
        ));
    }
    if r.snapshot_after_entries == 0 || r.snapshot_chunk_bytes < 1024 || r.append_entries_max == 0 {
        return Err(bad("raft".into(), "snapshot_after_entries and append_entries_max must be > 0, snapshot_chunk_bytes >= 1024".into()));
    }
    Ok(())
}

/// `[limits]`.
fn limits(c: &ClusterConfig, file: &str) -> Result<(), ConfigError> {
    let bad = |field: String, problem: String| ConfigError::Invalid {
        file: file.to_string(),
        field,
        problem,
    };
    let l = &c.limits;
    if l.reservation_items_max == 0
        || l.batch_ops_max == 0
        || l.get_skus_max == 0
        || l.list_limit_max == 0
    {
        return Err(bad(
            "limits".into(),
            "every limit must be at least 1".into(),
        ));
    }
    if l.ttl_ms_min == 0 || l.ttl_ms_min > l.ttl_ms_max {
        return Err(bad(
            "limits.ttl_ms_min".into(),
            "must be in 1..=limits.ttl_ms_max".into(),
        ));
    }
    Ok(())
}

/// `[retention]`.
fn retention(c: &ClusterConfig, file: &str) -> Result<(), ConfigError> {
    let bad = |field: String, problem: String| ConfigError::Invalid {
        file: file.to_string(),
        field,
        problem,
    };
    if c.retention.outcomes_max == 0 || c.retention.retention_ms == 0 {
        return Err(bad(
            "retention".into(),
            "retention_ms and outcomes_max must be at least 1".into(),
        ));
    }
    Ok(())
}

/// The shortest `server.repair_after_ms` accepted: a few election timeouts and a
/// process restart fit in it, so only a node that stays away is declared dead.
const REPAIR_AFTER_MS_MIN: u64 = 2_000;

/// The shortest `server.replica_gc_after_ms` accepted: a replica between two leaders
/// is leaderless for an election or two (its leader would still name it, so nothing
/// would be dropped, but each check costs a status call to every node).
const REPLICA_GC_AFTER_MS_MIN: u64 = 1_000;

/// `[server]` counts and timeouts, and `[balancer]`'s.
fn server(c: &ClusterConfig, file: &str) -> Result<(), ConfigError> {
    let bad = |field: String, problem: String| ConfigError::Invalid {
        file: file.to_string(),
        field,
        problem,
    };
    let s = &c.server;
    if s.entry_ops_max == 0 || s.shard_queue_max == 0 || s.shard_entries_in_flight_max == 0 {
        return Err(bad(
            "server".into(),
            "entry_ops_max, shard_queue_max and shard_entries_in_flight_max must be at least 1"
                .into(),
        ));
    }
    if s.propose_timeout_ms == 0 || s.read_timeout_ms == 0 || s.sweep_interval_ms == 0 {
        return Err(bad(
            "server".into(),
            "timeouts and sweep_interval_ms must be at least 1 ms".into(),
        ));
    }
    let b = &c.balancer;
    if b.interval_ms < 1_000 || b.moves_max == 0 {
        return Err(bad(
            "balancer".into(),
            "interval_ms must be at least 1000 and moves_max at least 1".into(),
        ));
    }
    for (i, p) in b.leader_preferences.iter().enumerate() {
        if p.leader_regions.is_empty() || p.leader_regions.iter().any(|r| r.is_empty()) {
            return Err(bad(
                format!("balancer.leader_preferences[{i}].leader_regions"),
                "name at least one region, none empty".into(),
            ));
        }
        if !p.end.is_empty() && p.end <= p.start {
            return Err(bad(
                format!("balancer.leader_preferences[{i}].end"),
                format!("{:?} is not after start {:?}", p.end, p.start),
            ));
        }
    }
    let sp = &c.split;
    if sp.check_interval_ms < 100
        || sp.load_window_ms < sp.check_interval_ms
        || sp.size_check_interval_ms < sp.check_interval_ms
    {
        return Err(bad(
            "split".into(),
            "check_interval_ms must be at least 100, and load_window_ms and size_check_interval_ms at least check_interval_ms".into(),
        ));
    }
    let m = &c.merge;
    if m.keys_max > 0 && sp.keys_max > 0 && m.keys_max > sp.keys_max / 2 {
        return Err(bad(
            "merge.keys_max".into(),
            format!(
                "{} is more than half of split.keys_max ({}): a merged shard would split again",
                m.keys_max, sp.keys_max
            ),
        ));
    }
    if m.keys_max > 0 && m.cold_window_ms < sp.check_interval_ms {
        return Err(bad(
            "merge.cold_window_ms".into(),
            format!(
                "{} ms is shorter than split.check_interval_ms ({} ms)",
                m.cold_window_ms, sp.check_interval_ms
            ),
        ));
    }
    if s.replica_gc_after_ms > 0 && s.replica_gc_after_ms < REPLICA_GC_AFTER_MS_MIN {
        return Err(bad(
            "server.replica_gc_after_ms".into(),
            format!(
                "{} ms is shorter than an election: use 0 (never) or at least {REPLICA_GC_AFTER_MS_MIN}",
                s.replica_gc_after_ms
            ),
        ));
    }
    if s.repair_after_ms > 0 && s.repair_after_ms < REPAIR_AFTER_MS_MIN {
        return Err(bad(
            "server.repair_after_ms".into(),
            format!(
                "{} ms would declare a node dead during an ordinary restart: use 0 (never) or at least {REPAIR_AFTER_MS_MIN}",
                s.repair_after_ms
            ),
        ));
    }
    Ok(())
}

/// `[admission]`.
fn admission(c: &ClusterConfig, file: &str) -> Result<(), ConfigError> {
    let bad = |field: String, problem: String| ConfigError::Invalid {
        file: file.to_string(),
        field,
        problem,
    };
    let a = &c.admission;
    if a.node_writes_in_flight_max == 0
        || a.node_reads_in_flight_max == 0
        || a.client_identities_max == 0
    {
        return Err(bad(
            "admission".into(),
            "in-flight bounds and client_identities_max must be at least 1".into(),
        ));
    }
    if (a.client_writes_per_s > 0 && a.client_write_burst == 0)
        || (a.client_reads_per_s > 0 && a.client_read_burst == 0)
    {
        return Err(bad(
            "admission".into(),
            "a rate limit needs a burst of at least 1".into(),
        ));
    }
    Ok(())
}

impl ClusterConfig {
    /// Bytes, bounds and deadlines of requests, entries, Raft messages and connections.
    fn validate_sizes(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |field: &str, problem: String| ConfigError::Invalid {
            file: file.to_string(),
            field: field.to_string(),
            problem,
        };
        let (l, r, s) = (&self.limits, &self.raft, &self.server);
        if l.request_bytes_max < 64 << 10 || l.request_bytes_max > 64 << 20 {
            return Err(bad(
                "limits.request_bytes_max",
                format!("{} is outside 64 KiB..=64 MiB", l.request_bytes_max),
            ));
        }
        if r.entry_bytes_max < 2 * l.request_bytes_max as u64 {
            return Err(bad(
                "raft.entry_bytes_max",
                format!(
                    "{} is less than twice limits.request_bytes_max ({}): a legal request must fit one entry",
                    r.entry_bytes_max, l.request_bytes_max
                ),
            ));
        }
        if r.append_bytes_max == 0 || r.link_bytes_per_s_min < 1024 || r.append_timeout_min_ms == 0
        {
            return Err(bad(
                "raft",
                "append_bytes_max and append_timeout_min_ms must be at least 1, link_bytes_per_s_min at least 1024".into(),
            ));
        }
        if self.raft_message_bytes_max() > crate::codec::DECODE_BYTES_MAX {
            return Err(bad(
                "raft.entry_bytes_max",
                format!(
                    "entry_bytes_max + append_bytes_max + snapshot_chunk_bytes exceeds {} bytes",
                    crate::codec::DECODE_BYTES_MAX
                ),
            ));
        }
        if s.connections_max == 0
            || s.streams_per_connection_max == 0
            || s.snapshots_in_flight_max == 0
            || s.keepalive_interval_ms == 0
            || s.snapshot_chunk_timeout_ms == 0
        {
            return Err(bad(
                "server",
                "connections_max, streams_per_connection_max, snapshots_in_flight_max, keepalive_interval_ms and snapshot_chunk_timeout_ms must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The largest Raft message a node sends or accepts: one call's entries (or one
    /// entry larger than `append_bytes_max`), or a snapshot chunk, plus framing.
    pub fn raft_message_bytes_max(&self) -> usize {
        let r = &self.raft;
        let payload = r
            .entry_bytes_max
            .saturating_add(r.append_bytes_max)
            .max(r.snapshot_chunk_bytes);
        usize::try_from(payload.saturating_add(1 << 20)).unwrap_or(usize::MAX)
    }
}

/// `[security]`: with TLS on, every file is named.
fn security(c: &ClusterConfig, file: &str) -> Result<(), ConfigError> {
    let s = &c.security;
    if !s.tls {
        return Ok(());
    }
    let missing = [
        ("security.ca", s.ca.is_none()),
        ("security.cert", s.cert.is_none()),
        ("security.key", s.key.is_none()),
        ("security.access", s.access.is_none()),
    ];
    match missing.iter().find(|(_, m)| *m) {
        Some((field, _)) => Err(ConfigError::Invalid {
            file: file.to_string(),
            field: field.to_string(),
            problem: "is required when security.tls is on".into(),
        }),
        None => Ok(()),
    }
}
