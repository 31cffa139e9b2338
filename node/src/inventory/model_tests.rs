//! Property tests of `apply` against a reference model written independently here:
//! random sequences of every command, in independent and all-or-nothing groups, with
//! retried and reused request ids, clock jumps and pruning. After every entry the
//! outcomes must match the model's and the invariants must hold:
//! `reserved == Σ qty of active reservations`, `on_hand >= reserved`, no request id
//! applied twice, no negative quantity (u64 plus the checks below).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;

use super::model::Model;
use super::*;

const SKUS: [&str; 3] = ["a", "b", "c"];

/// Mostly unconditional; sometimes a small version, which is often the current one.
fn expected_version() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![3 => Just(None), 1 => (0u64..4).prop_map(Some)]
}

fn command() -> impl Strategy<Value = Command> {
    let sku = prop::sample::select(SKUS.to_vec()).prop_map(String::from);
    let rid = (0u8..4).prop_map(|i| format!("r{i}"));
    prop_oneof![
        (sku.clone(), 0u64..20, expected_version()).prop_map(|(sku, on_hand, expected_version)| {
            Command::SetStock {
                sku,
                on_hand,
                expected_version,
            }
        }),
        (sku.clone(), -10i64..10, expected_version())
            .prop_filter("non-zero", |(_, d, _)| *d != 0)
            .prop_map(|(sku, delta, expected_version)| Command::AdjustStock {
                sku,
                delta,
                expected_version
            }),
        (sku.clone(), 1u64..8).prop_map(|(sku, qty)| Command::Decrement { sku, qty }),
        (
            rid.clone(),
            prop::sample::subsequence(SKUS.to_vec(), 1..=3),
            prop::collection::vec(1u64..5, 3),
            1u64..120
        )
            .prop_map(|(reservation_id, skus, qtys, ttl_ms)| Command::Reserve {
                reservation_id,
                items: skus
                    .iter()
                    .zip(qtys)
                    .map(|(s, q)| Item {
                        sku: s.to_string(),
                        qty: q
                    })
                    .collect(),
                ttl_ms,
            }),
        (rid.clone(), sku.clone()).prop_map(|(reservation_id, sku)| Command::Confirm {
            reservation_id,
            sku
        }),
        (rid, sku).prop_map(|(reservation_id, sku)| Command::Release {
            reservation_id,
            sku
        }),
    ]
}

/// An op is new (request id from a small pool, so ids get reused with other
/// commands) or an exact retry of an earlier op.
#[derive(Clone, Debug)]
enum OpGen {
    New(u8, Command),
    Retry(usize),
}

fn op_gen() -> impl Strategy<Value = OpGen> {
    prop_oneof![4 => (0u8..24, command()).prop_map(|(r, c)| OpGen::New(r, c)), 1 => any::<usize>().prop_map(OpGen::Retry)]
}

#[derive(Clone, Debug)]
struct EntryGen {
    clock_step: i64,
    groups: Vec<(bool, Vec<OpGen>)>,
}

fn entry_gen() -> impl Strategy<Value = EntryGen> {
    (
        prop_oneof![6 => 0i64..40, 1 => -200i64..0, 1 => 100i64..400],
        prop::collection::vec((any::<bool>(), prop::collection::vec(op_gen(), 0..4)), 0..3),
    )
        .prop_map(|(clock_step, groups)| EntryGen { clock_step, groups })
}

fn check_invariants(s: &MemState) -> Result<(), TestCaseError> {
    let mut held: HashMap<&str, u64> = HashMap::new();
    for r in s.reservations.values() {
        if r.state == ReservationState::Active {
            for i in &r.items {
                *held.entry(i.sku.as_str()).or_default() += i.qty;
            }
        }
        prop_assert!(
            s.timers.contains(&(r.timer_ms, r.id.clone())),
            "reservation {} not filed under its timer",
            r.id
        );
    }
    prop_assert_eq!(
        s.timers.len(),
        s.reservations.len(),
        "timer index and reservations disagree"
    );
    for (sku, rec) in &s.stock {
        prop_assert!(
            rec.on_hand >= rec.reserved,
            "{}: on_hand {} < reserved {}",
            sku,
            rec.on_hand,
            rec.reserved
        );
        prop_assert_eq!(
            rec.reserved,
            held.get(sku.as_str()).copied().unwrap_or(0),
            "{}: reserved != Σ active holds",
            sku
        );
    }
    prop_assert_eq!(s.outcome_ages.len(), s.outcomes.len());
    Ok(())
}

fn run(entries: Vec<EntryGen>, retention: Retention) -> Result<(), TestCaseError> {
    let mut state = MemState::default();
    let mut model = Model::default();
    let mut clock: i64 = 1_000;
    let mut history: Vec<Op> = Vec::new();
    for e in entries {
        clock = (clock + e.clock_step).max(0);
        let mut groups = Vec::new();
        for (atomic, gens) in e.groups {
            let ops: Vec<Op> = gens
                .into_iter()
                .map(|g| match g {
                    OpGen::Retry(k) if !history.is_empty() => history[k % history.len()].clone(),
                    OpGen::Retry(_) => Op {
                        request_id: [200; 16],
                        command: Command::Decrement {
                            sku: "a".into(),
                            qty: 1,
                        },
                    },
                    OpGen::New(r, command) => Op {
                        request_id: [r + 1; 16],
                        command,
                    },
                })
                .collect();
            history.extend(ops.iter().cloned());
            groups.push(OpGroup { atomic, ops });
        }
        let req = ShardRequest {
            now_ms: clock as u64,
            retention,
            groups,
        };
        // What survives this entry's pruning: a tick (no ops) at the same clock.
        let mut probe = state.clone();
        apply(
            &mut probe,
            &ShardRequest {
                now_ms: req.now_ms,
                retention,
                groups: vec![],
            },
        )
        .expect("tick");
        let mut retained: BTreeSet<RequestId> = probe.outcomes.keys().copied().collect();
        let got = apply(&mut state, &req).expect("in-memory apply cannot fail");
        let want = model.entry(&req);
        prop_assert_eq!(
            &got.groups,
            &want,
            "outcomes differ from the model for {:?}",
            req
        );
        // A request id is executed (not replayed) only when no stored outcome had it.
        for (g, results) in req.groups.iter().zip(&got.groups) {
            for (op, r) in g.ops.iter().zip(results) {
                if !r.replayed && r.outcome != Outcome::Rejected(Rejection::RequestIdReused) {
                    prop_assert!(
                        retained.insert(op.request_id),
                        "request id applied twice while its outcome was retained"
                    );
                }
            }
        }
        prop_assert_eq!(state.clock_ms, model.clock);
        check_invariants(&state)?;
        let model_stock: BTreeMap<String, StockRecord> = model
            .stock
            .iter()
            .map(|(k, (o, r, v))| {
                (
                    k.clone(),
                    StockRecord {
                        on_hand: *o,
                        reserved: *r,
                        version: *v,
                    },
                )
            })
            .collect();
        prop_assert_eq!(&state.stock, &model_stock);
        prop_assert_eq!(
            &state.reservations.values().cloned().collect::<Vec<_>>(),
            &model.res.values().cloned().collect::<Vec<_>>()
        );
        prop_assert_eq!(
            state.outcomes.keys().collect::<Vec<_>>(),
            model.outcomes.keys().collect::<Vec<_>>()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn apply_matches_the_model_with_long_retention(entries in prop::collection::vec(entry_gen(), 1..40)) {
        run(entries, Retention { retention_ms: 1_000_000, outcomes_max: 1_000_000 })?;
    }

    #[test]
    fn apply_matches_the_model_while_pruning(entries in prop::collection::vec(entry_gen(), 1..40), retention_ms in 20u64..300, outcomes_max in 1u64..12) {
        run(entries, Retention { retention_ms, outcomes_max })?;
    }
}

#[test]
fn a_retry_returns_the_first_outcome_and_changes_nothing() {
    let mut s = MemState::default();
    let ret = Retention::default();
    let set = Op {
        request_id: [1; 16],
        command: Command::SetStock {
            sku: "a".into(),
            on_hand: 5,
            expected_version: None,
        },
    };
    let dec = Op {
        request_id: [2; 16],
        command: Command::Decrement {
            sku: "a".into(),
            qty: 2,
        },
    };
    let entry = |ops: Vec<Op>, now_ms| ShardRequest {
        now_ms,
        retention: ret,
        groups: vec![OpGroup { atomic: false, ops }],
    };
    apply(&mut s, &entry(vec![set, dec.clone()], 10)).unwrap();
    let again = apply(&mut s, &entry(vec![dec.clone()], 20)).unwrap();
    assert!(again.groups[0][0].replayed);
    assert_eq!(s.stock["a"].on_hand, 3, "the retry did not decrement again");
    let reused = Op {
        request_id: [2; 16],
        command: Command::Decrement {
            sku: "a".into(),
            qty: 1,
        },
    };
    let r = apply(&mut s, &entry(vec![reused], 30)).unwrap();
    assert_eq!(
        r.groups[0][0].outcome,
        Outcome::Rejected(Rejection::RequestIdReused)
    );
    assert_eq!(s.stock["a"].on_hand, 3);
}

#[test]
fn a_conditional_set_or_adjust_applies_only_at_the_expected_version() {
    let mut s = MemState::default();
    let entry = |request_id: u8, command: Command| ShardRequest {
        now_ms: 10,
        retention: Retention::default(),
        groups: vec![OpGroup {
            atomic: false,
            ops: vec![Op {
                request_id: [request_id; 16],
                command,
            }],
        }],
    };
    let set = |on_hand, expected_version| Command::SetStock {
        sku: "a".into(),
        on_hand,
        expected_version,
    };
    // Version 0 means "no record yet": a create-only set.
    apply(&mut s, &entry(1, set(5, Some(0)))).unwrap();
    assert_eq!((s.stock["a"].on_hand, s.stock["a"].version), (5, 1));
    let stale = apply(&mut s, &entry(2, set(9, Some(0)))).unwrap();
    assert_eq!(
        stale.groups[0][0].outcome,
        Outcome::Rejected(Rejection::VersionMismatch {
            sku: "a".into(),
            expected: 0,
            actual: 1
        })
    );
    assert_eq!(s.stock["a"].on_hand, 5, "a refused set changes nothing");
    let adjust = Command::AdjustStock {
        sku: "a".into(),
        delta: -2,
        expected_version: Some(1),
    };
    apply(&mut s, &entry(3, adjust)).unwrap();
    assert_eq!((s.stock["a"].on_hand, s.stock["a"].version), (3, 2));
}

#[test]
fn expiry_returns_stock_eagerly_and_lazily() {
    let mut s = MemState::default();
    let ret = Retention::default();
    let entry = |ops: Vec<Op>, now_ms| ShardRequest {
        now_ms,
        retention: ret,
        groups: vec![OpGroup { atomic: false, ops }],
    };
    let op = |i: u8, command| Op {
        request_id: [i; 16],
        command,
    };
    apply(
        &mut s,
        &entry(
            vec![op(
                1,
                Command::SetStock {
                    sku: "a".into(),
                    on_hand: 5,
                    expected_version: None,
                },
            )],
            0,
        ),
    )
    .unwrap();
    let items = vec![Item {
        sku: "a".into(),
        qty: 4,
    }];
    apply(
        &mut s,
        &entry(
            vec![op(
                2,
                Command::Reserve {
                    reservation_id: "r".into(),
                    items: items.clone(),
                    ttl_ms: 100,
                },
            )],
            0,
        ),
    )
    .unwrap();
    assert_eq!(s.stock["a"].reserved, 4);
    // A tick (empty entry) past the expiry returns the stock.
    apply(
        &mut s,
        &ShardRequest {
            now_ms: 100,
            retention: ret,
            groups: vec![],
        },
    )
    .unwrap();
    assert_eq!(s.stock["a"].reserved, 0);
    assert_eq!(s.reservations["r"].state, ReservationState::Expired);
    let late = apply(
        &mut s,
        &entry(
            vec![op(
                3,
                Command::Confirm {
                    reservation_id: "r".into(),
                    sku: "a".into(),
                },
            )],
            150,
        ),
    )
    .unwrap();
    assert_eq!(
        late.groups[0][0].outcome,
        Outcome::Rejected(Rejection::ReservationExpired {
            reservation_id: "r".into()
        })
    );
    // The clock never goes back: an entry from a leader whose clock is behind still
    // sees the reservation expired.
    apply(
        &mut s,
        &entry(
            vec![op(
                4,
                Command::Reserve {
                    reservation_id: "q".into(),
                    items,
                    ttl_ms: 1_000,
                },
            )],
            10,
        ),
    )
    .unwrap();
    assert_eq!(s.reservations["q"].expires_at_ms, 1_150);
}
