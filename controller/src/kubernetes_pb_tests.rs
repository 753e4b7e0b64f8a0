//! The protobuf envelope and list items: the same object read from protobuf (straight from
//! its bytes, in any chunking of the body) and from JSON converts to the same model, and every
//! broken body is an error, never a panic.

use super::*;
use crate::convert;
use crate::kubernetes_event::Converted;
use crate::kubernetes_pb_items::{self as items, ProtobufKind};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_pb::api::core::v1 as pb_core;
use k8s_pb::api::discovery::v1 as pb_discovery;
use k8s_pb::apimachinery::pkg::runtime::TypeMeta;
use tables::Object;

/// A whole body read `chunk` bytes at a time, each item converted: the resource version and
/// the items, or the first error.
fn read<K: ProtobufKind>(body: &[u8], chunk: usize) -> Result<(String, Vec<Converted>), PbError> {
    let mut reader = ListReader::new(K::LIST_KIND);
    let mut out = Vec::new();
    for c in body.chunks(chunk.max(1)) {
        reader.push(c);
        items::take_items::<K>(&mut reader, &mut out)?;
    }
    Ok((reader.finish()?, out))
}

fn object(c: Converted) -> Object {
    match c {
        Converted::Object(o) => o,
        other => panic!("not converted: {other:?}"),
    }
}

/// `body`, read in chunks of each of `chunks` bytes and whole, gives the resource version and
/// item count `(rv, n)`, every item converted to `want`.
fn reads_in_chunks_as<K: ProtobufKind>(
    body: &[u8],
    chunks: &[usize],
    (rv, n): (&str, usize),
    want: &Object,
) {
    for &chunk in chunks.iter().chain([&body.len()]) {
        let (got_rv, got) = read::<K>(body, chunk).unwrap();
        assert_eq!((got_rv.as_str(), got.len()), (rv, n), "chunks of {chunk}");
        for o in got {
            assert_eq!(object(o), *want, "chunks of {chunk}");
        }
    }
}

/// `raw` in kube-apiserver's envelope, the list's kind named.
fn envelope(kind: &str, raw: Vec<u8>, encoding: &str) -> Vec<u8> {
    let mut body = MAGIC.to_vec();
    Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some("v1".into()),
            kind: Some(kind.into()),
        }),
        raw: Some(raw),
        content_encoding: Some(encoding.into()),
        content_type: Some(String::new()),
    }
    .encode(&mut body)
    .unwrap();
    body
}

fn pb_meta(name: &str) -> Option<pb_meta::ObjectMeta> {
    Some(pb_meta::ObjectMeta {
        name: Some(name.into()),
        namespace: Some("shop".into()),
        labels: [(convert::SERVICE_NAME_LABEL.to_string(), "web".to_string())].into(),
        annotations: [
            ("switchboard.dev/lb".to_string(), "p2c".to_string()),
            (
                "endpoints.kubernetes.io/last-change-trigger-time".to_string(),
                "2026-12-06T10:00:00Z".to_string(),
            ),
        ]
        .into(),
        resource_version: Some("17".into()),
        ..Default::default()
    })
}

/// Every field `convert::service` reads, set.
fn pb_service() -> pb_core::Service {
    let int_or_string = |t: i64, i: Option<i32>, s: Option<&str>| {
        Some(k8s_pb::apimachinery::pkg::util::intstr::IntOrString {
            r#type: Some(t),
            int_val: i,
            str_val: s.map(Into::into),
        })
    };
    pb_core::Service {
        metadata: pb_meta("web"),
        spec: Some(pb_core::ServiceSpec {
            ports: vec![
                pb_core::ServicePort {
                    name: Some("http".into()),
                    protocol: Some("TCP".into()),
                    app_protocol: Some("http".into()),
                    port: Some(80),
                    target_port: int_or_string(1, None, Some("web")),
                    node_port: Some(30080),
                },
                pb_core::ServicePort {
                    name: Some("dns".into()),
                    protocol: Some("UDP".into()),
                    port: Some(53),
                    target_port: int_or_string(0, Some(5353), None),
                    ..Default::default()
                },
            ],
            cluster_ip: Some("10.96.0.10".into()),
            cluster_ips: vec!["10.96.0.10".into(), "fd00::10".into()],
            r#type: Some("LoadBalancer".into()),
            external_ips: vec!["192.0.2.1".into()],
            session_affinity: Some("ClientIP".into()),
            load_balancer_source_ranges: vec!["198.51.100.0/24".into()],
            external_traffic_policy: Some("Local".into()),
            health_check_node_port: Some(31000),
            publish_not_ready_addresses: Some(true),
            session_affinity_config: Some(pb_core::SessionAffinityConfig {
                client_ip: Some(pb_core::ClientIpConfig {
                    timeout_seconds: Some(600),
                }),
            }),
            internal_traffic_policy: Some("Cluster".into()),
            traffic_distribution: Some("PreferClose".into()),
            ..Default::default()
        }),
        status: Some(pb_core::ServiceStatus {
            load_balancer: Some(pb_core::LoadBalancerStatus {
                ingress: vec![pb_core::LoadBalancerIngress {
                    ip: Some("203.0.113.7".into()),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
    }
}

/// The same Service as the API's JSON.
const SERVICE_JSON: &str = r#"{
  "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "17",
    "labels": {"kubernetes.io/service-name": "web"},
    "annotations": {"switchboard.dev/lb": "p2c",
      "endpoints.kubernetes.io/last-change-trigger-time": "2026-12-06T10:00:00Z"}},
  "spec": {
    "ports": [
      {"name": "http", "protocol": "TCP", "appProtocol": "http", "port": 80, "targetPort": "web", "nodePort": 30080},
      {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353}],
    "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"], "type": "LoadBalancer",
    "externalIPs": ["192.0.2.1"], "sessionAffinity": "ClientIP",
    "loadBalancerSourceRanges": ["198.51.100.0/24"], "externalTrafficPolicy": "Local",
    "healthCheckNodePort": 31000, "publishNotReadyAddresses": true,
    "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
    "internalTrafficPolicy": "Cluster", "trafficDistribution": "PreferClose"},
  "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}
}"#;

fn pb_slice() -> pb_discovery::EndpointSlice {
    let name = |n: &str| Some(n.to_string());
    pb_discovery::EndpointSlice {
        metadata: pb_meta("web-1"),
        address_type: Some("IPv4".into()),
        endpoints: vec![
            pb_discovery::Endpoint {
                addresses: vec!["10.1.0.1".into()],
                conditions: Some(pb_discovery::EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                hostname: Some("web-0".into()),
                target_ref: Some(pb_core::ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: Some("shop".into()),
                    name: Some("web-0".into()),
                    ..Default::default()
                }),
                node_name: Some("node-a".into()),
                zone: Some("zone-a".into()),
                hints: Some(pb_discovery::EndpointHints {
                    for_zones: vec![pb_discovery::ForZone {
                        name: name("zone-a"),
                    }],
                    for_nodes: vec![pb_discovery::ForNode {
                        name: name("node-a"),
                    }],
                }),
                ..Default::default()
            },
            pb_discovery::Endpoint {
                addresses: vec!["10.1.0.2".into()],
                conditions: Some(pb_discovery::EndpointConditions {
                    ready: Some(false),
                    serving: Some(true),
                    terminating: Some(true),
                }),
                ..Default::default()
            },
        ],
        ports: vec![pb_discovery::EndpointPort {
            name: Some("http".into()),
            protocol: Some("TCP".into()),
            port: Some(8080),
            app_protocol: Some("http".into()),
        }],
    }
}

const SLICE_JSON: &str = r#"{
  "metadata": {"name": "web-1", "namespace": "shop", "resourceVersion": "17",
    "labels": {"kubernetes.io/service-name": "web"},
    "annotations": {"switchboard.dev/lb": "p2c",
      "endpoints.kubernetes.io/last-change-trigger-time": "2026-12-06T10:00:00Z"}},
  "addressType": "IPv4",
  "endpoints": [
    {"addresses": ["10.1.0.1"], "conditions": {"ready": true, "serving": true, "terminating": false},
     "hostname": "web-0", "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-0"},
     "nodeName": "node-a", "zone": "zone-a",
     "hints": {"forZones": [{"name": "zone-a"}], "forNodes": [{"name": "node-a"}]}},
    {"addresses": ["10.1.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}}],
  "ports": [{"name": "http", "protocol": "TCP", "port": 8080, "appProtocol": "http"}]
}"#;

fn service_list(items: Vec<pb_core::Service>) -> Vec<u8> {
    let raw = pb_core::ServiceList {
        metadata: Some(pb_meta::ListMeta {
            resource_version: Some("42".into()),
            ..Default::default()
        }),
        items,
    }
    .encode_to_vec();
    envelope("ServiceList", raw, "")
}

/// However the connection cuts the body into chunks, the same items come out.
#[test]
fn a_service_converts_the_same_from_protobuf_and_json_in_any_chunks() {
    let json: core::Service = serde_json::from_str(SERVICE_JSON).unwrap();
    let want = Object::Service(convert::service(&json, "default").unwrap());
    let body = service_list(vec![pb_service(); 3]);
    reads_in_chunks_as::<core::Service>(&body, &[1, 2, 3, 7, 64, 1000], ("42", 3), &want);
}

/// kube-apiserver writes the fields Go declares as values even when they are empty (`nodePort:
/// 0`, `externalName: ""`), where its JSON leaves them out: they read as absent.
#[test]
fn empty_value_fields_read_as_absent() {
    let svc = pb_core::Service {
        metadata: pb_meta("plain"),
        spec: Some(pb_core::ServiceSpec {
            ports: vec![pb_core::ServicePort {
                name: Some(String::new()),
                protocol: Some("TCP".into()),
                port: Some(80),
                target_port: Some(k8s_pb::apimachinery::pkg::util::intstr::IntOrString {
                    r#type: Some(0),
                    int_val: Some(8080),
                    str_val: Some(String::new()),
                }),
                node_port: Some(0),
                ..Default::default()
            }],
            cluster_ip: Some("10.96.0.5".into()),
            r#type: Some("ClusterIP".into()),
            session_affinity: Some("None".into()),
            external_name: Some(String::new()),
            external_traffic_policy: Some(String::new()),
            health_check_node_port: Some(0),
            publish_not_ready_addresses: Some(false),
            ..Default::default()
        }),
        status: Some(pb_core::ServiceStatus {
            load_balancer: Some(pb_core::LoadBalancerStatus::default()),
            ..Default::default()
        }),
    };
    let bytes = svc.encode_to_vec();
    let from_pb = convert::service_of(&items::service(&bytes).unwrap(), "default").unwrap();
    let json: core::Service = serde_json::from_str(
        r#"{"metadata": {"name": "plain", "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"},
            "annotations": {"switchboard.dev/lb": "p2c",
              "endpoints.kubernetes.io/last-change-trigger-time": "2026-12-06T10:00:00Z"}},
          "spec": {"ports": [{"protocol": "TCP", "port": 80, "targetPort": 8080}],
            "clusterIP": "10.96.0.5", "type": "ClusterIP", "sessionAffinity": "None"}}"#,
    )
    .unwrap();
    assert_eq!(from_pb, convert::service(&json, "default").unwrap());
}

#[test]
fn an_endpoint_slice_converts_the_same_from_protobuf_and_json() {
    let raw = pb_discovery::EndpointSliceList {
        metadata: Some(pb_meta::ListMeta {
            resource_version: Some("43".into()),
            ..Default::default()
        }),
        items: vec![pb_slice(); 2],
    }
    .encode_to_vec();
    let body = envelope("EndpointSliceList", raw, "");
    let json: discovery::EndpointSlice = serde_json::from_str(SLICE_JSON).unwrap();
    let want = Object::EndpointSlice(convert::endpoint_slice(&json, "default").unwrap());
    reads_in_chunks_as::<discovery::EndpointSlice>(&body, &[1, 5, 100], ("43", 2), &want);
}

/// An item that reads but does not validate is rejected by the same conversion as JSON, with
/// its key, and the list goes on.
#[test]
fn invalid_items_are_rejected_with_their_key() {
    let mut bad = pb_service();
    bad.spec.as_mut().unwrap().ports[0].port = Some(70000);
    let body = service_list(vec![bad, pb_service()]);
    let (_, got) = read::<core::Service>(&body, 10).unwrap();
    let mut json: core::Service = serde_json::from_str(SERVICE_JSON).unwrap();
    json.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 70000;
    let json_error = convert::service(&json, "default").unwrap_err();
    match &got[..] {
        [Converted::Rejected { key, error }, Converted::Object(_)] => {
            assert_eq!(key.to_string(), "Service shop/web");
            assert_eq!(error, &json_error);
            assert_eq!(error.field, "spec.ports[0].port");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn broken_bodies_are_errors() {
    let good = service_list(vec![pb_service(); 3]);
    let mut garbage = MAGIC.to_vec();
    garbage.extend_from_slice(&[0xff; 16]);
    // The list's metadata announced, its length cut short.
    let bad_raw = envelope("ServiceList", vec![0x0a, 0x80], "");
    // An item whose name (a string) is sent as a number.
    let wrong_type = envelope("ServiceList", vec![0x12, 0x04, 0x0a, 0x02, 0x08, 0x01], "");
    // An item that claims more bytes than the list holds.
    let overlong = envelope("ServiceList", vec![0x12, 0x7f, 0x0a], "");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "does not start with the protobuf magic"),
        (
            "JSON",
            br#"{"kind":"ServiceList"}"#.to_vec(),
            "protobuf magic",
        ),
        ("magic cut", b"k8".to_vec(), "protobuf magic"),
        ("magic only", MAGIC.to_vec(), "holds no object"),
        ("garbage envelope", garbage, "runtime.Unknown envelope"),
        (
            "cut in the middle",
            good[..good.len() / 2].to_vec(),
            "runtime.Unknown envelope: cut short",
        ),
        (
            "cut inside the list",
            bad_raw,
            "cannot decode the ServiceList",
        ),
        (
            "a field of the wrong type",
            wrong_type,
            "cannot decode the ServiceList: field 1 has the wrong wire type",
        ),
        ("an item past the list's end", overlong, "cut short"),
        (
            "another kind",
            envelope("Status", vec![], ""),
            "holds a Status, not a ServiceList",
        ),
        (
            "gzip inside",
            envelope("ServiceList", vec![], "gzip"),
            "content encoding \"gzip\"",
        ),
    ];
    for (what, body, message) in cases {
        for chunk in [1, 3, body.len()] {
            match read::<core::Service>(&body, chunk) {
                Ok(_) => panic!("{what}: decoded"),
                Err(e) => assert!(e.to_string().contains(message), "{what}: {e}"),
            }
        }
    }
    assert_eq!(read::<core::Service>(&good, 100).unwrap().1.len(), 3);
}

/// Random bytes and random cuts of a good body are errors or lists, never a panic.
#[test]
fn any_bytes_read_without_panicking() {
    let good = service_list(vec![pb_service(); 2]);
    let mut rng = fastrand::Rng::with_seed(17);
    for _ in 0..2000 {
        let mut body = good.clone();
        for _ in 0..rng.usize(1..4) {
            let i = rng.usize(..body.len());
            body[i] = rng.u8(..);
        }
        body.truncate(rng.usize(..=body.len()));
        let _ = read::<core::Service>(&body, rng.usize(1..64));
    }
}

#[test]
fn errors_answered_in_protobuf_carry_their_status() {
    let raw = pb_meta::Status {
        status: Some("Failure".into()),
        message: Some("too old resource version: 1 (5)".into()),
        reason: Some("Expired".into()),
        code: Some(410),
        ..Default::default()
    }
    .encode_to_vec();
    let s = status(&envelope("Status", raw, "")).unwrap();
    assert_eq!((s.code, s.reason.as_str()), (410, "Expired"));
    assert!(s.message.contains("too old"));
    assert!(status(br#"{"kind":"Status"}"#).is_none());
}
