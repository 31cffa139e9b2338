//! A shard's state machine in the node's RocksDB (`sm` column family, the shard's
//! prefix), implementing openraft's `RaftStateMachine`.
//!
//! `apply` runs the pure `inventory::apply` over an [`Overlay`] that reads through
//! to RocksDB and collects every write, for all entries of the call, in one write
//! batch together with the new applied log id: a crash leaves either all of a batch
//! or none of it. Writes are not synced here; the WAL is synced by the next log
//! append or before any purge.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{Stream, StreamExt};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use rocksdb::{ColumnFamily, DB, Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};

use super::codec;
use super::db::cf;
use super::keys::{self, CF_SM, SmSpace};
use super::snapshot;
use crate::inventory::{
    self, Records, RequestId, Reservation, ShardResponse, ShardState, StockRecord, StoredOutcome,
};
use crate::raft::types::{
    EntryResponder, LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
};

/// What a shard's state machine knows about itself (key `shard ‖ 0x00`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmMeta {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    /// The replicated clock (DESIGN.md: Time).
    pub clock_ms: u64,
    /// Stored outcomes (key family 0x03), for the count bound.
    pub outcomes_count: u64,
}

/// Counters of what state machines applied, shared by a node's shards.
#[derive(Debug, Default)]
pub struct ApplyStats {
    /// Operations executed for the first time.
    pub ops_applied: AtomicU64,
    /// Operations answered from a stored outcome (retries).
    pub ops_replayed: AtomicU64,
    /// Normal log entries applied.
    pub entries_applied: AtomicU64,
}

/// What the state machine knows, without reading, about the earliest key of an index
/// (timer or outcome age): lets most entries skip the scan of that index, and lets a
/// scan start past the tombstones that removing the earliest keys leaves behind
/// (seeking from the start of the index would walk them all, every time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hint {
    /// Read the index to find out; nothing in it is earlier than `from`.
    Unknown { from: u64 },
    /// The index is empty.
    Empty,
    /// The earliest key's time.
    At(u64),
}

impl Hint {
    const UNKNOWN: Hint = Hint::Unknown { from: 0 };

    /// True when nothing in the index is at or before `t`.
    fn nothing_at_or_before(self, t: u64) -> bool {
        match self {
            Hint::Unknown { from } => from > t,
            Hint::Empty => true,
            Hint::At(at) => at > t,
        }
    }

    fn added(self, t: u64) -> Hint {
        match self {
            Hint::Unknown { from } => Hint::Unknown { from: from.min(t) },
            Hint::Empty => Hint::At(t),
            Hint::At(at) => Hint::At(at.min(t)),
        }
    }

    fn removed(self, t: u64) -> Hint {
        match self {
            Hint::At(at) if at == t => Hint::Unknown { from: t },
            other => other,
        }
    }

    /// Where a scan of the index may start: nothing is earlier.
    fn scan_from(self) -> Option<u64> {
        match self {
            Hint::Unknown { from } => Some(from),
            Hint::Empty => None,
            Hint::At(at) => Some(at),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Hints {
    earliest_timer: Hint,
    oldest_outcome: Hint,
}

pub struct StateMachineStore {
    shard_id: u64,
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

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

pub fn read_meta(db: &DB, shard_id: u64) -> io::Result<SmMeta> {
    let cf = cf(db, CF_SM).map_err(io_err)?;
    match db
        .get_pinned_cf(cf, keys::sm_meta_key(shard_id))
        .map_err(io_err)?
    {
        Some(bytes) => Ok(codec::decode(&bytes)?),
        None => Ok(SmMeta::default()),
    }
}

impl StateMachineStore {
    /// The shared earliest-timer hint (see `next_timer_ms`), for the shard's sweeper.
    pub fn next_timer_handle(&self) -> Arc<AtomicU64> {
        self.next_timer_ms.clone()
    }

    pub fn open(
        shard_id: u64,
        db: Arc<DB>,
        snapshot_dir: PathBuf,
        stats: Arc<ApplyStats>,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(&snapshot_dir)?;
        snapshot::remove_leftovers(&snapshot_dir, shard_id)?;
        let meta = read_meta(&db, shard_id)?;
        Ok(StateMachineStore {
            next_timer_ms: Arc::new(AtomicU64::new(0)),
            hints: Hints {
                earliest_timer: Hint::UNKNOWN,
                oldest_outcome: Hint::UNKNOWN,
            },
            shard_id,
            db,
            snapshot_dir,
            meta,
            stats,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.meta.last_applied, self.meta.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder, io::Error>> + Unpin + OptionalSend,
    {
        let db = self.db.clone();
        let cf = cf(&db, CF_SM).map_err(io_err)?;
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
                if let Some(prev) = overlay.meta.last_applied {
                    assert!(
                        entry.log_id > prev,
                        "shard {}: applying {} after {}",
                        self.shard_id,
                        entry.log_id,
                        prev
                    );
                }
                overlay.meta.last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => ShardResponse::default(),
                    EntryPayload::Normal(request) => {
                        normal += 1;
                        let response = inventory::apply(&mut overlay, &request)?;
                        overlay.take_error()?;
                        for r in response.groups.iter().flatten() {
                            if r.replayed {
                                replayed += 1
                            } else {
                                applied += 1
                            }
                        }
                        response
                    }
                    EntryPayload::Membership(m) => {
                        overlay.meta.membership = StoredMembership::new(Some(entry.log_id), m);
                        ShardResponse::default()
                    }
                };
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
        db.write_opt(batch, &opts).map_err(io_err)?;
        self.meta = meta;
        self.stats.ops_applied.fetch_add(applied, Ordering::Relaxed);
        metrics::counter!("stockpile_ops_applied_total").increment(applied);
        metrics::counter!("stockpile_ops_replayed_total").increment(replayed);
        self.stats
            .ops_replayed
            .fetch_add(replayed, Ordering::Relaxed);
        self.stats
            .entries_applied
            .fetch_add(normal, Ordering::Relaxed);
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
    ) -> Result<(), io::Error> {
        let (db, shard_id, dir, meta_c) = (
            self.db.clone(),
            self.shard_id,
            self.snapshot_dir.clone(),
            meta.clone(),
        );
        let file = snapshot.into_std().await;
        let sm_meta = tokio::task::spawn_blocking(move || {
            snapshot::install(&db, shard_id, &dir, &meta_c, file)
        })
        .await
        .map_err(io_err)??;
        tracing::info!(shard_id, last_log_id = ?meta.last_log_id, "installed snapshot");
        metrics::counter!("stockpile_snapshot_installs_total").increment(1);
        self.meta = sm_meta;
        self.hints = Hints {
            earliest_timer: Hint::UNKNOWN,
            oldest_outcome: Hint::UNKNOWN,
        };
        self.next_timer_ms.store(0, Ordering::Relaxed);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let (shard_id, dir) = (self.shard_id, self.snapshot_dir.clone());
        let current = tokio::task::spawn_blocking(move || snapshot::open_current(&dir, shard_id))
            .await
            .map_err(io_err)??;
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

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (db, shard_id, dir) = (self.db.clone(), self.shard_id, self.snapshot_dir.clone());
        let (meta, file) =
            tokio::task::spawn_blocking(move || snapshot::build(&db, shard_id, &dir))
                .await
                .map_err(io_err)??;
        tracing::info!(shard_id, last_log_id = ?meta.last_log_id, "built snapshot");
        metrics::counter!("stockpile_snapshot_builds_total").increment(1);
        if let Ok(m) = file.metadata() {
            metrics::gauge!("stockpile_snapshot_bytes", "shard" => shard_id.to_string())
                .set(m.len() as f64);
        }
        Ok(Snapshot {
            meta,
            snapshot: tokio::fs::File::from_std(file),
        })
    }
}

/// Implements the inventory's state traits over RocksDB plus the pending write batch.
/// Reads see earlier writes of the same batch through `pending`.
struct Overlay<'a> {
    shard_id: u64,
    db: &'a DB,
    cf: &'a ColumnFamily,
    batch: &'a mut WriteBatch,
    meta: &'a mut SmMeta,
    hints: &'a mut Hints,
    /// Keys written in this batch: Some(value) or None for deleted.
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The first failure of an infallible-looking write (an encoding error).
    error: Option<io::Error>,
}

impl<'a> Overlay<'a> {
    fn new(
        shard_id: u64,
        db: &'a DB,
        cf: &'a ColumnFamily,
        batch: &'a mut WriteBatch,
        meta: &'a mut SmMeta,
        hints: &'a mut Hints,
    ) -> Self {
        Overlay {
            shard_id,
            db,
            cf,
            batch,
            meta,
            hints,
            pending: BTreeMap::new(),
            error: None,
        }
    }

    fn take_error(&mut self) -> io::Result<()> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.pending.get(key) {
            Some(Some(bytes)) => Ok(Some(codec::decode(bytes)?)),
            Some(None) => Ok(None),
            None => match self.db.get_pinned_cf(self.cf, key).map_err(io_err)? {
                Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
                None => Ok(None),
            },
        }
    }

    fn put<T: Serialize + ?Sized>(&mut self, key: Vec<u8>, value: &T) {
        match codec::encode(value) {
            Ok(bytes) => {
                self.batch.put_cf(self.cf, &key, &bytes);
                self.pending.insert(key, Some(bytes));
            }
            Err(e) => {
                self.error.get_or_insert(e.into());
            }
        }
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.batch.delete_cf(self.cf, &key);
        self.pending.insert(key, None);
    }

    /// Reads the earliest key of each index whose hint is unknown, so the next entries
    /// can skip their scans.
    fn resolve_hints(&mut self) -> io::Result<()> {
        if let Hint::Unknown { from } = self.hints.earliest_timer {
            let (_, end) = keys::sm_space_range(self.shard_id, SmSpace::Timer);
            let start = keys::timer_key(self.shard_id, from, "");
            self.hints.earliest_timer = match self.scan_keys(&start, &end, 1)?.first() {
                Some(k) => Hint::At(
                    keys::parse_timer_key(self.shard_id, k)
                        .ok_or_else(|| io_err("malformed timer key"))?
                        .0,
                ),
                None => Hint::Empty,
            };
        }
        if let Hint::Unknown { from } = self.hints.oldest_outcome {
            let (_, end) = keys::sm_space_range(self.shard_id, SmSpace::OutcomeAge);
            let start = keys::outcome_age_key(self.shard_id, from, &[0u8; 16]);
            self.hints.oldest_outcome = match self.scan_keys(&start, &end, 1)?.first() {
                Some(k) => Hint::At(
                    keys::parse_outcome_age_key(self.shard_id, k)
                        .ok_or_else(|| io_err("malformed outcome age key"))?
                        .0,
                ),
                None => Hint::Empty,
            };
        }
        Ok(())
    }

    fn put_meta(&mut self) {
        let meta = self.meta.clone();
        self.put(keys::sm_meta_key(self.shard_id), &meta);
    }

    /// Up to `max` keys in `[start, end)` as this batch will leave them, in order.
    fn scan_keys(&self, start: &[u8], end: &[u8], max: usize) -> io::Result<Vec<Vec<u8>>> {
        let pending: Vec<_> = self.pending.range(start.to_vec()..end.to_vec()).collect();
        let deleted = pending.iter().filter(|(_, v)| v.is_none()).count();
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(end.to_vec());
        let mut found = std::collections::BTreeSet::new();
        for item in self
            .db
            .iterator_cf_opt(self.cf, opts, IteratorMode::From(start, Direction::Forward))
            .take(max + deleted)
        {
            let (k, _) = item.map_err(io_err)?;
            found.insert(k.to_vec());
        }
        for (k, v) in pending {
            if v.is_some() {
                found.insert(k.clone());
            } else {
                found.remove(k);
            }
        }
        Ok(found.into_iter().take(max).collect())
    }
}

impl Records for Overlay<'_> {
    type Error = io::Error;

    fn stock(&mut self, sku: &str) -> io::Result<Option<StockRecord>> {
        self.get(&keys::stock_key(self.shard_id, sku))
    }

    fn put_stock(&mut self, sku: &str, record: StockRecord) {
        self.put(keys::stock_key(self.shard_id, sku), &record);
    }

    fn reservation(&mut self, id: &str) -> io::Result<Option<Reservation>> {
        self.get(&keys::reservation_key(self.shard_id, id))
    }

    fn put_reservation(&mut self, r: &Reservation, old_timer_ms: Option<u64>) {
        if let Some(old) = old_timer_ms {
            self.delete(keys::timer_key(self.shard_id, old, &r.id));
            self.hints.earliest_timer = self.hints.earliest_timer.removed(old);
        }
        self.hints.earliest_timer = self.hints.earliest_timer.added(r.timer_ms);
        self.put(keys::timer_key(self.shard_id, r.timer_ms, &r.id), &());
        self.put(keys::reservation_key(self.shard_id, &r.id), r);
    }

    fn delete_reservation(&mut self, id: &str, timer_ms: u64) {
        self.delete(keys::timer_key(self.shard_id, timer_ms, id));
        self.hints.earliest_timer = self.hints.earliest_timer.removed(timer_ms);
        self.delete(keys::reservation_key(self.shard_id, id));
    }

    fn outcome(&mut self, request_id: &RequestId) -> io::Result<Option<StoredOutcome>> {
        self.get(&keys::outcome_key(self.shard_id, request_id))
    }

    fn put_outcome(&mut self, request_id: &RequestId, stored: &StoredOutcome) {
        self.put(keys::outcome_key(self.shard_id, request_id), stored);
        self.put(
            keys::outcome_age_key(self.shard_id, stored.applied_at_ms, request_id),
            &(),
        );
        self.meta.outcomes_count += 1;
        self.hints.oldest_outcome = self.hints.oldest_outcome.added(stored.applied_at_ms);
    }
}

impl ShardState for Overlay<'_> {
    fn clock_ms(&self) -> u64 {
        self.meta.clock_ms
    }

    fn set_clock_ms(&mut self, now_ms: u64) {
        assert!(
            now_ms >= self.meta.clock_ms,
            "the shard clock never goes back"
        );
        self.meta.clock_ms = now_ms;
    }

    fn due_timers(&mut self, now_ms: u64, max: usize) -> io::Result<Vec<(u64, String)>> {
        if self.hints.earliest_timer.nothing_at_or_before(now_ms) {
            return Ok(Vec::new());
        }
        let Some(from) = self.hints.earliest_timer.scan_from() else {
            return Ok(Vec::new());
        };
        let start = keys::timer_key(self.shard_id, from, "");
        let end = keys::timer_key(self.shard_id, now_ms.saturating_add(1), "");
        let keys = self.scan_keys(&start, &end, max)?;
        keys.iter()
            .map(|k| {
                keys::parse_timer_key(self.shard_id, k).ok_or_else(|| io_err("malformed timer key"))
            })
            .collect()
    }

    fn prune_outcomes(
        &mut self,
        applied_before_ms: u64,
        keep_max: u64,
        deletes_max: usize,
    ) -> io::Result<u64> {
        if self.meta.outcomes_count <= keep_max
            && self
                .hints
                .oldest_outcome
                .nothing_at_or_before(applied_before_ms.saturating_sub(1))
        {
            return Ok(0);
        }
        // Small first: usually only the first key is looked at.
        let mut chunk_len: usize = 1;
        let Some(from) = self.hints.oldest_outcome.scan_from() else {
            return Ok(0);
        };
        let (_, end) = keys::sm_space_range(self.shard_id, SmSpace::OutcomeAge);
        let start = keys::outcome_age_key(self.shard_id, from, &[0u8; 16]);
        let mut deleted = 0u64;
        'scan: while (deleted as usize) < deletes_max {
            let chunk =
                self.scan_keys(&start, &end, chunk_len.min(deletes_max - deleted as usize))?;
            chunk_len = (chunk_len * 4).min(256);
            if chunk.is_empty() {
                break;
            }
            for key in chunk {
                let (at, id) = keys::parse_outcome_age_key(self.shard_id, &key)
                    .ok_or_else(|| io_err("malformed outcome age key"))?;
                if at >= applied_before_ms && self.meta.outcomes_count <= keep_max {
                    break 'scan;
                }
                self.delete(key);
                self.delete(keys::outcome_key(self.shard_id, &id));
                self.meta.outcomes_count -= 1;
                self.hints.oldest_outcome = Hint::Unknown { from: at };
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}
