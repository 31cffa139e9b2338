//! Linearizability per SKU: a model of one SKU and the Wing–Gong–Lowe search.
//!
//! The search linearizes operations one at a time: an operation may go next when it
//! was invoked before the earliest response among the completed operations not yet
//! linearized. Each step applies the operation to the model and must reproduce what
//! the operation observed. Visited (linearized set, model state) pairs are memoised by
//! a 128-bit fingerprint. Unknown outcomes (`info`) may take effect at any point after
//! their invocation, or never; a reservation's expiry is such an optional operation
//! whose "invocation" is its deadline. The search succeeds when every completed
//! operation is linearized; running out of its budget is a failure, not a pass.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use serde::Serialize;

use crate::history::{Call, Op, Outcome};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ResState {
    Active,
    Confirmed,
    Released,
    Expired,
}

impl ResState {
    fn name(self) -> &'static str {
        match self {
            ResState::Active => "active",
            ResState::Confirmed => "confirmed",
            ResState::Released => "released",
            ResState::Expired => "expired",
        }
    }
}

/// One SKU as the store should hold it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Model {
    exists: bool,
    on_hand: u64,
    reserved: u64,
    reservations: BTreeMap<String, (u64, ResState)>,
    /// Outcomes remembered for request ids that occur more than once in the history.
    stored: BTreeMap<String, Outcome>,
}

fn refused(reason: &str, available: Option<u64>) -> Outcome {
    Outcome::Refused {
        reason: reason.to_string(),
        available,
    }
}

impl Model {
    fn stock(&self) -> Outcome {
        Outcome::Stock {
            found: self.exists,
            on_hand: self.on_hand,
            reserved: self.reserved,
        }
    }

    fn available(&self) -> u64 {
        self.on_hand - self.reserved
    }

    /// What the store does with `call`: the new state and the outcome it reports.
    fn execute(&self, call: &Call) -> (Model, Outcome) {
        let mut m = self.clone();
        let out = match call {
            Call::Set { on_hand } => {
                if *on_hand < m.reserved {
                    refused("INSUFFICIENT_STOCK", Some(m.available()))
                } else {
                    m.exists = true;
                    m.on_hand = *on_hand;
                    m.stock()
                }
            }
            Call::Read => m.stock(),
            Call::Decrement { qty } => {
                if !m.exists {
                    refused("SKU_NOT_FOUND", None)
                } else if *qty > m.available() {
                    refused("INSUFFICIENT_STOCK", Some(m.available()))
                } else {
                    m.on_hand -= qty;
                    m.stock()
                }
            }
            Call::Adjust { delta } => {
                let d = delta.unsigned_abs();
                if !m.exists {
                    refused("SKU_NOT_FOUND", None)
                } else if *delta < 0 && d > m.available() {
                    refused("INSUFFICIENT_STOCK", Some(m.available()))
                } else {
                    if *delta < 0 {
                        m.on_hand -= d
                    } else {
                        m.on_hand += d
                    }
                    m.stock()
                }
            }
            Call::Reserve { res, qty, .. } => {
                if m.reservations.contains_key(res) {
                    refused("INVALID_ARGUMENT", None)
                } else if !m.exists {
                    refused("SKU_NOT_FOUND", None)
                } else if *qty > m.available() {
                    refused("INSUFFICIENT_STOCK", Some(m.available()))
                } else {
                    m.reserved += qty;
                    m.reservations.insert(res.clone(), (*qty, ResState::Active));
                    m.stock()
                }
            }
            Call::Confirm { res } | Call::Release { res } => match m.reservations.get(res).copied()
            {
                None => refused("RESERVATION_NOT_FOUND", None),
                Some((_, ResState::Expired)) => refused("RESERVATION_EXPIRED", None),
                Some((_, ResState::Confirmed | ResState::Released)) => {
                    refused("RESERVATION_NOT_ACTIVE", None)
                }
                Some((qty, ResState::Active)) => {
                    let confirm = matches!(call, Call::Confirm { .. });
                    m.reserved -= qty;
                    if confirm {
                        m.on_hand -= qty;
                    }
                    m.reservations.insert(
                        res.clone(),
                        (
                            qty,
                            if confirm {
                                ResState::Confirmed
                            } else {
                                ResState::Released
                            },
                        ),
                    );
                    m.stock()
                }
            },
            Call::ReadReservation { res } => match m.reservations.get(res) {
                None => refused("RESERVATION_NOT_FOUND", None),
                Some((_, s)) => Outcome::ReservationState(s.name().to_string()),
            },
            Call::Expire { res } => {
                if let Some((qty, ResState::Active)) = m.reservations.get(res).copied() {
                    m.reserved -= qty;
                    m.reservations.insert(res.clone(), (qty, ResState::Expired));
                }
                Outcome::Unknown
            }
        };
        (m, out)
    }

    /// The state after linearizing `op` here, or None if the store could not have
    /// answered what `op` observed.
    fn step(&self, op: &Op, dup_rids: &HashSet<String>) -> Option<Model> {
        if let Some(rid) = op.rid.as_ref().filter(|r| dup_rids.contains(*r))
            && let Some(first) = self.stored.get(rid)
        {
            // A retry: the store answers the first outcome and changes nothing.
            return match &op.outcome {
                Outcome::Unknown => Some(self.clone()),
                seen if seen == first => Some(self.clone()),
                _ => None,
            };
        }
        let (mut next, out) = self.execute(&op.call);
        let matches = match (&op.outcome, &out) {
            (Outcome::Unknown, _) => true,
            (
                Outcome::Refused { reason, available },
                Outcome::Refused {
                    reason: r2,
                    available: a2,
                },
            ) => reason == r2 && (available.is_none() || available == a2),
            (seen, model) => seen == model,
        };
        if !matches {
            return None;
        }
        if matches!(out, Outcome::Refused { .. }) && !matches!(op.call, Call::Expire { .. }) {
            // A refusal changes nothing (but is remembered for retries below).
            next = Model {
                stored: next.stored,
                ..self.clone()
            };
        }
        if let Some(rid) = op.rid.as_ref().filter(|r| dup_rids.contains(*r)) {
            next.stored.insert(rid.clone(), out);
        }
        Some(next)
    }
}

/// Longest a search may run: past it, the SKU fails as not proven linearizable.
pub const SEARCH_TIME_MAX: std::time::Duration = std::time::Duration::from_secs(90);

/// The verdict for one SKU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkuVerdict {
    pub sku: String,
    pub ops: usize,
    pub linearizable: bool,
    /// Set when the search ran out of its budget (which is a failure).
    pub budget_exceeded: bool,
    pub states_explored: u64,
    /// The longest sequence of op ids the search could linearize.
    pub longest_prefix: Vec<usize>,
    /// Completed ops that could not be placed after the longest prefix.
    pub stuck_at: Vec<usize>,
    pub message: String,
}

fn fingerprint(set: &[u64], m: &Model) -> u128 {
    let mut a = std::collections::hash_map::DefaultHasher::new();
    set.hash(&mut a);
    m.hash(&mut a);
    let mut b = std::collections::hash_map::DefaultHasher::new();
    0x9e37_79b9_7f4a_7c15u64.hash(&mut b);
    m.hash(&mut b);
    set.hash(&mut b);
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

/// Adds the optional expiry of every reservation: from its deadline (the reserve's
/// invocation plus its TTL, minus `expiry_slack_ns` for clock skew) onwards.
pub fn with_expiries(ops: &[Op], expiry_slack_ns: u64) -> Vec<Op> {
    let mut out: Vec<Op> = ops.to_vec();
    for op in ops {
        if let Call::Reserve { res, ttl_ms, .. } = &op.call
            && matches!(op.outcome, Outcome::Stock { .. } | Outcome::Unknown)
        {
            let deadline = op
                .call_ns
                .saturating_add(ttl_ms.saturating_mul(1_000_000))
                .saturating_sub(expiry_slack_ns);
            out.push(Op {
                id: 0,
                process: u64::MAX,
                sku: op.sku.clone(),
                rid: None,
                call: Call::Expire { res: res.clone() },
                outcome: Outcome::Unknown,
                call_ns: deadline,
                ret_ns: u64::MAX,
                invoke_index: u64::MAX,
            });
        }
    }
    out.sort_by_key(|o| (o.call_ns, o.invoke_index));
    for (i, o) in out.iter_mut().enumerate() {
        o.id = i;
    }
    out
}

/// Checks one SKU's ops (with expiries already added) with at most `budget` states.
pub fn check_sku(sku: &str, ops: &[Op], budget: u64) -> SkuVerdict {
    let n = ops.len();
    let words = n.div_ceil(64).max(1);
    let mut rid_count: HashMap<&str, usize> = HashMap::new();
    for o in ops {
        if let Some(r) = &o.rid {
            *rid_count.entry(r).or_default() += 1;
        }
    }
    let dup_rids: HashSet<String> = rid_count
        .into_iter()
        .filter(|(_, c)| *c > 1)
        .map(|(r, _)| r.to_string())
        .collect();
    let required_total = ops.iter().filter(|o| o.required()).count();

    struct Frame {
        set: Vec<u64>,
        /// Every op before this index is linearized.
        first: usize,
        model: Model,
        /// This frame's node in `tree` (its path back to the root).
        node: usize,
        done: usize,
    }
    // (parent node, op linearized to get here); node 0 is the root.
    let mut tree: Vec<(usize, usize)> = vec![(0, usize::MAX)];
    let path_of = |tree: &Vec<(usize, usize)>, mut node: usize| {
        let mut p = Vec::new();
        while node != 0 {
            p.push(tree[node].1);
            node = tree[node].0;
        }
        p.reverse();
        p
    };
    let is_set = |set: &[u64], i: usize| set[i / 64] & (1 << (i % 64)) != 0;
    let mut visited: HashSet<u128> = HashSet::new();
    // Ops naming each reservation: once all are linearized and the reservation is
    // closed, it cannot matter any more and leaves the model (keeps states small).
    let mut refs: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, o) in ops.iter().enumerate() {
        match &o.call {
            Call::Reserve { res, .. }
            | Call::Confirm { res }
            | Call::Release { res }
            | Call::ReadReservation { res } => refs.entry(res.as_str()).or_default().push(i),
            _ => {}
        }
    }
    let started = std::time::Instant::now();
    let mut stack = vec![Frame {
        set: vec![0; words],
        first: 0,
        model: Model::default(),
        node: 0,
        done: 0,
    }];
    let mut best: (usize, usize, Vec<usize>) = (0, 0, Vec::new());
    let mut explored = 0u64;
    while let Some(frame) = stack.pop() {
        explored += 1;
        if explored > budget
            || (explored.is_multiple_of(4096) && started.elapsed() > SEARCH_TIME_MAX)
        {
            return SkuVerdict {
                sku: sku.to_string(),
                ops: n,
                linearizable: false,
                budget_exceeded: true,
                states_explored: explored,
                longest_prefix: path_of(&tree, best.1),
                stuck_at: best.2,
                message: format!(
                    "search budget exceeded ({explored} states, {:.0} s): not proven linearizable",
                    started.elapsed().as_secs_f64()
                ),
            };
        }
        if frame.done == required_total {
            return SkuVerdict {
                sku: sku.to_string(),
                ops: n,
                linearizable: true,
                budget_exceeded: false,
                states_explored: explored,
                longest_prefix: Vec::new(),
                stuck_at: Vec::new(),
                message: format!("linearizable ({n} ops)"),
            };
        }
        // The earliest response among completed ops not yet linearized bounds who may go next.
        // Ops are sorted by invocation and return after it, so both scans stop at the
        // first op invoked at or after the earliest pending response.
        let mut min_ret = u64::MAX;
        for (i, op) in ops.iter().enumerate().skip(frame.first) {
            if op.call_ns >= min_ret {
                break;
            }
            if !is_set(&frame.set, i) && op.required() {
                min_ret = min_ret.min(op.ret_ns);
            }
        }
        let candidates: Vec<usize> = (frame.first..n)
            .take_while(|&i| ops[i].call_ns < min_ret)
            .filter(|&i| !is_set(&frame.set, i))
            .collect();
        if frame.done > best.0 || (frame.done == 0 && best.2.is_empty()) {
            let stuck: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|&i| ops[i].required())
                .collect();
            best = (frame.done, frame.node, stuck);
        }
        // Push in reverse so the earliest-invoked candidate is tried first.
        for &i in candidates.iter().rev() {
            // An expiry matters only while its reservation is active; trying it at other
            // points would multiply equivalent orders.
            if let Call::Expire { res } = &ops[i].call
                && !matches!(
                    frame.model.reservations.get(res),
                    Some((_, ResState::Active))
                )
            {
                continue;
            }
            let Some(mut next) = frame.model.step(&ops[i], &dup_rids) else {
                continue;
            };
            let mut set = frame.set.clone();
            set[i / 64] |= 1 << (i % 64);
            let res = match &ops[i].call {
                Call::Reserve { res, .. }
                | Call::Confirm { res }
                | Call::Release { res }
                | Call::ReadReservation { res } => Some(res.as_str()),
                _ => None,
            };
            if let Some(res) = res
                && next
                    .reservations
                    .get(res)
                    .is_some_and(|(_, st)| *st != ResState::Active)
                && refs
                    .get(res)
                    .is_some_and(|r| r.iter().all(|&j| is_set(&set, j)))
            {
                next.reservations.remove(res);
            }
            let mut first = frame.first;
            while first < n && is_set(&set, first) {
                first += 1;
            }
            if !visited.insert(fingerprint(&set, &next)) {
                continue;
            }
            tree.push((frame.node, i));
            stack.push(Frame {
                set,
                first,
                model: next,
                node: tree.len() - 1,
                done: frame.done + usize::from(ops[i].required()),
            });
        }
    }
    SkuVerdict {
        sku: sku.to_string(),
        ops: n,
        linearizable: false,
        budget_exceeded: false,
        states_explored: explored,
        longest_prefix: path_of(&tree, best.1),
        stuck_at: best.2.clone(),
        message: format!(
            "not linearizable: after {} ops no order explains op(s) {:?}",
            best.0, best.2
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(process: u64, call: Call, outcome: Outcome, call_ns: u64, ret_ns: u64) -> Op {
        Op {
            id: 0,
            process,
            sku: "s".into(),
            rid: None,
            call,
            outcome,
            call_ns,
            ret_ns,
            invoke_index: call_ns,
        }
    }

    fn stock(on_hand: u64, reserved: u64) -> Outcome {
        Outcome::Stock {
            found: true,
            on_hand,
            reserved,
        }
    }

    fn check(mut ops: Vec<Op>) -> SkuVerdict {
        ops.sort_by_key(|o| o.call_ns);
        for (i, o) in ops.iter_mut().enumerate() {
            o.id = i;
        }
        check_sku("s", &with_expiries(&ops, 0), 100_000)
    }

    #[test]
    fn a_linearizable_history_passes() {
        let v = check(vec![
            op(0, Call::Set { on_hand: 10 }, stock(10, 0), 0, 1),
            op(1, Call::Decrement { qty: 3 }, stock(7, 0), 10, 30),
            op(2, Call::Decrement { qty: 2 }, stock(5, 0), 12, 25), // concurrent: applied after the other
            op(3, Call::Read, stock(5, 0), 40, 50),
        ]);
        assert!(v.linearizable, "{v:?}");
    }

    #[test]
    fn a_stale_read_fails() {
        let v = check(vec![
            op(0, Call::Set { on_hand: 10 }, stock(10, 0), 0, 1),
            op(1, Call::Decrement { qty: 3 }, stock(7, 0), 10, 20),
            op(2, Call::Read, stock(10, 0), 30, 40), // after the acknowledged decrement
        ]);
        assert!(!v.linearizable, "{v:?}");
        assert_eq!(
            v.stuck_at,
            vec![2],
            "the stale read is where the search got stuck"
        );
    }

    #[test]
    fn a_double_applied_retry_fails() {
        let mut a = op(
            1,
            Call::Decrement { qty: 2 },
            Outcome::Unknown,
            10,
            u64::MAX,
        );
        a.rid = Some("r1".into());
        let mut b = op(1, Call::Decrement { qty: 2 }, stock(8, 0), 30, 40);
        b.rid = Some("r1".into());
        // Applied once: 10 -> 8, whatever happened to the first attempt.
        let ok = check(vec![
            op(0, Call::Set { on_hand: 10 }, stock(10, 0), 0, 1),
            a.clone(),
            b.clone(),
            op(2, Call::Read, stock(8, 0), 50, 60),
        ]);
        assert!(ok.linearizable, "{ok:?}");
        // Applied twice: the read sees 6.
        let twice = check(vec![
            op(0, Call::Set { on_hand: 10 }, stock(10, 0), 0, 1),
            a,
            b,
            op(2, Call::Read, stock(6, 0), 50, 60),
        ]);
        assert!(!twice.linearizable, "{twice:?}");
    }

    #[test]
    fn an_oversell_fails() {
        let v = check(vec![
            op(0, Call::Set { on_hand: 1 }, stock(1, 0), 0, 1),
            op(1, Call::Decrement { qty: 1 }, stock(0, 0), 10, 20),
            op(2, Call::Decrement { qty: 1 }, stock(0, 0), 11, 21), // a second unit that did not exist
        ]);
        assert!(!v.linearizable, "{v:?}");
    }

    #[test]
    fn an_info_operation_may_or_may_not_have_happened() {
        let base = || {
            vec![
                op(0, Call::Set { on_hand: 10 }, stock(10, 0), 0, 1),
                op(
                    1,
                    Call::Decrement { qty: 4 },
                    Outcome::Unknown,
                    10,
                    u64::MAX,
                ),
            ]
        };
        let mut happened = base();
        happened.push(op(2, Call::Read, stock(6, 0), 100, 110));
        assert!(check(happened).linearizable);
        let mut not_yet = base();
        not_yet.push(op(2, Call::Read, stock(10, 0), 100, 110));
        assert!(check(not_yet).linearizable);
        let mut impossible = base();
        impossible.push(op(2, Call::Read, stock(7, 0), 100, 110));
        assert!(!check(impossible).linearizable);
    }

    #[test]
    fn expiry_is_allowed_only_after_the_deadline() {
        let reserve = op(
            1,
            Call::Reserve {
                res: "h".into(),
                qty: 2,
                ttl_ms: 1,
            },
            stock(5, 2),
            10,
            20,
        );
        // 1 ms = 1,000,000 ns after the reserve's invocation the hold may lapse.
        let early = check(vec![
            op(0, Call::Set { on_hand: 5 }, stock(5, 0), 0, 1),
            reserve.clone(),
            op(2, Call::Read, stock(5, 0), 30, 40),
        ]);
        assert!(
            !early.linearizable,
            "expired before its deadline: {early:?}"
        );
        let late = check(vec![
            op(0, Call::Set { on_hand: 5 }, stock(5, 0), 0, 1),
            reserve.clone(),
            op(2, Call::Read, stock(5, 0), 2_000_000, 2_000_010),
            op(
                3,
                Call::Confirm { res: "h".into() },
                Outcome::Refused {
                    reason: "RESERVATION_EXPIRED".into(),
                    available: None,
                },
                2_000_020,
                2_000_030,
            ),
        ]);
        assert!(late.linearizable, "{late:?}");
        let kept = check(vec![
            op(0, Call::Set { on_hand: 5 }, stock(5, 0), 0, 1),
            reserve,
            op(2, Call::Read, stock(5, 2), 2_000_000, 2_000_010), // or not yet expired: also fine
            op(
                3,
                Call::Confirm { res: "h".into() },
                stock(3, 0),
                2_000_020,
                2_000_030,
            ),
        ]);
        assert!(kept.linearizable, "{kept:?}");
    }

    #[test]
    fn a_refusal_must_report_what_was_there() {
        let v = check(vec![
            op(0, Call::Set { on_hand: 3 }, stock(3, 0), 0, 1),
            op(
                1,
                Call::Decrement { qty: 5 },
                Outcome::Refused {
                    reason: "INSUFFICIENT_STOCK".into(),
                    available: Some(2),
                },
                10,
                20,
            ),
        ]);
        assert!(!v.linearizable, "3 were available, not 2");
    }

    #[test]
    fn the_budget_is_a_failure_not_a_pass() {
        let mut ops = vec![op(0, Call::Set { on_hand: 1_000 }, stock(1_000, 0), 0, 1)];
        for p in 0..12 {
            ops.push(op(
                p + 1,
                Call::Decrement { qty: 1 },
                Outcome::Unknown,
                10 + p,
                u64::MAX,
            ));
        }
        ops.push(op(99, Call::Read, stock(1_000 - 13, 0), 1_000, 1_010)); // impossible: only 12 could apply
        let v = check_sku(
            "s",
            &with_expiries(
                &{
                    let mut o = ops;
                    for (i, x) in o.iter_mut().enumerate() {
                        x.id = i;
                    }
                    o
                },
                0,
            ),
            50,
        );
        assert!(!v.linearizable && v.budget_exceeded, "{v:?}");
    }
}
