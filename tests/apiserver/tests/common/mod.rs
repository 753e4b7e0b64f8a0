//! A minimal HTTP client for talking to the test API server the way kube does.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// Upper bound for any single wait in the tests.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `GET path` on a fresh connection and returns the response head and body.
pub async fn request(addr: SocketAddr, path: &str) -> hyper::Response<Incoming> {
    let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::get(path)
        .header("host", addr.to_string())
        .header("accept", "application/json")
        .body(Empty::<Bytes>::new())
        .expect("request");
    tokio::time::timeout(TIMEOUT, sender.send_request(req))
        .await
        .expect("response timed out")
        .expect("response")
}

/// `GET path`, returning the status and the JSON body.
pub async fn get_json(addr: SocketAddr, path: &str) -> (StatusCode, Value) {
    let resp = request(addr, path).await;
    let status = resp.status();
    let body = tokio::time::timeout(TIMEOUT, resp.into_body().collect())
        .await
        .expect("body timed out")
        .expect("body")
        .to_bytes();
    let value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "body of {path} is not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, value)
}

/// How a watch stream ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Terminating chunk received.
    Clean,
    /// The connection broke mid-body.
    Broken,
}

/// An open watch response, read one event line at a time.
pub struct Watch {
    body: Incoming,
    buf: Vec<u8>,
}

impl Watch {
    /// Opens a watch; panics unless the server answers 200.
    pub async fn open(addr: SocketAddr, path: &str) -> Watch {
        let resp = request(addr, path).await;
        assert_eq!(resp.status(), StatusCode::OK, "watch {path}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        Watch {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }

    /// The next event, or how the stream ended. Panics after `TIMEOUT`.
    pub async fn next(&mut self) -> Result<Value, End> {
        self.next_within(TIMEOUT)
            .await
            .expect("no watch event within the timeout")
    }

    /// The next event or end, or `None` if nothing arrives within `timeout`.
    pub async fn next_within(&mut self, timeout: Duration) -> Option<Result<Value, End>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let event = serde_json::from_slice(&line).unwrap_or_else(|e| {
                    panic!("bad event line ({e}): {}", String::from_utf8_lossy(&line))
                });
                return Some(Ok(event));
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .ok()?;
            match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(_)) => return Some(Err(End::Broken)),
                None => {
                    assert!(self.buf.is_empty(), "partial line at end of stream");
                    return Some(Err(End::Clean));
                }
            }
        }
    }

    /// The next event, asserting its type; returns the object.
    pub async fn expect(&mut self, event_type: &str) -> Value {
        let event = self
            .next()
            .await
            .unwrap_or_else(|end| panic!("stream ended ({end:?}), wanted {event_type}"));
        assert_eq!(event["type"], event_type, "event: {event}");
        event["object"].clone()
    }

    /// Asserts that no event arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(got) = self.next_within(quiet).await {
            panic!("expected no watch event, got {got:?}");
        }
    }
}

/// `metadata.resourceVersion` as a number.
pub fn rv_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_else(|| panic!("no resourceVersion in {obj}"))
        .parse()
        .expect("numeric resourceVersion")
}

/// A minimal Service object.
pub fn service(ns: &str, name: &str, ip: &str) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": ns },
        "spec": { "clusterIP": ip, "ports": [{ "port": 80, "protocol": "TCP" }] },
    })
}
