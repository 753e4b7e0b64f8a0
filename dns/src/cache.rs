//! The cache of forwarded answers: positive and negative, bounded, with TTL caps and a stale
//! window for serve-stale.
//!
//! Only forwarded names are cached here. Cluster names never are: they are answered from the
//! current snapshot every time (the per-worker template cache in `server.rs` is keyed by
//! snapshot generation, so a change is visible to the next query).
//!
//! Eviction: when full, an insert first drops entries past their stale window, then an
//! arbitrary one (a `HashMap` iteration order pick). Cheap, and good enough for a resolver
//! cache whose hot set is small; the size bound is what matters.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::{RData, Record, RecordType};

/// Cache key: lower-case wire name + QTYPE + QCLASS + DO bit.
pub type Key = Vec<u8>;

pub fn key(lower_name_and_type: &[u8], qclass: u16, dnssec_ok: bool) -> Key {
    let mut k = Vec::with_capacity(lower_name_and_type.len() + 3);
    k.extend_from_slice(lower_name_and_type);
    k.extend_from_slice(&qclass.to_be_bytes());
    k.push(u8::from(dnssec_ok));
    k
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub rcode: u16,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
    pub stored: Instant,
    pub ttl: u32,
    pub negative: bool,
}

impl Entry {
    fn expires(&self) -> Instant {
        self.stored + Duration::from_secs(u64::from(self.ttl))
    }

    /// The records with TTLs lowered by the entry's age (or set to `fixed`).
    pub fn records_aged(&self, now: Instant, fixed: Option<u32>) -> [Vec<Record>; 3] {
        let age = now.saturating_duration_since(self.stored).as_secs() as u32;
        let fix = |rs: &[Record]| {
            rs.iter()
                .cloned()
                .map(|mut r| {
                    r.ttl = match fixed {
                        Some(t) => t.min(r.ttl.max(1)),
                        None => r.ttl.min(self.ttl).saturating_sub(age),
                    };
                    r
                })
                .collect()
        };
        [
            fix(&self.answers),
            fix(&self.authorities),
            fix(&self.additionals),
        ]
    }
}

/// What a lookup found.
pub enum Lookup {
    Fresh(Entry),
    Miss,
}

pub struct Cache {
    map: Mutex<HashMap<Key, Entry>>,
    capacity: usize,
    max_ttl: u32,
    max_negative_ttl: u32,
    negative_default_ttl: u32,
    stale: Duration,
}

impl Cache {
    pub fn new(
        capacity: usize,
        max_ttl: u32,
        max_negative_ttl: u32,
        negative_default_ttl: u32,
        stale: Duration,
    ) -> Cache {
        Cache {
            map: Mutex::new(HashMap::new()),
            capacity,
            max_ttl,
            max_negative_ttl,
            negative_default_ttl,
            stale,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &[u8], now: Instant) -> Lookup {
        match self.lock().get(key) {
            Some(e) if e.expires() > now => Lookup::Fresh(e.clone()),
            _ => Lookup::Miss,
        }
    }

    /// An entry past its TTL but within the stale window.
    pub fn get_stale(&self, key: &[u8], now: Instant) -> Option<Entry> {
        self.lock()
            .get(key)
            .filter(|e| e.expires() + self.stale > now)
            .cloned()
    }

    /// (positive, negative) entry counts.
    pub fn counts(&self) -> (usize, usize) {
        let map = self.lock();
        let neg = map.values().filter(|e| e.negative).count();
        (map.len() - neg, neg)
    }

    /// Stores an upstream answer if it is cacheable (NOERROR or NXDOMAIN, not truncated).
    /// Returns whether it was stored.
    pub fn insert(&self, key: Key, msg: &Message, now: Instant) -> bool {
        if self.capacity == 0 || msg.metadata.truncation {
            return false;
        }
        let rcode = u16::from(msg.metadata.response_code);
        let negative = match rcode {
            0 => msg.answers.is_empty(),
            3 => true,
            _ => return false,
        };
        let ttl = if negative {
            // RFC 2308: the SOA's TTL capped by its MINIMUM.
            msg.authorities
                .iter()
                .find_map(|r| match &r.data {
                    RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                    _ => None,
                })
                .unwrap_or(self.negative_default_ttl)
                .min(self.max_negative_ttl)
        } else {
            msg.answers
                .iter()
                .map(|r| r.ttl)
                .min()
                .unwrap_or(0)
                .min(self.max_ttl)
        };
        if ttl == 0 {
            return false;
        }
        let entry = Entry {
            rcode,
            answers: msg.answers.clone(),
            authorities: msg.authorities.clone(),
            additionals: msg
                .additionals
                .iter()
                .filter(|r| r.record_type() != RecordType::OPT)
                .cloned()
                .collect(),
            stored: now,
            ttl,
            negative,
        };
        let mut map = self.lock();
        if map.len() >= self.capacity && !map.contains_key(&key) {
            let stale = self.stale;
            map.retain(|_, e| e.expires() + stale > now);
            if map.len() >= self.capacity {
                if let Some(k) = map.keys().next().cloned() {
                    map.remove(&k);
                }
            }
        }
        map.insert(key, entry);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, OpCode, ResponseCode};
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::Name;

    fn answer(ttl: u32) -> Message {
        let mut m = Message::response(1, OpCode::Query);
        m.answers.push(Record::from_rdata(
            Name::from_ascii("example.com.").unwrap(),
            ttl,
            RData::A(A::new(1, 2, 3, 4)),
        ));
        m
    }

    #[test]
    fn ttl_caps_expiry_and_stale() {
        let c = Cache::new(10, 60, 30, 5, Duration::from_secs(100));
        let t0 = Instant::now();
        assert!(c.insert(b"k1".to_vec(), &answer(1000), t0));
        let Lookup::Fresh(e) = c.get(b"k1", t0 + Duration::from_secs(10)) else {
            panic!("miss")
        };
        assert_eq!(e.ttl, 60);
        let [ans, _, _] = e.records_aged(t0 + Duration::from_secs(10), None);
        assert_eq!(ans[0].ttl, 50);
        assert!(matches!(
            c.get(b"k1", t0 + Duration::from_secs(61)),
            Lookup::Miss
        ));
        assert!(c.get_stale(b"k1", t0 + Duration::from_secs(61)).is_some());
        assert!(c.get_stale(b"k1", t0 + Duration::from_secs(161)).is_none());
    }

    #[test]
    fn negative_ttl_from_soa_and_bound() {
        let c = Cache::new(2, 60, 30, 5, Duration::from_secs(100));
        let t0 = Instant::now();
        let mut m = Message::response(1, OpCode::Query);
        m.metadata.response_code = ResponseCode::NXDomain;
        let z = Name::from_ascii("example.com.").unwrap();
        m.authorities.push(Record::from_rdata(
            z.clone(),
            300,
            RData::SOA(SOA::new(z.clone(), z, 1, 1, 1, 1, 20)),
        ));
        assert!(c.insert(b"n".to_vec(), &m, t0));
        let Lookup::Fresh(e) = c.get(b"n", t0) else {
            panic!()
        };
        assert_eq!((e.ttl, e.negative, e.rcode), (20, true, 3));
        assert!(c.insert(b"a".to_vec(), &answer(10), t0));
        assert!(c.insert(b"b".to_vec(), &answer(10), t0));
        assert_eq!(c.lock().len(), 2);
        let mut sf = Message::response(1, OpCode::Query);
        sf.metadata.response_code = ResponseCode::ServFail;
        assert!(!c.insert(b"s".to_vec(), &sf, t0));
    }
}
