//! An in-memory `ShardState`: the reference backing for unit and property tests of
//! `apply`, kept deliberately simple (ordered maps, no caching).

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;

use super::apply::{Records, ShardState};
use super::cluster::{MoveRecord, NodeRecord, ShardRecord};
use super::types::*;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemState {
    pub clock_ms: u64,
    pub stock: BTreeMap<String, StockRecord>,
    pub reservations: BTreeMap<String, Reservation>,
    pub outcomes: BTreeMap<RequestId, StoredOutcome>,
    pub timers: BTreeSet<(u64, String)>,
    pub outcome_ages: BTreeSet<(u64, RequestId)>,
    /// The cluster map (meta shard only).
    pub cluster_nodes: BTreeMap<u64, NodeRecord>,
    pub cluster_moves: BTreeMap<u64, MoveRecord>,
    pub cluster_shards: BTreeMap<u64, ShardRecord>,
}

impl Records for MemState {
    type Error = Infallible;

    fn stock(&mut self, sku: &str) -> Result<Option<StockRecord>, Infallible> {
        Ok(self.stock.get(sku).copied())
    }

    fn put_stock(&mut self, sku: &str, record: StockRecord) {
        self.stock.insert(sku.to_string(), record);
    }

    fn reservation(&mut self, id: &str) -> Result<Option<Reservation>, Infallible> {
        Ok(self.reservations.get(id).cloned())
    }

    fn put_reservation(&mut self, r: &Reservation, old_timer_ms: Option<u64>) {
        if let Some(old) = old_timer_ms {
            assert!(
                self.timers.remove(&(old, r.id.clone())),
                "no timer ({old}, {}) to move",
                r.id
            );
        }
        self.timers.insert((r.timer_ms, r.id.clone()));
        self.reservations.insert(r.id.clone(), r.clone());
    }

    fn delete_reservation(&mut self, id: &str, timer_ms: u64) {
        assert!(self.timers.remove(&(timer_ms, id.to_string())));
        self.reservations.remove(id);
    }

    fn outcome(&mut self, request_id: &RequestId) -> Result<Option<StoredOutcome>, Infallible> {
        Ok(self.outcomes.get(request_id).cloned())
    }

    fn put_outcome(&mut self, request_id: &RequestId, stored: &StoredOutcome) {
        let previous = self.outcomes.insert(*request_id, stored.clone());
        assert!(previous.is_none(), "request id {request_id:?} stored twice");
        self.outcome_ages
            .insert((stored.applied_at_ms, *request_id));
    }
    fn node_record(&mut self, id: u64) -> Result<Option<NodeRecord>, Infallible> {
        Ok(self.cluster_nodes.get(&id).cloned())
    }

    fn any_node_record(&mut self) -> Result<bool, Infallible> {
        Ok(!self.cluster_nodes.is_empty())
    }

    fn put_node_record(&mut self, node: &NodeRecord) {
        self.cluster_nodes.insert(node.id, node.clone());
    }

    fn move_record(&mut self, shard_id: u64) -> Result<Option<MoveRecord>, Infallible> {
        Ok(self.cluster_moves.get(&shard_id).cloned())
    }

    fn put_move_record(&mut self, record: &MoveRecord) {
        self.cluster_moves.insert(record.shard_id, record.clone());
    }

    fn delete_move_record(&mut self, shard_id: u64) {
        self.cluster_moves.remove(&shard_id);
    }

    fn shard_record(&mut self, shard_id: u64) -> Result<Option<ShardRecord>, Infallible> {
        Ok(self.cluster_shards.get(&shard_id).cloned())
    }

    fn put_shard_record(&mut self, record: &ShardRecord) {
        self.cluster_shards.insert(record.id, record.clone());
    }
}

impl ShardState for MemState {
    fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    fn set_clock_ms(&mut self, now_ms: u64) {
        self.clock_ms = now_ms;
    }

    fn due_timers(&mut self, now_ms: u64, max: usize) -> Result<Vec<(u64, String)>, Infallible> {
        Ok(self
            .timers
            .iter()
            .take_while(|(t, _)| *t <= now_ms)
            .take(max)
            .cloned()
            .collect())
    }

    fn prune_outcomes(
        &mut self,
        applied_before_ms: u64,
        keep_max: u64,
        deletes_max: usize,
    ) -> Result<u64, Infallible> {
        let mut deleted = 0u64;
        while (deleted as usize) < deletes_max {
            let Some(&(at, _)) = self.outcome_ages.iter().next() else {
                break;
            };
            if at >= applied_before_ms && self.outcomes.len() as u64 <= keep_max {
                break;
            }
            // The whole millisecond goes together (ShardState::prune_outcomes).
            while let Some(&(t, id)) = self.outcome_ages.iter().next()
                && t == at
            {
                self.outcome_ages.remove(&(t, id));
                self.outcomes.remove(&id);
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}
