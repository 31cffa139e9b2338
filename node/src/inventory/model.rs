//! The reference model the property tests (`model_tests`) hold `apply` to: plain
//! maps and the rules as DESIGN.md states them, written independently of `apply`.

use std::collections::BTreeMap;

use super::*;

/// The reference model.
#[derive(Clone, Debug, Default)]
pub(super) struct Model {
    pub(super) clock: u64,
    pub(super) stock: BTreeMap<String, (u64, u64, u64)>, // on_hand, reserved, version
    pub(super) res: BTreeMap<String, Reservation>,
    pub(super) outcomes: BTreeMap<RequestId, (u128, u64, Outcome)>, // fingerprint, applied_at, outcome
}

impl Model {
    fn bump(&mut self, sku: &str, on_hand: u64, reserved: u64) -> StockRecord {
        let e = self.stock.get_mut(sku).expect("bumped SKU exists");
        *e = (on_hand, reserved, e.2 + 1);
        StockRecord {
            on_hand,
            reserved,
            version: e.2,
        }
    }

    fn expire(&mut self, id: &str, now: u64, retention: &Retention) {
        let r = self
            .res
            .get(id)
            .cloned()
            .expect("expiring reservation exists");
        for i in &r.items {
            let (oh, rs, _) = self.stock[&i.sku];
            self.bump(&i.sku, oh, rs - i.qty);
        }
        let r = self.res.get_mut(id).expect("exists");
        r.state = ReservationState::Expired;
        r.closed_at_ms = now;
        r.timer_ms = now + retention.retention_ms;
    }

    pub(super) fn entry(&mut self, req: &ShardRequest) -> Vec<Vec<OpResult>> {
        let now = self.clock.max(req.now_ms);
        self.clock = now;
        let ret = req.retention;
        let due: Vec<String> = self
            .res
            .values()
            .filter(|r| r.timer_ms <= now)
            .map(|r| r.id.clone())
            .collect();
        for id in due {
            if self.res[&id].state == ReservationState::Active {
                self.expire(&id, now, &ret);
            } else {
                self.res.remove(&id);
            }
        }
        let cutoff = now.saturating_sub(ret.retention_ms);
        self.outcomes.retain(|_, (_, at, _)| *at >= cutoff);
        while self.outcomes.len() as u64 > ret.outcomes_max {
            let oldest = self
                .outcomes
                .values()
                .map(|(_, at, _)| *at)
                .min()
                .expect("non-empty");
            self.outcomes.retain(|_, (_, at, _)| *at != oldest);
        }
        let mut out = Vec::new();
        for g in &req.groups {
            if g.atomic {
                let mut trial = self.clone();
                let results: Vec<OpResult> =
                    g.ops.iter().map(|op| trial.op(op, now, &ret)).collect();
                let failed = results
                    .iter()
                    .position(|r| !r.replayed && matches!(r.outcome, Outcome::Rejected(_)));
                match failed {
                    None => {
                        *self = trial;
                        out.push(results);
                    }
                    Some(f) => {
                        let mut results = results;
                        for (i, (op, r)) in g.ops.iter().zip(results.iter_mut()).enumerate() {
                            if r.replayed
                                || r.outcome == Outcome::Rejected(Rejection::RequestIdReused)
                            {
                                continue;
                            }
                            if i != f {
                                r.outcome = Outcome::Rejected(Rejection::Aborted {
                                    failed_op: f as u32,
                                });
                            }
                            self.outcomes.insert(
                                op.request_id,
                                (op.command.fingerprint(), now, r.outcome.clone()),
                            );
                        }
                        out.push(results);
                    }
                }
            } else {
                out.push(g.ops.iter().map(|op| self.op(op, now, &ret)).collect());
            }
        }
        out
    }

    fn op(&mut self, op: &Op, now: u64, ret: &Retention) -> OpResult {
        let fp = op.command.fingerprint();
        if let Some((f, _, o)) = self.outcomes.get(&op.request_id) {
            if *f == fp {
                return OpResult {
                    outcome: o.clone(),
                    replayed: true,
                };
            }
            return OpResult {
                outcome: Outcome::Rejected(Rejection::RequestIdReused),
                replayed: false,
            };
        }
        let outcome = self.exec(&op.command, now, ret);
        self.outcomes
            .insert(op.request_id, (fp, now, outcome.clone()));
        OpResult {
            outcome,
            replayed: false,
        }
    }

    #[allow(
        clippy::too_many_lines,
        reason = "the reference model states every command's rules in one match, to be \
                  read against DESIGN.md"
    )]
    fn exec(&mut self, c: &Command, now: u64, ret: &Retention) -> Outcome {
        let rej = Outcome::Rejected;
        match c {
            // The model is of the inventory; the cluster map has its own unit tests
            // (`inventory::cluster`), and API decoding never yields a cluster command.
            Command::Cluster(_)
            | Command::Split { .. }
            | Command::Freeze { .. }
            | Command::Merge { .. } => {
                unreachable!("the model is never given a cluster command, split or merge")
            }
            Command::SetStock {
                sku,
                on_hand,
                expected_version,
            } => {
                let version = self.stock.get(sku).map_or(0, |e| e.2);
                if let Some(expected) = *expected_version
                    && expected != version
                {
                    return rej(Rejection::VersionMismatch {
                        sku: sku.clone(),
                        expected,
                        actual: version,
                    });
                }
                let (_, rs, _) = *self.stock.entry(sku.clone()).or_insert((0, 0, 0));
                if *on_hand < rs {
                    let (oh, rs, _) = self.stock[sku];
                    return rej(Rejection::InsufficientStock {
                        sku: sku.clone(),
                        available: oh - rs,
                    });
                }
                Outcome::Stock {
                    sku: sku.clone(),
                    record: self.bump(sku, *on_hand, rs),
                }
            }
            Command::AdjustStock {
                sku,
                delta,
                expected_version,
            } => {
                let Some(&(oh, rs, version)) = self.stock.get(sku) else {
                    return rej(Rejection::SkuNotFound { sku: sku.clone() });
                };
                if let Some(expected) = *expected_version
                    && expected != version
                {
                    return rej(Rejection::VersionMismatch {
                        sku: sku.clone(),
                        expected,
                        actual: version,
                    });
                }
                let new = oh as i128 + *delta as i128;
                if new < rs as i128 {
                    return rej(Rejection::InsufficientStock {
                        sku: sku.clone(),
                        available: oh - rs,
                    });
                }
                if new > QTY_MAX as i128 {
                    return rej(Rejection::QuantityOverflow { sku: sku.clone() });
                }
                Outcome::Stock {
                    sku: sku.clone(),
                    record: self.bump(sku, new as u64, rs),
                }
            }
            Command::Decrement { sku, qty } => {
                let Some(&(oh, rs, _)) = self.stock.get(sku) else {
                    return rej(Rejection::SkuNotFound { sku: sku.clone() });
                };
                if oh - rs < *qty {
                    return rej(Rejection::InsufficientStock {
                        sku: sku.clone(),
                        available: oh - rs,
                    });
                }
                Outcome::Stock {
                    sku: sku.clone(),
                    record: self.bump(sku, oh - qty, rs),
                }
            }
            Command::Reserve {
                reservation_id,
                items,
                ttl_ms,
            } => {
                if self.res.contains_key(reservation_id) {
                    return rej(Rejection::ReservationIdTaken {
                        reservation_id: reservation_id.clone(),
                    });
                }
                for i in items {
                    let Some(&(oh, rs, _)) = self.stock.get(&i.sku) else {
                        return rej(Rejection::SkuNotFound { sku: i.sku.clone() });
                    };
                    if oh - rs < i.qty {
                        return rej(Rejection::InsufficientStock {
                            sku: i.sku.clone(),
                            available: oh - rs,
                        });
                    }
                }
                let records = items
                    .iter()
                    .map(|i| {
                        let (oh, rs, _) = self.stock[&i.sku];
                        (i.sku.clone(), self.bump(&i.sku, oh, rs + i.qty))
                    })
                    .collect();
                let r = Reservation {
                    id: reservation_id.clone(),
                    items: items.clone(),
                    state: ReservationState::Active,
                    created_at_ms: now,
                    expires_at_ms: now + ttl_ms,
                    closed_at_ms: 0,
                    timer_ms: now + ttl_ms,
                };
                self.res.insert(reservation_id.clone(), r.clone());
                Outcome::Reservation {
                    reservation: r,
                    records,
                }
            }
            Command::Confirm {
                reservation_id,
                sku,
            }
            | Command::Release {
                reservation_id,
                sku,
            } => {
                let confirm = matches!(c, Command::Confirm { .. });
                let Some(r) = self.res.get(reservation_id).cloned() else {
                    return rej(Rejection::ReservationNotFound {
                        reservation_id: reservation_id.clone(),
                    });
                };
                if r.items.iter().all(|i| i.sku != *sku) {
                    return rej(Rejection::SkuNotInReservation {
                        reservation_id: reservation_id.clone(),
                        sku: sku.clone(),
                    });
                }
                if r.state == ReservationState::Active && r.expires_at_ms <= now {
                    self.expire(reservation_id, now, ret);
                }
                let r = self.res[reservation_id].clone();
                match r.state {
                    ReservationState::Active => {}
                    ReservationState::Expired => {
                        return rej(Rejection::ReservationExpired {
                            reservation_id: reservation_id.clone(),
                        });
                    }
                    s => {
                        return rej(Rejection::ReservationNotActive {
                            reservation_id: reservation_id.clone(),
                            state: s,
                        });
                    }
                }
                let records = r
                    .items
                    .iter()
                    .map(|i| {
                        let (oh, rs, _) = self.stock[&i.sku];
                        let oh = if confirm { oh - i.qty } else { oh };
                        (i.sku.clone(), self.bump(&i.sku, oh, rs - i.qty))
                    })
                    .collect();
                let r = self.res.get_mut(reservation_id).expect("exists");
                r.state = if confirm {
                    ReservationState::Confirmed
                } else {
                    ReservationState::Released
                };
                r.closed_at_ms = now;
                r.timer_ms = now + ret.retention_ms;
                Outcome::Reservation {
                    reservation: r.clone(),
                    records,
                }
            }
        }
    }
}
