//! The node's wall clock, injected rather than read from the environment: a node runs
//! on the system clock, shifted by a skew that only fault-injection tests set (the
//! hidden `stockpile-node --clock-skew-ms` flag). The shard clock that reservations
//! expire by is derived from it (DESIGN.md: Time).

/// The wall clock, in ms since the Unix epoch, plus a fixed skew.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clock {
    skew_ms: i64,
}

impl Clock {
    /// The system clock as it is.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// The system clock shifted by `skew_ms` (may be negative): for tests only.
    pub fn skewed(skew_ms: i64) -> Clock {
        Clock { skew_ms }
    }

    pub fn skew_ms(&self) -> i64 {
        self.skew_ms
    }

    pub fn now_ms(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        now.saturating_add(self.skew_ms).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skewed_clock_is_shifted_by_its_skew() {
        let system = Clock::system().now_ms();
        let ahead = Clock::skewed(60_000).now_ms();
        let behind = Clock::skewed(-60_000).now_ms();
        assert!(ahead >= system + 59_000 && ahead <= system + 61_000);
        assert!(behind + 59_000 <= system && behind + 61_000 >= system);
        assert_eq!(Clock::skewed(i64::MIN).now_ms(), 0);
    }
}
