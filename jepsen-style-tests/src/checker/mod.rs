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
#[allow(
    clippy::too_many_lines,
    reason = "one Wing-Gong-Lowe search loop: its stack, memo and budget are easier to \
              check against the paper in one place than threaded through helpers"
)]
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
mod tests;
