//! openraft's storage conformance suite (`openraft::testing::log::Suite`) run over
//! Stockpile's RocksDB log store and state machine: every test gets a fresh
//! RocksDB in a temporary directory, with the group-commit syncer running.

use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use stockpile_node::raft::types::TypeConfig;
use stockpile_node::router::{ShardId, SkuRange};
use stockpile_node::storage::{
    ApplyOrder, ApplyStats, LogStore, LogSyncer, StateMachineStore, Store, WriteFence,
    WritePathStats,
};
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RocksBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = TempDir::new().expect("temp dir");
        let store = Store::open(&dir.path().join("db")).expect("open rocksdb");
        let syncer = LogSyncer::start(&store, Arc::new(WritePathStats::default())).expect("syncer");
        let log = LogStore::new(ShardId(1), &store, syncer);
        let sm = StateMachineStore::open(
            ShardId(1),
            1,
            SkuRange::default(),
            &store,
            dir.path().join("snapshots"),
            Arc::new(ApplyStats::default()),
            WriteFence::default(),
        )
        .expect("state machine")
        // The suite's fixtures skip indexes; a node's state machine refuses gaps.
        .with_order(ApplyOrder::Increasing);
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_over_rocksdb() {
    Suite::test_all(RocksBuilder)
        .await
        .expect("openraft storage suite");
}
