//! The wire error contract, end to end without a cluster: every variant of the node's
//! `Error` goes through the one mapping into a `tonic::Status`, and the client library
//! reads it back (`classify`) with no fact lost. A new variant that is not listed here
//! fails to compile (the match below is exhaustive).

use prost::Message;
use stockpile_client::Error as ClientError;
use stockpile_client::classify::{Verdict, classify, decode_detail};
use stockpile_client::proto as pb;
use stockpile_node::Error;
use stockpile_node::api::status::{to_status, to_status_of_op};
use stockpile_node::inventory::ReservationState;
use stockpile_node::router::ShardId;

/// One example of every variant.
fn every_variant() -> Vec<Error> {
    vec![
        Error::InvalidArgument {
            field: "items[2].sku".into(),
            rule: "must not be empty".into(),
        },
        Error::SkuNotFound { sku: "kiwi".into() },
        Error::ReservationNotFound {
            reservation_id: "cart-1".into(),
        },
        Error::InsufficientStock {
            sku: "kiwi".into(),
            available: 3,
        },
        Error::ReservationExpired {
            reservation_id: "cart-2".into(),
        },
        Error::ReservationNotActive {
            reservation_id: "cart-3".into(),
            state: ReservationState::Confirmed,
        },
        Error::NotLeader {
            shard_id: ShardId(2),
            leader: Some((3, "127.0.0.1:7003".into())),
        },
        Error::ShardNotHere {
            shard_id: ShardId(4),
            replicas: vec![1, 5],
        },
        Error::ShardUnavailable {
            shard_id: ShardId(1),
            reason: "no quorum".into(),
        },
        Error::ShardMoved {
            sku: "tomato-30".into(),
        },
        Error::RateLimited {
            what: "client x".into(),
            retry_after_ms: 40,
        },
        Error::RequestIdReused,
        Error::OutcomeUnknown {
            shard_id: ShardId(3),
            reason: "timeout".into(),
        },
        Error::CrossShard {
            what: "items".into(),
            shard_ids: vec![ShardId(1), ShardId(2)],
        },
        Error::Aborted { failed_op: 7 },
        Error::RequestTooLarge {
            what: "the request".into(),
            size_bytes: 5_000_000,
            limit_bytes: 4_194_304,
        },
        Error::NodeNotFound { node_id: 99 },
        Error::ShardNotFound {
            shard_id: ShardId(77),
        },
        Error::RaftMessageRefused {
            shard_id: ShardId(1),
            from_node_id: 2,
            problem: "term too large".into(),
        },
        Error::Unauthenticated {
            reason: "no client certificate".into(),
        },
        Error::PermissionDenied {
            identity: "shop-reader".into(),
            call: "adjust".into(),
            reason: "role reader cannot write".into(),
        },
        Error::Internal {
            message: "disk".into(),
        },
        Error::VersionMismatch {
            sku: "apple".into(),
            expected: 3,
            actual: 4,
        },
        Error::MoveRefused {
            shard_id: ShardId(2),
            node_id: 4,
            step: "catch_up",
            problem: "too slow".into(),
        },
    ]
}

/// What the client must read back from `e`'s status.
fn expected(e: &Error, rid: [u8; 16]) -> Verdict {
    let msg = e.to_string();
    let definite = Verdict::Definite;
    match e.clone() {
        Error::InvalidArgument { field, rule } => definite(ClientError::InvalidArgument {
            field,
            message: rule,
        }),
        Error::SkuNotFound { sku } => definite(ClientError::SkuNotFound { sku }),
        Error::ReservationNotFound { reservation_id } => {
            definite(ClientError::ReservationNotFound { reservation_id })
        }
        Error::InsufficientStock { sku, available } => {
            definite(ClientError::InsufficientStock { sku, available })
        }
        Error::VersionMismatch {
            sku,
            expected,
            actual,
        } => definite(ClientError::VersionMismatch {
            sku,
            expected,
            actual,
        }),
        Error::ReservationExpired { reservation_id } => {
            definite(ClientError::ReservationExpired { reservation_id })
        }
        Error::ReservationNotActive { reservation_id, .. } => {
            definite(ClientError::ReservationNotActive {
                reservation_id,
                state: stockpile_client::ReservationState::Confirmed,
            })
        }
        Error::NotLeader { shard_id, leader } => Verdict::NotLeader {
            shard_id: shard_id.0,
            hint: leader.map(|(id, _)| id),
            message: msg,
        },
        Error::ShardNotHere { .. } | Error::ShardMoved { .. } => Verdict::MapStale { message: msg },
        Error::ShardUnavailable { .. } => Verdict::Unavailable {
            maybe_applied: false,
            message: msg,
        },
        Error::RateLimited { retry_after_ms, .. } => Verdict::RateLimited {
            retry_after_ms,
            message: msg,
        },
        Error::RequestIdReused => definite(ClientError::RequestIdReused { request_id: rid }),
        Error::OutcomeUnknown { .. } => Verdict::Unavailable {
            maybe_applied: true,
            message: msg,
        },
        Error::CrossShard { shard_ids, .. } => definite(ClientError::CrossShard {
            message: msg,
            shard_ids: shard_ids.iter().map(|s| s.0).collect(),
        }),
        Error::Aborted { failed_op } => definite(ClientError::Aborted {
            failed_op,
            message: msg,
        }),
        Error::RequestTooLarge {
            size_bytes,
            limit_bytes,
            ..
        } => definite(ClientError::RequestTooLarge {
            size_bytes,
            limit_bytes,
        }),
        Error::NodeNotFound { node_id } => definite(ClientError::NodeNotFound { node_id }),
        Error::MoveRefused {
            shard_id,
            node_id,
            step,
            ..
        } => definite(ClientError::MoveRefused {
            shard_id: shard_id.0,
            node_id,
            step: step.into(),
            message: msg,
        }),
        Error::ShardNotFound { shard_id } => definite(ClientError::ShardNotFound {
            shard_id: shard_id.0,
        }),
        Error::Unauthenticated { .. } => definite(ClientError::Unauthenticated { message: msg }),
        Error::PermissionDenied { identity, call, .. } => definite(ClientError::PermissionDenied {
            identity,
            call,
            message: msg,
        }),
        Error::RaftMessageRefused { .. } | Error::Internal { .. } => {
            definite(ClientError::Internal { message: msg })
        }
    }
}

#[test]
fn every_node_error_reaches_the_client_with_every_field() {
    let rid = [0x5a; 16];
    for e in every_variant() {
        let status = to_status_of_op(e.clone(), &rid);
        assert_eq!(
            classify(&status, Some(rid)),
            expected(&e, rid),
            "{e:?} -> {status:?}"
        );
        let d = decode_detail(&status).expect("a detail");
        assert_eq!(d.request_id, rid.to_vec(), "{e:?}: the request id");
        // Facts the client acts on without making them part of an error value.
        match &e {
            Error::NotLeader { shard_id, leader } => {
                let (id, addr) = leader.clone().expect("a leader");
                assert_eq!(
                    (d.shard_id, d.leader_id, d.leader_addr),
                    (shard_id.0, id, addr)
                );
            }
            Error::ShardNotHere { shard_id, replicas } => {
                assert_eq!((d.shard_id, &d.replica_ids), (shard_id.0, replicas));
            }
            Error::ShardUnavailable { shard_id, .. } | Error::OutcomeUnknown { shard_id, .. } => {
                assert_eq!(d.shard_id, shard_id.0);
            }
            Error::ReservationNotActive { state, .. } => {
                assert_eq!(d.state(), pb::ReservationState::Confirmed, "{state:?}");
            }
            Error::RaftMessageRefused {
                shard_id,
                from_node_id,
                ..
            } => assert_eq!((d.shard_id, d.node_id), (shard_id.0, *from_node_id)),
            _ => {}
        }
    }
}

#[test]
fn errors_outside_a_mutation_carry_no_request_id() {
    let status = to_status(Error::SkuNotFound { sku: "a".into() });
    let d = pb::ErrorDetail::decode(status.details()).expect("detail");
    assert!(d.request_id.is_empty());
}
