//! Pure domain logic of the inventory: types (`types`), the state transition `apply`
//! (with `staged`, the write buffer of all-or-nothing groups), an in-memory state
//! (`mem`), and the input rules (`validate`). No I/O, no async, and nothing imported
//! from the rest of the crate (scripts/check-placement.sh).

mod apply;
pub mod cluster;
mod mem;
mod staged;
mod types;
pub mod validate;

pub use apply::{PRUNES_PER_ENTRY_MAX, QTY_MAX, Records, ShardState, TIMERS_PER_ENTRY_MAX, apply};
pub use mem::MemState;
pub use types::*;
#[cfg(test)]
mod model;
#[cfg(test)]
mod model_tests;
