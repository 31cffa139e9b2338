//! Property-based fuzzing of everything that decodes outside input: protobuf requests
//! and their validation (`api::convert`), page tokens, and the codec that reads Raft
//! messages from peers and values from disk. Each property runs a bounded number of
//! cases (scripts/test.sh runs them with the unit tests).
//!
//! The properties: nothing panics on any input; an accepted request holds only
//! in-policy values, checked against an oracle written here independently of
//! `inventory::validate`; the codec's size estimates bound the real encodings.

use proptest::prelude::*;
use prost::Message;
use stockpile_proto::v1 as pb;

use crate::api::decode;
use crate::api::page_token;
use crate::codec;
use crate::inventory::validate::Limits;
use crate::inventory::{Command, Item, Op, OpGroup, Retention, ShardRequest};
use crate::raft::types::{SnapshotMeta, Vote};

const CASES: u32 = 2_000;

/// Characters a hostile client would try: ASCII, controls, invisibles, separators,
/// combining marks, noncharacters, private use, astral and ordinary letters.
fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::range('a', 'z'),
        1 => proptest::char::range('\u{0}', '\u{7f}'),
        1 => prop::sample::select(vec![
            ' ', '\u{a0}', '\u{200b}', '\u{200d}', '\u{202e}', '\u{2028}', '\u{2029}',
            '\u{feff}', '\u{ffff}', '\u{fdd0}', '\u{e000}', '\u{301}', '\u{3164}',
            '\u{1f600}', 'é', 'ß', '\u{10ffff}', '\u{3000}', '\u{115f}',
        ]),
        1 => any::<char>(),
    ]
}

fn tricky_string(max_chars: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(tricky_char(), 0..max_chars).prop_map(|v| v.into_iter().collect())
}

/// The SKU policy, restated from docs/ERRORS.md without `validate`'s code.
fn sku_in_policy(s: &str) -> bool {
    use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory};
    let bad_char = |c: char| {
        (c.is_whitespace() && c != ' ')
            || matches!(c, '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}')
            || matches!(
                c.general_category(),
                G::Control
                    | G::Format
                    | G::LineSeparator
                    | G::ParagraphSeparator
                    | G::PrivateUse
                    | G::Surrogate
                    | G::Unassigned
            )
    };
    (1..=128).contains(&s.len())
        && !s.chars().any(bad_char)
        && s.trim_matches(' ') == s
        && unicode_normalization::is_nfc(s)
}

fn reservation_id_in_policy(id: &str) -> bool {
    let chosen = |id: &str| {
        (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    };
    match id.strip_prefix('~') {
        Some(hex) => hex.len() == 32 && hex.bytes().all(|b| b"0123456789abcdef".contains(&b)),
        None => chosen(id),
    }
}

/// A SKU as a hostile client would send it: mostly plausible names (so that requests
/// get past the other checks), sometimes anything.
fn sku_like() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9][a-zA-Z0-9 ._-]{0,30}",
        2 => tricky_string(40),
    ]
}

fn request_id() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => Just(vec![7u8; 16]),
        1 => Just(vec![0u8; 16]),
        1 => prop::collection::vec(any::<u8>(), 0..20),
    ]
}

fn quantity() -> impl Strategy<Value = u64> {
    use crate::inventory::QTY_MAX;
    prop_oneof![
        8 => 0u64..100,
        1 => Just(QTY_MAX),
        1 => Just(QTY_MAX + 1),
        1 => any::<u64>(),
    ]
}

fn wire_op() -> impl Strategy<Value = pb::operation::Op> {
    use pb::operation::Op as W;
    let sku = sku_like;
    let delta = prop_oneof![4 => -100i64..100, 1 => any::<i64>()];
    let ttl_ms = prop_oneof![4 => 1_000u64..100_000, 1 => any::<u64>()];
    prop_oneof![
        (request_id(), sku(), quantity()).prop_map(|(request_id, sku, on_hand)| {
            W::SetStock(pb::SetStockRequest {
                request_id,
                sku,
                on_hand,
                expected_version: Some(on_hand % 7).filter(|v| v % 2 == 0),
            })
        }),
        (request_id(), sku(), delta).prop_map(|(request_id, sku, delta)| {
            W::AdjustStock(pb::AdjustStockRequest {
                request_id,
                sku,
                delta,
                expected_version: None,
            })
        }),
        (request_id(), sku(), quantity()).prop_map(|(request_id, sku, quantity)| {
            W::Decrement(pb::DecrementRequest {
                request_id,
                sku,
                quantity,
            })
        }),
        (
            request_id(),
            tricky_string(12),
            prop::collection::vec((sku(), quantity()), 0..4),
            ttl_ms
        )
            .prop_map(|(request_id, reservation_id, items, ttl_ms)| {
                W::Reserve(pb::ReserveRequest {
                    request_id,
                    reservation_id,
                    items: items
                        .into_iter()
                        .map(|(sku, quantity)| pb::Item { sku, quantity })
                        .collect(),
                    ttl_ms,
                })
            }),
        (request_id(), tricky_string(12), sku()).prop_map(|(request_id, reservation_id, sku)| {
            W::Confirm(pb::ConfirmRequest {
                request_id,
                reservation_id,
                sku,
            })
        }),
    ]
}

/// Every value an accepted op carries is within policy.
fn op_in_policy(op: &Op, limits: &Limits) -> bool {
    use crate::inventory::QTY_MAX;
    let items_ok = |items: &[Item]| {
        !items.is_empty()
            && items.len() <= limits.reservation_items_max
            && items
                .iter()
                .all(|i| sku_in_policy(&i.sku) && (1..=QTY_MAX).contains(&i.qty))
    };
    op.request_id != [0u8; 16]
        && match &op.command {
            Command::SetStock { sku, on_hand, .. } => sku_in_policy(sku) && *on_hand <= QTY_MAX,
            Command::AdjustStock { sku, delta, .. } => {
                sku_in_policy(sku) && *delta != 0 && delta.unsigned_abs() <= QTY_MAX
            }
            Command::Decrement { sku, qty } => sku_in_policy(sku) && (1..=QTY_MAX).contains(qty),
            Command::Reserve {
                reservation_id,
                items,
                ttl_ms,
            } => {
                reservation_id_in_policy(reservation_id)
                    && items_ok(items)
                    && (limits.ttl_ms_min..=limits.ttl_ms_max).contains(ttl_ms)
            }
            Command::Confirm {
                reservation_id,
                sku,
            }
            | Command::Release {
                reservation_id,
                sku,
            } => reservation_id_in_policy(reservation_id) && sku_in_policy(sku),
            // Never produced by request decoding (nodes propose these themselves).
            Command::Cluster(_)
            | Command::Split { .. }
            | Command::Freeze { .. }
            | Command::Merge { .. } => false,
        }
}

fn shard_request() -> impl Strategy<Value = ShardRequest> {
    let command = (tricky_string(20), any::<u64>(), tricky_string(10)).prop_map(|(sku, n, rid)| {
        match n % 4 {
            0 => Command::Decrement { sku, qty: n },
            1 => Command::Confirm {
                reservation_id: rid,
                sku,
            },
            2 => Command::AdjustStock {
                sku,
                delta: n as i64,
                expected_version: Some(n / 3).filter(|v| v % 2 == 0),
            },
            _ => Command::Reserve {
                reservation_id: rid,
                items: vec![
                    Item {
                        sku: sku.clone(),
                        qty: n,
                    };
                    (n % 5) as usize
                ],
                ttl_ms: n,
            },
        }
    });
    let op = (any::<[u8; 16]>(), command).prop_map(|(request_id, command)| Op {
        request_id,
        command,
    });
    let group = (any::<bool>(), prop::collection::vec(op, 0..6))
        .prop_map(|(atomic, ops)| OpGroup { atomic, ops });
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(group, 0..4),
    )
        .prop_map(
            |(now_ms, retention_ms, outcomes_max, groups)| ShardRequest {
                now_ms,
                retention: Retention {
                    retention_ms,
                    outcomes_max,
                },
                groups,
            },
        )
}

#[test]
fn decoded_operations_are_in_policy_or_refused_with_a_field() {
    use proptest::test_runner::{Config, TestRunner};
    let limits = Limits::default();
    let (accepted, refused) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    let mut runner = TestRunner::new(Config::with_cases(CASES));
    let outcome = runner.run(&wire_op(), |op| {
        match decode::op(op, &limits, "ops[3].") {
            Ok(decoded) => {
                accepted.set(accepted.get() + 1);
                prop_assert!(
                    op_in_policy(&decoded.op, &limits),
                    "accepted {:?}",
                    decoded.op
                );
                prop_assert!(decoded.skus.iter().all(|s| sku_in_policy(s)));
            }
            Err(crate::Error::InvalidArgument { field, rule }) => {
                refused.set(refused.get() + 1);
                prop_assert!(field.starts_with("ops[3]."), "{field}");
                prop_assert!(!rule.is_empty());
            }
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
        Ok(())
    });
    outcome.unwrap();
    // Both sides of the policy were exercised, so the property is not vacuous.
    let (accepted, refused) = (accepted.get(), refused.get());
    assert!(accepted >= CASES / 20, "only {accepted} accepted");
    assert!(refused >= CASES / 20, "only {refused} refused");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn random_protobuf_bytes_never_panic_the_decoders(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(batch) = pb::BatchRequest::decode(bytes.as_slice()) {
            for op in batch.ops.into_iter().filter_map(|o| o.op) {
                let _ = decode::op(op, &Limits::default(), "");
            }
        }
        match pb::SetStockRequest::decode(bytes.as_slice()) {
            Ok(r) => { let _ = decode::op(pb::operation::Op::SetStock(r), &Limits::default(), ""); }
            Err(e) => {
                let status = stockpile_proto::codec::undecodable(&e);
                prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
            }
        }
    }

    #[test]
    fn page_tokens_never_panic_and_hold_only_in_policy_skus(token in tricky_string(60)) {
        if let Ok(page_token::Position::After(s) | page_token::Position::AtOrAfter(s)) = page_token::decode(&token) {
            prop_assert!(sku_in_policy(&s), "{s:?}");
        }
    }

    #[test]
    fn the_codec_never_panics_on_hostile_bytes(mut bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Some(b) = bytes.first_mut() {
            *b = codec::FORMAT_VERSION;
        }
        let _ = codec::decode::<ShardRequest>(&bytes);
        let _ = codec::decode::<Vote>(&bytes);
        let _ = codec::decode::<SnapshotMeta>(&bytes);
        let _ = codec::decode::<crate::inventory::StoredOutcome>(&bytes);
        let _ = codec::decode::<crate::inventory::Reservation>(&bytes);
    }

    #[test]
    fn entries_round_trip_and_their_size_bound_holds(req in shard_request()) {
        let bytes = codec::encode(&req).expect("encodes");
        prop_assert!(bytes.len() <= req.encoded_bytes_max(), "{} > {}", bytes.len(), req.encoded_bytes_max());
        prop_assert_eq!(codec::decode::<ShardRequest>(&bytes).expect("decodes"), req);
    }
}

#[test]
fn a_huge_length_prefix_fails_fast_instead_of_allocating() {
    // A String claiming 2^60 bytes: refused by the decode limit, not attempted.
    let mut bytes = vec![codec::FORMAT_VERSION, 0xfd];
    bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(codec::decode::<String>(&bytes).is_err());
    let mut vec_claim = vec![codec::FORMAT_VERSION, 0xfd];
    vec_claim.extend_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(codec::decode::<Vec<u64>>(&vec_claim).is_err());
}
