//! The overlay `inventory::apply` runs on: the inventory's state traits over RocksDB
//! plus the pending writes of one `apply` call. Reads see earlier writes of the same
//! call; `into_batch` hands the writes back as one write batch, which the state machine
//! writes in one step with the new applied log id.

use std::collections::BTreeMap;

use rocksdb::{
    ColumnFamily, DB, DBPinnableSlice, Direction, IteratorMode, ReadOptions, WriteBatch,
};
use serde::Serialize;

use super::hints::{Hint, Hints};
use super::meta::SmMeta;
use crate::codec;
use crate::inventory::cluster::{MoveRecord, NodeRecord, ShardRecord};
use crate::inventory::{
    Records, RequestId, Reservation, ShardRequest, ShardState, StockRecord, StoredOutcome,
};
use crate::storage::error::{Result, StorageError};
use crate::storage::keys::{self, SmSpace};

/// The fewest operations in a run for which `read_ahead` reads their keys in one batch.
/// Unbatched clients' entries carry 1-5 operations at 64 clients, batched ones ~100.
const READ_AHEAD_OPS_MIN: usize = 16;

/// Implements the inventory's state traits over RocksDB plus the pending writes.
/// Reads see earlier writes of the same call through `pending`.
pub(super) struct Overlay<'a> {
    shard_id: u64,
    db: &'a DB,
    cf: &'a ColumnFamily,
    pub meta: &'a mut SmMeta,
    pub hints: &'a mut Hints,
    /// Keys written by this call, each with its last value (None: deleted). Only the
    /// last value reaches RocksDB, in key order (`into_batch`).
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Values read ahead (`read_ahead`), sorted by key: what the stored state held
    /// when this call began. `pending` shadows them.
    ahead: Vec<(Vec<u8>, Option<DBPinnableSlice<'a>>)>,
    /// The request ids whose outcomes the entry being applied stored, all at
    /// `entry_outcomes_ms` (one entry, one shard clock): filed in one age-index record
    /// by `file_outcomes` when the entry ends, instead of one index key per outcome.
    entry_outcomes: Vec<RequestId>,
    entry_outcomes_ms: u64,
    /// The first failure of an infallible-looking write (an encoding error).
    error: Option<StorageError>,
}

impl<'a> Overlay<'a> {
    pub fn new(
        shard_id: u64,
        db: &'a DB,
        cf: &'a ColumnFamily,
        meta: &'a mut SmMeta,
        hints: &'a mut Hints,
    ) -> Self {
        Overlay {
            shard_id,
            db,
            cf,
            meta,
            hints,
            pending: BTreeMap::new(),
            ahead: Vec::new(),
            entry_outcomes: Vec::new(),
            entry_outcomes_ms: 0,
            error: None,
        }
    }

    pub fn shard_id(&self) -> u64 {
        self.shard_id
    }

    pub fn take_error(&mut self) -> Result<()> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        if let Some(value) = self.pending.get(key) {
            return Ok(value.as_deref().map(codec::decode).transpose()?);
        }
        if let Ok(i) = self.ahead.binary_search_by(|(k, _)| k.as_slice().cmp(key)) {
            return Ok(self.ahead[i].1.as_deref().map(codec::decode).transpose()?);
        }
        match self.db.get_pinned_cf(self.cf, key)? {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Reads, in one batched lookup, what the operations of `requests` will read
    /// first: each one's stored outcome (usually absent) and its SKUs' records.
    /// RocksDB's MultiGet takes one view of the tree for all of them and probes the
    /// filters and blocks of a table together, instead of one full lookup per key.
    ///
    /// A run of fewer than `READ_AHEAD_OPS_MIN` operations reads as it goes: measured,
    /// the batched lookup's sorting and copying cost more than it saved there.
    pub fn read_ahead<'r>(
        &mut self,
        requests: impl Iterator<Item = &'r ShardRequest> + Clone,
    ) -> Result<()> {
        let ops = || {
            requests
                .clone()
                .flat_map(|r| &r.groups)
                .flat_map(|g| &g.ops)
        };
        if ops().take(READ_AHEAD_OPS_MIN).count() < READ_AHEAD_OPS_MIN {
            return Ok(());
        }
        let mut keys = Vec::new();
        for op in ops() {
            keys.push(keys::outcome_key(self.shard_id, &op.request_id));
            keys.extend(
                op.command
                    .skus()
                    .map(|sku| keys::stock_key(self.shard_id, sku)),
            );
        }
        keys.sort_unstable();
        keys.dedup();
        let values = self.db.batched_multi_get_cf(self.cf, &keys, true);
        self.ahead = Vec::with_capacity(keys.len());
        for (key, value) in keys.into_iter().zip(values) {
            self.ahead.push((key, value?));
        }
        Ok(())
    }

    fn put<T: Serialize + ?Sized>(&mut self, key: Vec<u8>, value: &T) {
        match codec::encode(value) {
            Ok(bytes) => {
                self.pending.insert(key, Some(bytes));
            }
            Err(e) => {
                self.error.get_or_insert(StorageError::from(e));
            }
        }
    }

    fn delete(&mut self, key: Vec<u8>) {
        self.pending.insert(key, None);
    }

    /// The call's writes as one write batch: each key once, with its last value, in
    /// key order. The state after it is the same as after every write in turn; fewer
    /// memtable inserts, and ascending ones, which RocksDB's skiplist places starting
    /// from the previous insert's position instead of from the top.
    pub fn into_batch(self) -> WriteBatch {
        let mut batch = WriteBatch::default();
        for (key, value) in self.pending {
            match value {
                Some(bytes) => batch.put_cf(self.cf, key, bytes),
                None => batch.delete_cf(self.cf, key),
            }
        }
        batch
    }

    /// Reads the earliest key of each index whose hint is unknown, so the next entries
    /// can skip their scans.
    pub fn resolve_hints(&mut self) -> Result<()> {
        if let Hint::Unknown { from } = self.hints.earliest_timer {
            let (_, end) = keys::sm_space_range(self.shard_id, SmSpace::Timer);
            let start = keys::timer_key(self.shard_id, from, "");
            self.hints.earliest_timer = match self.scan_keys(&start, &end, 1)?.first() {
                Some(k) => Hint::At(
                    keys::parse_timer_key(self.shard_id, k)
                        .ok_or_else(|| StorageError::Corrupt("a malformed timer key".into()))?
                        .0,
                ),
                None => Hint::Empty,
            };
        }
        if let Hint::Unknown { from } = self.hints.oldest_outcome {
            let (_, end) = keys::sm_space_range(self.shard_id, SmSpace::OutcomeAge);
            let start = keys::outcome_age_from(self.shard_id, from);
            self.hints.oldest_outcome = match self.scan_keys(&start, &end, 1)?.first() {
                Some(k) => Hint::At(self.outcome_age(k)?),
                None => Hint::Empty,
            };
        }
        Ok(())
    }

    /// Files the outcomes the entry at `log_index` stored (if any) in one age-index
    /// record. Called when each entry's apply ends.
    pub fn file_outcomes(&mut self, log_index: u64) {
        if self.entry_outcomes.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.entry_outcomes);
        let key = keys::outcome_age_key(
            self.shard_id,
            self.entry_outcomes_ms,
            self.shard_id,
            log_index,
        );
        self.put(key, &ids);
    }

    /// Deletes one age-index record and the outcomes it lists; returns how many.
    fn forget_outcomes(&mut self, key: Vec<u8>) -> Result<u64> {
        let ids: Vec<RequestId> = self
            .get(&key)?
            .ok_or_else(|| StorageError::Corrupt("an age-index record without a value".into()))?;
        let forgotten = ids.len() as u64;
        for id in &ids {
            self.delete(keys::outcome_key(self.shard_id, id));
        }
        self.delete(key);
        // Saturating, not asserted: after a split, a prune on one side, a request id
        // reused there past retention and a merge back, one id can be listed twice
        // (the merge keeps one outcome). The count only drives the bound; a node must
        // not stop over it.
        self.meta.outcomes_count = self.meta.outcomes_count.saturating_sub(forgotten);
        Ok(forgotten)
    }

    /// The applied ms of an age-index key.
    fn outcome_age(&self, key: &[u8]) -> Result<u64> {
        keys::parse_outcome_age_key(self.shard_id, key)
            .ok_or_else(|| StorageError::Corrupt("a malformed outcome age key".into()))
    }

    pub fn put_meta(&mut self) {
        assert!(
            self.entry_outcomes.is_empty(),
            "shard {}: stored outcomes not filed in the age index",
            self.shard_id
        );
        let meta = self.meta.clone();
        self.put(keys::sm_meta_key(self.shard_id), &meta);
    }

    /// Up to `max` keys in `[start, end)` as this batch will leave them, in order.
    fn scan_keys(&self, start: &[u8], end: &[u8], max: usize) -> Result<Vec<Vec<u8>>> {
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
            let (k, _) = item?;
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
    type Error = StorageError;

    fn stock(&mut self, sku: &str) -> Result<Option<StockRecord>> {
        self.get(&keys::stock_key(self.shard_id, sku))
    }

    fn put_stock(&mut self, sku: &str, record: StockRecord) {
        self.put(keys::stock_key(self.shard_id, sku), &record);
    }

    fn reservation(&mut self, id: &str) -> Result<Option<Reservation>> {
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

    fn outcome(&mut self, request_id: &RequestId) -> Result<Option<StoredOutcome>> {
        #[cfg(feature = "planted-bugs")]
        if crate::planted::active() == crate::planted::Bug::IgnoreRequestIds {
            return Ok(None);
        }
        self.get(&keys::outcome_key(self.shard_id, request_id))
    }

    fn put_outcome(&mut self, request_id: &RequestId, stored: &StoredOutcome) {
        self.put(keys::outcome_key(self.shard_id, request_id), stored);
        if self.entry_outcomes.is_empty() {
            self.entry_outcomes_ms = stored.applied_at_ms;
        }
        assert_eq!(
            self.entry_outcomes_ms, stored.applied_at_ms,
            "one entry's outcomes share the shard clock"
        );
        self.entry_outcomes.push(*request_id);
        self.meta.outcomes_count += 1;
        self.hints.oldest_outcome = self.hints.oldest_outcome.added(stored.applied_at_ms);
    }

    fn node_record(&mut self, id: u64) -> Result<Option<NodeRecord>> {
        self.get(&keys::cluster_node_key(self.shard_id, id))
    }

    fn any_node_record(&mut self) -> Result<bool> {
        let (start, end) = keys::sm_space_range(self.shard_id, SmSpace::ClusterNode);
        Ok(!self.scan_keys(&start, &end, 1)?.is_empty())
    }

    fn put_node_record(&mut self, node: &NodeRecord) {
        self.put(keys::cluster_node_key(self.shard_id, node.id), node);
    }

    fn move_record(&mut self, shard_id: u64) -> Result<Option<MoveRecord>> {
        self.get(&keys::cluster_move_key(self.shard_id, shard_id))
    }

    fn put_move_record(&mut self, record: &MoveRecord) {
        self.put(
            keys::cluster_move_key(self.shard_id, record.shard_id),
            record,
        );
    }

    fn delete_move_record(&mut self, shard_id: u64) {
        self.delete(keys::cluster_move_key(self.shard_id, shard_id));
    }

    fn shard_record(&mut self, shard_id: u64) -> Result<Option<ShardRecord>> {
        self.get(&keys::cluster_shard_key(self.shard_id, shard_id))
    }

    fn put_shard_record(&mut self, record: &ShardRecord) {
        self.put(keys::cluster_shard_key(self.shard_id, record.id), record);
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

    fn due_timers(&mut self, now_ms: u64, max: usize) -> Result<Vec<(u64, String)>> {
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
                keys::parse_timer_key(self.shard_id, k)
                    .ok_or_else(|| StorageError::Corrupt("a malformed timer key".into()))
            })
            .collect()
    }

    fn prune_outcomes(
        &mut self,
        applied_before_ms: u64,
        keep_max: u64,
        deletes_max: usize,
    ) -> Result<u64> {
        if self.meta.outcomes_count <= keep_max
            && self
                .hints
                .oldest_outcome
                .nothing_at_or_before(applied_before_ms.saturating_sub(1))
        {
            return Ok(0);
        }
        let Some(from) = self.hints.oldest_outcome.scan_from() else {
            return Ok(0);
        };
        let (_, end) = keys::sm_space_range(self.shard_id, SmSpace::OutcomeAge);
        let start = keys::outcome_age_from(self.shard_id, from);
        // Small first: usually only the first record is looked at.
        let mut chunk_len: usize = 1;
        let mut deleted = 0u64;
        // The millisecond being forgotten: its outcomes go together (ShardState).
        let mut forgetting: Option<u64> = None;
        'scan: while (deleted as usize) < deletes_max {
            let chunk = self.scan_keys(&start, &end, chunk_len)?;
            chunk_len = (chunk_len * 4).min(256);
            if chunk.is_empty() {
                break;
            }
            for key in chunk {
                let at = self.outcome_age(&key)?;
                let due = at < applied_before_ms || self.meta.outcomes_count > keep_max;
                if (forgetting != Some(at) && !due) || deleted as usize >= deletes_max {
                    break 'scan;
                }
                deleted += self.forget_outcomes(key)?;
                forgetting = Some(at);
                self.hints.oldest_outcome = Hint::Unknown { from: at };
            }
        }
        Ok(deleted)
    }
}
