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
use crate::raft::quiet::{self, FreshBeats, QuietList, Round, RoundLimits};
use crate::telemetry::names;

/// Timers started (or elections called) by the loop per round; work and Raft
/// messages wake replicas without limit.
const WAKES_PER_ROUND_MAX: u32 = 32;
/// Replicas awake without a leader that the loop lets stand at once: past this it
/// starts no more timers until some have a leader, so that a node starting 10,000
/// shards, or the survivors of a node that led thousands, elect in waves instead of
/// drowning each other's votes in timeouts.
const ELECTING_MAX: u32 = 64;

/// While every replica sleeps, one round in this many is full (visits every replica);
/// the others are light (`Calm`). A bound on how long a light round's assumption can
/// be wrong without the loop seeing it.
const FULL_EVERY_ROUNDS: u64 = 10;

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
    /// Set while full rounds find every replica asleep (`Calm`).
    calm: Option<Calm>,
}

/// Full rounds in a row found every replica asleep, vouched for or leading quietly,
/// and nothing woke a replica since. Then a round whose beats are the previous
/// round's (all fresh) can only repeat the verdicts, as long as no replica wakes (work
/// and Raft messages count in `Wakeups`): a light round visits just the replicas due
/// for a re-read of their Raft state (`Quiet::recheck_due`) and sends the same
/// listing. With 10,000 sleeping replicas, visiting each ten times a second was the
/// largest part of an idle node's CPU.
struct Calm {
    /// `Wakeups::count()` when the first calm round started.
    wakeups: u64,
    /// Calm full rounds in a row: light rounds need two, so that a replica that fell
    /// asleep in the first was re-read in the second.
    full_rounds: u32,
    /// The last full round's listing and replicas; `by_recheck[i]` holds the indexes
    /// of the replicas whose shard id is `i` modulo `RECHECK_EVERY_ROUNDS`.
    listed: QuietList,
    replicas: Vec<Arc<crate::shard::Shard>>,
    by_recheck: Vec<Vec<usize>>,
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

    /// One quiet round: light while calm (`Calm`), else full. Returns the quiet
    /// shards led here.
    fn quiet_round(&self, state: &mut LoopState) -> QuietList {
        let r = &self.cluster.raft;
        let listening =
            self.started_at.elapsed().as_millis() < u128::from(r.election_timeout_min_ms);
        let mut beats = self.beats.now();
        state.round += 1;
        beats.settle(
            state.round,
            &mut state.beats_seen,
            r.election_timeout_min_ms,
        );
        let wakeups = self.shared.wakeups.count();
        let light = state.calm.as_ref().is_some_and(|c| {
            c.full_rounds >= 2
                && c.wakeups == wakeups
                && beats.unchanged()
                && !listening
                && !state.round.is_multiple_of(FULL_EVERY_ROUNDS)
                && c.replicas.len() == self.shards.read().unwrap_or_else(|p| p.into_inner()).len()
        });
        if light {
            return self.light_round(state, &beats);
        }
        self.full_round(state, &beats, listening, wakeups)
    }

    /// Every local replica's round (`ShardRaft::quiet_round`).
    fn full_round(
        &self,
        state: &mut LoopState,
        beats: &FreshBeats,
        listening: bool,
        wakeups: u64,
    ) -> QuietList {
        let mut wakes = if listening {
            0
        } else {
            WAKES_PER_ROUND_MAX.min(ELECTING_MAX.saturating_sub(state.electing))
        };
        let (mut mine, mut asleep, mut electing, mut waiting) = (Vec::new(), 0usize, 0u32, 0u32);
        let replicas = self.shards();
        for shard in &replicas {
            match shard
                .raft
                .quiet_round(beats, &mut self.round_limits(shard, &mut wakes))
            {
                Round::Listed(term) => mine.push((shard.id().0, term)),
                Round::Electing => electing += 1,
                Round::Waiting => waiting += 1,
                Round::Other => {}
            }
            asleep += usize::from(shard.raft.is_asleep());
        }
        state.electing = electing;
        metrics::gauge!(names::SHARDS_ASLEEP).set(asleep as f64);
        // `shards()` is in shard id order, so the list ascends as a beat must.
        let mine = Arc::new(mine);
        let calm = asleep == replicas.len()
            && electing == 0
            && waiting == 0
            && !listening
            && self.shared.wakeups.count() == wakeups;
        state.calm = if calm {
            let full_rounds = match &state.calm {
                Some(c) if c.wakeups == wakeups => c.full_rounds + 1,
                _ => 1,
            };
            let mut by_recheck = vec![Vec::new(); quiet::RECHECK_EVERY_ROUNDS as usize];
            for (i, shard) in replicas.iter().enumerate() {
                by_recheck[(shard.id().0 % quiet::RECHECK_EVERY_ROUNDS) as usize].push(i);
            }
            Some(Calm {
                wakeups,
                full_rounds,
                listed: mine.clone(),
                replicas,
                by_recheck,
            })
        } else {
            None
        };
        mine
    }

    /// The last full round's listing again, after a round on the replicas due for a
    /// re-read; any of them not found asleep as before ends the calm.
    fn light_round(&self, state: &mut LoopState, beats: &FreshBeats) -> QuietList {
        let Some(calm) = state.calm.as_ref() else {
            return Arc::default();
        };
        let n = quiet::RECHECK_EVERY_ROUNDS;
        let due = (n - state.round % n) % n;
        // Calm means nothing electing: the full budget, so that a re-read that finds
        // a replica to wake (a candidate put to sleep) wakes it now.
        let mut wakes = WAKES_PER_ROUND_MAX;
        let (mut still, mut electing) = (true, 0u32);
        for i in &calm.by_recheck[due as usize] {
            let shard = &calm.replicas[*i];
            let verdict = shard
                .raft
                .quiet_round(beats, &mut self.round_limits(shard, &mut wakes));
            electing += u32::from(verdict == Round::Electing);
            let listed = calm
                .listed
                .binary_search_by_key(&shard.id().0, |(s, _)| *s)
                .ok();
            still &= shard.raft.is_asleep()
                && match verdict {
                    Round::Listed(term) => listed.is_some_and(|k| calm.listed[k].1 == term),
                    Round::Other => listed.is_none(),
                    Round::Electing | Round::Waiting => false,
                };
        }
        state.electing = electing;
        let listed = calm.listed.clone();
        if !still {
            state.calm = None;
        }
        listed
    }

    fn round_limits<'a>(&self, shard: &crate::shard::Shard, wakes: &'a mut u32) -> RoundLimits<'a> {
        let r = &self.cluster.raft;
        let spread_ms = r.election_timeout_max_ms - r.election_timeout_min_ms;
        let id = shard.id().0;
        RoundLimits {
            quiet_after_ms: r.quiet_after_ms,
            fresh_ms: quiet::staleness_ms(r.election_timeout_min_ms, spread_ms, id, self.id),
            wakes,
            fast_failover: r.read_policy == ReadPolicyConfig::ReadIndex,
        }
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
