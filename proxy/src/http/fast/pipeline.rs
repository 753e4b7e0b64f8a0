//! Upstream pipelining (Services annotated `switchboard.dev/upstream-pipelining: "true"`):
//! batches of requests sent to an endpoint together on one pooled connection, and the
//! connection passed down the line of requests that read their answers from it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::io::{Failure, Limits};
use super::prepare::Prepared;
use crate::http::pool::Lease;
use crate::http::worker::{requeue, worker_saturated_at};

/// Requests that go upstream behind a leader's on its pooled connection, gathered while the
/// leader waits for the rest of its event-loop pass (`requeue`), then written with the
/// leader's head in one send. Each response is read, in order, by its own request's task: the
/// connection goes down the line as an [`Upstream`].
#[derive(Default)]
pub(super) struct Batch {
    pub(super) heads: Vec<u8>,
    pub(super) followers: Followers,
}

/// The requests pipelined behind one on its connection, in order: each waits for the
/// connection (`relay`), and one whose sender is dropped sends again on its own.
pub(super) type Followers = VecDeque<oneshot::Sender<Upstream>>;

thread_local! {
    /// The batches open on this thread: id, endpoint, batch. Only HTTP workers batch
    /// (`worker() > 0`): each runs one current-thread runtime, so a leader resumes on the
    /// thread it opened on.
    static BATCHES: std::cell::RefCell<Vec<(u64, SocketAddr, Batch)>> =
        const { std::cell::RefCell::new(Vec::new()) };
    static NEXT_BATCH: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A batch a leader holds open; dropped unclosed (the leader's task went away), it takes the
/// batch with it and the followers send again.
pub(super) struct OpenBatch(u64);

impl OpenBatch {
    /// Opens a batch for `endpoint`. A leader opens one after failing to join one, so any other
    /// batch open for the endpoint is full: requests past a batch's depth start the next.
    pub(super) fn open(endpoint: SocketAddr) -> OpenBatch {
        let id = NEXT_BATCH.with(|n| {
            n.set(n.get() + 1);
            n.get()
        });
        BATCHES.with(|b| b.borrow_mut().push((id, endpoint, Batch::default())));
        OpenBatch(id)
    }

    /// Closes it: the requests that joined.
    pub(super) fn close(self) -> Batch {
        let batch = take_batch(self.0);
        std::mem::forget(self);
        batch
    }
}

impl Drop for OpenBatch {
    fn drop(&mut self) {
        drop(take_batch(self.0));
    }
}

fn take_batch(id: u64) -> Batch {
    BATCHES.with(|b| {
        let mut b = b.borrow_mut();
        match b.iter().position(|(i, _, _)| *i == id) {
            Some(i) => b.swap_remove(i).2,
            None => Batch::default(),
        }
    })
}

/// Joins a batch open for `endpoint` that holds fewer than `depth` requests: the connection
/// comes on the receiver.
pub(super) fn join_batch(
    endpoint: SocketAddr,
    depth: usize,
    head: &[u8],
) -> Option<oneshot::Receiver<Upstream>> {
    BATCHES.with(|b| {
        let mut b = b.borrow_mut();
        let (_, _, batch) = b
            .iter_mut()
            .find(|(_, e, batch)| *e == endpoint && batch.followers.len() + 1 < depth)?;
        let (tx, rx) = oneshot::channel();
        batch.heads.extend_from_slice(head);
        batch.followers.push_back(tx);
        Some(rx)
    })
}

/// Passes the connection, with the bytes read past the response before, to the next pipelined
/// request (if there is one and it still waits); otherwise the connection and the rest of the
/// line are dropped.
pub(super) fn relay(lease: Lease, buf: Vec<u8>, mut followers: Followers) {
    if let Some(next) = followers.pop_front() {
        let _ = next.send(Upstream {
            lease,
            buf,
            followers,
        });
    }
}

/// The upstream side of a response: its connection, what was read from it so far, and the
/// pipelined requests waiting behind it there. A pipelined request gets its own from the one
/// ahead (`relay`); dropped, it closes the connection and the requests behind send again.
pub(super) struct Upstream {
    pub(super) lease: Lease,
    pub(super) buf: Vec<u8>,
    pub(super) followers: Followers,
}

/// Sends the request's head. With `lead` (the endpoint; pipelining allowed) it first opens a
/// batch there, and the requests that join it while the rest of the pass runs go in the same
/// write: they are returned, in order. `now`: about the current time (the attempt's start).
pub(super) async fn send_request(
    conn: &mut TcpStream,
    p: &Prepared,
    lead: Option<SocketAddr>,
    limits: &Limits,
    now: Instant,
) -> Result<Followers, Failure> {
    let batch = lead.map(OpenBatch::open);
    if batch.is_some() || worker_saturated_at(now) {
        // Let the worker finish the events it already has before this request goes upstream:
        // the requests read in one pass then reach a backend together and it answers them in
        // one wake-up, instead of one wake-up (and, on another core, one IPI) each. See
        // `worker_saturated_at`.
        requeue().await;
    }
    match batch.map(OpenBatch::close) {
        Some(batch) if !batch.followers.is_empty() => {
            let mut w = Vec::with_capacity(p.upstream_head.len() + batch.heads.len());
            w.extend_from_slice(&p.upstream_head);
            w.extend_from_slice(&batch.heads);
            limits.write(conn, &w).await?;
            Ok(batch.followers)
        }
        _ => {
            limits.write(conn, &p.upstream_head).await?;
            Ok(VecDeque::new())
        }
    }
}
