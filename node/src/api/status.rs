//! The one conversion from node errors to the wire: a gRPC status code plus an
//! encoded `stockpile.v1.ErrorDetail` in the status details (docs/ERRORS.md).

use prost::Message;
use stockpile_proto::v1 as pb;
use tonic::Code;

use super::convert::state_to_pb;
use crate::error::Error;

pub fn reason(e: &Error) -> pb::Reason {
    match e {
        Error::InvalidArgument { .. } | Error::Aborted { .. } => pb::Reason::InvalidArgument,
        Error::SkuNotFound { .. } => pb::Reason::SkuNotFound,
        Error::ReservationNotFound { .. } => pb::Reason::ReservationNotFound,
        Error::InsufficientStock { .. } => pb::Reason::InsufficientStock,
        Error::ReservationExpired { .. } => pb::Reason::ReservationExpired,
        Error::ReservationNotActive { .. } => pb::Reason::ReservationNotActive,
        Error::NotLeader { .. } => pb::Reason::NotLeader,
        Error::ShardUnavailable { .. } => pb::Reason::ShardUnavailable,
        Error::RateLimited { .. } => pb::Reason::RateLimited,
        Error::RequestIdReused => pb::Reason::RequestIdReused,
        Error::OutcomeUnknown { .. } => pb::Reason::OutcomeUnknown,
        Error::CrossShard { .. } => pb::Reason::CrossShard,
        Error::RequestTooLarge { .. } => pb::Reason::RequestTooLarge,
        Error::NodeNotFound { .. } => pb::Reason::NodeNotFound,
        Error::ShardNotFound { .. } => pb::Reason::ShardNotFound,
        Error::Internal { .. } => pb::Reason::Internal,
    }
}

pub fn code(e: &Error) -> Code {
    match e {
        Error::InvalidArgument { .. }
        | Error::RequestIdReused
        | Error::CrossShard { .. }
        | Error::RequestTooLarge { .. } => Code::InvalidArgument,
        Error::SkuNotFound { .. }
        | Error::ReservationNotFound { .. }
        | Error::NodeNotFound { .. }
        | Error::ShardNotFound { .. } => Code::NotFound,
        Error::InsufficientStock { .. }
        | Error::ReservationExpired { .. }
        | Error::ReservationNotActive { .. } => Code::FailedPrecondition,
        Error::Aborted { .. } => Code::Aborted,
        Error::NotLeader { .. } | Error::ShardUnavailable { .. } | Error::OutcomeUnknown { .. } => {
            Code::Unavailable
        }
        Error::RateLimited { .. } => Code::ResourceExhausted,
        Error::Internal { .. } => Code::Internal,
    }
}

pub fn detail(e: &Error) -> pb::ErrorDetail {
    let mut d = pb::ErrorDetail {
        reason: reason(e) as i32,
        message: e.to_string(),
        ..Default::default()
    };
    match e {
        Error::InvalidArgument { field, .. } => d.field = field.clone(),
        Error::SkuNotFound { sku } => d.sku = sku.clone(),
        Error::InsufficientStock { sku, available } => {
            d.sku = sku.clone();
            d.available = *available;
        }
        Error::ReservationNotActive { state, .. } => d.state = state_to_pb(*state) as i32,
        Error::NotLeader { shard_id, leader } => {
            d.shard_id = *shard_id;
            if let Some((id, addr)) = leader {
                d.leader_id = *id;
                d.leader_addr = addr.clone();
            }
        }
        Error::ShardUnavailable { shard_id, .. } | Error::OutcomeUnknown { shard_id, .. } => {
            d.shard_id = *shard_id
        }
        Error::RateLimited { retry_after_ms, .. } => d.retry_after_ms = *retry_after_ms,
        Error::CrossShard { shard_ids, .. } => d.shard_ids = shard_ids.clone(),
        Error::RequestIdReused => d.field = "request_id".into(),
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
        Error::ShardNotFound { shard_id } => d.shard_id = *shard_id,
        Error::ReservationNotFound { .. }
        | Error::ReservationExpired { .. }
        | Error::Aborted { .. }
        | Error::Internal { .. } => {}
    }
    d
}

pub fn to_status(e: Error) -> tonic::Status {
    let d = detail(&e);
    tonic::Status::with_details(code(&e), d.message.clone(), d.encode_to_vec().into())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let s = to_status(Error::NotLeader {
            shard_id: 2,
            leader: Some((3, "127.0.0.1:7003".into())),
        });
        let d = pb::ErrorDetail::decode(s.details()).unwrap();
        assert_eq!(
            (d.reason(), d.shard_id, d.leader_id, d.leader_addr.as_str()),
            (pb::Reason::NotLeader, 2, 3, "127.0.0.1:7003")
        );
        let s = to_status(Error::InvalidArgument {
            field: "sku".into(),
            rule: "must not be empty".into(),
        });
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "invalid sku: must not be empty");
        assert_eq!(pb::ErrorDetail::decode(s.details()).unwrap().field, "sku");
    }
}
