//! The inventory's domain types: what a shard stores and what its log carries.
//!
//! These are encoded with `storage::codec` into RocksDB and into Raft log entries, so
//! changing a field is a format change: bump `codec::FORMAT_VERSION` and migrate.

use serde::{Deserialize, Serialize};

use super::cluster::{ClusterCommand, ClusterOutcome};

/// A client-generated 128-bit id carried by every mutation (DESIGN.md: request id).
pub type RequestId = [u8; 16];

/// Per-SKU stock (DESIGN.md: stock record). `available = on_hand - reserved`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockRecord {
    pub on_hand: u64,
    pub reserved: u64,
    /// Grows by one on every change, so readers can tell two states apart.
    pub version: u64,
}

impl StockRecord {
    /// Stock that may still be sold or held. `on_hand >= reserved` is an invariant of
    /// every stored record; saturating keeps a corrupted record from panicking a reader.
    pub fn available(&self) -> u64 {
        self.on_hand.saturating_sub(self.reserved)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub sku: String,
    pub qty: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReservationState {
    Active,
    Confirmed,
    Released,
    Expired,
}

impl ReservationState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ReservationState::Active => "active",
            ReservationState::Confirmed => "confirmed",
            ReservationState::Released => "released",
            ReservationState::Expired => "expired",
        }
    }
}

/// A hold on stock (DESIGN.md: reservation). Kept after it closes, for
/// `GetReservation` and retries, until `closed_at_ms + retention_ms` on the shard clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: String,
    pub items: Vec<Item>,
    pub state: ReservationState,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    /// When it left `Active` (0 while active).
    pub closed_at_ms: u64,
    /// Where it is filed in the shard's timer index: `expires_at_ms` while active, then
    /// `closed_at_ms + retention_ms` (when it is forgotten). Stored because retention may
    /// change between entries and the old index key must be found again.
    pub timer_ms: u64,
}

/// One mutation as the state machine sees it (already validated by the API layer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `expected_version`: applied only if the record is at that version (0: no
    /// record yet), else `VersionMismatch` (HTTP's If-Match).
    SetStock {
        sku: String,
        on_hand: u64,
        expected_version: Option<u64>,
    },
    AdjustStock {
        sku: String,
        delta: i64,
        expected_version: Option<u64>,
    },
    Decrement {
        sku: String,
        qty: u64,
    },
    Reserve {
        reservation_id: String,
        items: Vec<Item>,
        ttl_ms: u64,
    },
    /// `sku` is the SKU the request was routed by; it must be an item of the
    /// reservation, so that a confirm sent to the wrong shard cannot find a
    /// same-named reservation there.
    Confirm {
        reservation_id: String,
        sku: String,
    },
    Release {
        reservation_id: String,
        sku: String,
    },
    /// A change of the cluster map; only the meta shard applies these (and it applies
    /// nothing else). Last, so the encodings of the variants above did not change.
    Cluster(ClusterCommand),
    /// Splits the shard at `at` (the child's first SKU) into itself and `child_id`
    /// (allocated in the cluster map), if its bounds are still at `expected_version`.
    /// Applied by the state machine itself (`storage::state_machine::split`), alone in
    /// its entry; never by `inventory::apply`. Last, like `Cluster`.
    Split {
        at: String,
        child_id: u64,
        expected_version: u64,
    },
    /// Freezes the shard for a merge into its left neighbour, if its bounds are still
    /// at `expected_version`: from this entry on the shard applies nothing (every
    /// operation is answered SHARD_MOVED), so the state a merge copies is final.
    /// Applied by the state machine itself, alone in its entry. Last, like `Split`.
    Freeze {
        expected_version: u64,
    },
    /// Takes the frozen right neighbour's whole state (`source`) into this shard,
    /// which grows to the neighbour's end, if this shard is still at
    /// `expected_version` and ends where the neighbour starts. Applied by the state
    /// machine itself, alone in its entry. Last, like `Split`.
    Merge {
        source: MergeSource,
        expected_version: u64,
    },
}

/// A frozen shard's state as a merge carries it in its neighbour's log: every
/// replica of the neighbour applies the same bytes, whether or not it holds a
/// replica of the frozen shard, and whatever that replica's progress.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeSource {
    pub shard_id: u64,
    pub start: String,
    pub end: String,
    /// The frozen shard's epoch version (the freeze grew it).
    pub version: u64,
    /// Its shard clock at the freeze (the merged shard's clock is the later one).
    pub clock_ms: u64,
    /// Its state machine's data records, keys without the shard prefix (the
    /// sub-space byte first): stock, reservations, timers, outcomes, outcome ages.
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for MergeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The records may be megabytes: a log line names their count only.
        f.debug_struct("MergeSource")
            .field("shard_id", &self.shard_id)
            .field("start", &self.start)
            .field("end", &self.end)
            .field("version", &self.version)
            .field("records", &self.records.len())
            .finish()
    }
}

impl MergeSource {
    /// The bytes its records take (keys and values).
    pub fn records_bytes(&self) -> usize {
        self.records.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

impl Command {
    /// Every SKU the command names: the one it changes, a reservation's items, or the
    /// SKU a confirm or release is routed by.
    pub fn skus(&self) -> impl Iterator<Item = &str> {
        let (one, items) = match self {
            Command::SetStock { sku, .. }
            | Command::AdjustStock { sku, .. }
            | Command::Decrement { sku, .. }
            | Command::Confirm { sku, .. }
            | Command::Release { sku, .. } => (Some(sku.as_str()), &[][..]),
            Command::Reserve { items, .. } => (None, items.as_slice()),
            Command::Cluster(_)
            | Command::Split { .. }
            | Command::Freeze { .. }
            | Command::Merge { .. } => (None, &[][..]),
        };
        one.into_iter().chain(items.iter().map(|i| i.sku.as_str()))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Command::SetStock { .. } => "set_stock",
            Command::AdjustStock { .. } => "adjust_stock",
            Command::Decrement { .. } => "decrement",
            Command::Reserve { .. } => "reserve",
            Command::Confirm { .. } => "confirm",
            Command::Release { .. } => "release",
            Command::Cluster(c) => c.name(),
            Command::Split { .. } => "split",
            Command::Freeze { .. } => "freeze",
            Command::Merge { .. } => "merge",
        }
    }
}

impl Command {
    /// A stable 128-bit fingerprint, stored with the command's outcome so that a
    /// request id reused for a different command is recognised: xxh3 of the command's
    /// bincode standard encoding (the codec's encoding without its version byte). Both
    /// are fixed formats, so every replica and every build computes the same value;
    /// changing `Command` changes fingerprints and is a format change.
    pub fn fingerprint(&self) -> u128 {
        let mut buf = Vec::with_capacity(64);
        // Encoding strings and integers into a Vec cannot fail.
        let encoded =
            bincode::serde::encode_into_std_write(self, &mut buf, bincode::config::standard());
        debug_assert!(encoded.is_ok());
        xxhash_rust::xxh3::xxh3_128(&buf)
    }
}

/// A command with the request id that makes it idempotent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub request_id: RequestId,
    pub command: Command,
}

/// Operations applied together: independently, or all-or-nothing when `atomic`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpGroup {
    pub atomic: bool,
    pub ops: Vec<Op>,
}

/// How long a shard keeps what it must remember; part of every log entry so that
/// pruning depends only on the log and is identical on every replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Stored outcomes and closed reservations older than this are pruned.
    pub retention_ms: u64,
    /// At most this many stored outcomes per shard; the oldest go first, those of one
    /// millisecond of the shard clock together.
    pub outcomes_max: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            retention_ms: 3_600_000,
            outcomes_max: 1_000_000,
        }
    }
}

/// The application data of one Raft log entry of a shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRequest {
    /// The proposing leader's wall clock; the shard clock is `max(previous, now_ms)`.
    pub now_ms: u64,
    pub retention: Retention,
    /// Empty for a tick: an entry proposed only to move the clock and expire holds.
    pub groups: Vec<OpGroup>,
}

/// Why a command was refused. Every refusal leaves the shard's stock unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    SkuNotFound {
        sku: String,
    },
    InsufficientStock {
        sku: String,
        available: u64,
    },
    ReservationNotFound {
        reservation_id: String,
    },
    ReservationExpired {
        reservation_id: String,
    },
    ReservationNotActive {
        reservation_id: String,
        state: ReservationState,
    },
    /// `Reserve` with an id that another request already used.
    ReservationIdTaken {
        reservation_id: String,
    },
    /// `Confirm`/`Release` routed by a SKU that is not an item of the reservation.
    SkuNotInReservation {
        reservation_id: String,
        sku: String,
    },
    /// The result would not fit the quantity range.
    QuantityOverflow {
        sku: String,
    },
    /// The request id was stored with a different command.
    RequestIdReused,
    /// Not applied because another operation of the same atomic group was refused.
    Aborted {
        failed_op: u32,
    },
    /// A conditional set or adjust found the record at another version (0: absent).
    VersionMismatch {
        sku: String,
        expected: u64,
        actual: u64,
    },
    /// The SKU left the shard by a split applied before this operation: nothing was
    /// applied and nothing stored, so the retry at the SKU's new shard applies it.
    /// Last, so the encodings above did not change.
    ShardMoved {
        sku: String,
    },
}

/// What a command did; stored per request id and returned again to retries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Stock {
        sku: String,
        record: StockRecord,
    },
    Reservation {
        reservation: Reservation,
        records: Vec<(String, StockRecord)>,
    },
    Rejected(Rejection),
    /// A cluster command's outcome (meta shard). Last, like `Command::Cluster`.
    Cluster(ClusterOutcome),
}

/// One operation's result as returned to the proposer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpResult {
    pub outcome: Outcome,
    /// True when `outcome` is the stored result of an earlier identical request.
    pub replayed: bool,
}

/// The application response of one log entry: one result list per group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardResponse {
    pub groups: Vec<Vec<OpResult>>,
}

/// An outcome as remembered for idempotency (DESIGN.md storage key 0x03).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOutcome {
    /// xxh3-128 of the encoded command: a retry must carry the same command.
    pub fingerprint: u128,
    pub applied_at_ms: u64,
    pub outcome: Outcome,
}

/// Upper bounds of encoded sizes, for byte limits that must hold before encoding
/// (entry sizes in the proposer, AppendEntries payloads in the network). bincode's
/// varints take at most 9 bytes; a string or list costs its prefix plus its contents.
const VARINT_BYTES_MAX: usize = 9;

fn str_bytes_max(s: &str) -> usize {
    VARINT_BYTES_MAX + s.len()
}

impl Command {
    /// At least the bytes this command takes in a log entry.
    pub fn encoded_bytes_max(&self) -> usize {
        VARINT_BYTES_MAX
            + match self {
                Command::SetStock { sku, .. }
                | Command::AdjustStock { sku, .. }
                | Command::Decrement { sku, .. } => str_bytes_max(sku) + VARINT_BYTES_MAX,
                Command::Reserve {
                    reservation_id,
                    items,
                    ..
                } => {
                    str_bytes_max(reservation_id)
                        + 2 * VARINT_BYTES_MAX
                        + items
                            .iter()
                            .map(|i| str_bytes_max(&i.sku) + VARINT_BYTES_MAX)
                            .sum::<usize>()
                }
                Command::Split { at, .. } => str_bytes_max(at) + 2 * VARINT_BYTES_MAX,
                Command::Freeze { .. } => VARINT_BYTES_MAX,
                Command::Merge { source, .. } => {
                    str_bytes_max(&source.start)
                        + str_bytes_max(&source.end)
                        + 5 * VARINT_BYTES_MAX
                        + source.records_bytes()
                        + 2 * VARINT_BYTES_MAX * source.records.len()
                }
                Command::Cluster(c) => {
                    // Rare and small: measured exactly (bincode's standard encoding,
                    // as the codec writes it).
                    let mut buf = Vec::new();
                    let encoded = bincode::serde::encode_into_std_write(
                        c,
                        &mut buf,
                        bincode::config::standard(),
                    );
                    debug_assert!(encoded.is_ok());
                    buf.len()
                }
                Command::Confirm {
                    reservation_id,
                    sku,
                }
                | Command::Release {
                    reservation_id,
                    sku,
                } => str_bytes_max(reservation_id) + str_bytes_max(sku),
            }
    }
}

impl OpGroup {
    /// At least the bytes this group takes in a log entry.
    pub fn encoded_bytes_max(&self) -> usize {
        1 + VARINT_BYTES_MAX
            + self
                .ops
                .iter()
                .map(|op| op.request_id.len() + op.command.encoded_bytes_max())
                .sum::<usize>()
    }
}

impl ShardRequest {
    /// At least the bytes this request takes in a log entry.
    pub fn encoded_bytes_max(&self) -> usize {
        4 * VARINT_BYTES_MAX
            + self
                .groups
                .iter()
                .map(OpGroup::encoded_bytes_max)
                .sum::<usize>()
    }
}

impl std::fmt::Display for ShardRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ops: usize = self.groups.iter().map(|g| g.ops.len()).sum();
        write!(
            f,
            "ShardRequest(now_ms={}, groups={}, ops={})",
            self.now_ms,
            self.groups.len(),
            ops
        )
    }
}

impl std::fmt::Display for ShardResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ops: usize = self.groups.iter().map(|g| g.len()).sum();
        write!(
            f,
            "ShardResponse(groups={}, ops={})",
            self.groups.len(),
            ops
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_differ_by_command() {
        let a = Command::Decrement {
            sku: "a".into(),
            qty: 1,
        };
        let b = Command::Decrement {
            sku: "a".into(),
            qty: 2,
        };
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
