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

/// The hash of the pool's keys: foldhash's fast hasher with a fixed seed. The keys are
/// endpoint addresses from the table and label pointers, never chosen by a client, so SipHash's
/// resistance to chosen collisions buys nothing here; hashing the address with it (on every
/// `take` and `keep`) and the service label (for the busy count, twice more) was ~7% of the
/// fast path's user-space instructions per request (callgrind, issue 17.5).
type KeyMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// A service label's place in the busy counts: the address of its text. Every lease of one
/// balancer shares one label `Arc` (`PortBalancer::target`); two balancers of one service
/// (two algorithms) count apart here and are added up by label in `count_into`.
fn label_key(label: &Arc<str>) -> usize {
    Arc::as_ptr(label) as *const u8 as usize
}

#[derive(Default)]
struct PoolInner {
    /// By endpoint.
    idle: KeyMap<SocketAddr, Vec<Idle>>,
    /// Connections a request holds now, by service label (the pool gauge): the label and its
    /// count, by [`label_key`].
    busy: KeyMap<usize, (Arc<str>, usize)>,
}

impl PoolInner {
    fn inc_busy(&mut self, label: &Arc<str>) {
        self.busy
            .entry(label_key(label))
            .or_insert_with(|| (label.clone(), 0))
            .1 += 1;
    }

    fn dec_busy(&mut self, label: &Arc<str>) {
        let key = label_key(label);
        if let Some((_, n)) = self.busy.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.busy.remove(&key);
            }
        }
    }
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
    /// Until kept.
    held: Option<(TcpStream, Target)>,
}

impl Lease {
    pub(super) fn conn(&mut self) -> &mut TcpStream {
        &mut self.held.as_mut().expect("held until kept or dropped").0
    }

    pub(super) fn target(&self) -> &Target {
        &self.held.as_ref().expect("held until kept or dropped").1
    }

    /// Back to the pool, idle from `now` (about the current time).
    pub(super) fn keep(mut self, now: Instant) {
        let (conn, target) = self.held.take().expect("held until kept or dropped");
        let mut p = self.shard.lock().unwrap();
        p.dec_busy(&target.label);
        let v = p.idle.entry(target.endpoint).or_default();
        if v.len() < POOL_PER_ENDPOINT {
            v.push(Idle {
                conn,
                target,
                since: now,
            });
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some((_, target)) = &self.held {
            self.shard.lock().unwrap().dec_busy(&target.label);
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
            p.inc_busy(&i.target.label);
            drop(p);
            return Some(Lease {
                shard: shard.clone(),
                held: Some((i.conn, i.target)),
            });
        }
        None
    }

    pub(super) fn lease(&self, conn: TcpStream, target: Target) -> Lease {
        let shard = self.shard();
        shard.lock().unwrap().inc_busy(&target.label);
        Lease {
            shard: shard.clone(),
            held: Some((conn, target)),
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
            for (l, n) in p.busy.values() {
                out.entry(l.clone()).or_default().busy += n;
            }
        }
    }
}
