//! The pingora `ProxyHttp` implementation: one request from routing to access log.
//!
//! Phases (pingora calls them in this order):
//! - `request_filter`: load the snapshot once, find the rule (404), run redirect and request
//!   filters, choose the weighted backend and its balancer (503 when it has no usable endpoint).
//! - `upstream_peer`: the balancer's next endpoint not yet tried, skipping ejected ones (unless
//!   every endpoint is ejected). Called again after a retryable failure.
//! - `fail_to_connect` / `error_while_proxy` / `upstream_response_filter`: count failures for
//!   outlier ejection and decide retries: a failed connect always goes to another endpoint (up to
//!   `max_connect_retries`); an idempotent request that met a reset, 502 or 503 is sent again
//!   only while the retry budget allows.
//! - `upstream_request_filter`: X-Forwarded-*, Forwarded, request id.
//! - `response_filter`: ResponseHeaderModifier, request id.
//! - `logging`: metrics and the `access` log line.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use tables::HttpRouteFilter;

use super::backend::PortBalancer;
use super::filters::{self, RedirectFrom};
use super::guard::Guarded;
use super::health::EndpointState;
use super::log_line::{LogSafe, Millis};
use super::request::{forwarded_for, request_hash, request_host, request_id};
use super::retry;
use super::route::{CompiledRule, Headers, RequestView};
use super::shared::Shared;
use super::upstreams;
use super::views::Scope;

/// The proxy for one listener kind (plain or TLS).
pub struct Ingress {
    pub shared: Arc<Shared>,
    /// `http` or `https`: X-Forwarded-Proto and redirects.
    pub scheme: &'static str,
    /// The listener whose rules this serves (`views.rs`).
    pub scope: Scope,
}

/// Per-request state.
pub struct Ctx {
    start: Instant,
    request_id: Option<String>,
    host: String,
    client_ip: Option<IpAddr>,
    rule: Option<Arc<CompiledRule>>,
    balancer: Option<Arc<PortBalancer>>,
    hash: u64,
    tried: Vec<usize>,
    current: Option<Arc<EndpointState>>,
    attempt_start: Option<Instant>,
    retries: u32,
    /// `upstream_response_filter` turned a 502/503 into a retry (already counted and budgeted).
    status_retry: bool,
    /// Status answered by the proxy itself (404, 503, redirects), for the log.
    local_status: Option<u16>,
    response_recorded: bool,
    /// Snapshot generation the request was routed in.
    generation: u64,
    /// The upstream connection this request holds (see `upstreams`).
    upstream_fd: Option<std::os::fd::RawFd>,
}

impl Ctx {
    fn service_label(&self) -> &str {
        self.balancer.as_ref().map(|b| &*b.label).unwrap_or("-")
    }
    fn route_label(&self) -> &str {
        self.rule.as_ref().map(|r| &*r.label).unwrap_or("-")
    }
    fn finish_attempt(&mut self) {
        if let Some(s) = self.current.take() {
            s.end_request();
        }
    }
}

impl Ingress {
    async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        code: u16,
        body: String,
        location: Option<String>,
    ) -> Result<bool> {
        ctx.local_status = Some(code);
        let mut resp = ResponseHeader::build(code, Some(4))?;
        resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
        resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        if let Some(l) = location {
            resp.insert_header(http::header::LOCATION, l)?;
        }
        if let Some(id) = &ctx.request_id {
            resp.insert_header("x-request-id", id.as_str())?;
        }
        let idle = self.shared.config.client.idle_timeout;
        session.set_keepalive(Some(idle.as_secs().max(1)));
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
        Ok(true)
    }

    fn record_failure(&self, ctx: &Ctx) {
        let (Some(state), Some(b)) = (ctx.current.as_ref(), ctx.balancer.as_ref()) else {
            return;
        };
        let s = &self.shared;
        retry::record_failure(&s.config.outlier, &s.metrics, b, state);
    }

    /// Whether another attempt may go to an endpoint not tried yet.
    fn can_try_another(&self, ctx: &Ctx) -> bool {
        ctx.balancer.as_ref().is_some_and(|b| {
            retry::can_try_another(
                b,
                ctx.tried.len(),
                ctx.retries,
                self.shared.config.max_retries,
            )
        })
    }

    fn count_retry(&self, ctx: &Ctx, reason: &str) {
        retry::count_retry(&self.shared.metrics, ctx.service_label(), reason);
    }
}

#[async_trait]
impl ProxyHttp for Ingress {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            request_id: None,
            host: String::new(),
            client_ip: None,
            rule: None,
            balancer: None,
            hash: 0,
            tried: Vec::new(),
            current: None,
            attempt_start: None,
            retries: 0,
            status_retry: false,
            local_status: None,
            response_recorded: false,
            generation: 0,
            upstream_fd: None,
        }
    }

    /// The head is parsed: the connection's guard lets reads through (`guard.rs`).
    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        if let Some(g) = session.stream().and_then(Guarded::of) {
            g.head_done();
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.start = Instant::now();
        self.shared.budget.deposit();
        ctx.client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.request_id = Some(request_id(
            session
                .get_header("x-request-id")
                .and_then(|v| v.to_str().ok()),
        ));
        if let Some(why) = malformed(session) {
            return self
                .respond(session, ctx, 400, format!("{why}\n"), None)
                .await;
        }
        let snapshot = self.shared.cell.load();
        ctx.generation = snapshot.generation;
        let index = self.shared.route_index(&snapshot.routes.http);
        let (host, port) = request_host(session.req_header());
        ctx.host = host;
        // Match and forward the path with dot segments resolved, so `/api/../admin` cannot
        // reach a backend as `/admin` through the `/api` rule.
        if let Some(clean) = filters::remove_dot_segments(session.req_header().uri.path()) {
            let pq = match session.req_header().uri.query() {
                Some(q) => format!("{clean}?{q}"),
                None => clean,
            };
            match filters::with_path_and_query(&session.req_header().uri, &pq) {
                Ok(uri) => session.req_header_mut().set_uri(uri),
                Err(_) => {
                    let body = "malformed request path\n".to_string();
                    return self.respond(session, ctx, 400, body, None).await;
                }
            }
        }
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        let view = RequestView {
            path: &path,
            query: query.as_deref(),
            method: &req.method,
            headers: Headers::Map(&req.headers),
        };
        let Some(matched) = index.find(self.scope, &ctx.host, &view) else {
            let body = format!("no route for host {:?} path {:?}\n", ctx.host, path);
            return self.respond(session, ctx, 404, body, None).await;
        };
        let rule = matched.rule.clone();
        let prefix = matched.prefix.map(str::to_string);
        ctx.rule = Some(rule.clone());
        if let Some(f) = rule.unsupported_filter() {
            let body = format!("route {}: filter {f} is not supported\n", rule.label);
            return self.respond(session, ctx, 500, body, None).await;
        }
        for f in &rule.rule.filters {
            match f {
                HttpRouteFilter::RequestRedirect {
                    scheme,
                    hostname,
                    path: pm,
                    port: rport,
                    status_code,
                } => {
                    let from = RedirectFrom {
                        scheme: self.scheme,
                        host: &ctx.host,
                        port,
                        path: &path,
                        query: query.as_deref(),
                    };
                    let loc = filters::redirect_location(
                        &from,
                        scheme.as_deref(),
                        hostname.as_deref(),
                        pm.as_ref(),
                        *rport,
                        prefix.as_deref(),
                    );
                    let body = format!("redirecting to {loc}\n");
                    return self
                        .respond(session, ctx, *status_code, body, Some(loc))
                        .await;
                }
                HttpRouteFilter::RequestHeaderModifier(m) => {
                    filters::modify_headers(session.req_header_mut(), m);
                }
                HttpRouteFilter::UrlRewrite { hostname, path: pm } => {
                    if let Some(h) = hostname {
                        session
                            .req_header_mut()
                            .insert_header(http::header::HOST, h)?;
                    }
                    if let Some(pm) = pm {
                        let new_path = filters::rewrite_path(&path, pm, prefix.as_deref());
                        let pq = match &query {
                            Some(q) => format!("{new_path}?{q}"),
                            None => new_path,
                        };
                        let uri = filters::with_path_and_query(&session.req_header().uri, &pq)
                            .map_err(|e| {
                                Error::because(ErrorType::InternalError, "rewritten path", e)
                            })?;
                        session.req_header_mut().set_uri(uri);
                    }
                }
                HttpRouteFilter::ResponseHeaderModifier(_) | HttpRouteFilter::Unsupported(_) => {}
            }
        }
        let Some(bi) = rule.pick_backend(fastrand::u64(..)) else {
            let body = format!("route {}: no backend with a positive weight\n", rule.label);
            return self.respond(session, ctx, 500, body, None).await;
        };
        let backend = &rule.rule.backends[bi];
        if rule.crosses_namespace(backend) {
            let body = format!(
                "route {}: backendRef {} is in another namespace and no ReferenceGrant there allows it\n",
                rule.label, backend.service
            );
            return self.respond(session, ctx, 500, body, None).await;
        }
        let balancer = match self.shared.balancers.get(
            &snapshot.routes,
            backend,
            rule.rule.lb_algorithm.as_deref(),
        ) {
            Ok(b) => b,
            Err(e) => {
                let body = format!("{e}\n");
                return self.respond(session, ctx, 503, body, None).await;
            }
        };
        if let Some(key) = balancer.algorithm.hash_key() {
            let headers = Headers::Map(&session.req_header().headers);
            ctx.hash = request_hash(key, ctx.client_ip, headers);
        }
        ctx.balancer = Some(balancer);
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        ctx.finish_attempt();
        let b = ctx
            .balancer
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no backend chosen"))?;
        let Some(i) = b.choose(ctx.hash, &ctx.tried) else {
            return Err(Error::explain(
                ErrorType::HTTPStatus(502),
                format!("service {}: every endpoint was tried", b.label),
            ));
        };
        ctx.tried.push(i);
        let state = b.endpoints[i].clone();
        state.start_request();
        let mut peer = HttpPeer::new(state.addr, false, String::new());
        let cfg = &self.shared.config;
        peer.options.connection_timeout = Some(cfg.connect_timeout);
        peer.options.idle_timeout = Some(cfg.upstream_idle_timeout);
        // The route's timeouts bound whole exchanges (`upstream_deadline`); this one, each read.
        peer.options.read_timeout = cfg.upstream_read_timeout;
        if b.h2c {
            peer.options.set_http_version(2, 2);
        }
        ctx.current = Some(state);
        ctx.attempt_start = Some(Instant::now());
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.shared
            .metrics
            .connect_errors
            .with_label_values(&[ctx.service_label()])
            .inc();
        self.record_failure(ctx);
        if self.can_try_another(ctx) {
            ctx.retries += 1;
            self.count_retry(ctx, "connect");
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if std::mem::take(&mut ctx.status_retry) {
            e.set_retry(true);
            return e;
        }
        if *e.esource() != ErrorSource::Upstream {
            e.set_retry(false);
            return e;
        }
        if !client_reused {
            // A stale pooled connection says nothing about the endpoint's health.
            self.record_failure(ctx);
        }
        // A timeout is the route's deadline, not a reason to wait that long again elsewhere.
        let timed_out = matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        );
        let idempotent = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && !session.is_upgrade_req()
            && !timed_out;
        // A reused connection closed under us is retried like a failed connect; anything else
        // only within the budget.
        let retry = retry::retry_on_reset(
            idempotent,
            self.can_try_another(ctx),
            client_reused,
            &self.shared.budget,
        );
        if retry {
            ctx.retries += 1;
            self.count_retry(ctx, "reset");
        }
        e.set_retry(retry);
        e
    }

    /// Gateway API `timeouts`: `request` from the request's headers to the end of the response,
    /// across retries; `backendRequest` for each attempt on an endpoint. Zero disables either.
    fn upstream_deadline(&self, ctx: &Ctx) -> Option<Instant> {
        let r = &ctx.rule.as_ref()?.rule;
        let whole = retry::request_deadline(r, ctx.start);
        retry::attempt_deadline(r, whole, ctx.attempt_start)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(prev) = ctx.upstream_fd.take() {
            self.shared.upstreams.released(prev);
        }
        if let (Some(b), Some(state)) = (ctx.balancer.as_ref(), ctx.current.as_ref()) {
            self.shared
                .upstreams
                .acquired(fd, b.target(state.addr), reused);
            ctx.upstream_fd = Some(fd);
        }
        self.shared
            .metrics
            .upstream_connections
            .with_label_values(&[if reused { "true" } else { "false" }])
            .inc();
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(ip) = ctx.client_ip {
            let ip_s = ip.to_string();
            let xff = match session
                .get_header("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) if !prev.is_empty() => format!("{prev}, {ip_s}"),
                _ => ip_s,
            };
            upstream.insert_header("x-forwarded-for", xff)?;
            let mut fwd = format!("{};proto={}", forwarded_for(ip), self.scheme);
            if !ctx.host.is_empty() {
                fwd.push_str(&format!(";host=\"{}\"", ctx.host));
            }
            let fwd = match session
                .get_header("forwarded")
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) if !prev.is_empty() => format!("{prev}, {fwd}"),
                _ => fwd,
            };
            upstream.insert_header("forwarded", fwd)?;
        }
        normalise_content_length(upstream)?;
        upstream.insert_header("x-forwarded-proto", self.scheme)?;
        if !ctx.host.is_empty() {
            upstream.insert_header("x-forwarded-host", ctx.host.as_str())?;
        }
        if let Some(id) = &ctx.request_id {
            upstream.insert_header("x-request-id", id.as_str())?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if resp.status.is_informational() && resp.status.as_u16() != 101 {
            return Ok(());
        }
        if ctx.response_recorded {
            return Ok(());
        }
        let code = resp.status.as_u16();
        if let (Some(state), Some(t)) = (ctx.current.as_ref(), ctx.attempt_start) {
            state.observe_latency(t.elapsed());
        }
        if code >= 500 {
            self.record_failure(ctx);
            let idempotent = session.req_header().method.is_idempotent()
                && !session.as_ref().retry_buffer_truncated();
            if retry::retry_on_status(
                code,
                idempotent,
                self.can_try_another(ctx),
                &self.shared.budget,
            ) {
                ctx.retries += 1;
                self.count_retry(ctx, "status");
                let mut e = Error::explain(
                    ErrorType::HTTPStatus(code),
                    format!("endpoint answered {code}, retrying"),
                );
                e.set_retry(true);
                ctx.status_retry = true;
                return Err(e);
            }
        } else if let Some(state) = ctx.current.as_ref() {
            state.record_success();
        }
        ctx.response_recorded = true;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(rule) = &ctx.rule {
            for f in &rule.rule.filters {
                if let HttpRouteFilter::ResponseHeaderModifier(m) = f {
                    filters::modify_headers(resp, m);
                }
            }
        }
        if let Some(id) = &ctx.request_id {
            resp.insert_header("x-request-id", id.as_str())?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let upstream = *e.esource() == ErrorSource::Upstream;
        let code = match e.etype() {
            ErrorType::HTTPStatus(c) => *c,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if upstream =>
            {
                504
            }
            _ if upstream => 502,
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed
                if *e.esource() == ErrorSource::Downstream =>
            {
                0 // the client is gone
            }
            _ if *e.esource() == ErrorSource::Downstream => 400,
            _ => 500,
        };
        if code > 0 && session.response_written().is_none() {
            ctx.local_status = Some(code);
            let body = format!("service {}: {}\n", ctx.service_label(), e.etype().as_str());
            if let Ok(mut resp) = ResponseHeader::build(code, Some(4)) {
                let _ = resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8");
                let _ = resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string());
                if let Some(id) = &ctx.request_id {
                    let _ = resp.insert_header("x-request-id", id.as_str());
                }
                if let Err(we) = session.write_error_response(resp, Bytes::from(body)).await {
                    tracing::debug!(error = %we, "could not send the error response");
                }
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        ctx.finish_attempt();
        if let Some(fd) = ctx.upstream_fd.take() {
            // Back in the pool by now; if its endpoint left the table meanwhile, close it.
            let snap = self.shared.cell.load();
            let unchanged = snap.generation == ctx.generation;
            self.shared
                .upstreams
                .release_and_close_if(fd, |t| unchanged || upstreams::usable_in(&snap.routes, t));
        }
        let code = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.local_status)
            .unwrap_or(0);
        let route = ctx.route_label();
        let service = ctx.service_label();
        let m = &self.shared.metrics;
        let code_s = code.to_string();
        m.requests
            .with_label_values(&[route, service, &code_s])
            .inc();
        let elapsed = ctx.start.elapsed();
        m.duration
            .with_label_values(&[route, service])
            .observe(elapsed.as_secs_f64());
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return;
        }
        let upstream = ctx
            .balancer
            .as_ref()
            .zip(ctx.tried.last())
            .map(|(b, &i)| b.endpoints[i].addr.to_string());
        let req = session.req_header();
        tracing::info!(
            target: "access",
            client = %ctx.client_ip.map(|i| i.to_string()).unwrap_or_default(),
            method = %LogSafe(req.method.as_str()),
            host = %LogSafe(&ctx.host),
            path = %LogSafe(req.uri.path()),
            status = code,
            route,
            service,
            upstream = upstream.as_deref().unwrap_or("-"),
            retries = ctx.retries,
            duration_ms = %Millis(elapsed),
            request_id = %LogSafe(ctx.request_id.as_deref().unwrap_or("-")),
            error = %LogSafe(&e.map(|e| e.to_string()).unwrap_or_default()),
        );
    }
}

/// What makes a request one this proxy answers 400 before routing, the same on both paths (the
/// fast path hands such requests here):
/// - HTTP/1.1 without `Host` (RFC 9112 3.2: a server MUST answer 400);
/// - a `Connection` option naming `Host` or an `X-Forwarded-*` header this proxy sets: RFC 9110
///   7.6.1 would have the proxy remove that header, which it cannot do and still route or
///   forward the request as received (pingora and Envoy refuse it too).
fn malformed(session: &Session) -> Option<&'static str> {
    let req = session.req_header();
    if !session.is_http2()
        && req.version == http::Version::HTTP_11
        && req.headers.get(http::header::HOST).is_none()
    {
        return Some("HTTP/1.1 request without a Host header");
    }
    let nominates_protected = req
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| t.trim_ascii())
        .any(|t| {
            [
                &b"host"[..],
                b"x-forwarded-for",
                b"x-forwarded-host",
                b"x-forwarded-proto",
            ]
            .iter()
            .any(|h| t.eq_ignore_ascii_case(h))
        });
    nominates_protected.then_some("Connection header names a header the proxy needs or sets")
}

/// `Content-Length: 5, 5` or two `Content-Length: 5` lines, which pingora accepts when the
/// values agree (RFC 9110 8.6), go upstream as one `Content-Length: 5`: a backend that takes
/// the list form differently from this proxy cannot disagree with it on where the body ends.
fn normalise_content_length(req: &mut RequestHeader) -> Result<()> {
    let values: Vec<&http::HeaderValue> = req
        .headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .collect();
    let listed = values.len() > 1 || values.iter().any(|v| v.as_bytes().contains(&b','));
    if !listed {
        return Ok(());
    }
    let mut n: Option<u64> = None;
    for t in values
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
    {
        let v = std::str::from_utf8(t.trim_ascii())
            .ok()
            .and_then(|t| t.parse::<u64>().ok());
        match (v, n) {
            (Some(v), None) => n = Some(v),
            (Some(v), Some(m)) if v == m => {}
            _ => {
                return Err(Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "Content-Length values differ",
                ))
            }
        }
    }
    if let Some(n) = n {
        req.insert_header(http::header::CONTENT_LENGTH, n.to_string())?;
    }
    Ok(())
}
