//! Forwarding names outside the cluster zone to the upstream servers.
//!
//! ```text
//!  query ─> cache (fresh?) ─hit─> answer
//!             │ miss
//!             v
//!  in-flight permit? ─no─> REFUSED
//!             │
//!  upstreams, healthy ones first, in configured order:
//!    UDP (fresh socket, random ID) ─TC─> same upstream over TCP
//!    timeout / I/O error / SERVFAIL / REFUSED ─> next upstream
//!             │ all failed
//!             v
//!  stale cache entry? ─yes─> answer with a short TTL (serve-stale)
//!             │ no
//!             v
//!          SERVFAIL (or the last upstream error answer)
//! ```
//!
//! Health: an upstream with `MAX_FAILS` consecutive failures is "down": it is tried only after
//! the healthy ones, and a background check (`. IN NS` every second) brings it back when it
//! answers.
//!
//! Loops (our upstream sends our own queries back to us, directly or through other servers):
//!
//! ```text
//!  probe burst for upstream U: HINFO <random>.<random>.switchboard-loop-check. to U,
//!    every PROBE_EVERY until U answers it, at most PROBE_FOR (CoreDNS `loop`: 30 s)
//!    started: at start, for every upstream;
//!             when a query arrives from U's address for a name we are forwarding to U;
//!             when a query to U times out;
//!             when FANOUT_PROBE queries for one name are in flight to U at once
//!  the probe name of U arrives at our listener LOOP_THRESHOLD times ─────────┐
//!  a query arrives with the ID, name and type of one we have in flight to U,  ├─> U loops
//!    LOOP_THRESHOLD times within RETURN_WINDOW ─────────────────────────────┘
//!  U loops: logged once (error, with U's address), switchboard_dns_forward_loop_detected{to=U}
//!           = 1, U is never asked again; with no upstream left, forwarded names get SERVFAIL.
//! ```
//!
//! CoreDNS's `loop` probes only at start and exits the process; a loop that forms later (an
//! upstream that did not answer at start) multiplies every forwarded query until timeouts. Here
//! a returning query is recognised after a few hops, whether the middle server keeps our query
//! ID (then the ID gives it away) or not (then it comes from the upstream's address, or piles
//! up as FANOUT_PROBE forwards of one name, either of which starts a probe, and the probe gives
//! it away); the process keeps serving the cluster zone. The suspicions only start probes: only
//! our own random probe name or our own query IDs coming back mark an upstream as looping.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::cache::{self, Cache, Lookup};
use crate::config::DnsConfig;
use crate::metrics::{rcode_label, Metrics, Plugin};

/// Consecutive failures after which an upstream counts as down.
const MAX_FAILS: u32 = 2;
/// Receipts of our own probe (or of our own forwarded queries) that prove a loop (CoreDNS:
/// "seen more than twice").
const LOOP_THRESHOLD: u32 = 3;
/// Returned forwarded queries count toward `LOOP_THRESHOLD` within this window.
const RETURN_WINDOW: Duration = Duration::from_secs(10);
/// A probe burst sends one probe this often...
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// ...until one is answered, for at most this long (CoreDNS `loop`: 30 s).
const PROBE_FOR: Duration = Duration::from_secs(30);
/// Forwards of one name to one upstream in flight at once that start a probe (a loop adds one
/// per hop; a burst of clients asking one uncached name costs at most a probe).
const FANOUT_PROBE: usize = 8;
/// Probes sent out of turn (a burst is running and another query came back) at most this often.
const POKE_EVERY: Duration = Duration::from_millis(100);
/// Suffix of every probe name (without the trailing dot).
const PROBE_SUFFIX: &str = ".switchboard-loop-check";

struct Upstream {
    addr: SocketAddr,
    label: String,
    fails: AtomicU32,
    /// Our queries came back through it: never asked again.
    looped: AtomicBool,
    /// The probe name of the current burst (lower case, no trailing dot).
    probe: Mutex<String>,
    probe_seen: AtomicU32,
    /// A probe burst is running.
    probing: AtomicBool,
    /// When a probe was last sent out of turn (see `start_probe`).
    last_poke: Mutex<Option<Instant>>,
    /// When forwarded queries to it came back to us (within `RETURN_WINDOW`).
    returns: Mutex<VecDeque<Instant>>,
}

fn probe_name() -> String {
    format!(
        "{:016x}.{:016x}{PROBE_SUFFIX}",
        fastrand::u64(..),
        fastrand::u64(..)
    )
}

/// A forwarded query waiting for an upstream.
struct InFlight {
    qtype: u16,
    id: u16,
    upstream: usize,
}

/// Lower-case name without the trailing dot, as `wire::Query::name_lower` gives it.
fn name_key(name: &Name) -> String {
    let mut s = name.to_lowercase().to_ascii();
    if s.len() > 1 && s.ends_with('.') {
        s.pop();
    }
    s
}

impl Upstream {
    fn down(&self) -> bool {
        self.fails.load(Ordering::Relaxed) >= MAX_FAILS
    }
}

/// A resolved forwarded question.
#[derive(Debug)]
pub struct Resolved {
    pub rcode: u16,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
    pub plugin: Plugin,
}

impl Resolved {
    fn servfail() -> Resolved {
        Resolved {
            rcode: 2,
            answers: vec![],
            authorities: vec![],
            additionals: vec![],
            plugin: Plugin::Forward,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad response: {0}")]
    Bad(String),
}

pub struct Forwarder {
    upstreams: Vec<Upstream>,
    in_flight: Arc<Semaphore>,
    pub cache: Cache,
    timeout: Duration,
    stale_ttl: u32,
    metrics: Metrics,
    /// `server` label of the cache metrics (the first listener).
    server: String,
    loop_detect: bool,
    /// Forwarded queries in flight by name, to recognise one coming back.
    in_flight_names: Mutex<HashMap<String, Vec<InFlight>>>,
    in_flight_count: AtomicUsize,
    /// Probes to send (upstream index; `true`: one probe of the running burst, now; `false`: a
    /// new burst), taken by `run_background`.
    probe_tx: tokio::sync::mpsc::UnboundedSender<(usize, bool)>,
    probe_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(usize, bool)>>>,
}

impl Forwarder {
    pub fn new(cfg: &DnsConfig, metrics: Metrics, server: String) -> Forwarder {
        let (probe_tx, probe_rx) = tokio::sync::mpsc::unbounded_channel();
        Forwarder {
            upstreams: cfg
                .upstreams
                .iter()
                .map(|&addr| Upstream {
                    addr,
                    label: addr.to_string(),
                    fails: AtomicU32::new(0),
                    looped: AtomicBool::new(false),
                    probe: Mutex::new(probe_name()),
                    probe_seen: AtomicU32::new(0),
                    probing: AtomicBool::new(false),
                    last_poke: Mutex::new(None),
                    returns: Mutex::new(VecDeque::new()),
                })
                .collect(),
            in_flight: Arc::new(Semaphore::new(cfg.max_concurrent_forwards)),
            cache: Cache::new(
                cfg.cache_size,
                cfg.cache_max_ttl,
                cfg.cache_max_negative_ttl,
                cfg.cache_negative_default_ttl,
                cfg.serve_stale,
            ),
            timeout: cfg.forward_timeout,
            stale_ttl: cfg.stale_ttl,
            metrics,
            server,
            loop_detect: cfg.loop_detect,
            in_flight_names: Mutex::new(HashMap::new()),
            in_flight_count: AtomicUsize::new(0),
            probe_tx,
            probe_rx: Mutex::new(Some(probe_rx)),
        }
    }

    pub fn has_upstreams(&self) -> bool {
        !self.upstreams.is_empty()
    }

    /// Notes a query for a name outside the zone arriving at a listener from `src`: our own
    /// probe coming back, or one of our forwarded queries coming back (see the module doc).
    pub fn observe(&self, name_lower: &str, qtype: u16, id: u16, src: SocketAddr) {
        if !self.loop_detect {
            return;
        }
        if name_lower.ends_with(PROBE_SUFFIX) {
            for (i, up) in self.upstreams.iter().enumerate() {
                if *up.probe.lock().unwrap_or_else(|e| e.into_inner()) == name_lower {
                    let seen = up.probe_seen.fetch_add(1, Ordering::Relaxed) + 1;
                    if seen >= LOOP_THRESHOLD {
                        self.mark_looped(i, "our loop probe came back");
                    }
                }
            }
            return;
        }
        if self.in_flight_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut by_id = None;
        let mut by_addr = None;
        {
            let names = self
                .in_flight_names
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let Some(list) = names.get(name_lower) else {
                return;
            };
            for f in list.iter().filter(|f| f.qtype == qtype) {
                if f.id == id {
                    by_id = Some(f.upstream);
                } else if self.upstreams[f.upstream].addr.ip() == src.ip() {
                    by_addr = Some(f.upstream);
                }
            }
        }
        if let Some(i) = by_id {
            // Our own query (same ID, name and type) while it is still in flight.
            let now = Instant::now();
            let n = {
                let mut r = self.upstreams[i]
                    .returns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                while r
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > RETURN_WINDOW)
                {
                    r.pop_front();
                }
                r.push_back(now);
                r.len()
            };
            if n as u32 >= LOOP_THRESHOLD {
                self.mark_looped(i, "our forwarded queries came back with their IDs");
            } else {
                self.start_probe(i);
            }
        } else if let Some(i) = by_addr {
            // A name we are asking this upstream about, asked of us by its address: probe it.
            self.start_probe(i);
        }
    }

    /// Asks `run_background` for a probe burst to upstream `i`. If one is running (it may be
    /// waiting seconds for an unanswered probe while a loop spins), one probe of it is sent at
    /// once instead, at most every `POKE_EVERY`.
    fn start_probe(&self, i: usize) {
        self.suspect(i, true);
    }

    /// `start_probe`, or with `poke` false only a new burst (an upstream timeout: a dead
    /// upstream is not probed faster than the burst does).
    fn suspect(&self, i: usize, poke: bool) {
        let up = &self.upstreams[i];
        if !self.loop_detect || up.looped.load(Ordering::Relaxed) {
            return;
        }
        if !up.probing.swap(true, Ordering::AcqRel) {
            if self.probe_tx.send((i, false)).is_err() {
                up.probing.store(false, Ordering::Release);
            }
            return;
        }
        if !poke {
            return;
        }
        let mut last = up.last_poke.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < POKE_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let _ = self.probe_tx.send((i, true));
    }

    /// One probe of the running burst of upstream `i`, out of turn.
    async fn probe_now(self: Arc<Self>, i: usize) {
        let up = &self.upstreams[i];
        let name = up.probe.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let probe = Query::query(
            Name::from_ascii(format!("{name}.")).expect("probe name is valid"),
            RecordType::HINFO,
        );
        let _ = exchange(up.addr, &probe, fastrand::u16(..), false, self.timeout).await;
    }

    fn mark_looped(&self, i: usize, how: &str) {
        let up = &self.upstreams[i];
        if up.looped.swap(true, Ordering::AcqRel) {
            return;
        }
        self.metrics
            .forward_loop_detected
            .with_label_values(&[&up.label])
            .set(1);
        let left = self
            .upstreams
            .iter()
            .filter(|u| !u.looped.load(Ordering::Relaxed))
            .count();
        tracing::error!(
            upstream = %up.addr,
            detected_by = how,
            upstreams_left = left,
            "forwarding loop detected: upstream {} sends our own queries back to us; \
             it is not asked again until restart{}",
            up.addr,
            if left == 0 {
                " (no upstream left: names outside the cluster zone get SERVFAIL)"
            } else {
                ""
            }
        );
    }

    /// True once any upstream was found to loop (it is then not asked any more).
    pub fn loop_detected(&self) -> bool {
        self.upstreams
            .iter()
            .any(|u| u.looped.load(Ordering::Relaxed))
    }

    fn all_looped(&self) -> bool {
        self.upstreams
            .iter()
            .all(|u| u.looped.load(Ordering::Relaxed))
    }

    /// Resolves one question: cache, then upstreams, then stale cache. `Err(())` means the
    /// in-flight limit was reached (answer REFUSED).
    pub async fn resolve(
        &self,
        question: &Query,
        key: cache::Key,
        dnssec_ok: bool,
    ) -> Result<Resolved, ()> {
        let now = Instant::now();
        let zones = ".";
        if let Lookup::Fresh(e) = self.cache.get(&key, now) {
            let kind = if e.negative { "denial" } else { "success" };
            self.metrics
                .cache_hits
                .with_label_values(&[&self.server, kind, zones])
                .inc();
            let [answers, authorities, additionals] = e.records_aged(now, None);
            return Ok(Resolved {
                rcode: e.rcode,
                answers,
                authorities,
                additionals,
                plugin: Plugin::Cache,
            });
        }
        self.metrics
            .cache_misses
            .with_label_values(&[&self.server, zones])
            .inc();
        if self.upstreams.is_empty() || self.all_looped() {
            return Ok(Resolved::servfail());
        }
        let Ok(_permit) = self.in_flight.clone().try_acquire_owned() else {
            self.metrics.forward_max_concurrent_rejects.inc();
            return Err(());
        };
        self.metrics.forward_in_flight.inc();
        let result = self.ask_upstreams(question, dnssec_ok).await;
        self.metrics.forward_in_flight.dec();
        match result {
            Some(msg) if matches!(u16::from(msg.metadata.response_code), 0 | 3) => {
                self.cache.insert(key, &msg, Instant::now());
                Ok(Resolved {
                    rcode: u16::from(msg.metadata.response_code),
                    answers: msg.answers,
                    authorities: msg.authorities,
                    additionals: msg
                        .additionals
                        .into_iter()
                        .filter(|r| r.record_type() != RecordType::OPT)
                        .collect(),
                    plugin: Plugin::Forward,
                })
            }
            other => {
                self.metrics.forward_healthcheck_broken.inc();
                if let Some(e) = self.cache.get_stale(&key, Instant::now()) {
                    self.metrics
                        .served_stale
                        .with_label_values(&[&self.server, zones])
                        .inc();
                    let [answers, authorities, additionals] =
                        e.records_aged(Instant::now(), Some(self.stale_ttl));
                    return Ok(Resolved {
                        rcode: e.rcode,
                        answers,
                        authorities,
                        additionals,
                        plugin: Plugin::Cache,
                    });
                }
                Ok(match other {
                    Some(msg) => Resolved {
                        rcode: u16::from(msg.metadata.response_code),
                        answers: vec![],
                        authorities: vec![],
                        additionals: vec![],
                        plugin: Plugin::Forward,
                    },
                    None => Resolved::servfail(),
                })
            }
        }
    }

    /// Tries the upstreams in order (healthy first). Returns the first good answer, else the
    /// last error answer (SERVFAIL, REFUSED, ...) if any upstream gave one.
    async fn ask_upstreams(&self, question: &Query, dnssec_ok: bool) -> Option<Message> {
        let usable = |u: &&Upstream| !u.looped.load(Ordering::Relaxed);
        let mut order: Vec<(usize, &Upstream)> = self
            .upstreams
            .iter()
            .enumerate()
            .filter(|(_, u)| usable(u) && !u.down())
            .collect();
        order.extend(
            self.upstreams
                .iter()
                .enumerate()
                .filter(|(_, u)| usable(u) && u.down()),
        );
        let mut last = None;
        for (i, up) in order {
            // Checked again: the loop may have been found while we waited for the previous one.
            if up.looped.load(Ordering::Relaxed) {
                continue;
            }
            let start = Instant::now();
            self.metrics
                .forward_requests
                .with_label_values(&[&up.label])
                .inc();
            let id = fastrand::u16(..);
            let tracked = self.track(question, id, i);
            let result = exchange(up.addr, question, id, dnssec_ok, self.timeout).await;
            if let Some(name) = tracked {
                self.untrack(&name, id, i);
            }
            if matches!(result, Err(ExchangeError::Timeout)) {
                self.suspect(i, false);
            }
            match result {
                Ok(msg) => {
                    let rcode = u16::from(msg.metadata.response_code);
                    let label = rcode_label(rcode);
                    self.metrics
                        .forward_responses
                        .with_label_values(&[&up.label, label])
                        .inc();
                    self.metrics
                        .forward_duration
                        .with_label_values(&[&up.label, label])
                        .observe(start.elapsed().as_secs_f64());
                    if matches!(rcode, 0 | 3) {
                        up.fails.store(0, Ordering::Relaxed);
                        return Some(msg);
                    }
                    up.fails.fetch_add(1, Ordering::Relaxed);
                    last = Some(msg);
                }
                Err(e) => {
                    let n = up.fails.fetch_add(1, Ordering::Relaxed) + 1;
                    if n == MAX_FAILS {
                        tracing::warn!(upstream = %up.addr, error = %e, "upstream marked down");
                    } else {
                        tracing::debug!(upstream = %up.addr, error = %e, "upstream failed");
                    }
                }
            }
        }
        last
    }

    /// Registers a forwarded query so that `observe` recognises it coming back.
    fn track(&self, question: &Query, id: u16, upstream: usize) -> Option<String> {
        if !self.loop_detect {
            return None;
        }
        let name = name_key(question.name());
        let mut names = self
            .in_flight_names
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let list = names.entry(name.clone()).or_default();
        list.push(InFlight {
            qtype: u16::from(question.query_type()),
            id,
            upstream,
        });
        let fanout = list.iter().filter(|f| f.upstream == upstream).count();
        drop(names);
        self.in_flight_count.fetch_add(1, Ordering::Relaxed);
        if fanout >= FANOUT_PROBE {
            self.start_probe(upstream);
        }
        Some(name)
    }

    fn untrack(&self, name: &str, id: u16, upstream: usize) {
        let mut names = self
            .in_flight_names
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(list) = names.get_mut(name) {
            if let Some(p) = list
                .iter()
                .position(|f| f.id == id && f.upstream == upstream)
            {
                list.swap_remove(p);
                self.in_flight_count.fetch_sub(1, Ordering::Relaxed);
            }
            if list.is_empty() {
                names.remove(name);
            }
        }
    }

    /// One probe burst to upstream `i` (CoreDNS `loop`): a fresh probe name, sent every
    /// `PROBE_EVERY` until the upstream answers it or `PROBE_FOR` has passed. The loop itself is
    /// noticed by `observe` when the probe arrives at our listener.
    async fn probe_burst(self: Arc<Self>, i: usize) {
        let up = &self.upstreams[i];
        let name = probe_name();
        *up.probe.lock().unwrap_or_else(|e| e.into_inner()) = name.clone();
        up.probe_seen.store(0, Ordering::Relaxed);
        let probe = Query::query(
            Name::from_ascii(format!("{name}.")).expect("probe name is valid"),
            RecordType::HINFO,
        );
        let until = Instant::now() + PROBE_FOR;
        let mut sent = 0u32;
        while !up.looped.load(Ordering::Relaxed) && Instant::now() < until {
            sent += 1;
            let id = fastrand::u16(..);
            let answered = exchange(up.addr, &probe, id, false, self.timeout)
                .await
                .is_ok();
            if answered || up.looped.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
        tracing::debug!(upstream = %up.addr, probes = sent, looped = up.looped.load(Ordering::Relaxed), "dns: loop probe burst done");
        up.probing.store(false, Ordering::Release);
    }

    /// Background work until `stop`: health checks of down upstreams, the cache-size gauges,
    /// and the loop probes (at start for every upstream, later when `observe` or a timeout asks).
    pub async fn run_background(self: Arc<Self>, loop_detect: bool, stop: CancellationToken) {
        let rx = self
            .probe_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let (true, Some(mut rx)) = (loop_detect && self.loop_detect, rx) {
            for i in 0..self.upstreams.len() {
                self.start_probe(i);
            }
            let me = self.clone();
            let stop2 = stop.clone();
            tokio::spawn(async move {
                loop {
                    let (i, now) = tokio::select! {
                        _ = stop2.cancelled() => return,
                        m = rx.recv() => match m {
                            Some(m) => m,
                            None => return,
                        },
                    };
                    let stop3 = stop2.clone();
                    let me = me.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = async {
                                if now {
                                    me.probe_now(i).await
                                } else {
                                    me.probe_burst(i).await
                                }
                            } => {}
                            _ = stop3.cancelled() => {}
                        }
                    });
                }
            });
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let (pos, neg) = self.cache.counts();
            self.metrics
                .cache_entries
                .with_label_values(&[&self.server, "success", "."])
                .set(pos as i64);
            self.metrics
                .cache_entries
                .with_label_values(&[&self.server, "denial", "."])
                .set(neg as i64);
            for up in self
                .upstreams
                .iter()
                .filter(|u| u.down() && !u.looped.load(Ordering::Relaxed))
            {
                let q = Query::query(Name::root(), RecordType::NS);
                if exchange(up.addr, &q, fastrand::u16(..), false, self.timeout)
                    .await
                    .is_ok()
                {
                    tracing::info!(upstream = %up.addr, "upstream healthy again");
                    up.fails.store(0, Ordering::Relaxed);
                }
            }
        }
    }
}

fn query_message(question: &Query, id: u16, dnssec_ok: bool) -> (u16, Vec<u8>) {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(question.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(crate::wire::MAX_UDP_PAYLOAD);
    edns.set_dnssec_ok(dnssec_ok);
    m.set_edns(edns);
    (id, m.to_vec().unwrap_or_default())
}

fn check_response(msg: &Message, id: u16, question: &Query) -> bool {
    msg.metadata.id == id
        && msg.metadata.message_type == MessageType::Response
        && msg.queries.len() == 1
        && msg.queries[0].name() == question.name()
        && msg.queries[0].query_type() == question.query_type()
        && msg.queries[0].query_class() == question.query_class()
}

/// One question to one upstream: UDP, then TCP if the UDP answer is truncated.
async fn exchange(
    addr: SocketAddr,
    question: &Query,
    id: u16,
    dnssec_ok: bool,
    timeout: Duration,
) -> Result<Message, ExchangeError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let (id, bytes) = query_message(question, id, dnssec_ok);
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("static address")
    } else {
        "[::]:0".parse().expect("static address")
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(addr).await?;
    sock.send(&bytes).await?;
    let mut buf = vec![0u8; 65535];
    let msg = loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| ExchangeError::Timeout)??;
        // Anything that is not the answer to this query (late answers, spoofing attempts) is
        // ignored, and we keep waiting until the deadline.
        if let Ok(msg) = Message::from_vec(&buf[..n]) {
            if check_response(&msg, id, question) {
                break msg;
            }
        }
    };
    if !msg.metadata.truncation {
        return Ok(msg);
    }
    tokio::time::timeout_at(deadline, exchange_tcp(addr, question, dnssec_ok))
        .await
        .map_err(|_| ExchangeError::Timeout)?
}

async fn exchange_tcp(
    addr: SocketAddr,
    question: &Query,
    dnssec_ok: bool,
) -> Result<Message, ExchangeError> {
    let (id, bytes) = query_message(question, fastrand::u16(..), dnssec_ok);
    let mut stream = TcpStream::connect(addr).await?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await? as usize;
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    let msg = Message::from_vec(&buf).map_err(|e| ExchangeError::Bad(e.to_string()))?;
    if !check_response(&msg, id, question) {
        return Err(ExchangeError::Bad("answer does not match the query".into()));
    }
    Ok(msg)
}

/// The hickory question of a query, from its wire bytes (`question` is QNAME QTYPE QCLASS).
pub fn question_of(question: &[u8]) -> Option<Query> {
    use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
    let mut d = BinDecoder::new(question);
    Query::read(&mut d).ok()
}

pub fn class_in() -> DNSClass {
    DNSClass::IN
}

pub fn rcode_of(rcode: u16) -> ResponseCode {
    ResponseCode::from_low(rcode as u8)
}
