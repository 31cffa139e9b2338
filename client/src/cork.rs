//! A connection's writes held back until the writing task has let the others run:
//! many small replies on one connection leave in one system call instead of one each.
//!
//! Why: an HTTP/2 connection is one task, and every call on it is another. When an
//! entry applies, it completes the calls of all its ops at once; each call's task hands
//! its reply to the connection and wakes it, and tokio runs a task woken that way next
//! (its LIFO slot), so the connection wrote and flushed one reply at a time: during
//! `uniform --coalesce off` a leader made ~2 `writev` calls per op, many of them
//! back-to-back 100-byte TLS records on one socket (docs/PERFORMANCE.md). On loopback
//! each costs the sender the receiver's network stack too. A client's concurrent
//! requests, and a leader's AppendEntries to one follower, went out the same way.
//!
//! Servers wrap each accepted connection (the node's `server`); clients dial through
//! `Dialer`, under tonic's TLS (the client library's channels, the node's peers).
//!
//! How: `poll_flush` with bytes waiting first wakes its own task and returns `Pending`
//! once. tokio puts a task that woke itself at the back of its run queue, so every call
//! task ready by then hands over its reply before the connection polls again; the next
//! flush writes everything in one go. The hold-back is one pass of the run queue, never
//! a timer, and only while the connection is busy (it sent less than
//! `BUSY_WITHIN_US` ago): a lone client's reply would wait behind the Raft work its
//! own write queued (+45 µs at p50 when every flush yielded), with nothing to share
//! the write with.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::codegen::Service;
use tonic::codegen::http::Uri;
use tonic::transport::server::Connected;

/// Bytes held back at most; a write beyond first sends what is held. Sized to hold a
/// run queue's worth of small replies (a decrement's is ~100 bytes) in a few TLS records.
pub const HELD_BYTES_MAX: usize = 64 * 1024;

/// Buffer capacity a connection keeps between bursts at most (a few dozen replies).
pub const HELD_KEPT_BYTES_MAX: usize = 8 * 1024;

/// A connection that sent less than this long ago is busy: its flushes yield once. A
/// loaded connection sends every few tens of µs; one sequential client, about once a
/// millisecond.
pub const BUSY_WITHIN_US: u64 = 250;

/// `inner` with its writes held back until a flush has yielded once.
pub struct Corked<T> {
    inner: T,
    /// Written and not yet handed to `inner`, from `sent` on; at most `HELD_BYTES_MAX`.
    held: Vec<u8>,
    sent: usize,
    /// The current flush has already yielded: the next poll sends.
    yielded: bool,
    /// When held bytes were last handed to `inner`.
    last_sent: Option<Instant>,
}

impl<T> Corked<T> {
    /// `inner`, nothing held.
    pub fn new(inner: T) -> Self {
        Corked {
            inner,
            held: Vec::new(),
            sent: 0,
            yielded: false,
            last_sent: None,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite + Unpin> Corked<T> {
    /// Hands every held byte to `inner`.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if !self.held.is_empty() {
            self.last_sent = Some(Instant::now());
        }
        self.held.clear();
        self.sent = 0;
        // A burst's buffer is not kept: a node may hold thousands of idle connections.
        if self.held.capacity() > HELD_KEPT_BYTES_MAX {
            self.held = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Whether this connection sent so recently that more replies are likely on the way.
    fn busy(&self) -> bool {
        self.last_sent
            .is_some_and(|t| t.elapsed() < Duration::from_micros(BUSY_WITHIN_US))
    }

    /// Room for more held bytes, sending what is held when full.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.held.len() >= HELD_BYTES_MAX {
            ready!(self.poll_send(cx))?;
        }
        Poll::Ready(Ok(HELD_BYTES_MAX - self.held.len()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Corked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.held.is_empty() && buf.len() >= HELD_BYTES_MAX {
            // A large write gains nothing from waiting; no copy.
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        let room = ready!(this.poll_room(cx))?;
        let n = buf.len().min(room);
        this.held.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.held.is_empty() && total >= HELD_BYTES_MAX {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        let mut room = ready!(this.poll_room(cx))?;
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(room);
            this.held.extend_from_slice(&b[..take]);
            n += take;
            room -= take;
            if room == 0 {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.sent < this.held.len() && !this.yielded && this.busy() {
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_send(cx))?;
        this.yielded = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Corked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: Connected> Connected for Corked<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// A tonic connector whose TCP connections are corked: `Endpoint::connect_with_connector_lazy`
/// with it behaves as `connect_lazy` (TLS, when the endpoint has it, goes on top).
#[derive(Clone, Debug)]
pub struct Dialer {
    http: HttpConnector,
}

impl Dialer {
    /// TCP_NODELAY on, as on every Stockpile connection; `local_address` binds the
    /// source address (a node dials its peers from its own address).
    pub fn new(connect_timeout: Duration, local_address: Option<std::net::IpAddr>) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_local_address(local_address);
        Dialer { http }
    }
}

type DialError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Uri> for Dialer {
    type Response = TokioIo<Corked<TcpStream>>;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, DialError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), DialError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.http.call(uri);
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            Ok(TokioIo::new(Corked::new(tcp)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A writer that counts the writes that reach it.
    #[derive(Default)]
    struct Counting {
        writes: Vec<Vec<u8>>,
        flushes: usize,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().writes.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn small_writes_leave_in_one_write_at_the_flush() {
        let mut w = Corked::new(Counting::default());
        for i in 0..10u8 {
            w.write_all(&[i; 100]).await.unwrap();
        }
        assert!(
            w.get_ref().writes.is_empty(),
            "nothing leaves before a flush"
        );
        w.flush().await.unwrap();
        let inner = w.get_ref();
        assert_eq!(inner.writes.len(), 1);
        assert_eq!(inner.writes[0].len(), 1_000);
        assert_eq!(inner.writes[0][999], 9, "in order");
        assert_eq!(inner.flushes, 1);
    }

    #[tokio::test]
    async fn a_busy_connections_flush_yields_once_before_it_sends() {
        let mut w = Corked::new(Counting::default());
        w.last_sent = Some(Instant::now());
        w.write_all(b"reply").await.unwrap();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut w).poll_flush(&mut cx).is_pending());
        assert!(w.get_ref().writes.is_empty());
        // Bytes written while it yielded leave with the rest.
        w.write_all(b" and another").await.unwrap();
        assert!(matches!(
            Pin::new(&mut w).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(w.get_ref().writes, vec![b"reply and another".to_vec()]);
        // With nothing held, a flush goes straight through.
        assert!(matches!(
            Pin::new(&mut w).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
    }

    #[tokio::test]
    async fn an_idle_connections_flush_sends_at_once() {
        let mut w = Corked::new(Counting::default());
        w.write_all(b"reply").await.unwrap();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(
            Pin::new(&mut w).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(w.get_ref().writes, vec![b"reply".to_vec()]);
        assert!(w.busy(), "a connection that just sent is busy");
    }

    #[tokio::test]
    async fn held_bytes_stay_bounded_and_large_writes_pass_through() {
        let mut w = Corked::new(Counting::default());
        let chunk = vec![7u8; HELD_BYTES_MAX / 4 + 1];
        for _ in 0..4 {
            w.write_all(&chunk).await.unwrap();
        }
        assert!(w.held.len() <= HELD_BYTES_MAX);
        assert_eq!(w.get_ref().writes.len(), 1, "the full hold was sent");
        w.flush().await.unwrap();
        let big = vec![1u8; HELD_BYTES_MAX];
        w.write_all(&big).await.unwrap();
        assert_eq!(w.get_ref().writes.last().unwrap().len(), HELD_BYTES_MAX);
        let sent: usize = w.get_ref().writes.iter().map(Vec::len).sum();
        assert_eq!(sent, 4 * chunk.len() + HELD_BYTES_MAX);
        assert!(
            w.held.capacity() <= HELD_KEPT_BYTES_MAX,
            "a burst's buffer is given back"
        );
    }
}
