//! The listeners and the query path.
//!
//! ```text
//!  UDP worker thread (N per listener: own socket, own Templates)   TCP connection task
//!  recvmmsg ─> parse (wire.rs) ─> template hit? ─yes─> patch ID/case/EDNS ─> send
//!                                    │ no
//!                                    v
//!             cluster or table-held reverse name? ─yes─> zone.rs ─> encode template
//!                                    │ no                       (kept for this generation)
//!                                    v
//!             spawn: forward.rs (cache / upstreams) ─> encode ─> send
//! ```
//!
//! A template is the full answer for (lower-case name, type) at one snapshot generation with
//! ID 0 and no OPT; answering from it costs one hash lookup and one copy. Templates are
//! dropped whenever the generation changes, so the first query after a change sees the new
//! tables. Nothing is cached before the first sync.

use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable};
use nix::sys::socket::{
    recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};
use tables::SnapshotCell;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::cache;
use crate::config::Cidr;
use crate::forward::{self, Forwarder};
use crate::metrics::{Metrics, Plugin, Recorder, Sample};
use crate::parse::{classify, NameKind};
use crate::tcplimit::{ConnTable, Limit, Slot};
pub use crate::templates::{TcpTemplates, Templates};
use crate::wire::{self, Reject, CLASS_IN, RCODE_REFUSED, RCODE_SERVFAIL};
use crate::xfr;
use crate::zone::{self, ZoneAnswer, ZoneSettings, T_AXFR, T_IXFR};

/// What the metrics need to know about an answer.
#[derive(Clone, Copy, Debug)]
pub struct Reply {
    pub rcode: u16,
    pub plugin: Plugin,
    pub qtype: u16,
}

/// The outcome of the synchronous part of a query.
pub enum Step {
    /// The answer is in `out`.
    Reply(Reply),
    Drop,
    /// A name outside the zone: forward (the raw query is kept).
    Forward {
        raw: Vec<u8>,
    },
    /// An ExternalName pointing outside the zone: resolve `target` and append.
    Chase {
        raw: Vec<u8>,
        answer: Box<ZoneAnswer>,
        target: Name,
    },
    /// An allowed zone transfer (TCP only): these messages, in order.
    Xfr(Vec<Vec<u8>>, Reply),
}

/// What every listener shares.
pub struct Shared {
    pub cell: SnapshotCell,
    pub settings: ZoneSettings,
    pub axfr_allow: Vec<Cidr>,
    pub forwarder: Arc<Forwarder>,
    pub metrics: Metrics,
    pub tcp_templates: TcpTemplates,
}

/// Encodes a response with ID 0 whose question is `key` (lower-case wire name + QTYPE).
fn template(
    key: &[u8],
    qclass: u16,
    rcode: u16,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
) -> Option<Vec<u8>> {
    let name_len = key.len() - 2;
    let name = Name::read(&mut BinDecoder::new(&key[..name_len])).ok()?;
    let qtype = u16::from_be_bytes([key[name_len], key[name_len + 1]]);
    let mut m = Message::response(0, OpCode::Query);
    m.metadata.authoritative = authoritative;
    m.metadata.recursion_available = true;
    // Extended RCODEs need an OPT in the template; upstream ones are reported as SERVFAIL.
    m.metadata.response_code = ResponseCode::from_low(if rcode > 0xF { 2 } else { rcode as u8 });
    let mut q = Query::query(name, RecordType::from(qtype));
    q.set_query_class(DNSClass::from(qclass));
    m.add_query(q);
    m.answers = answers;
    m.authorities = authorities;
    m.additionals = additionals;
    let bytes = m.to_vec().ok()?;
    // `finish` patches the question in place: it must sit at offset 12, byte for byte.
    if bytes.get(wire::HEADER_LEN..wire::HEADER_LEN + name_len) != Some(&key[..name_len]) {
        return None;
    }
    Some(bytes)
}

fn error_reply(out: &mut Vec<u8>, q: &wire::Query<'_>, raw: &[u8], rcode: u8) -> Step {
    wire::short_response(out, q.id, q.flags, Some((q, raw)), u16::from(rcode), false);
    Step::Reply(Reply {
        rcode: u16::from(rcode),
        plugin: Plugin::None,
        qtype: q.qtype,
    })
}

impl Shared {
    /// The synchronous part of answering `raw` from `src`: everything except forwarding.
    pub fn handle(
        &self,
        raw: &[u8],
        src: SocketAddr,
        tcp: bool,
        templates: &mut Templates,
        out: &mut Vec<u8>,
    ) -> Step {
        let q = match wire::parse_query(raw) {
            Ok(q) => q,
            Err(Reject::Drop) => return Step::Drop,
            Err(Reject::Rcode(rc)) => {
                let Some((id, flags)) = wire::header_of(raw) else {
                    return Step::Drop;
                };
                wire::short_response(out, id, flags, None, u16::from(rc), false);
                return Step::Reply(Reply {
                    rcode: u16::from(rc),
                    plugin: Plugin::None,
                    qtype: 0,
                });
            }
        };
        if q.opt.is_some_and(|o| o.version > 0) {
            wire::short_response(out, q.id, q.flags, Some((&q, raw)), 16, false);
            return Step::Reply(Reply {
                rcode: 16,
                plugin: Plugin::None,
                qtype: q.qtype,
            });
        }
        let limit = if tcp { 65535 } else { q.udp_limit() };
        let snap = self.cell.load();
        let mut kb = [0u8; 258];
        let kl = q.key_into(&mut kb);
        let key = &kb[..kl];
        templates.keep(snap.generation);
        if q.qclass == CLASS_IN {
            if let Some(t) = templates.get(key) {
                wire::finish(out, t, &q, raw, limit);
                return Step::Reply(Reply {
                    rcode: u16::from(t[3] & 0xF),
                    plugin: Plugin::Kubernetes,
                    qtype: q.qtype,
                });
            }
            if let Some(t) = tcp
                .then(|| self.tcp_templates.get(snap.generation, key))
                .flatten()
            {
                wire::finish(out, &t, &q, raw, limit);
                return Step::Reply(Reply {
                    rcode: u16::from(t[3] & 0xF),
                    plugin: Plugin::Kubernetes,
                    qtype: q.qtype,
                });
            }
        }

        let name = q.name_lower();
        let local = match classify(&name, &snap.dns.zone) {
            NameKind::Cluster { .. } => true,
            NameKind::Reverse => snap.dns.lookup(&name).is_some(),
            NameKind::Outside => false,
        };
        if !local {
            self.forwarder.observe(&name, q.qtype, q.id, src);
            return Step::Forward { raw: raw.to_vec() };
        }
        if q.qclass != CLASS_IN && q.qclass != 255 {
            return error_reply(out, &q, raw, RCODE_REFUSED);
        }
        if matches!(q.qtype, T_AXFR | T_IXFR) {
            let allowed = tcp
                && name == *snap.dns.zone
                && self.axfr_allow.iter().any(|c| c.contains(src.ip()));
            if !allowed {
                tracing::debug!(client = %src, zone = %name, tcp, "zone transfer refused");
                return error_reply(out, &q, raw, RCODE_REFUSED);
            }
            let Some(question) = forward::question_of(&raw[wire::HEADER_LEN..q.question_end])
            else {
                return error_reply(out, &q, raw, wire::RCODE_FORMERR);
            };
            tracing::info!(client = %src, zone = %name, serial = snap.generation, "zone transfer");
            return Step::Xfr(
                xfr::axfr(&snap, &self.settings, q.id, &question),
                Reply {
                    rcode: 0,
                    plugin: Plugin::Kubernetes,
                    qtype: q.qtype,
                },
            );
        }
        let mut za = zone::answer(&snap, &self.settings, &name, q.qtype);
        if let Some(target) = za.chase.take() {
            return Step::Chase {
                raw: raw.to_vec(),
                answer: Box::new(za),
                target,
            };
        }
        let rcode = u16::from(za.rcode);
        let Some(tpl) = template(
            key,
            q.qclass,
            rcode,
            true,
            za.answers,
            za.authorities,
            za.additionals,
        ) else {
            return error_reply(out, &q, raw, RCODE_SERVFAIL);
        };
        wire::finish(out, &tpl, &q, raw, limit);
        if snap.synced && q.qclass == CLASS_IN {
            if tcp {
                self.tcp_templates.insert(snap.generation, key, &tpl);
            }
            templates.insert(key, &tpl);
        }
        Step::Reply(Reply {
            rcode,
            plugin: Plugin::Kubernetes,
            qtype: q.qtype,
        })
    }

    /// The asynchronous part: forwarding and ExternalName chasing. `None` drops the query.
    pub async fn resolve(&self, step: Step, tcp: bool) -> Option<(Vec<u8>, Reply)> {
        let (raw, chase) = match step {
            Step::Forward { raw } => (raw, None),
            Step::Chase {
                raw,
                answer,
                target,
            } => (raw, Some((answer, target))),
            _ => return None,
        };
        let q = wire::parse_query(&raw).ok()?;
        let limit = if tcp { 65535 } else { q.udp_limit() };
        let mut kb = [0u8; 258];
        let kl = q.key_into(&mut kb);
        let key = &kb[..kl];
        let dnssec_ok = q.opt.is_some_and(|o| o.dnssec_ok);
        let mut out = Vec::new();
        let (question, ckey) = match &chase {
            None => {
                let question = forward::question_of(&raw[wire::HEADER_LEN..q.question_end])?;
                (question, cache::key(key, q.qclass, dnssec_ok))
            }
            Some((_, target)) => {
                let mut k = target.to_lowercase().to_bytes().ok()?;
                k.extend_from_slice(&q.qtype.to_be_bytes());
                let question = Query::query(target.clone(), RecordType::from(q.qtype));
                (question, cache::key(&k, CLASS_IN, dnssec_ok))
            }
        };
        let resolved = match self.forwarder.resolve(&question, ckey, dnssec_ok).await {
            Ok(r) => r,
            Err(()) => {
                error_reply(&mut out, &q, &raw, RCODE_REFUSED);
                let reply = Reply {
                    rcode: u16::from(RCODE_REFUSED),
                    plugin: Plugin::Forward,
                    qtype: q.qtype,
                };
                return Some((out, reply));
            }
        };
        let (rcode, aa, answers, authorities, additionals, plugin) = match chase {
            None => (
                resolved.rcode,
                false,
                resolved.answers,
                resolved.authorities,
                resolved.additionals,
                resolved.plugin,
            ),
            Some((za, _)) => {
                let mut answers = za.answers;
                let found = !resolved.answers.is_empty();
                answers.extend(resolved.answers);
                let rcode = if resolved.rcode == 3 { 3 } else { 0 };
                let authorities = if found { vec![] } else { resolved.authorities };
                (
                    rcode,
                    true,
                    answers,
                    authorities,
                    vec![],
                    Plugin::Kubernetes,
                )
            }
        };
        let tpl = template(key, q.qclass, rcode, aa, answers, authorities, additionals);
        let reply = match tpl {
            Some(t) => {
                wire::finish(&mut out, &t, &q, &raw, limit);
                Reply {
                    rcode,
                    plugin,
                    qtype: q.qtype,
                }
            }
            None => {
                error_reply(&mut out, &q, &raw, RCODE_SERVFAIL);
                Reply {
                    rcode: 2,
                    plugin,
                    qtype: q.qtype,
                }
            }
        };
        Some((out, reply))
    }
}

fn sample(reply: Reply, tcp: bool, src: SocketAddr, req: usize, resp: usize, t: Instant) -> Sample {
    Sample {
        tcp,
        ipv6: src.is_ipv6(),
        qtype: reply.qtype,
        rcode: reply.rcode,
        plugin: reply.plugin,
        request_size: req,
        response_size: resp,
        seconds: t.elapsed().as_secs_f64(),
    }
}

/// Datagrams taken per `recvmmsg` call.
const BATCH: usize = 32;
/// Receive buffer per datagram: larger queries are truncated (and then FORMERR).
const RECV_BUF: usize = 4096;
/// How often a UDP worker checks for shutdown while idle.
const POLL: Duration = Duration::from_millis(100);
/// A busy UDP worker adds its local query counts to the shared metrics this often (and an idle
/// one as soon as its socket has nothing queued): flushing every batch cost more than it saved
/// when batches are small (prometheus' local histograms flush bucket by bucket).
const FLUSH_EVERY: Duration = Duration::from_millis(1);

fn socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::from(*v4));
    }
    s.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
}

/// One UDP receive loop on its own socket and its own OS thread (the model of Knot and NSD:
/// a blocking `recvmmsg` takes up to `BATCH` queued datagrams per system call, no event loop in
/// between, and the batch's answers leave in one `sendmmsg`, so the clients are woken once per
/// batch rather than once per answer). Cluster names are answered inline; forwarded queries
/// become tasks on `rt` and answer through the same socket. Returns within `POLL` of `stop`.
pub fn udp_worker(
    shared: Arc<Shared>,
    sock: std::net::UdpSocket,
    (server, worker): (String, usize),
    stop: CancellationToken,
    rt: tokio::runtime::Handle,
) {
    let sock = Arc::new(sock);
    // This worker's own series: one uncontended atomic add per batch.
    let datagrams = shared
        .metrics
        .udp_worker_datagrams
        .with_label_values(&[server.as_str(), &worker.to_string()]);
    if let Err(e) = sock.set_read_timeout(Some(POLL)) {
        tracing::error!(error = %e, "dns/udp: cannot set a receive timeout; worker not started");
        return;
    }
    let fd = sock.as_raw_fd();
    let mut rec = Recorder::new(shared.metrics.clone(), server.clone());
    let mut templates = Templates::default();
    let mut bufs = vec![vec![0u8; RECV_BUF]; BATCH];
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut got: Vec<(usize, Option<SockaddrStorage>)> = Vec::with_capacity(BATCH);
    // Answers of one batch: `outs[i]` goes to `to[i]`, for `i < to.len()`.
    let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1232)).collect();
    let mut to: Vec<Option<SockaddrStorage>> = Vec::with_capacity(BATCH);
    let mut flushed = Instant::now();
    // Counts not yet flushed: then the next receive does not block, and finding the socket
    // empty flushes them before the worker sleeps.
    let mut unflushed = false;
    while !stop.is_cancelled() {
        got.clear();
        {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
                .iter_mut()
                .map(|b| [IoSliceMut::new(&mut b[..])])
                .collect();
            match recvmmsg(
                fd,
                &mut headers,
                iovs.iter_mut(),
                if unflushed {
                    MsgFlags::MSG_DONTWAIT
                } else {
                    MsgFlags::MSG_WAITFORONE
                },
                None,
            ) {
                Ok(results) => {
                    for m in results {
                        got.push((m.bytes, m.address));
                    }
                }
                Err(nix::errno::Errno::EAGAIN) if unflushed => {
                    rec.flush();
                    unflushed = false;
                    flushed = Instant::now();
                    continue;
                }
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    // ICMP errors from earlier sends surface here.
                    tracing::debug!(error = %e, "dns/udp receive");
                    continue;
                }
            }
        }
        datagrams.inc_by(got.len() as u64);
        to.clear();
        let mut samples: [Option<Sample>; BATCH] = [None; BATCH];
        let start = Instant::now();
        for (i, &(n, addr)) in got.iter().enumerate() {
            let Some(src) = addr.as_ref().and_then(socket_addr) else {
                continue;
            };
            let raw = &bufs[i][..n.min(RECV_BUF)];
            let out = &mut outs[to.len()];
            match shared.handle(raw, src, false, &mut templates, out) {
                Step::Reply(reply) => {
                    samples[to.len()] = Some(sample(reply, false, src, n, out.len(), start));
                    to.push(addr);
                }
                Step::Drop | Step::Xfr(..) => {}
                step => {
                    let shared = shared.clone();
                    let sock = sock.clone();
                    let server = server.clone();
                    rt.spawn(async move {
                        if let Some((bytes, reply)) = shared.resolve(step, false).await {
                            // A UDP send does not block for long; no need for an async socket.
                            let _ = sock.send_to(&bytes, src);
                            Recorder::new(shared.metrics.clone(), server).record(sample(
                                reply,
                                false,
                                src,
                                n,
                                bytes.len(),
                                start,
                            ));
                        }
                    });
                }
            }
        }
        for s in samples.into_iter().flatten() {
            rec.record(s);
        }
        if start.duration_since(flushed) >= FLUSH_EVERY {
            rec.flush();
            flushed = start;
            unflushed = false;
        } else {
            unflushed = true;
        }
        send_batch(fd, &mut send_headers, &outs[..to.len()], &to);
    }
}

/// Sends `outs[i]` to `to[i]` with as few `sendmmsg` calls as the kernel allows; a datagram the
/// kernel refuses (e.g. an unreachable address) is skipped, not retried.
fn send_batch(
    fd: std::os::fd::RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    outs: &[Vec<u8>],
    to: &[Option<SockaddrStorage>],
) {
    let mut from = 0;
    while from < outs.len() {
        let iovs: Vec<[IoSlice<'_>; 1]> = outs[from..].iter().map(|o| [IoSlice::new(o)]).collect();
        let cmsgs: [ControlMessage<'_>; 0] = [];
        match sendmmsg(fd, headers, &iovs, &to[from..], cmsgs, MsgFlags::empty()) {
            Ok(sent) => {
                let n = sent.count();
                from += n.max(1);
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::debug!(error = %e, "dns/udp send");
                from += 1;
            }
        }
    }
}

/// Accepts TCP connections until `stop`, within the limits of `table` (see `tcplimit.rs`).
pub async fn tcp_acceptor(
    shared: Arc<Shared>,
    listener: TcpListener,
    server: String,
    stop: CancellationToken,
    table: Arc<ConnTable>,
) {
    loop {
        let (stream, src) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "dns/tcp accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Refused connections are closed at once (dropping `stream`).
        let Ok(slot) = table.admit(src.ip()) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(tcp_connection(
            shared.clone(),
            stream,
            src,
            server.clone(),
            stop.clone(),
            slot,
        ));
    }
}

/// Writes one length-prefixed message; `Err` on an I/O error or after `timeout` (a client
/// that does not read its answers).
async fn write_frame(
    stream: &mut TcpStream,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), Option<std::io::Error>> {
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&(bytes.len().min(65535) as u16).to_be_bytes());
    framed.extend_from_slice(&bytes[..bytes.len().min(65535)]);
    match tokio::time::timeout(timeout, stream.write_all(&framed)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Some(e)),
        Err(_) => Err(None),
    }
}

/// Serves the queries of one TCP connection, one at a time, until EOF, idle timeout, write
/// timeout, eviction or stop.
async fn tcp_connection(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    src: SocketAddr,
    server: String,
    stop: CancellationToken,
    slot: Slot,
) {
    let limits = slot.table().limits;
    let mut rec = Recorder::new(shared.metrics.clone(), server);
    let mut templates = Templates::default();
    let mut out = Vec::new();
    // A write that times out: count it, log it (rate-limited) and close.
    let write_failed = |e: Option<std::io::Error>| {
        if e.is_none() {
            slot.table().hit(Limit::WriteTimeout, src.ip());
        }
    };
    loop {
        slot.idle();
        let read = async {
            let len = tokio::time::timeout(limits.idle_timeout, stream.read_u16())
                .await
                .ok()?
                .ok()? as usize;
            let mut buf = vec![0u8; len];
            tokio::time::timeout(limits.idle_timeout, stream.read_exact(&mut buf))
                .await
                .ok()?
                .ok()?;
            Some(buf)
        };
        let buf = tokio::select! {
            _ = stop.cancelled() => return,
            _ = slot.evicted() => return,
            r = read => match r {
                Some(b) => b,
                None => return,
            },
        };
        slot.busy();
        let len = buf.len();
        let start = Instant::now();
        let (bytes, reply) = match shared.handle(&buf, src, true, &mut templates, &mut out) {
            Step::Reply(reply) => (std::mem::take(&mut out), reply),
            Step::Drop => continue,
            Step::Xfr(messages, reply) => {
                let mut total = 0;
                for m in &messages {
                    total += m.len();
                    if let Err(e) = write_frame(&mut stream, m, limits.write_timeout).await {
                        write_failed(e);
                        return;
                    }
                }
                rec.record(sample(reply, true, src, len, total, start));
                rec.flush();
                continue;
            }
            step => match shared.resolve(step, true).await {
                Some(x) => x,
                None => continue,
            },
        };
        if let Err(e) = write_frame(&mut stream, &bytes, limits.write_timeout).await {
            write_failed(e);
            return;
        }
        rec.record(sample(reply, true, src, len, bytes.len(), start));
        rec.flush();
    }
}
