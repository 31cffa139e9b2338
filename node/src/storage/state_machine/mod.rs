//! A shard's state machine in the node's RocksDB (`sm` column family, the shard's
//! prefix), implementing openraft's `RaftStateMachine`.
//!
//! `apply` runs the pure `inventory::apply` over an [`Overlay`] that reads through
//! to RocksDB and collects every write, for all entries of the call, in one write
//! batch together with the new applied log id: a crash leaves either all of a batch
//! or none of it. Writes are not synced here; the WAL is synced by the next log
//! append or before any purge.

mod hints;
mod merge;
mod meta;
mod overlay;
mod split;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{Stream, StreamExt};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use rocksdb::{DB, WriteBatch, WriteOptions};

use super::Store;
use super::WriteFence;
use super::db::cf;
use super::error::StorageError;
use super::keys::CF_SM;
use super::snapshot;
use crate::inventory::{self, ShardRequest, ShardResponse};
use crate::inventory::{Command, OpGroup, OpResult, Outcome, Rejection};
use crate::raft::types::{
    Entry, EntryResponder, LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership,
    TypeConfig,
};
use crate::router::{LiveBounds, ShardBounds, ShardId, SkuRange};
use crate::telemetry::names;
use hints::{Hint, Hints};
pub use meta::{SmMeta, read_meta};
use overlay::Overlay;
pub use split::ChildRecord;

/// Counters of what state machines applied, shared by a node's shards: the one
/// source of these counts (status reads them; telemetry publishes them).
#[derive(Debug, Default)]
pub struct ApplyStats {
    /// Operations executed for the first time.
    pub ops_applied: AtomicU64,
    /// Operations answered from a stored outcome (retries).
    pub ops_replayed: AtomicU64,
    /// Normal log entries applied.
    pub entries_applied: AtomicU64,
}

pub struct StateMachineStore {
    /// The shard's id as its keys spell it.
    shard_id: u64,
    /// This node's replica id in the shard (a split's child takes it too).
    replica_id: u64,
    /// The shard's range and version: an operation on a SKU outside the range is not
    /// applied (`SHARD_MOVED`: a split committed between its proposal and its apply).
    bounds: LiveBounds,
    /// Kept in memory only; reset on start and snapshot install.
    hints: Hints,
    /// The node's database; also told when an apply records replicas to start.
    store: Store,
    snapshot_dir: PathBuf,
    /// Closed before the replica's data is deleted: every write here passes it.
    fence: WriteFence,
    /// A copy of the stored meta, kept in step with every applied batch.
    meta: SmMeta,
    stats: Arc<ApplyStats>,
    /// The earliest reservation timer after the last apply, for the leader's expiry
    /// sweep: `u64::MAX` none, 0 unknown (read the index).
    next_timer_ms: Arc<AtomicU64>,
    /// What an entry's log id must be to apply: `Contiguous` unless a test's fixtures
    /// skip indexes.
    order: ApplyOrder,
}

/// What `apply` requires of each entry's log id, relative to the last one applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyOrder {
    /// The next index (and a log id no lower): openraft's core applies so. Every
    /// replica applies the same entries in the same order; one skipped, say a command
    /// lost between openraft and this state machine, would leave this replica at its
    /// peers' applied index with a different state, a divergence no check would see.
    /// A gap stops the node instead (the assert is on in release).
    Contiguous,
    /// Any higher log id: openraft's storage conformance suite applies fixtures with
    /// gaps between their indexes.
    Increasing,
}

impl ApplyOrder {
    /// Asserts that `next` may follow `prev`, the last log id applied. A replica's first
    /// entry follows whatever it starts from: a fresh group, a snapshot, a split's origin.
    fn assert_next(self, shard_id: u64, prev: Option<LogId>, next: LogId) {
        let Some(prev) = prev else { return };
        let follows = match self {
            ApplyOrder::Contiguous => next.index == prev.index + 1 && next > prev,
            ApplyOrder::Increasing => next > prev,
        };
        assert!(
            follows,
            "shard {shard_id}: applying {next} after {prev}: entries apply in order \
             ({self:?})"
        );
    }
}

fn joined<T>(r: Result<T, tokio::task::JoinError>) -> Result<T, StorageError> {
    r.map_err(|e| StorageError::Io(io::Error::other(e)))
}

impl StateMachineStore {
    /// The shared earliest-timer hint (see `next_timer_ms`), for the shard's sweeper.
    pub fn next_timer_handle(&self) -> Arc<AtomicU64> {
        self.next_timer_ms.clone()
    }

    /// The shared bounds (see `bounds`), for the shard's propose-time and read checks.
    pub fn bounds_handle(&self) -> LiveBounds {
        self.bounds.clone()
    }

    /// Opens replica `replica_id` of `shard_id`, created with `range` (its bounds
    /// once a split changed them), writing only while `fence` is open.
    pub fn open(
        shard_id: ShardId,
        replica_id: u64,
        range: SkuRange,
        store: &Store,
        snapshot_dir: PathBuf,
        stats: Arc<ApplyStats>,
        fence: WriteFence,
    ) -> Result<Self, StorageError> {
        std::fs::create_dir_all(&snapshot_dir)?;
        snapshot::remove_leftovers(&snapshot_dir, shard_id.0)?;
        let meta = read_meta(store.db(), shard_id.0)?;
        let bounds = read_bounds(store.db(), shard_id.0)?.unwrap_or(ShardBounds {
            range,
            version: 0,
            frozen: false,
        });
        Ok(StateMachineStore {
            next_timer_ms: Arc::new(AtomicU64::new(0)),
            hints: Hints::UNKNOWN,
            shard_id: shard_id.0,
            replica_id,
            bounds: LiveBounds::new(bounds),
            store: store.clone(),
            snapshot_dir,
            fence,
            meta,
            stats,
            order: ApplyOrder::Contiguous,
        })
    }

    /// The same store, applying any higher log id (`ApplyOrder::Increasing`): for
    /// openraft's storage conformance suite only.
    pub fn with_order(self, order: ApplyOrder) -> Self {
        StateMachineStore { order, ..self }
    }
}

/// The shard's bounds as stored after a split, freeze or merge (None: never
/// changed), frozen when the shard's frozen mark is there.
pub(crate) fn read_bounds(db: &DB, shard_id: u64) -> Result<Option<ShardBounds>, StorageError> {
    let cf = cf(db, CF_SM)?;
    let Some(bytes) = db.get_pinned_cf(cf, super::keys::sm_bounds_key(shard_id))? else {
        return Ok(None);
    };
    let mut bounds: ShardBounds = crate::codec::decode(&bytes)?;
    bounds.frozen = db
        .get_pinned_cf(cf, super::keys::sm_frozen_key(shard_id))?
        .is_some();
    Ok(Some(bounds))
}

/// The frozen `shard_id`'s state for a merge entry (`merge::source`); None when the
/// shard is not frozen here (yet).
pub fn merge_source(
    db: &DB,
    shard_id: u64,
) -> Result<Option<crate::inventory::MergeSource>, StorageError> {
    // A frozen shard applies nothing more, so these reads need no snapshot.
    match read_bounds(db, shard_id)? {
        Some(bounds) if bounds.frozen => {
            let meta = read_meta(db, shard_id)?;
            Ok(Some(merge::source(db, shard_id, &bounds, &meta)?))
        }
        _ => Ok(None),
    }
}

/// Asserts that the meta shard applies only cluster commands and the other shards
/// none, and that a split, freeze or merge comes alone in its entry.
fn assert_commands(shard_id: u64, request: &ShardRequest) {
    let ops: Vec<_> = request.groups.iter().flat_map(|g| g.ops.iter()).collect();
    for op in &ops {
        let cluster = matches!(op.command, Command::Cluster(_));
        assert_eq!(
            cluster,
            shard_id == crate::router::META_SHARD_ID.0,
            "shard {shard_id}: a {} command",
            op.command.name()
        );
        let alone = matches!(
            op.command,
            Command::Split { .. } | Command::Freeze { .. } | Command::Merge { .. }
        );
        assert!(
            !alone || ops.len() == 1,
            "shard {shard_id}: a {} shares its entry",
            op.command.name()
        );
    }
}

/// The results of a group that may not be applied here: SHARD_MOVED per operation,
/// naming `sku`, nothing stored.
fn moved(sku: &str, ops: usize) -> Vec<OpResult> {
    let result = OpResult {
        outcome: Outcome::Rejected(Rejection::ShardMoved {
            sku: sku.to_string(),
        }),
        replayed: false,
    };
    vec![result; ops]
}

/// The first SKU of `group` this shard does not own (`bounds`), if any.
fn outside<'a>(group: &'a OpGroup, bounds: &ShardBounds) -> Option<&'a str> {
    let sku = group
        .ops
        .iter()
        .flat_map(|op| op.command.skus())
        .find(|sku| !bounds.owns(sku));
    #[cfg(feature = "planted-bugs")]
    let sku = sku.filter(|_| crate::planted::active() != crate::planted::Bug::SplitRangeUnchecked);
    sku
}

/// `request` without its groups naming a SKU this shard does not own, and the
/// results those groups get instead (by group index). Almost every entry is wholly
/// inside: it is returned as it is, nothing copied.
fn within_bounds(
    request: ShardRequest,
    bounds: &ShardBounds,
) -> (ShardRequest, Vec<(usize, Vec<OpResult>)>) {
    if request.groups.iter().all(|g| outside(g, bounds).is_none()) {
        return (request, Vec::new());
    }
    let ShardRequest {
        now_ms,
        retention,
        groups,
    } = request;
    let mut kept = Vec::with_capacity(groups.len());
    let mut moved_groups = Vec::new();
    for (i, group) in groups.into_iter().enumerate() {
        match outside(&group, bounds) {
            None => kept.push(group),
            Some(sku) => moved_groups.push((i, moved(sku, group.ops.len()))),
        }
    }
    let filtered = ShardRequest {
        now_ms,
        retention,
        groups: kept,
    };
    (filtered, moved_groups)
}

/// The command of an entry the state machine applies alone and itself (a split, a
/// freeze, a merge), if it is one.
fn alone_of(entry: &Entry) -> Option<&Command> {
    match &entry.payload {
        EntryPayload::Normal(r) => {
            let command = &r.groups.first()?.ops.first()?.command;
            matches!(
                command,
                Command::Split { .. } | Command::Freeze { .. } | Command::Merge { .. }
            )
            .then_some(command)
        }
        _ => None,
    }
}

/// Applies one entry to the overlay; returns its response and (applied, replayed) ops.
fn apply_entry(
    overlay: &mut Overlay<'_>,
    entry: Entry,
    bounds: &ShardBounds,
    order: ApplyOrder,
) -> Result<(ShardResponse, u64, u64), StorageError> {
    let log_id = entry.log_id;
    order.assert_next(overlay.shard_id(), overlay.meta.last_applied, log_id);
    overlay.meta.last_applied = Some(log_id);
    Ok(match entry.payload {
        EntryPayload::Blank => (ShardResponse::default(), 0, 0),
        EntryPayload::Normal(request) if bounds.refuses_all() => {
            // Frozen for a merge: nothing is applied, not even the clock's expiries,
            // so that the state the merge copied stays the shard's last.
            let groups = request
                .groups
                .iter()
                .map(|g| {
                    moved(
                        g.ops
                            .iter()
                            .flat_map(|op| op.command.skus())
                            .next()
                            .unwrap_or(""),
                        g.ops.len(),
                    )
                })
                .collect();
            (ShardResponse { groups }, 0, 0)
        }
        EntryPayload::Normal(request) => {
            let (request, moved) = within_bounds(request, bounds);
            let mut response = inventory::apply(overlay, &request)?;
            overlay.file_outcomes(log_id.index);
            overlay.take_error()?;
            for (i, results) in moved {
                response.groups.insert(i, results);
            }
            let replayed = response
                .groups
                .iter()
                .flatten()
                .filter(|r| r.replayed)
                .count() as u64;
            let total = response.groups.iter().map(Vec::len).sum::<usize>() as u64;
            (response, total - replayed, replayed)
        }
        EntryPayload::Membership(m) => {
            overlay.meta.membership = StoredMembership::new(Some(log_id), m);
            (ShardResponse::default(), 0, 0)
        }
    })
}

impl StateMachineStore {
    /// Applies `run` (no split, freeze or merge among them) in one write batch, then answers.
    fn apply_run(&mut self, run: Vec<EntryResponder>) -> Result<(), StorageError> {
        if run.is_empty() {
            return Ok(());
        }
        let db = self.store.db().clone();
        let cf = cf(&db, CF_SM)?;
        let mut meta = self.meta.clone();
        let mut replies = Vec::new();
        let (mut applied, mut replayed, mut normal) = (0u64, 0u64, 0u64);
        let bounds = self.bounds.get();
        let batch = {
            let mut overlay = Overlay::new(self.shard_id, &db, cf, &mut meta, &mut self.hints);
            overlay.read_ahead(run.iter().filter_map(|(entry, _)| match &entry.payload {
                EntryPayload::Normal(request) => Some(request),
                _ => None,
            }))?;
            for (entry, responder) in run {
                if let EntryPayload::Normal(request) = &entry.payload {
                    normal += 1;
                    assert_commands(self.shard_id, request);
                }
                let (response, a, r) = apply_entry(&mut overlay, entry, &bounds, self.order)?;
                (applied, replayed) = (applied + a, replayed + r);
                if let Some(responder) = responder {
                    replies.push((responder, response));
                }
            }
            overlay.resolve_hints()?;
            self.next_timer_ms.store(
                match overlay.hints.earliest_timer {
                    Hint::Empty => u64::MAX,
                    Hint::At(t) => t.max(1),
                    Hint::Unknown { .. } => 0,
                },
                Ordering::Relaxed,
            );
            overlay.put_meta();
            overlay.take_error()?;
            overlay.into_batch()
        };
        let mut opts = WriteOptions::default();
        opts.set_sync(false);
        self.fence
            .write(self.shard_id, || Ok(db.write_opt(batch, &opts)?))?;
        self.meta = meta;
        let stats = &self.stats;
        stats.ops_applied.fetch_add(applied, Ordering::Relaxed);
        stats.ops_replayed.fetch_add(replayed, Ordering::Relaxed);
        stats.entries_applied.fetch_add(normal, Ordering::Relaxed);
        for (responder, response) in replies {
            responder.send(response);
        }
        Ok(())
    }

    /// Applies an entry `alone_of` names: a split, a freeze or a merge, in one write
    /// batch with the new applied log id over the committed state; answers with its
    /// outcome.
    fn apply_alone(
        &mut self,
        entry: Entry,
        responder: Option<openraft::storage::ApplyResponder<TypeConfig>>,
    ) -> Result<(), StorageError> {
        assert_ne!(
            self.shard_id,
            crate::router::META_SHARD_ID.0,
            "the meta shard never splits or merges"
        );
        self.order
            .assert_next(self.shard_id, self.meta.last_applied, entry.log_id);
        let mut meta = self.meta.clone();
        meta.last_applied = Some(entry.log_id);
        let mut batch = WriteBatch::default();
        let bounds = self.bounds.get();
        let (outcome, bounds) = match alone_of(&entry) {
            Some(Command::Split {
                at,
                child_id,
                expected_version,
            }) => {
                let split = split::Split {
                    parent: self.shard_id,
                    child: *child_id,
                    at,
                    expected_version: *expected_version,
                    replica_id: self.replica_id,
                };
                let d = split::divide(self.store.db(), &mut batch, &split, &bounds, &meta)?;
                (d.outcome, d.parent_bounds)
            }
            Some(Command::Freeze { expected_version }) => {
                let r = merge::freeze(
                    self.store.db(),
                    &mut batch,
                    self.shard_id,
                    *expected_version,
                    &bounds,
                    &meta,
                )?;
                (r.outcome, r.bounds)
            }
            Some(Command::Merge {
                source,
                expected_version,
            }) => {
                let r = merge::absorb(
                    self.store.db(),
                    &mut batch,
                    self.shard_id,
                    source,
                    *expected_version,
                    &bounds,
                    &mut meta,
                )?;
                (r.outcome, r.bounds)
            }
            _ => unreachable!("apply_alone is given splits, freezes and merges only"),
        };
        batch.put_cf(
            cf(self.store.db(), CF_SM)?,
            super::keys::sm_meta_key(self.shard_id),
            crate::codec::encode(&meta)?,
        );
        let db = self.store.db();
        self.fence.write(self.shard_id, || Ok(db.write(batch)?))?;
        if matches!(alone_of(&entry), Some(Command::Split { .. })) {
            self.store.replicas_recorded();
        }
        tracing::info!(
            shard_id = self.shard_id,
            command = ?alone_of(&entry),
            range = %bounds.range,
            version = bounds.version,
            outcome = ?outcome,
            "applied a change of the shard's range"
        );
        self.meta = meta;
        self.bounds.set(bounds);
        self.hints = Hints::UNKNOWN;
        self.next_timer_ms.store(0, Ordering::Relaxed);
        self.stats.entries_applied.fetch_add(1, Ordering::Relaxed);
        if let Some(responder) = responder {
            let result = OpResult {
                outcome: Outcome::Cluster(outcome),
                replayed: false,
            };
            responder.send(ShardResponse {
                groups: vec![vec![result]],
            });
        }
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        Ok((self.meta.last_applied, self.meta.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder>> + Unpin + OptionalSend,
    {
        // Entries are applied in runs, one write batch each; a split, freeze or merge
        // ends a run and is applied alone, over the committed state.
        let mut run = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            if alone_of(&entry).is_some() {
                self.apply_run(std::mem::take(&mut run))?;
                self.apply_alone(entry, responder)?;
            } else {
                run.push((entry, responder));
            }
        }
        self.apply_run(run)?;
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shard_id: self.shard_id,
            db: self.store.db().clone(),
            snapshot_dir: self.snapshot_dir.clone(),
            fence: self.fence.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> io::Result<()> {
        let (db, shard_id, dir, meta_c, fence) = (
            self.store.db().clone(),
            self.shard_id,
            self.snapshot_dir.clone(),
            meta.clone(),
            self.fence.clone(),
        );
        let file = snapshot.into_std().await;
        let sm_meta = joined(
            tokio::task::spawn_blocking(move || {
                fence.write(shard_id, || {
                    snapshot::install(&db, shard_id, &dir, &meta_c, file)
                })
            })
            .await,
        )??;
        tracing::info!(shard_id, last_log_id = ?meta.last_log_id, "installed snapshot");
        metrics::counter!(names::SNAPSHOT_INSTALLS_TOTAL).increment(1);
        self.meta = sm_meta;
        if let Some(bounds) = read_bounds(self.store.db(), self.shard_id)? {
            self.bounds.set(bounds);
        }
        let (db, replica_id) = (self.store.db(), self.replica_id);
        let adopted = self.fence.write(self.shard_id, || {
            split::adopt_children(db, self.shard_id, replica_id)
        })?;
        if !adopted.is_empty() {
            self.store.replicas_recorded();
            tracing::info!(
                shard_id = self.shard_id,
                children = ?adopted,
                "a snapshot past a split: the children are recorded here as empty replicas"
            );
        }
        self.hints = Hints::UNKNOWN;
        self.next_timer_ms.store(0, Ordering::Relaxed);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let (shard_id, dir) = (self.shard_id, self.snapshot_dir.clone());
        let current = joined(
            tokio::task::spawn_blocking(move || snapshot::open_current(&dir, shard_id)).await,
        )??;
        Ok(current.map(|(meta, file)| Snapshot {
            meta,
            snapshot: tokio::fs::File::from_std(file),
        }))
    }
}

pub struct SnapshotBuilder {
    shard_id: u64,
    db: Arc<DB>,
    snapshot_dir: PathBuf,
    /// The replica's fence: a build that ends after the replica was deleted must not
    /// leave its file as the shard's current snapshot.
    fence: WriteFence,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let (db, shard_id, dir) = (self.db.clone(), self.shard_id, self.snapshot_dir.clone());
        let fence = self.fence.clone();
        let (meta, file) = joined(
            tokio::task::spawn_blocking(move || snapshot::build(&db, shard_id, &dir, &fence)).await,
        )??;
        tracing::info!(shard_id, last_log_id = ?meta.last_log_id, "built snapshot");
        metrics::counter!(names::SNAPSHOT_BUILDS_TOTAL).increment(1);
        if let Ok(m) = file.metadata() {
            metrics::gauge!(names::SNAPSHOT_BYTES, names::SHARD_ID => shard_id.to_string())
                .set(m.len() as f64);
        }
        Ok(Snapshot {
            meta,
            snapshot: tokio::fs::File::from_std(file),
        })
    }
}
