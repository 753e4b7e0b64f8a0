//! Arbitrary bytes as an HTTP/1 request head through the fast path's parser and decisions
//! (`prepare`: httparse, Host and Connection handling, Content-Length lists, the head size
//! limit, the route lookup), over tables holding one Ingress so heads reach the routing code;
//! and the same bytes as an upstream response head (`parse_head`). Neither may panic. Run with
//! `cargo +nightly fuzz run request_head` from `proxy/` (see proxy/fuzz/README.md).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use proxy::http::fast::fuzzing::Harness;

const TABLES: &str = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.0.1], conditions: {ready: true}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: default}
spec:
  ingressClassName: switchboard
  rules:
  - host: a.test
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
";

static HARNESS: OnceLock<Harness> = OnceLock::new();

fn harness() -> &'static Harness {
    HARNESS.get_or_init(|| {
        let objects = controller::parse::load_manifest(std::path::Path::new("t.yaml"), TABLES)
            .expect("the fuzz tables parse");
        let mut state = tables::ClusterState::new(tables::TableConfig {
            cluster_domain: "cluster.local".into(),
            ingress_class: "switchboard".into(),
            gateway_controller: "switchboard.dev/gateway".into(),
        });
        let source = tables::SourceId::new(tables::Origin::Manifests, "t.yaml");
        state.reset(&source, objects, &[]);
        state.set_synced(true);
        let cell = tables::new_cell("cluster.local");
        cell.store(state.commit().expect("a first snapshot"));
        let h = Harness::new(cell);
        assert_eq!(h.request(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"), "ready");
        h
    })
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let _ = h.request(data);
    let head_only = data.first().is_some_and(|b| b & 1 == 1);
    let _ = h.response(data, head_only);
});
