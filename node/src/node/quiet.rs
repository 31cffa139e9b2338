//! The node's quiet loop (the design is in `raft::quiet`): every heartbeat interval
//! it runs one quiet round on each local replica, then sends every peer node one beat
//! listing the quiet shards this node leads. One beat per peer replaces the heartbeats
//! of every quiet shard, so an idle node's cost no longer grows with its shards.
//!
//! A beat to a peer is sent only when the previous one to it has finished (at most
//! one in flight per peer), and each has the heartbeat interval as its deadline.
//!
//! Replicas start with their timers stopped. For `election_timeout_min_ms` after the
//! node starts, the loop only listens (the peers' beats arrive and vouch for the
//! shards they lead quietly); then it starts the timers of replicas no beat vouches
//! for, at most `WAKES_PER_ROUND_MAX` per round: a node with 10,000 shards, or the
//! survivors of a node that led thousands, elect in waves instead of all at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::Node;
use crate::config::ReadPolicyConfig;
use crate::raft::quiet::{self, QuietList, Round, RoundLimits};
use crate::telemetry::names;

/// Timers started (or elections called) by the loop per round; work and Raft
/// messages wake replicas without limit.
const WAKES_PER_ROUND_MAX: u32 = 32;
/// Replicas awake without a leader that the loop lets stand at once: past this it
/// starts no more timers until some have a leader, so that a node starting 10,000
/// shards, or the survivors of a node that led thousands, elect in waves instead of
/// drowning each other's votes in timeouts.
const ELECTING_MAX: u32 = 64;

/// Per peer node: a beat to it is in flight.
type InFlight = BTreeMap<u64, Arc<AtomicBool>>;

/// What the loop keeps between rounds.
#[derive(Default)]
struct LoopState {
    in_flight: InFlight,
    /// Replicas found electing in the last round.
    electing: u32,
    /// Rounds run, and the beats the last one saw (`FreshBeats::settle`).
    round: u64,
    beats_seen: Vec<(u64, QuietList)>,
}

impl Node {
    /// Starts the quiet loop. Beats are sent even with quiet shards off
    /// (`raft.quiet_after_ms = 0`, nothing listed): they are the node-level failure
    /// detector fast failover relies on.
    pub fn spawn_quiet_loop(self: &Arc<Self>) {
        let node = Arc::downgrade(self);
        let mut shutdown = self.shutdown.subscribe();
        let period = Duration::from_millis(self.cluster.raft.heartbeat_interval_ms.max(1));
        tokio::spawn(async move {
            let mut state = LoopState::default();
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.recv() => return,
                }
                let Some(node) = node.upgrade() else { return };
                let mine = node.quiet_round(&mut state);
                node.send_beats(mine, &mut state.in_flight);
            }
        });
    }

    /// One quiet round over every local replica; returns the quiet shards led here.
    fn quiet_round(&self, state: &mut LoopState) -> QuietList {
        let r = &self.cluster.raft;
        let spread_ms = r.election_timeout_max_ms - r.election_timeout_min_ms;
        let listening =
            self.started_at.elapsed().as_millis() < u128::from(r.election_timeout_min_ms);
        let mut wakes = if listening {
            0
        } else {
            WAKES_PER_ROUND_MAX.min(ELECTING_MAX.saturating_sub(state.electing))
        };
        let fast_failover = r.read_policy == ReadPolicyConfig::ReadIndex;
        let mut beats = self.beats.now();
        state.round += 1;
        beats.settle(
            state.round,
            &mut state.beats_seen,
            r.election_timeout_min_ms,
        );
        let (mut mine, mut asleep, mut electing) = (Vec::new(), 0u64, 0u32);
        for shard in self.shards() {
            let id = shard.id().0;
            let mut limits = RoundLimits {
                quiet_after_ms: r.quiet_after_ms,
                fresh_ms: quiet::staleness_ms(r.election_timeout_min_ms, spread_ms, id, self.id),
                wakes: &mut wakes,
                fast_failover,
            };
            match shard.raft.quiet_round(&beats, &mut limits) {
                Round::Listed(term) => mine.push((id, term)),
                Round::Electing => electing += 1,
                Round::Other => {}
            }
            asleep += u64::from(shard.raft.is_asleep());
        }
        state.electing = electing;
        metrics::gauge!(names::SHARDS_ASLEEP).set(asleep as f64);
        // `shards()` is in shard id order, so the list ascends as a beat must.
        Arc::new(mine)
    }

    fn send_beats(&self, mine: QuietList, in_flight: &mut InFlight) {
        // The shortest staleness limit: a beat answered late still shows the peer
        // alive (on a saturated link, answers are slow, not absent); one in flight
        // per peer keeps a dead peer from piling them up.
        let timeout = Duration::from_millis(self.cluster.raft.election_timeout_min_ms.max(1));
        let map = self.map.get();
        for peer in map.nodes().filter(|n| n.id != self.id) {
            let busy = in_flight.entry(peer.id).or_default().clone();
            if busy.swap(true, Ordering::AcqRel) {
                continue;
            }
            let (pool, beats, list, addr, target) = (
                self.peers.clone(),
                self.beats.clone(),
                mine.clone(),
                peer.addr.clone(),
                peer.id,
            );
            tokio::spawn(async move {
                match pool.beat(target, &addr, &list, timeout).await {
                    Ok(()) => beats.answered(target),
                    Err(e) => tracing::debug!(target, error = %e, "beat not delivered"),
                }
                busy.store(false, Ordering::Release);
            });
        }
    }
}
