//! Whole lists in protobuf, then a JSON watch: the [`Listing::Whole`](crate::kubernetes) reading
//! of the two big kinds (Services, EndpointSlices), in place of kube-runtime's watcher, which
//! reads JSON only.
//!
//! The stream yields the events kube-runtime's watcher yields (`Init`, one `InitApply` per
//! object, `InitDone`, then `Apply`/`Delete`), its objects converted ([`Ev`]), so the caller
//! treats both the same:
//!
//! 1. `GET {collection}?resourceVersion=0&resourceVersionMatch=NotOlderThan` with
//!    `Accept: application/vnd.kubernetes.protobuf, application/json` — served whole from
//!    kube-apiserver's watch cache, in protobuf. The body is read as it arrives
//!    ([`crate::kubernetes_pb::ListReader`]) and each item converted as soon as its bytes are
//!    in, straight from them ([`crate::kubernetes_pb_items`]): the conversion runs while the API
//!    server is still encoding and sending the rest;
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
use http_body_util::BodyExt;
use kube::api::{ListParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tables::Kind;

use crate::kubernetes_event::{self as ev, Conv, Converted, Ev, Events};
use crate::kubernetes_pb::{self as pb, ListReader, PbError};
use crate::kubernetes_pb_items::{take_items, ProtobufKind};
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

enum State<K: Listed> {
    /// Before the list: yield `Init`, as kube-runtime does before its request.
    Start,
    List,
    Items {
        items: std::vec::IntoIter<Converted>,
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

/// What every state of one stream reads.
struct Ctx<K: Listed> {
    api: Api<K>,
    kind: Kind,
    conv: Conv<K>,
    metrics: Metrics,
}

/// The list-then-watch stream of `K` (see the module docs); `conv` converts the objects of
/// a JSON list and of the watch.
pub fn list_watch<K: Listed>(api: Api<K>, kind: Kind, conv: Conv<K>, metrics: Metrics) -> Events {
    let ctx = Ctx {
        api,
        kind,
        conv,
        metrics,
    };
    stream::unfold((State::<K>::Start, ctx), |(mut state, ctx)| async move {
        loop {
            state = match state {
                State::Done => return None,
                State::Start => return Some((Ok(Ev::Init), (State::List, ctx))),
                State::List => match list(&ctx).await {
                    Ok((rv, items)) => State::Items {
                        items: items.into_iter(),
                        rv,
                    },
                    Err(e) => return Some((Err(e), (State::Done, ctx))),
                },
                State::Items { mut items, rv } => {
                    let (event, next) = match items.next() {
                        Some(c) => (Ev::InitApply(c), State::Items { items, rv }),
                        None => (Ev::InitDone, State::Watch { rv }),
                    };
                    return Some((Ok(event), (next, ctx)));
                }
                State::Watch { rv } => {
                    // Bookmarks are on by default.
                    let params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
                    match ctx.api.watch(&params, &rv).await {
                        Ok(events) => State::Watching {
                            rv,
                            events: events.boxed(),
                        },
                        Err(e) => {
                            let e = watcher::Error::WatchStartFailed(e);
                            return Some((Err(e), (State::Done, ctx)));
                        }
                    }
                }
                State::Watching { mut rv, mut events } => {
                    let (kind, conv) = (ctx.kind, ctx.conv);
                    let event = match events.next().await {
                        // The server ended the watch (its timeout): resume where it was.
                        None => {
                            state = State::Watch { rv };
                            continue;
                        }
                        Some(Err(e)) => Err(watcher::Error::WatchFailed(e)),
                        Some(Ok(WatchEvent::Error(s))) => Err(watcher::Error::WatchError(s)),
                        Some(Ok(WatchEvent::Bookmark(b))) => {
                            rv = b.metadata.resource_version;
                            state = State::Watching { rv, events };
                            continue;
                        }
                        Some(Ok(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                            rv = o.resource_version().unwrap_or(rv);
                            Ok(Ev::Apply(ev::convert(kind, conv, &o)))
                        }
                        Some(Ok(WatchEvent::Deleted(o))) => {
                            rv = o.resource_version().unwrap_or(rv);
                            Ok(Ev::Delete(ev::key_of(kind, &o)))
                        }
                    };
                    let next = match event {
                        Ok(_) => State::Watching { rv, events },
                        Err(_) => State::Done,
                    };
                    return Some((event, (next, ctx)));
                }
            }
        }
    })
    .boxed()
}

/// One whole list at `resourceVersion=0`, converted: protobuf if the server gives it, else
/// JSON.
async fn list<K: Listed>(ctx: &Ctx<K>) -> Result<(String, Vec<Converted>), watcher::Error> {
    let Ctx {
        api,
        kind,
        conv,
        metrics,
    } = ctx;
    let started = Instant::now();
    let params = ListParams::default().match_any();
    let failed = watcher::Error::InitialListFailed;
    let request = kube::core::Request::new(K::url_path(&(), None))
        .list(&params)
        .map_err(|e| failed(kube::Error::BuildRequest(e)))?;
    let (content_type, body) = send(api, request, pb::ACCEPT).await.map_err(failed)?;
    let done = |encoding: &str, n: usize, bytes: usize| {
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
        match read_protobuf::<K>(body).await {
            Ok(Read::List { rv, items, bytes }) => {
                done("protobuf", items.len(), bytes);
                return Ok((rv, items));
            }
            Ok(Read::Unreadable(e)) => {
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
            Err(e) => return Err(failed(e)),
        }
        let list = api.list(&params).await.map_err(failed)?;
        return Ok(json(list, *kind, *conv, |n| done("json", n, 0)));
    }
    // The server answered JSON to the same request: it has no protobuf for this kind.
    let body = body.collect_bytes().await.map_err(failed)?;
    let list: kube::core::ObjectList<K> =
        serde_json::from_slice(&body).map_err(|e| failed(kube::Error::SerdeError(e)))?;
    let bytes = body.len();
    drop(body);
    Ok(json(list, *kind, *conv, |n| done("json", n, bytes)))
}

/// What a protobuf body gave.
enum Read {
    List {
        rv: String,
        items: Vec<Converted>,
        bytes: usize,
    },
    /// Not a protobuf list of the kind: list it as JSON instead.
    Unreadable(PbError),
}

/// Reads a protobuf list body as it arrives, converting each item once its bytes are in. A
/// transport error is an `Err` (the list failed); a body that is not a readable list is
/// [`Read::Unreadable`].
async fn read_protobuf<K: Listed>(mut body: kube::client::Body) -> kube::Result<Read> {
    let mut reader = ListReader::new(K::LIST_KIND);
    let mut items = Vec::new();
    let mut bytes = 0;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers
        };
        bytes += data.len();
        reader.push(&data);
        if let Err(e) = take_items::<K>(&mut reader, &mut items) {
            return Ok(Read::Unreadable(e));
        }
    }
    Ok(match reader.finish() {
        Ok(rv) => Read::List { rv, items, bytes },
        Err(e) => Read::Unreadable(e),
    })
}

/// A JSON list's resource version and objects, converted; `done` counts and logs it.
fn json<K: Listed>(
    list: kube::core::ObjectList<K>,
    kind: Kind,
    conv: Conv<K>,
    done: impl Fn(usize),
) -> (String, Vec<Converted>) {
    done(list.items.len());
    let rv = list.metadata.resource_version.unwrap_or_default();
    let items = list.items.iter().map(|o| ev::convert(kind, conv, o));
    (rv, items.collect())
}

/// Sends `request` with `accept` and returns the answer's content type and body (not read
/// yet); an error status becomes `kube::Error::Api` with the server's `Status` (protobuf or
/// JSON).
async fn send<K: Listed>(
    api: &Api<K>,
    request: http::Request<Vec<u8>>,
    accept: &str,
) -> kube::Result<(String, kube::client::Body)> {
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
    let body = response.into_body();
    if code.is_success() {
        return Ok((content_type, body));
    }
    let body = body.collect_bytes().await?;
    let status = pb::status(&body)
        .or_else(|| serde_json::from_slice::<kube::core::Status>(&body).ok())
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body);
            kube::core::Status::failure(&text, code.canonical_reason().unwrap_or("Failure"))
        })
        .with_code(code.as_u16());
    Err(kube::Error::Api(status.boxed()))
}
