//! The client's error type. Every error says whether the operation certainly did
//! not happen (`is_definite`), and an outcome the client could not establish is its
//! own kind, `OutcomeUnknown`, carrying the request id to retry with.

use stockpile_proto::v1 as pb;

use crate::types::{RequestId, ReservationState, request_id_hex};

/// Why a call failed. See docs/ERRORS.md for the reasons and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request broke an input rule; `field` names what was wrong. Not applied.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        /// The offending field.
        field: String,
        /// What happened, for humans.
        message: String,
    },
    /// The SKU was never set. Not applied.
    #[error("SKU {sku:?} not found")]
    SkuNotFound {
        /// The SKU concerned.
        sku: String,
    },
    /// No reservation with this id. Not applied.
    #[error("reservation {reservation_id:?} not found")]
    ReservationNotFound {
        /// The reservation id.
        reservation_id: String,
    },
    /// Not enough available stock. Not applied.
    #[error("insufficient stock for {sku:?}: {available} available")]
    InsufficientStock {
        /// The SKU concerned.
        sku: String,
        /// Units that may still be sold or held (`on_hand - reserved`).
        available: u64,
    },
    /// A conditional set or adjust (`expected_version`) found the record at another
    /// version (0: no record). Not applied.
    #[error("SKU {sku:?} is at version {actual}, not the expected {expected}")]
    VersionMismatch {
        /// The SKU concerned.
        sku: String,
        /// The version the request expected.
        expected: u64,
        /// The record's version.
        actual: u64,
    },
    /// The reservation expired first; its stock went back. Not applied.
    #[error("reservation expired; its stock was returned")]
    ReservationExpired {
        /// The reservation id.
        reservation_id: String,
    },
    /// The reservation was confirmed or released already. Not applied.
    #[error("reservation is {state:?}, not active")]
    ReservationNotActive {
        /// The reservation id.
        reservation_id: String,
        /// The reservation state.
        state: ReservationState,
    },
    /// The request id was used before for a different request. Not applied.
    #[error("request id {} was used before for a different request", request_id_hex(.request_id))]
    RequestIdReused {
        /// The request id the mutation was sent with: retry with it.
        request_id: RequestId,
    },
    /// The operation's items span shards where one shard is required. Not applied.
    #[error("{message}")]
    CrossShard {
        /// What happened, for humans.
        message: String,
        /// The shards involved.
        shard_ids: Vec<u64>,
    },
    /// The request is larger than the store accepts; split it (a batch into several).
    /// Not applied.
    #[error("request is {size_bytes} bytes; the limit is {limit_bytes} bytes")]
    RequestTooLarge {
        /// The request's size (its protobuf encoding).
        size_bytes: u64,
        /// The largest request the store accepts.
        limit_bytes: u64,
    },
    /// A replica move could not take `step` (docs/OPERATIONS.md): the same command
    /// resumes it once the cause (`message`) is gone.
    #[error("{message}")]
    MoveRefused {
        /// The shard being moved.
        shard_id: u64,
        /// The node concerned.
        node_id: u64,
        /// The step refused (`create_replica`, `catch_up`, `replace_voter`, ...).
        step: String,
        /// Why, for humans (names the shard, step and node too).
        message: String,
    },
    /// An admin call named a node the cluster does not have. Not applied.
    #[error("node {node_id} is not in the cluster")]
    NodeNotFound {
        /// The node named.
        node_id: u64,
    },
    /// An admin call named a shard the cluster does not have. Not applied.
    #[error("shard {shard_id} is not in the cluster")]
    ShardNotFound {
        /// The shard named.
        shard_id: u64,
    },
    /// Not applied because another operation of its all-or-nothing batch was refused.
    #[error("{message}")]
    Aborted {
        /// The index (in the batch) of the operation whose refusal aborted it.
        failed_op: u32,
        /// What happened, for humans.
        message: String,
    },
    /// The store could not be reached or had no leader within the deadline, and the
    /// operation certainly did not happen.
    #[error("unavailable: {message}")]
    Unavailable {
        /// What happened, for humans.
        message: String,
    },
    /// The store refused for load and the deadline left no time to wait. Not applied.
    #[error("rate limited: {message}")]
    RateLimited {
        /// What happened, for humans.
        message: String,
        /// How long the store asked to wait, in ms.
        retry_after_ms: u64,
    },
    /// The operation may or may not have happened. Retry it with the same request id
    /// (the `*_with_id` methods of `Client`): it is applied at most once.
    #[error("outcome unknown for request {}: {message}", request_id_hex(.request_id))]
    OutcomeUnknown {
        /// The request id the mutation was sent with: retry with it.
        request_id: RequestId,
        /// What happened, for humans.
        message: String,
    },
    /// No valid certificate or token, or it expired. Not applied. (The store's
    /// message already says "unauthenticated: ...".)
    #[error("{message}")]
    Unauthenticated {
        /// What happened, for humans.
        message: String,
    },
    /// The authenticated identity may not make this call (or touch this SKU). Not
    /// applied.
    #[error("permission denied: {message}")]
    PermissionDenied {
        /// The identity the store authenticated.
        identity: String,
        /// The call refused.
        call: String,
        /// What happened, for humans.
        message: String,
    },
    /// A bug or storage failure on a node; the outcome is unknown.
    #[error("internal error: {message}")]
    Internal {
        /// What happened, for humans.
        message: String,
    },
    /// The client was built or called wrongly (no seeds, bad address).
    #[error("client configuration: {message}")]
    Config {
        /// What happened, for humans.
        message: String,
    },
}

impl Error {
    /// True when the operation certainly did not take effect.
    pub fn is_definite(&self) -> bool {
        !matches!(self, Error::OutcomeUnknown { .. } | Error::Internal { .. })
    }

    /// True for a refusal by the store's rules (not found, insufficient stock, ...),
    /// as opposed to bad input or unavailability.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::SkuNotFound { .. }
                | Error::ReservationNotFound { .. }
                | Error::InsufficientStock { .. }
                | Error::VersionMismatch { .. }
                | Error::ReservationExpired { .. }
                | Error::ReservationNotActive { .. }
                | Error::Aborted { .. }
        )
    }

    /// The machine-readable reason, as the wire names it.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Error::SkuNotFound { .. } => "SKU_NOT_FOUND",
            Error::ReservationNotFound { .. } => "RESERVATION_NOT_FOUND",
            Error::InsufficientStock { .. } => "INSUFFICIENT_STOCK",
            Error::VersionMismatch { .. } => "VERSION_MISMATCH",
            Error::ReservationExpired { .. } => "RESERVATION_EXPIRED",
            Error::ReservationNotActive { .. } => "RESERVATION_NOT_ACTIVE",
            Error::RequestIdReused { .. } => "REQUEST_ID_REUSED",
            Error::CrossShard { .. } => "CROSS_SHARD",
            Error::RequestTooLarge { .. } => "REQUEST_TOO_LARGE",
            Error::NodeNotFound { .. } => "NODE_NOT_FOUND",
            Error::MoveRefused { .. } => "MOVE_REFUSED",
            Error::ShardNotFound { .. } => "SHARD_NOT_FOUND",
            Error::Unauthenticated { .. } => "UNAUTHENTICATED",
            Error::PermissionDenied { .. } => "PERMISSION_DENIED",
            Error::Aborted { .. } => "ABORTED",
            Error::Unavailable { .. } => "UNAVAILABLE",
            Error::RateLimited { .. } => "RATE_LIMITED",
            Error::OutcomeUnknown { .. } => "OUTCOME_UNKNOWN",
            Error::Internal { .. } => "INTERNAL",
            Error::Config { .. } => "CONFIG",
        }
    }

    /// The definite error an `ErrorDetail` describes, or None for the reasons the
    /// client handles by retrying (not leader, not here, unavailable, rate limited,
    /// unknown). Reads the detail's fields only, never its message text.
    pub(crate) fn from_detail(d: &pb::ErrorDetail, request_id: Option<RequestId>) -> Option<Error> {
        use pb::Reason as R;
        let reservation_id = || d.reservation_id.clone();
        Some(match d.reason() {
            R::InvalidArgument => Error::InvalidArgument {
                field: d.field.clone(),
                message: d.rule.clone(),
            },
            R::Aborted => Error::Aborted {
                failed_op: d.failed_op,
                message: d.message.clone(),
            },
            R::SkuNotFound => Error::SkuNotFound { sku: d.sku.clone() },
            R::ReservationNotFound => Error::ReservationNotFound {
                reservation_id: reservation_id(),
            },
            R::InsufficientStock => Error::InsufficientStock {
                sku: d.sku.clone(),
                available: d.available,
            },
            R::VersionMismatch => Error::VersionMismatch {
                sku: d.sku.clone(),
                expected: d.expected_version,
                actual: d.actual_version,
            },
            R::ReservationExpired => Error::ReservationExpired {
                reservation_id: reservation_id(),
            },
            R::ReservationNotActive => Error::ReservationNotActive {
                reservation_id: reservation_id(),
                state: ReservationState::from_pb(d.state()),
            },
            R::RequestIdReused => Error::RequestIdReused {
                request_id: request_id.unwrap_or_default(),
            },
            R::CrossShard => Error::CrossShard {
                message: d.message.clone(),
                shard_ids: d.shard_ids.clone(),
            },
            R::RequestTooLarge => Error::RequestTooLarge {
                size_bytes: d.size_bytes,
                limit_bytes: d.limit_bytes,
            },
            R::NodeNotFound => Error::NodeNotFound { node_id: d.node_id },
            R::MoveRefused => Error::MoveRefused {
                shard_id: d.shard_id,
                node_id: d.node_id,
                step: d.step.clone(),
                message: d.message.clone(),
            },
            R::ShardNotFound => Error::ShardNotFound {
                shard_id: d.shard_id,
            },
            R::Unauthenticated => Error::Unauthenticated {
                message: d.message.clone(),
            },
            R::PermissionDenied => Error::PermissionDenied {
                identity: d.identity.clone(),
                call: d.field.clone(),
                message: d.message.clone(),
            },
            R::Internal | R::RaftMessageRefused => Error::Internal {
                message: d.message.clone(),
            },
            R::NotLeader
            | R::ShardNotHere
            | R::ShardUnavailable
            | R::RateLimited
            | R::OutcomeUnknown
            | R::ShardMoved
            | R::Unspecified => return None,
        })
    }
}
