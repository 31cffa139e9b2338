//! A split, applied: the parent's state divided at one SKU between itself and a new
//! child shard, in one write batch at the split entry's log index, identically on
//! every replica (DESIGN.md: split is an entry in the parent's log).
//!
//! What moves and why:
//! - stock records at or after the split SKU go to the child;
//! - a reservation goes with its items; a closed one whose items lie on both sides
//!   is copied to both (it holds no stock; `GetReservation` finds it from either
//!   side); an active one on both sides refuses the split (its hold could not be
//!   confirmed as one);
//! - every stored outcome (and its age) is copied to both children: an outcome does
//!   not say which SKUs it touched in every case, and a retry of the request reaches
//!   whichever side owns its SKU now, so both must remember it;
//! - the child's Raft state starts as if it had applied and purged one entry at the
//!   default log id with the parent's membership: its group elects from there, and a
//!   replica that lacks this state is sent a snapshot, never an empty log replay.
//!   (openraft reads it as any replica that installed a snapshot and purged its log.)

use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch};

use super::SmMeta;
use crate::codec;
use crate::inventory::cluster::ClusterOutcome;
use crate::inventory::{Reservation, ReservationState};
use crate::raft::replica_id;
use crate::raft::types::{LogId, StoredMembership};
use crate::router::{ShardBounds, SkuRange};
use crate::storage::db::cf;
use crate::storage::error::Result;
use crate::storage::keys::{self, CF_RAFT_STATE, CF_SM, SmSpace, StateTag};
use crate::storage::node_meta;

/// A child a split made, as its parent remembers it (`SmSpace::Child`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChildRecord {
    pub child: u64,
    pub start: String,
    pub end: String,
    /// The node ids of its first replicas (the parent's voters at the split).
    pub replicas: Vec<u64>,
}

/// A split to apply, as the parent's log carries it.
pub(super) struct Split<'a> {
    pub parent: u64,
    pub child: u64,
    pub at: &'a str,
    pub expected_version: u64,
    /// This node's replica id in the parent: its id in the child too (the child is a
    /// new group, so no id of it was ever used).
    pub replica_id: u64,
}

/// What the split did: its outcome, and the parent's bounds after it.
pub(super) struct Divided {
    pub outcome: ClusterOutcome,
    pub parent_bounds: ShardBounds,
}

fn refused(problem: String, bounds: &ShardBounds) -> Divided {
    Divided {
        outcome: ClusterOutcome::Refused { problem },
        parent_bounds: bounds.clone(),
    }
}

/// Why the split cannot be applied to a parent at `bounds` with `meta`, if so.
fn precondition(split: &Split<'_>, bounds: &ShardBounds, meta: &SmMeta) -> Option<String> {
    let r = &bounds.range;
    let membership = meta.membership.membership();
    if bounds.frozen {
        Some(format!("shard {} is frozen for a merge", split.parent))
    } else if bounds.version != split.expected_version {
        Some(format!(
            "shard {} is at version {}, not the expected {}",
            split.parent, bounds.version, split.expected_version
        ))
    } else if split.at <= r.start.as_str() || !r.contains(split.at) {
        Some(format!(
            "the split SKU {:?} is not inside the shard's range {r} after its first SKU",
            split.at
        ))
    } else if membership.get_joint_config().len() > 1 || membership.learner_ids().count() > 0 {
        Some(format!(
            "shard {} is changing its replicas; split after the move",
            split.parent
        ))
    } else {
        None
    }
}

/// Applies `split` to the parent (whose committed state is in `db`) into `batch`.
/// `meta` is the parent's meta, already at the split entry's log id.
pub(super) fn divide(
    db: &DB,
    batch: &mut WriteBatch,
    split: &Split<'_>,
    bounds: &ShardBounds,
    meta: &SmMeta,
) -> Result<Divided> {
    if let Some(problem) = precondition(split, bounds, meta) {
        return Ok(refused(problem, bounds));
    }
    let reservations = reservations_of(db, split.parent)?;
    if let Some(r) = reservations
        .iter()
        .find(|r| r.state == ReservationState::Active && side_of(r, split.at).is_none())
    {
        return Ok(refused(
            format!(
                "active reservation {:?} holds SKUs on both sides of {:?}; split elsewhere or after it closes",
                r.id, split.at
            ),
            bounds,
        ));
    }
    let version = bounds.version + 1;
    let parent_bounds = ShardBounds {
        range: SkuRange {
            start: bounds.range.start.clone(),
            end: split.at.to_string(),
        },
        version,
        frozen: false,
    };
    let child_bounds = ShardBounds {
        range: SkuRange {
            start: split.at.to_string(),
            end: bounds.range.end.clone(),
        },
        version,
        frozen: false,
    };
    move_stock(db, batch, split)?;
    divide_reservations(db, batch, split, &reservations)?;
    copy_space(db, batch, split, SmSpace::Outcome)?;
    copy_space(db, batch, split, SmSpace::OutcomeAge)?;
    let sm = cf(db, CF_SM)?;
    batch.put_cf(
        sm,
        keys::sm_bounds_key(split.parent),
        codec::encode(&parent_bounds)?,
    );
    batch.put_cf(
        sm,
        keys::sm_bounds_key(split.child),
        codec::encode(&child_bounds)?,
    );
    let child = start_child(db, batch, split, &child_bounds, meta)?;
    batch.put_cf(
        sm,
        keys::sm_child_key(split.parent, split.child),
        codec::encode(&child)?,
    );
    Ok(Divided {
        outcome: ClusterOutcome::Done,
        parent_bounds,
    })
}

/// The child's meta and Raft state: applied and purged at the default log id, with
/// the parent's membership, so that it is a voter of an initialized group at once.
fn start_child(
    db: &DB,
    batch: &mut WriteBatch,
    split: &Split<'_>,
    child_bounds: &ShardBounds,
    parent_meta: &SmMeta,
) -> Result<ChildRecord> {
    // Term 0, node 0 (no replica has id 0), index 0: the same on every replica.
    let origin = LogId::new(
        openraft::impls::leader_id_adv::LeaderId {
            term: 0,
            node_id: 0,
        },
        0,
    );
    let membership = parent_meta.membership.membership().clone();
    let replicas: Vec<u64> = membership.voter_ids().map(replica_id::node_of).collect();
    let child_meta = SmMeta {
        last_applied: Some(origin),
        membership: StoredMembership::new(Some(origin), membership),
        clock_ms: parent_meta.clock_ms,
        outcomes_count: parent_meta.outcomes_count,
    };
    batch.put_cf(
        cf(db, CF_SM)?,
        keys::sm_meta_key(split.child),
        codec::encode(&child_meta)?,
    );
    let descriptor = node_meta::ShardDescriptor {
        start: child_bounds.range.start.clone(),
        end: child_bounds.range.end.clone(),
        replicas: replicas.clone(),
    };
    let state = cf(db, CF_RAFT_STATE)?;
    batch.put_cf(
        state,
        keys::raft_state_key(split.child, StateTag::Descriptor),
        codec::encode(&descriptor)?,
    );
    batch.put_cf(
        state,
        keys::raft_state_key(split.child, StateTag::ReplicaId),
        split.replica_id.to_be_bytes(),
    );
    batch.put_cf(
        state,
        keys::raft_state_key(split.child, StateTag::LastPurged),
        codec::encode(&origin)?,
    );
    Ok(ChildRecord {
        child: split.child,
        start: child_bounds.range.start.clone(),
        end: child_bounds.range.end.clone(),
        replicas,
    })
}

/// After a snapshot of `parent` was installed here: each child its splits made that
/// this node holds no replica of is recorded as an empty replica with this node's
/// parent replica id (`replica_id`), for the map follower to start and the child's
/// leader to fill by a snapshot (its log starts past the origin, so it never replays
/// from an empty state). A node that never applied the split never voted in the
/// child's group, so the empty replica is as safe as a new learner. Returns the ids.
pub(super) fn adopt_children(db: &DB, parent: u64, replica_id: u64) -> Result<Vec<u64>> {
    let (start, _) = keys::sm_space_range(parent, SmSpace::Child);
    let state = cf(db, CF_RAFT_STATE)?;
    let mut batch = WriteBatch::default();
    let mut adopted = Vec::new();
    for (_, v) in scan(db, parent, SmSpace::Child, &start)? {
        let child: ChildRecord = codec::decode(&v)?;
        let held = db.get_pinned_cf(
            state,
            keys::raft_state_key(child.child, StateTag::Descriptor),
        )?;
        if held.is_some() {
            continue;
        }
        let descriptor = node_meta::ShardDescriptor {
            start: child.start,
            end: child.end,
            replicas: child.replicas,
        };
        batch.put_cf(
            state,
            keys::raft_state_key(child.child, StateTag::Descriptor),
            codec::encode(&descriptor)?,
        );
        batch.put_cf(
            state,
            keys::raft_state_key(child.child, StateTag::ReplicaId),
            replica_id.to_be_bytes(),
        );
        adopted.push(child.child);
    }
    if !adopted.is_empty() {
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        db.write_opt(batch, &opts)?;
    }
    Ok(adopted)
}

/// A raw RocksDB key and value.
type Kv = (Box<[u8]>, Box<[u8]>);

/// Every (key, value) of `space` in `shard`'s state machine from `from` on.
pub(super) fn scan(db: &DB, shard: u64, space: SmSpace, from: &[u8]) -> Result<Vec<Kv>> {
    let (_, end) = keys::sm_space_range(shard, space);
    let mut opts = ReadOptions::default();
    opts.set_iterate_upper_bound(end.to_vec());
    let mut out = Vec::new();
    for item in db.iterator_cf_opt(
        cf(db, CF_SM)?,
        opts,
        IteratorMode::From(from, Direction::Forward),
    ) {
        out.push(item?);
    }
    Ok(out)
}

fn move_stock(db: &DB, batch: &mut WriteBatch, split: &Split<'_>) -> Result<()> {
    let sm = cf(db, CF_SM)?;
    for (k, v) in scan(
        db,
        split.parent,
        SmSpace::Stock,
        &keys::stock_key(split.parent, split.at),
    )? {
        batch.put_cf(sm, keys::with_shard(&k, split.child), &v);
        batch.delete_cf(sm, &k);
    }
    Ok(())
}

fn reservations_of(db: &DB, shard: u64) -> Result<Vec<Reservation>> {
    let (start, _) = keys::sm_space_range(shard, SmSpace::Reservation);
    scan(db, shard, SmSpace::Reservation, &start)?
        .iter()
        .map(|(_, v)| Ok(codec::decode(v)?))
        .collect()
}

/// Which side of `at` a reservation's items lie on: Some(true) after, Some(false)
/// before, None both.
fn side_of(r: &Reservation, at: &str) -> Option<bool> {
    let after = r.items.iter().filter(|i| i.sku.as_str() >= at).count();
    match after {
        0 => Some(false),
        n if n == r.items.len() => Some(true),
        _ => None,
    }
}

fn divide_reservations(
    db: &DB,
    batch: &mut WriteBatch,
    split: &Split<'_>,
    reservations: &[Reservation],
) -> Result<()> {
    let sm = cf(db, CF_SM)?;
    for r in reservations {
        let side = side_of(r, split.at);
        if side == Some(false) {
            continue;
        }
        let key = keys::reservation_key(split.parent, &r.id);
        let timer = keys::timer_key(split.parent, r.timer_ms, &r.id);
        batch.put_cf(sm, keys::with_shard(&key, split.child), codec::encode(r)?);
        batch.put_cf(
            sm,
            keys::with_shard(&timer, split.child),
            codec::encode(&())?,
        );
        if side == Some(true) {
            batch.delete_cf(sm, &key);
            batch.delete_cf(sm, &timer);
        }
    }
    Ok(())
}

fn copy_space(db: &DB, batch: &mut WriteBatch, split: &Split<'_>, space: SmSpace) -> Result<()> {
    let sm = cf(db, CF_SM)?;
    let (start, _) = keys::sm_space_range(split.parent, space);
    for (k, v) in scan(db, split.parent, space, &start)? {
        batch.put_cf(sm, keys::with_shard(&k, split.child), &v);
    }
    Ok(())
}
