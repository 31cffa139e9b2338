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

/// A request id as 32 lowercase hex digits.
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

/// A SKU's stock record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stock {
    /// The SKU concerned.
    pub sku: String,
    /// Units in stock, held ones included.
    pub on_hand: u64,
    /// Units held by active reservations.
    pub reserved: u64,
    /// Units that may still be sold or held (`on_hand - reserved`).
    pub available: u64,
    /// Grows by one on every change of the record.
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
    /// The shard it lives in.
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

/// The result of a stock mutation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StockUpdate {
    /// The stock record after the mutation.
    pub stock: Stock,
    /// Where the mutation was applied.
    pub applied: Applied,
    /// The request id the mutation was sent with: retry with it.
    #[serde(serialize_with = "ser_hex")]
    pub request_id: RequestId,
}

fn ser_hex<S: serde::Serializer>(id: &RequestId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&request_id_hex(id))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
/// Where a reservation is in its life.
pub enum ReservationState {
    /// Holding stock.
    Active,
    /// Turned into a sale.
    Confirmed,
    /// Given back by a release.
    Released,
    /// Given back because its TTL passed.
    Expired,
    /// A state this client version does not know.
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

/// A SKU and a quantity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Item {
    /// The SKU concerned.
    pub sku: String,
    /// Units.
    pub quantity: u64,
}

impl Item {
    /// `quantity` units of `sku`.
    pub fn new(sku: impl Into<String>, quantity: u64) -> Self {
        Item {
            sku: sku.into(),
            quantity,
        }
    }
}

/// A hold on stock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reservation {
    /// The reservation id.
    pub reservation_id: String,
    /// The items (SKU and quantity).
    pub items: Vec<Item>,
    /// The reservation state.
    pub state: ReservationState,
    /// When it was made (shard clock, ms since the Unix epoch).
    pub created_at_ms: u64,
    /// When it expires unless confirmed or released (shard clock, ms since the Unix epoch).
    pub expires_at_ms: u64,
    /// The shard it lives in.
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

/// The result of a reservation mutation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReservationUpdate {
    /// The reservation after the command.
    pub reservation: Reservation,
    /// The stock records of the items after the command.
    pub stock: Vec<Stock>,
    /// Where the mutation was applied.
    pub applied: Applied,
    /// The request id the mutation was sent with: retry with it.
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
    /// The SKU concerned.
    pub sku: String,
    /// None when the SKU was never set.
    pub stock: Option<Stock>,
    /// The shard it lives in.
    pub shard_id: u64,
    /// The node that answered and how far it had applied the shard's log.
    pub node_id: u64,
    /// How far the answering replica had applied the shard's log.
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

/// A reservation across shards, made by `Client::reserve_cart`: one reservation per
/// shard, each named `{cart_id}.{shard_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cart {
    /// The cart id; its parts are named `{cart_id}.{shard_id}`.
    pub cart_id: String,
    /// One reservation per shard.
    pub parts: Vec<CartPart>,
    /// The earliest expiry of its parts.
    pub expires_at_ms: u64,
}

/// One shard's part of a cart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CartPart {
    /// The shard it lives in.
    pub shard_id: u64,
    /// The reservation id.
    pub reservation_id: String,
    /// A SKU of the part, to route to its shard.
    pub sku: String,
    /// The items (SKU and quantity).
    pub items: Vec<Item>,
}

/// One replica's view of a shard's state machine, for convergence and exactly-once audits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ShardDigest {
    /// The shard.
    pub shard_id: u64,
    /// The last log index the replica applied.
    pub applied_index: u64,
    /// A digest of the whole state machine: replicas at the same index must agree.
    pub digest: u64,
    /// Request-id outcomes the shard stores: one per request id executed (within
    /// retention), so never more than the distinct request ids sent to the shard.
    pub outcomes_count: u64,
}
