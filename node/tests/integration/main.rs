//! Every integration test of the node, in one test binary (one link of RocksDB
//! instead of one per file): real `stockpile-node` processes on loopback driven
//! through the client, openraft's storage suite, and the state machine against the
//! in-memory model.

mod common;

mod client;
mod cluster;
mod hardening;
mod inventory;
mod operability;
mod state_machine_vs_model;
mod storage_suite;
