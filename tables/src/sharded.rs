//! A hash map split into fixed shards behind `Arc`s, so a snapshot can be cloned in O(shards)
//! and an update copies only the shard it touches.
//!
//! Why not one `HashMap` per snapshot: at 100,000 DNS names, cloning the map for every published
//! generation costs milliseconds; here a one-service change copies a few shards of a few hundred
//! entries. Why not a HAMT: lookups stay a plain `HashMap` probe on the hot query path.

use std::borrow::Borrow;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

const SHARDS: usize = 256;

#[derive(Debug)]
pub struct ShardedMap<K, V> {
    shards: Vec<Arc<HashMap<K, V>>>,
    len: usize,
}

impl<K, V> Clone for ShardedMap<K, V> {
    fn clone(&self) -> Self {
        ShardedMap {
            shards: self.shards.clone(),
            len: self.len,
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap {
            shards: (0..SHARDS).map(|_| Arc::new(HashMap::new())).collect(),
            len: 0,
        }
    }
}

fn shard_of<Q: Hash + ?Sized>(key: &Q) -> usize {
    // DefaultHasher::new() uses fixed keys: the shard of a key is stable for the process.
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

impl<K: Hash + Eq + Clone, V: Clone> ShardedMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[shard_of(key)].get(key)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Inserts, copying the key's shard first if a published snapshot still shares it.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let shard = Arc::make_mut(&mut self.shards[shard_of(&key)]);
        let old = shard.insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let idx = shard_of(key);
        if !self.shards[idx].contains_key(key) {
            return None;
        }
        let old = Arc::make_mut(&mut self.shards[idx]).remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// All entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_shares_until_written() {
        let mut a: ShardedMap<String, u32> = ShardedMap::new();
        for i in 0..1000 {
            a.insert(format!("k{i}"), i);
        }
        let b = a.clone();
        a.insert("k1".into(), 99);
        a.remove("k2");
        assert_eq!(b.get("k1"), Some(&1));
        assert_eq!(b.get("k2"), Some(&2));
        assert_eq!(a.get("k1"), Some(&99));
        assert_eq!(a.get("k2"), None);
        assert_eq!(a.len(), 999);
        assert_eq!(b.len(), 1000);
        let shared = a
            .shards
            .iter()
            .zip(&b.shards)
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert!(shared >= SHARDS - 2, "only written shards are copied");
    }
}
