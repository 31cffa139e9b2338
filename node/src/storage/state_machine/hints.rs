//! Index hints: what the state machine knows, without reading, about the earliest key
//! of an index (the timer index, the outcome-age index). They let most entries skip
//! the scan of an index, and let a scan start past the tombstones that removing the
//! earliest keys leaves behind (seeking from the start of the index would walk them
//! all, every time). Kept in memory only; reset on start and on snapshot install.

/// What is known of the earliest key of one index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Hint {
    /// Read the index to find out; nothing in it is earlier than `from`.
    Unknown { from: u64 },
    /// The index is empty.
    Empty,
    /// The earliest key's time.
    At(u64),
}

impl Hint {
    pub const UNKNOWN: Hint = Hint::Unknown { from: 0 };

    /// True when nothing in the index is at or before `t`.
    pub fn nothing_at_or_before(self, t: u64) -> bool {
        match self {
            Hint::Unknown { from } => from > t,
            Hint::Empty => true,
            Hint::At(at) => at > t,
        }
    }

    pub fn added(self, t: u64) -> Hint {
        match self {
            Hint::Unknown { from } => Hint::Unknown { from: from.min(t) },
            Hint::Empty => Hint::At(t),
            Hint::At(at) => Hint::At(at.min(t)),
        }
    }

    pub fn removed(self, t: u64) -> Hint {
        match self {
            Hint::At(at) if at == t => Hint::Unknown { from: t },
            other => other,
        }
    }

    /// Where a scan of the index may start: nothing is earlier.
    pub fn scan_from(self) -> Option<u64> {
        match self {
            Hint::Unknown { from } => Some(from),
            Hint::Empty => None,
            Hint::At(at) => Some(at),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Hints {
    pub earliest_timer: Hint,
    pub oldest_outcome: Hint,
}

impl Hints {
    pub const UNKNOWN: Hints = Hints {
        earliest_timer: Hint::UNKNOWN,
        oldest_outcome: Hint::UNKNOWN,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_follow_adds_and_removes() {
        let h = Hint::Empty.added(10).added(5);
        assert_eq!(h, Hint::At(5));
        assert!(h.nothing_at_or_before(4) && !h.nothing_at_or_before(5));
        // Removing the earliest makes it unknown, but nothing is before it.
        let h = h.removed(5);
        assert_eq!(h, Hint::Unknown { from: 5 });
        assert_eq!(h.scan_from(), Some(5));
        assert!(h.nothing_at_or_before(4));
        assert_eq!(Hint::At(5).removed(7), Hint::At(5));
        assert_eq!(Hint::Empty.scan_from(), None);
    }
}
