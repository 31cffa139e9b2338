//! The one conversion from node errors to the wire, for every service: a gRPC status
//! code plus an encoded `stockpile.v1.ErrorDetail` carrying the reason and every fact
//! of the error as a field (docs/ERRORS.md). A client never needs the message text.

use prost::Message;
use stockpile_proto::v1 as pb;
use tonic::Code;

use super::encode::state_to_pb;
use crate::error::Error;
use crate::inventory::RequestId;

pub fn reason(e: &Error) -> pb::Reason {
    use pb::Reason as R;
    match e {
        Error::InvalidArgument { .. } => R::InvalidArgument,
        Error::SkuNotFound { .. } => R::SkuNotFound,
        Error::ReservationNotFound { .. } => R::ReservationNotFound,
        Error::InsufficientStock { .. } => R::InsufficientStock,
        Error::VersionMismatch { .. } => R::VersionMismatch,
        Error::ReservationExpired { .. } => R::ReservationExpired,
        Error::ReservationNotActive { .. } => R::ReservationNotActive,
        Error::NotLeader { .. } => R::NotLeader,
        Error::ShardNotHere { .. } => R::ShardNotHere,
        Error::ShardMoved { .. } => R::ShardMoved,
        Error::ShardUnavailable { .. } => R::ShardUnavailable,
        Error::RateLimited { .. } => R::RateLimited,
        Error::RequestIdReused => R::RequestIdReused,
        Error::OutcomeUnknown { .. } => R::OutcomeUnknown,
        Error::CrossShard { .. } => R::CrossShard,
        Error::Aborted { .. } => R::Aborted,
        Error::RequestTooLarge { .. } => R::RequestTooLarge,
        Error::NodeNotFound { .. } => R::NodeNotFound,
        Error::ShardNotFound { .. } => R::ShardNotFound,
        Error::RaftMessageRefused { .. } => R::RaftMessageRefused,
        Error::Unauthenticated { .. } => R::Unauthenticated,
        Error::PermissionDenied { .. } => R::PermissionDenied,
        Error::MoveRefused { .. } => R::MoveRefused,
        Error::Internal { .. } => R::Internal,
    }
}

/// The reason as metrics and logs name it (`INSUFFICIENT_STOCK`).
pub fn reason_name(e: &Error) -> &'static str {
    reason(e).as_str_name().trim_start_matches("REASON_")
}

pub fn code(e: &Error) -> Code {
    code_of_reason(reason(e))
}

/// The gRPC code of each reason (docs/ERRORS.md): also what a batch operation's
/// refusal, which travels as a bare detail, would have had as a call.
pub fn code_of_reason(reason: pb::Reason) -> Code {
    use pb::Reason as R;
    match reason {
        R::InvalidArgument
        | R::RequestIdReused
        | R::CrossShard
        | R::RequestTooLarge
        | R::RaftMessageRefused => Code::InvalidArgument,
        R::SkuNotFound | R::ReservationNotFound | R::NodeNotFound | R::ShardNotFound => {
            Code::NotFound
        }
        R::InsufficientStock
        | R::VersionMismatch
        | R::ReservationExpired
        | R::ReservationNotActive
        | R::ShardMoved
        | R::MoveRefused => Code::FailedPrecondition,
        R::Aborted => Code::Aborted,
        R::NotLeader | R::ShardNotHere | R::ShardUnavailable | R::OutcomeUnknown => {
            Code::Unavailable
        }
        R::RateLimited => Code::ResourceExhausted,
        R::Unauthenticated => Code::Unauthenticated,
        R::PermissionDenied => Code::PermissionDenied,
        R::Internal | R::Unspecified => Code::Internal,
    }
}

/// The error's detail, every fact in its field.
pub fn detail(e: &Error) -> pb::ErrorDetail {
    let mut d = pb::ErrorDetail {
        reason: reason(e) as i32,
        message: e.to_string(),
        ..Default::default()
    };
    match e {
        Error::InvalidArgument { field, rule } => {
            d.field = field.clone();
            d.rule = rule.clone();
        }
        Error::SkuNotFound { sku } | Error::ShardMoved { sku } => d.sku = sku.clone(),
        Error::VersionMismatch {
            sku,
            expected,
            actual,
        } => {
            d.sku = sku.clone();
            d.expected_version = *expected;
            d.actual_version = *actual;
        }
        Error::InsufficientStock { sku, available } => {
            d.sku = sku.clone();
            d.available = *available;
        }
        Error::ReservationNotFound { reservation_id }
        | Error::ReservationExpired { reservation_id } => {
            d.reservation_id = reservation_id.clone();
        }
        Error::ReservationNotActive {
            reservation_id,
            state,
        } => {
            d.reservation_id = reservation_id.clone();
            d.state = state_to_pb(*state) as i32;
        }
        Error::NotLeader { shard_id, leader } => {
            d.shard_id = shard_id.0;
            if let Some((id, addr)) = leader {
                d.leader_id = *id;
                d.leader_addr = addr.clone();
            }
        }
        Error::ShardNotHere { shard_id, replicas } => {
            d.shard_id = shard_id.0;
            d.replica_ids = replicas.clone();
        }
        Error::ShardUnavailable { shard_id, .. }
        | Error::OutcomeUnknown { shard_id, .. }
        | Error::ShardNotFound { shard_id } => d.shard_id = shard_id.0,
        Error::RateLimited { retry_after_ms, .. } => d.retry_after_ms = *retry_after_ms,
        Error::CrossShard { shard_ids, .. } => {
            d.shard_ids = shard_ids.iter().map(|s| s.0).collect();
        }
        Error::RequestIdReused => d.field = "request_id".into(),
        Error::Aborted { failed_op } => d.failed_op = *failed_op,
        Error::RequestTooLarge {
            size_bytes,
            limit_bytes,
            ..
        } => {
            d.field = "request".into();
            d.size_bytes = *size_bytes;
            d.limit_bytes = *limit_bytes;
        }
        Error::NodeNotFound { node_id } => d.node_id = *node_id,
        Error::RaftMessageRefused {
            shard_id,
            from_node_id,
            ..
        } => {
            d.shard_id = shard_id.0;
            d.node_id = *from_node_id;
        }
        Error::PermissionDenied { identity, call, .. } => {
            d.identity = identity.clone();
            d.field = call.clone();
        }
        Error::MoveRefused {
            shard_id,
            node_id,
            step,
            ..
        } => {
            d.shard_id = shard_id.0;
            d.node_id = *node_id;
            d.step = (*step).to_string();
        }
        Error::Unauthenticated { .. } | Error::Internal { .. } => {}
    }
    d
}

/// The detail of an error of one mutation: with its request id.
pub fn detail_of_op(e: &Error, request_id: &RequestId) -> pb::ErrorDetail {
    pb::ErrorDetail {
        request_id: request_id.to_vec(),
        ..detail(e)
    }
}

fn status_of(e: &Error, d: pb::ErrorDetail) -> tonic::Status {
    tonic::Status::with_details(code(e), d.message.clone(), d.encode_to_vec().into())
}

pub fn to_status(e: Error) -> tonic::Status {
    status_of(&e, detail(&e))
}

/// The leader a NOT_LEADER status from another node names, when it names one: where
/// a node's own call (a cluster-map change) goes next.
pub fn leader_hint(status: &tonic::Status) -> Option<u64> {
    let d = pb::ErrorDetail::decode(status.details()).ok()?;
    (d.reason() == pb::Reason::NotLeader && d.leader_id != 0).then_some(d.leader_id)
}

/// The status of a failed mutation: its detail carries the request id.
pub fn to_status_of_op(e: Error, request_id: &RequestId) -> tonic::Status {
    status_of(&e, detail_of_op(&e, request_id))
}

/// The HTTP status of a refusal (the HTTP face, docs/HTTP.md): from the reason when the
/// detail has one, else from the gRPC code, following the usual gRPC → HTTP table.
/// NOT_LEADER and SHARD_NOT_HERE are answered with a redirect where a node to go to
/// is known (`api::http::reply`); this is their status when none is.
pub fn http_status(reason: pb::Reason, code: Code) -> u16 {
    use pb::Reason as R;
    match reason {
        R::InvalidArgument | R::CrossShard | R::RaftMessageRefused => 400,
        R::RequestIdReused => 422,
        R::RequestTooLarge => 413,
        R::SkuNotFound | R::ReservationNotFound | R::NodeNotFound | R::ShardNotFound => 404,
        R::InsufficientStock
        | R::ReservationExpired
        | R::ReservationNotActive
        | R::Aborted
        | R::MoveRefused => 409,
        R::VersionMismatch => 412,
        R::RateLimited => 429,
        R::NotLeader | R::ShardNotHere | R::ShardUnavailable | R::ShardMoved => 503,
        R::OutcomeUnknown => 504,
        R::Unauthenticated => 401,
        R::PermissionDenied => 403,
        R::Internal => 500,
        R::Unspecified => http_status_of_code(code),
    }
}

fn http_status_of_code(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::InvalidArgument | Code::OutOfRange => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::FailedPrecondition => 412,
        Code::ResourceExhausted => 429,
        Code::Cancelled => 499,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::ShardId;

    #[test]
    fn a_not_leader_status_names_its_leader_and_others_name_none() {
        let hinted = to_status(Error::NotLeader {
            shard_id: ShardId(0),
            leader: Some((5, "127.0.0.15:7000".into())),
        });
        assert_eq!(leader_hint(&hinted), Some(5));
        let unknown = to_status(Error::NotLeader {
            shard_id: ShardId(0),
            leader: None,
        });
        assert_eq!(leader_hint(&unknown), None);
        let other = to_status(Error::ShardNotFound {
            shard_id: ShardId(0),
        });
        assert_eq!(leader_hint(&other), None);
        assert_eq!(leader_hint(&tonic::Status::unavailable("down")), None);
    }

    #[test]
    fn statuses_carry_a_decodable_detail() {
        let s = to_status(Error::InsufficientStock {
            sku: "a".into(),
            available: 3,
        });
        assert_eq!(s.code(), Code::FailedPrecondition);
        let d = pb::ErrorDetail::decode(s.details()).unwrap();
        assert_eq!(d.reason(), pb::Reason::InsufficientStock);
        assert_eq!(d.available, 3);
        let s = to_status_of_op(
            Error::NotLeader {
                shard_id: ShardId(2),
                leader: Some((3, "127.0.0.1:7003".into())),
            },
            &[9; 16],
        );
        let d = pb::ErrorDetail::decode(s.details()).unwrap();
        assert_eq!(
            (d.reason(), d.shard_id, d.leader_id, d.leader_addr.as_str()),
            (pb::Reason::NotLeader, 2, 3, "127.0.0.1:7003")
        );
        assert_eq!(d.request_id, vec![9; 16]);
        let s = to_status(Error::InvalidArgument {
            field: "sku".into(),
            rule: "must not be empty".into(),
        });
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "invalid sku: must not be empty");
        let d = pb::ErrorDetail::decode(s.details()).unwrap();
        assert_eq!(
            (d.field.as_str(), d.rule.as_str()),
            ("sku", "must not be empty")
        );
    }
}
