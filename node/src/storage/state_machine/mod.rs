//! A shard's state machine in the node's RocksDB (`sm` column family, the shard's
//! prefix), implementing openraft's `RaftStateMachine`.
//!
//! `apply` runs the pure `inventory::apply` over an [`Overlay`] that reads through
//! to RocksDB and collects every write, for all entries of the call, in one write
//! batch together with the new applied log id: a crash leaves either all of a batch
//! or none of it. Writes are not synced here; the WAL is synced by the next log
//! append or before any purge.

mod hints;
mod meta;
mod overlay;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{Stream, StreamExt};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use rocksdb::{DB, WriteBatch, WriteOptions};

use super::Store;
use super::db::cf;
use super::error::StorageError;
use super::keys::CF_SM;
use super::snapshot;
use crate::inventory::{self, ShardRequest, ShardResponse};
use crate::raft::types::{
    Entry, EntryResponder, LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership,
    TypeConfig,
};
use crate::router::{ShardId, SkuRange};
use crate::telemetry::names;
use hints::{Hint, Hints};
pub use meta::{SmMeta, read_meta};
use overlay::Overlay;

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
    /// Every operation applied must lie in this range (asserted: a request for a SKU
    /// the shard does not own reaching its log is a routing bug).
    range: SkuRange,
    /// Kept in memory only; reset on start and snapshot install.
    hints: Hints,
    db: Arc<DB>,
    snapshot_dir: PathBuf,
    /// A copy of the stored meta, kept in step with every applied batch.
    meta: SmMeta,
    stats: Arc<ApplyStats>,
    /// The earliest reservation timer after the last apply, for the leader's expiry
    /// sweep: `u64::MAX` none, 0 unknown (read the index).
    next_timer_ms: Arc<AtomicU64>,
}

fn joined<T>(r: Result<T, tokio::task::JoinError>) -> Result<T, StorageError> {
    r.map_err(|e| StorageError::Io(io::Error::other(e)))
}

impl StateMachineStore {
    /// The shared earliest-timer hint (see `next_timer_ms`), for the shard's sweeper.
    pub fn next_timer_handle(&self) -> Arc<AtomicU64> {
        self.next_timer_ms.clone()
    }

    pub fn open(
        shard_id: ShardId,
        range: SkuRange,
        store: &Store,
        snapshot_dir: PathBuf,
        stats: Arc<ApplyStats>,
    ) -> Result<Self, StorageError> {
        std::fs::create_dir_all(&snapshot_dir)?;
        snapshot::remove_leftovers(&snapshot_dir, shard_id.0)?;
        let meta = read_meta(store.db(), shard_id.0)?;
        Ok(StateMachineStore {
            next_timer_ms: Arc::new(AtomicU64::new(0)),
            hints: Hints::UNKNOWN,
            shard_id: shard_id.0,
            range,
            db: store.db().clone(),
            snapshot_dir,
            meta,
            stats,
        })
    }
}

/// Asserts that every operation of `request` lies in the shard's range, and that the
/// meta shard applies only cluster commands and the other shards none.
fn assert_in_range(shard_id: u64, range: &SkuRange, request: &ShardRequest) {
    for op in request.groups.iter().flat_map(|g| g.ops.iter()) {
        let cluster = matches!(op.command, crate::inventory::Command::Cluster(_));
        assert_eq!(
            cluster,
            shard_id == crate::router::META_SHARD_ID.0,
            "shard {shard_id}: a {} command",
            op.command.name()
        );
        for sku in op.command.skus() {
            assert!(
                range.contains(sku),
                "shard {shard_id}: {} of SKU {sku:?} outside its range {range}",
                op.command.name(),
            );
        }
    }
}

/// Applies one entry to the overlay; returns its response and (applied, replayed) ops.
fn apply_entry(
    overlay: &mut Overlay<'_>,
    entry: Entry,
) -> Result<(ShardResponse, u64, u64), StorageError> {
    let log_id = entry.log_id;
    if let Some(prev) = overlay.meta.last_applied {
        assert!(log_id > prev, "applying {log_id} after {prev}");
    }
    overlay.meta.last_applied = Some(log_id);
    Ok(match entry.payload {
        EntryPayload::Blank => (ShardResponse::default(), 0, 0),
        EntryPayload::Normal(request) => {
            let response = inventory::apply(overlay, &request)?;
            overlay.take_error()?;
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
        let db = self.db.clone();
        let cf = cf(&db, CF_SM)?;
        let mut batch = WriteBatch::default();
        let mut meta = self.meta.clone();
        let mut replies = Vec::new();
        let (mut applied, mut replayed, mut normal) = (0u64, 0u64, 0u64);
        {
            let mut overlay = Overlay::new(
                self.shard_id,
                &db,
                cf,
                &mut batch,
                &mut meta,
                &mut self.hints,
            );
            while let Some(item) = entries.next().await {
                let (entry, responder) = item?;
                if let EntryPayload::Normal(request) = &entry.payload {
                    normal += 1;
                    assert_in_range(self.shard_id, &self.range, request);
                }
                let (response, a, r) = apply_entry(&mut overlay, entry)?;
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
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(false);
        db.write_opt(batch, &opts).map_err(StorageError::from)?;
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

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shard_id: self.shard_id,
            db: self.db.clone(),
            snapshot_dir: self.snapshot_dir.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> io::Result<()> {
        let (db, shard_id, dir, meta_c) = (
            self.db.clone(),
            self.shard_id,
            self.snapshot_dir.clone(),
            meta.clone(),
        );
        let file = snapshot.into_std().await;
        let sm_meta = joined(
            tokio::task::spawn_blocking(move || {
                snapshot::install(&db, shard_id, &dir, &meta_c, file)
            })
            .await,
        )??;
        tracing::info!(shard_id, last_log_id = ?meta.last_log_id, "installed snapshot");
        metrics::counter!(names::SNAPSHOT_INSTALLS_TOTAL).increment(1);
        self.meta = sm_meta;
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
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let (db, shard_id, dir) = (self.db.clone(), self.shard_id, self.snapshot_dir.clone());
        let (meta, file) = joined(
            tokio::task::spawn_blocking(move || snapshot::build(&db, shard_id, &dir)).await,
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
