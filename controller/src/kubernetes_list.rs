//! Whole lists in protobuf, then a JSON watch: the [`Listing::Whole`](crate::kubernetes) reading
//! of the two big kinds (Services, EndpointSlices), in place of kube-runtime's watcher, which
//! reads JSON only.
//!
//! The stream yields the events kube-runtime's watcher yields (`Init`, one `InitApply` per
//! object, `InitDone`, then `Apply`/`Delete`), so the caller treats both the same:
//!
//! 1. `GET {collection}?resourceVersion=0&resourceVersionMatch=NotOlderThan` with
//!    `Accept: application/vnd.kubernetes.protobuf, application/json` — served whole from
//!    kube-apiserver's watch cache, in protobuf ([`crate::kubernetes_pb`]);
//! 2. a server that answers JSON instead (no protobuf for this kind) is read as JSON;
//! 3. a protobuf body that cannot be read (bad magic, truncated, undecodable) is logged once
//!    with the reason and the list is asked again as JSON only: the kind still syncs, and the
//!    tables published before stay until it does;
//! 4. then a JSON watch (`allowWatchBookmarks=true`) from the list's resource version, resumed
//!    from the last version seen when the server ends it.
//!
//! Any error (the list or the watch refused, a transport error, an `ERROR` event such as 410
//! Gone) is yielded as the `watcher::Error` kube-runtime would give and ends the stream; the
//! caller starts a new one, which lists again.

use std::fmt::Debug;
use std::time::Instant;

use futures::stream::{self, BoxStream};
use futures::StreamExt;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::runtime::watcher::{self, Event as WEvent};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tables::Kind;

use crate::kubernetes_pb::{self as pb, ProtobufKind};
use crate::Metrics;

/// A kind the protobuf lists serve.
pub trait Listed:
    ProtobufKind + Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

impl<K> Listed for K where
    K: ProtobufKind
        + Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// How long a watch may stay open before the server ends it (kube-runtime uses 290 s too).
const WATCH_TIMEOUT_SECS: u32 = 290;

type Item<K> = Result<WEvent<K>, watcher::Error>;

enum State<K: Listed> {
    /// Before the list: yield `Init`, as kube-runtime does before its request.
    Start,
    List,
    Items {
        items: Box<dyn Iterator<Item = K> + Send>,
        rv: String,
    },
    Watch {
        rv: String,
    },
    Watching {
        rv: String,
        events: BoxStream<'static, kube::Result<WatchEvent<K>>>,
    },
    Done,
}

/// The list-then-watch stream of `K` (see the module docs).
pub fn list_watch<K: Listed>(
    api: Api<K>,
    kind: Kind,
    metrics: Metrics,
) -> BoxStream<'static, Item<K>> {
    stream::unfold(State::<K>::Start, move |state| {
        let api = api.clone();
        let metrics = metrics.clone();
        async move {
            let mut state = state;
            loop {
                state = match state {
                    State::Done => return None,
                    State::Start => return Some((Ok(WEvent::Init), State::List)),
                    State::List => match list(&api, kind, &metrics).await {
                        Ok((rv, items)) => State::Items { items, rv },
                        Err(e) => return Some((Err(e), State::Done)),
                    },
                    State::Items { mut items, rv } => match items.next() {
                        Some(obj) => {
                            return Some((Ok(WEvent::InitApply(obj)), State::Items { items, rv }))
                        }
                        None => return Some((Ok(WEvent::InitDone), State::Watch { rv })),
                    },
                    State::Watch { rv } => {
                        // Bookmarks are on by default.
                        let params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
                        match api.watch(&params, &rv).await {
                            Ok(events) => State::Watching {
                                rv,
                                events: events.boxed(),
                            },
                            Err(e) => {
                                return Some((
                                    Err(watcher::Error::WatchStartFailed(e)),
                                    State::Done,
                                ))
                            }
                        }
                    }
                    State::Watching { mut rv, mut events } => match events.next().await {
                        // The server ended the watch (its timeout): resume where it was.
                        None => State::Watch { rv },
                        Some(Err(e)) => {
                            return Some((Err(watcher::Error::WatchFailed(e)), State::Done))
                        }
                        Some(Ok(WatchEvent::Error(s))) => {
                            return Some((Err(watcher::Error::WatchError(s)), State::Done))
                        }
                        Some(Ok(WatchEvent::Bookmark(b))) => {
                            rv = b.metadata.resource_version;
                            State::Watching { rv, events }
                        }
                        Some(Ok(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                            rv = o.resource_version().unwrap_or(rv);
                            return Some((Ok(WEvent::Apply(o)), State::Watching { rv, events }));
                        }
                        Some(Ok(WatchEvent::Deleted(o))) => {
                            rv = o.resource_version().unwrap_or(rv);
                            return Some((Ok(WEvent::Delete(o)), State::Watching { rv, events }));
                        }
                    },
                }
            }
        }
    })
    .boxed()
}

type Objects<K> = Box<dyn Iterator<Item = K> + Send>;

/// One whole list at `resourceVersion=0`: protobuf if the server gives it, else JSON.
async fn list<K: Listed>(
    api: &Api<K>,
    kind: Kind,
    metrics: &Metrics,
) -> Result<(String, Objects<K>), watcher::Error> {
    let started = Instant::now();
    let params = ListParams::default().match_any();
    let failed = watcher::Error::InitialListFailed;
    let request = kube::core::Request::new(K::url_path(&(), None))
        .list(&params)
        .map_err(|e| failed(kube::Error::BuildRequest(e)))?;
    let (content_type, body) = send(api, request, pb::ACCEPT).await.map_err(failed)?;
    let bytes = body.len();
    let done = |encoding: &str, n: usize| {
        metrics
            .kube_lists
            .with_label_values(&[kind.as_str(), encoding])
            .inc();
        tracing::info!(
            %kind,
            %encoding,
            objects = n,
            bytes,
            seconds = started.elapsed().as_secs_f64(),
            "listed"
        );
    };
    if content_type.starts_with(pb::PROTOBUF) {
        match pb::list::<K>(&body) {
            Ok(list) => {
                drop(body);
                done("protobuf", list.len());
                return Ok((list.resource_version, Box::new(list.items)));
            }
            Err(e) => {
                metrics
                    .source_errors
                    .with_label_values(&["kubernetes", "protobuf"])
                    .inc();
                tracing::warn!(
                    %kind,
                    error = %e,
                    "cannot read the protobuf list; listing this kind as JSON instead"
                );
            }
        }
        drop(body);
        let list = api.list(&params).await.map_err(failed)?;
        return Ok(json(list, done));
    }
    // The server answered JSON to the same request: it has no protobuf for this kind.
    let list: kube::core::ObjectList<K> =
        serde_json::from_slice(&body).map_err(|e| failed(kube::Error::SerdeError(e)))?;
    drop(body);
    Ok(json(list, done))
}

/// A JSON list's resource version and objects, counted and logged by `done`.
fn json<K: Listed>(
    list: kube::core::ObjectList<K>,
    done: impl Fn(&str, usize),
) -> (String, Objects<K>) {
    done("json", list.items.len());
    let rv = list.metadata.resource_version.unwrap_or_default();
    (rv, Box::new(list.items.into_iter()))
}

/// Sends `request` with `accept` and returns the answer's content type and body; an error
/// status becomes `kube::Error::Api` with the server's `Status` (protobuf or JSON).
async fn send<K: Listed>(
    api: &Api<K>,
    request: http::Request<Vec<u8>>,
    accept: &str,
) -> kube::Result<(String, Vec<u8>)> {
    let mut request = request.map(kube::client::Body::from);
    request.headers_mut().insert(
        http::header::ACCEPT,
        http::HeaderValue::from_str(accept).expect("a valid header value"),
    );
    let client = api.clone().into_client();
    let response = client.send(request).await?;
    let code = response.status();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    // Without a copy where the buffer is not shared.
    let body = Vec::from(response.into_body().collect_bytes().await?);
    if code.is_success() {
        return Ok((content_type, body));
    }
    let status = pb::status(&body)
        .or_else(|| serde_json::from_slice::<kube::core::Status>(&body).ok())
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body);
            kube::core::Status::failure(&text, code.canonical_reason().unwrap_or("Failure"))
        })
        .with_code(code.as_u16());
    Err(kube::Error::Api(status.boxed()))
}
