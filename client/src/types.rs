//! What the client returns: stock records, reservations, and where a mutation was
//! applied. Plain structs, independent of the wire types.

use serde::Serialize;
use stockpile_proto::v1 as pb;

/// A client-generated 128-bit id carried by every mutation.
pub type RequestId = [u8; 16];

/// A fresh random request id (never all zeros).
pub fn new_request_id() -> RequestId {
    loop {
        let id: RequestId = rand::random();
        if id != [0u8; 16] {
            return id;
        }
    }
}

pub fn request_id_hex(id: &RequestId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 32 hex digits into a request id.
pub fn parse_request_id(hex: &str) -> Option<RequestId> {
    if hex.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stock {
    pub sku: String,
    pub on_hand: u64,
    pub reserved: u64,
    pub available: u64,
    pub version: u64,
}

impl From<pb::StockRecord> for Stock {
    fn from(r: pb::StockRecord) -> Self {
        Stock {
            sku: r.sku,
            on_hand: r.on_hand,
            reserved: r.reserved,
            available: r.available,
            version: r.version,
        }
    }
}

/// Where a mutation was applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub shard_id: u64,
    /// The node that answered (the shard's leader).
    pub node_id: u64,
    /// The log entry that carried the request (for a replay: the retry's entry).
    pub log_index: u64,
    /// True when the store answered with the stored outcome of an earlier attempt.
    pub replayed: bool,
}

impl From<Option<pb::Applied>> for Applied {
    fn from(a: Option<pb::Applied>) -> Self {
        a.map(|a| Applied {
            shard_id: a.shard_id,
            node_id: a.node_id,
            log_index: a.log_index,
            replayed: a.replayed,
        })
        .unwrap_or_default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StockUpdate {
    pub stock: Stock,
    pub applied: Applied,
    #[serde(serialize_with = "ser_hex")]
    pub request_id: RequestId,
}

fn ser_hex<S: serde::Serializer>(id: &RequestId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&request_id_hex(id))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationState {
    Active,
    Confirmed,
    Released,
    Expired,
    Unknown,
}

impl ReservationState {
    pub(crate) fn from_pb(s: pb::ReservationState) -> Self {
        match s {
            pb::ReservationState::Active => ReservationState::Active,
            pb::ReservationState::Confirmed => ReservationState::Confirmed,
            pb::ReservationState::Released => ReservationState::Released,
            pb::ReservationState::Expired => ReservationState::Expired,
            pb::ReservationState::Unspecified => ReservationState::Unknown,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Item {
    pub sku: String,
    pub quantity: u64,
}

impl Item {
    pub fn new(sku: impl Into<String>, quantity: u64) -> Self {
        Item {
            sku: sku.into(),
            quantity,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reservation {
    pub reservation_id: String,
    pub items: Vec<Item>,
    pub state: ReservationState,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub shard_id: u64,
}

impl From<pb::Reservation> for Reservation {
    fn from(r: pb::Reservation) -> Self {
        Reservation {
            state: ReservationState::from_pb(r.state()),
            reservation_id: r.reservation_id,
            items: r
                .items
                .into_iter()
                .map(|i| Item {
                    sku: i.sku,
                    quantity: i.quantity,
                })
                .collect(),
            created_at_ms: r.created_at_ms,
            expires_at_ms: r.expires_at_ms,
            shard_id: r.shard_id,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReservationUpdate {
    pub reservation: Reservation,
    /// The stock records of the items after the command.
    pub stock: Vec<Stock>,
    pub applied: Applied,
    #[serde(serialize_with = "ser_hex")]
    pub request_id: RequestId,
}

/// Read consistency.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Sees every acknowledged write (the shard leader confirms its leadership).
    #[default]
    Linearizable,
    /// Any replica answers from its own state, possibly behind; prefers the client's region.
    Stale,
}

impl Consistency {
    pub(crate) fn to_pb(self) -> i32 {
        match self {
            Consistency::Linearizable => pb::Consistency::Linearizable as i32,
            Consistency::Stale => pb::Consistency::Stale as i32,
        }
    }
}

/// One SKU's read result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Read {
    pub sku: String,
    /// None when the SKU was never set.
    pub stock: Option<Stock>,
    pub shard_id: u64,
    /// The node that answered and how far it had applied the shard's log.
    pub node_id: u64,
    pub applied_index: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_round_trip_as_hex() {
        let id = new_request_id();
        assert_eq!(parse_request_id(&request_id_hex(&id)), Some(id));
        assert_eq!(parse_request_id("xyz"), None);
        assert_eq!(parse_request_id(&"g".repeat(32)), None);
    }
}
