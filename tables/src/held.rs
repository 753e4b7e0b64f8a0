//! `Held`: how `ClusterState` keeps one object of one source.
//!
//! An `Object` is as large as its largest variant (Ingress, 216 B), so an `Arc<Object>` per
//! object cost 232 B for every Service (whose variant is an 8 B `Arc<Service>`) and every
//! EndpointSlice: ~4.4 MiB at 10,000 services (docs/memory.md). The state keeps a Service's
//! own `Arc` (the one the compiled routes share) and an EndpointSlice in a block of its size;
//! only the HTTP-side kinds, a few per cluster, stay in an `Arc<Object>`.

use std::sync::Arc;

use crate::model::{EndpointSlice, Object, Service};

#[derive(Clone, Debug)]
pub(crate) enum Held {
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    /// Every other kind.
    Other(Arc<Object>),
}

impl From<Object> for Held {
    fn from(obj: Object) -> Self {
        match obj {
            Object::Service(s) => Held::Service(s),
            Object::EndpointSlice(s) => Held::EndpointSlice(Arc::new(s)),
            other => Held::Other(Arc::new(other)),
        }
    }
}

impl Held {
    /// The same object as `obj` (by content).
    pub(crate) fn is(&self, obj: &Object) -> bool {
        match (self, obj) {
            (Held::Service(a), Object::Service(b)) => a == b,
            (Held::EndpointSlice(a), Object::EndpointSlice(b)) => **a == *b,
            (Held::Other(a), b) => **a == *b,
            _ => false,
        }
    }

    pub(crate) fn slice(&self) -> Option<&Arc<EndpointSlice>> {
        match self {
            Held::EndpointSlice(s) => Some(s),
            _ => None,
        }
    }

    /// An object of the kinds kept whole (not a Service or EndpointSlice).
    pub(crate) fn other(&self) -> Option<&Object> {
        match self {
            Held::Other(o) => Some(o),
            _ => None,
        }
    }
}

/// One object as the state holds it (`ClusterState::objects`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ObjectRef<'a> {
    Service(&'a Service),
    EndpointSlice(&'a EndpointSlice),
    /// Every other kind.
    Other(&'a Object),
}

impl Held {
    pub(crate) fn as_ref(&self) -> ObjectRef<'_> {
        match self {
            Held::Service(s) => ObjectRef::Service(s),
            Held::EndpointSlice(s) => ObjectRef::EndpointSlice(s),
            Held::Other(o) => ObjectRef::Other(o),
        }
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Held::Service(a), Held::Service(b)) => Arc::ptr_eq(a, b) || a == b,
            (Held::EndpointSlice(a), Held::EndpointSlice(b)) => Arc::ptr_eq(a, b) || a == b,
            (Held::Other(a), Held::Other(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AddressType, Namespace};

    #[test]
    fn kept_by_kind_and_compared_by_content() {
        let svc = Object::Service(Arc::new(Service {
            namespace: "ns".into(),
            name: "web".into(),
            ..Default::default()
        }));
        let slice = Object::EndpointSlice(EndpointSlice {
            namespace: "ns".into(),
            name: "web-1".into(),
            service_name: Some("web".into()),
            address_type: AddressType::IPv4,
            ports: vec![],
            endpoints: vec![],
            trigger_time: None,
        });
        let ns = Object::Namespace(Namespace {
            name: "ns".into(),
            labels: Default::default(),
        });
        for obj in [&svc, &slice, &ns] {
            let held = Held::from(obj.clone());
            assert!(held.is(obj));
            assert_eq!(held, Held::from(obj.clone()));
            assert_eq!(
                held.slice().is_some(),
                matches!(obj, Object::EndpointSlice(_))
            );
            assert_eq!(
                held.other(),
                matches!(obj, Object::Namespace(_)).then_some(obj)
            );
        }
        assert!(!Held::from(svc.clone()).is(&slice));
        assert_ne!(Held::from(svc), Held::from(ns));
    }
}
