//! The Kubernetes source: one `kube` watcher per kind, with backoff.
//!
//! Event mapping: `Init` starts a buffer, `InitApply` fills it, `InitDone` replaces the kind's
//! objects (`Reset`) and reports the kind synced; `Apply`/`Delete` change one object. A relist
//! (after 410 Gone, a dropped watch or a restarted API server) builds a fresh buffer and only
//! replaces the published state when complete, so nothing is unpublished in between. Errors are
//! counted; the watcher retries with a short capped backoff ([`Retry`]: 100 ms doubling to
//! 1.5 s), forever, and relists at once after 410 Gone. After any error the kind is listed
//! again before it is watched: a resumed watch says nothing when it starts, so a kind with no
//! changes would otherwise look stale until its next change; the completed list is what ends
//! the outage. Each outage is logged once when it starts and once when it ends
//! (`Change::Health`), with `/readyz` naming the stale kinds meanwhile. `Init` (emitted before
//! each paged list's first request, and once a streaming list's watch is open, before any of
//! its events) is not a successful read: it neither ends an outage nor resets the backoff.
//!
//! Initial lists are streaming lists ([`Listing`]): one watch with `sendInitialEvents=true`
//! whose initial events end with a bookmark annotated `k8s.io/initial-events-end`; kube-runtime
//! turns that bookmark into `InitDone`, so it is what marks the kind synced. Where the API server
//! refuses them (a 400 or 422 answer, or an `ERROR` event before that bookmark that names the
//! missing feature, as kube-apiserver on an etcd without `RequestWatchProgress` sends) or ends
//! the stream before that bookmark, the kind falls back to whole lists at `resourceVersion=0`
//! (served from kube-apiserver's watch cache, one response per kind) for the rest of the
//! process: the refusal is paid once per kind and is not an outage. Those whole lists of
//! Services and EndpointSlices ask for protobuf and are read by [`list_watch`]
//! (`kubernetes_list.rs`; `kubernetes_pb.rs` and `kubernetes_pb_items.rs` read each item
//! straight from the received bytes while the rest arrives) instead of kube-runtime's watcher;
//! the other kinds' lists, every watch and the streaming lists are JSON. Every stream hands the
//! loop its objects already converted (`kubernetes_event.rs`).
//!
//! ReferenceGrants (`gateway.networking.k8s.io/v1beta1`) are watched like the other Gateway
//! API kinds; they decide cross-namespace backendRefs and certificateRefs.
//!
//! Secrets are watched with the field selector `type=kubernetes.io/tls`, so other Secrets never
//! reach this process.
//!
//! The Gateway API kinds are CRDs: when the API answers 404 for them, that is logged once, the
//! kind counts as synced with no objects (the API answered, so it is not stale either), and the
//! backoff keeps checking until they appear.

use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tables::{Kind, Object, ObjectKey, Origin, SourceId};

use crate::convert::{self, ConvertError};
use crate::gateway_api as gw;
use crate::kubernetes_event::{converted_events, Conv, Converted, Ev, Events};
use crate::kubernetes_list::list_watch;
use crate::{Change, Event, Metrics, Sender};

pub use crate::kubeconfig::{client, ClientError};

/// The `User-Agent` of every request switchboard makes to the API server, as client-go
/// programs send `NAME/VERSION`, so API server logs, audit events and priority-and-fairness
/// rules can tell switchboard's requests apart.
pub const USER_AGENT: &str = concat!("switchboard/", env!("CARGO_PKG_VERSION"));

/// The field manager of every write (status patches, the Lease), as `managedFields` shows it.
pub const FIELD_MANAGER: &str = "switchboard";

/// The label that names a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// This node's zone from its Node object's `topology.kubernetes.io/zone` label, as kube-proxy
/// reads it at start. Retries until `timeout`; `None` when the node or the label is absent or
/// the API cannot be reached in time.
pub async fn node_zone(client: Client, node: &str, timeout: std::time::Duration) -> Option<String> {
    let api = Api::<core::Node>::all(client);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match api.get_opt(node).await {
            Ok(Some(n)) => {
                return n.metadata.labels.and_then(|l| l.get(ZONE_LABEL).cloned());
            }
            Ok(None) => {
                tracing::warn!(
                    node,
                    "Node object not found; no zone for topology-aware routing"
                );
                return None;
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(node, error = %e, "reading the Node object; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => {
                tracing::warn!(node, error = %e, "cannot read the Node object; no zone for topology-aware routing");
                return None;
            }
        }
    }
}

/// The delay before the next attempt after a watch error: 100 ms doubling to `MAX`, plus up
/// to 10% jitter. client-go's reflector (and kube-runtime's default) back off to 30 s with up to
/// 100% jitter, which after an outage left changes unseen for up to a minute; with a 1.5 s cap a
/// node sees the API again within about 1.6 s of its return. Failed attempts against an API
/// server that is down are cheap (a refused connection); the cap bounds the load of every node
/// retrying at ~0.7 requests/s per kind.
pub struct Retry {
    next: Duration,
}

impl Retry {
    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_millis(1500);

    pub fn new() -> Self {
        Retry { next: Self::MIN }
    }

    /// The delay before the next attempt; each call doubles the following one up to `MAX`.
    pub fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d + d.mul_f64(fastrand::f64() * 0.1)
    }

    /// After a success: the next error retries quickly again.
    pub fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

impl Default for Retry {
    fn default() -> Self {
        Self::new()
    }
}

/// Starts one watcher task per kind; they run until `tx` closes.
pub fn spawn(client: Client, tx: Sender, metrics: Metrics) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    macro_rules! watch {
        ($api:expr, $kind:expr, $conv:expr, $crd:expr) => {
            watch!($api, $kind, $conv, $crd, watcher::Config::default(), None)
        };
        ($api:expr, $kind:expr, $conv:expr, $crd:expr, $cfg:expr, $whole:expr) => {
            tasks.push(tokio::spawn(watch_kind(
                $api,
                Watched {
                    kind: $kind,
                    conv: $conv,
                    is_crd: $crd,
                    config: $cfg,
                    whole: $whole,
                },
                tx.clone(),
                metrics.clone(),
            )))
        };
    }
    // The two big kinds are listed whole in protobuf where streaming lists are refused.
    watch!(
        Api::<core::Service>::all(client.clone()),
        Kind::Service,
        |o: &core::Service| convert::service(o, "default")
            .map(Object::Service)
            .map(Some),
        false,
        watcher::Config::default(),
        Some(list_watch::<core::Service>)
    );
    watch!(
        Api::<discovery::EndpointSlice>::all(client.clone()),
        Kind::EndpointSlice,
        |o: &discovery::EndpointSlice| convert::endpoint_slice(o, "default")
            .map(Object::EndpointSlice)
            .map(Some),
        false,
        watcher::Config::default(),
        Some(list_watch::<discovery::EndpointSlice>)
    );
    watch!(
        Api::<networking::Ingress>::all(client.clone()),
        Kind::Ingress,
        |o: &networking::Ingress| convert::ingress(o, "default")
            .map(Object::Ingress)
            .map(Some),
        false
    );
    watch!(
        Api::<gw::HttpRoute>::all_with(client.clone(), &gw::api_resource("HTTPRoute")),
        Kind::HttpRoute,
        |o: &gw::HttpRoute| convert::http_route(o, "default")
            .map(Object::HttpRoute)
            .map(Some),
        true
    );
    watch!(
        Api::<gw::Gateway>::all_with(client.clone(), &gw::api_resource("Gateway")),
        Kind::Gateway,
        |o: &gw::Gateway| convert::gateway(o, "default")
            .map(Object::Gateway)
            .map(Some),
        true
    );
    watch!(
        Api::<gw::GatewayClass>::all_with(client.clone(), &gw::api_resource("GatewayClass")),
        Kind::GatewayClass,
        |o: &gw::GatewayClass| convert::gateway_class(o)
            .map(Object::GatewayClass)
            .map(Some),
        true
    );
    watch!(
        Api::<gw::ReferenceGrant>::all_with(client.clone(), &gw::api_resource("ReferenceGrant")),
        Kind::ReferenceGrant,
        |o: &gw::ReferenceGrant| convert::reference_grant(o, "default")
            .map(Object::ReferenceGrant)
            .map(Some),
        true
    );
    watch!(
        Api::<core::Namespace>::all(client.clone()),
        Kind::Namespace,
        |o: &core::Namespace| convert::namespace(o).map(Object::Namespace).map(Some),
        false
    );
    // Only TLS Secrets, selected by the API server: the rest never reach this process.
    watch!(
        Api::<core::Secret>::all(client.clone()),
        Kind::Secret,
        |o: &core::Secret| {
            if convert::is_tls_secret(o) {
                convert::tls_secret(o, "default").map(|s| Some(Object::Secret(s)))
            } else {
                Ok(None)
            }
        },
        false,
        watcher::Config::default().fields(&format!("type={}", convert::TLS_SECRET_TYPE)),
        None
    );
    tasks
}

/// The stream of a kind's whole lists (then its watch) where kube-runtime's JSON lists are not
/// used: [`list_watch`], protobuf lists of Services and EndpointSlices.
type WholeLists<K> = fn(Api<K>, Kind, Conv<K>, Metrics) -> Events;

fn is_not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

/// How a kind's complete state is read (at start and on every relist).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listing {
    /// A streaming list: `watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&
    /// allowWatchBookmarks=true`, then the same watch goes on. Measured at 10k Services / 100k
    /// endpoints about 0.6 s sooner than 500-object pages (docs/sources.md).
    Streaming,
    /// One list per kind at `resourceVersion=0` (`resourceVersionMatch=NotOlderThan`, no
    /// `limit`), then a watch: where the API server refuses streaming lists. kube-apiserver
    /// serves it from its watch cache in one response, as it serves client-go's first list
    /// (`resourceVersion=0&limit=500`, whose limit the cache ignores); kube-runtime's default,
    /// 500-object pages with no resource version, are read from etcd page by page, which cost
    /// kube-apiserver and etcd about twice the CPU at 10k Services (docs/sources.md).
    Whole,
}

impl Listing {
    fn config(self, base: &watcher::Config) -> watcher::Config {
        match self {
            Listing::Streaming => base.clone().streaming_lists(),
            Listing::Whole => whole_lists(base.clone()),
        }
    }
}

/// `config` listing each kind whole at `resourceVersion=0`
/// (`resourceVersionMatch=NotOlderThan`, no `limit`): kube-apiserver answers from its watch
/// cache in one response instead of reading etcd page by page ([`Listing::Whole`]).
pub fn whole_lists(config: watcher::Config) -> watcher::Config {
    let mut config = config.any_semantic();
    config.page_size = None;
    config
}

/// Whether an error of a streaming list's watch says that the API server does not serve
/// streaming lists (then paged lists will do), rather than that it cannot answer now.
///
/// - 422 `Invalid`: `sendInitialEvents` or `resourceVersionMatch` refused by validation
///   (the `WatchList` feature gate off, as it came in 1.27; or a server older than 1.27);
/// - 400 `BadRequest`: a server or proxy that does not take the parameters;
/// - any code whose message names the parameters or the storage feature, as the 500
///   `InternalError` event kube-apiserver sends when its etcd lacks `RequestWatchProgress` (etcd
///   before 3.4.31 / 3.5.13): "a watch stream was requested by the client but the required
///   storage feature RequestWatchProgress is disabled".
///
/// 401, 403, 404, 429, 5xx without those words, and transport errors are not refusals: a paged
/// list would meet them too.
fn refuses_streaming(e: &watcher::Error) -> bool {
    let status = match e {
        watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s,
        watcher::Error::WatchError(s) => s,
        _ => return false,
    };
    matches!(status.code, 400 | 422)
        || [
            "sendInitialEvents",
            "resourceVersionMatch",
            "RequestWatchProgress",
            "watch stream was requested",
        ]
        .iter()
        .any(|w| status.message.contains(w))
}

fn reason_of(e: &watcher::Error) -> &'static str {
    match e {
        watcher::Error::InitialListFailed(_) => "list_failed",
        watcher::Error::WatchStartFailed(_) => "watch_start_failed",
        watcher::Error::WatchError(s) if s.code == 410 => "gone",
        watcher::Error::WatchError(_) => "watch_error",
        watcher::Error::WatchFailed(_) => "watch_failed",
        watcher::Error::NoResourceVersion => "no_resource_version",
    }
}

/// How one kind is read and converted.
struct Watched<K> {
    kind: Kind,
    conv: Conv<K>,
    /// A Gateway API kind: 404 means its CRD is not installed.
    is_crd: bool,
    config: watcher::Config,
    /// Where whole lists come from where streaming lists are refused; kube-runtime's JSON
    /// lists when `None`.
    whole: Option<WholeLists<K>>,
}

async fn watch_kind<K>(api: Api<K>, watched: Watched<K>, tx: Sender, metrics: Metrics)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let Watched {
        kind,
        conv,
        is_crd,
        config,
        whole,
    } = watched;
    let source = SourceId::new(Origin::Kubernetes, kind.as_str());
    let part = format!("kubernetes/{}", kind.as_str());
    let send = |change: Change| tx.send(Event::now(change)).is_ok();
    // No StreamBackoff: the loop below sleeps after errors itself, so that a 410 relists at once.
    let mut listing = Listing::Streaming;
    let start = |listing: Listing| match (listing, whole) {
        (Listing::Whole, Some(whole)) => whole(api.clone(), kind, conv, metrics.clone()),
        _ => converted_events(
            watcher::watcher(api.clone(), listing.config(&config)).boxed(),
            kind,
            conv,
        ),
    };
    let mut stream = start(listing);
    // From a new stream until its InitDone: the watcher is reading the kind's complete state
    // (with streaming lists: in the initial events of a `sendInitialEvents` watch), and `Init`
    // has come that many times (a second one means that watch ended before its end bookmark).
    let mut initial = true;
    let mut inits = 0u32;
    let mut retry = Retry::new();
    let mut failing = false;
    let mut buffer: Vec<Object> = Vec::new();
    let mut keep: Vec<ObjectKey> = Vec::new();
    let mut lists = 0u64;
    let mut crd_missing = false;
    let reject = |key: &ObjectKey, e: &ConvertError| {
        metrics
            .source_errors
            .with_label_values(&["kubernetes", "validation"])
            .inc();
        tracing::warn!(
            object = %key,
            "rejected {kind} {key}: {e}; keeping its last good version",
        );
    };
    while let Some(item) = stream.next().await {
        // `Init` comes before the list request is even sent (with streaming lists: before the
        // watch's first event): only what the API answered counts.
        if matches!(&item, Ok(e) if !matches!(e, Ev::Init)) {
            retry.reset();
            if std::mem::take(&mut failing)
                && !send(Change::Health {
                    part: part.clone(),
                    problem: None,
                })
            {
                return;
            }
        }
        let ok = match item {
            Ok(Ev::Init) if listing == Listing::Streaming && initial && inits > 0 => {
                // kube-runtime starts a streaming list again, silently, when its watch ends
                // before the initial-events-end bookmark: a server that ignores
                // `sendInitialEvents` (or ends such watches early) would never let the kind sync.
                fall_back(
                    kind,
                    &metrics,
                    "streaming_incomplete",
                    &"the watch ended before the initial-events-end bookmark",
                );
                listing = Listing::Whole;
                stream = start(listing);
                inits = 0;
                buffer.clear();
                keep.clear();
                true
            }
            Ok(Ev::Init) => {
                initial = true;
                inits += 1;
                buffer.clear();
                keep.clear();
                true
            }
            Ok(Ev::InitApply(c)) => {
                match c {
                    Converted::Object(o) => buffer.push(o),
                    Converted::Skipped => {}
                    Converted::Rejected { key, error } => {
                        reject(&key, &error);
                        keep.push(key);
                    }
                }
                true
            }
            Ok(Ev::InitDone) => {
                initial = false;
                inits = 0;
                if lists > 0 {
                    metrics
                        .watch_restarts
                        .with_label_values(&[kind.as_str(), "relist"])
                        .inc();
                    tracing::info!(%kind, objects = buffer.len(), "relisted");
                }
                lists += 1;
                if listing == Listing::Streaming || whole.is_none() {
                    // Whole lists of their own count themselves, with their encoding.
                    metrics
                        .kube_lists
                        .with_label_values(&[kind.as_str(), "json"])
                        .inc();
                }
                if crd_missing {
                    tracing::info!(%kind, "Gateway API CRD found; serving its objects");
                    crd_missing = false;
                }
                tracing::debug!(%kind, objects = buffer.len(), "listed");
                send(Change::Reset {
                    source: source.clone(),
                    objects: std::mem::take(&mut buffer),
                    keep: std::mem::take(&mut keep),
                }) && send(Change::Synced { part: part.clone() })
                    && send(Change::Health {
                        part: part.clone(),
                        problem: None,
                    })
            }
            Ok(Ev::Apply(c)) => match c {
                Converted::Object(o) => send(Change::Apply {
                    source: source.clone(),
                    object: o,
                }),
                Converted::Skipped => true,
                Converted::Rejected { key, error } => {
                    reject(&key, &error);
                    true
                }
            },
            Ok(Ev::Delete(key)) => send(Change::Delete {
                source: source.clone(),
                key,
            }),
            Err(e) if is_crd && is_not_found(&e) => {
                // The API answered: not an outage (and the end of one, if there was one).
                if std::mem::take(&mut failing)
                    && !send(Change::Health {
                        part: part.clone(),
                        problem: None,
                    })
                {
                    return;
                }
                let sent = if !crd_missing {
                    tracing::warn!(
                        %kind,
                        "Gateway API CRD not installed; serving everything else and checking again with backoff"
                    );
                    crd_missing = true;
                    // No CRD means no objects of this kind, and nothing to wait for.
                    send(Change::Reset {
                        source: source.clone(),
                        objects: vec![],
                        keep: vec![],
                    }) && send(Change::Synced { part: part.clone() })
                } else {
                    true
                };
                // Checking again with the backoff, not in a loop as fast as the API answers.
                tokio::time::sleep(retry.delay()).await;
                sent
            }
            Err(e) if listing == Listing::Streaming && initial && refuses_streaming(&e) => {
                // Not an outage: the API answered, only not this way. Whole lists at once.
                fall_back(kind, &metrics, "streaming_refused", &e);
                listing = Listing::Whole;
                stream = start(listing);
                inits = 0;
                true
            }
            Err(e) => {
                let reason = reason_of(&e);
                metrics
                    .watch_restarts
                    .with_label_values(&[kind.as_str(), reason])
                    .inc();
                metrics
                    .source_errors
                    .with_label_values(&["kubernetes", "api"])
                    .inc();
                // The outage is logged once by the controller (Change::Health); each retry
                // only at debug.
                tracing::debug!(%kind, error = %e, "watch failed; keeping the last state and retrying");
                failing = true;
                let sent = send(Change::Health {
                    part: part.clone(),
                    problem: Some(format!("{reason}: {e}")),
                });
                // After 410 Gone the watcher relists on the next poll: no reason to wait.
                if reason != "gone" {
                    tokio::time::sleep(retry.delay()).await;
                }
                // List again, then watch: the completed list ends the outage (a resumed watch
                // reports nothing until the kind's next change). The list is buffered as any
                // relist is, so nothing is unpublished meanwhile.
                stream = start(listing);
                initial = true;
                inits = 0;
                sent
            }
        };
        if !ok {
            return; // the controller is gone: shutting down
        }
    }
}

/// Logs and counts a kind's switch from streaming lists to whole lists (once per kind and process).
fn fall_back(kind: Kind, metrics: &Metrics, reason: &str, why: &dyn std::fmt::Display) {
    metrics
        .watch_restarts
        .with_label_values(&[kind.as_str(), reason])
        .inc();
    tracing::info!(
        %kind,
        reason = %why,
        "the API server does not serve streaming lists of this kind; listing it whole from now on"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn status(code: u16, reason: &str, message: &str) -> Box<Status> {
        Box::new(Status::failure(message, reason).with_code(code))
    }

    #[test]
    fn refusals_of_streaming_lists_are_told_from_outages() {
        let progress = "a watch stream was requested by the client but the required storage feature RequestWatchProgress is disabled";
        let gate = "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled";
        let old = "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch";
        let start = |s| watcher::Error::WatchStartFailed(kube::Error::Api(s));
        let cases: Vec<(&str, watcher::Error, bool)> = vec![
            (
                "WatchList gate off",
                start(status(422, "Invalid", gate)),
                true,
            ),
            ("before 1.27", start(status(422, "Invalid", old)), true),
            (
                "unknown parameters",
                start(status(400, "BadRequest", "bad")),
                true,
            ),
            (
                "etcd without RequestWatchProgress",
                watcher::Error::WatchError(status(500, "InternalError", progress)),
                true,
            ),
            (
                "in-stream 422",
                watcher::Error::WatchError(status(422, "Invalid", gate)),
                true,
            ),
            (
                "API server failing",
                start(status(500, "InternalError", "etcdserver: leader changed")),
                false,
            ),
            (
                "unavailable",
                start(status(503, "ServiceUnavailable", "try later")),
                false,
            ),
            (
                "throttled",
                start(status(429, "TooManyRequests", "slow down")),
                false,
            ),
            (
                "forbidden",
                start(status(
                    403,
                    "Forbidden",
                    "services is forbidden: User cannot watch",
                )),
                false,
            ),
            (
                "CRD absent",
                start(status(404, "NotFound", "404 page not found")),
                false,
            ),
            (
                "gone",
                watcher::Error::WatchError(status(410, "Expired", "too old resource version")),
                false,
            ),
            (
                "a paged list's 422 is not about streaming",
                watcher::Error::InitialListFailed(kube::Error::Api(status(422, "Invalid", gate))),
                false,
            ),
            (
                "no resource version",
                watcher::Error::NoResourceVersion,
                false,
            ),
        ];
        for (what, e, refused) in cases {
            assert_eq!(refuses_streaming(&e), refused, "{what}: {e}");
        }
    }
}
