//! Every integration test of the node, in one test binary (one link of RocksDB
//! instead of one per file): real `stockpile-node` processes on loopback driven
//! through the client, openraft's storage suite, and the state machine against the
//! in-memory model.

#![allow(
    clippy::too_many_lines,
    reason = "each test is one scenario on a real cluster, read top to bottom"
)]

mod common;

mod client;
mod cluster;
mod elastic;
mod error_contract;
mod hardening;
mod http;
mod inventory;
mod merge;
mod operability;
mod quiet;
mod security;
mod split;
mod state_machine_vs_model;
mod storage_suite;
