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
//! answers. Loop detection: at start a probe name (`<random>.<random>.switchboard-loop-check.`,
//! type HINFO) is sent upstream; if that name reaches this server `LOOP_THRESHOLD` times, our
//! upstreams send our own queries back to us: it logs an error and stops forwarding (every
//! forwarded name then gets SERVFAIL) instead of multiplying queries until the in-flight limit.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
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
/// Receipts of our own probe that prove a loop.
const LOOP_THRESHOLD: u32 = 3;

struct Upstream {
    addr: SocketAddr,
    label: String,
    fails: AtomicU32,
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
    probe: String,
    probe_seen: AtomicU32,
    loop_detected: AtomicBool,
}

impl Forwarder {
    pub fn new(cfg: &DnsConfig, metrics: Metrics, server: String) -> Forwarder {
        Forwarder {
            upstreams: cfg
                .upstreams
                .iter()
                .map(|&addr| Upstream {
                    addr,
                    label: addr.to_string(),
                    fails: AtomicU32::new(0),
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
            probe: format!(
                "{:016x}.{:016x}.switchboard-loop-check",
                fastrand::u64(..),
                fastrand::u64(..)
            ),
            probe_seen: AtomicU32::new(0),
            loop_detected: AtomicBool::new(false),
        }
    }

    pub fn has_upstreams(&self) -> bool {
        !self.upstreams.is_empty()
    }

    /// Notes a query name arriving at a listener; detects our own probe coming back.
    pub fn observe(&self, name_lower: &str) {
        if name_lower != self.probe {
            return;
        }
        let seen = self.probe_seen.fetch_add(1, Ordering::Relaxed) + 1;
        if seen >= LOOP_THRESHOLD && !self.loop_detected.swap(true, Ordering::Relaxed) {
            tracing::error!(
                probe = %self.probe,
                upstreams = ?self.upstreams.iter().map(|u| u.addr).collect::<Vec<_>>(),
                "forwarding loop detected: our upstreams send our own queries back to us; \
                 forwarding is disabled (names outside the cluster zone get SERVFAIL) until restart"
            );
        }
    }

    pub fn loop_detected(&self) -> bool {
        self.loop_detected.load(Ordering::Relaxed)
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
        if self.loop_detected() || self.upstreams.is_empty() {
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
        let mut order: Vec<&Upstream> = self.upstreams.iter().filter(|u| !u.down()).collect();
        order.extend(self.upstreams.iter().filter(|u| u.down()));
        let mut last = None;
        for up in order {
            let start = Instant::now();
            self.metrics
                .forward_requests
                .with_label_values(&[&up.label])
                .inc();
            match exchange(up.addr, question, dnssec_ok, self.timeout).await {
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

    /// Background work until `stop`: health checks of down upstreams, the cache-size gauges,
    /// and the loop probe at start.
    pub async fn run_background(self: Arc<Self>, loop_detect: bool, stop: CancellationToken) {
        if loop_detect && !self.upstreams.is_empty() {
            let me = self.clone();
            let stop2 = stop.clone();
            tokio::spawn(async move {
                let probe = Query::query(
                    Name::from_ascii(format!("{}.", me.probe)).expect("probe name is valid"),
                    RecordType::HINFO,
                );
                tokio::select! {
                    _ = me.ask_upstreams(&probe, false) => {}
                    _ = stop2.cancelled() => {}
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
            for up in self.upstreams.iter().filter(|u| u.down()) {
                let q = Query::query(Name::root(), RecordType::NS);
                if exchange(up.addr, &q, false, self.timeout).await.is_ok() {
                    tracing::info!(upstream = %up.addr, "upstream healthy again");
                    up.fails.store(0, Ordering::Relaxed);
                }
            }
        }
    }
}

fn query_message(question: &Query, dnssec_ok: bool) -> (u16, Vec<u8>) {
    let id = fastrand::u16(..);
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
    dnssec_ok: bool,
    timeout: Duration,
) -> Result<Message, ExchangeError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let (id, bytes) = query_message(question, dnssec_ok);
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
    let (id, bytes) = query_message(question, dnssec_ok);
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
