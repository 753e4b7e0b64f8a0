//! The fast path's socket waits: a client read that does not wait, and an attempt's reads and
//! writes on its endpoint within the attempt's deadline, and what went wrong when they fail.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::guard::{refusal, LINGER, LINGER_BYTES};
use crate::http::limits::Limit;
use crate::http::shared::Shared;

/// Writes all of `data` to the client. A client that does not take it within the write
/// timeout fails it (counted as `write_timeout`), as one that closed would.
///
/// The write is polled once before the timeout is armed: an answer nearly always fits the
/// socket's buffer at once, and building tokio's timeout for every answer (the runtime
/// handle, a clock read, the timer's state) cost about 220 instructions a request, 1.4% of
/// the fast path (issue #19, docs/benchmarks.md). The timeout then counts from the first
/// wait, microseconds after the write began.
pub(super) async fn write_client(
    shared: &Shared,
    client: &mut TcpStream,
    data: &[u8],
) -> std::io::Result<()> {
    let timed = {
        let mut write = std::pin::pin!(client.write_all(data));
        let first = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(write.as_mut(), cx))
        })
        .await;
        if let std::task::Poll::Ready(r) = first {
            return r;
        }
        // Boxed: the timer is for the rare answer the socket cannot take at once, and kept in
        // this future it would make every request's larger (issue 17.5).
        Box::pin(tokio::time::timeout(
            shared.config.client.write_timeout,
            write,
        ))
        .await
    };
    match timed {
        Ok(r) => r,
        Err(_) => {
            let ip = client.peer_addr().ok().map(|a| a.ip());
            shared.limits.hit(Limit::WriteTimeout, ip);
            Err(std::io::ErrorKind::TimedOut.into())
        }
    }
}

/// Refuses a request head (408, 414 or 431, counted as `limit`): the answer, the write side
/// shut, then what the client still sends read and dropped for a moment so that it reads the
/// answer rather than a reset (nginx's lingering close).
pub(super) async fn refuse(shared: &Shared, client: &mut TcpStream, code: u16, limit: Limit) {
    let ip = client.peer_addr().ok().map(|a| a.ip());
    shared.limits.hit(limit, ip);
    let linger = async {
        client.write_all(refusal(code)).await?;
        client.shutdown().await?;
        let mut scratch = vec![0u8; 4096];
        let mut discarded = 0;
        while discarded <= LINGER_BYTES {
            match client.read(&mut scratch).await? {
                0 => break,
                n => discarded += n,
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(LINGER, linger).await;
}

/// One read that does not wait. Unlike `try_read_buf` it goes through tokio's `poll_read`,
/// which marks the socket drained when a read comes back shorter than the room it was given
/// (epoll is edge-triggered). After `try_read_buf` the socket stayed marked readable, so the
/// wait for the next request on a keep-alive connection returned at once, and its read failed
/// with EAGAIN: a third `recvfrom` per proxied request, beside the two that carry data.
pub(super) async fn read_now(conn: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut read = std::pin::pin!(conn.read_buf(buf));
    std::future::poll_fn(|cx| match std::future::Future::poll(read.as_mut(), cx) {
        std::task::Poll::Pending => {
            std::task::Poll::Ready(Err(std::io::ErrorKind::WouldBlock.into()))
        }
        ready => ready,
    })
    .await
}

/// What went wrong with an attempt, for the response code, the retry decision and the log.
#[derive(Debug)]
pub(super) enum Failure {
    /// Nothing usable came back from the endpoint (reset, EOF, refused).
    Io(&'static str),
    /// A deadline or read timeout.
    Timeout(&'static str),
    /// The endpoint's answer was not HTTP/1 this path can pass on.
    Invalid(&'static str),
}

impl Failure {
    pub(super) fn code(&self) -> u16 {
        match self {
            Failure::Timeout(_) => 504,
            _ => 502,
        }
    }
    pub(super) fn what(&self) -> &'static str {
        match self {
            Failure::Io(w) | Failure::Timeout(w) | Failure::Invalid(w) => w,
        }
    }
}

/// The time limits of one attempt.
#[derive(Clone, Copy)]
pub(super) struct Limits {
    pub(super) deadline: Option<tokio::time::Instant>,
    pub(super) per_read: Option<Duration>,
}

/// Runs `f` until `deadline` (if any); past it, `Failure::Timeout(what)`.
pub(super) async fn until<T>(
    deadline: Option<tokio::time::Instant>,
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, f)
            .await
            .map_err(|_| Failure::Timeout(what))?,
        None => f.await,
    }
}

impl Limits {
    pub(super) async fn read(
        &self,
        conn: &mut TcpStream,
        buf: &mut Vec<u8>,
    ) -> Result<usize, Failure> {
        self.awaiting_answer(async {
            conn.read_buf(buf)
                .await
                .map_err(|_| Failure::Io("ReadError"))
        })
        .await
    }

    /// Runs `f`, a wait for the endpoint's answer, within the attempt's deadline and one
    /// upstream read timeout.
    pub(super) async fn awaiting_answer<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        let per_read = self.per_read.map(|t| tokio::time::Instant::now() + t);
        // One timer for the earlier of the two (both fail the same way): nesting two timeouts
        // made every read's future twice the size and moved it twice.
        let by = match (self.deadline, per_read) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        until(by, "ReadTimedout", f).await
    }

    pub(super) async fn write(&self, conn: &mut TcpStream, data: &[u8]) -> Result<(), Failure> {
        let write = async {
            conn.write_all(data)
                .await
                .map_err(|_| Failure::Io("WriteError"))
        };
        until(self.deadline, "WriteTimedout", write).await
    }
}
