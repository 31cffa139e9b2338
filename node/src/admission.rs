//! Admission control: every request is admitted (or refused with RATE_LIMITED and a
//! retry-after) before it costs a Raft round or a read.
//!
//! Two bounds apply, with separate budgets for reads and writes:
//! - in flight per node: a semaphore of RPCs being served at once;
//! - rate per client identity: a token bucket (sustained rate, burst) keyed by the
//!   `x-stockpile-client` request header ("anonymous" when absent). The map of
//!   identities is bounded; the longest idle are forgotten first.
//!
//! Shards add their own bound: a full proposal queue also answers RATE_LIMITED.

use crate::telemetry::names;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::AdmissionConfig;
use crate::error::Error;

/// The request header naming the client identity.
pub const CLIENT_HEADER: &str = "x-stockpile-client";
/// The identity of requests without the header.
pub const DEFAULT_IDENTITY: &str = "anonymous";
/// Longest identity kept as given; longer ones are cut.
const IDENTITY_BYTES_MAX: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Write => "write",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    fn full(burst: u64) -> Self {
        Bucket {
            tokens: burst as f64,
            refilled: Instant::now(),
        }
    }

    /// Takes `cost` tokens, or says how long until they are there.
    fn take(&mut self, cost: u64, rate_per_s: u64, burst: u64) -> Result<(), u64> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate_per_s as f64).min(burst as f64);
        self.refilled = now;
        // A request larger than the burst can never fit: charge it the whole burst.
        let cost = cost.min(burst) as f64;
        if self.tokens >= cost {
            self.tokens -= cost;
            Ok(())
        } else {
            let wait_ms = ((cost - self.tokens) / rate_per_s as f64 * 1_000.0).ceil() as u64;
            Err(wait_ms.max(1))
        }
    }
}

struct ClientBuckets {
    write: Bucket,
    read: Bucket,
    seen: Instant,
}

pub struct Admission {
    cfg: AdmissionConfig,
    writes: Arc<Semaphore>,
    reads: Arc<Semaphore>,
    clients: Mutex<HashMap<String, ClientBuckets>>,
}

/// Held while a request is served; dropping it frees its in-flight slot.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    pub fn new(cfg: AdmissionConfig) -> Admission {
        Admission {
            writes: Arc::new(Semaphore::new(cfg.node_writes_in_flight_max)),
            reads: Arc::new(Semaphore::new(cfg.node_reads_in_flight_max)),
            clients: Mutex::new(HashMap::new()),
            cfg,
        }
    }

    /// The identity of a request, from its metadata.
    pub fn identity(metadata: &tonic::metadata::MetadataMap) -> String {
        match metadata.get(CLIENT_HEADER).and_then(|v| v.to_str().ok()) {
            Some(id) if !id.is_empty() => id.chars().take(IDENTITY_BYTES_MAX).collect(),
            _ => DEFAULT_IDENTITY.to_string(),
        }
    }

    /// Admits a request of `cost` operations from `identity`, or refuses it.
    pub fn admit(&self, identity: &str, kind: Kind, cost: u64) -> Result<Admitted, Error> {
        let (rate, burst) = match kind {
            Kind::Write => (self.cfg.client_writes_per_s, self.cfg.client_write_burst),
            Kind::Read => (self.cfg.client_reads_per_s, self.cfg.client_read_burst),
        };
        if rate > 0 {
            let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            if !clients.contains_key(identity) && clients.len() >= self.cfg.client_identities_max {
                // Bounded map: forget the longest idle identity (it starts full again).
                if let Some(idle) = clients
                    .iter()
                    .min_by_key(|(_, b)| b.seen)
                    .map(|(k, _)| k.clone())
                {
                    clients.remove(&idle);
                }
            }
            let b = clients
                .entry(identity.to_string())
                .or_insert_with(|| ClientBuckets {
                    write: Bucket::full(self.cfg.client_write_burst),
                    read: Bucket::full(self.cfg.client_read_burst),
                    seen: Instant::now(),
                });
            b.seen = Instant::now();
            let bucket = match kind {
                Kind::Write => &mut b.write,
                Kind::Read => &mut b.read,
            };
            if let Err(retry_after_ms) = bucket.take(cost, rate, burst) {
                metrics::counter!(names::ADMISSION_REJECTIONS_TOTAL, "kind" => kind.as_str(), "bound" => "client_rate").increment(1);
                return Err(Error::RateLimited {
                    what: format!(
                        "client {identity:?} is over its {} rate of {rate}/s",
                        kind.as_str()
                    ),
                    retry_after_ms,
                });
            }
        }
        let sem = match kind {
            Kind::Write => &self.writes,
            Kind::Read => &self.reads,
        };
        match sem.clone().try_acquire_owned() {
            Ok(permit) => Ok(Admitted { _permit: permit }),
            Err(_) => {
                metrics::counter!(names::ADMISSION_REJECTIONS_TOTAL, "kind" => kind.as_str(), "bound" => "node_in_flight").increment(1);
                Err(Error::RateLimited {
                    what: format!("node is serving its maximum of {} requests", kind.as_str()),
                    retry_after_ms: 20,
                })
            }
        }
    }

    /// Requests of `kind` being served now.
    pub fn in_flight(&self, kind: Kind) -> usize {
        match kind {
            Kind::Write => self.cfg.node_writes_in_flight_max - self.writes.available_permits(),
            Kind::Read => self.cfg.node_reads_in_flight_max - self.reads.available_permits(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rate: u64, burst: u64, in_flight: usize) -> AdmissionConfig {
        AdmissionConfig {
            client_writes_per_s: rate,
            client_write_burst: burst,
            node_writes_in_flight_max: in_flight,
            ..AdmissionConfig::default()
        }
    }

    #[test]
    fn a_client_over_its_rate_is_told_when_to_come_back() {
        let a = Admission::new(cfg(10, 5, 100));
        for _ in 0..5 {
            drop(a.admit("svc", Kind::Write, 1).unwrap());
        }
        match a.admit("svc", Kind::Write, 1) {
            Err(Error::RateLimited { retry_after_ms, .. }) => {
                assert!((1..=100).contains(&retry_after_ms), "{retry_after_ms}")
            }
            other => panic!("expected RATE_LIMITED, got {:?}", other.map(|_| ())),
        }
        // Other identities and reads have their own budgets.
        assert!(a.admit("other", Kind::Write, 1).is_ok());
        assert!(a.admit("svc", Kind::Read, 1).is_ok());
    }

    #[test]
    fn in_flight_is_bounded_per_node() {
        let a = Admission::new(cfg(0, 1, 2));
        let p1 = a.admit("x", Kind::Write, 1).unwrap();
        let _p2 = a.admit("y", Kind::Write, 1).unwrap();
        assert!(matches!(
            a.admit("z", Kind::Write, 1),
            Err(Error::RateLimited { .. })
        ));
        assert_eq!(a.in_flight(Kind::Write), 2);
        drop(p1);
        assert!(a.admit("z", Kind::Write, 1).is_ok());
    }

    #[test]
    fn the_identity_map_is_bounded() {
        let mut c = cfg(1, 1, 10);
        c.client_identities_max = 3;
        let a = Admission::new(c);
        for i in 0..10 {
            drop(a.admit(&format!("c{i}"), Kind::Write, 1));
        }
        assert!(a.clients.lock().unwrap().len() <= 3);
    }
}
