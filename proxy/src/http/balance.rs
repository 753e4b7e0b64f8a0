//! Choosing an endpoint: small selection algorithms behind one trait, shaped as
//! pingora-load-balancing's `selection` module (`BackendSelection::build` over the backend set,
//! `iter(key)` yielding the first choice and then fallbacks), but built over the usable endpoints
//! of one service port and rebuilt whenever the table publishes a new endpoint list.
//!
//! Algorithms:
//! - `LeastRequest`: power of two random choices, comparing (latency EWMA + 5 ms) × (in-flight + 1)
//!   (the default; linkerd's and Envoy's least-request balancers work this way). Scores within
//!   25% are a tie, broken at random: at low load, where there is no latency signal worth the
//!   name, equal endpoints share sequential requests evenly (binomially); under load the
//!   in-flight factor and real latency differences decide (`health::EndpointState::score`).
//! - `RoundRobin`.
//! - `Maglev` and `Ketama`: consistent hashing on a request key (a header, a cookie, or the
//!   client IP), for session persistence that survives endpoint churn with minimal remapping.
//!
//! The iterators yield every endpoint at most once for the consistent and round-robin cases
//! after the first choice; callers skip ejected or already-tried endpoints and keep iterating.

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::health::EndpointState;

/// The choice of algorithm, with the hash key for the consistent ones.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    #[default]
    LeastRequest,
    RoundRobin,
    Maglev(HashKey),
    Ketama(HashKey),
}

/// What a consistent-hash balancer hashes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum HashKey {
    #[default]
    ClientIp,
    Header(http::HeaderName),
    Cookie(String),
}

#[derive(Debug, thiserror::Error)]
#[error("load-balancing algorithm {0:?}: expected least-request, round-robin, maglev[:KEY] or ketama[:KEY] with KEY client-ip, header:NAME or cookie:NAME")]
pub struct AlgorithmParseError(String);

impl FromStr for Algorithm {
    type Err = AlgorithmParseError;
    /// `least-request`, `round-robin`, `maglev`, `ketama`, the hashing ones optionally followed by
    /// `:client-ip`, `:header:NAME` or `:cookie:NAME`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || AlgorithmParseError(s.to_string());
        let (name, key) = match s.split_once(':') {
            Some((n, k)) => (n, Some(k)),
            None => (s, None),
        };
        let key = match key {
            None | Some("client-ip") => HashKey::ClientIp,
            Some(k) => match k.split_once(':') {
                Some(("header", h)) => HashKey::Header(
                    http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                        .map_err(|_| err())?,
                ),
                Some(("cookie", c)) if !c.is_empty() => HashKey::Cookie(c.to_string()),
                _ => return Err(err()),
            },
        };
        match name {
            "least-request" if key == HashKey::ClientIp && !s.contains(':') => {
                Ok(Algorithm::LeastRequest)
            }
            "round-robin" if !s.contains(':') => Ok(Algorithm::RoundRobin),
            "maglev" => Ok(Algorithm::Maglev(key)),
            "ketama" => Ok(Algorithm::Ketama(key)),
            _ => Err(err()),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = |k: &HashKey| match k {
            HashKey::ClientIp => "client-ip".to_string(),
            HashKey::Header(h) => format!("header:{h}"),
            HashKey::Cookie(c) => format!("cookie:{c}"),
        };
        match self {
            Algorithm::LeastRequest => f.write_str("least-request"),
            Algorithm::RoundRobin => f.write_str("round-robin"),
            Algorithm::Maglev(k) => write!(f, "maglev:{}", key(k)),
            Algorithm::Ketama(k) => write!(f, "ketama:{}", key(k)),
        }
    }
}

impl Algorithm {
    pub fn hash_key(&self) -> Option<&HashKey> {
        match self {
            Algorithm::Maglev(k) | Algorithm::Ketama(k) => Some(k),
            _ => None,
        }
    }
}

/// Builds a selection over a set of endpoints and yields choices for a key (as
/// pingora-load-balancing's trait of the same name).
pub trait BackendSelection: Sized {
    type Iter<'a>: BackendIter
    where
        Self: 'a;
    /// Called when the endpoint set changes (a new table), never per request.
    fn build(endpoints: &[Arc<EndpointState>]) -> Self;
    /// The first choice for `key`, then fallbacks. `key` is ignored by the non-hashing ones.
    fn iter(&self, key: u64) -> Self::Iter<'_>;
}

/// Indices into the endpoint slice the selection was built from.
pub trait BackendIter {
    fn next(&mut self) -> Option<usize>;
}

/// Visits indices `start, start+1, …` modulo `n`, each once.
pub struct Sequential {
    next: usize,
    left: usize,
    n: usize,
}

impl BackendIter for Sequential {
    fn next(&mut self) -> Option<usize> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let i = self.next % self.n;
        self.next = self.next.wrapping_add(1);
        Some(i)
    }
}

// ---- round robin ----

pub struct RoundRobin {
    n: usize,
    counter: AtomicUsize,
}

impl BackendSelection for RoundRobin {
    type Iter<'a> = Sequential;
    fn build(endpoints: &[Arc<EndpointState>]) -> Self {
        RoundRobin {
            n: endpoints.len(),
            counter: AtomicUsize::new(fastrand::usize(..endpoints.len().max(1))),
        }
    }
    fn iter(&self, _key: u64) -> Sequential {
        Sequential {
            next: self.counter.fetch_add(1, Ordering::Relaxed),
            left: self.n,
            n: self.n.max(1),
        }
    }
}

// ---- least request (P2C over EWMA × in-flight) ----

/// Two P2C scores closer than this factor count as equal.
const TIE: f64 = 1.25;

pub struct LeastRequest {
    endpoints: Vec<Arc<EndpointState>>,
}

pub struct LeastRequestIter<'a> {
    _lr: std::marker::PhantomData<&'a LeastRequest>,
    first: Option<usize>,
    second: Option<usize>,
    rest: Sequential,
}

impl BackendIter for LeastRequestIter<'_> {
    fn next(&mut self) -> Option<usize> {
        if let Some(i) = self.first.take() {
            return Some(i);
        }
        if let Some(i) = self.second.take() {
            return Some(i);
        }
        // Fallbacks: everything, from a random start (duplicates of the first two are harmless:
        // callers skip tried endpoints).
        self.rest.next()
    }
}

impl BackendSelection for LeastRequest {
    type Iter<'a> = LeastRequestIter<'a>;
    fn build(endpoints: &[Arc<EndpointState>]) -> Self {
        LeastRequest {
            endpoints: endpoints.to_vec(),
        }
    }
    fn iter(&self, _key: u64) -> LeastRequestIter<'_> {
        let n = self.endpoints.len();
        let rest = Sequential {
            next: fastrand::usize(..n.max(1)),
            left: n,
            n: n.max(1),
        };
        let (first, second) = match n {
            0 => (None, None),
            1 => (Some(0), None),
            _ => {
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                // Scores within 25% of each other are a tie (with the latency allowance in the
                // score, that is any two idle endpoints within a millisecond or so); `a` and `b`
                // are random, so keeping their order breaks the tie at random.
                // One clock reading for both (each is ~50 ns on a virtual machine).
                let now = std::time::Instant::now();
                let (sa, sb) = (
                    self.endpoints[a].score_at(now),
                    self.endpoints[b].score_at(now),
                );
                if sb * TIE < sa {
                    (Some(b), Some(a))
                } else {
                    (Some(a), Some(b))
                }
            }
        };
        LeastRequestIter {
            _lr: std::marker::PhantomData,
            first,
            second,
            rest,
        }
    }
}

fn hash_of(x: impl Hash, seed: u64) -> u64 {
    let mut h = DefaultHasher::new();
    seed.hash(&mut h);
    x.hash(&mut h);
    h.finish()
}

/// The hash of a request key (stable across processes: `DefaultHasher::new()` has fixed keys).
pub fn key_hash(key: &[u8]) -> u64 {
    hash_of(key, 0x5eed)
}

// ---- Maglev ----

/// Maglev consistent hashing (Eisenbud et al., NSDI 2016) with a 65537-entry lookup table.
pub struct Maglev {
    table: Vec<u32>,
    n: usize,
}

const MAGLEV_SIZE: usize = 65537; // prime

fn addr_key(e: &EndpointState) -> SocketAddr {
    e.addr
}

impl BackendSelection for Maglev {
    type Iter<'a> = MaglevIter<'a>;
    fn build(endpoints: &[Arc<EndpointState>]) -> Self {
        let n = endpoints.len();
        if n == 0 {
            return Maglev {
                table: vec![],
                n: 0,
            };
        }
        let m = MAGLEV_SIZE as u64;
        let perms: Vec<(u64, u64)> = endpoints
            .iter()
            .map(|e| {
                let a = addr_key(e);
                let offset = hash_of(a, 1) % m;
                let skip = hash_of(a, 2) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; n];
        let mut table = vec![u32::MAX; MAGLEV_SIZE];
        let mut filled = 0;
        'fill: loop {
            for i in 0..n {
                let (offset, skip) = perms[i];
                let mut c = (offset + next[i] * skip) % m;
                while table[c as usize] != u32::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                table[c as usize] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == MAGLEV_SIZE {
                    break 'fill;
                }
            }
        }
        Maglev { table, n }
    }
    fn iter(&self, key: u64) -> MaglevIter<'_> {
        MaglevIter {
            maglev: self,
            pos: (key % MAGLEV_SIZE as u64) as usize,
            steps: 0,
            seen: Vec::new(),
        }
    }
}

/// The table entry for the key, then the following distinct entries.
pub struct MaglevIter<'a> {
    maglev: &'a Maglev,
    pos: usize,
    steps: usize,
    seen: Vec<usize>,
}

impl BackendIter for MaglevIter<'_> {
    fn next(&mut self) -> Option<usize> {
        if self.maglev.n == 0 || self.seen.len() >= self.maglev.n {
            return None;
        }
        while self.steps < MAGLEV_SIZE {
            let i = self.maglev.table[(self.pos + self.steps) % MAGLEV_SIZE] as usize;
            self.steps += 1;
            if !self.seen.contains(&i) {
                self.seen.push(i);
                return Some(i);
            }
        }
        None
    }
}

// ---- Ketama ----

/// A Ketama-style hash ring: 160 points per endpoint, the first point clockwise of the key.
pub struct Ketama {
    ring: Vec<(u64, u32)>,
    n: usize,
}

impl BackendSelection for Ketama {
    type Iter<'a> = KetamaIter<'a>;
    fn build(endpoints: &[Arc<EndpointState>]) -> Self {
        let mut ring = Vec::with_capacity(endpoints.len() * 160);
        for (i, e) in endpoints.iter().enumerate() {
            for p in 0..160u64 {
                ring.push((hash_of(addr_key(e), 1000 + p), i as u32));
            }
        }
        ring.sort_unstable();
        Ketama {
            ring,
            n: endpoints.len(),
        }
    }
    fn iter(&self, key: u64) -> KetamaIter<'_> {
        KetamaIter {
            ketama: self,
            pos: self.ring.partition_point(|&(h, _)| h < key),
            steps: 0,
            seen: Vec::new(),
        }
    }
}

pub struct KetamaIter<'a> {
    ketama: &'a Ketama,
    pos: usize,
    steps: usize,
    seen: Vec<usize>,
}

impl BackendIter for KetamaIter<'_> {
    fn next(&mut self) -> Option<usize> {
        let len = self.ketama.ring.len();
        if self.ketama.n == 0 || self.seen.len() >= self.ketama.n {
            return None;
        }
        while self.steps < len {
            let i = self.ketama.ring[(self.pos + self.steps) % len].1 as usize;
            self.steps += 1;
            if !self.seen.contains(&i) {
                self.seen.push(i);
                return Some(i);
            }
        }
        None
    }
}

/// One of the algorithms, built over one endpoint set.
pub enum Selector {
    LeastRequest(LeastRequest),
    RoundRobin(RoundRobin),
    Maglev(Maglev),
    Ketama(Ketama),
}

/// Iterator over whichever algorithm.
pub enum SelectorIter<'a> {
    LeastRequest(LeastRequestIter<'a>),
    RoundRobin(Sequential),
    Maglev(MaglevIter<'a>),
    Ketama(KetamaIter<'a>),
}

impl BackendIter for SelectorIter<'_> {
    fn next(&mut self) -> Option<usize> {
        match self {
            SelectorIter::LeastRequest(i) => i.next(),
            SelectorIter::RoundRobin(i) => i.next(),
            SelectorIter::Maglev(i) => i.next(),
            SelectorIter::Ketama(i) => i.next(),
        }
    }
}

impl Selector {
    pub fn build(algorithm: &Algorithm, endpoints: &[Arc<EndpointState>]) -> Selector {
        match algorithm {
            Algorithm::LeastRequest => Selector::LeastRequest(LeastRequest::build(endpoints)),
            Algorithm::RoundRobin => Selector::RoundRobin(RoundRobin::build(endpoints)),
            Algorithm::Maglev(_) => Selector::Maglev(Maglev::build(endpoints)),
            Algorithm::Ketama(_) => Selector::Ketama(Ketama::build(endpoints)),
        }
    }

    pub fn iter(&self, key: u64) -> SelectorIter<'_> {
        match self {
            Selector::LeastRequest(s) => SelectorIter::LeastRequest(s.iter(key)),
            Selector::RoundRobin(s) => SelectorIter::RoundRobin(s.iter(key)),
            Selector::Maglev(s) => SelectorIter::Maglev(s.iter(key)),
            Selector::Ketama(s) => SelectorIter::Ketama(s.iter(key)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::health::HealthRegistry;

    fn eps(reg: &HealthRegistry, n: usize) -> Vec<Arc<EndpointState>> {
        (0..n)
            .map(|i| reg.get(format!("10.0.0.{}:80", i + 1).parse().unwrap()))
            .collect()
    }

    #[test]
    fn parse_and_print() {
        for s in [
            "least-request",
            "round-robin",
            "maglev:client-ip",
            "ketama:header:x-user",
            "maglev:cookie:session",
        ] {
            assert_eq!(s.parse::<Algorithm>().unwrap().to_string(), s);
        }
        assert_eq!(
            "maglev".parse::<Algorithm>().unwrap(),
            Algorithm::Maglev(HashKey::ClientIp)
        );
        assert!("random".parse::<Algorithm>().is_err());
        assert!("round-robin:x".parse::<Algorithm>().is_err());
        assert!("maglev:cookie:".parse::<Algorithm>().is_err());
    }

    #[test]
    fn round_robin_cycles() {
        let reg = HealthRegistry::default();
        let rr = RoundRobin::build(&eps(&reg, 3));
        let firsts: Vec<usize> = (0..6).map(|_| rr.iter(0).next().unwrap()).collect();
        let mut counts = [0; 3];
        firsts.iter().for_each(|&i| counts[i] += 1);
        assert_eq!(counts, [2, 2, 2]);
        let all: Vec<usize> = {
            let mut it = rr.iter(0);
            std::iter::from_fn(|| it.next()).collect()
        };
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn least_request_spreads_over_equal_endpoints() {
        let reg = HealthRegistry::default();
        let e = eps(&reg, 2);
        e[0].observe_latency(std::time::Duration::from_micros(1000));
        e[1].observe_latency(std::time::Duration::from_micros(1100));
        let counts = first_choices(&LeastRequest::build(&e));
        assert!(counts[0] > 350 && counts[1] > 350, "{counts:?}");
    }

    /// How often each of two endpoints is chosen first in 1000 picks.
    fn first_choices(lr: &LeastRequest) -> [usize; 2] {
        let mut counts = [0; 2];
        for _ in 0..1000 {
            counts[lr.iter(0).next().unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn least_request_ignores_connection_setup_noise_at_low_load() {
        // Sequential requests: nothing in flight, and one endpoint looks 4× faster because its
        // pooled connection was warm. Both must still get a fair share (#18: 86–99% to one).
        let reg = HealthRegistry::default();
        let e = eps(&reg, 2);
        for _ in 0..crate::http::health::MIN_SAMPLES {
            e[0].observe_latency(std::time::Duration::from_micros(200));
            e[1].observe_latency(std::time::Duration::from_micros(900));
        }
        let counts = first_choices(&LeastRequest::build(&e));
        assert!(counts[0] > 400 && counts[1] > 400, "{counts:?}");
    }

    #[test]
    fn least_request_prefers_a_much_faster_endpoint() {
        let reg = HealthRegistry::default();
        let e = eps(&reg, 2);
        let slow = |n| {
            for _ in 0..n {
                e[0].observe_latency(std::time::Duration::from_millis(2));
                e[1].observe_latency(std::time::Duration::from_millis(40));
            }
        };
        // Fewer samples than MIN_SAMPLES are no signal: a tie, broken at random.
        slow(crate::http::health::MIN_SAMPLES - 1);
        let counts = first_choices(&LeastRequest::build(&e));
        assert!(counts[0] > 400 && counts[1] > 400, "{counts:?}");
        slow(1);
        assert_eq!(first_choices(&LeastRequest::build(&e)), [1000, 0]);
    }

    #[test]
    fn one_slow_answer_among_many_does_not_push_an_endpoint_out() {
        // A busy node delays one answer 4×: averaged over the samples, still a tie. (Before, one
        // such answer moved the EWMA by 30% of it and the endpoint lost every pick for a while.)
        let reg = HealthRegistry::default();
        let e = eps(&reg, 2);
        for _ in 0..20 {
            e[0].observe_latency(std::time::Duration::from_millis(3));
            e[1].observe_latency(std::time::Duration::from_millis(3));
        }
        e[1].observe_latency(std::time::Duration::from_millis(12));
        let counts = first_choices(&LeastRequest::build(&e));
        assert!(counts[0] > 400 && counts[1] > 400, "{counts:?}");
    }

    #[test]
    fn least_request_avoids_loaded() {
        let reg = HealthRegistry::default();
        let e = eps(&reg, 2);
        for _ in 0..50 {
            e[0].start_request();
        }
        let lr = LeastRequest::build(&e);
        for _ in 0..20 {
            assert_eq!(lr.iter(0).next(), Some(1));
        }
    }

    fn consistent_remap<S: BackendSelection>() {
        let reg = HealthRegistry::default();
        let five = eps(&reg, 5);
        let s5 = S::build(&five);
        let s4 = S::build(&five[..4]);
        let mut moved = 0;
        let mut counts = [0usize; 5];
        for k in 0..5000u64 {
            let key = key_hash(&k.to_le_bytes());
            let a = s5.iter(key).next().unwrap();
            counts[a] += 1;
            // The same key maps the same way every time.
            assert_eq!(s5.iter(key).next(), Some(a));
            let b = s4.iter(key).next().unwrap();
            if a != 4 && a != b {
                moved += 1;
            }
            let mut all: Vec<usize> = {
                let mut it = s5.iter(key);
                std::iter::from_fn(|| it.next()).collect()
            };
            all.sort();
            assert_eq!(all, [0, 1, 2, 3, 4]);
        }
        // Removing one endpoint moves (almost) only its keys.
        assert!(moved < 250, "moved {moved}");
        for c in counts {
            assert!((600..1400).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn maglev_is_consistent() {
        consistent_remap::<Maglev>();
    }

    #[test]
    fn ketama_is_consistent() {
        consistent_remap::<Ketama>();
    }
}
