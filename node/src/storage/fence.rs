//! A replica's permission to write its state machine, closed before its data is
//! deleted (a move dropped it, a merge retired it).
//!
//! Why it exists: openraft's state machine worker outlives `Raft::shutdown`. The core
//! task is joined, but the worker drains the commands already queued to it, and a
//! snapshot build runs on a task of its own. Without a fence, an apply still under
//! way when the replica stopped could land after the range delete, leaving stock
//! records and an applied index behind; a later replica of the same shard on this
//! node then took that index as its own and received only the entries after it,
//! holding a state no other replica held. The Raft log needs no fence: openraft
//! writes it from the core task, which shutdown joins.

use std::sync::{Arc, RwLock};

use super::error::{Result, StorageError};

/// Shared by a replica's state machine, its snapshot builder and its owner. Writes
/// take the read side, so they run concurrently; `close` takes the write side, so it
/// waits for the writes under way and every later one is refused.
#[derive(Clone, Debug, Default)]
pub struct WriteFence {
    /// True once closed; never opens again (a replica started later gets a new fence).
    closed: Arc<RwLock<bool>>,
}

impl WriteFence {
    /// Runs `write` unless the fence is closed; a close waits until it has returned.
    pub fn write<T>(&self, shard_id: u64, write: impl FnOnce() -> Result<T>) -> Result<T> {
        let closed = self.closed.read().unwrap_or_else(|p| p.into_inner());
        if *closed {
            return Err(StorageError::Retired { shard_id });
        }
        write()
    }

    /// Waits for the writes under way, then refuses every later one.
    pub fn close(&self) {
        *self.closed.write().unwrap_or_else(|p| p.into_inner()) = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn writes_after_close_are_refused() {
        let fence = WriteFence::default();
        assert_eq!(fence.write(7, || Ok(1)).unwrap(), 1);
        fence.close();
        let ran = AtomicBool::new(false);
        let err = fence
            .write(7, || {
                ran.store(true, Ordering::SeqCst);
                Ok(())
            })
            .unwrap_err();
        assert!(!ran.load(Ordering::SeqCst), "a write ran after close");
        assert!(
            matches!(err, StorageError::Retired { shard_id: 7 }),
            "{err}"
        );
    }

    #[test]
    fn close_waits_for_a_write_under_way() {
        let fence = WriteFence::default();
        let finished = Arc::new(AtomicBool::new(false));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let writer = {
            let (fence, finished) = (fence.clone(), finished.clone());
            std::thread::spawn(move || {
                fence.write(7, || {
                    started_tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(100));
                    finished.store(true, Ordering::SeqCst);
                    Ok(())
                })
            })
        };
        started_rx.recv().unwrap();
        fence.close();
        assert!(
            finished.load(Ordering::SeqCst),
            "close returned before the write under way ended"
        );
        writer.join().unwrap().unwrap();
    }
}
