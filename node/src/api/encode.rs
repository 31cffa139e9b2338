//! Domain values to `stockpile.v1` replies: records, reservations, and an operation's
//! result in the shape of its RPC's reply.

use stockpile_proto::v1 as pb;

use crate::error::Error;
use crate::inventory::{OpResult, Outcome, Reservation, ReservationState, StockRecord};

pub fn record_to_pb(sku: &str, r: &StockRecord) -> pb::StockRecord {
    pb::StockRecord {
        sku: sku.to_string(),
        on_hand: r.on_hand,
        reserved: r.reserved,
        available: r.available(),
        version: r.version,
    }
}

pub fn state_to_pb(s: ReservationState) -> pb::ReservationState {
    match s {
        ReservationState::Active => pb::ReservationState::Active,
        ReservationState::Confirmed => pb::ReservationState::Confirmed,
        ReservationState::Released => pb::ReservationState::Released,
        ReservationState::Expired => pb::ReservationState::Expired,
    }
}

pub fn reservation_to_pb(r: &Reservation, shard_id: u64) -> pb::Reservation {
    pb::Reservation {
        reservation_id: r.id.clone(),
        items: r
            .items
            .iter()
            .map(|i| pb::Item {
                sku: i.sku.clone(),
                quantity: i.qty,
            })
            .collect(),
        state: state_to_pb(r.state) as i32,
        created_at_ms: r.created_at_ms,
        expires_at_ms: r.expires_at_ms,
        shard_id,
    }
}

/// The reply of a stock mutation (SetStock, AdjustStock, Decrement), or its refusal.
pub fn stock_reply(result: OpResult, applied: pb::Applied) -> Result<pb::StockReply, Error> {
    match result.outcome {
        Outcome::Stock { sku, record } => Ok(pb::StockReply {
            record: Some(record_to_pb(&sku, &record)),
            applied: Some(applied),
        }),
        Outcome::Reservation { .. } | Outcome::Cluster(_) => Err(Error::internal(
            "a stock command produced another command's outcome",
        )),
        Outcome::Rejected(r) => Err(r.into()),
    }
}

/// The reply of a reservation mutation (Reserve, Confirm, Release), or its refusal.
pub fn reservation_reply(
    result: OpResult,
    applied: pb::Applied,
) -> Result<pb::ReservationReply, Error> {
    match result.outcome {
        Outcome::Reservation {
            reservation,
            records,
        } => Ok(pb::ReservationReply {
            reservation: Some(reservation_to_pb(&reservation, applied.shard_id)),
            records: records
                .iter()
                .map(|(sku, r)| record_to_pb(sku, r))
                .collect(),
            applied: Some(applied),
        }),
        Outcome::Stock { .. } | Outcome::Cluster(_) => Err(Error::internal(
            "a reservation command produced another command's outcome",
        )),
        Outcome::Rejected(r) => Err(r.into()),
    }
}

/// One operation's result inside a Batch reply.
pub fn batch_result(
    result: OpResult,
    applied: pb::Applied,
) -> Result<pb::operation_result::Result, Error> {
    use pb::operation_result::Result as R;
    match &result.outcome {
        Outcome::Stock { .. } => stock_reply(result, applied).map(R::Stock),
        Outcome::Reservation { .. } => reservation_reply(result, applied).map(R::Reservation),
        Outcome::Rejected(r) => Err(r.clone().into()),
        Outcome::Cluster(_) => Err(Error::internal(
            "a batch operation produced a cluster outcome",
        )),
    }
}
