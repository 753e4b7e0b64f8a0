//! HTTP serving: connection handling, routing, list/get/watch handlers and
//! discovery documents.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::protobuf::{self, Protobuf};
use crate::resources::{self, GATEWAY_GROUP, RESOURCES};
use crate::store::{bookmark_line, event_line, json_line, ListError, Msg, Store, WatchStart};
use crate::util::{parse_query, reason_for, status_json};
use crate::{Stats, StreamingLists};

/// Response body type: full documents or streamed watch events.
pub(crate) type Body = UnsyncBoxBody<Bytes, io::Error>;

/// How many request lines [`Shared::log`] keeps.
const REQUEST_LOG_LIMIT: usize = 10_000;

/// Watch timeout when the client sends no `timeoutSeconds` (kube always does).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// A pending injected failure.
#[derive(Debug, Default)]
pub(crate) struct Fault {
    pub status: u16,
    pub remaining: usize,
}

/// Request counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub lists: AtomicU64,
    pub gets: AtomicU64,
    pub watches: AtomicU64,
    pub errors_injected: AtomicU64,
    pub not_found: AtomicU64,
    pub protobuf_lists: AtomicU64,
}

/// State shared by the handle and every connection task.
pub(crate) struct Shared {
    pub store: Mutex<Store>,
    pub gateway_crds: AtomicBool,
    pub delay: Mutex<Duration>,
    pub fault: Mutex<Fault>,
    pub counters: Counters,
    pub bookmark_interval: Option<Duration>,
    pub streaming_lists: Mutex<StreamingLists>,
    pub protobuf: Mutex<Protobuf>,
    pub log: Mutex<VecDeque<String>>,
    /// Distinct `User-Agent` headers seen (`-` for none).
    pub user_agents: Mutex<std::collections::BTreeSet<String>>,
}

/// Locks a mutex, ignoring poisoning (a panicking test thread must not take
/// the server down with it).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    pub fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            requests: c.requests.load(Ordering::Relaxed),
            lists: c.lists.load(Ordering::Relaxed),
            gets: c.gets.load(Ordering::Relaxed),
            watches: c.watches.load(Ordering::Relaxed),
            active_watches: self.store().active_watches(),
            errors_injected: c.errors_injected.load(Ordering::Relaxed),
            not_found: c.not_found.load(Ordering::Relaxed),
            protobuf_lists: c.protobuf_lists.load(Ordering::Relaxed),
        }
    }

    /// Takes one injected failure, if any are pending.
    fn take_fault(&self) -> Option<u16> {
        let mut fault = lock(&self.fault);
        if fault.remaining == 0 {
            return None;
        }
        fault.remaining -= 1;
        Some(fault.status)
    }
}

/// Accepts connections until `token` is cancelled, then closes the listener,
/// drops every open connection and waits for their tasks to finish.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    token: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    debug!(%peer, "apiserver: connection accepted");
                    conns.spawn(serve_connection(stream, Arc::clone(&shared), token.clone()));
                }
                Err(err) => {
                    debug!(%err, "apiserver: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>, token: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(handle(shared, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = conn => {
            if let Err(err) = result {
                debug!(%err, "apiserver: connection ended with error");
            }
        }
        // Dropping the connection future closes the socket at once, in the
        // middle of any response: that is what a dying API server looks like.
        () = token.cancelled() => {}
    }
}

/// Where a request path points.
pub(crate) enum Route {
    Version,
    Api,
    Apis,
    Group(String),
    GroupVersion(String, String),
    Collection {
        resource: usize,
        namespace: Option<String>,
    },
    Object {
        resource: usize,
        namespace: Option<String>,
        name: String,
    },
    NotFound,
}

pub(crate) fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Route::Version,
        ["api"] => return Route::Api,
        ["apis"] => return Route::Apis,
        ["apis", group] => return Route::Group((*group).to_string()),
        ["api", version] => return Route::GroupVersion(String::new(), (*version).to_string()),
        ["apis", group, version] => {
            return Route::GroupVersion((*group).to_string(), (*version).to_string())
        }
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Route::NotFound,
    };
    let (namespace, plural, name) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        _ => return Route::NotFound,
    };
    let Some(resource) = resources::by_plural(group, version, plural) else {
        return Route::NotFound;
    };
    let namespaced = RESOURCES[resource].namespaced;
    let namespace = namespace.map(str::to_string);
    match name {
        // Namespaced objects are only addressable inside their namespace, and
        // cluster-scoped ones never are.
        _ if namespace.is_some() && !namespaced => Route::NotFound,
        Some(_) if namespaced && namespace.is_none() => Route::NotFound,
        Some(name) => Route::Object {
            resource,
            namespace,
            name: name.to_string(),
        },
        None => Route::Collection {
            resource,
            namespace,
        },
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut resp = Response::new(full(json_line(value)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

pub(crate) fn status_response(code: u16, message: &str, details: Option<Value>) -> Response<Body> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(
        status,
        &status_json(code, reason_for(code), message, details),
    )
}

fn not_found_response(shared: &Shared) -> Response<Body> {
    shared.counters.not_found.fetch_add(1, Ordering::Relaxed);
    status_response(
        404,
        "the server could not find the requested resource",
        Some(json!({})),
    )
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query());
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let line = format!("{} {}", req.method(), req.uri());
    debug!(request = %line, "apiserver: request");
    shared.counters.requests.fetch_add(1, Ordering::Relaxed);
    {
        let ua = req
            .headers()
            .get(header::USER_AGENT)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_else(|| "-".into());
        let mut seen = lock(&shared.user_agents);
        if !seen.contains(&ua) {
            seen.insert(ua);
        }
    }
    {
        let mut log = lock(&shared.log);
        log.push_back(line);
        while log.len() > REQUEST_LOG_LIMIT {
            log.pop_front();
        }
    }

    let delay = *lock(&shared.delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let route = route(&path);
    let gateway_path = path
        .strip_prefix("/apis/")
        .is_some_and(|p| p == GATEWAY_GROUP || p.starts_with(&format!("{GATEWAY_GROUP}/")));
    if gateway_path && !shared.gateway_crds.load(Ordering::SeqCst) {
        return not_found_response(&shared);
    }
    if matches!(route, Route::Collection { .. } | Route::Object { .. }) {
        if let Some(code) = shared.take_fault() {
            shared
                .counters
                .errors_injected
                .fetch_add(1, Ordering::Relaxed);
            debug!(code, path, "apiserver: injecting failure");
            let mut resp = status_response(code, &format!("injected failure ({code})"), None);
            if code == 429 || code == 503 {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            return resp;
        }
    }
    if req.method() != Method::GET {
        let method = req.method().clone();
        if let Some(resp) = crate::writes::handle(&shared, req, &path).await {
            return resp;
        }
        return status_response(
            405,
            &format!("the server does not allow this method on the requested resource: {method}"),
            None,
        );
    }

    match route {
        Route::Version => json_response(
            StatusCode::OK,
            &json!({
                "major": "1",
                "minor": "33",
                "gitVersion": "v1.33.0-switchboard-test",
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean",
                "buildDate": "2025-01-01T00:00:00Z",
                "goVersion": "go1.24.0",
                "compiler": "gc",
                "platform": "linux/amd64",
            }),
        ),
        Route::Api => json_response(
            StatusCode::OK,
            &json!({ "kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [] }),
        ),
        Route::Apis => json_response(StatusCode::OK, &group_list(&shared)),
        Route::Group(group) => match api_group(&group) {
            Some(doc) => json_response(StatusCode::OK, &doc),
            None => not_found_response(&shared),
        },
        Route::GroupVersion(group, version) => match resource_list(&group, &version) {
            Some(doc) => json_response(StatusCode::OK, &doc),
            None => not_found_response(&shared),
        },
        Route::Collection {
            resource,
            namespace,
        } => {
            if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                watch(&shared, resource, namespace, &query)
            } else {
                list(
                    &shared,
                    resource,
                    namespace.as_deref(),
                    &query,
                    accept.as_deref(),
                )
            }
        }
        Route::Object {
            resource,
            namespace,
            name,
        } => get(&shared, resource, namespace.as_deref(), &name),
        Route::NotFound => {
            debug!(path, "apiserver: unknown path");
            not_found_response(&shared)
        }
    }
}

fn get(shared: &Shared, resource: usize, namespace: Option<&str>, name: &str) -> Response<Body> {
    shared.counters.gets.fetch_add(1, Ordering::Relaxed);
    let rt = &RESOURCES[resource];
    match shared.store().get(resource, namespace.unwrap_or(""), name) {
        Some(obj) => json_response(StatusCode::OK, &obj),
        None => {
            let group = if rt.group.is_empty() {
                String::new()
            } else {
                format!(".{}", rt.group)
            };
            status_response(
                404,
                &format!("{}{group} \"{name}\" not found", rt.plural),
                Some(json!({ "name": name, "group": rt.group, "kind": rt.plural })),
            )
        }
    }
}

/// Parses a non-negative integer query parameter; `Err` holds the message of
/// the 400 answer.
fn number_param(query: &HashMap<String, String>, key: &str) -> Result<Option<u64>, String> {
    match query.get(key).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("invalid value for {key}: {v:?}")),
    }
}

fn list(
    shared: &Shared,
    resource: usize,
    namespace: Option<&str>,
    query: &HashMap<String, String>,
    accept: Option<&str>,
) -> Response<Body> {
    shared.counters.lists.fetch_add(1, Ordering::Relaxed);
    let rt = &RESOURCES[resource];
    let limit = match number_param(query, "limit") {
        Ok(limit) => usize::try_from(limit.unwrap_or(0)).unwrap_or(usize::MAX),
        Err(message) => return status_response(400, &message, None),
    };
    let requested_rv = match number_param(query, "resourceVersion") {
        Ok(rv) => rv,
        Err(message) => return status_response(400, &message, None),
    };
    let continue_token = query.get("continue").filter(|c| !c.is_empty());
    let mut store = shared.store();
    if continue_token.is_none() {
        if let Some(rv) = requested_rv.filter(|&rv| rv > store.rv()) {
            let message = format!("Too large resource version: {rv}, current: {}", store.rv());
            let details = json!({
                "causes": [{ "reason": "ResourceVersionTooLarge", "message": "Too large resource version" }],
                "retryAfterSeconds": 1,
            });
            return status_response(504, &message, Some(details));
        }
        let exact = query
            .get("resourceVersionMatch")
            .is_some_and(|m| m == "Exact");
        if let Some(rv) = requested_rv.filter(|&rv| exact && rv != store.rv() && rv < store.floor())
        {
            let message = format!("too old resource version: {rv} ({})", store.floor());
            return status_response(410, &message, None);
        }
    }
    let page =
        match store.list(
            resource,
            namespace,
            limit,
            continue_token.map(String::as_str),
        ) {
            Ok(page) => page,
            Err(ListError::Expired) => return status_response(
                410,
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter, or use the continue \
                 value from the response, but the consistency of the result may be affected.",
                None,
            ),
            Err(ListError::BadToken) => {
                return status_response(400, "continue key is not valid for this request", None)
            }
        };
    drop(store);
    let mode = *lock(&shared.protobuf);
    if protobuf::wanted(accept, rt.kind, mode) {
        shared
            .counters
            .protobuf_lists
            .fetch_add(1, Ordering::Relaxed);
        let body = protobuf::list_body(
            rt.kind,
            &rt.api_version(),
            &page.rv.to_string(),
            page.next.as_deref(),
            &page.items,
            mode,
        );
        let mut resp = Response::new(full(body));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(protobuf::PROTOBUF),
        );
        return resp;
    }
    let mut metadata = json!({ "resourceVersion": page.rv.to_string() });
    if let Some(next) = page.next {
        metadata["continue"] = json!(next);
        metadata["remainingItemCount"] = json!(page.remaining);
    }
    json_response(
        StatusCode::OK,
        &json!({
            "kind": rt.list_kind(),
            "apiVersion": rt.api_version(),
            "metadata": metadata,
            "items": page.items,
        }),
    )
}

fn watch(
    shared: &Arc<Shared>,
    resource: usize,
    namespace: Option<String>,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let flag = |key: &str| query.get(key).is_some_and(|v| v == "true" || v == "1");
    let bookmarks = flag("allowWatchBookmarks");
    let mut send_initial = flag("sendInitialEvents");
    if send_initial && !bookmarks {
        return status_response(
            422,
            "sendInitialEvents is forbidden for watch unless allowWatchBookmarks=true",
            None,
        );
    }
    if send_initial && query.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan")
    {
        return status_response(
            422,
            "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            None,
        );
    }
    let timeout = match number_param(query, "timeoutSeconds") {
        Ok(Some(secs)) if secs > 0 => Duration::from_secs(secs),
        Ok(_) => DEFAULT_WATCH_TIMEOUT,
        Err(message) => return status_response(400, &message, None),
    };
    if send_initial {
        match *lock(&shared.streaming_lists) {
            StreamingLists::Served => {}
            StreamingLists::Invalid => {
                let cause = "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled";
                return status_response(
                    422,
                    &format!("ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: {cause}"),
                    Some(json!({
                        "group": "meta.k8s.io",
                        "kind": "ListOptions",
                        "causes": [{ "reason": "FieldValueForbidden", "message": format!("Forbidden: {cause}"), "field": "sendInitialEvents" }],
                    })),
                );
            }
            StreamingLists::NoWatchProgress => {
                shared.counters.watches.fetch_add(1, Ordering::Relaxed);
                let status = status_json(
                    500,
                    "InternalError",
                    "a watch stream was requested by the client but the required storage feature RequestWatchProgress is disabled",
                    None,
                );
                return error_event_response(shared, resource, &status, timeout);
            }
            StreamingLists::Ignored => send_initial = false,
        }
    }
    let requested_rv = match number_param(query, "resourceVersion") {
        Ok(rv) => rv.filter(|&rv| rv != 0),
        Err(message) => return status_response(400, &message, None),
    };
    let start = match requested_rv {
        Some(_) if send_initial => WatchStart::Initial { end_bookmark: true },
        Some(rv) => WatchStart::From(rv),
        None => WatchStart::Initial {
            end_bookmark: send_initial,
        },
    };
    shared.counters.watches.fetch_add(1, Ordering::Relaxed);

    let mut store = shared.store();
    let registered = store.register_watch(resource, namespace, bookmarks, start);
    let current_rv = store.rv();
    drop(store);

    let stream = match registered {
        Ok(reg) => {
            let bookmark_interval = shared
                .bookmark_interval
                .filter(|_| bookmarks)
                .map(|period| {
                    let mut interval = tokio::time::interval_at(Instant::now() + period, period);
                    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    interval
                });
            WatchStream {
                shared: Arc::clone(shared),
                id: Some(reg.id),
                resource,
                pending: reg.pending,
                rx: Some(reg.rx),
                self_tx: Some(reg.tx),
                deadline: Instant::now() + timeout,
                bookmark_interval,
                min_bookmark_rv: requested_rv.unwrap_or(0),
                done: false,
            }
        }
        Err(floor) => {
            // Real API servers answer 200 and put the 410 in the stream.
            let rv = requested_rv.unwrap_or(0);
            debug!(
                rv,
                floor, current_rv, "apiserver: watch from compacted resource version"
            );
            let status = status_json(
                410,
                "Expired",
                &format!("too old resource version: {rv} ({floor})"),
                None,
            );
            return error_event_response(shared, resource, &status, timeout);
        }
    };
    watch_response(stream)
}

/// A watch answered 200 with one `ERROR` event carrying `status`, then the end of the stream.
fn error_event_response(
    shared: &Arc<Shared>,
    resource: usize,
    status: &Value,
    timeout: Duration,
) -> Response<Body> {
    let line = event_line("ERROR", status);
    watch_response(WatchStream {
        shared: Arc::clone(shared),
        id: None,
        resource,
        pending: VecDeque::from([line]),
        rx: None,
        self_tx: None,
        deadline: Instant::now() + timeout,
        bookmark_interval: None,
        min_bookmark_rv: 0,
        done: false,
    })
}

fn watch_response(stream: WatchStream) -> Response<Body> {
    let frames = futures::stream::unfold(stream, |mut stream| async move {
        let frame = stream.next_frame().await?;
        Some((frame, stream))
    });
    let mut resp = Response::new(StreamBody::new(frames.boxed()).boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// One open watch, as a source of body frames. Dropping it (the client went
/// away, the server shut down) unregisters the watch.
struct WatchStream {
    shared: Arc<Shared>,
    id: Option<u64>,
    resource: usize,
    pending: VecDeque<Bytes>,
    rx: Option<mpsc::UnboundedReceiver<Msg>>,
    self_tx: Option<mpsc::UnboundedSender<Msg>>,
    deadline: Instant,
    bookmark_interval: Option<Interval>,
    /// Bookmarks never go below the resource version the watch started at.
    min_bookmark_rv: u64,
    done: bool,
}

enum Wake {
    Msg(Option<Msg>),
    Deadline,
    BookmarkTick,
}

impl WatchStream {
    async fn next_frame(&mut self) -> Option<Result<Frame<Bytes>, io::Error>> {
        if self.done {
            return None;
        }
        if let Some(line) = self.pending.pop_front() {
            return Some(Ok(Frame::data(line)));
        }
        loop {
            let Some(rx) = self.rx.as_mut() else {
                self.done = true;
                return None;
            };
            let deadline = self.deadline;
            let interval = &mut self.bookmark_interval;
            let tick = async {
                match interval.as_mut() {
                    Some(interval) => {
                        interval.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let wake = tokio::select! {
                biased;
                msg = rx.recv() => Wake::Msg(msg),
                () = tokio::time::sleep_until(deadline) => Wake::Deadline,
                () = tick => Wake::BookmarkTick,
            };
            match wake {
                Wake::Msg(Some(Msg::Line(line))) => return Some(Ok(Frame::data(line))),
                Wake::Msg(Some(Msg::Bookmark(rv))) => {
                    let rv = rv.max(self.min_bookmark_rv);
                    return Some(Ok(Frame::data(bookmark_line(self.resource, rv, false))));
                }
                Wake::Msg(Some(Msg::Abort)) => {
                    self.done = true;
                    return Some(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "watch dropped by the test",
                    )));
                }
                Wake::Msg(Some(Msg::Close) | None) | Wake::Deadline => {
                    self.done = true;
                    return None;
                }
                Wake::BookmarkTick => {
                    // Queue the bookmark behind every event already delivered
                    // to this watch, while holding the store lock, so its
                    // resource version never overtakes an unsent event.
                    let store = self.shared.store();
                    if let Some(tx) = &self.self_tx {
                        let _ = tx.send(Msg::Bookmark(store.rv()));
                    }
                }
            }
        }
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.shared.store().unregister_watch(id);
        }
    }
}

fn group_versions(group: &str) -> Value {
    json!([{ "groupVersion": format!("{group}/v1"), "version": "v1" }])
}

fn api_group(group: &str) -> Option<Value> {
    RESOURCES
        .iter()
        .any(|r| r.group == group && !group.is_empty())
        .then(|| {
            json!({
                "kind": "APIGroup",
                "apiVersion": "v1",
                "name": group,
                "versions": group_versions(group),
                "preferredVersion": { "groupVersion": format!("{group}/v1"), "version": "v1" },
            })
        })
}

fn group_list(shared: &Shared) -> Value {
    let crds = shared.gateway_crds.load(Ordering::SeqCst);
    let mut groups: Vec<&str> = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| !r.group.is_empty() && (crds || !r.crd))
    {
        if !groups.contains(&r.group) {
            groups.push(r.group);
        }
    }
    let groups: Vec<Value> = groups.into_iter().filter_map(api_group).collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

fn resource_list(group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| {
            json!({
                "name": r.plural,
                "singularName": r.kind.to_lowercase(),
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "list", "watch"],
            })
        })
        .collect();
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    (!resources.is_empty()).then(|| {
        json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        })
    })
}

/// Binds a listener with `SO_REUSEADDR`, so a restarted server can take over
/// the port of the previous one immediately.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
