//! The node's error type. Every variant carries, as fields, what a client needs to act
//! on it, and maps to one `stockpile.v1.Reason` in one place (`api::status`), for the
//! Inventory, Admin and Raft services alike.

use crate::inventory::validate::Invalid;
use crate::inventory::{Rejection, ReservationState};
use crate::router::ShardId;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid {field}: {rule}")]
    InvalidArgument { field: String, rule: String },
    #[error("SKU {sku:?} not found")]
    SkuNotFound { sku: String },
    #[error("reservation {reservation_id:?} not found")]
    ReservationNotFound { reservation_id: String },
    #[error("insufficient stock for {sku:?}: {available} available")]
    InsufficientStock { sku: String, available: u64 },
    #[error("SKU {sku:?} is at version {actual}, not the expected {expected}")]
    VersionMismatch {
        sku: String,
        expected: u64,
        actual: u64,
    },
    #[error("reservation {reservation_id:?} expired; its stock was returned")]
    ReservationExpired { reservation_id: String },
    #[error("reservation {reservation_id:?} is {}, not active", state.as_str())]
    ReservationNotActive {
        reservation_id: String,
        state: ReservationState,
    },
    #[error("node does not lead shard {shard_id}{}", leader_hint(.leader))]
    NotLeader {
        shard_id: ShardId,
        leader: Option<(u64, String)>,
    },
    #[error("this node holds no replica of shard {shard_id}; nodes {replicas:?} do")]
    ShardNotHere {
        shard_id: ShardId,
        replicas: Vec<u64>,
    },
    #[error("SKU {sku:?} has left this shard by a split; refresh the shard map and retry")]
    ShardMoved { sku: String },
    #[error("shard {shard_id} unavailable: {reason}")]
    ShardUnavailable { shard_id: ShardId, reason: String },
    #[error("rate limited ({what}); retry after {retry_after_ms} ms")]
    RateLimited { what: String, retry_after_ms: u64 },
    #[error("request id reused with a different request")]
    RequestIdReused,
    #[error("outcome unknown on shard {shard_id}: {reason}; retry with the same request id")]
    OutcomeUnknown { shard_id: ShardId, reason: String },
    #[error("{what} spans shards {shard_ids:?}; it must stay within one shard")]
    CrossShard {
        what: String,
        shard_ids: Vec<ShardId>,
    },
    #[error("not applied: operation {failed_op} of the all-or-nothing batch was refused")]
    Aborted { failed_op: u32 },
    #[error("{what} is {size_bytes} bytes; the limit is {limit_bytes} bytes: split it")]
    RequestTooLarge {
        what: String,
        size_bytes: u64,
        limit_bytes: u64,
    },
    #[error("node {node_id} is not in the cluster")]
    NodeNotFound { node_id: u64 },
    #[error("shard {shard_id} is not in the cluster")]
    ShardNotFound { shard_id: ShardId },
    #[error("refused a raft message for shard {shard_id} from node {from_node_id}: {problem}")]
    RaftMessageRefused {
        shard_id: ShardId,
        from_node_id: u64,
        problem: String,
    },
    #[error("unauthenticated: {reason}")]
    Unauthenticated { reason: String },
    #[error("{identity} may not call {call}: {reason}")]
    PermissionDenied {
        identity: String,
        call: String,
        reason: String,
    },
    #[error("shard {shard_id}: replica move refused at {step} (node {node_id}): {problem}")]
    MoveRefused {
        shard_id: ShardId,
        node_id: u64,
        step: &'static str,
        problem: String,
    },
    #[error("internal error: {message}")]
    Internal { message: String },
}

fn leader_hint(leader: &Option<(u64, String)>) -> String {
    match leader {
        Some((id, addr)) => format!("; leader is node {id} at {addr}"),
        None => "; leader unknown".to_string(),
    }
}

impl From<Invalid> for Error {
    fn from(e: Invalid) -> Self {
        Error::InvalidArgument {
            field: e.field,
            rule: e.rule,
        }
    }
}

impl From<crate::storage::StorageError> for Error {
    fn from(e: crate::storage::StorageError) -> Self {
        Error::internal(e)
    }
}

impl Error {
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Error::Internal {
            message: e.to_string(),
        }
    }

    /// True when the operation certainly did not take effect.
    pub fn certainly_not_applied(&self) -> bool {
        !matches!(self, Error::OutcomeUnknown { .. } | Error::Internal { .. })
    }
}

impl From<Rejection> for Error {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::SkuNotFound { sku } => Error::SkuNotFound { sku },
            Rejection::InsufficientStock { sku, available } => {
                Error::InsufficientStock { sku, available }
            }
            Rejection::ReservationNotFound { reservation_id } => {
                Error::ReservationNotFound { reservation_id }
            }
            Rejection::ReservationExpired { reservation_id } => {
                Error::ReservationExpired { reservation_id }
            }
            Rejection::ReservationNotActive {
                reservation_id,
                state,
            } => Error::ReservationNotActive {
                reservation_id,
                state,
            },
            Rejection::ReservationIdTaken { reservation_id } => Error::InvalidArgument {
                field: "reservation_id".into(),
                rule: format!("{reservation_id:?} is already used by another reservation"),
            },
            Rejection::SkuNotInReservation {
                reservation_id,
                sku,
            } => Error::InvalidArgument {
                field: "sku".into(),
                rule: format!("{sku:?} is not an item of reservation {reservation_id:?}"),
            },
            Rejection::QuantityOverflow { sku } => Error::InvalidArgument {
                field: "quantity".into(),
                rule: format!(
                    "the result for {sku:?} would exceed the maximum quantity {}",
                    crate::inventory::QTY_MAX
                ),
            },
            Rejection::RequestIdReused => Error::RequestIdReused,
            Rejection::Aborted { failed_op } => Error::Aborted { failed_op },
            Rejection::VersionMismatch {
                sku,
                expected,
                actual,
            } => Error::VersionMismatch {
                sku,
                expected,
                actual,
            },
            Rejection::ShardMoved { sku } => Error::ShardMoved { sku },
        }
    }
}
