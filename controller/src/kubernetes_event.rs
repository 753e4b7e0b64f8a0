//! What a kind's stream hands to its watch loop (`kubernetes.rs`): kube-runtime's watcher
//! events with each object already converted to the model, so a stream may read objects in
//! any encoding. kube-runtime's JSON watchers are mapped with [`converted_events`]; the
//! protobuf lists (`kubernetes_list.rs`) convert each list item straight from its bytes.

use futures::stream::BoxStream;
use futures::StreamExt;
use kube::runtime::watcher::{self, Event as WEvent};
use kube::ResourceExt;
use tables::{Kind, Object, ObjectKey};

use crate::convert::{ConvertError, Meta};

/// One object read from the API, converted.
#[derive(Debug)]
pub enum Converted {
    Object(Object),
    /// Not served (a Secret that is not of type `kubernetes.io/tls`).
    Skipped,
    /// Invalid: logged and counted; its last good version stays.
    Rejected {
        key: ObjectKey,
        error: ConvertError,
    },
}

/// kube-runtime's `watcher::Event`, its objects converted (a deleted object by its key).
#[derive(Debug)]
pub enum Ev {
    /// A (re)list begins.
    Init,
    InitApply(Converted),
    /// The list is complete: its objects replace the kind's.
    InitDone,
    Apply(Converted),
    Delete(ObjectKey),
}

pub type Events = BoxStream<'static, Result<Ev, watcher::Error>>;

/// How a k8s-openapi object of a kind becomes the model (`None`: not served).
pub type Conv<K> = fn(&K) -> Result<Option<Object>, ConvertError>;

/// The key of an object of `kind` (Service, EndpointSlice, ...): namespaced kinds without a
/// namespace are in `default`, as the conversion reads them.
pub fn key_of<K: ResourceExt>(kind: Kind, obj: &K) -> ObjectKey {
    let ns = if matches!(kind, Kind::GatewayClass | Kind::Namespace) {
        String::new()
    } else {
        obj.namespace().unwrap_or_else(|| "default".into())
    };
    ObjectKey::new(kind, &ns, &obj.name_any())
}

/// The key of a namespaced object read as [`Meta`], as [`key_of`] gives it.
pub fn key_of_meta(kind: Kind, meta: &Meta) -> ObjectKey {
    let ns = meta
        .namespace
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    ObjectKey::new(kind, ns, meta.name.unwrap_or_default())
}

/// `obj` converted by `conv`.
pub fn convert<K: ResourceExt>(kind: Kind, conv: Conv<K>, obj: &K) -> Converted {
    match conv(obj) {
        Ok(Some(o)) => Converted::Object(o),
        Ok(None) => Converted::Skipped,
        Err(error) => Converted::Rejected {
            key: key_of(kind, obj),
            error,
        },
    }
}

/// A watcher event with its object converted.
pub fn event<K: ResourceExt>(kind: Kind, conv: Conv<K>, e: WEvent<K>) -> Ev {
    match e {
        WEvent::Init => Ev::Init,
        WEvent::InitApply(o) => Ev::InitApply(convert(kind, conv, &o)),
        WEvent::InitDone => Ev::InitDone,
        WEvent::Apply(o) => Ev::Apply(convert(kind, conv, &o)),
        WEvent::Delete(o) => Ev::Delete(key_of(kind, &o)),
    }
}

/// kube-runtime's watcher stream, converted.
pub fn converted_events<K: ResourceExt + Send + 'static>(
    stream: BoxStream<'static, Result<WEvent<K>, watcher::Error>>,
    kind: Kind,
    conv: Conv<K>,
) -> Events {
    stream.map(move |r| r.map(|e| event(kind, conv, e))).boxed()
}
