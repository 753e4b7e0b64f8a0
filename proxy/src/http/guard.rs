//! The client limits on connections pingora serves (plain connections the fast path handed
//! over, every TLS connection): a stream wrapper under pingora's HTTP/1 session.
//!
//! pingora bounds each read of a request head (60 s), not the whole head, and buffers a head up
//! to 1 MiB; nothing bounds a write to a client that does not read. [`Guarded`] sits between
//! pingora and the connection and:
//! - while a request head is expected (armed by `listener::h1_loop` before each request, until
//!   `service.rs` `early_request_filter` says pingora has parsed it), holds the bytes it reads
//!   and gives them to pingora only up to the end of the head (a line end followed by an empty
//!   line). pingora never holds more than `max_header_bytes` of a head, and never has a byte of
//!   one it is refused: 431 (414 when the request line does not end within the limit) or 408
//!   past `header_timeout` are written here and pingora sees the connection end, which it takes
//!   quietly;
//! - waits at most `idle_timeout` for the first byte of a keep-alive connection's next request;
//! - fails a write that makes no progress for `write_timeout`.
//!
//! After a refusal the write side is shut and what the client still sends is read and
//! discarded for at most [`LINGER`] (nginx's lingering close), so that the client reads the
//! answer instead of a reset.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::limits::Limit;
use super::shared::Shared;

/// How long a refused connection is kept to let the client read the answer.
pub const LINGER: Duration = Duration::from_secs(1);
/// Most bytes read and discarded while lingering.
pub const LINGER_BYTES: usize = 256 * 1024;

const CMD_NONE: u8 = 0;
const CMD_ARM: u8 = 1;
const CMD_OFF: u8 = 2;

/// The answers to a refused head.
pub fn refusal(code: u16) -> &'static [u8] {
    match code {
        408 => b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 34\r\nconnection: close\r\n\r\nrequest head not received in time\n",
        414 => b"HTTP/1.1 414 URI Too Long\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 22\r\nconnection: close\r\n\r\nrequest line too long\n",
        _ => b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 25\r\nconnection: close\r\n\r\nrequest header too large\n",
    }
}

/// The answer to a head over the size limit: 414 when even its request line has not ended
/// (no line end in it), else 431.
pub fn too_large_code(head: &[u8]) -> u16 {
    let start = head
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(head.len());
    if head[start..].contains(&b'\n') {
        431
    } else {
        414
    }
}

/// The end (exclusive) of the first header section end (`\n\r\n` or `\n\n`) whose last byte is
/// at or after `from`.
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    (from.max(1)..buf.len()).find_map(|i| {
        let end = buf[i] == b'\n'
            && (buf[i - 1] == b'\n' || (i >= 2 && buf[i - 1] == b'\r' && buf[i - 2] == b'\n'));
        end.then_some(i + 1)
    })
}

/// Where a guarded connection starts.
pub enum Start {
    /// Reading a request head that must be whole by this instant.
    Head(Instant),
    /// Not HTTP/1 heads (h2): write timeout only.
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// Passing reads through.
    Off,
    /// Armed, waiting for the first byte of the next request (until `deadline`).
    Idle,
    /// Reading a request head, whole by `deadline`.
    Head,
    /// Writing a refusal (`at` bytes of it written).
    Refuse { code: u16, at: usize },
    /// Refusal sent, write side shut: discarding what still comes until `deadline`.
    Linger { discarded: usize },
    /// The reader sees the end of the stream.
    Closed,
}

/// A client connection with the head, idle and write limits (see the module docs).
pub struct Guarded {
    inner: Stream,
    shared: Arc<Shared>,
    client: IpAddr,
    cmd: AtomicU8,
    phase: Phase,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    /// Bytes of the head read and not yet given to the reader; the first `release` may be.
    held: Vec<u8>,
    release: usize,
    /// Where the search for the head's end goes on in `held`.
    scanned: usize,
    /// Bytes read since the phase was armed.
    count: usize,
    /// Nothing of this phase read yet: leading line ends are given on at once.
    at_start: bool,
    write_timer: Option<Pin<Box<Sleep>>>,
    write_stalled: bool,
}

impl fmt::Debug for Guarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

fn poll_timer(timer: &mut Option<Pin<Box<Sleep>>>, at: Instant, cx: &mut Context<'_>) -> bool {
    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
    if t.deadline() != at {
        t.as_mut().reset(at);
    }
    t.as_mut().poll(cx).is_ready()
}

impl Guarded {
    pub fn new(inner: Stream, shared: Arc<Shared>, client: IpAddr, start: Start) -> Guarded {
        let (phase, deadline) = match start {
            Start::Head(at) => (Phase::Head, at),
            Start::Off => (Phase::Off, Instant::now()),
        };
        Guarded {
            inner,
            shared,
            client,
            cmd: AtomicU8::new(CMD_NONE),
            phase,
            deadline,
            timer: None,
            held: Vec::new(),
            release: 0,
            scanned: 0,
            count: 0,
            at_start: true,
            write_timer: None,
            write_stalled: false,
        }
    }

    /// The next request's head is expected (keep-alive): the idle wait, then the head limits.
    pub fn arm(&self) {
        self.cmd.store(CMD_ARM, Ordering::Release);
    }

    /// pingora has parsed the request head: reads pass through (the body, an upgrade).
    pub fn head_done(&self) {
        self.cmd.store(CMD_OFF, Ordering::Release);
    }

    /// The guard of a pingora stream, if it is one.
    pub fn of(stream: &Stream) -> Option<&Guarded> {
        (**stream).as_any().downcast_ref::<Guarded>()
    }

    fn apply_command(&mut self) {
        match self.cmd.swap(CMD_NONE, Ordering::AcqRel) {
            CMD_ARM if matches!(self.phase, Phase::Off | Phase::Head | Phase::Idle) => {
                self.phase = Phase::Idle;
                self.deadline = Instant::now() + self.shared.config.client.idle_timeout;
                self.count = 0;
                self.scanned = 0;
                self.at_start = true;
                // Whatever is still held was read past the last head: the reader gets it.
                self.release = self.held.len();
            }
            CMD_OFF if matches!(self.phase, Phase::Idle | Phase::Head) => {
                self.phase = Phase::Off;
            }
            _ => {}
        }
    }

    fn refuse(&mut self, code: u16, limit: Limit) {
        self.shared.limits.hit(limit, Some(self.client));
        self.held = Vec::new();
        self.release = 0;
        self.phase = Phase::Refuse { code, at: 0 };
        self.deadline = Instant::now() + LINGER;
    }

    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        poll_timer(&mut self.timer, self.deadline, cx)
    }

    /// Reads head bytes into `held`: `Ready(true)` when something changed, `Ready(false)` at
    /// the end of the stream.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let max = self.shared.config.client.max_header_bytes;
        let room = (max + 1).saturating_sub(self.count).clamp(1, 16 * 1024);
        let len = self.held.len();
        self.held.resize(len + room, 0);
        let mut rb = ReadBuf::new(&mut self.held[len..]);
        let r = Pin::new(&mut self.inner).poll_read(cx, &mut rb);
        let n = rb.filled().len();
        self.held.truncate(len + n);
        match r {
            Poll::Ready(Ok(())) if n == 0 => Poll::Ready(Ok(false)),
            Poll::Ready(Ok(())) => {
                self.count += n;
                if self.phase == Phase::Idle {
                    self.phase = Phase::Head;
                    self.deadline = Instant::now() + self.shared.config.client.header_timeout;
                }
                if std::mem::take(&mut self.at_start) {
                    // Empty lines before a request line (RFC 9112 2.2), or the end of a head
                    // whose start pingora already holds (a pipelined request): the reader gets
                    // them at once, so that end is never missed.
                    let lead = self.held[len..]
                        .iter()
                        .take_while(|b| **b == b'\r' || **b == b'\n')
                        .count();
                    self.release = len + lead;
                    self.scanned = len + lead;
                }
                Poll::Ready(Ok(true))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_write_timed(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut Stream>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match write(Pin::new(&mut self.inner), cx) {
            Poll::Ready(r) => {
                self.write_stalled = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.shared.config.client.write_timeout;
                let at = match (&self.write_timer, self.write_stalled) {
                    (Some(t), true) => t.deadline(),
                    _ => Instant::now() + timeout,
                };
                self.write_stalled = true;
                if poll_timer(&mut self.write_timer, at, cx) {
                    self.shared
                        .limits
                        .hit(Limit::WriteTimeout, Some(self.client));
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client did not read within the write timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.apply_command();
        loop {
            if this.release > 0 {
                let n = this.release.min(buf.remaining());
                buf.put_slice(&this.held[..n]);
                this.held.drain(..n);
                this.release -= n;
                this.scanned = this.scanned.saturating_sub(n);
                if this.held.is_empty() {
                    this.held = Vec::new();
                }
                return Poll::Ready(Ok(()));
            }
            match this.phase {
                Phase::Off => {
                    if !this.held.is_empty() {
                        this.release = this.held.len();
                        continue;
                    }
                    return Pin::new(&mut this.inner).poll_read(cx, buf);
                }
                Phase::Idle | Phase::Head => {
                    if let Some(end) = find_head_end(&this.held, this.scanned) {
                        this.scanned = end;
                        this.release = end;
                        continue;
                    }
                    this.scanned = this.held.len();
                    if this.count > this.shared.config.client.max_header_bytes {
                        let code = too_large_code(&this.held);
                        this.refuse(code, Limit::HeadSize);
                        continue;
                    }
                    match this.poll_head(cx) {
                        Poll::Ready(Ok(true)) => continue,
                        Poll::Ready(Ok(false)) => {
                            // The client closed: the reader gets what came, then the end.
                            this.release = this.held.len();
                            this.phase = Phase::Closed;
                            continue;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            if !this.timed_out(cx) {
                                return Poll::Pending;
                            }
                            if this.phase == Phase::Head && this.count > 0 {
                                this.refuse(408, Limit::HeadTimeout);
                            } else {
                                // Idle: close quietly (pingora has read nothing of a request).
                                this.held = Vec::new();
                                this.phase = Phase::Closed;
                            }
                        }
                    }
                }
                Phase::Refuse { code, mut at } => {
                    let answer = refusal(code);
                    while at < answer.len() {
                        match Pin::new(&mut this.inner).poll_write(cx, &answer[at..]) {
                            Poll::Ready(Ok(n)) if n > 0 => at += n,
                            Poll::Ready(_) => {
                                this.phase = Phase::Closed;
                                break;
                            }
                            Poll::Pending => {
                                this.phase = Phase::Refuse { code, at };
                                if this.timed_out(cx) {
                                    this.phase = Phase::Closed;
                                    break;
                                }
                                return Poll::Pending;
                            }
                        }
                    }
                    if this.phase == Phase::Closed {
                        continue;
                    }
                    this.phase = Phase::Refuse { code, at };
                    match Pin::new(&mut this.inner).poll_shutdown(cx) {
                        Poll::Ready(_) => this.phase = Phase::Linger { discarded: 0 },
                        Poll::Pending => {
                            if this.timed_out(cx) {
                                this.phase = Phase::Closed;
                                continue;
                            }
                            return Poll::Pending;
                        }
                    }
                }
                Phase::Linger { discarded } => {
                    let mut scratch = [0u8; 4096];
                    let mut rb = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                            let discarded = discarded + rb.filled().len();
                            this.phase = if discarded > LINGER_BYTES {
                                Phase::Closed
                            } else {
                                Phase::Linger { discarded }
                            };
                        }
                        Poll::Ready(_) => this.phase = Phase::Closed,
                        Poll::Pending => {
                            if !this.timed_out(cx) {
                                return Poll::Pending;
                            }
                            this.phase = Phase::Closed;
                        }
                    }
                }
                Phase::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_timed(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_timed(cx, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_write_timed(cx, |s, cx| s.poll_flush(cx).map_ok(|()| 0))
            .map_ok(|_| ())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_write_timed(cx, |s, cx| s.poll_shutdown(cx).map_ok(|()| 0))
            .map_ok(|_| ())
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        // Bounded like any write: a client that does not read cannot hold it open.
        let timeout = self.shared.config.client.write_timeout;
        let _ = tokio::time::timeout(timeout, Shutdown::shutdown(&mut *self.inner)).await;
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Guarded {
    /// pingora's h2c check; only ever on a connection whose guard is off, with nothing held.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if !self.held.is_empty() || self.phase != Phase::Off {
            return Ok(false);
        }
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_ends_and_codes() {
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody", 0),
            Some(27)
        );
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\nHost: a\n\nbody", 0),
            Some(24)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
        // Found when the search goes on from where it stopped.
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(find_head_end(head, 26), Some(27));
        assert_eq!(too_large_code(b"GET /aaaaaaaa"), 414);
        assert_eq!(too_large_code(b"\r\nGET /aaaaaaaa"), 414);
        assert_eq!(too_large_code(b"GET / HTTP/1.1\r\nX: aaaa"), 431);
        for code in [408, 414, 431] {
            let r = refusal(code);
            let text = std::str::from_utf8(r).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with(&format!("HTTP/1.1 {code} ")), "{head}");
            assert!(
                head.contains(&format!("content-length: {}\r\n", body.len())),
                "{code}: {head:?} {body:?}"
            );
        }
    }
}
