//! Quiet shards (hibernation, as TiKV's): a Raft group without traffic stops its
//! timer on every replica, so it sends no heartbeats and runs no election timer, and
//! an idle shard costs no CPU. One node-level beat per peer (`node::quiet`) stands in
//! for every quiet shard's heartbeats.
//!
//! - **The leader decides.** After `raft.quiet_after_ms` without a client write or
//!   read or a Raft message, with every replica holding its whole log applied, it is
//!   listed in its node's beat (`QUIETING`); one round later its own timer stops
//!   (`ASLEEP`), so the followers have heard the listing before heartbeats stop.
//! - **A follower sleeps while a fresh beat vouches for its leader:** a beat that
//!   lists the shard in the follower's own term (one leader per term, so it comes
//!   from that leader's node, which is alive).
//! - **Anything wakes a replica:** a client call on the leader, any Raft message on
//!   any replica, and on a follower a beat that stops listing the shard or beats that
//!   stop coming (the leader's node lost). A follower woken that way has not heard
//!   its leader for long, so it elects at once: failover of a quiet shard takes the
//!   beat's staleness limit (`election_timeout_min_ms` plus a per-replica jitter).
//!
//! Safety never depends on this: votes, terms and logs are Raft's; only when timers
//! run changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use openraft::ServerState;
use openraft::type_config::async_runtime::WatchReceiver;

use super::ShardRaft;

/// The replica's timer runs (the default; every replica starts so).
pub const AWAKE: u8 = 0;
/// The leader lists the shard in its beat; its timer still runs for one more round.
pub const QUIETING: u8 = 1;
/// The timer is stopped.
pub const ASLEEP: u8 = 2;

/// Milliseconds since this process first asked: a monotonic clock for activity and
/// beat ages (never the wall clock, which can jump).
pub fn now_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let ms = ORIGIN.get_or_init(Instant::now).elapsed().as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// How many times this node's replicas were woken from sleep (or from quieting): the
/// quiet loop repeats its last full round's verdicts on sleeping replicas only while
/// this has not moved (`node::quiet`).
#[derive(Debug, Default)]
pub struct Wakeups(AtomicU64);

impl Wakeups {
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// One replica's quiet state.
#[derive(Debug)]
pub struct Quiet {
    state: AtomicU8,
    /// The node's count of wake-ups, bumped by `awake`.
    wakeups: Arc<Wakeups>,
    /// `now_ms()` of the last client call or Raft message: the leader's idleness.
    last_active_ms: AtomicU64,
    /// The last term in which this replica stood because its leader's node was lost
    /// (once per term: a failed stand leaves it to Raft's own timers).
    stood_term: AtomicU64,
    /// While asleep: the term it fell asleep in, with the top bit set if it led.
    /// Work or a Raft message wakes the replica before it changes a term or a role,
    /// so a round reads this instead of the Raft metrics; the one change that can
    /// slip past (a timer firing as it stops) is caught by `recheck_due`.
    slept_as: AtomicU64,
    /// How many times this replica fell asleep as a leader, and the count at the last
    /// lease renewal: a sleeping leader's lease runs out (no heartbeats, no answers),
    /// so the first write or read after a sleep renews it (`ShardRaft::write`).
    leader_sleeps: AtomicU64,
    lease_renewed_at_sleeps: AtomicU64,
    /// The last quiet round in which a beat vouched for this sleeping follower (0:
    /// none since it last woke). A round whose beats are the previous round's, all
    /// fresh, vouches again for a follower vouched then without searching the lists.
    vouched_round: AtomicU64,
    /// The quiet round that last put this follower to sleep: the round after it reads
    /// the Raft state again (`recheck_due`).
    slept_round: AtomicU64,
    /// How many times this replica woke. Nothing of a sleeping replica changes until
    /// it wakes, so whoever reads its state only when that changes (the gauges'
    /// publisher) compares this count: a wake and a sleep between two of its reads
    /// leave the replica asleep again, but not unchanged.
    woken: AtomicU64,
}

/// A sleeping replica reads its Raft state at least once in this many quiet rounds
/// (5 s at a 100 ms heartbeat), whatever the beats say: a bound on how long a sleep
/// decided on a stale view can last (see `Quiet::recheck_due`).
pub const RECHECK_EVERY_ROUNDS: u64 = 50;

/// `Quiet::slept_as`'s mark of a leader.
const LED: u64 = 1 << 63;

impl Quiet {
    /// A replica as it starts: `asleep` when quiet shards are on (its timer is started
    /// by the quiet loop or by work).
    pub fn new(asleep: bool, wakeups: Arc<Wakeups>) -> Quiet {
        Quiet {
            state: AtomicU8::new(if asleep { ASLEEP } else { AWAKE }),
            wakeups,
            last_active_ms: AtomicU64::new(now_ms()),
            stood_term: AtomicU64::new(0),
            slept_as: AtomicU64::new(0),
            leader_sleeps: AtomicU64::new(0),
            lease_renewed_at_sleeps: AtomicU64::new(0),
            vouched_round: AtomicU64::new(0),
            slept_round: AtomicU64::new(0),
            woken: AtomicU64::new(0),
        }
    }

    pub fn woken(&self) -> u64 {
        self.woken.load(Ordering::Acquire)
    }

    /// Whether this sleeping replica must read its Raft state in `round` instead of
    /// trusting the term it fell asleep in. The sleep was decided on Raft metrics,
    /// which lag the core, and an election timer that fired just before the timer
    /// stopped makes a candidate in a new term that then sleeps: no beat lists that
    /// term, but the fast path compares with the old one, and a sleeping candidate
    /// never elects again (seen at 10,000 shards: one replica stuck so for good).
    /// So the round after a follower falls asleep checks it, and every replica is
    /// checked once in `RECHECK_EVERY_ROUNDS` rounds, spread by `shard_id`.
    pub fn recheck_due(&self, round: u64, shard_id: u64) -> bool {
        round == self.slept_round.load(Ordering::Acquire).saturating_add(1)
            || round
                .wrapping_add(shard_id)
                .is_multiple_of(RECHECK_EVERY_ROUNDS)
    }

    /// The term this sleeping replica fell asleep in, and whether it led then.
    fn slept_as(&self) -> (u64, bool) {
        let v = self.slept_as.load(Ordering::Acquire);
        (v & !LED, v & LED != 0)
    }

    /// Some(sleeps) if this replica slept as a leader since its lease was last
    /// renewed.
    pub fn lease_owed(&self) -> Option<u64> {
        let sleeps = self.leader_sleeps.load(Ordering::Acquire);
        (self.lease_renewed_at_sleeps.load(Ordering::Acquire) < sleeps).then_some(sleeps)
    }

    /// A quorum answered after the `sleeps`-th sleep.
    pub fn lease_renewed(&self, sleeps: u64) {
        self.lease_renewed_at_sleeps
            .fetch_max(sleeps, Ordering::AcqRel);
    }

    /// True the first time it is asked for `term`.
    pub fn stand_once(&self, term: u64) -> bool {
        self.stood_term.swap(term, Ordering::AcqRel) != term
    }

    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    pub fn touch(&self) {
        self.last_active_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn idle_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_active_ms.load(Ordering::Relaxed))
    }

    /// Marks the replica awake; true if it was not (its timer must be started).
    pub fn awake(&self) -> bool {
        let was_asleep = self.state.swap(AWAKE, Ordering::AcqRel) != AWAKE;
        if was_asleep {
            self.vouched_round.store(0, Ordering::Release);
            self.wakeups.0.fetch_add(1, Ordering::AcqRel);
            self.woken.fetch_add(1, Ordering::AcqRel);
        }
        was_asleep
    }

    /// Moves `from` → `to` unless something woke the replica meanwhile.
    pub fn advance(&self, from: u8, to: u8) -> bool {
        self.state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// Shards a beat lists, ascending by shard id, each with the sender's term.
pub type QuietList = Arc<Vec<(u64, u64)>>;

/// The latest beat of every peer node, as received, and when each peer last showed
/// it is alive.
#[derive(Default)]
pub struct Beats {
    latest: Mutex<HashMap<u64, (u64, QuietList)>>,
    /// `now_ms()` a peer last answered this node's beat. A beat *from* a peer can be
    /// stuck behind megabytes of entries on a slow link while the peer is well: its
    /// answers to our beats travel on our own connection to it.
    answered: Mutex<HashMap<u64, u64>>,
}

/// Every peer's latest beat at one moment, looked up for every replica of a round.
pub struct FreshBeats {
    pub now_ms: u64,
    /// The quiet loop's round number (from 1), and whether every beat lists what it
    /// listed in the previous round and is fresh for every replica (`settle`).
    round: u64,
    unchanged: bool,
    /// (node, received at, list).
    beats: Vec<(u64, u64, QuietList)>,
    /// Node → when it last answered one of our beats.
    answered: HashMap<u64, u64>,
}

impl Beats {
    /// Records `from`'s beat. The list must ascend by shard id (checked by the caller).
    pub fn record(&self, from: u64, list: Vec<(u64, u64)>) {
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest.insert(from, (now_ms(), Arc::new(list)));
    }

    /// `node` answered a beat of ours just now.
    pub fn answered(&self, node: u64) {
        let mut answered = self.answered.lock().unwrap_or_else(|p| p.into_inner());
        answered.insert(node, now_ms());
    }

    /// The latest beat of every peer heard from since this node started.
    pub fn now(&self) -> FreshBeats {
        let now_ms = now_ms();
        let answered = self
            .answered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        let beats = latest
            .iter()
            .map(|(node, (at, list))| (*node, *at, list.clone()))
            .collect();
        FreshBeats {
            now_ms,
            round: 0,
            unchanged: false,
            beats,
            answered,
        }
    }
}

impl FreshBeats {
    /// Numbers this round and compares its beats with the previous round's
    /// (`previous`, replaced by this round's): unchanged when the same peers list the
    /// same shards in the same terms, each beat at most `fresh_min_ms` old, the
    /// shortest staleness limit of any replica. Such a round vouches for exactly the
    /// sleeping followers the previous one vouched for.
    pub fn settle(&mut self, round: u64, previous: &mut Vec<(u64, QuietList)>, fresh_min_ms: u64) {
        let mut current: Vec<(u64, QuietList)> =
            self.beats.iter().map(|(n, _, l)| (*n, l.clone())).collect();
        current.sort_unstable_by_key(|(n, _)| *n);
        let all_fresh = self
            .beats
            .iter()
            .all(|(_, at, _)| self.now_ms.saturating_sub(*at) <= fresh_min_ms);
        let same = current.len() == previous.len()
            && current
                .iter()
                .zip(previous.iter())
                .all(|((a, la), (b, lb))| a == b && la == lb);
        self.round = round;
        self.unchanged = all_fresh && same && round > 1;
        *previous = current;
    }

    /// Every beat lists what it listed in the previous round, all fresh (`settle`).
    pub fn unchanged(&self) -> bool {
        self.unchanged
    }

    /// Whether a beat received at most `fresh_ms` ago lists `shard_id` in `term`.
    pub fn vouch(&self, shard_id: u64, term: u64, fresh_ms: u64) -> bool {
        self.beats.iter().any(|(_, at, list)| {
            self.now_ms.saturating_sub(*at) <= fresh_ms
                && list
                    .binary_search_by_key(&shard_id, |(s, _)| *s)
                    .is_ok_and(|i| list[i].1 == term)
        })
    }

    /// `node` beat before, and for more than `fresh_ms` has neither beaten nor
    /// answered a beat of ours: it is lost. A node never heard from since this one
    /// started is not judged.
    pub fn lost(&self, node: u64, fresh_ms: u64) -> bool {
        let silent = |at: u64| self.now_ms.saturating_sub(at) > fresh_ms;
        self.beats
            .iter()
            .any(|(n, at, _)| *n == node && silent(*at))
            && self.answered.get(&node).is_none_or(|at| silent(*at))
    }
}

/// A follower's staleness limit for beats: `min_ms` plus a jitter in
/// `[0, spread_ms)` fixed per (shard, node), so that the followers of a shard whose
/// leader's node is lost do not all wake and stand for election at the same moment.
pub fn staleness_ms(min_ms: u64, spread_ms: u64, shard_id: u64, node_id: u64) -> u64 {
    // A fixed mix (splitmix64's finalizer): deterministic, spread over the range.
    let mut x = shard_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ node_id;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    min_ms + x % spread_ms.max(1)
}

/// What one round needs to know of a replica's Raft state.
struct Facts {
    state: ServerState,
    term: u64,
    /// The leader's node, as this replica knows it.
    leader: Option<u64>,
    /// Every entry is applied here and, on a leader, matched by every replica: no
    /// replication is owed, so no timer is needed to drive one.
    settled: bool,
}

/// What one quiet round made of a replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Round {
    /// A quiet leader: list the shard in the node's beat with this term.
    Listed(u64),
    /// Awake without a leader: standing for election, or waiting for one. The loop
    /// bounds how many of these it makes (`node::quiet`).
    Electing,
    /// Asleep, no beat vouches for it, and the round had no timer left to start: a
    /// later round starts it.
    Waiting,
    Other,
}

/// What a round may do beyond sleeping and listing.
pub struct RoundLimits<'a> {
    pub quiet_after_ms: u64,
    /// This replica's staleness limit for beats (`staleness_ms`).
    pub fresh_ms: u64,
    /// Timers the round may still start (and elections it may still call).
    pub wakes: &'a mut u32,
    /// A follower whose leader's node is lost may stop waiting out the leader's lease
    /// (only with ReadIndex reads: lease reads rely on it).
    pub fast_failover: bool,
}

impl ShardRaft {
    /// Work arrived (a client call, a Raft message): the replica is awake and counts
    /// as active from now.
    pub(crate) fn wake(&self) {
        self.quiet.touch();
        self.start_timer();
    }

    /// The replica's timer is stopped.
    pub fn is_asleep(&self) -> bool {
        self.quiet.state() == ASLEEP
    }

    /// How many times the replica woke (`Quiet::woken`).
    pub fn woken(&self) -> u64 {
        self.quiet.woken()
    }

    fn start_timer(&self) {
        if self.quiet.awake() {
            self.inner.runtime_config().tick(true);
        }
    }

    /// Stops the timer of a replica in `term` (`led`: as its leader), unless it was
    /// woken meanwhile (then it runs again).
    fn stop_timer(&self, from: u8, term: u64, led: bool) {
        self.quiet
            .slept_as
            .store(term | if led { LED } else { 0 }, Ordering::Release);
        if from == ASLEEP {
            return;
        }
        if led {
            // Counted before the state changes, so a wake-up that sees ASLEEP also
            // sees the lease owed (one needless renewal if the advance fails).
            self.quiet.leader_sleeps.fetch_add(1, Ordering::AcqRel);
        }
        if !self.quiet.advance(from, ASLEEP) {
            return;
        }
        self.inner.runtime_config().tick(false);
        if self.quiet.state() != ASLEEP {
            self.inner.runtime_config().tick(true);
        }
    }

    fn facts(&self) -> Facts {
        let metrics = self.inner.metrics();
        let m = metrics.borrow_watched();
        let last = m.last_log_index.unwrap_or(0);
        let applied = m.last_applied.as_ref().map_or(0, |l| l.index);
        let single = m.membership_config.membership().get_joint_config().len() == 1;
        let matched = m.replication.as_ref().is_none_or(|r| {
            r.values()
                .all(|l| l.as_ref().map_or(0, |l| l.index) == last)
        });
        Facts {
            state: m.state,
            term: m.current_term,
            leader: m.current_leader.map(super::replica_id::node_of),
            settled: applied == last && single && matched,
        }
    }

    /// One round of the node's quiet loop (`node::quiet`) for this replica:
    /// - a leader idle for `quiet_after_ms` and settled goes quiet (listed, then
    ///   asleep);
    /// - any other replica sleeps while `beats` vouch for its leader;
    /// - a sleeping follower no beat vouches for has its timer started, within the
    ///   round's budget, and stands for election when it fires;
    /// - an awake follower whose leader's node is lost stops waiting out that
    ///   leader's lease and stands at once (`fast_failover`), within the budget.
    pub fn quiet_round(&self, beats: &FreshBeats, limits: &mut RoundLimits<'_>) -> Round {
        if self.is_asleep() && !self.quiet.recheck_due(beats.round, self.shard_id.0) {
            // The common case with many idle shards: no need to read the metrics.
            let (term, led) = self.quiet.slept_as();
            if led {
                return Round::Listed(term);
            }
            let vouched = &self.quiet.vouched_round;
            let again =
                beats.unchanged && vouched.load(Ordering::Acquire) == beats.round.saturating_sub(1);
            if again || beats.vouch(self.shard_id.0, term, limits.fresh_ms) {
                // A wake-up racing this store leaves a stamp on an awake replica; it
                // is never trusted, because only this loop puts a follower back to
                // sleep, and it stamps the round it does so.
                vouched.store(beats.round, Ordering::Release);
                return Round::Other;
            }
        }
        let f = self.facts();
        match f.state {
            ServerState::Leader => self.leader_round(&f, beats.now_ms, limits.quiet_after_ms),
            ServerState::Follower | ServerState::Learner
                if beats.vouch(self.shard_id.0, f.term, limits.fresh_ms) =>
            {
                let from = self.quiet.state();
                self.stop_timer(from, f.term, false);
                if from != ASLEEP {
                    self.quiet.slept_round.store(beats.round, Ordering::Release);
                }
                self.quiet
                    .vouched_round
                    .store(beats.round, Ordering::Release);
                Round::Other
            }
            // A learner never stands for election: its leader's messages wake it.
            ServerState::Learner => Round::Other,
            _ if self.is_asleep() => {
                // No beat vouches for it in its own term (a candidate put to sleep,
                // or a follower whose leader stopped listing it): asleep in that term
                // from now on, so that the rounds that follow find it unvouched too
                // instead of trusting the term it fell asleep in.
                let (slept_term, led) = self.quiet.slept_as();
                if slept_term != f.term || led {
                    tracing::debug!(shard_id = %self.shard_id, slept_term, led, term = f.term, state = ?f.state, "asleep in a term no beat vouches for: to be woken");
                    self.quiet.slept_as.store(f.term, Ordering::Release);
                }
                self.quiet.vouched_round.store(0, Ordering::Release);
                if *limits.wakes == 0 {
                    return Round::Waiting;
                }
                *limits.wakes -= 1;
                self.start_timer();
                Round::Electing
            }
            ServerState::Follower if f.leader.is_some() => {
                let lost = f.leader.is_some_and(|l| beats.lost(l, limits.fresh_ms));
                if lost
                    && limits.fast_failover
                    && *limits.wakes > 0
                    && self.quiet.stand_once(f.term)
                {
                    *limits.wakes -= 1;
                    self.stand_without_lease();
                    return Round::Electing;
                }
                Round::Other
            }
            _ => Round::Electing,
        }
    }

    fn leader_round(&self, f: &Facts, now_ms: u64, quiet_after_ms: u64) -> Round {
        if quiet_after_ms == 0 || !f.settled || self.quiet.idle_ms(now_ms) < quiet_after_ms {
            self.start_timer();
            return Round::Other;
        }
        match self.quiet.state() {
            AWAKE => {
                self.quiet.advance(AWAKE, QUIETING);
            }
            QUIETING => self.stop_timer(QUIETING, f.term, true),
            _ => {}
        }
        if self.quiet.state() == AWAKE {
            Round::Other
        } else {
            Round::Listed(f.term)
        }
    }

    /// The leader's node is lost: this replica stops honouring the leader's lease (as
    /// a leadership transfer makes every voter do: the transfer is addressed to the
    /// lost leader itself, so only the lease changes) and stands for election with a
    /// pre-vote. The other voters grant once they too find the node lost, or its
    /// lease runs out: failover takes the later detection, not lease plus timeout.
    fn stand_without_lease(&self) {
        let (vote, leader) = {
            let metrics = self.inner.metrics();
            let m = metrics.borrow_watched();
            (m.vote, m.current_leader)
        };
        let Some(leader) = leader else { return };
        let inner = self.inner.clone();
        let shard_id = self.shard_id;
        tokio::spawn(async move {
            let hand_off = openraft::raft::TransferLeaderRequest::new(vote, leader, None);
            if let Err(e) = inner.handle_transfer_leader(hand_off).await {
                tracing::debug!(%shard_id, error = %e, "cannot drop the lost leader's lease");
                return;
            }
            tracing::info!(%shard_id, leader, "the leader's node is lost: standing for election");
            if let Err(e) = inner.trigger().elect(true).await {
                tracing::debug!(%shard_id, error = %e, "cannot stand for election");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_vouches_only_for_its_listed_shards_in_their_terms_while_fresh() {
        let beats = Beats::default();
        beats.record(2, vec![(1, 5), (4, 7), (9, 2)]);
        let fresh = beats.now();
        assert!(fresh.vouch(4, 7, 1_000));
        assert!(!fresh.vouch(4, 8, 1_000), "another term: another leader");
        assert!(!fresh.vouch(3, 5, 1_000), "not listed");
        assert!(
            !fresh.lost(2, 1_000) && !fresh.lost(3, 1_000),
            "fresh, and never heard"
        );
        let later = FreshBeats {
            now_ms: fresh.now_ms + 5_000,
            round: 0,
            unchanged: false,
            beats: fresh.beats.clone(),
            answered: HashMap::new(),
        };
        assert!(
            !later.vouch(4, 7, 1_000),
            "a stale beat vouches for nothing"
        );
        assert!(later.lost(2, 1_000), "a node silent past the limit is lost");
        assert!(!later.lost(3, 1_000), "a node never heard is not judged");
        let answering = FreshBeats {
            answered: HashMap::from([(2, later.now_ms - 10)]),
            ..later
        };
        assert!(
            !answering.lost(2, 1_000),
            "a node whose beats are late but that answers ours is not lost"
        );
    }

    #[test]
    fn a_round_is_unchanged_only_with_the_same_fresh_lists_from_the_same_peers() {
        let beats = Beats::default();
        let mut seen = Vec::new();
        beats.record(2, vec![(1, 5), (4, 7)]);
        beats.record(3, vec![(9, 2)]);
        let mut first = beats.now();
        first.settle(1, &mut seen, 1_000);
        assert!(
            !first.unchanged,
            "the first round has nothing to compare with"
        );
        let mut same = beats.now();
        same.settle(2, &mut seen, 1_000);
        assert!(same.unchanged);
        beats.record(3, vec![(9, 3)]);
        let mut new_term = beats.now();
        new_term.settle(3, &mut seen, 1_000);
        assert!(!new_term.unchanged, "a listing's term changed");
        let mut stale = beats.now();
        stale.now_ms += 2_000;
        stale.settle(4, &mut seen, 1_000);
        assert!(!stale.unchanged, "a beat older than the shortest limit");
        beats.record(4, vec![]);
        let mut new_peer = beats.now();
        new_peer.settle(5, &mut seen, 1_000);
        assert!(!new_peer.unchanged, "a peer came");
    }

    #[test]
    fn a_woken_follower_is_not_vouched_for_again_without_a_search() {
        let q = Quiet::new(true, Arc::default());
        q.vouched_round.store(7, Ordering::Release);
        assert!(q.awake());
        assert_eq!(q.vouched_round.load(Ordering::Acquire), 0);
    }

    #[test]
    fn only_a_wake_from_sleep_or_quieting_counts_as_a_wakeup() {
        let wakeups = Arc::new(Wakeups::default());
        let asleep = Quiet::new(true, wakeups.clone());
        let awake = Quiet::new(false, wakeups.clone());
        assert!(!awake.awake(), "already awake");
        assert_eq!(wakeups.count(), 0);
        assert!(asleep.awake());
        assert!(!asleep.awake());
        assert_eq!(wakeups.count(), 1, "woken once");
        assert!(awake.advance(AWAKE, QUIETING));
        assert!(awake.awake());
        assert_eq!(wakeups.count(), 2, "woken from quieting");
        assert_eq!(asleep.woken(), 1, "the replica's own count");
        assert_eq!(awake.woken(), 1);
        assert!(asleep.advance(AWAKE, ASLEEP));
        assert_eq!(asleep.woken(), 1, "falling asleep changes nothing");
        assert!(asleep.awake());
        assert_eq!(asleep.woken(), 2, "a sleep and a wake since: not unchanged");
    }

    #[test]
    fn a_woken_replica_cannot_be_put_to_sleep_by_a_round_that_read_it_before() {
        let q = Quiet::new(false, Arc::default());
        assert!(q.advance(AWAKE, QUIETING));
        assert!(q.awake(), "woken from quieting");
        assert!(!q.advance(QUIETING, ASLEEP), "the round's step is refused");
        assert_eq!(q.state(), AWAKE);
        assert!(!q.awake(), "already awake");
    }

    #[test]
    fn a_sleeping_replica_rereads_its_raft_state_after_falling_asleep_and_periodically() {
        let q = Quiet::new(true, Arc::default());
        q.slept_round.store(100, Ordering::Release);
        let shard_id = 7;
        assert!(
            q.recheck_due(101, shard_id),
            "the round after it fell asleep"
        );
        let due: Vec<u64> = (102..102 + 3 * RECHECK_EVERY_ROUNDS)
            .filter(|r| q.recheck_due(*r, shard_id))
            .collect();
        assert_eq!(
            due.len(),
            3,
            "once per {RECHECK_EVERY_ROUNDS} rounds: {due:?}"
        );
        assert!(due.windows(2).all(|w| w[1] - w[0] == RECHECK_EVERY_ROUNDS));
        let others: std::collections::BTreeSet<u64> = (0..RECHECK_EVERY_ROUNDS)
            .filter_map(|s| (102..102 + RECHECK_EVERY_ROUNDS).find(|r| q.recheck_due(*r, s)))
            .collect();
        assert_eq!(
            others.len() as u64,
            RECHECK_EVERY_ROUNDS,
            "replicas of different shards are checked in different rounds"
        );
    }

    #[test]
    fn staleness_stays_within_its_spread_and_differs_between_replicas() {
        let limits: Vec<u64> = (1..=64).map(|s| staleness_ms(1_000, 500, s, 2)).collect();
        assert!(limits.iter().all(|l| (1_000..1_500).contains(l)));
        let distinct: std::collections::BTreeSet<_> = limits.iter().collect();
        assert!(distinct.len() > 32, "jitter spreads: {distinct:?}");
        assert_eq!(staleness_ms(7, 0, 3, 3), 7, "no spread, no jitter");
    }
}
