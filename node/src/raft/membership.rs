//! The Raft steps of a replica move, run on the shard's leader (the procedure that
//! orders them is `node::moves`): allocate a replica id, add a learner, replace one
//! voter by another with a guarded change, remove a learner, finish a half-done
//! (joint) change. Every change is guarded by the membership the caller decided on:
//! openraft's `LastMembershipLogId` precondition refuses it if another change came
//! in between, so two moves of one shard can never interleave.

use std::collections::{BTreeMap, BTreeSet};

use openraft::ChangeMembers;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::raft::Precondition;
use openraft::type_config::async_runtime::WatchReceiver;

use super::replica_id::{self, node_of};
use super::types::LogId;
use super::{ShardRaft, role};

/// Why a membership step did not happen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("this replica is not the shard's leader")]
    NotLeader { leader: Option<u64> },
    /// The membership is not the one the step was decided on (another change came in
    /// between, or one is still in progress): decide again from the current one.
    #[error("the membership changed meanwhile: {0}")]
    Conflict(String),
    /// openraft refused the change as asked (for example a learner that is missing).
    #[error("{0}")]
    Refused(String),
    /// The change was proposed and its fate is unknown (leadership lost, shutdown).
    #[error("{0}")]
    Unknown(String),
}

/// A shard's membership as the leader sees it, in node ids, with the mark that guards
/// a change decided on it.
#[derive(Clone, Debug)]
pub struct Members {
    /// Voter node → its replica id.
    pub voters: BTreeMap<u64, u64>,
    /// Learner node → its replica id.
    pub learners: BTreeMap<u64, u64>,
    pub joint: bool,
    /// The effective membership's log index (the epoch's `conf_ver`).
    pub index: u64,
    mark: Option<LogId>,
}

impl ShardRaft {
    /// The effective membership (as this replica knows it).
    pub fn members(&self) -> Members {
        let m = self.inner.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let by_node = |ids: &mut dyn Iterator<Item = u64>| -> BTreeMap<u64, u64> {
            ids.map(|id| (node_of(id), id)).collect()
        };
        Members {
            voters: by_node(&mut membership.voter_ids()),
            learners: by_node(&mut membership.learner_ids()),
            joint: membership.get_joint_config().len() > 1,
            index: m.membership_config.log_id().map(|l| l.index).unwrap_or(0),
            mark: *m.membership_config.log_id(),
        }
    }

    /// A fresh replica id for a replica on `node` (see `replica_id`): this leader's
    /// term and its next allocation in that term.
    pub fn allocate_replica_id(&self, node: u64) -> Result<u64, ChangeError> {
        let m = self.inner.metrics().borrow_watched().clone();
        if role(m.state) != "leader" || m.current_leader != Some(self.replica_id) {
            return Err(ChangeError::NotLeader {
                leader: m.current_leader.map(node_of),
            });
        }
        let mut allocated = self.allocated.lock().unwrap_or_else(|p| p.into_inner());
        if allocated.0 != m.current_term {
            *allocated = (m.current_term, 0);
        }
        let id = replica_id::compose(m.current_term, allocated.1, node).ok_or_else(|| {
            ChangeError::Refused(format!(
                "term {} has allocated {} replica ids, the most one term may; retry after a leader change",
                m.current_term, allocated.1
            ))
        })?;
        allocated.1 += 1;
        Ok(id)
    }

    /// Adds `replica` (at `addr`) as a learner, without waiting for it to catch up.
    pub async fn add_learner(
        &self,
        replica: u64,
        addr: &str,
        on: &Members,
    ) -> Result<(), ChangeError> {
        let change =
            ChangeMembers::AddNodes(BTreeMap::from([(replica, openraft::BasicNode::new(addr))]));
        self.change(change, on).await
    }

    /// Replaces the voter on node `from` by the learner on node `to`, in one guarded
    /// change (openraft passes through a joint membership); the old replica leaves the
    /// membership entirely.
    pub async fn replace_voter(&self, from: u64, to: u64, on: &Members) -> Result<(), ChangeError> {
        let (Some(old), Some(new)) = (on.voters.get(&from), on.learners.get(&to)) else {
            return Err(ChangeError::Conflict(format!(
                "node {from} holds no voter or node {to} no learner"
            )));
        };
        let voters: BTreeSet<u64> = on
            .voters
            .values()
            .filter(|id| *id != old)
            .chain(std::iter::once(new))
            .copied()
            .collect();
        self.change(ChangeMembers::ReplaceAllVoters(voters), on)
            .await
    }

    /// Removes the learner on node `node` (a move rolled back).
    pub async fn remove_learner(&self, node: u64, on: &Members) -> Result<(), ChangeError> {
        let Some(id) = on.learners.get(&node) else {
            return Ok(());
        };
        self.change(ChangeMembers::RemoveNodes(BTreeSet::from([*id])), on)
            .await
    }

    /// Finishes a joint membership left by an interrupted change: the last voter set
    /// of the joint configuration becomes the membership.
    pub async fn finish_joint(&self, on: &Members) -> Result<(), ChangeError> {
        let m = self.inner.metrics().borrow_watched().clone();
        let Some(last) = m.membership_config.membership().get_joint_config().last() else {
            return Ok(());
        };
        self.change(ChangeMembers::ReplaceAllVoters(last.clone()), on)
            .await
    }

    async fn change(
        &self,
        change: ChangeMembers<u64, openraft::BasicNode>,
        on: &Members,
    ) -> Result<(), ChangeError> {
        let guard = Precondition::LastMembershipLogId {
            last_membership_log_id: on.mark,
        };
        self.wake();
        match self
            .inner
            .change_membership_if(change, false, [guard])
            .await
        {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ChangeError::NotLeader {
                    leader: f.leader_id.map(node_of),
                })
            }
            Err(RaftError::APIError(ClientWriteError::PreconditionFailed(e))) => {
                Err(ChangeError::Conflict(e.to_string()))
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ChangeError::Refused(e.to_string()))
            }
            Err(e) => Err(ChangeError::Unknown(e.to_string())),
        }
    }
}
