//! A fake upstream DNS server for forwarding tests (UDP and TCP on one 127.0.0.1 port).
//!
//! Zone it serves:
//! - `ext-target.example` A 192.0.2.10 (TTL 300), `example.org` A 192.0.2.1 (TTL 300)
//! - `short.example` A 192.0.2.2 (TTL 1)
//! - `big.example` TXT: 40 records, too big for 512 bytes: over UDP the answer is truncated
//!   (TC, no records), over TCP it is complete
//! - anything else: NXDOMAIN with an SOA whose MINIMUM is 60
//!
//! Knobs: `set_dead(true)` stops answering (queries are counted and dropped), `set_delay`
//! holds every answer, `set_servfail(true)` answers SERVFAIL, `set_held(true)` holds every
//! answer until `set_held(false)` (for tests that need a query in flight for as long as they
//! say, not for a guessed time), `set_relay(Some(addr), keep_id)` forwards every query to
//! `addr` over UDP and relays its answer (a forwarder: with `keep_id` it keeps the query ID, as
//! CoreDNS's `forward`; without, it picks a new one, as dnsmasq). `count(name)` says how many
//! queries for a name arrived (UDP and TCP), `wait_count` waits for one, `count_suffix` counts
//! names ending in a suffix, `transports(name)` lists how each query for a name came, in order
//! of arrival ("udp" or "tcp").
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

struct State {
    dead: AtomicBool,
    servfail: AtomicBool,
    delay_ms: AtomicU64,
    /// True while answers are held (see `set_held`).
    held: tokio::sync::watch::Sender<bool>,
    counts: Mutex<HashMap<String, usize>>,
    /// Every query's name and whether it came over TCP, in order of arrival.
    arrivals: Mutex<Vec<(String, bool)>>,
    relay: Mutex<Option<(SocketAddr, bool)>>,
    relay_from: Mutex<Option<std::net::IpAddr>>,
}

impl Default for State {
    fn default() -> State {
        State {
            dead: AtomicBool::new(false),
            servfail: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            held: tokio::sync::watch::Sender::new(false),
            counts: Mutex::new(HashMap::new()),
            arrivals: Mutex::new(Vec::new()),
            relay: Mutex::new(None),
            relay_from: Mutex::new(None),
        }
    }
}

#[derive(Clone)]
pub struct FakeUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
}

fn answer(query: &Message, tcp: bool) -> Message {
    let mut m = Message::response(query.metadata.id, query.metadata.op_code);
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.message_type = MessageType::Response;
    let Some(q) = query.queries.first() else {
        m.metadata.response_code = ResponseCode::FormErr;
        return m;
    };
    m.add_query(q.clone());
    let name = q.name().to_lowercase().to_ascii();
    let a = |ip: [u8; 4], ttl| {
        Record::from_rdata(
            q.name().clone(),
            ttl,
            RData::A(A::new(ip[0], ip[1], ip[2], ip[3])),
        )
    };
    match (name.as_str(), q.query_type()) {
        ("ext-target.example.", RecordType::A) => {
            m.answers.push(a([192, 0, 2, 10], 300));
        }
        ("example.org.", RecordType::A) => m.answers.push(a([192, 0, 2, 1], 300)),
        ("short.example.", RecordType::A) => m.answers.push(a([192, 0, 2, 2], 1)),
        ("big.example.", RecordType::TXT) => {
            if tcp {
                for i in 0..40 {
                    m.answers.push(Record::from_rdata(
                        q.name().clone(),
                        300,
                        RData::TXT(TXT::new(vec![format!(
                            "record number {i:02} of a big answer"
                        )])),
                    ));
                }
            } else {
                m.metadata.truncation = true;
            }
        }
        (".", RecordType::NS) => {}
        _ => {
            m.metadata.response_code = ResponseCode::NXDomain;
            let zone = Name::from_ascii("example.").unwrap();
            m.authorities.push(Record::from_rdata(
                zone.clone(),
                60,
                RData::SOA(SOA::new(
                    Name::from_ascii("ns.example.").unwrap(),
                    Name::from_ascii("admin.example.").unwrap(),
                    1,
                    7200,
                    1800,
                    86400,
                    60,
                )),
            ));
        }
    }
    m
}

impl FakeUpstream {
    pub async fn start() -> FakeUpstream {
        // UDP and TCP on one port: retry when the TCP side of a fresh UDP port is taken.
        let (udp, addr, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            if let Ok(tcp) = TcpListener::bind(addr).await {
                break (udp, addr, tcp);
            }
        };
        let state = Arc::new(State::default());
        let st = state.clone();
        let udp = Arc::new(udp);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok((n, src)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let st = st.clone();
                let udp = udp.clone();
                tokio::spawn(async move {
                    if let Some(bytes) = st.respond(&q, false).await {
                        let _ = udp.send_to(&bytes, src).await;
                    }
                });
            }
        });
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = tcp.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    while let Ok(len) = s.read_u16().await {
                        let mut buf = vec![0u8; len as usize];
                        if s.read_exact(&mut buf).await.is_err() {
                            return;
                        }
                        let Ok(q) = Message::from_vec(&buf) else {
                            return;
                        };
                        if let Some(bytes) = st.respond(&q, true).await {
                            let _ = s.write_all(&(bytes.len() as u16).to_be_bytes()).await;
                            let _ = s.write_all(&bytes).await;
                        }
                    }
                });
            }
        });
        FakeUpstream { addr, state }
    }

    pub fn set_dead(&self, dead: bool) {
        self.state.dead.store(dead, Ordering::SeqCst);
    }
    pub fn set_servfail(&self, on: bool) {
        self.state.servfail.store(on, Ordering::SeqCst);
    }
    pub fn set_delay(&self, d: Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }
    /// While true, every answer (including ones already waiting) is held back; false releases
    /// them.
    pub fn set_held(&self, held: bool) {
        self.state.held.send_replace(held);
    }
    pub fn set_relay(&self, to: Option<SocketAddr>, keep_id: bool) {
        *self.state.relay.lock().unwrap() = to.map(|a| (a, keep_id));
    }
    /// The address relayed queries leave from [default: 127.0.0.1].
    pub fn set_relay_source(&self, from: Option<std::net::IpAddr>) {
        *self.state.relay_from.lock().unwrap() = from;
    }
    /// Queries received for names ending in `suffix` (lower case, with trailing dot).
    pub fn count_suffix(&self, suffix: &str) -> usize {
        self.state
            .counts
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.ends_with(suffix))
            .map(|(_, v)| *v)
            .sum()
    }
    /// Queries received for `name` (lower case, with trailing dot).
    pub fn count(&self, name: &str) -> usize {
        *self.state.counts.lock().unwrap().get(name).unwrap_or(&0)
    }
    /// How the queries for `name` came, in order of arrival: "udp" or "tcp" for each.
    pub fn transports(&self, name: &str) -> Vec<&'static str> {
        let arrivals = self.state.arrivals.lock().unwrap();
        let of_name = arrivals.iter().filter(|(n, _)| n == name);
        of_name
            .map(|(_, tcp)| if *tcp { "tcp" } else { "udp" })
            .collect()
    }
    /// Waits until at least `n` queries for `name` arrived; panics after `timeout`.
    pub async fn wait_count(&self, name: &str, n: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.count(name) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the upstream never got {n} queries for {name} within {timeout:?} (got {})",
                self.count(name)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl State {
    async fn respond(&self, q: &Message, tcp: bool) -> Option<Vec<u8>> {
        if let Some(first) = q.queries.first() {
            *self
                .counts
                .lock()
                .unwrap()
                .entry(first.name().to_lowercase().to_ascii())
                .or_default() += 1;
            let name = first.name().to_lowercase().to_ascii();
            self.arrivals.lock().unwrap().push((name, tcp));
        }
        if self.dead.load(Ordering::SeqCst) {
            return None;
        }
        let _ = self.held.subscribe().wait_for(|held| !held).await;
        let relay = *self.relay.lock().unwrap();
        if let Some((to, keep_id)) = relay {
            let mut fwd = q.clone();
            if !keep_id {
                fwd.metadata.id = fastrand::u16(..);
            }
            let from = self
                .relay_from
                .lock()
                .unwrap()
                .unwrap_or([127, 0, 0, 1].into());
            let sock = UdpSocket::bind(SocketAddr::new(from, 0)).await.ok()?;
            sock.send_to(&fwd.to_vec().ok()?, to).await.ok()?;
            let mut buf = vec![0u8; 65535];
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
                .await
                .ok()?
                .ok()?;
            let mut answer = Message::from_vec(&buf[..n]).ok()?;
            answer.metadata.id = q.metadata.id;
            return answer.to_vec().ok();
        }
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let mut m = answer(q, tcp);
        if self.servfail.load(Ordering::SeqCst) {
            m.answers.clear();
            m.authorities.clear();
            m.metadata.response_code = ResponseCode::ServFail;
        }
        m.to_vec().ok()
    }
}
