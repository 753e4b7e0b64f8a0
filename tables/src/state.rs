//! `ClusterState`: every object from every source, and the incremental compiler that turns a
//! batch of changes into the next `Snapshot`.
//!
//! Sources (`SourceId`) each own a set of objects: a manifest file, or one watched kind of the
//! Kubernetes API. `apply`/`delete` change one object, `reset` replaces everything a source owns
//! (a relist, a re-read file). Changes only mark services dirty; `commit` recompiles the dirty
//! services and splices their entries into the shared maps, so the cost of a change is the
//! size of the service it touches, not of the cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use crate::compile::{compile_http, compile_service, CompiledService, TableConfig};
use crate::held::Held;
pub use crate::held::ObjectRef;
use crate::keyset::KeySet;
use crate::model::*;
use crate::sharded::ShardedMap;
use crate::snapshot::*;

/// Where objects come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    Manifests,
    Kubernetes,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Manifests => "manifests",
            Origin::Kubernetes => "kubernetes",
        }
    }
}

/// One source of objects: a file of the manifest directory, or one watched kind of the API.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId {
    pub origin: Origin,
    pub name: Arc<str>,
}

impl SourceId {
    pub fn new(origin: Origin, name: &str) -> Self {
        SourceId {
            origin,
            name: name.into(),
        }
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.origin.as_str(), self.name)
    }
}

/// foldhash for the state's maps: every object applied passes through several of them, and
/// with SipHash their hashing was 1.1% of a 10,000-file start-up's CPU (perf, session 14).
/// Keys are object names, which only API clients with write access choose; the seed is random
/// per process.
type Fast = foldhash::fast::RandomState;
type Map<K, V> = HashMap<K, V, Fast>;

/// All objects, and the tables compiled from them.
pub struct ClusterState {
    config: TableConfig,
    /// Claims on each object, one per source that holds it; the first (lowest source) wins.
    /// (Kept as `Held`: a Service's own `Arc`, an EndpointSlice in a block of its size.)
    objects: Map<ObjectKey, Vec<(SourceId, Held)>>,
    /// The keys each source holds (a manifest file: one to a few; `KeySet`).
    by_source: Map<SourceId, KeySet>,
    /// EndpointSlice keys per service, from the effective slices, and the reverse index.
    /// (Sorted vectors: a service has one or a few slices, and a `BTreeSet` node per service
    /// cost ~4 MiB at 10k services.)
    slices_of: Map<ServiceKey, Vec<ObjectKey>>,
    slice_owner: Map<ObjectKey, ServiceKey>,
    compiled: Map<ServiceKey, CompiledService>,
    dirty: BTreeSet<ServiceKey>,
    http_dirty: bool,
    synced: bool,
    /// Publish on the next commit even if no table changed (readiness flipped).
    force_publish: bool,
    /// Objects a second source began to define since the last `take_conflicts`: (object, the
    /// source whose copy is served, the source that also defines it).
    conflicts: Vec<(ObjectKey, SourceId, SourceId)>,
    /// Compiled services per namespace: `<ns>.svc.<zone>` exists while this is above zero.
    services_per_ns: Map<Arc<str>, usize>,
    /// Effective objects per origin and kind, kept up to date by `changed`.
    counts: BTreeMap<(Origin, Kind), usize>,
    generation: u64,
    current: Snapshot,
}

/// Below this many dirty services per thread, a commit compiles on its own thread: spawning
/// costs tens of microseconds, compiling one service a few.
const PARALLEL_MIN_SERVICES: usize = 512;

impl ClusterState {
    pub fn new(config: TableConfig) -> Self {
        let current = Snapshot::empty(&config.cluster_domain);
        ClusterState {
            config,
            objects: Map::default(),
            by_source: Map::default(),
            slices_of: Map::default(),
            slice_owner: Map::default(),
            compiled: Map::default(),
            dirty: BTreeSet::new(),
            http_dirty: false,
            synced: false,
            force_publish: false,
            conflicts: Vec::new(),
            services_per_ns: Map::default(),
            counts: BTreeMap::new(),
            generation: 0,
            current,
        }
    }

    pub fn config(&self) -> &TableConfig {
        &self.config
    }

    fn effective(&self, key: &ObjectKey) -> Option<&Held> {
        self.objects
            .get(key)
            .and_then(|c| c.first())
            .map(|(_, o)| o)
    }

    /// Adds or replaces one object held by `source`.
    pub fn apply(&mut self, source: &SourceId, obj: Object) {
        let key = obj.key();
        let claims = self.objects.entry(key.clone()).or_default();
        if let Some(pos) = claims.iter().position(|(s, _)| s == source) {
            if claims[pos].1.is(&obj) {
                return;
            }
        }
        let before = claims.first().map(|(s, o)| (s.origin, o.clone()));
        let obj = Held::from(obj);
        match claims.binary_search_by(|(s, _)| s.cmp(source)) {
            Ok(pos) => claims[pos].1 = obj,
            Err(pos) => {
                claims.insert(pos, (source.clone(), obj));
                claims.shrink_to_fit();
                if claims.len() > 1 {
                    let served = claims[0].0.clone();
                    let also = if served == *source {
                        claims[1].0.clone()
                    } else {
                        source.clone()
                    };
                    self.conflicts.push((key.clone(), served, also));
                }
            }
        }
        self.by_source
            .entry(source.clone())
            .or_default()
            .insert(&key);
        self.changed(&key, before);
    }

    /// The objects that a second source began to define since the last call: (object, the
    /// source whose copy is served — the lowest-sorting one —, the other source).
    pub fn take_conflicts(&mut self) -> Vec<(ObjectKey, SourceId, SourceId)> {
        std::mem::take(&mut self.conflicts)
    }

    /// Removes `source`'s copy of one object.
    pub fn delete(&mut self, source: &SourceId, key: &ObjectKey) {
        let Some(claims) = self.objects.get_mut(key) else {
            return;
        };
        let Some(pos) = claims.iter().position(|(s, _)| s == source) else {
            return;
        };
        let before = claims.first().map(|(s, o)| (s.origin, o.clone()));
        claims.remove(pos);
        if claims.is_empty() {
            self.objects.remove(key);
        }
        if let Some(keys) = self.by_source.get_mut(source) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_source.remove(source);
            }
        }
        self.changed(key, before);
    }

    /// Replaces everything `source` holds with `objects`; objects named in `keep` stay as they
    /// are (a source lists them but cannot convert them right now). Unchanged objects cost
    /// nothing.
    pub fn reset(&mut self, source: &SourceId, objects: Vec<Object>, keep: &[ObjectKey]) {
        let mut new_keys: HashSet<ObjectKey, Fast> = objects.iter().map(Object::key).collect();
        new_keys.extend(keep.iter().cloned());
        let gone: Vec<ObjectKey> = self
            .by_source
            .get(source)
            .map(|keys| {
                keys.iter()
                    .filter(|k| !new_keys.contains(*k))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for key in gone {
            self.delete(source, &key);
        }
        for obj in objects {
            self.apply(source, obj);
        }
    }

    /// Marks the state as complete (every source has listed once); the next commit publishes
    /// `synced = true`.
    pub fn set_synced(&mut self, synced: bool) {
        if self.synced != synced {
            self.synced = synced;
            self.force_publish = true;
        }
    }

    fn changed(&mut self, key: &ObjectKey, before: Option<(Origin, Held)>) {
        let after_claim = self.objects.get(key).and_then(|c| c.first());
        let after_origin = after_claim.map(|(s, _)| s.origin);
        let after = after_claim.map(|(_, o)| o.clone());
        let before_origin = before.as_ref().map(|(o, _)| *o);
        let before = before.map(|(_, o)| o);
        if before_origin != after_origin {
            if let Some(o) = before_origin {
                *self.counts.entry((o, key.kind)).or_default() -= 1;
            }
            if let Some(o) = after_origin {
                *self.counts.entry((o, key.kind)).or_default() += 1;
            }
        }
        if before == after {
            return;
        }
        match key.kind {
            Kind::Service => {
                self.dirty.insert(ServiceKey {
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                });
            }
            Kind::EndpointSlice => {
                for obj in [before, after].into_iter().flatten() {
                    let Some(slice) = obj.slice() else {
                        continue;
                    };
                    if let Some(svc) = &slice.service_name {
                        self.dirty.insert(ServiceKey::new(&slice.namespace, svc));
                    }
                }
                // Re-index this slice under the service it now names.
                if let Some(owner) = self.slice_owner.remove(key) {
                    if let Some(set) = self.slices_of.get_mut(&owner) {
                        if let Ok(i) = set.binary_search(key) {
                            set.remove(i);
                        }
                        if set.is_empty() {
                            self.slices_of.remove(&owner);
                        }
                    }
                }
                if let Some(slice) = self.effective(key).and_then(Held::slice) {
                    if let Some(svc) = &slice.service_name {
                        let owner = ServiceKey::new(&slice.namespace, svc);
                        let set = self.slices_of.entry(owner.clone()).or_default();
                        if let Err(i) = set.binary_search(key) {
                            set.insert(i, key.clone());
                            set.shrink_to_fit();
                        }
                        self.slice_owner.insert(key.clone(), owner);
                    }
                }
            }
            Kind::Ingress
            | Kind::HttpRoute
            | Kind::Gateway
            | Kind::GatewayClass
            | Kind::Secret
            | Kind::ReferenceGrant
            | Kind::Namespace => {
                self.http_dirty = true;
            }
        }
    }

    /// Recompiles what changed since the last commit and returns the next snapshot, or `None`
    /// when nothing changed.
    pub fn commit(&mut self) -> Option<Arc<Snapshot>> {
        if self.dirty.is_empty() && !self.http_dirty && !self.force_publish {
            return None;
        }
        let dirty: Vec<ServiceKey> = std::mem::take(&mut self.dirty).into_iter().collect();
        let compiled = self.compile_services(&dirty);
        for (key, new) in dirty.iter().zip(compiled) {
            self.install_service(key, new);
        }
        if std::mem::take(&mut self.http_dirty) {
            let table = self.compile_http();
            self.current.routes.http = Arc::new(table);
            let tls = self.compile_tls();
            self.current.routes.tls = Arc::new(tls);
        }
        self.force_publish = false;
        self.generation += 1;
        self.current.generation = self.generation;
        self.current.synced = self.synced;
        Some(Arc::new(self.current.clone()))
    }

    /// The last committed snapshot's tables (generation included).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::new(self.current.clone())
    }

    /// The compiled form of each of `keys`, in their order. `compile_service` is a pure
    /// function of one Service and its slices, so a large commit (the first complete table at
    /// start, a relist) compiles on every core; only the splice into the maps that follows
    /// stays on one thread. Small commits (one change) compile here, without threads, and so do
    /// the partial tables published while the sources are still reading (not synced): those are
    /// off the critical path, and the other cores are busy reading (decoding the lists, parsing
    /// the manifest files, an API server on the same machine).
    fn compile_services(&self, keys: &[ServiceKey]) -> Vec<CompiledService> {
        if !self.synced {
            return self.compile_services_on(keys, 1);
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.compile_services_on(keys, cores.min(keys.len() / PARALLEL_MIN_SERVICES))
    }

    /// `compile_services` on at most `threads` threads.
    fn compile_services_on(&self, keys: &[ServiceKey], threads: usize) -> Vec<CompiledService> {
        if threads <= 1 {
            return keys.iter().map(|k| self.compile_one(k)).collect();
        }
        let chunk = keys.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let parts: Vec<_> = keys
                .chunks(chunk)
                .map(|part| {
                    scope
                        .spawn(move || part.iter().map(|k| self.compile_one(k)).collect::<Vec<_>>())
                })
                .collect();
            parts
                .into_iter()
                .flat_map(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    }

    /// The service's compiled form from its effective Service and EndpointSlices (the default,
    /// empty one when the Service is gone).
    fn compile_one(&self, key: &ServiceKey) -> CompiledService {
        let okey = ObjectKey {
            kind: Kind::Service,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        };
        match self.effective(&okey) {
            Some(Held::Service(svc)) => {
                let slices: Vec<Arc<EndpointSlice>> = self
                    .slices_of
                    .get(key)
                    .into_iter()
                    .flatten()
                    .filter_map(|k| self.effective(k).and_then(Held::slice).cloned())
                    .collect();
                compile_service(&self.config, svc, &slices)
            }
            _ => CompiledService::default(),
        }
    }

    /// Replaces the service's compiled form with `new`, splicing the difference into the
    /// tables.
    fn install_service(&mut self, key: &ServiceKey, new: CompiledService) {
        let old = self.compiled.remove(key).unwrap_or_default();
        match (old.routes.is_some(), new.routes.is_some()) {
            (false, true) => self.namespace_services(&key.namespace, 1),
            (true, false) => self.namespace_services(&key.namespace, -1),
            _ => {}
        }
        if old == new {
            if new.routes.is_some() {
                self.compiled.insert(key.clone(), new);
            }
            return;
        }
        splice(&mut self.current, key, &old, &new);
        if new.routes.is_some() {
            self.compiled.insert(key.clone(), new);
        }
    }

    /// Counts compiled services in a namespace and keeps its empty non-terminal
    /// `<ns>.svc.<zone>` in the DNS names while the count is above zero.
    fn namespace_services(&mut self, namespace: &Arc<str>, delta: isize) {
        let count = self.services_per_ns.entry(namespace.clone()).or_default();
        let before = *count;
        *count = count.saturating_add_signed(delta);
        let after = *count;
        if after == 0 {
            self.services_per_ns.remove(namespace);
        }
        let name: Arc<str> = format!(
            "{}.svc.{}",
            namespace.to_ascii_lowercase(),
            normalize_name(&self.config.cluster_domain)
        )
        .into();
        match (before, after) {
            (0, n) if n > 0 => {
                self.current.dns.names.insert(name, DnsEntry::default());
            }
            (b, 0) if b > 0 => {
                self.current.dns.names.remove(&*name);
            }
            _ => {}
        }
    }

    /// Every ReferenceGrant, for cross-namespace references.
    fn grants(&self) -> crate::grants::Grants {
        crate::grants::Grants::new(
            self.objects
                .iter()
                .filter(|(k, _)| k.kind == Kind::ReferenceGrant)
                .filter_map(|(_, c)| match c.first().and_then(|(_, o)| o.other()) {
                    Some(Object::ReferenceGrant(g)) => Some(g.clone()),
                    _ => None,
                }),
        )
    }

    fn compile_http(&self) -> crate::snapshot::HttpTable {
        let of_kind = |kind: Kind| {
            self.objects
                .iter()
                .filter(move |(k, _)| k.kind == kind)
                .filter_map(|(_, claims)| claims.first().and_then(|(_, o)| o.other()))
        };
        compile_http(
            &self.config,
            of_kind(Kind::Ingress).filter_map(|o| match o {
                Object::Ingress(i) => Some(i),
                _ => None,
            }),
            of_kind(Kind::HttpRoute).filter_map(|o| match o {
                Object::HttpRoute(r) => Some(r),
                _ => None,
            }),
            of_kind(Kind::Gateway).filter_map(|o| match o {
                Object::Gateway(g) => Some(g),
                _ => None,
            }),
            of_kind(Kind::GatewayClass).filter_map(|o| match o {
                Object::GatewayClass(c) => Some(c),
                _ => None,
            }),
            &self.grants(),
            &self
                .objects
                .iter()
                .filter(|(k, _)| k.kind == Kind::Namespace)
                .filter_map(|(_, c)| match c.first().and_then(|(_, o)| o.other()) {
                    Some(Object::Namespace(n)) => Some((n.name.clone(), n.labels.clone())),
                    _ => None,
                })
                .collect(),
        )
    }

    fn compile_tls(&self) -> crate::snapshot::TlsTable {
        let secrets: HashMap<(&str, &str), &TlsSecret> = self
            .objects
            .iter()
            .filter(|(k, _)| k.kind == Kind::Secret)
            .filter_map(|(_, c)| match c.first().and_then(|(_, o)| o.other()) {
                Some(Object::Secret(s)) => Some(((s.namespace.as_str(), s.name.as_str()), s)),
                _ => None,
            })
            .collect();
        let of_kind = |kind: Kind| {
            let mut v: Vec<&Object> = self
                .objects
                .iter()
                .filter(|(k, _)| k.kind == kind)
                .filter_map(|(_, c)| c.first().and_then(|(_, o)| o.other()))
                .collect();
            v.sort_by_key(|o| o.key());
            v
        };
        let ingresses = of_kind(Kind::Ingress);
        let gateways = of_kind(Kind::Gateway);
        let classes = of_kind(Kind::GatewayClass);
        crate::compile::compile_tls(
            &self.config,
            ingresses.iter().filter_map(|o| match o {
                Object::Ingress(i) => Some(i),
                _ => None,
            }),
            gateways.iter().filter_map(|o| match o {
                Object::Gateway(g) => Some(g),
                _ => None,
            }),
            classes.iter().filter_map(|o| match o {
                Object::GatewayClass(c) => Some(c),
                _ => None,
            }),
            |ns, name| secrets.get(&(ns, name)).copied(),
            &self.grants(),
        )
    }

    /// Objects of one origin and kind (effective copies only), for metrics. O(1).
    pub fn object_count(&self, origin: Origin, kind: Kind) -> usize {
        self.counts.get(&(origin, kind)).copied().unwrap_or(0)
    }

    /// Endpoints over every effective EndpointSlice (for the start-up log). O(objects).
    pub fn endpoint_count(&self) -> usize {
        self.objects
            .values()
            .filter_map(|c| c.first().and_then(|(_, o)| o.slice()))
            .map(|s| s.endpoints.len())
            .sum()
    }

    /// Every effective object, sorted by key (for dumps and tests).
    pub fn objects(&self) -> Vec<(&ObjectKey, &SourceId, ObjectRef<'_>)> {
        let mut v: Vec<_> = self
            .objects
            .iter()
            .filter_map(|(k, c)| c.first().map(|(s, o)| (k, s, o.as_ref())))
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }
}

/// Replaces `old`'s contributions to the snapshot's maps with `new`'s.
fn splice(snap: &mut Snapshot, key: &ServiceKey, old: &CompiledService, new: &CompiledService) {
    // DNS: names whose records from this service changed.
    for (name, recs) in old.dns.iter() {
        if new.dns_at(name) != Some(recs) {
            update_dns(&mut snap.dns.names, name, key, None);
        }
    }
    for (name, recs) in new.dns.iter() {
        if old.dns_at(name) != Some(recs) {
            update_dns(&mut snap.dns.names, name, key, Some(recs.clone()));
        }
    }
    // Routes: the service itself, then its frontends (which hold the service's routes).
    let routes = &mut snap.routes;
    match &new.routes {
        Some(r) => {
            routes.services.insert(key.clone(), r.clone());
        }
        None => {
            routes.services.remove(key);
        }
    }
    for (fe, _, _) in &old.frontends {
        if routes
            .frontends
            .get(fe)
            .is_some_and(|t| t.service.key == *key)
        {
            routes.frontends.remove(fe);
        }
    }
    for (np, _) in &old.node_ports {
        if routes
            .node_ports
            .get(np)
            .is_some_and(|t| t.service.key == *key)
        {
            routes.node_ports.remove(np);
        }
    }
    if let Some(r) = &new.routes {
        for (fe, kind, idx) in &new.frontends {
            routes.frontends.insert(
                *fe,
                FrontendTarget {
                    kind: *kind,
                    service: r.clone(),
                    port_index: *idx,
                },
            );
        }
        for (np, idx) in &new.node_ports {
            routes.node_ports.insert(
                *np,
                FrontendTarget {
                    kind: FrontendKind::NodePort,
                    service: r.clone(),
                    port_index: *idx,
                },
            );
        }
    }
}

fn update_dns(
    names: &mut ShardedMap<Arc<str>, DnsEntry>,
    name: &Arc<str>,
    key: &ServiceKey,
    records: Option<Arc<[DnsRecord]>>,
) {
    let mut parts = names
        .get(&**name)
        .map(|e| e.parts.to_vec())
        .unwrap_or_default();
    parts.retain(|(k, _)| k != key);
    if let Some(recs) = records {
        let pos = parts.partition_point(|(k, _)| k < key);
        parts.insert(pos, (key.clone(), recs));
    }
    if parts.is_empty() {
        names.remove(&**name);
    } else {
        // Most names have one part, kept inline (docs/memory.md).
        names.insert(
            name.clone(),
            DnsEntry {
                parts: parts.into(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{self, SynthCluster, SynthSpec};

    /// A large commit compiles on several threads; what it publishes is what compiling one
    /// service at a time, in small commits, publishes.
    #[test]
    fn parallel_compile_publishes_what_one_thread_does() {
        let cluster = SynthCluster::generate(&SynthSpec::new(3 * PARALLEL_MIN_SERVICES + 7));
        let (state, all_at_once) = cluster.build(TableConfig::default());
        let keys: Vec<ServiceKey> = state.compiled.keys().cloned().collect();
        assert_eq!(
            state.compile_services_on(&keys, 1),
            state.compile_services_on(&keys, 4),
            "the same services in the same order"
        );

        let mut small = ClusterState::new(TableConfig::default());
        small.set_synced(true);
        for chunk in cluster.objects().chunks(100) {
            for obj in chunk {
                let kind = obj.key().kind;
                small.apply(&synth::source_of(kind), obj.clone());
            }
            small.commit();
        }
        assert_eq!(
            crate::dump::dump(&all_at_once),
            crate::dump::dump(&small.snapshot())
        );
    }
}
