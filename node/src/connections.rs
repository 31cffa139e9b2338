//! Accepted connections, bounded: at most `server.connections_max` are open at once;
//! a connection beyond is closed as soon as it is accepted and counted, so a flood of
//! connections costs the node a file descriptor for a moment, not its memory or its
//! ability to serve the connections it has. Every connection gets TCP_NODELAY (small
//! replies are not held back by Nagle's algorithm and delayed ACKs).

use crate::telemetry::names;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// After a failed accept (for example, out of file descriptors), wait this long before
/// the next, instead of spinning on the same error.
const ACCEPT_RETRY_MS: u64 = 50;

/// An accepted connection holding one of the node's connection slots until it closes.
pub struct Limited {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

/// The listener's connections, each holding a slot of `connections_max`.
pub fn incoming(
    listener: TcpListener,
    connections_max: usize,
) -> impl Stream<Item = Result<Limited, std::io::Error>> {
    let slots = Arc::new(Semaphore::new(connections_max));
    futures::stream::unfold((listener, slots), |(listener, slots)| async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    metrics::counter!(names::ACCEPT_ERRORS_TOTAL).increment(1);
                    tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics::counter!(names::CONNECTIONS_REFUSED_TOTAL).increment(1);
                drop(stream);
                continue;
            };
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            metrics::gauge!(names::CONNECTIONS_OPEN).increment(1.0);
            let conn = Limited {
                stream,
                _slot: slot,
            };
            return Some((Ok(conn), (listener, slots)));
        }
    })
}

impl Drop for Limited {
    fn drop(&mut self) {
        metrics::gauge!(names::CONNECTIONS_OPEN).decrement(1.0);
    }
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut conns = Box::pin(incoming(listener, 2));
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let first = conns.next().await.unwrap().unwrap();
        let _second = conns.next().await.unwrap().unwrap();
        // A third connection is accepted and closed: its reader sees end of stream.
        let mut c = TcpStream::connect(addr).await.unwrap();
        let accept_more = tokio::spawn(async move {
            let next = conns.next().await;
            (conns, next.map(|r| r.is_ok()))
        });
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), c.read(&mut byte))
            .await
            .expect("closed within 5 s");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        // A slot freed lets the next connection in.
        drop(first);
        let _d = TcpStream::connect(addr).await.unwrap();
        let (_conns, next) = tokio::time::timeout(Duration::from_secs(5), accept_more)
            .await
            .expect("accepted within 5 s")
            .unwrap();
        assert_eq!(next, Some(true));
    }
}
