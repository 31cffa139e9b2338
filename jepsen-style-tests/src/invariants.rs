//! Checks that need no search: quantities never negative or inconsistent on any
//! observation, no oversell (acknowledged sales within the supply), the final stock
//! within the bounds that acknowledged and unknown operations allow, and no
//! acknowledged reservation lost.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::history::{Call, Op, Outcome};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub check: String,
    pub sku: String,
    /// The op ids concerned.
    pub ops: Vec<usize>,
    pub message: String,
}

/// Per-SKU invariants over `ops` (one SKU's ops). `final_on_hand` is the on-hand stock a
/// linearizable read returned after the cluster healed (None if it could not be read).
#[allow(
    clippy::too_many_lines,
    reason = "a list of independent checks over one pass of the SKU's ops, each a few \
              lines; split, they would all thread the same accumulated state"
)]
pub fn check_sku(sku: &str, ops: &[Op], final_on_hand: Option<u64>) -> Vec<Violation> {
    let mut v = Vec::new();
    let bad = |check: &str, ops: Vec<usize>, message: String| Violation {
        check: check.into(),
        sku: sku.into(),
        ops,
        message,
    };
    // Supply: the initial stock plus every positive adjustment that may have applied.
    let (mut supply_lo, mut supply_hi) = (0u64, 0u64);
    let (mut sold_acked, mut sold_unknown) = (0u64, 0u64);
    let (mut removed_acked, mut removed_unknown) = (0u64, 0u64);
    for op in ops {
        if let Outcome::Stock {
            on_hand, reserved, ..
        } = &op.outcome
            && reserved > on_hand
        {
            v.push(bad(
                "never negative",
                vec![op.id],
                format!("op {} saw reserved {reserved} > on_hand {on_hand}", op.id),
            ));
        }
        let acked = matches!(op.outcome, Outcome::Stock { .. });
        let unknown = matches!(op.outcome, Outcome::Unknown);
        match &op.call {
            Call::Set { on_hand } if acked => {
                supply_lo += on_hand;
                supply_hi += on_hand;
            }
            Call::Adjust { delta } if *delta > 0 => {
                if acked {
                    supply_lo += *delta as u64;
                }
                if acked || unknown {
                    supply_hi += *delta as u64;
                }
            }
            Call::Adjust { delta } if *delta < 0 => {
                if acked {
                    removed_acked += delta.unsigned_abs();
                } else if unknown {
                    removed_unknown += delta.unsigned_abs();
                }
            }
            Call::Decrement { qty } => {
                if acked {
                    sold_acked += qty;
                } else if unknown {
                    sold_unknown += qty;
                }
            }
            _ => {}
        }
    }
    // Confirms sell their reservation's quantity.
    let reserve_qty: BTreeMap<&str, u64> = ops
        .iter()
        .filter_map(|o| match &o.call {
            Call::Reserve { res, qty, .. } => Some((res.as_str(), *qty)),
            _ => None,
        })
        .collect();
    for op in ops {
        if let Call::Confirm { res } = &op.call {
            let qty = reserve_qty.get(res.as_str()).copied().unwrap_or(0);
            match op.outcome {
                Outcome::Stock { .. } => sold_acked += qty,
                Outcome::Unknown => sold_unknown += qty,
                _ => {}
            }
        }
    }
    if sold_acked > supply_hi {
        v.push(bad(
            "no oversell",
            Vec::new(),
            format!(
                "{sold_acked} units sold (acknowledged) but the supply was at most {supply_hi}"
            ),
        ));
    }
    if let Some(final_on_hand) = final_on_hand {
        let lo =
            supply_lo.saturating_sub(sold_acked + sold_unknown + removed_acked + removed_unknown);
        let hi = supply_hi.saturating_sub(sold_acked + removed_acked);
        if final_on_hand < lo || final_on_hand > hi {
            v.push(bad(
                "final stock within bounds",
                Vec::new(),
                format!(
                    "final on_hand {final_on_hand} outside [{lo}, {hi}] (supply {supply_lo}..={supply_hi}, sold {sold_acked} acked + {sold_unknown} unknown, removed {removed_acked} + {removed_unknown})"
                ),
            ));
        }
    }
    // Every acknowledged reservation is still known at the end, in a state its
    // acknowledged confirm or release allows.
    let finals: BTreeMap<&str, (&str, usize)> = ops
        .iter()
        .filter(|o| o.process == 0)
        .filter_map(|o| match (&o.call, &o.outcome) {
            (Call::ReadReservation { res }, Outcome::ReservationState(s)) => {
                Some((res.as_str(), (s.as_str(), o.id)))
            }
            (Call::ReadReservation { res }, Outcome::Refused { .. }) => {
                Some((res.as_str(), ("missing", o.id)))
            }
            _ => None,
        })
        .collect();
    for op in ops {
        if let (Call::Reserve { res, .. }, Outcome::Stock { .. }) = (&op.call, &op.outcome)
            && let Some((state, read)) = finals.get(res.as_str())
        {
            let confirmed = ops.iter().any(|o| {
                matches!(&o.call, Call::Confirm { res: r } if r == res)
                    && matches!(o.outcome, Outcome::Stock { .. })
            });
            let released = ops.iter().any(|o| {
                matches!(&o.call, Call::Release { res: r } if r == res)
                    && matches!(o.outcome, Outcome::Stock { .. })
            });
            let ok = match *state {
                "missing" => false,
                "confirmed" => !released,
                "released" => !confirmed,
                "active" | "expired" => !confirmed && !released,
                _ => false,
            };
            if !ok {
                v.push(bad(
                    "no acknowledged reservation lost",
                    vec![op.id, *read],
                    format!("reservation {res} was acknowledged (confirmed: {confirmed}, released: {released}) but ends {state}"),
                ));
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: usize, call: Call, outcome: Outcome) -> Op {
        Op {
            id,
            process: 1,
            sku: "s".into(),
            rid: None,
            call,
            outcome,
            call_ns: id as u64,
            ret_ns: id as u64 + 1,
            invoke_index: id as u64,
        }
    }

    #[test]
    fn an_oversell_and_a_lost_sale_are_caught() {
        let ops = vec![
            op(
                0,
                Call::Set { on_hand: 2 },
                Outcome::Stock {
                    found: true,
                    on_hand: 2,
                    reserved: 0,
                },
            ),
            op(
                1,
                Call::Decrement { qty: 2 },
                Outcome::Stock {
                    found: true,
                    on_hand: 0,
                    reserved: 0,
                },
            ),
            op(
                2,
                Call::Decrement { qty: 1 },
                Outcome::Stock {
                    found: true,
                    on_hand: 0,
                    reserved: 0,
                },
            ),
        ];
        let v = check_sku("s", &ops, Some(0));
        assert!(v.iter().any(|x| x.check == "no oversell"), "{v:?}");
        let ok = &ops[..2];
        assert!(check_sku("s", ok, Some(0)).is_empty());
        let lost = check_sku("s", ok, Some(2));
        assert!(
            lost.iter().any(|x| x.check == "final stock within bounds"),
            "an acknowledged sale vanished: {lost:?}"
        );
    }

    #[test]
    fn unknown_sales_widen_the_bounds() {
        let ops = vec![
            op(
                0,
                Call::Set { on_hand: 5 },
                Outcome::Stock {
                    found: true,
                    on_hand: 5,
                    reserved: 0,
                },
            ),
            op(1, Call::Decrement { qty: 1 }, Outcome::Unknown),
        ];
        assert!(check_sku("s", &ops, Some(5)).is_empty());
        assert!(check_sku("s", &ops, Some(4)).is_empty());
        assert!(!check_sku("s", &ops, Some(3)).is_empty());
    }
}
