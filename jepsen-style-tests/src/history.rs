//! Histories: every operation as JSON lines — an `invoke`, then `ok` (it happened),
//! `fail` (it certainly did not happen) or `info` (unknown) — plus nemesis events, with
//! monotonic timestamps in ns since the run started.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
    Nemesis,
}

/// One line of a history.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub index: u64,
    #[serde(rename = "type")]
    pub kind: Option<Kind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<u64>,
    /// The operation (`read`, `decrement`, `adjust`, `set`, `reserve`, `confirm`,
    /// `release`, `read-reservation`) or the nemesis action.
    pub f: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qty: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// The request id (hex), for mutations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rid: Option<String>,
    /// Results: stock after the op, or what a read saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_hand: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved: Option<u64>,
    /// A reservation's state as read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The error reason of a `fail` or `info`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available: Option<u64>,
    /// The node that answered, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
    pub time_ns: u64,
    /// Nemesis: what was actually done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What an operation asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    Set {
        on_hand: u64,
    },
    Read,
    Decrement {
        qty: u64,
    },
    Adjust {
        delta: i64,
    },
    Reserve {
        res: String,
        qty: u64,
        ttl_ms: u64,
    },
    Confirm {
        res: String,
    },
    Release {
        res: String,
    },
    ReadReservation {
        res: String,
    },
    /// Not a client call: a reservation's expiry, which may happen at any time after
    /// its deadline, or never (added by the checker).
    Expire {
        res: String,
    },
}

/// What an operation returned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It happened; the stock record after it (or what a read saw).
    Stock {
        found: bool,
        on_hand: u64,
        reserved: u64,
    },
    /// A reservation read: its state.
    ReservationState(String),
    /// It did not happen, and the reason says something about the state
    /// (INSUFFICIENT_STOCK with the available quantity, SKU_NOT_FOUND, ...).
    Refused {
        reason: String,
        available: Option<u64>,
    },
    /// Unknown: it may have happened at any time after its invocation, or never.
    Unknown,
}

/// An invocation paired with its completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub id: usize,
    pub process: u64,
    pub sku: String,
    pub rid: Option<String>,
    pub call: Call,
    pub outcome: Outcome,
    pub call_ns: u64,
    /// `u64::MAX` for unknown outcomes (and expiries): they may take effect any time later.
    pub ret_ns: u64,
    /// Index of the invocation line in the history.
    pub invoke_index: u64,
}

impl Op {
    /// True when the op must be linearized (it completed definitely).
    pub fn required(&self) -> bool {
        !matches!(self.outcome, Outcome::Unknown)
    }
}

/// Errors that say the operation never reached the state machine and carry no
/// observation: such ops are dropped from the check.
pub fn reason_is_no_observation(reason: &str) -> bool {
    matches!(
        reason,
        "UNAVAILABLE"
            | "RATE_LIMITED"
            | "NOT_LEADER"
            | "SHARD_UNAVAILABLE"
            | "CONFIG"
            | "CROSS_SHARD"
    )
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history line {line}: {message}")]
    Bad { line: usize, message: String },
}

fn call_of(r: &Record) -> Option<Call> {
    let res = || r.reservation.clone().unwrap_or_default();
    Some(match r.f.as_str() {
        "set" => Call::Set {
            on_hand: r.on_hand?,
        },
        "read" => Call::Read,
        "decrement" => Call::Decrement { qty: r.qty? },
        "adjust" => Call::Adjust { delta: r.delta? },
        "reserve" => Call::Reserve {
            res: res(),
            qty: r.qty?,
            ttl_ms: r.ttl_ms?,
        },
        "confirm" => Call::Confirm { res: res() },
        "release" => Call::Release { res: res() },
        "read-reservation" => Call::ReadReservation { res: res() },
        _ => return None,
    })
}

/// Pairs every invocation with its process's next completion. Invocations without a
/// completion (the run ended first) are unknown. Definite failures that observed
/// nothing (unavailable, rate limited) are dropped.
pub fn pair(records: &[Record]) -> Result<Vec<Op>, HistoryError> {
    let mut open: std::collections::HashMap<u64, (usize, &Record)> =
        std::collections::HashMap::new();
    let mut ops = Vec::new();
    let finish = |inv: &Record,
                  done: Option<&Record>,
                  ops: &mut Vec<Op>,
                  line: usize|
     -> Result<(), HistoryError> {
        let call = call_of(inv).ok_or_else(|| HistoryError::Bad {
            line,
            message: format!("unknown or incomplete op {:?}", inv.f),
        })?;
        let (outcome, ret_ns) = match done {
            None => (Outcome::Unknown, u64::MAX),
            Some(d) => match d.kind {
                Some(Kind::Ok) => {
                    let o = if matches!(call, Call::ReadReservation { .. }) {
                        Outcome::ReservationState(d.state.clone().unwrap_or_default())
                    } else {
                        Outcome::Stock {
                            found: d.found.unwrap_or(true),
                            on_hand: d.on_hand.unwrap_or(0),
                            reserved: d.reserved.unwrap_or(0),
                        }
                    };
                    (o, d.time_ns)
                }
                Some(Kind::Fail) => {
                    let reason = d.error.clone().unwrap_or_default();
                    if reason_is_no_observation(&reason) {
                        return Ok(());
                    }
                    (
                        Outcome::Refused {
                            reason,
                            available: d.available,
                        },
                        d.time_ns,
                    )
                }
                _ => (Outcome::Unknown, u64::MAX),
            },
        };
        ops.push(Op {
            id: ops.len(),
            process: inv.process.unwrap_or(0),
            sku: inv.sku.clone().unwrap_or_default(),
            rid: inv.rid.clone(),
            call,
            outcome,
            call_ns: inv.time_ns,
            ret_ns,
            invoke_index: inv.index,
        });
        Ok(())
    };
    for (line, r) in records.iter().enumerate() {
        match r.kind {
            Some(Kind::Invoke) => {
                let p = r.process.unwrap_or(0);
                if let Some((l, prev)) = open.insert(p, (line, r)) {
                    finish(prev, None, &mut ops, l)?;
                }
            }
            Some(Kind::Ok) | Some(Kind::Fail) | Some(Kind::Info) => {
                let p = r.process.unwrap_or(0);
                let (l, inv) = open.remove(&p).ok_or_else(|| HistoryError::Bad {
                    line,
                    message: format!("completion without invocation for process {p}"),
                })?;
                finish(inv, Some(r), &mut ops, l)?;
            }
            _ => {}
        }
    }
    let mut rest: Vec<_> = open.into_values().collect();
    rest.sort_by_key(|(l, _)| *l);
    for (l, inv) in rest {
        finish(inv, None, &mut ops, l)?;
    }
    ops.sort_by_key(|o| (o.call_ns, o.invoke_index));
    for (i, o) in ops.iter_mut().enumerate() {
        o.id = i;
    }
    Ok(ops)
}

pub fn parse_jsonl(text: &str) -> Result<Vec<Record>, HistoryError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| HistoryError::Bad {
                line: i + 1,
                message: e.to_string(),
            })
        })
        .collect()
}
