//! Raft input validation at the service boundary: every message a peer sends is
//! checked here before a shard's openraft instance sees it.
//!
//! openraft trusts its peers. One `Vote` with term 2^64−1 is granted, and the next
//! election's term wraps around: the shard has no leader again, across restarts. So a
//! message whose terms or indexes could overflow, whose terms jump absurdly past this
//! replica's, or whose shape openraft assumes (consecutive entries, a sender that is
//! the leader or candidate it names) is refused, counted and logged; nothing of it
//! reaches the shard. This guards against buggy peers as well as strangers (TLS and
//! node identities keep strangers out; this keeps a node safe from its own cluster).

use super::types::{Entry, LogId, SnapshotMeta, TypeConfig, Vote};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};

/// No term or log index may reach this: 2^62 elections or entries take longer than any
/// cluster lives, and the headroom above it can never wrap.
pub const TERM_MAX: u64 = 1 << 62;
pub const INDEX_MAX: u64 = 1 << 62;

/// A candidate's term may run ahead of this replica's by at most this much (pre-vote
/// keeps real elections to one term at a time). Checked on votes only: a leader's
/// AppendEntries may legitimately carry a far higher term to a new, empty replica.
pub const TERM_JUMP_MAX: u64 = 1 << 20;

/// A refused message: what it was and what was wrong, for the log and the sender.
#[derive(Debug, thiserror::Error)]
#[error("refused {what} from node {from}: {problem}")]
pub struct Refused {
    pub what: &'static str,
    pub from: u64,
    pub problem: String,
}

struct Check {
    what: &'static str,
    from: u64,
}

impl Check {
    fn refuse(&self, problem: String) -> Refused {
        Refused {
            what: self.what,
            from: self.from,
            problem,
        }
    }

    /// The sender is the node of the replica the vote names; its term is below `TERM_MAX`, and, for
    /// elections, at most `TERM_JUMP_MAX` past `local_term`.
    fn vote(&self, vote: &Vote, local_term: Option<u64>) -> Result<u64, Refused> {
        let leader = vote.leader_id();
        if super::replica_id::node_of(leader.node_id) != self.from {
            return Err(self.refuse(format!(
                "it names replica {} (on node {}) as its {}",
                leader.node_id,
                super::replica_id::node_of(leader.node_id),
                if self.what == "append_entries" || self.what == "install_snapshot" {
                    "leader"
                } else {
                    "candidate"
                }
            )));
        }
        if leader.term >= TERM_MAX {
            return Err(self.refuse(format!(
                "term {} is not below the largest term {TERM_MAX}",
                leader.term
            )));
        }
        if let Some(local) = local_term
            && leader.term > local.saturating_add(TERM_JUMP_MAX)
        {
            return Err(self.refuse(format!(
                "term {} jumps more than {TERM_JUMP_MAX} past this replica's term {local}",
                leader.term
            )));
        }
        Ok(leader.term)
    }

    /// A log id below `INDEX_MAX` whose term is at most the sender's term.
    fn log_id(&self, name: &str, id: Option<&LogId>, term: u64) -> Result<(), Refused> {
        let Some(id) = id else { return Ok(()) };
        if id.index >= INDEX_MAX {
            return Err(self.refuse(format!(
                "{name} index {} is not below {INDEX_MAX}",
                id.index
            )));
        }
        if id.leader_id.term > term {
            return Err(self.refuse(format!(
                "{name} has term {}, above the sender's term {term}",
                id.leader_id.term
            )));
        }
        Ok(())
    }

    /// Entries follow `prev` one index at a time, with terms that never fall and never
    /// pass the sender's.
    fn entries(&self, prev: Option<&LogId>, entries: &[Entry], term: u64) -> Result<(), Refused> {
        let first = prev.map_or(0, |p| p.index + 1);
        let mut last_term = prev.map_or(0, |p| p.leader_id.term);
        for (expected, (i, e)) in (first..).zip(entries.iter().enumerate()) {
            self.log_id("an entry", Some(&e.log_id), term)?;
            if e.log_id.index != expected {
                return Err(self.refuse(format!(
                    "entry {i} has index {}, expected {expected}",
                    e.log_id.index
                )));
            }
            if e.log_id.leader_id.term < last_term {
                return Err(self.refuse(format!(
                    "entry {i} has term {}, below the term {last_term} before it",
                    e.log_id.leader_id.term
                )));
            }
            last_term = e.log_id.leader_id.term;
        }
        Ok(())
    }
}

pub fn vote_request(
    req: &VoteRequest<TypeConfig>,
    from: u64,
    local_term: u64,
    what: &'static str,
) -> Result<(), Refused> {
    let c = Check { what, from };
    let term = c.vote(&req.vote, Some(local_term))?;
    c.log_id("last_log_id", req.last_log_id.as_ref(), term)
}

pub fn append_entries(req: &AppendEntriesRequest<TypeConfig>, from: u64) -> Result<(), Refused> {
    let c = Check {
        what: "append_entries",
        from,
    };
    let term = c.vote(&req.vote, None)?;
    c.log_id("prev_log_id", req.prev_log_id.as_ref(), term)?;
    c.log_id("leader_commit", req.leader_commit.as_ref(), term)?;
    c.entries(req.prev_log_id.as_ref(), &req.entries, term)
}

pub fn install_snapshot(vote: &Vote, meta: &SnapshotMeta, from: u64) -> Result<(), Refused> {
    let c = Check {
        what: "install_snapshot",
        from,
    };
    let term = c.vote(vote, None)?;
    c.log_id("last_log_id", meta.last_log_id.as_ref(), term)
}

pub fn transfer_leader(
    req: &TransferLeaderRequest<TypeConfig>,
    from: u64,
    local_term: u64,
) -> Result<(), Refused> {
    let c = Check {
        what: "transfer_leader",
        from,
    };
    let term = c.vote(req.from_leader(), Some(local_term))?;
    c.log_id("last_log_id", req.last_log_id(), term)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::ShardRequest;
    use openraft::vote::RaftLeaderId;

    type LeaderId = openraft::vote::leader_id_adv::LeaderId<u64, u64>;

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId {
            leader_id: LeaderId::new(term, node),
            index,
        }
    }

    fn vote(term: u64, node: u64) -> Vote {
        Vote::new(term, node)
    }

    fn vote_req(term: u64, node: u64) -> VoteRequest<TypeConfig> {
        VoteRequest::new(vote(term, node), Some(log_id(term.min(3), node, 7)))
    }

    #[test]
    fn a_vote_with_an_overflowing_term_is_refused() {
        let err = vote_request(&vote_req(u64::MAX, 2), 2, 5, "vote").unwrap_err();
        assert!(
            err.problem.contains("is not below the largest term"),
            "{err}"
        );
        assert!(vote_request(&vote_req(TERM_MAX - 1, 2), 2, TERM_MAX - 2, "vote").is_ok());
    }

    #[test]
    fn a_vote_that_jumps_absurdly_is_refused() {
        let err = vote_request(&vote_req(5 + TERM_JUMP_MAX + 1, 2), 2, 5, "pre_vote").unwrap_err();
        assert!(err.problem.contains("jumps more than"), "{err}");
        assert!(vote_request(&vote_req(6, 2), 2, 5, "vote").is_ok());
    }

    #[test]
    fn a_vote_for_another_node_is_refused() {
        let err = vote_request(&vote_req(6, 3), 2, 5, "vote").unwrap_err();
        assert!(err.problem.contains("on node 3"), "{err}");
    }

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: log_id(term, 1, index),
            payload: openraft::EntryPayload::Normal(ShardRequest {
                now_ms: 0,
                retention: Default::default(),
                groups: vec![],
            }),
        }
    }

    fn append(prev: Option<LogId>, entries: Vec<Entry>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(4, 1),
            prev_log_id: prev,
            leader_commit: Some(log_id(4, 1, 3)),
            entries,
        }
    }

    #[test]
    fn append_entries_must_be_consecutive_and_within_the_leaders_term() {
        let prev = Some(log_id(3, 1, 9));
        assert!(append_entries(&append(prev, vec![entry(3, 10), entry(4, 11)]), 1).is_ok());
        assert!(append_entries(&append(None, vec![entry(1, 0)]), 1).is_ok());
        let gap = append_entries(&append(prev, vec![entry(4, 12)]), 1).unwrap_err();
        assert!(gap.problem.contains("expected 10"), "{gap}");
        let back = append_entries(&append(prev, vec![entry(4, 10), entry(3, 11)]), 1).unwrap_err();
        assert!(back.problem.contains("below the term"), "{back}");
        let ahead = append_entries(&append(prev, vec![entry(5, 10)]), 1).unwrap_err();
        assert!(ahead.problem.contains("above the sender's term"), "{ahead}");
        let huge = append_entries(&append(Some(log_id(3, 1, u64::MAX)), vec![]), 1).unwrap_err();
        assert!(huge.problem.contains("not below"), "{huge}");
        let impostor = append_entries(&append(prev, vec![]), 2).unwrap_err();
        assert!(
            impostor.problem.contains("(on node 1) as its leader"),
            "{impostor}"
        );
    }
}
