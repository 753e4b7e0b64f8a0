//! Bounded DNS over TCP: a connection table per listener with a global cap, a per-client cap,
//! and eviction of the connection idle the longest when the global cap is reached.
//!
//! ```text
//!  accept ─> client holds max_per_client? ─yes─> close new, count `per_client`
//!              │ no
//!              v
//!           table full? ─no─> admit
//!              │ yes
//!              v
//!           oldest idle connection? ─yes─> close it (`evicted`), admit the new one
//!              │ no (every connection is mid-answer)
//!              v
//!           close new, count `max_connections`
//! ```
//!
//! "Idle" is a connection waiting for (the rest of) its next query: a client that opens
//! connections and sends nothing, or drips a query byte by byte, is idle and is the first to go.
//! A connection whose answer is being computed or written is busy; its write has its own
//! deadline (`write_timeout`). One source address can hold at most `max_per_client` slots, so
//! a single client cannot take the table. Every limit hit is counted in
//! `switchboard_dns_tcp_limit_hits_total{limit}` and logged at most once per 10 s per limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct TcpLimits {
    pub max_connections: usize,
    /// 0: no per-client cap.
    pub max_per_client: usize,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
}

/// Which limit closed a connection (the `limit` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    PerClient,
    MaxConnections,
    Evicted,
    WriteTimeout,
}

impl Limit {
    pub fn label(self) -> &'static str {
        match self {
            Limit::PerClient => "per_client",
            Limit::MaxConnections => "max_connections",
            Limit::Evicted => "evicted",
            Limit::WriteTimeout => "write_timeout",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// Minimum time between two log lines for one limit.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// One open connection, as the table sees it.
pub struct Conn {
    ip: IpAddr,
    busy: AtomicBool,
    /// Milliseconds since the table's epoch of the last completed answer (or the accept).
    last_ms: AtomicU64,
    kill: CancellationToken,
}

struct Inner {
    next: u64,
    conns: HashMap<u64, Arc<Conn>>,
    per_ip: HashMap<IpAddr, usize>,
}

/// The connection table of one listener.
pub struct ConnTable {
    pub limits: TcpLimits,
    epoch: Instant,
    inner: Mutex<Inner>,
    metrics: Metrics,
    /// Per limit: when it was last logged, and hits since.
    logged: Mutex<[(Option<Instant>, u64); 4]>,
}

/// A slot held by one connection; dropping it frees the slot.
pub struct Slot {
    table: Arc<ConnTable>,
    id: u64,
    conn: Arc<Conn>,
}

/// IPv4-mapped IPv6 peers (dual-stack sockets) count as their IPv4 address.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl ConnTable {
    pub fn new(limits: TcpLimits, metrics: Metrics) -> Arc<ConnTable> {
        Arc::new(ConnTable {
            limits,
            epoch: Instant::now(),
            inner: Mutex::new(Inner {
                next: 0,
                conns: HashMap::new(),
                per_ip: HashMap::new(),
            }),
            metrics,
            logged: Mutex::new([(None, 0); 4]),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Counts a limit hit and logs it, at most once per `LOG_EVERY` per limit.
    pub fn hit(&self, limit: Limit, client: IpAddr) {
        self.metrics
            .tcp_limit_hits
            .with_label_values(&[limit.label()])
            .inc();
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        let (last, since) = &mut logged[limit.index()];
        *since += 1;
        if last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return;
        }
        let hits = std::mem::take(since);
        *last = Some(Instant::now());
        drop(logged);
        let l = self.limits;
        tracing::warn!(
            limit = limit.label(),
            %client,
            hits_since_last_log = hits,
            max_connections = l.max_connections,
            max_per_client = l.max_per_client,
            "dns/tcp: connection limit reached"
        );
    }

    /// Admits a connection from `ip`, closing the connection idle the longest if the table is
    /// full. `Err` names the limit that refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Limit> {
        let ip = client_key(ip);
        let mut evicted = None;
        let slot = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let held = inner.per_ip.get(&ip).copied().unwrap_or(0);
            if self.limits.max_per_client > 0 && held >= self.limits.max_per_client {
                drop(inner);
                self.hit(Limit::PerClient, ip);
                return Err(Limit::PerClient);
            }
            if inner.conns.len() >= self.limits.max_connections.max(1) {
                let victim = inner
                    .conns
                    .iter()
                    .filter(|(_, c)| !c.busy.load(Ordering::Relaxed))
                    .min_by_key(|(id, c)| (c.last_ms.load(Ordering::Relaxed), **id))
                    .map(|(id, _)| *id);
                let Some(victim) = victim else {
                    drop(inner);
                    self.hit(Limit::MaxConnections, ip);
                    return Err(Limit::MaxConnections);
                };
                let c = Self::remove_locked(&mut inner, victim).expect("victim is in the table");
                self.metrics.tcp_connections.dec();
                c.kill.cancel();
                evicted = Some(c.ip);
            }
            let id = inner.next;
            inner.next += 1;
            let conn = Arc::new(Conn {
                ip,
                busy: AtomicBool::new(false),
                last_ms: AtomicU64::new(self.now_ms()),
                kill: CancellationToken::new(),
            });
            inner.conns.insert(id, conn.clone());
            *inner.per_ip.entry(ip).or_default() += 1;
            self.metrics.tcp_connections.inc();
            Slot {
                table: self.clone(),
                id,
                conn,
            }
        };
        if let Some(victim) = evicted {
            self.hit(Limit::Evicted, victim);
        }
        Ok(slot)
    }

    fn remove_locked(inner: &mut Inner, id: u64) -> Option<Arc<Conn>> {
        let c = inner.conns.remove(&id)?;
        if let Some(n) = inner.per_ip.get_mut(&c.ip) {
            *n -= 1;
            if *n == 0 {
                inner.per_ip.remove(&c.ip);
            }
        }
        Some(c)
    }

    /// Connections open now (for tests and debugging).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .conns
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Slot {
    /// The connection waits for its next query: it may be evicted.
    pub fn idle(&self) {
        self.conn
            .last_ms
            .store(self.table.now_ms(), Ordering::Relaxed);
        self.conn.busy.store(false, Ordering::Relaxed);
    }

    /// A query was read: the connection is not evicted until its answer is written.
    pub fn busy(&self) {
        self.conn.busy.store(true, Ordering::Relaxed);
    }

    /// Resolves when the table closed this connection to admit another.
    pub async fn evicted(&self) {
        self.conn.kill.cancelled().await
    }

    pub fn table(&self) -> &ConnTable {
        &self.table
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.table.inner.lock().unwrap_or_else(|e| e.into_inner());
        if ConnTable::remove_locked(&mut inner, self.id).is_some() {
            self.table.metrics.tcp_connections.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max_connections: usize, max_per_client: usize) -> Arc<ConnTable> {
        let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
        ConnTable::new(
            TcpLimits {
                max_connections,
                max_per_client,
                idle_timeout: Duration::from_secs(10),
                write_timeout: Duration::from_secs(10),
            },
            metrics,
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_client_cap_then_eviction_of_the_oldest_idle() {
        let t = table(3, 2);
        let a1 = t.admit(ip("10.0.0.1")).unwrap();
        // IPv4-mapped IPv6 is the same client.
        let a2 = t.admit(ip("::ffff:10.0.0.1")).unwrap();
        assert_eq!(t.admit(ip("10.0.0.1")).err(), Some(Limit::PerClient));
        let b1 = t.admit(ip("10.0.0.2")).unwrap();
        // Full: a1 is the oldest idle one, but busy; a2 goes.
        a1.busy();
        std::thread::sleep(Duration::from_millis(2));
        b1.idle();
        let c1 = t.admit(ip("10.0.0.3")).unwrap();
        assert!(a2.conn.kill.is_cancelled());
        assert!(!a1.conn.kill.is_cancelled() && !b1.conn.kill.is_cancelled());
        assert_eq!(t.len(), 3);
        // Full again (a1 busy, b1 idle, c1 idle): b1 is older than c1 and goes.
        let d1 = t.admit(ip("10.0.0.4")).unwrap();
        assert!(b1.conn.kill.is_cancelled());
        assert!(!c1.conn.kill.is_cancelled());
        // Every connection busy: the new one is refused.
        c1.busy();
        d1.busy();
        assert_eq!(t.admit(ip("10.0.0.5")).err(), Some(Limit::MaxConnections));
        // Evicted slots were freed at eviction; dropping their handles changes nothing.
        drop((a2, b1));
        assert_eq!(t.len(), 3);
        drop((a1, c1, d1));
        assert!(t.is_empty());
    }

    #[test]
    fn no_per_client_cap_with_zero() {
        let t = table(100, 0);
        let slots: Vec<Slot> = (0..100).map(|_| t.admit(ip("10.0.0.1")).unwrap()).collect();
        assert_eq!(t.len(), 100);
        drop(slots);
        assert!(t.is_empty());
    }
}
