//! A merge, applied in two entries (DESIGN.md: merge; as TiKV's prepare/commit merge,
//! with the right shard's state carried in the left shard's log):
//!
//! 1. `Freeze` in the right shard's log: from that index on it applies nothing, so
//!    its state is final; its version grows, its range stays (the map follower keeps
//!    it until the left shard covers it).
//! 2. `Merge` in the left shard's log, carrying the frozen shard's records
//!    (`MergeSource`, read on the left shard's leader from its own replica of the
//!    frozen shard): every replica of the left shard files them under its own prefix
//!    and grows its range to the frozen shard's end, at one log index. A replica needs
//!    nothing but its own log, whatever its replica of the frozen shard has applied.
//!
//! A merge never runs backwards: once frozen, a shard's range is served again only by
//! its left neighbour, so that no two shards ever both serve a SKU (a thaw racing a
//! merge entry in flight could not be told apart from one that lost). A frozen shard
//! whose merge did not finish is driven again by its left neighbour's leader
//! (`node::merge`).

use rocksdb::{DB, WriteBatch};

use super::SmMeta;
use super::split::scan;
use crate::codec;
use crate::inventory::MergeSource;
use crate::inventory::cluster::ClusterOutcome;
use crate::router::{ShardBounds, SkuRange};
use crate::storage::db::cf;
use crate::storage::error::Result;
use crate::storage::keys::{self, CF_SM, SmSpace};

/// The sub-spaces a merge carries: the shard's data. Meta, bounds, children, merges
/// and the frozen mark stay behind (the left shard keeps its own).
const CARRIED: [SmSpace; 5] = [
    SmSpace::Stock,
    SmSpace::Reservation,
    SmSpace::Outcome,
    SmSpace::Timer,
    SmSpace::OutcomeAge,
];

/// Why a shard at `bounds` with `meta` cannot take a freeze or a merge, if so.
fn precondition(
    shard: u64,
    expected_version: u64,
    bounds: &ShardBounds,
    meta: &SmMeta,
) -> Option<String> {
    let membership = meta.membership.membership();
    if bounds.frozen {
        Some(format!("shard {shard} is frozen for a merge"))
    } else if bounds.version != expected_version {
        Some(format!(
            "shard {shard} is at version {}, not the expected {expected_version}",
            bounds.version
        ))
    } else if membership.get_joint_config().len() > 1 || membership.learner_ids().count() > 0 {
        Some(format!(
            "shard {shard} is changing its replicas; merge after the move"
        ))
    } else {
        None
    }
}

/// What a freeze or merge did: its outcome, and the shard's bounds after it.
pub(super) struct Reshaped {
    pub outcome: ClusterOutcome,
    pub bounds: ShardBounds,
}

fn refused(problem: String, bounds: &ShardBounds) -> Reshaped {
    Reshaped {
        outcome: ClusterOutcome::Refused { problem },
        bounds: bounds.clone(),
    }
}

/// Applies a freeze of `shard` into `batch`.
pub(super) fn freeze(
    db: &DB,
    batch: &mut WriteBatch,
    shard: u64,
    expected_version: u64,
    bounds: &ShardBounds,
    meta: &SmMeta,
) -> Result<Reshaped> {
    if let Some(problem) = precondition(shard, expected_version, bounds, meta) {
        return Ok(refused(problem, bounds));
    }
    if bounds.range.start.is_empty() {
        return Ok(refused(
            format!("shard {shard} starts the SKU space: it has no left neighbour"),
            bounds,
        ));
    }
    let frozen = ShardBounds {
        range: bounds.range.clone(),
        version: bounds.version + 1,
        frozen: true,
    };
    let sm = cf(db, CF_SM)?;
    batch.put_cf(sm, keys::sm_bounds_key(shard), codec::encode(&frozen)?);
    batch.put_cf(
        sm,
        keys::sm_frozen_key(shard),
        codec::encode(&frozen.version)?,
    );
    Ok(Reshaped {
        outcome: ClusterOutcome::Done,
        bounds: frozen,
    })
}

/// The frozen `shard`'s state, for a merge entry in its left neighbour's log.
pub fn source(db: &DB, shard: u64, bounds: &ShardBounds, meta: &SmMeta) -> Result<MergeSource> {
    assert!(bounds.frozen, "a merge carries a frozen shard only");
    let mut records = Vec::new();
    for space in CARRIED {
        let (start, _) = keys::sm_space_range(shard, space);
        for (k, v) in scan(db, shard, space, &start)? {
            records.push((keys::without_shard(&k).to_vec(), v.into_vec()));
        }
    }
    Ok(MergeSource {
        shard_id: shard,
        start: bounds.range.start.clone(),
        end: bounds.range.end.clone(),
        version: bounds.version,
        clock_ms: meta.clock_ms,
        records,
    })
}

/// Applies a merge of `source` into `shard` (left of it) into `batch`; `meta` is the
/// left shard's meta at the merge entry, its clock and outcome count updated here.
pub(super) fn absorb(
    db: &DB,
    batch: &mut WriteBatch,
    shard: u64,
    source: &MergeSource,
    expected_version: u64,
    bounds: &ShardBounds,
    meta: &mut SmMeta,
) -> Result<Reshaped> {
    if let Some(problem) = precondition(shard, expected_version, bounds, meta) {
        return Ok(refused(problem, bounds));
    }
    if bounds.range.end.is_empty() || bounds.range.end != source.start {
        return Ok(refused(
            format!(
                "shard {shard} {} does not end where shard {} starts ({:?})",
                bounds.range, source.shard_id, source.start
            ),
            bounds,
        ));
    }
    let sm = cf(db, CF_SM)?;
    let mut new_outcomes = 0u64;
    for (rest, value) in &source.records {
        assert!(
            CARRIED.iter().any(|s| rest.first() == Some(&(*s as u8))),
            "a merge carries data records only"
        );
        let key = keys::under_shard(rest, shard);
        // A split copied outcomes to both halves: the same request id may be stored
        // on both sides (with the same value); it is counted once.
        if rest.first() == Some(&(SmSpace::Outcome as u8)) && db.get_pinned_cf(sm, &key)?.is_none()
        {
            new_outcomes += 1;
        }
        batch.put_cf(sm, key, value);
    }
    meta.outcomes_count += new_outcomes;
    meta.clock_ms = meta.clock_ms.max(source.clock_ms);
    let merged = ShardBounds {
        range: SkuRange {
            start: bounds.range.start.clone(),
            end: source.end.clone(),
        },
        version: bounds.version.max(source.version) + 1,
        frozen: false,
    };
    batch.put_cf(sm, keys::sm_bounds_key(shard), codec::encode(&merged)?);
    batch.put_cf(
        sm,
        keys::sm_merged_key(shard, source.shard_id),
        codec::encode(&merged.version)?,
    );
    // A child this shard's split made and now merged back is no child any more: a
    // replica installing a later snapshot must not record it as a replica to start.
    batch.delete_cf(sm, keys::sm_child_key(shard, source.shard_id));
    Ok(Reshaped {
        outcome: ClusterOutcome::Done,
        bounds: merged,
    })
}
