//! The in-memory object store: etcd-like resource versions, a bounded event
//! history for watch resumption, list pagination snapshots and the fan-out of
//! events to open watches.
//!
//! Everything here runs under one mutex, so "record an event" and "register a
//! watch (replaying history)" are atomic with respect to each other: a watch
//! can neither miss nor duplicate an event.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use hyper::body::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::resources::{self, RESOURCES};
use crate::util::rfc3339;

/// Identifies a stored object: (resource index, namespace or "", name).
pub(crate) type ObjKey = (usize, String, String);

/// The resource version the empty store starts at (what a list of an empty
/// cluster reports). The first write gets this plus one.
pub(crate) const INITIAL_RV: u64 = 1;

/// How many unfinished paginated lists are remembered before the oldest
/// continue tokens stop working (answered with 410 like an expired token).
const MAX_PAGES: usize = 256;

/// One recorded change, kept for replay to watches that resume from an older
/// resource version.
#[derive(Clone, Debug)]
pub(crate) struct HistEvent {
    /// Resource version of the change.
    pub rv: u64,
    /// Resource type index.
    pub resource: usize,
    /// Namespace of the object ("" for cluster-scoped).
    pub namespace: String,
    /// The serialized watch event line, newline included.
    pub line: Bytes,
}

/// The persistent part of the store (what survives an API server restart).
#[derive(Clone, Debug)]
pub(crate) struct Data {
    /// Last resource version handed out.
    pub rv: u64,
    /// Oldest resource version a watch may resume from: every event newer
    /// than `floor` is still in `history`.
    pub floor: u64,
    /// Current objects, each with `apiVersion`, `kind` and full metadata.
    pub objects: BTreeMap<ObjKey, Arc<Value>>,
    /// Recent events, oldest first.
    pub history: VecDeque<HistEvent>,
}

impl Default for Data {
    fn default() -> Self {
        Data {
            rv: INITIAL_RV,
            floor: INITIAL_RV,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
        }
    }
}

/// Messages delivered to one open watch.
#[derive(Debug)]
pub(crate) enum Msg {
    /// A serialized watch event line.
    Line(Bytes),
    /// Send a BOOKMARK at this resource version.
    Bookmark(u64),
    /// End the stream cleanly.
    Close,
    /// End the stream abruptly (connection reset mid-body).
    Abort,
}

/// Bookkeeping for one open watch.
struct Watcher {
    id: u64,
    resource: usize,
    namespace: Option<String>,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Msg>,
}

impl Watcher {
    fn wants(&self, resource: usize, namespace: &str) -> bool {
        self.resource == resource && self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }
}

/// A consistent snapshot of a list, kept while a client pages through it.
struct Page {
    rv: u64,
    resource: usize,
    namespace: Option<String>,
    items: Arc<Vec<Value>>,
}

/// Where a new watch starts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum WatchStart {
    /// Send the current objects as synthetic ADDED events first (resource
    /// version unset or "0", or `sendInitialEvents=true`). `end_bookmark`
    /// requests the `k8s.io/initial-events-end` BOOKMARK after them.
    Initial { end_bookmark: bool },
    /// Replay every event newer than this resource version.
    From(u64),
}

/// A newly registered watch.
pub(crate) struct Registered {
    pub id: u64,
    pub rx: mpsc::UnboundedReceiver<Msg>,
    /// A sender into the watch's own queue (for periodic bookmarks, which must
    /// be ordered after events already queued).
    pub tx: mpsc::UnboundedSender<Msg>,
    /// Lines to send before anything from `rx`.
    pub pending: VecDeque<Bytes>,
}

/// A page of a list response.
pub(crate) struct ListPage {
    pub rv: u64,
    pub items: Vec<Value>,
    /// Continue token, when more items remain.
    pub next: Option<String>,
    pub remaining: usize,
}

/// Why a list could not be served.
pub(crate) enum ListError {
    /// The continue token is unknown, evicted or older than the compacted history.
    Expired,
    /// The continue token belongs to another collection or is malformed.
    BadToken,
}

/// The store proper.
pub(crate) struct Store {
    data: Data,
    history_limit: usize,
    watchers: Vec<Watcher>,
    next_watcher_id: u64,
    pages: BTreeMap<u64, Page>,
    next_page_id: u64,
}

impl Store {
    pub fn new(data: Data, history_limit: usize) -> Store {
        let mut store = Store {
            data,
            history_limit,
            watchers: Vec::new(),
            next_watcher_id: 1,
            pages: BTreeMap::new(),
            next_page_id: 1,
        };
        store.trim_history();
        store
    }

    /// A copy of the persistent data.
    pub fn data(&self) -> Data {
        self.data.clone()
    }

    /// The last resource version handed out.
    pub fn rv(&self) -> u64 {
        self.data.rv
    }

    /// Number of open watches.
    pub fn active_watches(&self) -> usize {
        self.watchers.len()
    }

    /// Creates or replaces an object; returns its new resource version.
    pub fn apply(&mut self, mut obj: Value) -> Result<u64, String> {
        let api_version = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .ok_or("object has no apiVersion")?
            .to_string();
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .ok_or("object has no kind")?
            .to_string();
        let resource = resources::by_kind(&api_version, &kind)
            .ok_or_else(|| format!("apiserver does not serve {api_version} {kind}"))?;
        let rt = &RESOURCES[resource];
        let meta = obj
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or("object has no metadata")?;
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or("object has no metadata.name")?
            .to_string();
        let namespace = if rt.namespaced {
            let ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|ns| !ns.is_empty())
                .unwrap_or("default")
                .to_string();
            meta.insert("namespace".into(), json!(ns));
            ns
        } else {
            meta.remove("namespace");
            String::new()
        };

        let key = (resource, namespace.clone(), name);
        let rv = self.data.rv + 1;
        self.data.rv = rv;
        let previous = self.data.objects.get(&key);
        // Keep identity fields of the object being replaced, like an update would.
        for field in ["uid", "creationTimestamp"] {
            let missing = meta.get(field).is_none_or(Value::is_null);
            if missing {
                let kept = previous.and_then(|p| p["metadata"].get(field)).cloned();
                let value = kept.unwrap_or_else(|| match field {
                    "uid" => json!(format!("5b0a4d00-0000-4000-8000-{rv:012x}")),
                    _ => json!(rfc3339(SystemTime::now())),
                });
                meta.insert(field.into(), value);
            }
        }
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        // As the status subresource: writing the object does not change its status.
        if let Some(prev) = previous {
            if obj.get("status").is_none_or(Value::is_null) {
                if let Some(status) = prev.get("status") {
                    obj["status"] = status.clone();
                }
            }
        }
        // metadata.generation counts spec changes (Gateway API objects and Ingresses).
        if rt.crd || rt.kind == "Ingress" {
            let generation = match previous.and_then(|p| p["metadata"]["generation"].as_i64()) {
                None => 1,
                Some(g) if previous.map(|p| &p["spec"]) != Some(&obj["spec"]) => g + 1,
                Some(g) => g,
            };
            obj["metadata"]["generation"] = json!(generation);
        }
        let event_type = if previous.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let obj = Arc::new(obj);
        self.data.objects.insert(key, Arc::clone(&obj));
        self.record(rv, resource, namespace, event_type, &obj);
        Ok(rv)
    }

    /// Deletes an object; emits DELETED carrying a fresh resource version.
    pub fn delete(&mut self, resource: usize, namespace: &str, name: &str) -> bool {
        let namespace = if RESOURCES[resource].namespaced {
            namespace
        } else {
            ""
        };
        let key = (resource, namespace.to_string(), name.to_string());
        let Some(obj) = self.data.objects.remove(&key) else {
            return false;
        };
        let rv = self.data.rv + 1;
        self.data.rv = rv;
        let mut obj = (*obj).clone();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(rv, resource, namespace.to_string(), "DELETED", &obj);
        true
    }

    /// A stored object.
    pub fn get(&self, resource: usize, namespace: &str, name: &str) -> Option<Arc<Value>> {
        let namespace = if RESOURCES[resource].namespaced {
            namespace
        } else {
            ""
        };
        self.data
            .objects
            .get(&(resource, namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Appends an event to the history and delivers it to interested watches.
    fn record(
        &mut self,
        rv: u64,
        resource: usize,
        namespace: String,
        event_type: &str,
        obj: &Value,
    ) {
        let line = event_line(event_type, obj);
        for w in &self.watchers {
            if w.wants(resource, &namespace) {
                // A closed receiver means the watch is going away; its guard
                // unregisters it.
                let _ = w.tx.send(Msg::Line(line.clone()));
            }
        }
        self.data.history.push_back(HistEvent {
            rv,
            resource,
            namespace,
            line,
        });
        self.trim_history();
    }

    fn trim_history(&mut self) {
        while self.data.history.len() > self.history_limit {
            if let Some(old) = self.data.history.pop_front() {
                self.data.floor = self.data.floor.max(old.rv);
            }
        }
    }

    /// Forgets all history: resuming from any resource version older than the
    /// current one now fails with 410 Gone.
    pub fn compact(&mut self) {
        self.data.history.clear();
        self.data.floor = self.data.rv;
    }

    /// The oldest resource version a watch may still resume from.
    pub fn floor(&self) -> u64 {
        self.data.floor
    }

    /// Objects of one collection, ordered by namespace and name. Built-in
    /// types lose `apiVersion`/`kind` on list items like on a real server.
    fn collection(&self, resource: usize, namespace: Option<&str>) -> Vec<Value> {
        let strip = !RESOURCES[resource].crd;
        self.data
            .objects
            .iter()
            .filter(|((r, ns, _), _)| *r == resource && namespace.is_none_or(|want| want == ns))
            .map(|(_, obj)| {
                let mut item = (**obj).clone();
                if strip {
                    if let Some(map) = item.as_object_mut() {
                        map.remove("apiVersion");
                        map.remove("kind");
                    }
                }
                item
            })
            .collect()
    }

    /// Serves one page of a list. `limit == 0` means unlimited.
    pub fn list(
        &mut self,
        resource: usize,
        namespace: Option<&str>,
        limit: usize,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ListError> {
        let (page_id, offset, rv, items) = match continue_token {
            Some(token) => {
                let (id, offset) = parse_token(token).ok_or(ListError::BadToken)?;
                let page = self.pages.get(&id).ok_or(ListError::Expired)?;
                if page.resource != resource || page.namespace.as_deref() != namespace {
                    return Err(ListError::BadToken);
                }
                if page.rv < self.data.floor {
                    self.pages.remove(&id);
                    return Err(ListError::Expired);
                }
                (Some(id), offset, page.rv, Arc::clone(&page.items))
            }
            None => (
                None,
                0,
                self.data.rv,
                Arc::new(self.collection(resource, namespace)),
            ),
        };
        let end = if limit == 0 {
            items.len()
        } else {
            items.len().min(offset.saturating_add(limit))
        };
        let page_items = items
            .get(offset..end)
            .map(<[Value]>::to_vec)
            .unwrap_or_default();
        let remaining = items.len().saturating_sub(end);
        let next = if remaining > 0 {
            let id = page_id.unwrap_or_else(|| {
                let id = self.next_page_id;
                self.next_page_id += 1;
                self.pages.insert(
                    id,
                    Page {
                        rv,
                        resource,
                        namespace: namespace.map(str::to_string),
                        items: Arc::clone(&items),
                    },
                );
                while self.pages.len() > MAX_PAGES {
                    self.pages.pop_first();
                }
                id
            });
            Some(format!("sb-{id}-{end}"))
        } else {
            if let Some(id) = page_id {
                self.pages.remove(&id);
            }
            None
        };
        Ok(ListPage {
            rv,
            items: page_items,
            next,
            remaining,
        })
    }

    /// Registers a watch, computing what it must be sent first. Returns
    /// `Err(floor)` when `start` is older than the kept history.
    pub fn register_watch(
        &mut self,
        resource: usize,
        namespace: Option<String>,
        bookmarks: bool,
        start: WatchStart,
    ) -> Result<Registered, u64> {
        let mut pending = VecDeque::new();
        match start {
            WatchStart::From(rv) if rv < self.data.floor => return Err(self.data.floor),
            WatchStart::From(rv) => {
                pending.extend(
                    self.data
                        .history
                        .iter()
                        .filter(|e| e.rv > rv && e.resource == resource)
                        .filter(|e| namespace.as_deref().is_none_or(|ns| ns == e.namespace))
                        .map(|e| e.line.clone()),
                );
            }
            WatchStart::Initial { end_bookmark } => {
                pending.extend(
                    self.data
                        .objects
                        .iter()
                        .filter(|((r, ns, _), _)| {
                            *r == resource && namespace.as_deref().is_none_or(|want| want == ns)
                        })
                        .map(|(_, obj)| event_line("ADDED", obj)),
                );
                if end_bookmark {
                    pending.push_back(bookmark_line(resource, self.data.rv, true));
                }
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next_watcher_id;
        self.next_watcher_id += 1;
        self.watchers.push(Watcher {
            id,
            resource,
            namespace,
            bookmarks,
            tx: tx.clone(),
        });
        Ok(Registered {
            id,
            rx,
            tx,
            pending,
        })
    }

    /// Forgets a watch (its stream ended).
    pub fn unregister_watch(&mut self, id: u64) {
        self.watchers.retain(|w| w.id != id);
    }

    /// Queues a BOOKMARK at the current resource version to every watch that
    /// asked for bookmarks.
    pub fn bookmark_all(&self) {
        for w in self.watchers.iter().filter(|w| w.bookmarks) {
            let _ = w.tx.send(Msg::Bookmark(self.data.rv));
        }
    }

    /// Ends the watches whose resource type matches `pred`, cleanly or abruptly.
    pub fn end_watches(&self, pred: impl Fn(usize) -> bool, abrupt: bool) {
        for w in self.watchers.iter().filter(|w| pred(w.resource)) {
            let _ = w.tx.send(if abrupt { Msg::Abort } else { Msg::Close });
        }
    }
}

fn parse_token(token: &str) -> Option<(u64, usize)> {
    let rest = token.strip_prefix("sb-")?;
    let (id, offset) = rest.split_once('-')?;
    Some((id.parse().ok()?, offset.parse().ok()?))
}

/// Serializes `{"type":T,"object":OBJ}\n`, `type` first as kube-apiserver writes it (Go encodes
/// `metav1.WatchEvent`'s fields in order). A `json!` map would sort `object` first, which makes
/// clients decode every event twice: kube-rs's `WatchEvent` buffers the object until it has
/// read the tag, a cost no real API server causes.
pub(crate) fn event_line(event_type: &str, obj: &Value) -> Bytes {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"{\"type\":");
    serde_json::to_writer(&mut buf, event_type).unwrap_or_default();
    buf.extend_from_slice(b",\"object\":");
    serde_json::to_writer(&mut buf, obj).unwrap_or_default();
    buf.extend_from_slice(b"}\n");
    Bytes::from(buf)
}

/// A BOOKMARK event line for a resource type at `rv`.
pub(crate) fn bookmark_line(resource: usize, rv: u64, initial_events_end: bool) -> Bytes {
    let rt = &RESOURCES[resource];
    let mut metadata = json!({ "resourceVersion": rv.to_string(), "creationTimestamp": null });
    if initial_events_end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    event_line(
        "BOOKMARK",
        &json!({ "kind": rt.kind, "apiVersion": rt.api_version(), "metadata": metadata }),
    )
}

/// Serializes a value followed by a newline.
pub(crate) fn json_line(value: &Value) -> Bytes {
    let mut buf = serde_json::to_vec(value).unwrap_or_default();
    buf.push(b'\n');
    Bytes::from(buf)
}
