//! Shared copies of the short strings that thousands of endpoints repeat (node names, zones,
//! topology hints): one `Arc<str>` per distinct value instead of one allocation per endpoint
//! and port; an endpoint's node, zone and hints together (`intern_info`). docs/memory.md has the measurement (about 9 MiB at 100,000 endpoints). Object and
//! service keys intern their namespace and name too (`ObjectKey::new`, `ServiceKey::new`): the
//! state, the manifest source and the compiled tables each keep keys of the same objects.
//!
//! The set holds a value for as long as a table uses it: values only the set still refers to
//! are dropped whenever the set has doubled since the last sweep, so a cluster whose nodes come
//! and go keeps it at most about twice the size of the values in use.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use crate::model::EndpointInfo;

struct Interner<T: ?Sized> {
    /// foldhash, not SipHash: every key of every object read passes here (SipHash was 1.6% of
    /// a 10,000-file start-up's CPU, perf).
    set: HashSet<Arc<T>, foldhash::fast::RandomState>,
    /// Size after the last sweep; the next sweep runs at twice this (at least 1,024).
    swept_at: usize,
}

static STRINGS: Mutex<Option<Interner<str>>> = Mutex::new(None);
static INFOS: Mutex<Option<Interner<EndpointInfo>>> = Mutex::new(None);

/// The shared copy of `value` in `cell`'s set (`new` makes the `Arc` when it is not there).
fn shared<T, Q>(
    cell: &Mutex<Option<Interner<T>>>,
    value: &Q,
    new: impl FnOnce() -> Arc<T>,
) -> Arc<T>
where
    T: ?Sized + Hash + Eq,
    Q: ?Sized + Hash + Eq,
    Arc<T>: std::borrow::Borrow<Q>,
{
    let mut guard = cell.lock().unwrap_or_else(|e| e.into_inner());
    let i = guard.get_or_insert_with(|| Interner {
        set: HashSet::default(),
        swept_at: 0,
    });
    if let Some(v) = i.set.get(value) {
        return v.clone();
    }
    if i.set.len() >= (2 * i.swept_at).max(1024) {
        i.set.retain(|v| Arc::strong_count(v) > 1);
        i.swept_at = i.set.len();
    }
    let v = new();
    i.set.insert(v.clone());
    v
}

/// The shared copy of `s`.
pub fn intern(s: &str) -> Arc<str> {
    shared(&STRINGS, s, || s.into())
}

/// The shared copy of an endpoint's node, zone and hints: the endpoints of one node (and zone)
/// share one block, where each had its own (~7 MiB at 100,000 endpoints; docs/memory.md).
pub fn intern_info(info: EndpointInfo) -> Arc<EndpointInfo> {
    shared(&INFOS, &info, || Arc::new(info.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_copy_per_value_and_unused_values_swept() {
        let a = intern("node-a");
        let b = intern("node-a");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "node-a");
        // Values nobody holds any more go at the next sweep; held ones stay shared.
        for n in 0..5000 {
            drop(intern(&format!("gone-{n}")));
        }
        assert!(Arc::ptr_eq(&a, &intern("node-a")));
        // (Other tests intern keys at the same time: count only this test's values.)
        let len = STRINGS
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .set
            .iter()
            .filter(|v| v.starts_with("gone-"))
            .count();
        assert!(len < 5000, "unused values were swept ({len} left)");
    }
}
