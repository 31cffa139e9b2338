//! The JSON shapes of the HTTP face, each with its OpenAPI schema (utoipa). They
//! mirror the protobuf messages field for field, with names a JSON client expects
//! (enums as strings, absent instead of zero where zero means "none"), and convert
//! from them: the protobuf messages stay the one source of what a reply carries.

use serde::{Deserialize, Serialize};
use stockpile_proto::v1 as pb;
use utoipa::{IntoParams, IntoResponses, ToSchema};

/// A SKU's stock. `version` grows by one with every change; it is the record's ETag.
#[derive(Debug, Serialize, ToSchema)]
pub struct StockRecord {
    pub sku: String,
    pub on_hand: u64,
    pub reserved: u64,
    /// `on_hand - reserved`: what can still be sold or reserved.
    pub available: u64,
    pub version: u64,
}

impl From<pb::StockRecord> for StockRecord {
    fn from(r: pb::StockRecord) -> Self {
        StockRecord {
            sku: r.sku,
            on_hand: r.on_hand,
            reserved: r.reserved,
            available: r.available,
            version: r.version,
        }
    }
}

/// Where and how a mutation was applied.
#[derive(Debug, Serialize, ToSchema)]
pub struct Applied {
    pub shard_id: u64,
    pub node_id: u64,
    pub log_index: u64,
    /// True when this is the stored outcome of an earlier request with the same
    /// idempotency key (nothing was applied again).
    pub replayed: bool,
}

impl From<pb::Applied> for Applied {
    fn from(a: pb::Applied) -> Self {
        Applied {
            shard_id: a.shard_id,
            node_id: a.node_id,
            log_index: a.log_index,
            replayed: a.replayed,
        }
    }
}

/// The outcome of set, adjust or decrement.
#[derive(Debug, Serialize, ToSchema)]
pub struct StockReply {
    pub record: StockRecord,
    pub applied: Applied,
}

impl From<pb::StockReply> for StockReply {
    fn from(r: pb::StockReply) -> Self {
        StockReply {
            record: r.record.unwrap_or_default().into(),
            applied: r.applied.unwrap_or_default().into(),
        }
    }
}

/// `PUT /v1/skus/{sku}`: the new on-hand quantity.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStock {
    #[schema(maximum = 1_000_000_000_000_000_u64, example = 100)]
    pub on_hand: u64,
}

/// `POST /v1/skus/{sku}:adjust`: a signed change of the on-hand quantity.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustStock {
    /// Not zero; at most 10^15 either way.
    #[schema(minimum = -1_000_000_000_000_000_i64, maximum = 1_000_000_000_000_000_i64, example = 5)]
    pub delta: i64,
}

/// `POST /v1/skus/{sku}:decrement`: sell `quantity` units only if that many are
/// available.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decrement {
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_u64, example = 1)]
    pub quantity: u64,
}

/// A SKU read: the record and the shard that answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct SkuReply {
    pub record: StockRecord,
    pub shard_id: u64,
}

/// Read consistency: `linearizable` (the default: confirmed with the shard's
/// leader) or `stale` (any replica's applied state, no round trip).
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    #[default]
    Linearizable,
    Stale,
}

impl Consistency {
    pub fn to_pb(self) -> i32 {
        match self {
            Consistency::Linearizable => pb::Consistency::Linearizable as i32,
            Consistency::Stale => pb::Consistency::Stale as i32,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    pub consistency: Option<Consistency>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Start after this SKU (ignored when `page_token` is set).
    pub start_after: Option<String>,
    /// 1..=1000; the default is 100.
    pub page_size: Option<u32>,
    /// `next_page_token` of the previous page.
    pub page_token: Option<String>,
    pub consistency: Option<Consistency>,
}

/// One page of SKUs in order. A page may be short at a shard boundary; the walk is
/// over when `next_page_token` is absent.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListReply {
    pub records: Vec<StockRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

impl From<pb::ListReply> for ListReply {
    fn from(r: pb::ListReply) -> Self {
        ListReply {
            records: r.records.into_iter().map(Into::into).collect(),
            next_page_token: Some(r.next_page_token).filter(|t| !t.is_empty()),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// 1..=128 bytes of NFC UTF-8 (docs/ERRORS.md, SKU policy).
    #[schema(min_length = 1, max_length = 128, example = "apple")]
    pub sku: String,
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_u64, example = 1)]
    pub quantity: u64,
}

/// `POST /v1/reservations`: hold `items` (all in one shard) for `ttl_ms`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reserve {
    /// 1..=64 of `[A-Za-z0-9._:-]`; when absent the store derives one from the
    /// idempotency key.
    #[schema(example = "order-1001")]
    pub reservation_id: Option<String>,
    pub items: Vec<Item>,
    /// Within `limits.ttl_ms_min..=limits.ttl_ms_max` (docs/CONFIG.md).
    #[schema(example = 60000)]
    pub ttl_ms: u64,
}

/// `POST /v1/reservations/{id}:confirm` or `:release`: `sku` is one of the
/// reservation's items (it routes the call to the reservation's shard).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Close {
    #[schema(example = "apple")]
    pub sku: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReservationQuery {
    /// One of the reservation's SKUs (it routes the read to the reservation's shard).
    #[param(example = "apple")]
    pub sku: String,
    pub consistency: Option<Consistency>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Reservation {
    pub reservation_id: String,
    pub items: Vec<Item>,
    /// `ACTIVE`, `CONFIRMED`, `RELEASED` or `EXPIRED`.
    pub state: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub shard_id: u64,
}

/// A reservation state's name without its protobuf prefix (`ACTIVE`).
pub fn state_name(state: i32) -> String {
    pb::ReservationState::try_from(state)
        .unwrap_or(pb::ReservationState::Unspecified)
        .as_str_name()
        .trim_start_matches("RESERVATION_STATE_")
        .to_string()
}

impl From<pb::Reservation> for Reservation {
    fn from(r: pb::Reservation) -> Self {
        Reservation {
            reservation_id: r.reservation_id,
            items: r
                .items
                .into_iter()
                .map(|i| Item {
                    sku: i.sku,
                    quantity: i.quantity,
                })
                .collect(),
            state: state_name(r.state),
            created_at_ms: r.created_at_ms,
            expires_at_ms: r.expires_at_ms,
            shard_id: r.shard_id,
        }
    }
}

/// A reservation, and for mutations how it was applied and its items' records.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReservationReply {
    pub reservation: Reservation,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<Applied>,
    pub records: Vec<StockRecord>,
}

impl From<pb::ReservationReply> for ReservationReply {
    fn from(r: pb::ReservationReply) -> Self {
        ReservationReply {
            reservation: r.reservation.unwrap_or_default().into(),
            applied: r.applied.map(Into::into),
            records: r.records.into_iter().map(Into::into).collect(),
        }
    }
}

/// One operation of a batch; `op` names it. Each op's idempotency key is derived
/// from the batch's `Idempotency-Key` and its index, so a retried batch replays.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum BatchOp {
    SetStock {
        sku: String,
        on_hand: u64,
    },
    AdjustStock {
        sku: String,
        delta: i64,
    },
    Decrement {
        sku: String,
        quantity: u64,
    },
    Reserve {
        reservation_id: Option<String>,
        items: Vec<Item>,
        ttl_ms: u64,
    },
    Confirm {
        reservation_id: String,
        sku: String,
    },
    Release {
        reservation_id: String,
        sku: String,
    },
}

/// `POST /v1/batch`: up to `limits.batch_ops_max` operations; with `atomic`, all in
/// one shard and applied all or nothing.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub ops: Vec<BatchOp>,
    #[serde(default)]
    pub atomic: bool,
}

/// One operation's outcome: exactly one of the three fields.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stock: Option<StockReply>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservation: Option<ReservationReply>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchReply {
    pub results: Vec<BatchResult>,
}

/// Every refusal: the reason (docs/ERRORS.md) and its facts as fields; a field is
/// absent when the reason does not carry it.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// `INSUFFICIENT_STOCK`, `NOT_LEADER`, ... (docs/ERRORS.md).
    pub reason: String,
    /// The gRPC status code the same refusal has there (`FAILED_PRECONDITION`).
    pub code: String,
    /// One line for humans; never parse it.
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_ids: Option<Vec<u64>>,
    /// The idempotency key's request id (32 hex digits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_op: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_ids: Option<Vec<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual_version: Option<u64>,
}

/// `GET /v1/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `SERVING` once the node has joined every shard (each knows a leader).
    pub status: String,
    pub node_id: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterStatus {
    pub epoch: u64,
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NodeView {
    pub node_id: u64,
    pub addr: String,
    pub region: String,
    pub zone: String,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub uptime_ms: u64,
    pub shards: Vec<ShardView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ShardView {
    pub shard_id: u64,
    pub start: String,
    /// Empty: no upper bound.
    pub end: String,
    pub replicas: Vec<u64>,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    pub leader_id: u64,
    pub term: u64,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// On the leader only: every replica's lag in entries.
    pub replication: Vec<ReplicaLag>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReplicaLag {
    pub node_id: u64,
    pub matched_index: u64,
    pub lag: u64,
}

impl From<pb::ClusterStatusReply> for ClusterStatus {
    fn from(r: pb::ClusterStatusReply) -> Self {
        ClusterStatus {
            epoch: r.epoch,
            nodes: r.nodes.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<pb::NodeView> for NodeView {
    fn from(v: pb::NodeView) -> Self {
        let info = v.node.unwrap_or_default();
        let status = v.status.unwrap_or_default();
        NodeView {
            node_id: info.node_id,
            addr: info.addr,
            region: info.region,
            zone: info.zone,
            reachable: v.reachable,
            error: Some(v.error).filter(|e| !e.is_empty()),
            uptime_ms: status.uptime_ms,
            shards: status.shards.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<pb::ShardStatus> for ShardView {
    fn from(s: pb::ShardStatus) -> Self {
        ShardView {
            shard_id: s.shard_id,
            start: s.start,
            end: s.end,
            replicas: s.replicas,
            role: s.role,
            leader_id: s.leader_id,
            term: s.term,
            last_log_index: s.last_log_index,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            replication: s
                .replication
                .into_iter()
                .map(|p| ReplicaLag {
                    node_id: p.node_id,
                    matched_index: p.matched_index,
                    lag: p.lag,
                })
                .collect(),
        }
    }
}

/// The refusals every call can answer (docs/HTTP.md has the table); the body is
/// always an `ErrorBody`.
#[derive(IntoResponses)]
pub enum Refusals {
    /// Not the shard's leader (or no replica here): repeat the same request at
    /// `Location`.
    #[response(status = 307)]
    Redirect(ErrorBody),
    /// INVALID_ARGUMENT or CROSS_SHARD: `field` names what was wrong.
    #[response(status = 400)]
    Invalid(ErrorBody),
    /// UNAUTHENTICATED: no client certificate or bearer token, or an unknown one.
    #[response(status = 401)]
    Unauthenticated(ErrorBody),
    /// PERMISSION_DENIED: the identity's role or SKU prefixes do not allow it.
    #[response(status = 403)]
    Denied(ErrorBody),
    /// SKU_NOT_FOUND or RESERVATION_NOT_FOUND.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// INSUFFICIENT_STOCK (with `available`), RESERVATION_EXPIRED,
    /// RESERVATION_NOT_ACTIVE or ABORTED.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// VERSION_MISMATCH: `If-Match` named another version.
    #[response(status = 412)]
    VersionMoved(ErrorBody),
    /// REQUEST_TOO_LARGE.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// REQUEST_ID_REUSED: the idempotency key was used for another request.
    #[response(status = 422)]
    KeyReused(ErrorBody),
    /// RATE_LIMITED: wait `Retry-After` seconds.
    #[response(status = 429)]
    RateLimited(ErrorBody),
    /// INTERNAL: a bug or a storage failure; retry with the same idempotency key.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// SHARD_UNAVAILABLE (or no leader known): retry after `Retry-After` seconds.
    #[response(status = 503)]
    Unavailable(ErrorBody),
    /// OUTCOME_UNKNOWN: retry with the same idempotency key; applied at most once.
    #[response(status = 504)]
    OutcomeUnknown(ErrorBody),
}

#[cfg(test)]
mod tests {
    /// The schema's quantity bounds are the store's.
    #[test]
    fn quantity_bounds_match_the_store() {
        assert_eq!(crate::inventory::QTY_MAX, 1_000_000_000_000_000);
    }
}
