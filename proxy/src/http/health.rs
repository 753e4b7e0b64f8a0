//! Per-endpoint load and health, owned by the proxy and keyed by endpoint address, so a table
//! swap keeps it: in-flight requests, a latency EWMA, consecutive failures, and passive outlier
//! ejection.
//!
//! Ejection: after `consecutive_failures` connect failures or 5xx answers in a row, an endpoint is
//! ejected for `base_ejection × times ejected before` (capped at 10 × base), unless that would
//! eject more than `max_ejected_percent` of its service port's usable endpoints. When the time is
//! up it is re-admitted: one success resets its count; one more failure ejects it again, longer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Added to every latency EWMA before scores are compared (see [`EndpointState::score`]): with
/// the 25% tie of `balance::LeastRequest`, endpoints within about 1.25 ms (fast ones) or 25%
/// (slow ones) of each other count as equal.
pub const LATENCY_ALLOWANCE: Duration = Duration::from_millis(5);

/// How fast an idle endpoint's latency EWMA fades.
pub const DECAY_HALF_LIFE: Duration = Duration::from_millis(250);

/// Latency samples an endpoint needs before its latency counts at all: fewer are no signal
/// (one answer slowed by a busy node would otherwise push an endpoint out for a while).
pub const MIN_SAMPLES: u32 = 8;

/// Outlier ejection settings.
#[derive(Clone, Debug)]
pub struct OutlierConfig {
    /// Failures in a row (connect failures or 5xx) that eject an endpoint; 0 disables ejection.
    pub consecutive_failures: u32,
    /// The first ejection's length; later ones are multiples of it. Zero disables ejection.
    pub base_ejection: Duration,
    /// At most this share of a service port's endpoints is ejected at once.
    pub max_ejected_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejected_percent: 50,
        }
    }
}

/// The live state of one endpoint address.
#[derive(Debug)]
pub struct EndpointState {
    pub addr: SocketAddr,
    in_flight: AtomicI64,
    /// Latency EWMA in microseconds (f64 bits); 0 = no sample yet.
    ewma_us: AtomicU64,
    samples: AtomicU32,
    /// Milliseconds since `epoch` of the last latency sample.
    sampled_ms: AtomicU64,
    consecutive_failures: AtomicU32,
    times_ejected: AtomicU32,
    /// Milliseconds since `epoch` until which the endpoint is ejected; 0 = not ejected.
    ejected_until_ms: AtomicU64,
    epoch: Instant,
}

/// What a failure did to the endpoint.
#[derive(Debug, PartialEq, Eq)]
pub enum FailureOutcome {
    Counted,
    Ejected,
}

impl EndpointState {
    fn new(addr: SocketAddr, epoch: Instant) -> Self {
        EndpointState {
            addr,
            in_flight: AtomicI64::new(0),
            ewma_us: AtomicU64::new(0),
            samples: AtomicU32::new(0),
            sampled_ms: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            times_ejected: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            epoch,
        }
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed).max(0)
    }

    pub fn start_request(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn end_request(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// The load score P2C compares: (latency EWMA + [`LATENCY_ALLOWANCE`]) × (in-flight + 1).
    ///
    /// The allowance makes latency differences of a millisecond or two no signal: at low load
    /// those are noise, and mostly the cost of a new upstream connection, so without it the
    /// endpoint whose pooled connection was warm kept winning and sequential requests went
    /// 86–99% to one of two equal endpoints (#18). With it, equal endpoints tie and the tie is
    /// broken at random; an endpoint slower by much more than the allowance still loses, and
    /// under load the in-flight factor decides. Endpoints with fewer than [`MIN_SAMPLES`] samples
    /// score as the fastest possible, so new endpoints get tried and a few slow first answers
    /// are no signal. The EWMA decays while an endpoint gets no traffic
    /// (halving about every `DECAY_HALF_LIFE`), so one slow answer does not starve it forever:
    /// it is probed again and its new samples count.
    pub fn score(&self) -> f64 {
        self.score_at(Instant::now())
    }

    /// [`Self::score`] at `now` (a clock reading the caller shares between endpoints).
    pub fn score_at(&self, now: Instant) -> f64 {
        let ewma = if self.samples.load(Ordering::Relaxed) < MIN_SAMPLES {
            0.0
        } else {
            f64::from_bits(self.ewma_us.load(Ordering::Relaxed))
        };
        let idle_ms = self
            .ms_at(now)
            .saturating_sub(self.sampled_ms.load(Ordering::Relaxed));
        // Without `exp` where it cannot change the score: no idle time (decay 1, as `exp(-0)`),
        // or no average to decay. Under load most scores are taken within the millisecond
        // of their endpoint's last sample.
        let decay = if idle_ms == 0 || ewma == 0.0 {
            1.0
        } else {
            (-(idle_ms as f64) / DECAY_HALF_LIFE.as_millis() as f64 * std::f64::consts::LN_2).exp()
        };
        let allowance = LATENCY_ALLOWANCE.as_micros() as f64;
        (ewma * decay + allowance) * (self.in_flight() as f64 + 1.0)
    }

    /// Folds one latency sample into the average: the mean of the samples so far, then an
    /// EWMA with α = 0.1 (about the last ten), so noise of single answers averages out.
    pub fn observe_latency(&self, d: Duration) {
        self.observe_latency_at(d, Instant::now());
    }

    /// [`Self::observe_latency`] of an answer that came at `now`.
    pub fn observe_latency_at(&self, d: Duration, now: Instant) {
        let sample = d.as_secs_f64() * 1e6;
        let n = self
            .samples
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let old = f64::from_bits(self.ewma_us.load(Ordering::Relaxed));
        let alpha = (1.0 / f64::from(n)).max(0.1);
        let new = old + alpha * (sample - old);
        self.ewma_us.store(new.to_bits(), Ordering::Relaxed);
        self.sampled_ms.store(self.ms_at(now), Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// Milliseconds from `epoch` to `t`.
    fn ms_at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Whether the endpoint is ejected right now.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejected_until_ms.load(Ordering::Relaxed) != 0 && !self.is_ejected() {
            // Re-admitted and proved healthy: the next ejection starts short again.
            self.ejected_until_ms.store(0, Ordering::Relaxed);
            self.times_ejected.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure; ejects when the threshold is reached and `may_eject` allows it (the
    /// share cap of the caller's endpoint set).
    pub fn record_failure(
        &self,
        cfg: &OutlierConfig,
        may_eject: impl FnOnce() -> bool,
    ) -> FailureOutcome {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if cfg.consecutive_failures == 0
            || cfg.base_ejection.is_zero()
            || n < cfg.consecutive_failures
            || self.is_ejected()
        {
            return FailureOutcome::Counted;
        }
        // A re-admitted endpoint that fails once more goes straight back out.
        if !may_eject() {
            return FailureOutcome::Counted;
        }
        let times = self.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        let length = cfg.base_ejection * times.min(10);
        let until = self.now_ms() + length.as_millis() as u64;
        self.ejected_until_ms.store(until.max(1), Ordering::Relaxed);
        // Re-admission after the ejection needs only one more failure to eject again.
        self.consecutive_failures.store(
            cfg.consecutive_failures.saturating_sub(1),
            Ordering::Relaxed,
        );
        FailureOutcome::Ejected
    }
}

/// Every endpoint's state, by address. Entries live as long as some balancer holds them, plus
/// until the next prune.
#[derive(Debug)]
pub struct HealthRegistry {
    map: Mutex<HashMap<SocketAddr, Arc<EndpointState>>>,
    epoch: Instant,
}

impl Default for HealthRegistry {
    fn default() -> Self {
        HealthRegistry {
            map: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        }
    }
}

impl HealthRegistry {
    pub fn get(&self, addr: SocketAddr) -> Arc<EndpointState> {
        let mut map = self.map.lock().unwrap();
        map.entry(addr)
            .or_insert_with(|| Arc::new(EndpointState::new(addr, self.epoch)))
            .clone()
    }

    /// Drops states nobody references (endpoints that left every table), except ejected ones,
    /// so an endpoint that flaps out and back in keeps its ejection.
    pub fn prune(&self) {
        let mut map = self.map.lock().unwrap();
        map.retain(|_, s| Arc::strong_count(s) > 1 || s.is_ejected());
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejects_after_threshold_and_readmits() {
        let reg = HealthRegistry::default();
        let s = reg.get("10.0.0.1:80".parse().unwrap());
        let cfg = OutlierConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_millis(0),
            max_ejected_percent: 50,
        };
        assert_eq!(s.record_failure(&cfg, || true), FailureOutcome::Counted);
        assert_eq!(s.record_failure(&cfg, || true), FailureOutcome::Counted);
        // The cap refuses: counted only.
        assert_eq!(s.record_failure(&cfg, || false), FailureOutcome::Counted);
        let cfg = OutlierConfig {
            base_ejection: Duration::from_secs(3600),
            ..cfg
        };
        assert_eq!(s.record_failure(&cfg, || true), FailureOutcome::Ejected);
        assert!(s.is_ejected());
        // Already ejected: further failures only count.
        assert_eq!(s.record_failure(&cfg, || true), FailureOutcome::Counted);
    }

    #[test]
    fn readmitted_after_ejection_time() {
        let reg = HealthRegistry::default();
        let s = reg.get("10.0.0.1:80".parse().unwrap());
        let cfg = OutlierConfig {
            consecutive_failures: 1,
            base_ejection: Duration::from_millis(1),
            max_ejected_percent: 100,
        };
        assert_eq!(s.record_failure(&cfg, || true), FailureOutcome::Ejected);
        std::thread::sleep(Duration::from_millis(5));
        assert!(!s.is_ejected());
        s.record_success();
        assert_eq!(s.times_ejected.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn score_prefers_fast_and_idle() {
        let reg = HealthRegistry::default();
        let a = reg.get("10.0.0.1:80".parse().unwrap());
        let b = reg.get("10.0.0.2:80".parse().unwrap());
        for _ in 0..MIN_SAMPLES {
            a.observe_latency(Duration::from_millis(1));
            b.observe_latency(Duration::from_millis(10));
        }
        assert!(a.score() < b.score());
        for _ in 0..20 {
            a.start_request();
        }
        assert!(a.score() > b.score());
        drop((a, b));
        reg.prune();
        assert!(reg.is_empty());
    }
}
