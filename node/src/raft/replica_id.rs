//! Replica ids: the openraft member ids of a shard's group (DESIGN.md: a replica has its
//! own id, never reused), distinct from node ids.
//!
//! Why ids are never reused: openraft cannot tell a replica that lost its data from a
//! new one with the same id, and a reused id whose old incarnation voted can help elect
//! a second leader. Why this layout instead of an allocator in the meta shard:
//! uniqueness matters only inside one shard's group, and the group already has a value
//! no two leaders share, the leader's term. A leader allocates
//! `term << 24 | seq << 16 | node`, with `seq` counting its own allocations in that
//! term (a restarted leader must win a new term first), so no round trip and no
//! stored counter is needed, and the node that holds a replica is read from its id
//! (the network routes by it; the guard checks senders by it).
//!
//! The replicas of the cluster's first layout (from the config) have term 0 and seq 0,
//! so their ids equal their node ids, as before replica ids existed; an allocated id
//! always has a term of at least 1, so it never equals a seeded one.

/// Node ids fit in the low 16 bits (config validation keeps them there).
pub const NODE_ID_MAX: u64 = 0xFFFF;
/// Replicas one leader may allocate in one term: bounded so that the term keeps 40 bits.
pub const SEQ_MAX: u64 = 0xFF;
/// Terms above this cannot allocate (the guard already refuses terms near `u64::MAX`).
pub const TERM_MAX: u64 = (1 << 40) - 1;

/// The node holding replica `replica_id`.
pub fn node_of(replica_id: u64) -> u64 {
    replica_id & NODE_ID_MAX
}

/// The id of the replica allocated `seq`-th by the leader of `term`, on `node`.
pub fn compose(term: u64, seq: u64, node: u64) -> Option<u64> {
    if term == 0 || term > TERM_MAX || seq > SEQ_MAX || node > NODE_ID_MAX {
        return None;
    }
    Some(term << 24 | seq << 16 | node)
}

/// The seeded replica of `node` (the config's first layout).
pub fn seeded(node: u64) -> u64 {
    assert!(node <= NODE_ID_MAX, "node ids are validated to fit 16 bits");
    node
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composed_ids_name_their_node_and_never_equal_a_seeded_id() {
        let id = compose(7, 3, 4).expect("in range");
        assert_eq!(node_of(id), 4);
        assert_ne!(id, seeded(4));
        assert_ne!(compose(7, 4, 4), Some(id), "another seq, another id");
        assert_ne!(compose(8, 3, 4), Some(id), "another term, another id");
        assert_eq!(node_of(seeded(9)), 9);
    }

    #[test]
    fn out_of_range_parts_allocate_nothing() {
        assert_eq!(compose(0, 0, 1), None, "term 0 is the seeded layout's");
        assert_eq!(compose(1, SEQ_MAX + 1, 1), None);
        assert_eq!(compose(TERM_MAX + 1, 0, 1), None);
        assert_eq!(compose(1, 0, NODE_ID_MAX + 1), None);
    }
}
