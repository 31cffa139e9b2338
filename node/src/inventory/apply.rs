//! `apply`: the pure state transition of one shard for one log entry.
//!
//! No I/O and no async: the state is reached through the [`Records`] and
//! [`ShardState`] traits, implemented in memory for tests and over a RocksDB write
//! batch by `storage::state_machine`. Everything here is deterministic in
//! (state, entry), which is what keeps replicas identical.
//!
//! Invariants, asserted after every change (they stay on in release builds):
//! `on_hand >= reserved` per SKU, `reserved == Σ qty of active reservations` (the
//! property tests check the sum), and a request id is never applied twice.

use super::cluster::{self, MoveRecord, NodeRecord, ShardRecord};
use super::staged::Staged;
use super::types::*;

/// The largest quantity a stock record may hold: 10^15 units. Far above any real
/// stock, far below `u64::MAX`, so sums of a few quantities cannot overflow.
pub const QTY_MAX: u64 = 1_000_000_000_000_000;

/// Timers (expiries and forgets) handled per entry at most; the rest wait for the
/// next entry, so one entry never does unbounded work.
pub const TIMERS_PER_ENTRY_MAX: usize = 4_096;

/// Stored outcomes pruned per entry at most, beyond the entry's own operations.
pub const PRUNES_PER_ENTRY_MAX: usize = 4_096;

/// Reads and writes of stock records, reservations and stored outcomes.
pub trait Records {
    type Error;
    fn stock(&mut self, sku: &str) -> Result<Option<StockRecord>, Self::Error>;
    fn put_stock(&mut self, sku: &str, record: StockRecord);
    fn reservation(&mut self, id: &str) -> Result<Option<Reservation>, Self::Error>;
    /// Stores `r` and files it under `r.timer_ms`, first removing its entry under
    /// `old_timer_ms` when it had one.
    fn put_reservation(&mut self, r: &Reservation, old_timer_ms: Option<u64>);
    fn delete_reservation(&mut self, id: &str, timer_ms: u64);
    fn outcome(&mut self, request_id: &RequestId) -> Result<Option<StoredOutcome>, Self::Error>;
    fn put_outcome(&mut self, request_id: &RequestId, stored: &StoredOutcome);
    /// The cluster map's records (meta shard only; `inventory::cluster`).
    fn node_record(&mut self, id: u64) -> Result<Option<NodeRecord>, Self::Error>;
    /// True when at least one node is recorded.
    fn any_node_record(&mut self) -> Result<bool, Self::Error>;
    fn put_node_record(&mut self, node: &NodeRecord);
    fn move_record(&mut self, shard_id: u64) -> Result<Option<MoveRecord>, Self::Error>;
    fn put_move_record(&mut self, record: &MoveRecord);
    fn delete_move_record(&mut self, shard_id: u64);
    fn shard_record(&mut self, shard_id: u64) -> Result<Option<ShardRecord>, Self::Error>;
    fn put_shard_record(&mut self, record: &ShardRecord);
}

/// A whole shard: records plus its clock, timer index and outcome retention.
pub trait ShardState: Records {
    fn clock_ms(&self) -> u64;
    fn set_clock_ms(&mut self, now_ms: u64);
    /// Up to `max` (timer_ms, reservation id) pairs with `timer_ms <= now_ms`, oldest first.
    fn due_timers(&mut self, now_ms: u64, max: usize) -> Result<Vec<(u64, String)>, Self::Error>;
    /// Deletes stored outcomes applied before `applied_before_ms`, then the oldest
    /// while more than `keep_max` remain. The outcomes of one millisecond of the shard
    /// clock go together (the store files them by entry, not one by one). `deletes_max`
    /// bounds the work: the store may overrun it by one entry's outcomes, and when it
    /// runs out mid-millisecond the rest goes with the next entry.
    fn prune_outcomes(
        &mut self,
        applied_before_ms: u64,
        keep_max: u64,
        deletes_max: usize,
    ) -> Result<u64, Self::Error>;
}

/// Applies one log entry's request at the shard clock `max(previous, req.now_ms)`.
pub fn apply<S: ShardState>(state: &mut S, req: &ShardRequest) -> Result<ShardResponse, S::Error> {
    let now_ms = state.clock_ms().max(req.now_ms);
    state.set_clock_ms(now_ms);
    fire_due_timers(state, now_ms, req.retention)?;
    let ops_total: usize = req.groups.iter().map(|g| g.ops.len()).sum();
    state.prune_outcomes(
        now_ms.saturating_sub(req.retention.retention_ms),
        req.retention.outcomes_max,
        PRUNES_PER_ENTRY_MAX + ops_total,
    )?;
    let mut groups = Vec::with_capacity(req.groups.len());
    for group in &req.groups {
        let results = if group.atomic {
            apply_atomic(state, &group.ops, now_ms, req.retention)?
        } else {
            let mut results = Vec::with_capacity(group.ops.len());
            for op in &group.ops {
                results.push(apply_op(state, op, now_ms, req.retention)?);
            }
            results
        };
        groups.push(results);
    }
    Ok(ShardResponse { groups })
}

/// Expires active reservations past their expiry and forgets closed ones past
/// retention: the eager half of expiry (the lazy half is in `confirm`/`release`).
fn fire_due_timers<S: ShardState>(
    state: &mut S,
    now_ms: u64,
    retention: Retention,
) -> Result<(), S::Error> {
    for (timer_ms, id) in state.due_timers(now_ms, TIMERS_PER_ENTRY_MAX)? {
        match state.reservation(&id)? {
            Some(r) if r.state == ReservationState::Active => {
                assert!(
                    r.expires_at_ms <= now_ms,
                    "active reservation {id} filed under a timer before its expiry"
                );
                expire(state, r, now_ms, retention)?;
            }
            Some(r) => {
                assert_eq!(
                    r.timer_ms, timer_ms,
                    "reservation {id} filed under a stale timer"
                );
                state.delete_reservation(&id, timer_ms);
            }
            None => panic!("timer index names reservation {id}, which does not exist"),
        }
    }
    Ok(())
}

fn apply_op<R: Records>(
    state: &mut R,
    op: &Op,
    now_ms: u64,
    retention: Retention,
) -> Result<OpResult, R::Error> {
    let fp = op.command.fingerprint();
    if let Some(stored) = state.outcome(&op.request_id)? {
        if stored.fingerprint == fp {
            return Ok(OpResult {
                outcome: stored.outcome,
                replayed: true,
            });
        }
        return Ok(OpResult {
            outcome: Outcome::Rejected(Rejection::RequestIdReused),
            replayed: false,
        });
    }
    let outcome = execute(state, &op.command, now_ms, retention)?;
    state.put_outcome(
        &op.request_id,
        &StoredOutcome {
            fingerprint: fp,
            applied_at_ms: now_ms,
            outcome: outcome.clone(),
        },
    );
    Ok(OpResult {
        outcome,
        replayed: false,
    })
}

/// All-or-nothing: runs the ops against a staging layer and keeps their effects only
/// if none was refused. When one is refused, it keeps its refusal and every other
/// new op is refused as `Aborted`; those outcomes are stored, so a retry of the group
/// gets the same answer.
fn apply_atomic<S: ShardState>(
    state: &mut S,
    ops: &[Op],
    now_ms: u64,
    retention: Retention,
) -> Result<Vec<OpResult>, S::Error> {
    let mut staged = Staged::new(state);
    let mut results = Vec::with_capacity(ops.len());
    let mut failed: Option<usize> = None;
    for (i, op) in ops.iter().enumerate() {
        let r = apply_op(&mut staged, op, now_ms, retention)?;
        if !r.replayed && matches!(r.outcome, Outcome::Rejected(_)) && failed.is_none() {
            failed = Some(i);
        }
        results.push(r);
    }
    let Some(failed) = failed else {
        staged.commit();
        return Ok(results);
    };
    drop(staged);
    let failed_op = u32::try_from(failed).unwrap_or(u32::MAX);
    for (i, (op, r)) in ops.iter().zip(results.iter_mut()).enumerate() {
        if r.replayed || matches!(r.outcome, Outcome::Rejected(Rejection::RequestIdReused)) {
            continue;
        }
        if i != failed {
            r.outcome = Outcome::Rejected(Rejection::Aborted { failed_op });
        }
        state.put_outcome(
            &op.request_id,
            &StoredOutcome {
                fingerprint: op.command.fingerprint(),
                applied_at_ms: now_ms,
                outcome: r.outcome.clone(),
            },
        );
    }
    Ok(results)
}

fn rejected(r: Rejection) -> Outcome {
    Outcome::Rejected(r)
}

fn must_exist<R: Records>(
    state: &mut R,
    sku: &str,
) -> Result<Result<StockRecord, Rejection>, R::Error> {
    Ok(state.stock(sku)?.ok_or_else(|| Rejection::SkuNotFound {
        sku: sku.to_string(),
    }))
}

fn store_stock<R: Records>(state: &mut R, sku: &str, mut record: StockRecord) -> StockRecord {
    assert!(
        record.on_hand >= record.reserved,
        "{sku}: on_hand {} < reserved {}",
        record.on_hand,
        record.reserved
    );
    assert!(
        record.on_hand <= QTY_MAX,
        "{sku}: on_hand {} over QTY_MAX",
        record.on_hand
    );
    record.version += 1;
    state.put_stock(sku, record);
    record
}

fn execute<R: Records>(
    state: &mut R,
    command: &Command,
    now_ms: u64,
    retention: Retention,
) -> Result<Outcome, R::Error> {
    match command {
        Command::SetStock {
            sku,
            on_hand,
            expected_version,
        } => set_stock(state, sku, *on_hand, *expected_version),
        Command::AdjustStock {
            sku,
            delta,
            expected_version,
        } => adjust_stock(state, sku, *delta, *expected_version),
        Command::Decrement { sku, qty } => decrement(state, sku, *qty),
        Command::Reserve {
            reservation_id,
            items,
            ttl_ms,
        } => reserve(
            state,
            reservation_id,
            items,
            now_ms.saturating_add(*ttl_ms),
            now_ms,
        ),
        Command::Confirm {
            reservation_id,
            sku,
        } => close(state, reservation_id, sku, true, now_ms, retention),
        Command::Release {
            reservation_id,
            sku,
        } => close(state, reservation_id, sku, false, now_ms, retention),
        Command::Cluster(c) => cluster::apply(state, c, now_ms).map(Outcome::Cluster),
        Command::Split { .. } | Command::Freeze { .. } | Command::Merge { .. } => {
            unreachable!("splits and merges are applied by the state machine")
        }
    }
}

fn stock_outcome<R: Records>(state: &mut R, sku: &str, record: StockRecord) -> Outcome {
    Outcome::Stock {
        sku: sku.to_string(),
        record: store_stock(state, sku, record),
    }
}

/// The refusal of a conditional command whose record (version 0: absent) moved on.
fn version_mismatch(sku: &str, actual: u64, expected: Option<u64>) -> Option<Rejection> {
    let expected = expected?;
    (expected != actual).then(|| Rejection::VersionMismatch {
        sku: sku.to_string(),
        expected,
        actual,
    })
}

fn set_stock<R: Records>(
    state: &mut R,
    sku: &str,
    on_hand: u64,
    expected_version: Option<u64>,
) -> Result<Outcome, R::Error> {
    let mut record = state.stock(sku)?.unwrap_or_default();
    if let Some(r) = version_mismatch(sku, record.version, expected_version) {
        return Ok(rejected(r));
    }
    if on_hand > QTY_MAX {
        return Ok(rejected(Rejection::QuantityOverflow {
            sku: sku.to_string(),
        }));
    }
    if on_hand < record.reserved {
        return Ok(rejected(Rejection::InsufficientStock {
            sku: sku.to_string(),
            available: record.available(),
        }));
    }
    record.on_hand = on_hand;
    Ok(stock_outcome(state, sku, record))
}

fn adjust_stock<R: Records>(
    state: &mut R,
    sku: &str,
    delta: i64,
    expected_version: Option<u64>,
) -> Result<Outcome, R::Error> {
    let mut record = match must_exist(state, sku)? {
        Ok(r) => r,
        Err(e) => return Ok(rejected(e)),
    };
    if let Some(r) = version_mismatch(sku, record.version, expected_version) {
        return Ok(rejected(r));
    }
    let magnitude = delta.unsigned_abs();
    if delta >= 0 {
        match record.on_hand.checked_add(magnitude) {
            Some(v) if v <= QTY_MAX => record.on_hand = v,
            _ => {
                return Ok(rejected(Rejection::QuantityOverflow {
                    sku: sku.to_string(),
                }));
            }
        }
    } else {
        if magnitude > record.available() {
            return Ok(rejected(Rejection::InsufficientStock {
                sku: sku.to_string(),
                available: record.available(),
            }));
        }
        record.on_hand -= magnitude;
    }
    Ok(stock_outcome(state, sku, record))
}

fn decrement<R: Records>(state: &mut R, sku: &str, qty: u64) -> Result<Outcome, R::Error> {
    let mut record = match must_exist(state, sku)? {
        Ok(r) => r,
        Err(e) => return Ok(rejected(e)),
    };
    if qty > record.available() {
        return Ok(rejected(Rejection::InsufficientStock {
            sku: sku.to_string(),
            available: record.available(),
        }));
    }
    record.on_hand -= qty;
    Ok(stock_outcome(state, sku, record))
}

fn reserve<R: Records>(
    state: &mut R,
    reservation_id: &str,
    items: &[Item],
    expires_at_ms: u64,
    now_ms: u64,
) -> Result<Outcome, R::Error> {
    if state.reservation(reservation_id)?.is_some() {
        return Ok(rejected(Rejection::ReservationIdTaken {
            reservation_id: reservation_id.to_string(),
        }));
    }
    // Check every item before touching any: all or none.
    let mut records = Vec::with_capacity(items.len());
    for item in items {
        let record = match must_exist(state, &item.sku)? {
            Ok(r) => r,
            Err(e) => return Ok(rejected(e)),
        };
        if item.qty > record.available() {
            return Ok(rejected(Rejection::InsufficientStock {
                sku: item.sku.clone(),
                available: record.available(),
            }));
        }
        records.push(record);
    }
    let mut after = Vec::with_capacity(items.len());
    for (item, mut record) in items.iter().zip(records) {
        record.reserved += item.qty;
        after.push((item.sku.clone(), store_stock(state, &item.sku, record)));
    }
    let reservation = Reservation {
        id: reservation_id.to_string(),
        items: items.to_vec(),
        state: ReservationState::Active,
        created_at_ms: now_ms,
        expires_at_ms,
        closed_at_ms: 0,
        timer_ms: expires_at_ms,
    };
    state.put_reservation(&reservation, None);
    Ok(Outcome::Reservation {
        reservation,
        records: after,
    })
}

/// Confirm (`confirm`) or release an active reservation routed by `sku`.
fn close<R: Records>(
    state: &mut R,
    reservation_id: &str,
    sku: &str,
    confirm: bool,
    now_ms: u64,
    retention: Retention,
) -> Result<Outcome, R::Error> {
    let Some(r) = state.reservation(reservation_id)? else {
        return Ok(rejected(Rejection::ReservationNotFound {
            reservation_id: reservation_id.to_string(),
        }));
    };
    if !r.items.iter().any(|i| i.sku == sku) {
        return Ok(rejected(Rejection::SkuNotInReservation {
            reservation_id: reservation_id.to_string(),
            sku: sku.to_string(),
        }));
    }
    let r = if r.state == ReservationState::Active && r.expires_at_ms <= now_ms {
        // Lazy expiry: its timer has not fired yet, but its time has come.
        expire(state, r, now_ms, retention)?
    } else {
        r
    };
    match r.state {
        ReservationState::Active => {}
        ReservationState::Expired => {
            return Ok(rejected(Rejection::ReservationExpired {
                reservation_id: reservation_id.to_string(),
            }));
        }
        other => {
            return Ok(rejected(Rejection::ReservationNotActive {
                reservation_id: reservation_id.to_string(),
                state: other,
            }));
        }
    }
    let mut after = Vec::with_capacity(r.items.len());
    for item in &r.items {
        let mut record = state
            .stock(&item.sku)?
            .unwrap_or_else(|| panic!("reserved SKU {} has no record", item.sku));
        assert!(
            record.reserved >= item.qty,
            "{}: reserved {} < held {}",
            item.sku,
            record.reserved,
            item.qty
        );
        record.reserved -= item.qty;
        if confirm {
            record.on_hand -= item.qty;
        }
        after.push((item.sku.clone(), store_stock(state, &item.sku, record)));
    }
    let old_timer = r.timer_ms;
    let closed = Reservation {
        state: if confirm {
            ReservationState::Confirmed
        } else {
            ReservationState::Released
        },
        closed_at_ms: now_ms,
        timer_ms: now_ms.saturating_add(retention.retention_ms),
        ..r
    };
    state.put_reservation(&closed, Some(old_timer));
    Ok(Outcome::Reservation {
        reservation: closed,
        records: after,
    })
}

/// Returns an active reservation's stock and marks it expired.
fn expire<R: Records>(
    state: &mut R,
    r: Reservation,
    now_ms: u64,
    retention: Retention,
) -> Result<Reservation, R::Error> {
    assert_eq!(r.state, ReservationState::Active);
    for item in &r.items {
        let mut record = state
            .stock(&item.sku)?
            .unwrap_or_else(|| panic!("reserved SKU {} has no record", item.sku));
        assert!(
            record.reserved >= item.qty,
            "{}: reserved {} < held {}",
            item.sku,
            record.reserved,
            item.qty
        );
        record.reserved -= item.qty;
        store_stock(state, &item.sku, record);
    }
    let old_timer = r.timer_ms;
    let expired = Reservation {
        state: ReservationState::Expired,
        closed_at_ms: now_ms,
        timer_ms: now_ms.saturating_add(retention.retention_ms),
        ..r
    };
    state.put_reservation(&expired, Some(old_timer));
    Ok(expired)
}
