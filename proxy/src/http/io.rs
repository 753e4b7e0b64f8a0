//! A write buffer in front of an accepted connection, so a response head and a small body leave
//! in one `send` instead of two.
//!
//! pingora's own listeners give each accepted stream such a buffer (`L4BufferSettings`, 1460
//! bytes), but only through crate-private calls; our accept loops build streams with
//! `From<TcpStream>`, which has none. pingora's HTTP/1 writers are written for buffered streams:
//! they flush after every chunked or close-delimited write, after the head when no
//! Content-Length is known, and at the end of every body, so buffering here delays nothing that
//! a client waits for.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};

/// Same size as pingora's default L4 write buffer: one loopback/Ethernet segment's payload.
pub const WRITE_BUFFER: usize = 1460;

/// An accepted TCP stream with a write buffer.
#[derive(Debug)]
pub struct Buffered(BufWriter<L4Stream>);

impl Buffered {
    pub fn new(stream: L4Stream) -> Self {
        Buffered(BufWriter::with_capacity(WRITE_BUFFER, stream))
    }

    fn inner(&self) -> &L4Stream {
        self.0.get_ref()
    }
}

impl AsyncRead for Buffered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Buffered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // BufWriter flushes before shutting down.
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Buffered {
    async fn shutdown(&mut self) {
        if let Err(e) = AsyncWriteExt::shutdown(&mut self.0).await {
            tracing::debug!(error = %e, "shutting down a client connection");
        }
    }
}

impl UniqueID for Buffered {
    fn id(&self) -> UniqueIDType {
        self.inner().id()
    }
}

impl Ssl for Buffered {}

impl GetTimingDigest for Buffered {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner().get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner().get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner().get_write_pending_time()
    }
}

impl GetProxyDigest for Buffered {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner().get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.0.get_mut().set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Buffered {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner().get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.0.get_mut().set_socket_digest(digest)
    }
}

/// The HTTP/2 connection preface, the only thing pingora peeks for (h2c detection).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[async_trait]
impl Peek for Buffered {
    /// pingora peeks `buf.len()` (24) bytes on every plain connection to tell h2c from HTTP/1,
    /// and its own peek waits for all of them: a shorter request (`GET / HTTP/1.0\r\n\r\n`, or
    /// `OPTIONS / HTTP/1.0\r\n\r\n`, a common load-balancer health check) would never be
    /// answered. Here the peek stops as soon as the bytes read stop matching the HTTP/2 preface;
    /// whatever was read is put back for the HTTP/1 parser.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        use tokio::io::AsyncReadExt;
        let inner = self.0.get_mut();
        let mut got = 0;
        while got < buf.len() {
            let n = inner.read(&mut buf[got..]).await?;
            if n == 0 {
                if got == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                break;
            }
            got += n;
            let expect = &H2_PREFACE[..got.min(H2_PREFACE.len())];
            if buf[..expect.len()] != *expect {
                break;
            }
        }
        inner.rewind(&buf[..got]);
        // Bytes not read stay zero, so a short non-preface never equals the preface.
        buf[got..].fill(0);
        Ok(true)
    }
}
