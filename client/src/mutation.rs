//! Mutations as values: what the explicit batch API takes, what the coalescer
//! queues, and their conversion to wire operations.

use std::time::Duration;

use stockpile_proto::v1 as pb;

use crate::types::{Item, RequestId, ReservationUpdate, StockUpdate};

/// One change to the store. Every mutation is sent with a request id (see
/// [`Client::batch`](crate::Client::batch) and the `*_with_id` methods).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Set on-hand stock (creates the SKU).
    SetStock {
        /// The SKU concerned.
        sku: String,
        /// Units in stock, held ones included.
        on_hand: u64,
        /// Apply only if the record is at this version (0: no record yet), else
        /// [`Error::VersionMismatch`](crate::Error::VersionMismatch); None: always.
        expected_version: Option<u64>,
    },
    /// Add a signed delta to on-hand stock.
    AdjustStock {
        /// The SKU concerned.
        sku: String,
        /// The signed change of on-hand stock.
        delta: i64,
        /// As for `SetStock`.
        expected_version: Option<u64>,
    },
    /// Take `quantity` units if available.
    Decrement {
        /// The SKU concerned.
        sku: String,
        /// Units.
        quantity: u64,
    },
    /// Hold items (one shard) for `ttl`; `reservation_id` None lets the store choose.
    Reserve {
        /// The reservation id.
        reservation_id: Option<String>,
        /// The items (SKU and quantity).
        items: Vec<Item>,
        /// How long the hold lasts.
        ttl: Duration,
    },
    /// Turn a reservation into a sale; `sku` is any SKU of the reservation (routing).
    Confirm {
        /// The reservation id.
        reservation_id: String,
        /// The SKU concerned.
        sku: String,
    },
    /// Give a reservation's stock back; `sku` is any SKU of the reservation (routing).
    Release {
        /// The reservation id.
        reservation_id: String,
        /// The SKU concerned.
        sku: String,
    },
}

impl Mutation {
    /// The SKU whose shard the mutation goes to.
    pub fn route_sku(&self) -> &str {
        match self {
            Mutation::SetStock { sku, .. }
            | Mutation::AdjustStock { sku, .. }
            | Mutation::Decrement { sku, .. } => sku,
            Mutation::Confirm { sku, .. } | Mutation::Release { sku, .. } => sku,
            Mutation::Reserve { items, .. } => items.first().map(|i| i.sku.as_str()).unwrap_or(""),
        }
    }

    /// The wire form of this mutation with `request_id` (for callers that size or
    /// build requests themselves).
    pub fn to_pb(&self, request_id: &RequestId) -> pb::operation::Op {
        let request_id = request_id.to_vec();
        match self.clone() {
            Mutation::SetStock {
                sku,
                on_hand,
                expected_version,
            } => pb::operation::Op::SetStock(pb::SetStockRequest {
                request_id,
                sku,
                on_hand,
                expected_version,
            }),
            Mutation::AdjustStock {
                sku,
                delta,
                expected_version,
            } => pb::operation::Op::AdjustStock(pb::AdjustStockRequest {
                request_id,
                sku,
                delta,
                expected_version,
            }),
            Mutation::Decrement { sku, quantity } => {
                pb::operation::Op::Decrement(pb::DecrementRequest {
                    request_id,
                    sku,
                    quantity,
                })
            }
            Mutation::Reserve {
                reservation_id,
                items,
                ttl,
            } => pb::operation::Op::Reserve(pb::ReserveRequest {
                request_id,
                reservation_id: reservation_id.unwrap_or_default(),
                items: items
                    .into_iter()
                    .map(|i| pb::Item {
                        sku: i.sku,
                        quantity: i.quantity,
                    })
                    .collect(),
                ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            }),
            Mutation::Confirm {
                reservation_id,
                sku,
            } => pb::operation::Op::Confirm(pb::ConfirmRequest {
                request_id,
                reservation_id,
                sku,
            }),
            Mutation::Release {
                reservation_id,
                sku,
            } => pb::operation::Op::Release(pb::ReleaseRequest {
                request_id,
                reservation_id,
                sku,
            }),
        }
    }
}

/// What a mutation did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum MutationOutcome {
    /// A stock mutation's result.
    Stock(StockUpdate),
    /// A reservation mutation's result.
    Reservation(ReservationUpdate),
}

impl MutationOutcome {
    pub(crate) fn from_pb(
        r: pb::operation_result::Result,
        request_id: RequestId,
    ) -> Option<MutationOutcome> {
        match r {
            pb::operation_result::Result::Stock(s) => Some(MutationOutcome::Stock(
                crate::ops::stock_update(s, request_id),
            )),
            pb::operation_result::Result::Reservation(r) => Some(MutationOutcome::Reservation(
                crate::ops::reservation_update(r, request_id),
            )),
            pb::operation_result::Result::Error(_) => None,
        }
    }

    /// The stock update, if this was a stock mutation.
    pub fn stock(self) -> Option<StockUpdate> {
        match self {
            MutationOutcome::Stock(s) => Some(s),
            MutationOutcome::Reservation(_) => None,
        }
    }

    /// The reservation update, if this was a reservation mutation.
    pub fn reservation(self) -> Option<ReservationUpdate> {
        match self {
            MutationOutcome::Reservation(r) => Some(r),
            MutationOutcome::Stock(_) => None,
        }
    }
}
