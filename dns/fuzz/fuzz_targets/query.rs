//! Raw bytes through the whole synchronous query path (parse, cluster zone, templates, EDNS,
//! truncation, transfers) of a server holding a small cluster. Run with
//! `cargo +nightly fuzz run query` from `dns/` (see dns/fuzz/README.md).
#![no_main]

use std::sync::{Mutex, OnceLock};

use dns::fuzzing::{sample_cell, Harness};
use libfuzzer_sys::fuzz_target;

static HARNESS: OnceLock<Mutex<Harness>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let h = HARNESS.get_or_init(|| Mutex::new(Harness::new(sample_cell())));
    let mut h = h.lock().unwrap();
    let tcp = data.first().is_some_and(|b| b & 1 == 1);
    if let Some(resp) = h.handle(data, tcp) {
        // Whatever we answer carries the query's ID and parses as a DNS message.
        assert_eq!(resp[..2], data[..2]);
        hickory_check(&resp);
    }
});

fn hickory_check(resp: &[u8]) {
    assert!(resp.len() >= 12, "short answer");
    assert!(resp[2] & 0x80 != 0, "QR bit");
}
