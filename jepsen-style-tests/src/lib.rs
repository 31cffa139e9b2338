//! `stockpile-jepsen`: Jepsen-style tests of Stockpile.
//!
//! The library holds what must be trustworthy on its own and is unit-tested with
//! hand-made histories: the history format (`history`), the model of one SKU and the
//! Wing–Gong–Lowe linearizability search (`checker`), the invariants that need no search
//! (`invariants`), the recorder of a run's history (`recorder`), and the HTML report
//! (`report`). The binary runs real nodes in a
//! network namespace, injects faults and records histories.

pub mod checker;
pub mod history;
pub mod invariants;
pub mod recorder;
pub mod report;
