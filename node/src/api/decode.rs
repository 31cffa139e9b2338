//! Every request's validation, reads included, in one place: a wire message becomes
//! a typed request (a mutation's `Op` with the SKUs that route it, or a read) or
//! `INVALID_ARGUMENT` naming the field and the rule. The rules themselves are
//! `inventory::validate`'s; this module applies them to each message's fields.

use stockpile_proto::v1 as pb;

use super::page_token::{self, Position};
use crate::error::Error;
use crate::inventory::validate::{self, Invalid, Limits};
use crate::inventory::{Command, Item, Op, RequestId};

/// A mutation decoded from the wire, with every SKU it names (a reservation's items,
/// or the SKU that routes it).
#[derive(Debug)]
pub struct Mutation {
    pub op: Op,
    pub skus: Vec<String>,
}

/// How a read is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Confirmed by the leader (read index or lease).
    Linearizable,
    /// Any replica, as far as it has applied.
    Stale,
}

pub struct GetRead {
    pub skus: Vec<String>,
    pub consistency: Consistency,
}

pub struct ListRead {
    pub from: Option<Position>,
    pub limit: usize,
    pub consistency: Consistency,
}

pub struct ReservationRead {
    pub reservation_id: String,
    pub sku: String,
    pub consistency: Consistency,
}

/// Field names inside a batch carry the operation's place: `ops[3].sku`.
fn at(prefix: &str) -> impl Fn(Invalid) -> Error + '_ {
    move |e| Error::InvalidArgument {
        field: format!("{prefix}{}", e.field),
        rule: e.rule,
    }
}

fn mutation(request_id: RequestId, command: Command, skus: Vec<String>) -> Mutation {
    Mutation {
        op: Op {
            request_id,
            command,
        },
        skus,
    }
}

pub fn set_stock(r: pb::SetStockRequest, prefix: &str) -> Result<Mutation, Error> {
    let request_id = validate::request_id("request_id", &r.request_id).map_err(at(prefix))?;
    validate::sku("sku", &r.sku).map_err(at(prefix))?;
    validate::on_hand("on_hand", r.on_hand).map_err(at(prefix))?;
    let command = Command::SetStock {
        sku: r.sku.clone(),
        on_hand: r.on_hand,
        expected_version: r.expected_version,
    };
    Ok(mutation(request_id, command, vec![r.sku]))
}

pub fn adjust_stock(r: pb::AdjustStockRequest, prefix: &str) -> Result<Mutation, Error> {
    let request_id = validate::request_id("request_id", &r.request_id).map_err(at(prefix))?;
    validate::sku("sku", &r.sku).map_err(at(prefix))?;
    validate::delta("delta", r.delta).map_err(at(prefix))?;
    let command = Command::AdjustStock {
        sku: r.sku.clone(),
        delta: r.delta,
        expected_version: r.expected_version,
    };
    Ok(mutation(request_id, command, vec![r.sku]))
}

pub fn decrement(r: pb::DecrementRequest, prefix: &str) -> Result<Mutation, Error> {
    let request_id = validate::request_id("request_id", &r.request_id).map_err(at(prefix))?;
    validate::sku("sku", &r.sku).map_err(at(prefix))?;
    validate::quantity("quantity", r.quantity).map_err(at(prefix))?;
    let command = Command::Decrement {
        sku: r.sku.clone(),
        qty: r.quantity,
    };
    Ok(mutation(request_id, command, vec![r.sku]))
}

pub fn reserve(r: pb::ReserveRequest, limits: &Limits, prefix: &str) -> Result<Mutation, Error> {
    let request_id = validate::request_id("request_id", &r.request_id).map_err(at(prefix))?;
    let items: Vec<Item> = r
        .items
        .into_iter()
        .map(|i| Item {
            sku: i.sku,
            qty: i.quantity,
        })
        .collect();
    validate::items("items", &items, limits).map_err(at(prefix))?;
    validate::ttl_ms("ttl_ms", r.ttl_ms, limits).map_err(at(prefix))?;
    let reservation_id = if r.reservation_id.is_empty() {
        validate::derived_reservation_id(&request_id)
    } else {
        validate::chosen_reservation_id("reservation_id", &r.reservation_id).map_err(at(prefix))?;
        r.reservation_id
    };
    let skus = items.iter().map(|i| i.sku.clone()).collect();
    let command = Command::Reserve {
        reservation_id,
        items,
        ttl_ms: r.ttl_ms,
    };
    Ok(mutation(request_id, command, skus))
}

/// `Confirm` (`confirm`) or `Release`: a reservation id and the SKU that routes it.
fn close(raw: (Vec<u8>, String, String), confirm: bool, prefix: &str) -> Result<Mutation, Error> {
    let (raw_request_id, reservation_id, sku) = raw;
    let request_id = validate::request_id("request_id", &raw_request_id).map_err(at(prefix))?;
    validate::reservation_id("reservation_id", &reservation_id).map_err(at(prefix))?;
    validate::sku("sku", &sku).map_err(at(prefix))?;
    let command = if confirm {
        Command::Confirm {
            reservation_id,
            sku: sku.clone(),
        }
    } else {
        Command::Release {
            reservation_id,
            sku: sku.clone(),
        }
    };
    Ok(mutation(request_id, command, vec![sku]))
}

pub fn confirm(r: pb::ConfirmRequest, prefix: &str) -> Result<Mutation, Error> {
    close((r.request_id, r.reservation_id, r.sku), true, prefix)
}

pub fn release(r: pb::ReleaseRequest, prefix: &str) -> Result<Mutation, Error> {
    close((r.request_id, r.reservation_id, r.sku), false, prefix)
}

/// One operation of any kind (a Batch's).
pub fn op(op: pb::operation::Op, limits: &Limits, prefix: &str) -> Result<Mutation, Error> {
    use pb::operation::Op as W;
    match op {
        W::SetStock(r) => set_stock(r, prefix),
        W::AdjustStock(r) => adjust_stock(r, prefix),
        W::Decrement(r) => decrement(r, prefix),
        W::Reserve(r) => reserve(r, limits, prefix),
        W::Confirm(r) => confirm(r, prefix),
        W::Release(r) => release(r, prefix),
    }
}

/// A Batch: its size checked, then each operation on its own (one may be refused
/// while the others go on, unless the batch is all-or-nothing: the caller decides).
pub fn batch(
    req: pb::BatchRequest,
    limits: &Limits,
) -> Result<Vec<Result<Mutation, Error>>, Error> {
    let max = limits.batch_ops_max;
    if req.ops.is_empty() || req.ops.len() > max {
        return Err(Error::InvalidArgument {
            field: "ops".into(),
            rule: format!("must hold 1..={max} operations, got {}", req.ops.len()),
        });
    }
    Ok(req
        .ops
        .into_iter()
        .enumerate()
        .map(|(i, o)| match o.op {
            Some(w) => op(w, limits, &format!("ops[{i}].")),
            None => Err(Error::InvalidArgument {
                field: format!("ops[{i}]"),
                rule: "names no operation".into(),
            }),
        })
        .collect())
}

pub fn consistency(value: i32) -> Result<Consistency, Error> {
    match pb::Consistency::try_from(value) {
        Ok(pb::Consistency::Linearizable) => Ok(Consistency::Linearizable),
        Ok(pb::Consistency::Stale) => Ok(Consistency::Stale),
        Err(_) => Err(Error::InvalidArgument {
            field: "consistency".into(),
            rule: format!("unknown value {value}"),
        }),
    }
}

pub fn get(req: pb::GetRequest, limits: &Limits) -> Result<GetRead, Error> {
    if req.skus.is_empty() || req.skus.len() > limits.get_skus_max {
        return Err(Error::InvalidArgument {
            field: "skus".into(),
            rule: format!(
                "must name 1..={} SKUs, got {}",
                limits.get_skus_max,
                req.skus.len()
            ),
        });
    }
    for (i, sku) in req.skus.iter().enumerate() {
        validate::sku(&format!("skus[{i}]"), sku)?;
    }
    Ok(GetRead {
        consistency: consistency(req.consistency)?,
        skus: req.skus,
    })
}

pub fn list(req: pb::ListRequest, limits: &Limits) -> Result<ListRead, Error> {
    let max = limits.list_limit_max;
    let limit = match req.limit {
        0 => 100.min(max),
        n if n <= max => n,
        n => {
            return Err(Error::InvalidArgument {
                field: "limit".into(),
                rule: format!("{n} exceeds the page size limit {max}"),
            });
        }
    };
    let from = if !req.page_token.is_empty() {
        Some(page_token::decode(&req.page_token)?)
    } else if !req.start_after.is_empty() {
        validate::sku("start_after", &req.start_after)?;
        Some(Position::After(req.start_after))
    } else {
        None
    };
    Ok(ListRead {
        from,
        limit: limit as usize,
        consistency: consistency(req.consistency)?,
    })
}

pub fn get_reservation(req: pb::GetReservationRequest) -> Result<ReservationRead, Error> {
    validate::reservation_id("reservation_id", &req.reservation_id)?;
    validate::sku("sku", &req.sku)?;
    Ok(ReservationRead {
        consistency: consistency(req.consistency)?,
        reservation_id: req.reservation_id,
        sku: req.sku,
    })
}

/// A request id as 32 lowercase hex digits (logs, spans).
pub fn request_id_hex(request_id: &RequestId) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(32);
    for b in request_id {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_validated_here_too() {
        let limits = Limits::default();
        let e = get(
            pb::GetRequest {
                skus: vec!["ok".into(), " bad".into()],
                consistency: 0,
            },
            &limits,
        )
        .err()
        .unwrap();
        assert!(matches!(e, Error::InvalidArgument { ref field, .. } if field == "skus[1]"));
        let e = list(
            pb::ListRequest {
                limit: limits.list_limit_max + 1,
                ..Default::default()
            },
            &limits,
        )
        .err()
        .unwrap();
        assert!(matches!(e, Error::InvalidArgument { ref field, .. } if field == "limit"));
        let e = consistency(7).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { ref field, .. } if field == "consistency"));
    }

    #[test]
    fn batch_operations_name_their_place() {
        let req = pb::BatchRequest {
            ops: vec![
                pb::Operation { op: None },
                pb::Operation {
                    op: Some(pb::operation::Op::Decrement(pb::DecrementRequest {
                        request_id: vec![1; 16],
                        sku: String::new(),
                        quantity: 1,
                    })),
                },
            ],
            atomic: false,
        };
        let decoded = batch(req, &Limits::default()).unwrap();
        let fields: Vec<String> = decoded
            .into_iter()
            .map(|r| match r {
                Err(Error::InvalidArgument { field, .. }) => field,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(fields, ["ops[0]", "ops[1].sku"]);
    }
}
