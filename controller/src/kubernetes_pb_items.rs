//! Protobuf list items of Services and EndpointSlices read straight into the fields the
//! conversion takes ([`convert::ServiceFields`], [`convert::EndpointSliceFields`]), borrowed
//! from the received bytes, then converted by the same [`convert::service_of`] and
//! [`convert::endpoint_slice_of`] that the JSON watch and the manifests go through (through
//! k8s-openapi objects): one validation for every encoding. Only the fields the conversion reads
//! are looked at; the rest of each item (`managedFields`, `uid`, the selector, ...) is skipped
//! over without being decoded.
//!
//! Fields that Go declares as values, not pointers (`nodePort`, `clusterIP`, `externalName`,
//! ...), are written in protobuf even when empty, where the JSON leaves them out: `""` and `0`
//! read as absent there, as in the JSON (the first run against kube-apiserver rejected every
//! Service for its `nodePort: 0`). Field numbers are those of `k8s.io/api`'s `generated.proto`.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use tables::{Kind, Object};

use crate::convert::{
    self, ConvertError, EndpointFields, EndpointPortFields, EndpointSliceFields, Meta,
    ServiceFields, ServicePortFields, TargetPort,
};
use crate::kubernetes_event::{key_of_meta, Converted};
use crate::kubernetes_pb::{fields, last, Field, ListReader, PbError, WireError};

/// A kind whose whole lists are read in protobuf.
pub trait ProtobufKind {
    /// The list's `kind` in the envelope (`ServiceList`).
    const LIST_KIND: &'static str;
    /// One list item, converted; `Err` when its bytes are not the kind's message.
    fn convert_item(item: &[u8]) -> Result<Converted, WireError>;
}

/// Converts every item `reader` holds complete into `out`.
pub fn take_items<K: ProtobufKind>(
    reader: &mut ListReader,
    out: &mut Vec<Converted>,
) -> Result<(), PbError> {
    while let Some(item) = reader.next_item()? {
        out.push(K::convert_item(item).map_err(|error| PbError::Decode {
            kind: K::LIST_KIND,
            error,
        })?);
    }
    Ok(())
}

impl ProtobufKind for core::Service {
    const LIST_KIND: &'static str = "ServiceList";

    fn convert_item(item: &[u8]) -> Result<Converted, WireError> {
        let f = service(item)?;
        Ok(converted(
            Kind::Service,
            &f.meta,
            convert::service_of(&f, "default").map(Object::Service),
        ))
    }
}

impl ProtobufKind for discovery::EndpointSlice {
    const LIST_KIND: &'static str = "EndpointSliceList";

    fn convert_item(item: &[u8]) -> Result<Converted, WireError> {
        let f = endpoint_slice(item)?;
        Ok(converted(
            Kind::EndpointSlice,
            &f.meta,
            convert::endpoint_slice_of(&f, "default").map(Object::EndpointSlice),
        ))
    }
}

fn converted(kind: Kind, meta: &Meta, r: Result<Object, ConvertError>) -> Converted {
    match r {
        Ok(o) => Converted::Object(o),
        Err(error) => Converted::Rejected {
            key: key_of_meta(kind, meta),
            error,
        },
    }
}

/// A string field that Go declares as a value, not a pointer (`Name string
/// \`json:"name,omitempty"\``): written even when empty; empty is absent, as in the JSON.
fn text(f: Field<'_>) -> Result<Option<&str>, WireError> {
    let s = f.str()?;
    Ok((!s.is_empty()).then_some(s))
}

/// A number field that Go declares as a value with `omitempty` (`NodePort int32`): 0 is absent.
fn number(f: Field<'_>) -> Result<Option<i32>, WireError> {
    let n = f.int32()?;
    Ok((n != 0).then_some(n))
}

/// `metav1.ObjectMeta`: name 1, namespace 3, labels 11, annotations 12.
fn meta(b: &[u8]) -> Result<Meta<'_>, WireError> {
    let mut m = Meta::default();
    for f in fields(b) {
        let f = f?;
        match f.number {
            1 => m.name = text(f)?,
            3 => m.namespace = text(f)?,
            11 => m.labels.push(entry(f.bytes()?)?),
            12 => m.annotations.push(entry(f.bytes()?)?),
            _ => {}
        }
    }
    Ok(m)
}

/// A `map<string, string>` entry: key 1, value 2.
fn entry(b: &[u8]) -> Result<(&str, &str), WireError> {
    let (mut k, mut v) = ("", "");
    for f in fields(b) {
        let f = f?;
        match f.number {
            1 => k = f.str()?,
            2 => v = f.str()?,
            _ => {}
        }
    }
    Ok((k, v))
}

/// `v1.Service`: metadata 1, spec 2, status 3.
pub fn service(b: &[u8]) -> Result<ServiceFields<'_>, WireError> {
    let mut s = ServiceFields::default();
    for f in fields(b) {
        let f = f?;
        match f.number {
            1 => s.meta = meta(f.bytes()?)?,
            2 => spec(f.bytes()?, &mut s)?,
            3 => status(f.bytes()?, &mut s)?,
            _ => {}
        }
    }
    Ok(s)
}

/// `v1.ServiceSpec`.
fn spec<'a>(b: &'a [u8], s: &mut ServiceFields<'a>) -> Result<(), WireError> {
    for f in fields(b) {
        let f = f?;
        match f.number {
            1 => s.ports.push(service_port(f.bytes()?)?),
            3 => s.cluster_ip = text(f)?,
            4 => s.type_ = text(f)?,
            5 => s.external_ips.push(f.str()?),
            7 => s.session_affinity = text(f)?,
            9 => s.load_balancer_source_ranges.push(f.str()?),
            10 => s.external_name = text(f)?,
            11 => s.external_traffic_policy = text(f)?,
            12 => s.health_check_node_port = number(f)?,
            13 => s.publish_not_ready_addresses = Some(f.bool()?),
            // sessionAffinityConfig 14 → clientIP 1 → timeoutSeconds 1.
            14 => {
                for c in fields(f.bytes()?) {
                    let c = c?;
                    if c.number == 1 {
                        if let Some(t) = last(c.bytes()?, 1, Field::int32)? {
                            s.session_affinity_timeout = Some(t);
                        }
                    }
                }
            }
            18 => s.cluster_ips.push(f.str()?),
            22 => s.internal_traffic_policy = Some(f.str()?),
            23 => s.traffic_distribution = Some(f.str()?),
            _ => {}
        }
    }
    Ok(())
}

/// `v1.ServicePort`: name 1, protocol 2, port 3, targetPort 4, nodePort 5, appProtocol 6.
fn service_port(b: &[u8]) -> Result<ServicePortFields<'_>, WireError> {
    let mut p = ServicePortFields::default();
    for f in fields(b) {
        let f = f?;
        match f.number {
            1 => p.name = text(f)?,
            2 => p.protocol = text(f)?,
            3 => p.port = f.int32()?,
            4 => p.target_port = Some(int_or_string(f.bytes()?)?),
            5 => p.node_port = number(f)?,
            6 => p.app_protocol = Some(f.str()?),
            _ => {}
        }
    }
    Ok(p)
}

/// `intstr.IntOrString`: type 1 (0 a number, 1 a name), intVal 2, strVal 3.
fn int_or_string(b: &[u8]) -> Result<TargetPort<'_>, WireError> {
    let (mut kind, mut n, mut s) = (0, 0, "");
    for f in fields(b) {
        let f = f?;
        match f.number {
            1 => kind = f.int64()?,
            2 => n = f.int32()?,
            3 => s = f.str()?,
            _ => {}
        }
    }
    Ok(if kind == 1 {
        TargetPort::Name(s)
    } else {
        TargetPort::Number(n)
    })
}

/// `v1.ServiceStatus`: loadBalancer 1 → ingress 1 → ip 1.
fn status<'a>(b: &'a [u8], s: &mut ServiceFields<'a>) -> Result<(), WireError> {
    for f in fields(b) {
        let f = f?;
        if f.number != 1 {
            continue;
        }
        for i in fields(f.bytes()?) {
            let i = i?;
            if i.number == 1 {
                let ip = last(i.bytes()?, 1, text)?.flatten();
                s.load_balancer_ingress_ips.push(ip);
            }
        }
    }
    Ok(())
}

/// `discovery.v1.EndpointSlice`: metadata 1, endpoints 2, ports 3, addressType 4.
pub fn endpoint_slice(b: &[u8]) -> Result<EndpointSliceFields<'_>, WireError> {
    let mut s = EndpointSliceFields::default();
    for f in fields(b) {
        let f = f?;
        match f.number {
            1 => s.meta = meta(f.bytes()?)?,
            2 => s.endpoints.push(endpoint(f.bytes()?)?),
            3 => s.ports.push(endpoint_port(f.bytes()?)?),
            4 => s.address_type = f.str()?,
            _ => {}
        }
    }
    Ok(s)
}

/// `discovery.v1.Endpoint`: addresses 1, conditions 2, hostname 3, targetRef 4, nodeName 6,
/// zone 7, hints 8.
fn endpoint(b: &[u8]) -> Result<EndpointFields<'_>, WireError> {
    let mut e = EndpointFields::default();
    for f in fields(b) {
        let f = f?;
        match f.number {
            1 => e.addresses.push(f.str()?),
            // ready 1, serving 2, terminating 3.
            2 => {
                for c in fields(f.bytes()?) {
                    let c = c?;
                    match c.number {
                        1 => e.ready = Some(c.bool()?),
                        2 => e.serving = Some(c.bool()?),
                        3 => e.terminating = Some(c.bool()?),
                        _ => {}
                    }
                }
            }
            3 => e.hostname = Some(f.str()?),
            // ObjectReference: name 3.
            4 => e.target_name = Some(last(f.bytes()?, 3, Field::str)?.unwrap_or("")),
            6 => e.node_name = Some(f.str()?),
            7 => e.zone = Some(f.str()?),
            // forZones 1, forNodes 2, each { name 1 }.
            8 => {
                for h in fields(f.bytes()?) {
                    let h = h?;
                    let list = match h.number {
                        1 => &mut e.hint_zones,
                        2 => &mut e.hint_nodes,
                        _ => continue,
                    };
                    list.push(last(h.bytes()?, 1, Field::str)?.unwrap_or(""));
                }
            }
            _ => {}
        }
    }
    Ok(e)
}

/// `discovery.v1.EndpointPort`: name 1, protocol 2, port 3, appProtocol 4.
fn endpoint_port(b: &[u8]) -> Result<EndpointPortFields<'_>, WireError> {
    let mut p = EndpointPortFields::default();
    for f in fields(b) {
        let f = f?;
        match f.number {
            1 => p.name = Some(f.str()?),
            2 => p.protocol = Some(f.str()?),
            3 => p.port = Some(f.int32()?),
            4 => p.app_protocol = Some(f.str()?),
            _ => {}
        }
    }
    Ok(p)
}
