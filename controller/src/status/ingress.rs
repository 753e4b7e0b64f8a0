//! Ingress status and the addresses switchboard is reached at.
//!
//! An Ingress of switchboard's class gets `status.loadBalancer.ingress` = the addresses: the
//! `--gateway-address` values, else those of the `--publish-service` Service (its load
//! balancer's, else its external IPs, else its cluster IPs), as ingress-nginx's
//! `--publish-service` does. With no address known nothing is written.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::ResourceExt;
use serde_json::{json, Value};

use super::conditions::Address;
use crate::convert;

/// The addresses of a published Service.
pub fn service_addresses(svc: &Service) -> Vec<Address> {
    let lb: Vec<Address> = svc
        .status
        .iter()
        .flat_map(|s| s.load_balancer.iter())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|i| {
            i.ip.as_deref()
                .map(Address::parse)
                .or_else(|| i.hostname.as_deref().map(Address::parse))
        })
        .collect();
    if !lb.is_empty() {
        return lb;
    }
    let spec = svc.spec.as_ref();
    let external: Vec<Address> = spec
        .and_then(|s| s.external_ips.as_ref())
        .into_iter()
        .flatten()
        .map(|a| Address::parse(a))
        .collect();
    if !external.is_empty() {
        return external;
    }
    spec.and_then(|s| s.cluster_ips.as_ref())
        .into_iter()
        .flatten()
        .filter(|ip| ip.as_str() != "None")
        .map(|a| Address::parse(a))
        .collect()
}

/// The desired `status` of each Ingress of our class, by (namespace, name).
pub fn desired(
    ingresses: &[Arc<Ingress>],
    class: &str,
    addresses: &[Address],
) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    if addresses.is_empty() {
        return out;
    }
    let lb: Vec<Value> = addresses.iter().map(Address::ingress_json).collect();
    for ing in ingresses {
        let Ok(m) = convert::ingress(ing, "default") else {
            continue;
        };
        if m.class_name.as_deref() != Some(class) {
            continue;
        }
        let ns = ing.namespace().unwrap_or_else(|| "default".into());
        out.insert(
            (ns, ing.name_any()),
            json!({"loadBalancer": {"ingress": lb}}),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: &str) -> Service {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn published_service_addresses_prefer_the_load_balancer() {
        let lb = service(
            "metadata: {name: sb, namespace: kube-system}\nspec: {clusterIPs: [10.96.0.9], externalIPs: [192.0.2.7]}\nstatus: {loadBalancer: {ingress: [{ip: 203.0.113.5}, {hostname: lb.example.com}]}}",
        );
        assert_eq!(
            service_addresses(&lb),
            vec![
                Address::parse("203.0.113.5"),
                Address::Hostname("lb.example.com".into())
            ]
        );
        let external = service(
            "metadata: {name: sb}\nspec: {clusterIPs: [10.96.0.9], externalIPs: [192.0.2.7]}",
        );
        assert_eq!(
            service_addresses(&external),
            vec![Address::parse("192.0.2.7")]
        );
        let cluster = service("metadata: {name: sb}\nspec: {clusterIPs: [10.96.0.9, 'fd00::9']}");
        assert_eq!(service_addresses(&cluster).len(), 2);
        let headless = service("metadata: {name: sb}\nspec: {clusterIPs: [None]}");
        assert!(service_addresses(&headless).is_empty());
    }

    #[test]
    fn only_our_ingresses_get_the_addresses() {
        let ing = |name: &str, class: &str| {
            Arc::new(
                serde_yaml::from_str::<Ingress>(&format!(
                    "metadata: {{name: {name}, namespace: apps}}\nspec: {{ingressClassName: {class}}}"
                ))
                .unwrap(),
            )
        };
        let all = [ing("a", "switchboard"), ing("b", "nginx")];
        let d = desired(&all, "switchboard", &[Address::parse("192.0.2.10")]);
        assert_eq!(d.len(), 1);
        assert_eq!(
            d[&("apps".to_string(), "a".to_string())],
            json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}})
        );
        assert!(desired(&all, "switchboard", &[]).is_empty());
    }
}
