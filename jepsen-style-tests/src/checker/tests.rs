//! The checker on hand-made histories: linearizable ones pass, each kind of anomaly
//! is found.

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
