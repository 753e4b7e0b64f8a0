//! The DNS server under hostile clients, in process: TCP connection limits (per client, global,
//! eviction of the oldest idle connection, write timeout), forwarding loops that form after
//! start, and large answers that must stay cheap.

#[path = "support/cases.rs"]
mod cases;
#[path = "support/running.rs"]
mod running;
#[path = "support/upstream.rs"]
mod upstream;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use cases::{ask, query_message, tcp_raw};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use running::start;
use tables::{ClusterState, Object, Origin, SnapshotCell, SourceId, TableConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use upstream::FakeUpstream;

fn cell_of(yaml: &str) -> SnapshotCell {
    let objects: Vec<Object> = controller::parse::parse_manifest(Path::new("fixture.yaml"), yaml)
        .unwrap()
        .iter()
        .map(|o| controller::convert::convert(o, "default").unwrap())
        .collect();
    let mut state = ClusterState::new(TableConfig::default());
    let source = SourceId::new(Origin::Manifests, "fixture.yaml");
    state.reset(&source, objects, &[]);
    state.set_synced(true);
    let cell = tables::new_cell("cluster.local");
    cell.store(state.commit().unwrap());
    cell
}

/// A TCP connection to `server` from the local address `from` (any port).
async fn connect_from(from: &str, server: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(format!("{from}:0").parse().unwrap())?;
    sock.connect(server).await
}

/// One TCP query from the local address `from`; `None` if the server closed the connection
/// (or it timed out after 5 s).
async fn tcp_query_from(from: &str, server: SocketAddr, m: &Message) -> Option<Message> {
    let q = m.to_vec().unwrap();
    let mut s = connect_from(from, server).await.ok()?;
    let go = async {
        s.write_all(&(q.len() as u16).to_be_bytes()).await.ok()?;
        s.write_all(&q).await.ok()?;
        let len = s.read_u16().await.ok()?;
        let mut buf = vec![0u8; len as usize];
        s.read_exact(&mut buf).await.ok()?;
        Message::from_vec(&buf).ok()
    };
    tokio::time::timeout(Duration::from_secs(5), go)
        .await
        .ok()
        .flatten()
}

/// A ClusterIP Service with `n` named TCP ports.
fn many_ports(n: usize) -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: wide, namespace: default}\nspec:\n  clusterIP: 10.96.5.5\n  ports:\n",
    );
    for i in 0..n {
        y.push_str(&format!(
            "  - {{name: p{i}, port: {}, protocol: TCP}}\n",
            1000 + i
        ));
    }
    y
}

const WEB: &str = "web.default.svc.cluster.local.";

/// Slow clients from 127.0.0.1 — each opens connections and sends one byte of a query, then
/// nothing — must not shut 127.0.0.2 out. Cases: the default limits with 1,000 slow
/// connections (the per-client cap refuses most of them), and a small table without a
/// per-client cap (the oldest idle connection is closed for each newcomer).
#[tokio::test]
async fn slow_tcp_clients_do_not_shut_out_another_address() {
    struct Case {
        what: &'static str,
        max_connections: usize,
        max_per_client: usize,
        slow: usize,
        /// The limit hit that proves which mechanism kept room.
        evidence: &'static str,
    }
    let cases = [
        Case {
            what: "defaults, 1,000 slow connections",
            max_connections: 1000,
            max_per_client: 64,
            slow: 1000,
            evidence: "per_client",
        },
        Case {
            what: "table full of one client's idle connections, no per-client cap",
            max_connections: 50,
            max_per_client: 0,
            slow: 50,
            evidence: "evicted",
        },
    ];
    let cell = cell_of(cases::FIXTURE);
    for c in cases {
        let s = start(&cell, |cfg| {
            cfg.tcp_max_connections = c.max_connections;
            cfg.tcp_max_per_client = c.max_per_client;
            cfg.tcp_idle_timeout = Duration::from_secs(60);
        })
        .await;
        let mut slow = Vec::new();
        for _ in 0..c.slow {
            // Connections the server closes at once still count as attempts.
            if let Ok(mut st) = connect_from("127.0.0.1", s.tcp()).await {
                let _ = st.write_all(&[0]).await;
                slow.push(st);
            }
        }
        let held = c.slow.min(if c.max_per_client > 0 {
            c.max_per_client
        } else {
            c.max_connections
        });
        // Evidence that the server has seen them all: the open-connection gauge.
        s.wait_metric(
            "switchboard_dns_tcp_connections",
            held as f64,
            Duration::from_secs(20),
        )
        .await;
        let mut ok = 0;
        for _ in 0..20 {
            let r = tcp_query_from(
                "127.0.0.2",
                s.tcp(),
                &query_message(WEB, RecordType::A, false),
            )
            .await;
            if r.is_some_and(|r| r.answers.len() == 1) {
                ok += 1;
            }
        }
        assert_eq!(ok, 20, "{}: TCP queries from 127.0.0.2 answered", c.what);
        let series = format!(
            "switchboard_dns_tcp_limit_hits_total{{limit=\"{}\"}}",
            c.evidence
        );
        assert!(
            s.metric(&series) >= 1.0,
            "{}: {series}\n{}",
            c.what,
            s.metrics()
        );
        drop(slow);
    }
}

/// A client that sends queries and never reads the answers is dropped after the write timeout,
/// although it is never idle long enough for the idle timeout.
#[tokio::test]
async fn a_client_that_never_reads_is_dropped() {
    let cell = cell_of(&many_ports(10_000));
    let s = start(&cell, |cfg| {
        cfg.tcp_idle_timeout = Duration::from_secs(60);
        cfg.tcp_write_timeout = Duration::from_millis(500);
    })
    .await;
    // ~64 KB per answer: a few hundred fill any socket buffers.
    let q = query_message("wide.default.svc.cluster.local.", RecordType::SRV, false)
        .to_vec()
        .unwrap();
    let mut one = (q.len() as u16).to_be_bytes().to_vec();
    one.extend_from_slice(&q);
    let mut st = TcpStream::connect(s.tcp()).await.unwrap();
    let started = Instant::now();
    for _ in 0..400 {
        // Our own writes block once the server stops reading: that is enough.
        match tokio::time::timeout(Duration::from_millis(200), st.write_all(&one)).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    s.wait_metric(
        "switchboard_dns_tcp_limit_hits_total{limit=\"write_timeout\"}",
        1.0,
        Duration::from_secs(20),
    )
    .await;
    // The connection is closed: draining it ends in EOF or a reset, well before the idle timeout.
    let mut buf = vec![0u8; 1 << 16];
    let drained = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match st.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "connection still open");
    assert!(started.elapsed() < Duration::from_secs(40));
    s.wait_metric(
        "switchboard_dns_tcp_connections",
        0.0,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(s.metric("switchboard_dns_tcp_connections"), 0.0);
}

/// A loop that forms after start: the upstream answers at first (so the start probe is
/// answered and the probe burst ends), then starts forwarding every query back to us. One
/// client query must cost a handful of upstream queries, not thousands, whether the forwarder
/// keeps our query IDs or not, and whether it sends them back from the address we ask or from
/// another; the upstream is then not asked again.
#[tokio::test]
async fn a_loop_formed_after_start_is_detected_and_bounded() {
    // (keep_id, other_source)
    for (keep_id, other_source) in [(true, false), (false, false), (true, true), (false, true)] {
        let up = FakeUpstream::start().await;
        if other_source {
            up.set_relay_source(Some([127, 0, 0, 3].into()));
        }
        let cell = cell_of(cases::FIXTURE);
        let s = start(&cell, |cfg| {
            cfg.upstreams = vec![up.addr];
            cfg.forward_timeout = Duration::from_secs(2);
        })
        .await;
        // The start probe was answered: the burst is over, no loop yet.
        let until = Instant::now() + Duration::from_secs(20);
        while up.count_suffix(".switchboard-loop-check.") == 0 {
            assert!(Instant::now() < until, "no start probe");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let r = ask(
            s.server.listeners[0].udp,
            &query_message("example.org.", RecordType::A, false),
            false,
        )
        .await;
        assert_eq!(r.answers.len(), 1, "forwarding works before the loop");
        assert!(!s.server.loop_detected());

        up.set_relay(Some(s.server.listeners[0].udp), keep_id);
        let r = ask(
            s.server.listeners[0].udp,
            &query_message("late.example.", RecordType::A, false),
            false,
        )
        .await;
        assert_eq!(
            r.metadata.response_code,
            ResponseCode::ServFail,
            "keep_id={keep_id}"
        );
        let series = format!(
            "switchboard_dns_forward_loop_detected{{to=\"{}\"}}",
            up.addr
        );
        s.wait_metric(&series, 1.0, Duration::from_secs(20)).await;
        assert!(s.server.loop_detected());
        let n = up.count("late.example.");
        eprintln!(
            "keep_id={keep_id} other_source={other_source}: late.example. reached the upstream {n} times"
        );
        assert!(
            n < 20,
            "keep_id={keep_id}: one query became {n} upstream queries"
        );
        // Not asked again.
        let before = up.count("again.example.");
        let r = ask(
            s.server.listeners[0].udp,
            &query_message("again.example.", RecordType::A, false),
            false,
        )
        .await;
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(up.count("again.example."), before);
        // The cluster zone still answers.
        let r = ask(
            s.server.listeners[0].udp,
            &query_message(WEB, RecordType::A, false),
            false,
        )
        .await;
        assert_eq!(r.answers.len(), 1);
    }
}

/// The upstream does not answer at start, then begins to forward our queries back: the start
/// probe keeps going (every second, up to 30 s, as CoreDNS's `loop`) and catches it.
#[tokio::test]
async fn start_probe_keeps_probing_until_answered() {
    let up = FakeUpstream::start().await;
    up.set_dead(true);
    let cell = cell_of(cases::FIXTURE);
    let s = start(&cell, |cfg| {
        cfg.upstreams = vec![up.addr];
    })
    .await;
    let until = Instant::now() + Duration::from_secs(20);
    while up.count_suffix(".switchboard-loop-check.") == 0 {
        assert!(Instant::now() < until, "no start probe");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The loop forms after the first probe went unanswered; no client query is sent.
    up.set_relay(Some(s.server.listeners[0].udp), false);
    up.set_dead(false);
    let series = format!(
        "switchboard_dns_forward_loop_detected{{to=\"{}\"}}",
        up.addr
    );
    s.wait_metric(&series, 1.0, Duration::from_secs(25)).await;
}

/// A TCP SRV query for a Service with 10,000 ports is encoded once per snapshot generation,
/// not once per connection: later queries on new connections cost a fraction of the first.
#[tokio::test]
async fn srv_with_ten_thousand_ports_is_cheap_over_tcp() {
    let cell = cell_of(&many_ports(10_000));
    let s = start(&cell, |_| {}).await;
    let q = query_message("wide.default.svc.cluster.local.", RecordType::SRV, false)
        .to_vec()
        .unwrap();
    let t = Instant::now();
    let first = tcp_raw(s.tcp(), &q).await;
    let first_time = t.elapsed();
    let r = Message::from_vec(&first).unwrap();
    assert!(r.answers.len() > 100, "{} answers", r.answers.len());
    let mut times = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        let again = tcp_raw(s.tcp(), &q).await;
        times.push(t.elapsed());
        assert_eq!(again.len(), first.len());
    }
    times.sort();
    let median = times[times.len() / 2];
    eprintln!("first {first_time:?}, median of the next 21: {median:?}");
    assert!(
        median * 5 < first_time,
        "first {first_time:?}, median of the next 21: {median:?}"
    );
}
