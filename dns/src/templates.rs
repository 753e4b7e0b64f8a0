//! Pre-encoded answers ("templates"): the full answer for (lower-case name, type) at one snapshot
//! generation, with ID 0 and no OPT, so answering a repeated question costs one hash lookup and
//! one copy (`server.rs` patches ID, flags, question case and EDNS).
//!
//! Each UDP worker keeps its own `Templates` (no lock, no shared cache line on the query path).
//! An entry is one allocation holding the key and the answer side by side, so a lookup touches
//! the table slot and then one place in memory: with the key and the answer in separate boxes
//! every hit took two more cache misses, and at 10,000 services (~44,000 distinct questions,
//! several MB per worker) the lookup was the largest user-space cost of the query path
//! (docs/benchmarks.md, "DNS on 2 threads").
//!
//! TCP connections share one `TcpTemplates` (a connection usually carries one query).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Templates kept per worker before the map is cleared (bounds memory under random names).
const MAX_TEMPLATES: usize = 200_000;

/// Key length (2 bytes, big-endian), key, answer: one allocation.
struct Entry(Box<[u8]>);

impl Entry {
    fn new(key: &[u8], answer: &[u8]) -> Entry {
        let mut v = Vec::with_capacity(2 + key.len() + answer.len());
        v.extend_from_slice(&(key.len() as u16).to_be_bytes());
        v.extend_from_slice(key);
        v.extend_from_slice(answer);
        Entry(v.into_boxed_slice())
    }

    fn key_len(&self) -> usize {
        usize::from(u16::from_be_bytes([self.0[0], self.0[1]]))
    }

    fn key(&self) -> &[u8] {
        &self.0[2..2 + self.key_len()]
    }

    fn answer(&self) -> &[u8] {
        &self.0[2 + self.key_len()..]
    }
}

// Hash and equality are those of the key alone, so `HashSet::get(&[u8])` finds an entry.
impl Hash for Entry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Entry {}

impl Borrow<[u8]> for Entry {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

/// Pre-encoded answers of one worker, for one snapshot generation.
#[derive(Default)]
pub struct Templates {
    generation: u64,
    set: HashSet<Entry>,
}

impl Templates {
    /// Forgets every answer unless they belong to `generation` (and there is room for more).
    pub fn keep(&mut self, generation: u64) {
        if self.generation != generation || self.set.len() >= MAX_TEMPLATES {
            self.set.clear();
            self.generation = generation;
        }
    }

    /// The answer for `key` (lower-case wire name + QTYPE) at the kept generation.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.set.get(key).map(Entry::answer)
    }

    pub fn insert(&mut self, key: &[u8], answer: &[u8]) {
        self.set.replace(Entry::new(key, answer));
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// Bytes of answers kept in `TcpTemplates` before it is cleared.
const TCP_TEMPLATE_BYTES: usize = 32 << 20;

/// Pre-encoded answers shared by every TCP connection of the process, for one snapshot
/// generation. A TCP connection usually carries one query, so a per-connection `Templates` would
/// encode every answer again: for a Service with 10,000 ports, each SRV query would build and
/// encode ~10,000 records (tens of ms of CPU) only to be cut at 65,535 bytes. Here it is
/// encoded once per generation.
#[derive(Default)]
pub struct TcpTemplates {
    inner: std::sync::Mutex<SharedTemplates>,
}

/// (generation, bytes held, answers by key)
type SharedTemplates = (u64, usize, HashMap<Box<[u8]>, Arc<[u8]>>);

impl TcpTemplates {
    pub fn get(&self, generation: u64, key: &[u8]) -> Option<Arc<[u8]>> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 != generation {
            return None;
        }
        g.2.get(key).cloned()
    }

    pub fn insert(&self, generation: u64, key: &[u8], template: &[u8]) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 != generation || g.1 + template.len() > TCP_TEMPLATE_BYTES {
            g.2.clear();
            g.0 = generation;
            g.1 = 0;
        }
        g.1 += template.len();
        g.2.insert(key.into(), template.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_find_by_key_and_generation_resets() {
        let mut t = Templates::default();
        t.keep(1);
        t.insert(b"\x03web\x00\x00\x01", b"answer-a");
        t.insert(b"\x03web\x00\x00\x1c", b"answer-aaaa");
        assert_eq!(t.get(b"\x03web\x00\x00\x01"), Some(&b"answer-a"[..]));
        assert_eq!(t.get(b"\x03web\x00\x00\x1c"), Some(&b"answer-aaaa"[..]));
        assert_eq!(t.get(b"\x03web\x00\x00\x21"), None);
        // Replacing keeps one entry per key.
        t.insert(b"\x03web\x00\x00\x01", b"answer-b");
        assert_eq!(t.get(b"\x03web\x00\x00\x01"), Some(&b"answer-b"[..]));
        assert_eq!(t.len(), 2);
        t.keep(1);
        assert_eq!(t.len(), 2, "same generation keeps");
        t.keep(2);
        assert!(t.is_empty(), "a new generation forgets");
        // The longest key: a 255-byte name and the type.
        let long = vec![7u8; 257];
        t.insert(&long, b"x");
        assert_eq!(t.get(&long), Some(&b"x"[..]));
    }
}
