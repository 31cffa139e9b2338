//! A write buffer over `Records` for all-or-nothing groups: reads see the buffered
//! writes; `commit` replays them in order, dropping discards them.

use super::apply::Records;
use super::cluster::{MoveRecord, NodeRecord, ShardRecord};
use super::types::{RequestId, Reservation, StockRecord, StoredOutcome};

/// A write buffer over `Records` for all-or-nothing groups: reads see the buffered
/// writes; `commit` replays them in order, dropping discards them.
pub(super) struct Staged<'a, R: Records> {
    inner: &'a mut R,
    stock: std::collections::HashMap<String, StockRecord>,
    reservations: std::collections::HashMap<String, Option<Reservation>>,
    outcomes: std::collections::HashMap<RequestId, StoredOutcome>,
    nodes: std::collections::HashMap<u64, NodeRecord>,
    moves: std::collections::HashMap<u64, Option<MoveRecord>>,
    shards: std::collections::HashMap<u64, ShardRecord>,
    writes: Vec<StagedWrite>,
}

enum StagedWrite {
    Stock(String, StockRecord),
    Reservation(Reservation, Option<u64>),
    DeleteReservation(String, u64),
    Outcome(RequestId, StoredOutcome),
    Node(NodeRecord),
    Move(MoveRecord),
    DeleteMove(u64),
    Shard(ShardRecord),
}

impl<'a, R: Records> Staged<'a, R> {
    pub(super) fn new(inner: &'a mut R) -> Self {
        Staged {
            inner,
            stock: Default::default(),
            reservations: Default::default(),
            outcomes: Default::default(),
            nodes: Default::default(),
            moves: Default::default(),
            shards: Default::default(),
            writes: Vec::new(),
        }
    }

    pub(super) fn commit(self) {
        for w in self.writes {
            match w {
                StagedWrite::Stock(sku, r) => self.inner.put_stock(&sku, r),
                StagedWrite::Reservation(r, old) => self.inner.put_reservation(&r, old),
                StagedWrite::DeleteReservation(id, t) => self.inner.delete_reservation(&id, t),
                StagedWrite::Outcome(id, o) => self.inner.put_outcome(&id, &o),
                StagedWrite::Node(n) => self.inner.put_node_record(&n),
                StagedWrite::Move(m) => self.inner.put_move_record(&m),
                StagedWrite::DeleteMove(shard_id) => self.inner.delete_move_record(shard_id),
                StagedWrite::Shard(r) => self.inner.put_shard_record(&r),
            }
        }
    }
}

impl<R: Records> Records for Staged<'_, R> {
    type Error = R::Error;

    fn stock(&mut self, sku: &str) -> Result<Option<StockRecord>, Self::Error> {
        match self.stock.get(sku) {
            Some(r) => Ok(Some(*r)),
            None => self.inner.stock(sku),
        }
    }

    fn put_stock(&mut self, sku: &str, record: StockRecord) {
        self.stock.insert(sku.to_string(), record);
        self.writes
            .push(StagedWrite::Stock(sku.to_string(), record));
    }

    fn reservation(&mut self, id: &str) -> Result<Option<Reservation>, Self::Error> {
        match self.reservations.get(id) {
            Some(r) => Ok(r.clone()),
            None => self.inner.reservation(id),
        }
    }

    fn put_reservation(&mut self, r: &Reservation, old_timer_ms: Option<u64>) {
        self.reservations.insert(r.id.clone(), Some(r.clone()));
        self.writes
            .push(StagedWrite::Reservation(r.clone(), old_timer_ms));
    }

    fn delete_reservation(&mut self, id: &str, timer_ms: u64) {
        self.reservations.insert(id.to_string(), None);
        self.writes
            .push(StagedWrite::DeleteReservation(id.to_string(), timer_ms));
    }

    fn outcome(&mut self, request_id: &RequestId) -> Result<Option<StoredOutcome>, Self::Error> {
        match self.outcomes.get(request_id) {
            Some(o) => Ok(Some(o.clone())),
            None => self.inner.outcome(request_id),
        }
    }

    fn put_outcome(&mut self, request_id: &RequestId, stored: &StoredOutcome) {
        self.outcomes.insert(*request_id, stored.clone());
        self.writes
            .push(StagedWrite::Outcome(*request_id, stored.clone()));
    }

    fn node_record(&mut self, id: u64) -> Result<Option<NodeRecord>, Self::Error> {
        match self.nodes.get(&id) {
            Some(n) => Ok(Some(n.clone())),
            None => self.inner.node_record(id),
        }
    }

    fn any_node_record(&mut self) -> Result<bool, Self::Error> {
        Ok(!self.nodes.is_empty() || self.inner.any_node_record()?)
    }

    fn put_node_record(&mut self, node: &NodeRecord) {
        self.nodes.insert(node.id, node.clone());
        self.writes.push(StagedWrite::Node(node.clone()));
    }

    fn move_record(&mut self, shard_id: u64) -> Result<Option<MoveRecord>, Self::Error> {
        match self.moves.get(&shard_id) {
            Some(m) => Ok(m.clone()),
            None => self.inner.move_record(shard_id),
        }
    }

    fn put_move_record(&mut self, record: &MoveRecord) {
        self.moves.insert(record.shard_id, Some(record.clone()));
        self.writes.push(StagedWrite::Move(record.clone()));
    }

    fn delete_move_record(&mut self, shard_id: u64) {
        self.moves.insert(shard_id, None);
        self.writes.push(StagedWrite::DeleteMove(shard_id));
    }

    fn shard_record(&mut self, shard_id: u64) -> Result<Option<ShardRecord>, Self::Error> {
        match self.shards.get(&shard_id) {
            Some(r) => Ok(Some(r.clone())),
            None => self.inner.shard_record(shard_id),
        }
    }

    fn put_shard_record(&mut self, record: &ShardRecord) {
        self.shards.insert(record.id, record.clone());
        self.writes.push(StagedWrite::Shard(record.clone()));
    }
}
