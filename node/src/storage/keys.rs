//! Every byte layout Stockpile stores in RocksDB, in one place (DESIGN.md: Storage).
//!
//! All integers are big-endian so that RocksDB's bytewise order is numeric order:
//! a shard's log is one contiguous, index-ordered key range, and a shard's state
//! machine is one contiguous prefix that a snapshot can read and an install can
//! replace with one range delete.
//!
//! | column family | key | value |
//! | --- | --- | --- |
//! | `raft_log`   | shard ‖ index | log entry |
//! | `raft_state` | shard ‖ tag | vote, committed, last purged, shard descriptor, replica id |
//! | `sm`         | shard ‖ 0x00 | applied log id, membership, clock, counters |
//! | `sm`         | shard ‖ 0x01 ‖ sku | stock record |
//! | `sm`         | shard ‖ 0x02 ‖ reservation id | reservation |
//! | `sm`         | shard ‖ 0x03 ‖ request id | stored outcome |
//! | `sm`         | shard ‖ 0x04 ‖ timer ms ‖ reservation id | () — timer index (expiry, forget) |
//! | `sm`         | shard ‖ 0x05 ‖ applied ms ‖ origin shard ‖ log index | request ids — outcome age index (pruning) |
//! | `sm`         | 0 ‖ 0x06 ‖ node id / 0x07 ‖ shard id | cluster map: nodes / moves (meta shard) |
//! | `sm`         | shard ‖ 0x08 | the shard's bounds after a split (range, version) |
//! | `sm`         | 0 ‖ 0x09 ‖ shard id | cluster map: a shard born by a split (meta shard) |
//! | `sm`         | shard ‖ 0x0A ‖ child id | a child this shard's split made |
//! | `sm`         | shard ‖ 0x0B | frozen for a merge into its left neighbour (the version) |
//! | `sm`         | shard ‖ 0x0C ‖ shard id | a right neighbour this shard merged (the version after) |
//! | `node_meta`  | "identity" | the node's id and cluster name |
//!
//! The two index families (0x04, 0x05) are additions to DESIGN.md's table: expiry
//! and pruning must find due items without scanning every record. The age index has
//! one record per applied entry that stored outcomes (listing their request ids), not
//! one per outcome: a decrement's writes fell from three keys to two plus a share of
//! one, and pruning deletes one index key per entry. The origin shard in its key keeps
//! the records of two shards apart when a merge carries one's records into the other.

use crate::inventory::RequestId;

pub const CF_RAFT_LOG: &str = "raft_log";
pub const CF_RAFT_STATE: &str = "raft_state";
pub const CF_SM: &str = "sm";
pub const CF_NODE_META: &str = "node_meta";
pub const ALL_CFS: [&str; 4] = [CF_RAFT_LOG, CF_RAFT_STATE, CF_SM, CF_NODE_META];

/// The key of the node's identity record in `node_meta`.
pub const NODE_IDENTITY_KEY: &[u8] = b"identity";

/// Tags of the per-shard records in `raft_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StateTag {
    Vote = 1,
    Committed = 2,
    LastPurged = 3,
    /// The shard's range and initial replicas as first configured (or as given when
    /// a move created the replica): its presence says this node holds the shard.
    Descriptor = 4,
    /// This node's replica id in the shard's group (u64 BE); absent: the seeded id.
    ReplicaId = 5,
}

/// Sub-spaces of a shard's state machine prefix in `sm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SmSpace {
    Meta = 0x00,
    Stock = 0x01,
    Reservation = 0x02,
    Outcome = 0x03,
    Timer = 0x04,
    OutcomeAge = 0x05,
    /// The cluster map's nodes (meta shard only): node id (u64 BE).
    ClusterNode = 0x06,
    /// The cluster map's moves under way (meta shard only): shard id (u64 BE).
    ClusterMove = 0x07,
    /// The shard's own bounds (range and epoch version) once a split changed them;
    /// absent: the range its replica was created with. Replicated state, so that a
    /// snapshot carries it.
    Bounds = 0x08,
    /// The cluster map's shards born by splits (meta shard only): shard id (u64 BE);
    /// recording one is how a split allocates its child's id.
    ClusterShard = 0x09,
    /// The shards this shard's splits made: child shard id (u64 BE). Replicated, so
    /// that a replica that catches up by a snapshot taken after a split learns the
    /// child it never applied.
    Child = 0x0A,
    /// Present once the shard is frozen for a merge into its left neighbour (value:
    /// the version the freeze gave it). Replicated, so that a snapshot carries it.
    Frozen = 0x0B,
    /// The right neighbours this shard merged: their shard id (u64 BE), value the
    /// version after the merge. A repeated merge command finds its answer here, and a
    /// node drops its replica of a merged shard once its left neighbour's says so.
    Merged = 0x0C,
}

pub fn log_key(shard_id: u64, index: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&shard_id.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The log index of a `raft_log` key of `shard_id`, or None if the key is not one.
pub fn log_key_index(shard_id: u64, key: &[u8]) -> Option<u64> {
    if key.len() != 16 || key[..8] != shard_id.to_be_bytes() {
        return None;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[8..]);
    Some(u64::from_be_bytes(b))
}

/// `[start, end)` covering every key of `shard_id` in any column family: each key
/// begins with the shard id (u64 BE).
pub fn shard_bounds(shard_id: u64) -> ([u8; 8], [u8; 8]) {
    assert!(shard_id < u64::MAX, "shard ids stay below u64::MAX");
    (shard_id.to_be_bytes(), (shard_id + 1).to_be_bytes())
}

pub fn raft_state_key(shard_id: u64, tag: StateTag) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..8].copy_from_slice(&shard_id.to_be_bytes());
    k[8] = tag as u8;
    k
}

/// The first key of `shard_id`'s state machine prefix, and the first key after it.
/// Shard ids are below `u64::MAX` (config validation), so `shard_id + 1` exists.
pub fn sm_range(shard_id: u64) -> ([u8; 8], [u8; 8]) {
    assert!(shard_id < u64::MAX, "shard id u64::MAX is reserved");
    (shard_id.to_be_bytes(), (shard_id + 1).to_be_bytes())
}

/// The first key of a sub-space and the first key after it.
pub fn sm_space_range(shard_id: u64, space: SmSpace) -> ([u8; 9], [u8; 9]) {
    let mut start = [0u8; 9];
    start[..8].copy_from_slice(&shard_id.to_be_bytes());
    start[8] = space as u8;
    let mut end = start;
    end[8] += 1;
    (start, end)
}

fn sm_key(shard_id: u64, space: SmSpace, rest: &[&[u8]]) -> Vec<u8> {
    let len = 9 + rest.iter().map(|r| r.len()).sum::<usize>();
    let mut k = Vec::with_capacity(len);
    k.extend_from_slice(&shard_id.to_be_bytes());
    k.push(space as u8);
    for r in rest {
        k.extend_from_slice(r);
    }
    k
}

pub fn sm_meta_key(shard_id: u64) -> Vec<u8> {
    sm_key(shard_id, SmSpace::Meta, &[])
}

pub fn cluster_node_key(shard_id: u64, node_id: u64) -> Vec<u8> {
    sm_key(shard_id, SmSpace::ClusterNode, &[&node_id.to_be_bytes()])
}

pub fn cluster_move_key(shard_id: u64, moved_shard_id: u64) -> Vec<u8> {
    sm_key(
        shard_id,
        SmSpace::ClusterMove,
        &[&moved_shard_id.to_be_bytes()],
    )
}

pub fn sm_bounds_key(shard_id: u64) -> Vec<u8> {
    sm_key(shard_id, SmSpace::Bounds, &[])
}

pub fn cluster_shard_key(shard_id: u64, recorded_shard_id: u64) -> Vec<u8> {
    sm_key(
        shard_id,
        SmSpace::ClusterShard,
        &[&recorded_shard_id.to_be_bytes()],
    )
}

pub fn sm_frozen_key(shard_id: u64) -> Vec<u8> {
    sm_key(shard_id, SmSpace::Frozen, &[])
}

pub fn sm_merged_key(shard_id: u64, merged_id: u64) -> Vec<u8> {
    sm_key(shard_id, SmSpace::Merged, &[&merged_id.to_be_bytes()])
}

pub fn sm_child_key(shard_id: u64, child_id: u64) -> Vec<u8> {
    sm_key(shard_id, SmSpace::Child, &[&child_id.to_be_bytes()])
}

/// `key` (a key of some shard's state machine) with its shard prefix replaced by
/// `shard_id`'s: how a split files a parent's record under its child.
pub fn with_shard(key: &[u8], shard_id: u64) -> Vec<u8> {
    assert!(
        key.len() >= 8,
        "a state machine key starts with its shard id"
    );
    let mut k = Vec::with_capacity(key.len());
    k.extend_from_slice(&shard_id.to_be_bytes());
    k.extend_from_slice(&key[8..]);
    k
}

/// `key` (a key of `shard_id`'s state machine) without its shard prefix: how a
/// merge carries a record in its neighbour's log.
pub fn without_shard(key: &[u8]) -> &[u8] {
    assert!(
        key.len() >= 8,
        "a state machine key starts with its shard id"
    );
    &key[8..]
}

/// A record carried by a merge (`without_shard`), filed under `shard_id`.
pub fn under_shard(rest: &[u8], shard_id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + rest.len());
    k.extend_from_slice(&shard_id.to_be_bytes());
    k.extend_from_slice(rest);
    k
}

pub fn stock_key(shard_id: u64, sku: &str) -> Vec<u8> {
    sm_key(shard_id, SmSpace::Stock, &[sku.as_bytes()])
}

/// The SKU of a stock key of `shard_id`.
pub fn stock_key_sku(shard_id: u64, key: &[u8]) -> Option<&str> {
    let (start, _) = sm_space_range(shard_id, SmSpace::Stock);
    key.strip_prefix(&start[..])
        .and_then(|s| std::str::from_utf8(s).ok())
}

pub fn reservation_key(shard_id: u64, reservation_id: &str) -> Vec<u8> {
    sm_key(shard_id, SmSpace::Reservation, &[reservation_id.as_bytes()])
}

pub fn outcome_key(shard_id: u64, request_id: &RequestId) -> Vec<u8> {
    sm_key(shard_id, SmSpace::Outcome, &[request_id])
}

pub fn timer_key(shard_id: u64, timer_ms: u64, reservation_id: &str) -> Vec<u8> {
    sm_key(
        shard_id,
        SmSpace::Timer,
        &[&timer_ms.to_be_bytes(), reservation_id.as_bytes()],
    )
}

/// (timer ms, reservation id) of a timer key of `shard_id`.
pub fn parse_timer_key(shard_id: u64, key: &[u8]) -> Option<(u64, String)> {
    let (start, _) = sm_space_range(shard_id, SmSpace::Timer);
    let rest = key.strip_prefix(&start[..])?;
    if rest.len() < 8 {
        return None;
    }
    let (ms, id) = rest.split_at(8);
    let ms = u64::from_be_bytes(ms.try_into().ok()?);
    Some((ms, std::str::from_utf8(id).ok()?.to_string()))
}

/// The age-index record of the outcomes that entry `log_index` of shard `origin_shard`
/// stored at `applied_at_ms`, filed under `shard_id` (the origin, or the shard a merge
/// carried the record into).
pub fn outcome_age_key(
    shard_id: u64,
    applied_at_ms: u64,
    origin_shard: u64,
    log_index: u64,
) -> Vec<u8> {
    sm_key(
        shard_id,
        SmSpace::OutcomeAge,
        &[
            &applied_at_ms.to_be_bytes(),
            &origin_shard.to_be_bytes(),
            &log_index.to_be_bytes(),
        ],
    )
}

/// The first age-index key of `shard_id` at or after `applied_at_ms`.
pub fn outcome_age_from(shard_id: u64, applied_at_ms: u64) -> Vec<u8> {
    outcome_age_key(shard_id, applied_at_ms, 0, 0)
}

/// The applied ms of an outcome age key of `shard_id`.
pub fn parse_outcome_age_key(shard_id: u64, key: &[u8]) -> Option<u64> {
    let (start, _) = sm_space_range(shard_id, SmSpace::OutcomeAge);
    let rest = key.strip_prefix(&start[..])?;
    if rest.len() != 24 {
        return None;
    }
    Some(u64::from_be_bytes(rest[..8].try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_order_by_shard_then_index() {
        assert!(log_key(1, 5) < log_key(1, 6));
        assert!(
            log_key(1, 255) < log_key(1, 256),
            "big-endian keeps numeric order across bytes"
        );
        assert!(
            log_key(1, u64::MAX) < log_key(2, 0),
            "a shard's log never interleaves with the next"
        );
        assert_eq!(log_key_index(7, &log_key(7, 42)), Some(42));
        assert_eq!(log_key_index(8, &log_key(7, 42)), None);
    }

    #[test]
    fn sm_keys_stay_inside_their_shard_and_space() {
        let (start, end) = sm_range(3);
        for key in [
            sm_meta_key(3),
            stock_key(3, "zzz"),
            reservation_key(3, "r"),
            outcome_key(3, &[0xff; 16]),
            timer_key(3, u64::MAX, "x"),
        ] {
            assert!(
                key.as_slice() >= &start[..] && key.as_slice() < &end[..],
                "{key:?} outside shard 3"
            );
        }
        let (s, e) = sm_space_range(3, SmSpace::Stock);
        let k = stock_key(3, "\u{10FFFF}");
        assert!(k.as_slice() >= &s[..] && k.as_slice() < &e[..]);
        assert!(
            stock_key(3, "a") < stock_key(3, "ab"),
            "SKU order is byte order"
        );
        assert!(stock_key(3, "ab") < stock_key(3, "b"));
        assert_eq!(stock_key_sku(3, &stock_key(3, "sku-1")), Some("sku-1"));
        assert_eq!(stock_key_sku(4, &stock_key(3, "sku-1")), None);
    }

    #[test]
    fn index_keys_order_by_time_and_parse_back() {
        assert!(timer_key(1, 9, "zzz") < timer_key(1, 10, "a"));
        assert_eq!(
            parse_timer_key(1, &timer_key(1, 77, "res-1")),
            Some((77, "res-1".to_string()))
        );
        assert!(outcome_age_key(1, 9, u64::MAX, u64::MAX) < outcome_age_key(1, 10, 0, 0));
        assert!(outcome_age_from(1, 10) <= outcome_age_key(1, 10, 0, 1));
        assert_eq!(
            parse_outcome_age_key(1, &outcome_age_key(1, 5, 3, 77)),
            Some(5)
        );
        assert_eq!(
            parse_outcome_age_key(2, &outcome_age_key(1, 5, 3, 77)),
            None
        );
    }
}
