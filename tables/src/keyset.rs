//! `KeySet`: the object keys one source holds.
//!
//! A manifest file holds one to a few objects and there is one source per file, so a `HashSet`
//! per source (a table of at least four buckets and its control bytes, ~170 B for two keys)
//! cost ~1 MiB at 10,000 files (docs/memory.md). A sorted `Vec` is exact for those; a source
//! of the Kubernetes API holds every object of its kind (10,000 and more), where inserts into
//! a sorted `Vec` would be quadratic, so past `SMALL` keys the set becomes a `HashSet`.

use std::collections::HashSet;

use crate::model::ObjectKey;

type Fast = foldhash::fast::RandomState;

/// Above this many keys a set is hashed.
const SMALL: usize = 32;

#[derive(Debug)]
pub enum KeySet {
    /// Sorted, without spare room.
    Small(Vec<ObjectKey>),
    Large(HashSet<ObjectKey, Fast>),
}

impl Default for KeySet {
    fn default() -> Self {
        KeySet::Small(Vec::new())
    }
}

impl KeySet {
    pub fn insert(&mut self, key: &ObjectKey) {
        match self {
            KeySet::Small(v) => {
                let Err(i) = v.binary_search(key) else {
                    return;
                };
                if v.len() < SMALL {
                    v.insert(i, key.clone());
                    v.shrink_to_fit();
                } else {
                    let mut set: HashSet<ObjectKey, Fast> = v.drain(..).collect();
                    set.insert(key.clone());
                    *self = KeySet::Large(set);
                }
            }
            KeySet::Large(s) => {
                if !s.contains(key) {
                    s.insert(key.clone());
                }
            }
        }
    }

    pub fn remove(&mut self, key: &ObjectKey) {
        match self {
            KeySet::Small(v) => {
                if let Ok(i) = v.binary_search(key) {
                    v.remove(i);
                    v.shrink_to_fit();
                }
            }
            KeySet::Large(s) => {
                s.remove(key);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            KeySet::Small(v) => v.is_empty(),
            KeySet::Large(s) => s.is_empty(),
        }
    }

    pub fn iter(&self) -> Box<dyn Iterator<Item = &ObjectKey> + '_> {
        match self {
            KeySet::Small(v) => Box::new(v.iter()),
            KeySet::Large(s) => Box::new(s.iter()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;

    #[test]
    fn small_sorted_then_hashed_same_contents() {
        let key = |i: usize| ObjectKey::new(Kind::Service, "ns", &format!("s-{i:03}"));
        for n in [0, 1, 2, SMALL, SMALL + 1, 3 * SMALL] {
            let mut set = KeySet::default();
            // Each key twice, in an order that is not sorted.
            for i in (0..n).rev().chain(0..n) {
                set.insert(&key(i));
            }
            assert_eq!(matches!(set, KeySet::Small(_)), n <= SMALL, "n={n}");
            let mut got: Vec<_> = set.iter().cloned().collect();
            got.sort();
            assert_eq!(got, (0..n).map(key).collect::<Vec<_>>(), "n={n}");
            for i in 0..n {
                set.remove(&key(i));
            }
            set.remove(&key(n + 1));
            assert!(set.is_empty(), "n={n}");
        }
    }
}
