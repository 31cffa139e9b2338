//! Routing a call to a node of its shard and retrying what is safe to retry, inside
//! the caller's deadline: leader hints followed, failed nodes skipped, the shard map
//! refreshed when it is stale. What a failed attempt means is `classify`'s.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use stockpile_proto::v1 as pb;
use stockpile_proto::v1::admin_client::AdminClient;

use crate::classify::{Verdict, classify, decode_detail};
use crate::transport::Conn;
use crate::{Client, Error, RequestId, ShardMap, Target};

/// Rounds at most in which a Get's SKUs refused for their shard (a split, two
/// leaders) are grouped again by a refreshed map and read again before its last
/// round: one round follows a split or a leader change; more than a few means the
/// cluster is changing faster than a call lasts. (A batch regroups until its
/// deadline instead: `batch_rpc`.)
pub(crate) const REGROUP_ROUNDS_MAX: u32 = 8;

/// Backoff between attempts: 10 ms doubling, at most 500 ms, full jitter above half.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let ms = (10u64 << attempt.min(6)).min(500);
    Duration::from_millis(ms / 2 + rand::random::<u64>() % (ms / 2 + 1))
}

impl Client {
    /// Fetches the shard map from the first node that answers (own region first,
    /// then the seeds).
    pub async fn refresh_map(&self, deadline: Instant) -> Result<ShardMap, Error> {
        let region = self.inner.cfg.region.clone();
        let mut attempt = 0u32;
        let mut last_error = String::from("no node answered");
        loop {
            let mut addrs: Vec<(Option<u64>, String)> = self
                .routing()
                .discovery_order(region.as_deref())
                .into_iter()
                .map(|n| (Some(n.node_id), n.addr))
                .collect();
            for s in &self.inner.cfg.seeds {
                if !addrs.iter().any(|(_, a)| a == s) {
                    addrs.push((None, s.clone()));
                }
            }
            for (node_id, addr) in addrs {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break;
                }
                let channel = self.channel(&addr)?;
                let t = remaining.min(self.inner.cfg.attempt_timeout);
                let mut request = tonic::Request::new(pb::ShardMapRequest {});
                request.set_timeout(t);
                self.inner.rpcs.fetch_add(1, Ordering::Relaxed);
                match tokio::time::timeout(t, AdminClient::new(channel).shard_map(request)).await {
                    Ok(Ok(reply)) => {
                        let reply = reply.into_inner();
                        let map = ShardMap::from_pb(&reply);
                        let mut r = self.routing();
                        r.map.merge(map.clone());
                        for s in &reply.shards {
                            if s.leader_id != 0 {
                                r.leaders.insert(s.shard_id, s.leader_id);
                            }
                        }
                        if let Some(id) = node_id.or(Some(reply.node_id)) {
                            r.node_ok(id);
                        }
                        return Ok(map);
                    }
                    Ok(Err(s)) => {
                        // Credentials refused by one node are refused by every node:
                        // said at once, not retried until the deadline.
                        let definite = decode_detail(&s).and_then(|d| Error::from_detail(&d, None));
                        if let Some(
                            e @ (Error::Unauthenticated { .. } | Error::PermissionDenied { .. }),
                        ) = definite
                        {
                            return Err(e);
                        }
                        last_error = format!("{addr}: {}", s.message());
                    }
                    Err(_) => last_error = format!("{addr}: no answer within {} ms", t.as_millis()),
                }
                if let Some(id) = node_id {
                    self.routing().node_failed(id);
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable {
                    message: format!("cannot fetch the shard map: {last_error}"),
                });
            }
            tokio::time::sleep(
                backoff(attempt).min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
            attempt += 1;
        }
    }

    pub(crate) fn shard_for(&self, sku: &str) -> Result<u64, Error> {
        self.routing()
            .map
            .shard_for(sku)
            .map(|s| s.shard_id)
            .ok_or_else(|| Error::Unavailable {
                message: format!("no shard covers {sku:?}"),
            })
    }

    /// Sends `call` to a node of `shard_id` and retries what is retryable until
    /// `deadline`. For a mutation (`request_id` set), any attempt that may have reached
    /// the store makes an eventual give-up `OutcomeUnknown` instead of `Unavailable`.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        shard_id: u64,
        target: Target,
        request_id: Option<RequestId>,
        deadline: Instant,
        call: F,
    ) -> Result<T, Error>
    where
        F: Fn(Conn, Duration) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let attempt_timeout = self.inner.cfg.attempt_timeout;
        self.call_within(
            shard_id,
            target,
            request_id,
            deadline,
            attempt_timeout,
            call,
        )
        .await
    }

    /// `call` with attempts of up to `attempt_timeout` each (operator calls that
    /// legitimately take long, such as a replica move).
    pub(crate) async fn call_within<T, F, Fut>(
        &self,
        shard_id: u64,
        target: Target,
        request_id: Option<RequestId>,
        deadline: Instant,
        attempt_timeout: Duration,
        call: F,
    ) -> Result<T, Error>
    where
        F: Fn(Conn, Duration) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let tries = Attempts::new(shard_id, request_id, deadline);
        self.attempts(tries, target, attempt_timeout, &[], call)
            .await?
            .ok_or_else(|| Error::Internal {
                message: "a call bound to no SKU was regrouped".into(),
            })
    }

    /// `call` for a request naming `skus`, each in `shard_id` by this client's map
    /// (none: `call` itself, never None). None, without another attempt, once the map (refreshed on a node's word: a
    /// shard it does not list, SHARD_MOVED) places any of them in another shard: the
    /// caller groups them again. A node routes a request by its own map, so a request
    /// shaped by a stale one can be refused by every node, each leading only part
    /// of it, until the deadline.
    pub(crate) async fn call_for_skus<T, F, Fut>(
        &self,
        shard_id: u64,
        skus: &[&str],
        target: Target,
        deadline: Instant,
        call: F,
    ) -> Result<Option<T>, Error>
    where
        F: Fn(Conn, Duration) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let tries = Attempts::new(shard_id, None, deadline);
        let attempt_timeout = self.inner.cfg.attempt_timeout;
        self.attempts(tries, target, attempt_timeout, skus, call)
            .await
    }

    /// The attempts of one call, until an answer, a definite failure, the deadline,
    /// or (None) the map placing one of `skus` outside the call's shard.
    async fn attempts<T, F, Fut>(
        &self,
        mut tries: Attempts,
        target: Target,
        attempt_timeout: Duration,
        skus: &[&str],
        call: F,
    ) -> Result<Option<T>, Error>
    where
        F: Fn(Conn, Duration) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let shard_id = tries.shard_id;
        let request_id = tries.request_id;
        loop {
            let remaining = tries.remaining().ok_or_else(|| tries.give_up())?;
            let Some((node_id, addr)) = self.next_candidate(&mut tries, target).await? else {
                continue;
            };
            let t = remaining.min(attempt_timeout);
            self.inner.rpcs.fetch_add(1, Ordering::Relaxed);
            let verdict = match tokio::time::timeout(t, call(self.channel(&addr)?, t)).await {
                Ok(Ok(v)) => {
                    let mut r = self.routing();
                    r.node_ok(node_id);
                    if target == Target::Leader {
                        r.leaders.insert(shard_id, node_id);
                    }
                    return Ok(Some(v));
                }
                Ok(Err(status)) => classify(&status, request_id),
                Err(_) => Verdict::NodeFailed {
                    maybe_applied: true,
                    message: format!("gave no answer within {} ms", t.as_millis()),
                },
            };
            self.act(&mut tries, node_id, verdict).await?;
            if self.routes_elsewhere(shard_id, skus) {
                return Ok(None);
            }
        }
    }

    /// Whether this client's map places any of `skus` outside `shard_id`.
    fn routes_elsewhere(&self, shard_id: u64, skus: &[&str]) -> bool {
        if skus.is_empty() {
            return false;
        }
        let r = self.routing();
        skus.iter()
            .any(|sku| r.map.shard_for(sku).is_some_and(|s| s.shard_id != shard_id))
    }

    /// The next node to try, or None after waiting (every candidate tried this round)
    /// or refreshing the map (none known).
    async fn next_candidate(
        &self,
        tries: &mut Attempts,
        target: Target,
    ) -> Result<Option<(u64, String)>, Error> {
        let region = self.inner.cfg.region.clone();
        let candidates =
            self.routing()
                .candidates(tries.shard_id, region.as_deref(), target == Target::Leader);
        if candidates.is_empty() {
            self.refresh_map(tries.deadline)
                .await
                .map_err(|e| tries.unknown_if_sent(e))?;
            tries.attempt += 1;
            return Ok(None);
        }
        // Walk the candidates in order, starting over when all were tried.
        let Some(&node_id) = candidates.iter().find(|c| !tries.tried.contains(c)) else {
            tries.tried.clear();
            if !std::mem::take(&mut tries.answered_in_round) {
                self.refresh_after_silent_round(tries).await;
            }
            let wait = backoff(tries.attempt).min(tries.remaining().unwrap_or_default());
            tokio::time::sleep(wait).await;
            tries.attempt += 1;
            return Ok(None);
        };
        tries.tried.push(node_id);
        let addr = self
            .routing()
            .map
            .nodes
            .get(&node_id)
            .map(|n| n.addr.clone());
        match addr {
            Some(a) => Ok(Some((node_id, a))),
            None => {
                self.refresh_map(tries.deadline)
                    .await
                    .map_err(|e| tries.unknown_if_sent(e))?;
                Ok(None)
            }
        }
    }

    /// No node this map names for the shard answered in a whole round: the map may be
    /// stale (the shard's replicas moved while calls to its old leader kept
    /// succeeding, and now that leader is gone too). Asks the cluster before the next
    /// round. Best effort, bounded by one attempt's time: if no node answers, the
    /// round's own failures stay the call's error. A round in which some replica
    /// answered (NOT_LEADER during an election) asks nothing: those nodes know the
    /// shard and will name its leader.
    async fn refresh_after_silent_round(&self, tries: &Attempts) {
        let budget = self
            .inner
            .cfg
            .attempt_timeout
            .min(tries.remaining().unwrap_or_default());
        if let Err(e) = self.refresh_map(Instant::now() + budget).await {
            tracing::debug!(shard_id = tries.shard_id, error = %e, "no map after a silent round");
        }
    }

    /// Acts on a failed attempt's verdict: returns the error that ends the call, or
    /// Ok to try again.
    async fn act(&self, tries: &mut Attempts, node_id: u64, verdict: Verdict) -> Result<(), Error> {
        let shard_id = tries.shard_id;
        tries.answered_in_round |= !matches!(verdict, Verdict::NodeFailed { .. });
        match verdict {
            Verdict::Definite(e) => return Err(tries.definite(e)),
            Verdict::NodeFailed {
                maybe_applied,
                message,
            } => {
                tries.maybe_applied |= maybe_applied;
                tries.last_error = format!("node {node_id}: {message}");
                self.routing().node_failed(node_id);
            }
            Verdict::NotLeader {
                shard_id: refused,
                hint,
                message,
            } => {
                tries.last_error = format!("node {node_id}: {message}");
                let unknown = hint
                    .is_some_and(|h| h != node_id && !self.routing().map.nodes.contains_key(&h));
                // A node whose map places some of this call's SKUs in a shard this
                // client's map lacks (a split it has not seen): the map is stale. The
                // hint is still followed below (that leader may hold every SKU of a
                // one-SKU call); a call bound to its SKUs learns from the refreshed
                // map that they must be grouped again (`call_for_skus`).
                let unseen = refused != 0
                    && refused != shard_id
                    && !self
                        .routing()
                        .map
                        .shards
                        .iter()
                        .any(|s| s.shard_id == refused);
                if unknown || unseen {
                    // The leader is a node this map does not know (it joined since).
                    self.refresh_map(tries.deadline)
                        .await
                        .map_err(|e| tries.unknown_if_sent(e))?;
                }
                let leader = self
                    .routing()
                    .learn_leader(shard_id, refused, node_id, hint);
                if let Some(leader) = leader {
                    // Follow the hint at once, even if tried in this round.
                    tries.tried.retain(|n| *n != leader);
                }
            }
            Verdict::Unavailable {
                maybe_applied,
                message,
            } => {
                tries.maybe_applied |= maybe_applied;
                tries.last_error = format!("node {node_id}: {message}");
                self.routing().leaders.remove(&shard_id);
            }
            Verdict::RateLimited {
                retry_after_ms,
                message,
            } => {
                tries.last_error = format!("node {node_id}: {message}");
                let wait = Duration::from_millis(retry_after_ms.max(1));
                if Instant::now() + wait >= tries.deadline {
                    return Err(if tries.maybe_applied && tries.request_id.is_some() {
                        tries.give_up()
                    } else {
                        Error::RateLimited {
                            message,
                            retry_after_ms,
                        }
                    });
                }
                tokio::time::sleep(wait).await;
                tries.tried.retain(|n| *n != node_id);
            }
            Verdict::MapStale { message } => {
                tries.last_error = format!("node {node_id}: {message}");
                self.routing().leaders.remove(&shard_id);
                self.refresh_map(tries.deadline)
                    .await
                    .map_err(|e| tries.unknown_if_sent(e))?;
            }
        }
        Ok(())
    }
}

/// One call's attempts so far.
struct Attempts {
    shard_id: u64,
    request_id: Option<RequestId>,
    deadline: Instant,
    /// An attempt may have reached the store (a mutation's outcome is then unknown if
    /// the call gives up).
    maybe_applied: bool,
    last_error: String,
    attempt: u32,
    /// Nodes tried in this round of the candidates.
    tried: Vec<u64>,
    /// Some node answered in this round (a failure other than an unreachable or
    /// silent node): a round without any answer refreshes the map.
    answered_in_round: bool,
}

impl Attempts {
    fn new(shard_id: u64, request_id: Option<RequestId>, deadline: Instant) -> Attempts {
        Attempts {
            shard_id,
            request_id,
            deadline,
            maybe_applied: false,
            last_error: String::from("no attempt made"),
            attempt: 0,
            tried: Vec::new(),
            answered_in_round: false,
        }
    }

    /// Time left, or None when the deadline passed.
    fn remaining(&self) -> Option<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// The error when the deadline passed: unknown if a mutation may have been sent.
    fn give_up(&self) -> Error {
        match (self.request_id, self.maybe_applied) {
            (Some(request_id), true) => Error::OutcomeUnknown {
                request_id,
                message: self.last_error.clone(),
            },
            _ => Error::Unavailable {
                message: format!("shard {}: {}", self.shard_id, self.last_error),
            },
        }
    }

    /// A definite answer to a later attempt. The store's refusals (insufficient stock,
    /// not found, ...) are decided where the request id is looked up, so a retry of
    /// an applied request gets that request's outcome instead and a refusal stands.
    /// Any other refusal (permission, a batch that now spans two shards, bad input) is
    /// decided before that lookup and says nothing of an earlier attempt: after one
    /// that may have been applied, the outcome is unknown.
    fn definite(&self, e: Error) -> Error {
        if e.is_refusal() || matches!(e, Error::RequestIdReused { .. }) {
            e
        } else {
            self.unknown_if_sent(e)
        }
    }

    /// A failure to refresh the map after an attempt that may have been applied leaves
    /// the outcome unknown, not certainly failed.
    fn unknown_if_sent(&self, e: Error) -> Error {
        match (self.request_id, self.maybe_applied) {
            (Some(request_id), true) => Error::OutcomeUnknown {
                request_id,
                message: e.to_string(),
            },
            _ => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definite_answer_after_an_attempt_that_may_have_applied_is_kept_only_if_the_store_looked_the_request_up()
     {
        let rid = [7u8; 16];
        let mut tries = Attempts::new(4, Some(rid), Instant::now() + Duration::from_secs(1));
        let cross = Error::CrossShard {
            message: "spans 4 and 9".into(),
            shard_ids: vec![4, 9],
        };
        let short = Error::InsufficientStock {
            sku: "kiwi".into(),
            available: 0,
        };
        assert_eq!(tries.definite(cross.clone()), cross, "nothing sent yet");
        tries.maybe_applied = true;
        assert!(
            matches!(tries.definite(cross), Error::OutcomeUnknown { request_id, .. } if request_id == rid),
            "a refusal made before the request id was looked up cannot deny an earlier attempt"
        );
        assert_eq!(tries.definite(short.clone()), short);
    }
}
