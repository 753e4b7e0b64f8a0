//! The Gateway listener ports this process opened or could not open: written by the HTTP
//! proxy's listener manager after each attempt, read by the status writer (a listener whose
//! port could not be bound gets `Accepted: False`, `PortUnavailable`).
//!
//! Plain shared state (a mutex and a version), so that neither side depends on the other; the
//! reader polls the version, which changes only when a port's state does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What happened to one port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortState {
    /// Listening, for HTTPS (`true`) or HTTP connections.
    Open { tls: bool },
    /// Not listening, and why ("address in use", "port 8080 serves HTTP for ...").
    Unavailable(String),
}

/// The shared report; clones share it.
#[derive(Clone, Debug, Default)]
pub struct PortReport {
    ports: Arc<Mutex<BTreeMap<u16, PortState>>>,
    version: Arc<AtomicU64>,
}

impl PortReport {
    /// Replaces the whole report; the version moves only when something changed.
    pub fn set(&self, ports: BTreeMap<u16, PortState>) {
        let mut cur = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        if *cur != ports {
            *cur = ports;
            self.version.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The state of every port tried.
    pub fn get(&self) -> BTreeMap<u16, PortState> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes with every change of the report.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_moves_only_on_change() {
        let r = PortReport::default();
        let v0 = r.version();
        let one = BTreeMap::from([(8080, PortState::Open { tls: false })]);
        r.set(one.clone());
        assert_eq!(r.version(), v0 + 1);
        r.set(one.clone());
        assert_eq!(r.version(), v0 + 1, "same report: no change");
        assert_eq!(r.get(), one);
    }
}
