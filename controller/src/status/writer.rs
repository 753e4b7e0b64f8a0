//! The status writer: runs only while this replica leads.
//!
//! It opens its own watches (GatewayClass, Gateway, HTTPRoute, ReferenceGrant, Ingress, the
//! names of Services and TLS Secrets, Namespace labels, and the `--publish-service` Service), and after each
//! burst of changes — and once a minute, to retry failed writes — computes the desired status
//! and merge-patches the status subresource of each object whose stored status differs
//! (times aside). Its own writes come back as changes that compare equal, so nothing loops.
//! HTTPRoute writes carry the `resourceVersion` read, so a concurrent write by another
//! controller (to its own `parents[]` entry) is never lost: the 409 is retried after the next
//! change. Gateway API kinds whose CRDs are absent never finish listing; their status is then
//! simply not computed, and Ingress status goes on.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use super::conditions::{now, same, stamp, without_times};
use super::gateway::{self, World};
use super::ingress;
use super::{GatewayClassObj, GatewayObj, HttpRouteObj, StatusConfig, StatusMetrics};
use crate::gateway_api as gw;
use crate::kubernetes::FIELD_MANAGER;

/// Changes closer together than this are written as one.
const SETTLE: Duration = Duration::from_millis(100);
/// Recompute at least this often, to retry writes that failed.
const RESYNC: Duration = Duration::from_secs(60);

/// Writes status whenever `leader` says this replica leads; stops writing when it no longer
/// does.
pub async fn run(
    client: Client,
    cfg: StatusConfig,
    metrics: StatusMetrics,
    mut leader: watch::Receiver<bool>,
) {
    loop {
        while !*leader.borrow_and_update() {
            if leader.changed().await.is_err() {
                return;
            }
        }
        let lost = async {
            loop {
                if leader.changed().await.is_err() || !*leader.borrow() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = write_while_leading(&client, &cfg, &metrics) => {}
            _ = lost => {}
        }
    }
}

/// A reflected kind and whether its first list is complete.
struct Watched<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    store: Store<K>,
    ready: Arc<AtomicBool>,
}

impl<K: Resource + Clone + 'static> Watched<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
    fn state(&self) -> Vec<Arc<K>> {
        self.store.state()
    }
}

fn reflect<K, S>(
    tasks: &mut JoinSet<()>,
    stream: S,
    dyntype: K::DynamicType,
    notify: &Arc<Notify>,
) -> Watched<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let writer = reflector::store::Writer::new(dyntype);
    let store = writer.as_reader();
    let ready = Arc::new(AtomicBool::new(false));
    let (r, notify) = (ready.clone(), notify.clone());
    tasks.spawn(async move {
        let stream = stream.default_backoff().reflect(writer);
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::InitDone) => r.store(true, Ordering::Relaxed),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "status writer: watch failed; retrying"),
            }
            notify.notify_one();
        }
    });
    Watched { store, ready }
}

fn crd<K>(client: &Client, kind: &str) -> (Api<K>, kube::core::ApiResource)
where
    K: Resource<DynamicType = kube::core::ApiResource>,
{
    let ar = gw::api_resource(kind);
    (Api::all_with(client.clone(), &ar), ar)
}

async fn write_while_leading(client: &Client, cfg: &StatusConfig, metrics: &StatusMetrics) {
    let notify = Arc::new(Notify::new());
    let mut tasks = JoinSet::new(); // the watches end when this returns (leadership lost)
                                    // Whole lists from the API server's watch cache, as the source's fallback lists: the
                                    // leader's lists (the metadata of every Service among them) come at start too, and 500-object
                                    // pages read etcd page by page.
    let all = || crate::kubernetes::whole_lists(watcher::Config::default());
    let (api, ar) = crd::<GatewayClassObj>(client, "GatewayClass");
    let classes = reflect(&mut tasks, watcher(api, all()), ar, &notify);
    let (api, ar) = crd::<GatewayObj>(client, "Gateway");
    let gateways = reflect(&mut tasks, watcher(api, all()), ar, &notify);
    let (api, ar) = crd::<HttpRouteObj>(client, "HTTPRoute");
    let routes = reflect(&mut tasks, watcher(api, all()), ar, &notify);
    let (api, ar) = crd::<gw::ReferenceGrant>(client, "ReferenceGrant");
    let grants = reflect(&mut tasks, watcher(api, all()), ar, &notify);
    let ingresses = reflect(
        &mut tasks,
        watcher(Api::<Ingress>::all(client.clone()), all()),
        (),
        &notify,
    );
    let services = reflect(
        &mut tasks,
        watcher(
            Api::<PartialObjectMeta<Service>>::all(client.clone()),
            all(),
        ),
        (),
        &notify,
    );
    let tls = all().fields(&format!("type={}", crate::convert::TLS_SECRET_TYPE));
    let secrets = reflect(
        &mut tasks,
        watcher(Api::<PartialObjectMeta<Secret>>::all(client.clone()), tls),
        (),
        &notify,
    );
    let namespaces = reflect(
        &mut tasks,
        watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            all(),
        ),
        (),
        &notify,
    );
    let published = cfg.publish_service.as_ref().map(|(ns, name)| {
        let one = all().fields(&format!("metadata.name={name}"));
        let api = Api::<Service>::namespaced(client.clone(), ns);
        reflect(&mut tasks, watcher(api, one), (), &notify)
    });
    let mut bundle = BundleVersion::default();
    let sent = Sent::default();
    // A change of the listener ports' report counts as a change of the objects.
    let ports_version = || cfg.ports.as_ref().map(|p| p.version());
    let mut ports_seen = ports_version();
    let ports_changed = |seen: Option<u64>| async move {
        loop {
            tokio::time::sleep(SETTLE).await;
            if ports_version() != seen {
                return;
            }
        }
    };
    loop {
        tokio::select! {
            _ = notify.notified() => tokio::time::sleep(SETTLE).await,
            _ = ports_changed(ports_seen) => {}
            _ = tokio::time::sleep(RESYNC) => {}
        }
        ports_seen = ports_version();
        let ports = cfg.ports.as_ref().map(|p| p.get());
        let addresses = if !cfg.addresses.is_empty() {
            cfg.addresses.clone()
        } else {
            match &published {
                Some(p) if p.ready() => p
                    .state()
                    .first()
                    .map(|s| ingress::service_addresses(s))
                    .unwrap_or_default(),
                Some(_) => continue, // not known yet: write nothing rather than no address
                None => vec![],
            }
        };
        let w = Writes {
            client,
            metrics,
            now: now(),
            warned: Default::default(),
            sent: &sent,
        };
        if ingresses.ready() {
            let desired = ingress::desired(&ingresses.state(), &cfg.ingress_class, &addresses);
            for ing in ingresses.state() {
                let ns = ing.namespace().unwrap_or_default();
                if let Some(d) = desired.get(&(ns, ing.name_any())) {
                    w.ingress(&ing, d.clone()).await;
                }
            }
        }
        if [
            classes.ready(),
            gateways.ready(),
            routes.ready(),
            services.ready(),
            secrets.ready(),
            namespaces.ready(),
        ]
        .iter()
        .all(|r| *r)
        {
            let svc_names = names(&services.state());
            let secret_names = names(&secrets.state());
            let grant_list = tables::grants::Grants::new(
                grants
                    .state()
                    .iter()
                    .filter_map(|g| crate::convert::reference_grant(g, "default").ok()),
            );
            let (class_objs, gw_objs, route_objs) =
                (classes.state(), gateways.state(), routes.state());
            let d = gateway::desired(&World {
                controller: &cfg.gateway_controller,
                classes: &class_objs,
                gateways: &gw_objs,
                routes: &route_objs,
                services: &svc_names,
                secrets: &secret_names,
                grants: &grant_list,
                namespaces: &namespaces
                    .state()
                    .iter()
                    .map(|n| (n.name_any(), n.labels().clone()))
                    .collect(),
                addresses: &addresses,
                ports: ports.as_ref(),
                bundle_version: bundle.version(client).await,
            });
            for c in &class_objs {
                if let Some(s) = d.classes.get(&(String::new(), c.name_any())) {
                    w.gateway_class(c, s.clone()).await;
                }
            }
            for g in &gw_objs {
                let key = (g.namespace().unwrap_or_default(), g.name_any());
                if let Some(s) = d.gateways.get(&key) {
                    w.gateway(g, s.clone()).await;
                }
            }
            for r in &route_objs {
                let key = (r.namespace().unwrap_or_default(), r.name_any());
                let ours = d.routes.get(&key).cloned().unwrap_or_default();
                w.route(r, ours, &cfg.gateway_controller).await;
            }
        }
    }
}

/// The installed Gateway API version, from the `gateway.networking.k8s.io/bundle-version`
/// annotation of the GatewayClass CRD, read at most once per [`RESYNC`].
#[derive(Default)]
struct BundleVersion {
    read: Option<(tokio::time::Instant, Option<String>)>,
}

impl BundleVersion {
    const CRD: &str = "gatewayclasses.gateway.networking.k8s.io";
    const ANNOTATION: &str = "gateway.networking.k8s.io/bundle-version";

    async fn version(&mut self, client: &Client) -> Option<&str> {
        let stale = self
            .read
            .as_ref()
            .is_none_or(|(t, _)| t.elapsed() >= RESYNC);
        if stale {
            let api: Api<PartialObjectMeta<CustomResourceDefinition>> = Api::all(client.clone());
            let v = match api.get_metadata_opt(Self::CRD).await {
                Ok(crd) => crd.and_then(|c| c.annotations().get(Self::ANNOTATION).cloned()),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the Gateway API CRD's bundle version");
                    None
                }
            };
            self.read = Some((tokio::time::Instant::now(), v));
        }
        self.read.as_ref().and_then(|(_, v)| v.as_deref())
    }
}

/// (namespace, name) of each object.
fn names<K: Resource>(objs: &[Arc<K>]) -> BTreeSet<(String, String)> {
    objs.iter()
        .map(|o| (o.namespace().unwrap_or_default(), o.name_any()))
        .collect()
}

/// One round of writes.
struct Writes<'a> {
    client: &'a Client,
    metrics: &'a StatusMetrics,
    now: String,
    /// A failed write was logged at warn this round; the rest go to debug (a missing
    /// permission fails every write alike).
    warned: AtomicBool,
    /// Per object (`Kind ns/name`): the `resourceVersion` it had and the status (times aside)
    /// last written to it.
    sent: &'a Sent,
}

/// See [`Writes::patch`].
type Sent = std::sync::Mutex<std::collections::HashMap<String, (Option<String>, Value)>>;

impl Writes<'_> {
    fn params() -> PatchParams {
        PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        }
    }

    fn count(&self, kind: &str, result: Result<(), &kube::Error>, what: &str) {
        let label = match result {
            Ok(()) => "ok",
            Err(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Err(_) => "error",
        };
        self.metrics.writes.with_label_values(&[kind, label]).inc();
        match result {
            Ok(()) => tracing::debug!(object = what, "status written"),
            Err(e) if label == "conflict" => {
                tracing::debug!(object = what, error = %e, "status write conflicted; retrying after the next change")
            }
            Err(e) if !self.warned.swap(true, Ordering::Relaxed) => tracing::warn!(
                object = what,
                error = %e,
                "cannot write status; retrying later (further failures this round at debug)"
            ),
            Err(e) => {
                tracing::debug!(object = what, error = %e, "cannot write status; retrying later")
            }
        }
    }

    /// Writes `body` to the status of `obj`, unless the same was written already and the
    /// watch has not shown that write yet (the stored copy still has the `resourceVersion` it
    /// had then): a round that starts before a write's own event arrives would otherwise write
    /// the same status again.
    async fn patch<K, O>(&self, api: Api<K>, kind: &str, obj: &O, what: &str, body: Value)
    where
        K: Resource + Clone + DeserializeOwned + Debug,
        O: Resource,
    {
        let rv = obj.resource_version();
        let written = without_times(&body);
        {
            let sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            if sent.get(what) == Some(&(rv.clone(), written.clone())) {
                return;
            }
        }
        let r = api
            .patch_status(&obj.name_any(), &Self::params(), &Patch::Merge(&body))
            .await;
        if r.is_ok() {
            let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            sent.insert(what.to_string(), (rv, written));
        }
        self.count(kind, r.as_ref().map(|_| ()), what);
    }

    /// `None` when the stored status already says `desired`; else `desired` with the times of
    /// its top-level conditions.
    fn changed(&self, mut desired: Value, stored: Option<&Value>) -> Option<Value> {
        if same(&desired, stored) {
            return None;
        }
        let old = stored.and_then(|s| s.get("conditions"));
        stamp(&mut desired["conditions"], old, &self.now);
        Some(desired)
    }

    async fn gateway_class(&self, c: &GatewayClassObj, desired: Value) {
        let Some(desired) = self.changed(desired, c.status.as_ref()) else {
            return;
        };
        let (api, _) = crd::<GatewayClassObj>(self.client, "GatewayClass");
        let name = c.name_any();
        let what = format!("GatewayClass {name}");
        self.patch(api, "GatewayClass", c, &what, json!({"status": desired}))
            .await;
    }

    async fn gateway(&self, g: &GatewayObj, desired: Value) {
        let stored = g.status.as_ref();
        let Some(mut desired) = self.changed(desired, stored) else {
            return;
        };
        let old_listeners = stored
            .and_then(|s| s.get("listeners"))
            .and_then(Value::as_array);
        if let Some(ls) = desired["listeners"].as_array_mut() {
            for l in ls {
                let old = old_listeners
                    .and_then(|o| o.iter().find(|x| x.get("name") == l.get("name")))
                    .and_then(|x| x.get("conditions"));
                stamp(&mut l["conditions"], old, &self.now);
            }
        }
        let ns = g.namespace().unwrap_or_default();
        let name = g.name_any();
        let api: Api<GatewayObj> =
            Api::namespaced_with(self.client.clone(), &ns, &gw::api_resource("Gateway"));
        let what = format!("Gateway {ns}/{name}");
        self.patch(api, "Gateway", g, &what, json!({"status": desired}))
            .await;
    }

    /// Replaces our `parents[]` entries of a route, leaving other controllers' alone.
    async fn route(&self, r: &HttpRouteObj, mut ours: Vec<Value>, controller: &str) {
        let stored: Vec<Value> = r
            .status
            .as_ref()
            .and_then(|s| s.get("parents"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let is_ours =
            |p: &Value| p.get("controllerName").and_then(Value::as_str) == Some(controller);
        let stored_ours: Vec<Value> = stored.iter().filter(|p| is_ours(p)).cloned().collect();
        if same(
            &Value::Array(ours.clone()),
            Some(&Value::Array(stored_ours.clone())),
        ) {
            return;
        }
        for p in &mut ours {
            let old = stored_ours
                .iter()
                .find(|s| s.get("parentRef") == p.get("parentRef"))
                .and_then(|s| s.get("conditions"));
            stamp(&mut p["conditions"], old, &self.now);
        }
        let mut parents: Vec<Value> = stored.into_iter().filter(|p| !is_ours(p)).collect();
        parents.extend(ours);
        let ns = r.namespace().unwrap_or_default();
        let name = r.name_any();
        let api: Api<HttpRouteObj> =
            Api::namespaced_with(self.client.clone(), &ns, &gw::api_resource("HTTPRoute"));
        let body = json!({
            "metadata": {"resourceVersion": r.resource_version()},
            "status": {"parents": parents},
        });
        let what = format!("HTTPRoute {ns}/{name}");
        self.patch(api, "HTTPRoute", r, &what, body).await;
    }

    async fn ingress(&self, ing: &Ingress, desired: Value) {
        let stored = ing
            .status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok());
        if same(&desired, stored.as_ref()) {
            return;
        }
        let ns = ing.namespace().unwrap_or_default();
        let name = ing.name_any();
        let api: Api<Ingress> = Api::namespaced(self.client.clone(), &ns);
        let what = format!("Ingress {ns}/{name}");
        self.patch(api, "Ingress", ing, &what, json!({"status": desired}))
            .await;
    }
}
