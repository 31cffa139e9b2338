//! Deliberately broken modes, for proving that the Jepsen-style tests catch what they
//! claim to (feature `planted-bugs`, never in default builds). The mode is chosen at
//! start by `STOCKPILE_PLANTED_BUG`:
//!
//! - `local-reads`: linearizable reads skip the read index and answer from local state;
//! - `ignore-request-ids`: the state machine never looks up stored outcomes, so a retry
//!   applies again;
//! - `ack-before-commit`: a mutation is answered from local state as soon as it is
//!   proposed, before it commits;
//! - `keep-removed-replicas`: a replica a move removed from its shard is reported
//!   dropped but keeps running on its node with its old data (a stale replica that
//!   still answers reads);
//! - `split-range-unchecked`: a shard applies operations on SKUs a split gave to its
//!   child, at propose time and at apply time (the checks that answer SHARD_MOVED);
//! - `merge-unfrozen`: a shard frozen for a merge goes on applying operations, so
//!   writes acknowledged after its state was carried to its left neighbour are lost.
//!
//! The module exists only with the feature (lib.rs), so no default build can reach it;
//! every use is behind `#[cfg(feature = "planted-bugs")]` (scripts/check-placement.sh).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    None,
    LocalReads,
    IgnoreRequestIds,
    AckBeforeCommit,
    KeepRemovedReplicas,
    SplitRangeUnchecked,
    MergeUnfrozen,
}

pub fn active() -> Bug {
    static BUG: std::sync::OnceLock<Bug> = std::sync::OnceLock::new();
    *BUG.get_or_init(|| match std::env::var("STOCKPILE_PLANTED_BUG").as_deref() {
        Ok("local-reads") => Bug::LocalReads,
        Ok("ignore-request-ids") => Bug::IgnoreRequestIds,
        Ok("ack-before-commit") => Bug::AckBeforeCommit,
        Ok("keep-removed-replicas") => Bug::KeepRemovedReplicas,
        Ok("split-range-unchecked") => Bug::SplitRangeUnchecked,
        Ok("merge-unfrozen") => Bug::MergeUnfrozen,
        _ => Bug::None,
    })
}

/// The state a fabricated early answer (`ack-before-commit`) is computed on: reads
/// from the local replica, writes kept in memory and thrown away.
pub mod scratch {
    use std::collections::HashMap;
    use std::io;

    use crate::inventory::cluster::{MoveRecord, NodeRecord, ShardRecord};
    use crate::inventory::{
        Records, RequestId, Reservation, ShardState, StockRecord, StoredOutcome,
    };
    use crate::storage::ShardReader;

    pub struct Scratch<'a> {
        pub reader: &'a ShardReader,
        pub clock_ms: u64,
        stock: HashMap<String, StockRecord>,
        reservations: HashMap<String, Option<Reservation>>,
        outcomes: HashMap<RequestId, StoredOutcome>,
    }

    impl<'a> Scratch<'a> {
        pub fn new(reader: &'a ShardReader) -> io::Result<Self> {
            let clock_ms = reader.meta()?.clock_ms;
            Ok(Scratch {
                reader,
                clock_ms,
                stock: HashMap::new(),
                reservations: HashMap::new(),
                outcomes: HashMap::new(),
            })
        }
    }

    impl Records for Scratch<'_> {
        type Error = io::Error;
        fn stock(&mut self, sku: &str) -> io::Result<Option<StockRecord>> {
            match self.stock.get(sku) {
                Some(r) => Ok(Some(*r)),
                None => Ok(self.reader.get_many(&[sku])?.1.pop().flatten()),
            }
        }
        fn put_stock(&mut self, sku: &str, record: StockRecord) {
            self.stock.insert(sku.to_string(), record);
        }
        fn reservation(&mut self, id: &str) -> io::Result<Option<Reservation>> {
            match self.reservations.get(id) {
                Some(r) => Ok(r.clone()),
                None => Ok(self.reader.reservation(id)?.1),
            }
        }
        fn put_reservation(&mut self, r: &Reservation, _old_timer_ms: Option<u64>) {
            self.reservations.insert(r.id.clone(), Some(r.clone()));
        }
        fn delete_reservation(&mut self, id: &str, _timer_ms: u64) {
            self.reservations.insert(id.to_string(), None);
        }
        fn outcome(&mut self, request_id: &RequestId) -> io::Result<Option<StoredOutcome>> {
            Ok(self.outcomes.get(request_id).cloned())
        }
        fn put_outcome(&mut self, request_id: &RequestId, stored: &StoredOutcome) {
            self.outcomes.insert(*request_id, stored.clone());
        }
        // The planted modes preview inventory entries only; the cluster map (meta
        // shard) is never previewed, so its records read as absent here.
        fn node_record(&mut self, _id: u64) -> io::Result<Option<NodeRecord>> {
            Ok(None)
        }
        fn any_node_record(&mut self) -> io::Result<bool> {
            Ok(false)
        }
        fn put_node_record(&mut self, _node: &NodeRecord) {}
        fn move_record(&mut self, _shard_id: u64) -> io::Result<Option<MoveRecord>> {
            Ok(None)
        }
        fn put_move_record(&mut self, _record: &MoveRecord) {}
        fn delete_move_record(&mut self, _shard_id: u64) {}
        fn shard_record(&mut self, _shard_id: u64) -> io::Result<Option<ShardRecord>> {
            Ok(None)
        }
        fn put_shard_record(&mut self, _record: &ShardRecord) {}
    }

    impl ShardState for Scratch<'_> {
        fn clock_ms(&self) -> u64 {
            self.clock_ms
        }
        fn set_clock_ms(&mut self, now_ms: u64) {
            self.clock_ms = now_ms;
        }
        fn due_timers(&mut self, _now_ms: u64, _max: usize) -> io::Result<Vec<(u64, String)>> {
            Ok(Vec::new())
        }
        fn prune_outcomes(&mut self, _before: u64, _keep: u64, _max: usize) -> io::Result<u64> {
            Ok(0)
        }
    }
}
