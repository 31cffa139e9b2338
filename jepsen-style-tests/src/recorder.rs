//! The history being recorded during a run: each operation's invocation and
//! completion, and the nemesis's events, in order, with timestamps from the run's
//! start. Shared by the workloads and the nemesis (through an `Arc`).

use std::sync::Mutex;
use std::time::Instant;

use stockpile_client::{RequestId, request_id_hex};

use crate::history::{Kind, Record};

/// The history being recorded: records in order, timestamps from the run's start.
pub struct History {
    start: Instant,
    records: Mutex<Vec<Record>>,
}

#[derive(Default)]
pub struct Invocation(Record);

impl Invocation {
    fn base(f: &str, sku: &str, rid: Option<&RequestId>) -> Record {
        Record {
            f: f.into(),
            sku: Some(sku.into()),
            rid: rid.map(request_id_hex),
            ..Record::default()
        }
    }
    pub fn read(sku: &str) -> Self {
        Invocation(Self::base("read", sku, None))
    }
    pub fn set(sku: &str, on_hand: u64, rid: &RequestId) -> Self {
        Invocation(Record {
            on_hand: Some(on_hand),
            ..Self::base("set", sku, Some(rid))
        })
    }
    pub fn decrement(sku: &str, qty: u64, rid: &RequestId) -> Self {
        Invocation(Record {
            qty: Some(qty),
            ..Self::base("decrement", sku, Some(rid))
        })
    }
    pub fn adjust(sku: &str, delta: i64, rid: &RequestId) -> Self {
        Invocation(Record {
            delta: Some(delta),
            ..Self::base("adjust", sku, Some(rid))
        })
    }
    pub fn reserve(sku: &str, res: &str, qty: u64, ttl_ms: u64, rid: &RequestId) -> Self {
        Invocation(Record {
            qty: Some(qty),
            ttl_ms: Some(ttl_ms),
            reservation: Some(res.into()),
            ..Self::base("reserve", sku, Some(rid))
        })
    }
    pub fn close(confirm: bool, sku: &str, res: &str, rid: &RequestId) -> Self {
        Invocation(Record {
            reservation: Some(res.into()),
            ..Self::base(if confirm { "confirm" } else { "release" }, sku, Some(rid))
        })
    }
    pub fn read_reservation(sku: &str, res: &str) -> Self {
        Invocation(Record {
            reservation: Some(res.into()),
            ..Self::base("read-reservation", sku, None)
        })
    }
}

pub struct Completion(Record);

impl Completion {
    pub fn ok_stock(found: bool, on_hand: u64, reserved: u64, node: Option<u64>) -> Self {
        Completion(Record {
            kind: Some(Kind::Ok),
            found: Some(found),
            on_hand: Some(on_hand),
            reserved: Some(reserved),
            node,
            ..Record::default()
        })
    }
    pub fn ok_state(state: &str) -> Self {
        Completion(Record {
            kind: Some(Kind::Ok),
            state: Some(state.into()),
            ..Record::default()
        })
    }
    pub fn fail(reason: &str, available: Option<u64>) -> Self {
        Completion(Record {
            kind: Some(Kind::Fail),
            error: Some(reason.into()),
            available,
            ..Record::default()
        })
    }
    pub fn info(reason: &str) -> Self {
        Completion(Record {
            kind: Some(Kind::Info),
            error: Some(reason.into()),
            ..Record::default()
        })
    }
}

impl History {
    pub fn new() -> Self {
        History {
            start: Instant::now(),
            records: Mutex::new(Vec::new()),
        }
    }

    pub fn elapsed_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn push(&self, mut r: Record) -> usize {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        r.time_ns = self.elapsed_ns();
        r.index = records.len() as u64;
        records.push(r);
        records.len() - 1
    }

    /// Records an invocation; returns its handle.
    pub fn invoke(&self, process: u64, inv: Invocation) -> usize {
        self.push(Record {
            kind: Some(Kind::Invoke),
            process: Some(process),
            ..inv.0
        })
    }

    /// Records the completion of invocation `h`; true when the outcome is unknown (the
    /// process must not be reused).
    pub fn complete(&self, h: usize, process: u64, c: Completion) -> bool {
        let inv = self.records.lock().unwrap_or_else(|p| p.into_inner())[h].clone();
        let info = c.0.kind == Some(Kind::Info);
        self.push(Record {
            process: Some(process),
            f: inv.f,
            sku: inv.sku,
            rid: inv.rid,
            reservation: inv.reservation,
            ..c.0
        });
        info
    }

    pub fn nemesis(&self, f: &str, detail: &str) {
        self.push(Record {
            kind: Some(Kind::Nemesis),
            f: f.into(),
            detail: Some(detail.into()),
            ..Record::default()
        });
    }

    pub fn note(&self, detail: &str) {
        self.nemesis("note", detail);
    }

    pub fn records(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}
