//! Accepted connections, bounded: at most `server.connections_max` are open at once;
//! a connection beyond is closed as soon as it is accepted and counted, so a flood of
//! connections costs the node a file descriptor for a moment, not its memory or its
//! ability to serve the connections it has. Every connection gets TCP_NODELAY (small
//! replies are not held back by Nagle's algorithm and delayed ACKs).
//!
//! With TLS on, each connection's handshake runs in its own task (a slow client
//! cannot hold up accepting others), bounded by a timeout, with the server
//! configuration current at that moment: certificates reloaded on SIGHUP apply to new
//! connections only.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::security::Security;
use crate::telemetry::names;

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

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the server to take them.
const HANDSHAKEN_QUEUE_MAX: usize = 256;

/// The listener's connections, each holding a slot of `connections_max`, after a TLS
/// handshake with `security`'s current server configuration.
pub fn tls_incoming(
    listener: TcpListener,
    connections_max: usize,
    security: Arc<Security>,
) -> impl Stream<Item = Result<TlsStream<Limited>, std::io::Error>> {
    let (tx, rx) = mpsc::channel::<TlsStream<Limited>>(HANDSHAKEN_QUEUE_MAX);
    tokio::spawn(async move {
        let mut plain = Box::pin(incoming(listener, connections_max));
        loop {
            let conn = tokio::select! {
                c = plain.next() => c,
                _ = tx.closed() => return,
            };
            let Some(Ok(conn)) = conn else { continue };
            let Some(config) = security.server_config() else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                if !starts_with_tls(&conn).await {
                    refuse_plaintext(conn).await;
                    return;
                }
                let accept = tokio_rustls::TlsAcceptor::from(config).accept(conn);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(tls).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        metrics::counter!(names::TLS_HANDSHAKE_FAILURES_TOTAL).increment(1);
                    }
                    Err(_) => {
                        metrics::counter!(names::TLS_HANDSHAKE_FAILURES_TOTAL).increment(1);
                    }
                }
            });
        }
    });
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|s| (Ok(s), rx)) },
    )
}

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Whether the connection's first byte (waited for at most the handshake timeout)
/// begins a TLS handshake.
async fn starts_with_tls(conn: &Limited) -> bool {
    let mut first = [0u8; 1];
    let peek = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.stream.peek(&mut first)).await;
    !matches!(peek, Ok(Ok(1))) || first[0] == TLS_HANDSHAKE_RECORD
}

/// Answers every call of a plaintext connection (gRPC, or HTTP/1.1 and HTTP/2 JSON)
/// UNAUTHENTICATED with the reason, through the one error mapping, instead of a bare
/// protocol error the client cannot explain; the connection lives at most the
/// handshake timeout.
async fn refuse_plaintext(conn: Limited) {
    metrics::counter!(names::TLS_HANDSHAKE_FAILURES_TOTAL).increment(1);
    let service = hyper::service::service_fn(|call: hyper::Request<hyper::body::Incoming>| {
        let status = crate::api::status::to_status(crate::error::Error::Unauthenticated {
            reason: "this node requires TLS: connect with https and the cluster's CA \
                     (--ca or STOCKPILE_CA)"
                .into(),
        });
        let is_grpc = call
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"));
        let answer = if is_grpc {
            status.into_http::<tonic::body::Body>()
        } else {
            crate::api::http::reply::plain_refusal(&status)
        };
        std::future::ready(Ok::<_, std::convert::Infallible>(answer))
    });
    let server = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let io = hyper_util::rt::TokioIo::new(conn);
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, server.serve_connection(io, service)).await;
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
