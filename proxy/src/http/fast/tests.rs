//! Unit tests of the fast path: socket waits, pipelining batches, the connection future's
//! size, which requests it takes, and HTTP/1 response framing.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::h1::{parse_head, Chunked, Framing};
use super::io::{read_now, Failure};
use super::pipeline::{join_batch, relay, OpenBatch};
use super::serve;
use crate::http::pool::FastPool;
use crate::http::shared::Shared;
use crate::http::upstreams::Target;
use crate::http::views::Scope;

/// A connected loopback pair: (our end, the peer's end).
async fn pair() -> (TcpStream, TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    (l.accept().await.unwrap().0, peer)
}

async fn stays_quiet(conn: &TcpStream) -> bool {
    tokio::time::timeout(Duration::from_millis(50), conn.readable())
        .await
        .is_err()
}

#[tokio::test]
async fn a_short_read_leaves_the_next_wait_asleep() {
    let (mut ours, mut peer) = pair().await;
    peer.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    ours.readable().await.unwrap();
    let mut buf = Vec::with_capacity(4096);
    assert_eq!(read_now(&mut ours, &mut buf).await.unwrap(), 18);
    assert!(
        stays_quiet(&ours).await,
        "the wait for the next request must sleep, not return to a read that fails"
    );
    // Nothing came: a read now does not wait either.
    let e = read_now(&mut ours, &mut buf).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    // The next request wakes it.
    peer.write_all(b"GET /2 HTTP/1.1\r\n\r\n").await.unwrap();
    ours.readable().await.unwrap();
    assert_eq!(read_now(&mut ours, &mut buf).await.unwrap(), 19);

    // What it replaced: after `try_read_buf` the wait returns at once with nothing to read.
    peer.write_all(b"x").await.unwrap();
    ours.readable().await.unwrap();
    assert_eq!(ours.try_read_buf(&mut buf).unwrap(), 1);
    assert!(!stays_quiet(&ours).await);
}

/// A batch takes requests up to its depth (the next request then leads a batch of its
/// own), gives them to the leader in order when closed, and, dropped unclosed, lets the
/// waiting requests know.
#[tokio::test]
async fn a_batch_takes_followers_up_to_its_depth_and_lets_them_go_when_dropped() {
    let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
    assert!(join_batch(a, 3, b"x").is_none(), "no batch open");
    let open = OpenBatch::open(a);
    let other = OpenBatch::open(b);
    let mut r1 = join_batch(a, 3, b"one;").unwrap();
    let _r2 = join_batch(a, 3, b"two;").unwrap();
    assert!(
        join_batch(a, 3, b"three;").is_none(),
        "leader + 2 = depth 3"
    );
    let next = OpenBatch::open(a);
    let _r3 = join_batch(a, 3, b"four;").unwrap();
    let batch = open.close();
    assert_eq!(batch.heads, b"one;two;");
    assert_eq!(batch.followers.len(), 2);
    let batch2 = next.close();
    assert_eq!(
        (batch2.heads.as_slice(), batch2.followers.len()),
        (&b"four;"[..], 1)
    );
    assert!(join_batch(a, 3, b"x").is_none(), "closed");
    // The first follower gets the connection; the others stay in line behind it.
    let (ours, _peer) = pair().await;
    let lease = FastPool::new(0).lease(ours, test_target(a));
    relay(lease, b"rest".to_vec(), batch.followers);
    let got = r1.try_recv().unwrap();
    assert_eq!((got.buf.as_slice(), got.followers.len()), (&b"rest"[..], 1));

    // A leader that goes away without closing its batch drops the followers' line.
    let r4 = join_batch(b, 3, b"x").unwrap();
    drop(other);
    assert!(r4.await.is_err());
    assert!(join_batch(b, 3, b"x").is_none());
}

fn test_target(endpoint: SocketAddr) -> Target {
    Target {
        service: tables::ServiceKey::new("d", "web"),
        port: 80,
        endpoint,
        label: "d/web:80".into(),
    }
}

/// What an idle keep-alive connection costs is mostly this future (`bench/run idle`): it
/// must stay small, with request state boxed (`exchange`).
#[tokio::test]
async fn an_idle_connection_holds_a_small_future() {
    let shared = shared();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let client = TcpStream::connect(addr).await.unwrap();
    let (_tx, rx) = watch::channel(false);
    let fut = serve(&shared, client, addr, Scope::ingress(80), &rx);
    let size = std::mem::size_of_val(&fut);
    assert!(size <= 1024, "fast::serve future is {size} bytes");
}

fn shared() -> Shared {
    let registry = prometheus::Registry::new();
    let metrics = crate::http::metrics::HttpMetrics::new(&registry).unwrap();
    Shared::new(
        tables::new_cell("cluster.local"),
        crate::http::config::HttpConfig::default(),
        metrics,
    )
}

fn decide(h: &super::fuzzing::Harness, req: &[u8]) -> &'static str {
    h.request(req)
}

/// Heads this path does not take go to pingora (which answers them), incomplete ones wait,
/// and no input makes it panic.
#[test]
fn requests_it_does_not_take_fall_back_and_garbage_is_harmless() {
    let s = super::fuzzing::Harness::new(tables::new_cell("cluster.local"));
    assert_eq!(decide(&s, b"GET / HTTP/1.1\r\nHost: a.test\r\n"), "partial");
    // Nothing routes in an empty table: pingora answers 404.
    assert_eq!(
        decide(&s, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"),
        "fallback"
    );
    for req in [
        &b"GET / HTTP/1.0\r\nHost: a.test\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
        b"GET /a/../b HTTP/1.1\r\nHost: a.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
    ] {
        assert_eq!(
            decide(&s, req),
            "fallback",
            "{:?}",
            String::from_utf8_lossy(req)
        );
    }
    // Heads over the limit are refused here, as soon as that much came.
    let max = crate::http::config::HttpConfig::default()
        .client
        .max_header_bytes;
    let mut big = b"GET / HTTP/1.1\r\nHost: a.test\r\nX: ".to_vec();
    big.resize(max, b'a');
    assert_eq!(decide(&s, &big), "partial", "at the limit: may still end");
    big.push(b'a');
    assert_eq!(decide(&s, &big), "431", "over the limit");
    let mut whole = big.clone();
    whole.extend_from_slice(b"\r\n\r\n");
    assert_eq!(decide(&s, &whole), "431", "complete but over the limit");
    let mut line = b"GET /".to_vec();
    line.resize(max + 1, b'a');
    assert_eq!(decide(&s, &line), "414", "a request line that does not end");
    // Random bytes and random cuts of valid heads: an answer, never a panic.
    let valid =
        b"GET /p?q=1 HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, x\r\nCookie: a=b\r\n\r\n";
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..2000 {
        let mut b = valid.to_vec();
        for _ in 0..rng.usize(0..4) {
            let i = rng.usize(..b.len());
            b[i] = rng.u8(..);
        }
        b.truncate(rng.usize(..=b.len()));
        decide(&s, &b);
        let noise: Vec<u8> = (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect();
        decide(&s, &noise);
        let _ = Chunked::default().feed(&noise);
        let _ = parse_head(&noise, false, "id");
    }
}

fn whole(body: &[u8]) -> Result<Option<usize>, Failure> {
    Chunked::default().feed(body)
}

#[test]
fn chunked_end_is_found_in_one_piece_and_byte_by_byte() {
    let body = b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nX-Trailer: a\r\n\r\nGET /next";
    let end = body.len() - b"GET /next".len();
    assert_eq!(whole(body).unwrap(), Some(end));
    let mut c = Chunked::default();
    for (i, b) in body.iter().enumerate() {
        match c.feed(std::slice::from_ref(b)).unwrap() {
            Some(1) => {
                assert_eq!(i + 1, end);
                return;
            }
            Some(n) => panic!("ended after {n} of one byte"),
            None => {}
        }
    }
    panic!("end not found");
}

#[test]
fn chunked_without_trailers_and_malformed() {
    assert_eq!(whole(b"0\r\n\r\n").unwrap(), Some(5));
    assert_eq!(whole(b"A\r\n0123456789\r\n0\r\n\r\n").unwrap(), Some(20));
    assert_eq!(whole(b"3\r\nabc\r\n").unwrap(), None);
    assert!(whole(b"zz\r\n").is_err());
    assert!(whole(b"\r\n").is_err(), "a size line needs digits");
    assert!(whole(b"3\r\nabcX").is_err(), "data must end with CRLF");
    assert!(whole(b"1000000000000000\r\n").is_err(), "size overflow");
}

#[test]
fn response_framing() {
    let f = |head: &str, head_only| {
        parse_head(head.as_bytes(), head_only, "id")
            .unwrap()
            .unwrap()
            .framing
    };
    assert_eq!(
        f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false),
        Framing::Length(5)
    );
    assert_eq!(
        f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true),
        Framing::None
    );
    assert_eq!(f("HTTP/1.1 204 No Content\r\n\r\n", false), Framing::None);
    assert_eq!(f("HTTP/1.1 304 Not Modified\r\n\r\n", false), Framing::None);
    assert_eq!(
        f(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 3\r\n\r\n",
            false
        ),
        Framing::Chunked
    );
    assert_eq!(f("HTTP/1.1 200 OK\r\n\r\n", false), Framing::Close);
    assert!(parse_head(
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        false,
        "id"
    )
    .is_err());
    assert!(parse_head(b"HTTP/1.1 200 OK\r\nconte", false, "id")
        .unwrap()
        .is_none());
    // Content-Length values: (value, length, or None for a 502).
    for (v, want) in [
        ("0", Some(0)),
        ("0012", Some(12)),
        ("9999999999999999999", Some(9_999_999_999_999_999_999)),
        ("18446744073709551615", Some(u64::MAX)),
        ("18446744073709551616", None),
        ("+7", Some(7)),
        ("-1", None),
        ("1 2", None),
        ("0x10", None),
    ] {
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {v}\r\n\r\n");
        let got = parse_head(head.as_bytes(), false, "id").map(|h| h.unwrap().framing);
        match want {
            Some(n) => assert_eq!(got.unwrap(), Framing::Length(n), "{v:?}"),
            None => assert!(got.is_err(), "{v:?}"),
        }
    }
}

#[test]
fn response_head_for_the_client() {
    let h = parse_head(
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: t=5\r\n\
          X-Request-Id: theirs\r\nContent-Length: 2\r\nX-Kept: yes\r\n\r\nok",
        false,
        "ours",
    )
    .unwrap()
    .unwrap();
    let text = String::from_utf8(h.client_head).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("X-Kept: yes\r\n"), "{text}");
    assert!(text.contains("Content-Length: 2\r\n"), "{text}");
    assert!(text.contains("x-request-id: ours\r\n"), "{text}");
    for gone in ["Connection", "X-Hop", "Keep-Alive", "theirs"] {
        assert!(!text.contains(gone), "{gone} in {text}");
    }
    assert!(h.upstream_keepalive, "HTTP/1.0 with keep-alive");
    let close = parse_head(
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
        false,
        "i",
    )
    .unwrap()
    .unwrap();
    assert!(!close.upstream_keepalive);
}

#[test]
fn client_heads_keep_lines_as_sent_and_end_them_in_crlf() {
    // (response head from the endpoint, head sent to the client before its final CRLF)
    let cases: [(&str, &str); 6] = [
        (
            "HTTP/1.1 200 OK\r\nA: 1\r\nB:  2 \r\n\r\n",
            "HTTP/1.1 200 OK\r\nA: 1\r\nB:  2 \r\nx-request-id: id\r\n",
        ),
        (
            "HTTP/1.1 200 OK\r\nA: 1\r\nConnection: x-b\r\nX-B: 2\r\nC: 3\r\nTE: t\r\nD: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nA: 1\r\nC: 3\r\nD: 4\r\nx-request-id: id\r\n",
        ),
        (
            "HTTP/1.1 200 OK\nA:1\nB: 2\r\nC: 3\n\n",
            "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nx-request-id: id\r\n",
        ),
        (
            "HTTP/1.1 200 OK\r\nA: 1\n\r\n",
            "HTTP/1.1 200 OK\r\nA: 1\r\nx-request-id: id\r\n",
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nX-Request-Id: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-request-id: id\r\n",
        ),
        (
            "HTTP/1.0 404 Not Found\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\nx-request-id: id\r\n",
        ),
    ];
    let mut failures = Vec::new();
    for (from, want) in cases {
        let h = parse_head(from.as_bytes(), false, "id").unwrap().unwrap();
        let got = String::from_utf8(h.client_head).unwrap();
        if got != want {
            failures.push(format!("{from:?}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
