//! A Kubernetes API server for tests.
//!
//! [`ApiServer`] serves the real list/watch wire protocol over plain HTTP/1.1 on
//! `127.0.0.1`, so the project's real `kube` client (`kube::runtime::watcher`,
//! reflectors, controllers) can run against it unchanged: start a server, write
//! a kubeconfig with [`ApiServer::write_kubeconfig`] (no TLS, no credentials),
//! point the code under test at it, then drive the "cluster" from the test with
//! [`ApiServer::apply`] / [`ApiServer::apply_yaml`] / [`ApiServer::delete`] and
//! break it on purpose with [`ApiServer::compact`] (410 Gone),
//! [`ApiServer::drop_watches`], [`ApiServer::fail_next`], [`ApiServer::set_delay`],
//! [`ApiServer::set_gateway_crds`] and restarts ([`ApiServer::shutdown`] followed
//! by [`ApiServer::start_with_state`] on the same address).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use apiserver::{ApiServer, Options};
//! let server = ApiServer::start(Options::default()).await?;
//! server.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig"))?;
//! server.apply_yaml(r#"
//! apiVersion: v1
//! kind: Service
//! metadata: { name: web, namespace: default }
//! spec: { clusterIP: 10.96.0.10, ports: [{ port: 80 }] }
//! "#);
//! // ... run the code under test with KUBECONFIG=/tmp/kubeconfig ...
//! assert!(server.wait_until(std::time::Duration::from_secs(5), |s| s.active_watches > 0).await);
//! # Ok(()) }
//! ```
//!
//! # Protocol
//!
//! Served kinds: v1 `Service`, `Secret`, `Node` (cluster-scoped);
//! `discovery.k8s.io/v1` `EndpointSlice`; `networking.k8s.io/v1` `Ingress`; and,
//! while the Gateway API "CRDs" are installed, `gateway.networking.k8s.io/v1`
//! `HTTPRoute`, `Gateway`, `GatewayClass` (cluster-scoped), and v1beta1 `ReferenceGrant`;
//! `coordination.k8s.io/v1` `Lease`. Namespaced kinds are
//! served cluster-wide (`/api/v1/services`) and per namespace
//! (`/api/v1/namespaces/{ns}/services`); single objects with `GET .../{name}`.
//! Clients read with `GET`; the only writes they may make are a data plane's: Leases
//! (create, replace guarded by `resourceVersion`) and merge patches of status subresources
//! (`writes.rs`). Everything else is changed from the test. Each distinct `User-Agent` is
//! recorded ([`ApiServer::user_agents`]).
//!
//! * **list** (`limit`, `continue`, `resourceVersion`, `resourceVersionMatch`):
//!   returns `{"kind":"ServiceList","metadata":{"resourceVersion":..},"items":[..]}`.
//!   Items of built-in kinds carry no `apiVersion`/`kind` (as on a real server),
//!   CRD items do. Pages are consistent snapshots; a `continue` token older than
//!   the compacted history answers 410 `Expired`.
//! * **watch** (`watch=true`, `resourceVersion`, `timeoutSeconds`,
//!   `allowWatchBookmarks`, `sendInitialEvents`): newline-delimited JSON events
//!   over a chunked response. With a resource version, every later event is
//!   replayed from history; older than the history means one `ERROR` event with
//!   a 410 `Expired` Status and the end of the stream. Without one (or `0`), the
//!   current objects come first as `ADDED`. `sendInitialEvents=true` (kube's
//!   streaming-list mode) also ends the initial events with a BOOKMARK annotated
//!   `k8s.io/initial-events-end: "true"`; [`Options::streaming_lists`] makes it refuse
//!   those the ways real servers do ([`StreamingLists`]). Streams end cleanly after
//!   `timeoutSeconds`, and carry a BOOKMARK every [`Options::bookmark_interval`]
//!   when bookmarks were asked for.
//! * **protobuf**: a list of Services or EndpointSlices asked for with `Accept:
//!   application/vnd.kubernetes.protobuf` is answered in kube-apiserver's protobuf envelope
//!   (`k8s\0` + `runtime.Unknown`); everything else, watches and errors included, in JSON.
//!   [`Options::protobuf`] refuses it or breaks it on purpose ([`Protobuf`]).
//! * `labelSelector` and `fieldSelector` are accepted and ignored.
//! * Errors are HTTP status codes with a `metav1.Status` JSON body; unknown paths
//!   are 404 `NotFound` (and logged at debug level).
//! * Discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/{group}[/{version}]`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod protobuf;
mod resources;
mod server;
mod store;
mod util;
mod writes;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::protobuf::Protobuf;
use crate::server::{lock, Counters, Fault, Shared};
use crate::store::{Data, Store};

/// Server configuration.
#[derive(Clone, Debug)]
pub struct Options {
    /// Whether the Gateway API CRDs (`gateway.networking.k8s.io`) are installed.
    /// Without them every request under `/apis/gateway.networking.k8s.io` is
    /// answered 404, like a real cluster. Switch at run time with
    /// [`ApiServer::set_gateway_crds`]. Default: `true`.
    pub gateway_crds: bool,
    /// How many events are kept for watch resumption. A watch (or a list
    /// `continue`) from a resource version older than the oldest kept event
    /// gets 410 Gone. Default: 1000.
    pub history: usize,
    /// Period of the BOOKMARK events sent on watches that asked for them
    /// (`allowWatchBookmarks=true`); `None` sends none on its own (see
    /// [`ApiServer::send_bookmarks`]). Default: 5 s.
    pub bookmark_interval: Option<Duration>,
    /// How streaming lists (`watch=true&sendInitialEvents=true`) are answered. Switch at run
    /// time with [`ApiServer::set_streaming_lists`]. Default: [`StreamingLists::Served`].
    pub streaming_lists: StreamingLists,
    /// How lists asked for in protobuf are answered. Switch at run time with
    /// [`ApiServer::set_protobuf`]. Default: [`Protobuf::Served`].
    pub protobuf: Protobuf,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            gateway_crds: true,
            history: 1000,
            bookmark_interval: Some(Duration::from_secs(5)),
            streaming_lists: StreamingLists::Served,
            protobuf: Protobuf::Served,
        }
    }
}

/// How the server answers a streaming list: a watch with `sendInitialEvents=true` (which
/// also needs `allowWatchBookmarks=true` and `resourceVersionMatch=NotOlderThan`, else 422).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StreamingLists {
    /// The current objects as `ADDED` events, then a BOOKMARK annotated
    /// `k8s.io/initial-events-end: "true"`, then the watch goes on: kube-apiserver with the
    /// `WatchList` feature on an etcd with `RequestWatchProgress`.
    #[default]
    Served,
    /// 422 `Invalid`, "sendInitialEvents is forbidden for watch unless the WatchList feature
    /// gate is enabled": kube-apiserver with that gate off (older ones refuse the
    /// `resourceVersionMatch` of such a watch with a 422 too).
    Invalid,
    /// 200, then one `ERROR` event (500 `InternalError`, "a watch stream was requested by the
    /// client but the required storage feature RequestWatchProgress is disabled") and the end
    /// of the stream: kube-apiserver on an etcd older than 3.4.31 / 3.5.13.
    NoWatchProgress,
    /// `sendInitialEvents` ignored: a plain watch (synthetic `ADDED` events from version 0,
    /// no end bookmark), as from a server or proxy that does not know the parameter.
    Ignored,
}

/// Request counters, for assertions like "the client re-listed after the 410".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Every HTTP request received (including failed and unknown ones).
    pub requests: u64,
    /// List requests served (one per page).
    pub lists: u64,
    /// Single-object `GET`s served.
    pub gets: u64,
    /// Watch requests accepted (including ones answered with a 410 event).
    pub watches: u64,
    /// Watch streams open right now.
    pub active_watches: usize,
    /// Requests answered with a failure injected by [`ApiServer::fail_next`].
    pub errors_injected: u64,
    /// Requests answered 404 because of an unknown path or a missing CRD.
    pub not_found: u64,
    /// Lists answered in protobuf.
    pub protobuf_lists: u64,
}

/// The persistent state of a server (objects, resource version counter and
/// event history), as etcd would keep it across an API server restart.
#[derive(Clone, Debug, Default)]
pub struct State {
    data: Data,
}

impl State {
    /// The last resource version handed out.
    pub fn resource_version(&self) -> String {
        self.data.rv.to_string()
    }

    /// Number of stored objects (of all kinds).
    pub fn object_count(&self) -> usize {
        self.data.objects.len()
    }
}

/// A running test API server.
///
/// Cheap to clone; the server stops when the last clone is dropped (or on
/// [`ApiServer::shutdown`]). Must be started inside a Tokio runtime.
#[derive(Clone)]
pub struct ApiServer {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    addr: SocketAddr,
    token: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

impl ApiServer {
    /// Starts an empty server on an ephemeral port of `127.0.0.1`.
    pub async fn start(opts: Options) -> io::Result<ApiServer> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), opts).await
    }

    /// Starts an empty server on `addr`.
    pub async fn start_on(addr: SocketAddr, opts: Options) -> io::Result<ApiServer> {
        Self::start_with_state(addr, opts, State::default()).await
    }

    /// Starts a server on `addr` with the objects, resource version counter and
    /// history of a previous one (see [`ApiServer::shutdown`] and
    /// [`ApiServer::state`]): an API server restart in front of the same etcd.
    pub async fn start_with_state(
        addr: SocketAddr,
        opts: Options,
        state: State,
    ) -> io::Result<ApiServer> {
        let listener = server::bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(state.data, opts.history)),
            gateway_crds: AtomicBool::new(opts.gateway_crds),
            delay: Mutex::new(Duration::ZERO),
            fault: Mutex::new(Fault::default()),
            counters: Counters::default(),
            bookmark_interval: opts.bookmark_interval.filter(|d| !d.is_zero()),
            streaming_lists: Mutex::new(opts.streaming_lists),
            protobuf: Mutex::new(opts.protobuf),
            log: Mutex::new(VecDeque::new()),
            user_agents: Mutex::new(Default::default()),
        });
        let token = CancellationToken::new();
        let task = tokio::spawn(server::accept_loop(
            listener,
            Arc::clone(&shared),
            token.clone(),
        ));
        tracing::debug!(%addr, "apiserver: listening");
        Ok(ApiServer {
            inner: Arc::new(Inner {
                shared,
                addr,
                token,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The base URL, e.g. `http://127.0.0.1:43127`.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// A kubeconfig (YAML) for this server: one cluster, a user without
    /// credentials, one context (namespace `default`) which is current.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             preferences: {{}}\n\
             clusters:\n\
             - name: switchboard-test\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: switchboard-test\n  user: {{}}\n\
             contexts:\n\
             - name: switchboard-test\n  context:\n    cluster: switchboard-test\n    user: switchboard-test\n    namespace: default\n\
             current-context: switchboard-test\n",
            url = self.url()
        )
    }

    /// Writes [`ApiServer::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// Creates or replaces an object, keyed by (`apiVersion`, `kind`,
    /// namespace, name). Assigns `metadata.resourceVersion` from the global
    /// counter, and `uid`/`creationTimestamp` when missing (kept from the
    /// replaced object if there was one); a namespaced object without
    /// namespace goes to `default`. Open watches get `ADDED` or `MODIFIED`.
    /// Returns the new resource version.
    ///
    /// Gateway API objects are stored even while the CRDs are switched off.
    ///
    /// # Panics
    /// If the object lacks `apiVersion`, `kind` or `metadata.name`, or is of a
    /// kind this server does not serve. Use [`ApiServer::try_apply`] to get an
    /// error instead.
    pub fn apply(&self, obj: Value) -> String {
        self.try_apply(obj)
            .unwrap_or_else(|err| panic!("apiserver: apply: {err}"))
    }

    /// Like [`ApiServer::apply`], returning an error message instead of panicking.
    pub fn try_apply(&self, obj: Value) -> Result<String, String> {
        self.shared().store().apply(obj).map(|rv| rv.to_string())
    }

    /// Applies every document of a multi-document YAML string (`kind: List`
    /// documents are unpacked); returns the resource versions in order.
    ///
    /// # Panics
    /// On invalid YAML or any object [`ApiServer::apply`] would reject.
    pub fn apply_yaml(&self, yaml: &str) -> Vec<String> {
        let mut rvs = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let value = Value::deserialize(doc)
                .unwrap_or_else(|err| panic!("apiserver: apply_yaml: {err}"));
            match value {
                Value::Null => {}
                Value::Object(ref map)
                    if map
                        .get("kind")
                        .and_then(Value::as_str)
                        .is_some_and(|k| k.ends_with("List"))
                        && map.get("items").is_some_and(Value::is_array) =>
                {
                    if let Some(Value::Array(items)) = map.get("items") {
                        rvs.extend(items.iter().cloned().map(|item| self.apply(item)));
                    }
                }
                other => rvs.push(self.apply(other)),
            }
        }
        rvs
    }

    /// Deletes an object; open watches get `DELETED` carrying a new resource
    /// version. `namespace` is ignored for cluster-scoped kinds (`None` means
    /// `default` for namespaced ones). Returns whether the object existed.
    ///
    /// # Panics
    /// If the kind is not served.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> bool {
        let resource = Self::resource(api_version, kind);
        self.shared()
            .store()
            .delete(resource, namespace.unwrap_or("default"), name)
    }

    /// The stored object, with its metadata as served (`namespace` as for
    /// [`ApiServer::delete`]).
    ///
    /// # Panics
    /// If the kind is not served.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let resource = Self::resource(api_version, kind);
        self.shared()
            .store()
            .get(resource, namespace.unwrap_or("default"), name)
            .map(|obj| (*obj).clone())
    }

    fn resource(api_version: &str, kind: &str) -> usize {
        resources::by_kind(api_version, kind)
            .unwrap_or_else(|| panic!("apiserver does not serve {api_version} {kind}"))
    }

    /// The last resource version handed out (what a list would report now).
    pub fn resource_version(&self) -> String {
        self.shared().store().rv().to_string()
    }

    /// Forgets the event history, like an etcd compaction: watches and list
    /// `continue` tokens from any resource version older than the current one
    /// get 410 Gone (a watch gets an `ERROR` event, then its stream ends).
    /// Open watches are not affected.
    pub fn compact(&self) {
        self.shared().store().compact();
    }

    /// Ends every open watch abruptly: the connection is closed in the middle
    /// of the chunked body, without the terminating chunk.
    pub fn drop_watches(&self) {
        self.shared().store().end_watches(|_| true, true);
    }

    /// Ends every open watch cleanly (terminating chunk), as when the server
    /// side watch timeout expires.
    pub fn close_watches(&self) {
        self.shared().store().end_watches(|_| true, false);
    }

    /// The next `count` API requests (lists, gets and watches, not discovery)
    /// are answered with HTTP `status` and a matching Status body
    /// (`Retry-After: 1` for 429 and 503). Replaces any pending failures.
    pub fn fail_next(&self, status: u16, count: usize) {
        *lock(&self.shared().fault) = Fault {
            status,
            remaining: count,
        };
    }

    /// Delays the answer to every following request by `delay` (zero disables).
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.shared().delay) = delay;
    }

    /// Installs or removes the Gateway API CRDs. Removing them ends open watches
    /// of Gateway API kinds (cleanly) and makes all their paths 404; stored
    /// objects are kept and reappear when the CRDs come back.
    pub fn set_gateway_crds(&self, present: bool) {
        let was = self.shared().gateway_crds.swap(present, Ordering::SeqCst);
        if was && !present {
            self.shared()
                .store()
                .end_watches(|r| resources::RESOURCES[r].crd, false);
        }
    }

    /// Changes how following streaming lists are answered (open watches are not affected).
    pub fn set_streaming_lists(&self, mode: StreamingLists) {
        *lock(&self.shared().streaming_lists) = mode;
    }

    /// Changes how following lists asked for in protobuf are answered.
    pub fn set_protobuf(&self, mode: Protobuf) {
        *lock(&self.shared().protobuf) = mode;
    }

    /// Whether the Gateway API CRDs are installed.
    pub fn gateway_crds(&self) -> bool {
        self.shared().gateway_crds.load(Ordering::SeqCst)
    }

    /// Sends a BOOKMARK with the current resource version to every watch that
    /// asked for bookmarks (after any event already queued for it).
    pub fn send_bookmarks(&self) {
        self.shared().store().bookmark_all();
    }

    /// Current request counters.
    pub fn stats(&self) -> Stats {
        self.shared().stats()
    }

    /// The requests received so far, oldest first, as `"GET /path?query"`
    /// (the most recent 10 000).
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared().log).iter().cloned().collect()
    }

    /// Every distinct `User-Agent` request header seen so far (`-` for requests without one).
    pub fn user_agents(&self) -> std::collections::BTreeSet<String> {
        lock(&self.shared().user_agents).clone()
    }

    /// Polls [`ApiServer::stats`] until `pred` holds or `timeout` passes;
    /// returns whether it held. Handy to wait for a client's watch to open
    /// before changing objects.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Stats) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(&self.stats()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A snapshot of the persistent state (objects, counter, history).
    pub fn state(&self) -> State {
        State {
            data: self.shared().store().data(),
        }
    }

    /// Stops listening, closes every connection (open watches break off
    /// mid-stream) and returns the persistent state, ready for
    /// [`ApiServer::start_with_state`] on the same [`ApiServer::addr`].
    /// Other clones of this handle stop working too.
    pub async fn shutdown(self) -> State {
        self.inner.token.cancel();
        let task = lock(&self.inner.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.state()
    }
}
