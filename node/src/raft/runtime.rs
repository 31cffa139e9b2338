//! openraft's async runtime for Stockpile: tokio, except for the bounded channels
//! inside every Raft group, which allocate as they fill.
//!
//! Why: tokio's `mpsc` allocates a block of 32 message slots when a channel is made
//! and keeps at least one for the channel's life. openraft makes five per Raft group
//! (API, snapshots, notifications, state machine, stream appends), about 31 KiB per
//! group measured by call site, so a node with 10,000 quiet shards held ~300 MiB of
//! channel blocks (docs/PERFORMANCE.md, "Idle shards"). These channels keep a
//! `VecDeque` that grows to the most messages ever queued at once (one or two on a
//! quiet group) and a tokio `Semaphore` for the bound.
//!
//! Everything but `Mpsc` is tokio's, through `openraft_rt_tokio::TokioRuntime`.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use openraft::OptionalSend;
use openraft::async_runtime::{
    AsyncRuntime, Mpsc, MpscReceiver, MpscSender, MpscWeakSender, SendError, TryRecvError,
};
use openraft_rt_tokio::TokioRuntime;
use tokio::sync::Semaphore;

/// An emptied queue with room for more messages than this gives its memory back: a
/// burst (an election storm while thousands of groups start) must not pin its peak in
/// every group for the group's life. 4 is `VecDeque`'s first allocation.
const QUEUE_KEPT_CAPACITY_MAX: usize = 4;

/// The async runtime named in `types::TypeConfig`.
pub struct Runtime(TokioRuntime);

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Runtime(tokio, lean channels)")
    }
}

type Tokio = TokioRuntime;

impl AsyncRuntime for Runtime {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as AsyncRuntime>::Sleep;
    type Instant = <Tokio as AsyncRuntime>::Instant;
    type TimeoutError = <Tokio as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Tokio as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = <Tokio as AsyncRuntime>::ThreadLocalRng;
    type Mpsc = LeanMpsc;
    type Watch = <Tokio as AsyncRuntime>::Watch;
    type Oneshot = <Tokio as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::Mutex<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        Tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Tokio::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        Tokio::thread_rng()
    }

    fn new(threads: usize) -> Self {
        Runtime(Tokio::new(threads))
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.0.block_on(future)
    }
}

/// Bounded multi-producer, single-consumer channels that allocate as they fill.
pub struct LeanMpsc;

impl Mpsc for LeanMpsc {
    type Sender<T: OptionalSend> = Sender<T>;
    type Receiver<T: OptionalSend> = Receiver<T>;
    type WeakSender<T: OptionalSend> = WeakSender<T>;

    fn channel<T: OptionalSend>(buffer: usize) -> (Sender<T>, Receiver<T>) {
        let capacity = buffer.clamp(1, Semaphore::MAX_PERMITS);
        let chan = Arc::new(Chan {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                rx_waker: None,
                senders: 1,
                rx_closed: false,
            }),
            free_slots: Semaphore::new(capacity),
            capacity,
        });
        (Sender(chan.clone()), Receiver(chan))
    }
}

struct Chan<T> {
    state: Mutex<State<T>>,
    /// One permit per free slot: a send takes one before it queues its message (and
    /// waits, in order, while there is none); a receive gives one back. Closed when
    /// the receiver is dropped, which fails the waiting sends.
    free_slots: Semaphore,
    /// The bound: queued messages never outnumber it (asserted on every send).
    capacity: usize,
}

struct State<T> {
    queue: VecDeque<T>,
    /// The receiver's waker while it waits on an empty queue.
    rx_waker: Option<Waker>,
    /// Live `Sender`s (weak ones not counted): at 0 the receiver sees the end.
    senders: usize,
    rx_closed: bool,
}

impl<T> Chan<T> {
    /// The state. A panic while it is held cannot leave it half changed (each
    /// critical section is one push, pop or count), so a poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the next message and gives its slot back.
    fn take(&self, state: &mut State<T>) -> Option<T> {
        let msg = state.queue.pop_front()?;
        if state.queue.is_empty() && state.queue.capacity() > QUEUE_KEPT_CAPACITY_MAX {
            state.queue = VecDeque::new();
        }
        self.free_slots.add_permits(1);
        Some(msg)
    }
}

pub struct Sender<T>(Arc<Chan<T>>);

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Sender(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.0.lock();
            assert!(
                state.senders > 0,
                "a channel's sender count went below zero"
            );
            state.senders -= 1;
            if state.senders == 0 {
                state.rx_waker.take()
            } else {
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T: OptionalSend> MpscSender<LeanMpsc, T> for Sender<T> {
    async fn send(&self, msg: T) -> Result<(), SendError<T>> {
        let Ok(permit) = self.0.free_slots.acquire().await else {
            return Err(SendError(msg));
        };
        let waker = {
            let mut state = self.0.lock();
            if state.rx_closed {
                return Err(SendError(msg));
            }
            state.queue.push_back(msg);
            assert!(
                state.queue.len() <= self.0.capacity,
                "a channel queued more messages than its bound"
            );
            state.rx_waker.take()
        };
        // The receiver gives the slot back when it takes the message.
        permit.forget();
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    fn downgrade(&self) -> WeakSender<T> {
        WeakSender(Arc::downgrade(&self.0))
    }
}

pub struct WeakSender<T>(Weak<Chan<T>>);

impl<T> Clone for WeakSender<T> {
    fn clone(&self) -> Self {
        WeakSender(self.0.clone())
    }
}

impl<T: OptionalSend> MpscWeakSender<LeanMpsc, T> for WeakSender<T> {
    fn upgrade(&self) -> Option<Sender<T>> {
        let chan = self.0.upgrade()?;
        {
            let mut state = chan.lock();
            if state.senders == 0 {
                return None;
            }
            state.senders += 1;
        }
        Some(Sender(chan))
    }
}

pub struct Receiver<T>(Arc<Chan<T>>);

impl<T> Receiver<T> {
    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.0.lock();
        if let Some(msg) = self.0.take(&mut state) {
            return Poll::Ready(Some(msg));
        }
        if state.senders == 0 {
            return Poll::Ready(None);
        }
        match &state.rx_waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.rx_waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.0.free_slots.close();
        let queued = {
            let mut state = self.0.lock();
            state.rx_closed = true;
            std::mem::take(&mut state.queue)
        };
        // Queued messages (and the responders they carry) are dropped outside the lock.
        drop(queued);
    }
}

impl<T: OptionalSend> MpscReceiver<T> for Receiver<T> {
    fn recv(&mut self) -> impl Future<Output = Option<T>> + OptionalSend {
        // Cancel-safe: a message leaves the queue only in a poll that returns it.
        std::future::poll_fn(move |cx| self.poll_recv(cx))
    }

    fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut state = self.0.lock();
        match self.0.take(&mut state) {
            Some(msg) => Ok(msg),
            None if state.senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// openraft's own conformance suite for runtimes: spawn, time, select, watch,
    /// oneshot, mutex and the channel semantics (close, weak senders, backpressure,
    /// order, peeking).
    #[test]
    fn runtime_passes_openraft_suite() {
        openraft_rt::testing::Suite::<Runtime>::test_all();
    }

    #[tokio::test]
    async fn a_channel_holds_no_slots_until_it_is_used() {
        let (tx, mut rx) = LeanMpsc::channel::<u64>(65_536);
        assert_eq!(tx.0.lock().queue.capacity(), 0);
        for i in 0..3 {
            tx.send(i).await.unwrap();
        }
        assert_eq!(rx.try_recv().unwrap(), 0);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(tx.0.free_slots.available_permits(), 65_536);
    }

    #[tokio::test]
    async fn an_emptied_queue_gives_back_a_burst_s_memory() {
        let (tx, mut rx) = LeanMpsc::channel::<u64>(1_000);
        for i in 0..500 {
            tx.send(i).await.unwrap();
        }
        assert!(tx.0.lock().queue.capacity() >= 500);
        for i in 0..500 {
            assert_eq!(rx.recv().await, Some(i));
        }
        assert!(tx.0.lock().queue.capacity() <= QUEUE_KEPT_CAPACITY_MAX);
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_when_the_last_sender_goes() {
        let (tx, mut rx) = LeanMpsc::channel::<u64>(4);
        let weak = tx.downgrade();
        let waiter = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        drop(tx);
        assert_eq!(waiter.await.unwrap(), None);
        assert!(weak.upgrade().is_none());
    }

    #[tokio::test]
    async fn a_waiting_sender_fails_when_the_receiver_goes() {
        let (tx, rx) = LeanMpsc::channel::<u64>(1);
        tx.send(1).await.unwrap();
        let tx2 = tx.clone();
        let waiter = tokio::spawn(async move { tx2.send(2).await });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(waiter.await.unwrap().unwrap_err().0, 2);
    }
}
