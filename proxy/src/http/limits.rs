//! Client limits that were hit: the counter `switchboard_http_limit_hits_total{limit}` and a
//! warning at most once per limit every [`LOG_EVERY`], saying how many hits it stands for, so a
//! flood of refused connections does not flood the log.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec};

/// The client limits (`HttpConfig::client`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// A request head not whole within `header_timeout` (slowloris).
    HeadTimeout,
    /// A request head larger than `max_header_bytes`.
    HeadSize,
    /// `max_connections` open: a new connection closed at once.
    Connections,
    /// `max_connections_per_client` open from one address: a new connection closed at once.
    PerClient,
    /// A write to the client made no progress for `write_timeout`.
    WriteTimeout,
}

const ALL: [Limit; 5] = [
    Limit::HeadTimeout,
    Limit::HeadSize,
    Limit::Connections,
    Limit::PerClient,
    Limit::WriteTimeout,
];

/// At most one log line per limit this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

impl Limit {
    /// The `limit` label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::HeadTimeout => "head_timeout",
            Limit::HeadSize => "head_size",
            Limit::Connections => "connections",
            Limit::PerClient => "per_client",
            Limit::WriteTimeout => "write_timeout",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Limit::HeadTimeout => "request head not complete within the header timeout; closed",
            Limit::HeadSize => "request head larger than the limit; refused",
            Limit::Connections => "connection limit reached; new connection closed",
            Limit::PerClient => "per-client connection limit reached; new connection closed",
            Limit::WriteTimeout => "client did not read within the write timeout; closed",
        }
    }
}

struct Slot {
    counter: IntCounter,
    /// Milliseconds since `LimitHits::epoch` of the last line logged, +1 (0: never).
    logged_at: AtomicU64,
    /// Hits since that line.
    since: AtomicU64,
}

/// Counts and logs client limits that were hit.
pub struct LimitHits {
    slots: Vec<Slot>,
    epoch: Instant,
}

impl LimitHits {
    pub fn new(counter: &IntCounterVec) -> Self {
        LimitHits {
            slots: ALL
                .iter()
                .map(|l| Slot {
                    counter: counter.with_label_values(&[l.label()]),
                    logged_at: AtomicU64::new(0),
                    since: AtomicU64::new(0),
                })
                .collect(),
            epoch: Instant::now(),
        }
    }

    /// One hit of `limit` by `client`: counted, and logged unless a line for this limit was
    /// logged less than [`LOG_EVERY`] ago.
    pub fn hit(&self, limit: Limit, client: Option<IpAddr>) {
        let slot = &self.slots[limit as usize];
        slot.counter.inc();
        let hits = slot.since.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = slot.logged_at.load(Ordering::Relaxed);
        if last != 0 && now < last + LOG_EVERY.as_millis() as u64 {
            return;
        }
        if slot
            .logged_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return; // another thread logs this one
        }
        slot.since.fetch_sub(hits, Ordering::Relaxed);
        let client = client.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
        tracing::warn!(
            limit = limit.label(),
            client,
            hits,
            "HTTP client limit: {} ({hits} hit(s) since the last such line, at most one line per {}s)",
            limit.what(),
            LOG_EVERY.as_secs()
        );
    }

    /// The counter's value for `limit` (tests).
    pub fn count(&self, limit: Limit) -> u64 {
        self.slots[limit as usize].counter.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hit_is_counted_but_logged_at_most_once_per_period() {
        let v = IntCounterVec::new(prometheus::Opts::new("x", "x"), &["limit"]).unwrap();
        let hits = LimitHits::new(&v);
        for _ in 0..1000 {
            hits.hit(Limit::PerClient, None);
        }
        hits.hit(Limit::HeadSize, None);
        assert_eq!(hits.count(Limit::PerClient), 1000);
        assert_eq!(hits.count(Limit::HeadSize), 1);
        assert_eq!(hits.count(Limit::Connections), 0);
        let slot = &hits.slots[Limit::PerClient as usize];
        // The first hit logged; the 999 after it wait for the next line.
        assert_eq!(slot.since.load(Ordering::Relaxed), 999);
        assert_eq!(v.with_label_values(&["per_client"]).get(), 1000);
    }
}
