//! The fast path's upstream keep-alive pool: idle connections by endpoint, one shard per
//! event loop, and the lease a request holds a connection by.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::upstreams::{PoolCounts, Target};
use super::worker::worker;

/// Idle connections kept per endpoint.
const POOL_PER_ENDPOINT: usize = 256;

struct Idle {
    conn: TcpStream,
    target: Target,
    since: Instant,
}

impl Idle {
    /// Still worth reusing at `now`: idle for less than `max_idle`, and left alone by its
    /// endpoint.
    fn usable(&self, now: Instant, max_idle: Duration) -> bool {
        now.saturating_duration_since(self.since) < max_idle && !disturbed(&self.conn)
    }
}

#[derive(Default)]
struct PoolInner {
    /// By endpoint.
    idle: HashMap<SocketAddr, Vec<Idle>>,
    /// Connections a request holds now, by service label (the pool gauge).
    busy: HashMap<Arc<str>, usize>,
}

/// The fast path's upstream keep-alive connections, by endpoint address. A connection is
/// pooled only after a complete response and a read that found nothing more on it, so one that
/// shows readable (or closed) in the pool has been closed or written to by the endpoint and is
/// dropped instead of reused.
///
/// One shard per event loop (`worker()`: 0 for the process runtime, then each HTTP worker): a
/// socket is driven by the runtime it was registered on, and a worker's requests then lock
/// only its own shard. With one lock for all, the two workers of `--http-workers 2` took it
/// twice per request each, and one preempted while holding it made the other sleep on it.
pub struct FastPool {
    shards: Vec<Arc<Mutex<PoolInner>>>,
}

/// A connection a request holds; dropped (closed) unless given back with [`Lease::keep`].
pub(super) struct Lease {
    shard: Arc<Mutex<PoolInner>>,
    conn: Option<TcpStream>,
    pub(super) target: Target,
}

impl Lease {
    pub(super) fn conn(&mut self) -> &mut TcpStream {
        self.conn.as_mut().expect("held until kept or dropped")
    }

    /// Back to the pool, idle from now.
    pub(super) fn keep(mut self) {
        let conn = self.conn.take().expect("held until kept or dropped");
        let mut p = self.shard.lock().unwrap();
        dec_busy(&mut p.busy, &self.target.label);
        let v = p.idle.entry(self.target.endpoint).or_default();
        if v.len() < POOL_PER_ENDPOINT {
            v.push(Idle {
                conn,
                target: self.target.clone(),
                since: Instant::now(),
            });
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.conn.is_some() {
            dec_busy(&mut self.shard.lock().unwrap().busy, &self.target.label);
        }
    }
}

fn dec_busy(busy: &mut HashMap<Arc<str>, usize>, label: &Arc<str>) {
    if let Some(n) = busy.get_mut(label) {
        *n -= 1;
        if *n == 0 {
            busy.remove(label);
        }
    }
}

/// Whether the endpoint closed or wrote to an idle connection. Readiness was cleared when the
/// connection was pooled (`respond` checks it once more then), so this read is a system call
/// only if an event came since: EOF, a reset, or bytes nobody asked for.
pub(super) fn disturbed(conn: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    !matches!(conn.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

impl FastPool {
    /// A pool for the process runtime and `workers` HTTP workers.
    pub fn new(workers: usize) -> Self {
        FastPool {
            shards: (0..=workers).map(|_| Arc::default()).collect(),
        }
    }

    /// This event loop's shard.
    fn shard(&self) -> &Arc<Mutex<PoolInner>> {
        &self.shards[worker() % self.shards.len()]
    }

    /// The most recently pooled live connection to `endpoint` (`now`: about the current time).
    pub(super) fn take(
        &self,
        endpoint: SocketAddr,
        max_idle: Duration,
        now: Instant,
    ) -> Option<Lease> {
        let shard = self.shard();
        let mut p = shard.lock().unwrap();
        let v = p.idle.get_mut(&endpoint)?;
        while let Some(i) = v.pop() {
            if !i.usable(now, max_idle) {
                continue;
            }
            *p.busy.entry(i.target.label.clone()).or_default() += 1;
            drop(p);
            return Some(Lease {
                shard: shard.clone(),
                conn: Some(i.conn),
                target: i.target,
            });
        }
        None
    }

    pub(super) fn lease(&self, conn: TcpStream, target: Target) -> Lease {
        let shard = self.shard();
        *shard
            .lock()
            .unwrap()
            .busy
            .entry(target.label.clone())
            .or_default() += 1;
        Lease {
            shard: shard.clone(),
            conn: Some(conn),
            target,
        }
    }

    /// Closes idle connections whose target `keep` rejects; returns how many.
    pub fn close_idle(&self, keep: impl Fn(&Target) -> bool) -> usize {
        let mut closed = 0;
        for shard in &self.shards {
            let mut p = shard.lock().unwrap();
            for v in p.idle.values_mut() {
                v.retain(|i| {
                    let k = keep(&i.target);
                    closed += usize::from(!k);
                    k
                });
            }
            p.idle.retain(|_, v| !v.is_empty());
        }
        closed
    }

    /// Closes idle connections older than `max_idle` or closed by their endpoint.
    pub fn expire(&self, max_idle: Duration) {
        let now = Instant::now();
        for shard in &self.shards {
            let mut p = shard.lock().unwrap();
            for v in p.idle.values_mut() {
                v.retain(|i| i.usable(now, max_idle));
            }
            p.idle.retain(|_, v| !v.is_empty());
        }
    }

    /// Open connections by service label, added into `out`.
    pub fn count_into(&self, out: &mut HashMap<Arc<str>, PoolCounts>) {
        for shard in &self.shards {
            let p = shard.lock().unwrap();
            for i in p.idle.values().flatten() {
                out.entry(i.target.label.clone()).or_default().idle += 1;
            }
            for (l, n) in &p.busy {
                out.entry(l.clone()).or_default().busy += n;
            }
        }
    }
}
