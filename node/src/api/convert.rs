//! Conversions between domain types and `stockpile.v1` messages, and the decoding
//! (with validation) of incoming operations.

use stockpile_proto::v1 as pb;

use crate::error::Error;
use crate::inventory::validate::{self, Limits};
use crate::inventory::{Command, Item, Op, Reservation, ReservationState, StockRecord};

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

/// An operation decoded from the wire, with the SKU that routes it to its shard.
pub struct Decoded {
    pub op: Op,
    /// Every SKU the operation names (a reservation's items), or its routing SKU.
    pub skus: Vec<String>,
}

fn prefixed(prefix: &str, e: validate::Invalid) -> Error {
    Error::InvalidArgument {
        field: format!("{prefix}{}", e.field),
        rule: e.rule,
    }
}

/// A request id as 32 lowercase hex digits (logs, spans).
pub fn request_id_hex(request_id: &[u8; 16]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(32);
    for b in request_id {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub fn decode_op(op: pb::operation::Op, limits: &Limits, prefix: &str) -> Result<Decoded, Error> {
    let p = |e| prefixed(prefix, e);
    Ok(match op {
        pb::operation::Op::SetStock(r) => {
            let request_id = validate::request_id("request_id", &r.request_id).map_err(p)?;
            validate::sku("sku", &r.sku).map_err(p)?;
            validate::on_hand("on_hand", r.on_hand).map_err(p)?;
            Decoded {
                op: Op {
                    request_id,
                    command: Command::SetStock {
                        sku: r.sku.clone(),
                        on_hand: r.on_hand,
                    },
                },
                skus: vec![r.sku],
            }
        }
        pb::operation::Op::AdjustStock(r) => {
            let request_id = validate::request_id("request_id", &r.request_id).map_err(p)?;
            validate::sku("sku", &r.sku).map_err(p)?;
            validate::delta("delta", r.delta).map_err(p)?;
            Decoded {
                op: Op {
                    request_id,
                    command: Command::AdjustStock {
                        sku: r.sku.clone(),
                        delta: r.delta,
                    },
                },
                skus: vec![r.sku],
            }
        }
        pb::operation::Op::Decrement(r) => {
            let request_id = validate::request_id("request_id", &r.request_id).map_err(p)?;
            validate::sku("sku", &r.sku).map_err(p)?;
            validate::quantity("quantity", r.quantity).map_err(p)?;
            Decoded {
                op: Op {
                    request_id,
                    command: Command::Decrement {
                        sku: r.sku.clone(),
                        qty: r.quantity,
                    },
                },
                skus: vec![r.sku],
            }
        }
        pb::operation::Op::Reserve(r) => {
            let request_id = validate::request_id("request_id", &r.request_id).map_err(p)?;
            let items: Vec<Item> = r
                .items
                .into_iter()
                .map(|i| Item {
                    sku: i.sku,
                    qty: i.quantity,
                })
                .collect();
            validate::items("items", &items, limits).map_err(p)?;
            validate::ttl_ms("ttl_ms", r.ttl_ms, limits).map_err(p)?;
            let reservation_id = if r.reservation_id.is_empty() {
                validate::derived_reservation_id(&request_id)
            } else {
                validate::chosen_reservation_id("reservation_id", &r.reservation_id).map_err(p)?;
                r.reservation_id
            };
            let skus = items.iter().map(|i| i.sku.clone()).collect();
            Decoded {
                op: Op {
                    request_id,
                    command: Command::Reserve {
                        reservation_id,
                        items,
                        ttl_ms: r.ttl_ms,
                    },
                },
                skus,
            }
        }
        pb::operation::Op::Confirm(r) => {
            let request_id = validate::request_id("request_id", &r.request_id).map_err(p)?;
            validate::reservation_id("reservation_id", &r.reservation_id).map_err(p)?;
            validate::sku("sku", &r.sku).map_err(p)?;
            Decoded {
                op: Op {
                    request_id,
                    command: Command::Confirm {
                        reservation_id: r.reservation_id,
                        sku: r.sku.clone(),
                    },
                },
                skus: vec![r.sku],
            }
        }
        pb::operation::Op::Release(r) => {
            let request_id = validate::request_id("request_id", &r.request_id).map_err(p)?;
            validate::reservation_id("reservation_id", &r.reservation_id).map_err(p)?;
            validate::sku("sku", &r.sku).map_err(p)?;
            Decoded {
                op: Op {
                    request_id,
                    command: Command::Release {
                        reservation_id: r.reservation_id,
                        sku: r.sku.clone(),
                    },
                },
                skus: vec![r.sku],
            }
        }
    })
}
