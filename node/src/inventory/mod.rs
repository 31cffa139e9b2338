//! Pure domain logic of the inventory: types, the state transition `apply`, an
//! in-memory state for tests, and input validation. No I/O, no async.

mod apply;
mod mem;
mod types;
pub mod validate;

pub use apply::{PRUNES_PER_ENTRY_MAX, QTY_MAX, Records, ShardState, TIMERS_PER_ENTRY_MAX, apply};
pub use mem::MemState;
pub use types::*;
#[cfg(test)]
mod model_tests;
