//! Live heap of the tables by structure, counted exactly by a counting global allocator: the
//! slim objects, what `ClusterState` keeps on top of them, and the published snapshot's parts
//! (DNS names, service routes, L4 frontends). docs/memory.md has the figures.
//!
//! Run: `cargo run --release -p tables --example memory -- [SERVICES] [ENDPOINTS_PER_SERVICE]`
//! (default 10000 10, the `tables::synth` cluster that `bench-gen cluster` writes).
//!
//! Each figure is the heap freed when that part is dropped (parts shared with a part dropped
//! later are counted there), so the rows add up to the total.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::sync::Arc;

use tables::synth::{self, SynthCluster, SynthSpec};
use tables::{Object, Snapshot, TableConfig};

/// The system allocator, counting live bytes and blocks.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_BLOCKS: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Relaxed);
            LIVE_BLOCKS.fetch_add(1, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE_BYTES.fetch_sub(layout.size() as isize, Relaxed);
        LIVE_BLOCKS.fetch_sub(1, Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn now() -> (isize, isize) {
    (LIVE_BYTES.load(Relaxed), LIVE_BLOCKS.load(Relaxed))
}

/// Prints the heap freed by `f` as one row: MiB, blocks, bytes per endpoint.
fn freed(label: &str, endpoints: usize, f: impl FnOnce()) -> isize {
    let before = now();
    f();
    let after = now();
    let bytes = before.0 - after.0;
    println!(
        "| {label} | {:.1} MiB | {} | {:.0} |",
        bytes as f64 / (1024.0 * 1024.0),
        before.1 - after.1,
        bytes as f64 / endpoints.max(1) as f64
    );
    bytes
}

fn main() {
    let mut args = std::env::args().skip(1);
    let services: usize = args.next().map_or(10_000, |a| a.parse().expect("SERVICES"));
    let per: usize = args.next().map_or(10, |a| a.parse().expect("ENDPOINTS"));
    let mut spec = SynthSpec::new(services);
    spec.endpoints_per_service = per;
    let endpoints = spec.endpoints();
    println!("{services} services / {endpoints} endpoints (tables::synth)\n");
    println!(
        "sizes: Object {} B, Service {} B, EndpointSlice {} B, Endpoint {} B, EndpointInfo {} B, EndpointRoute {} B, DnsRecord {} B, DnsEntry {} B\n",
        std::mem::size_of::<Object>(),
        std::mem::size_of::<tables::Service>(),
        std::mem::size_of::<tables::EndpointSlice>(),
        std::mem::size_of::<tables::Endpoint>(),
        std::mem::size_of::<tables::EndpointInfo>(),
        std::mem::size_of::<tables::EndpointRoute>(),
        std::mem::size_of::<tables::DnsRecord>(),
        std::mem::size_of::<tables::DnsEntry>(),
    );

    // The slim objects alone, before any state: services and slices apart.
    let cluster = SynthCluster::generate(&spec);
    println!("| structure | heap | blocks | B/endpoint |\n|---|---|---|---|");
    // A second copy generated apart (a clone would share the endpoints' `EndpointInfo` blocks
    // with `cluster`, and dropping it would not free them).
    let SynthCluster {
        services: svcs,
        slices,
        ..
    } = SynthCluster::generate(&spec);
    let mut total = 0;
    total += freed("slim Service objects (as generated)", endpoints, || {
        drop(svcs)
    });
    total += freed(
        "slim EndpointSlice objects (as generated)",
        endpoints,
        || drop(slices),
    );
    println!("| **objects, total** | {:.1} MiB | | |", mib(total));

    let start = now();
    let (state, snap) = synth::build(TableConfig::default(), cluster.into_objects());
    let built = now();
    println!(
        "| **state + snapshot, total** | {:.1} MiB | {} | {:.0} |",
        mib(built.0 - start.0),
        built.1 - start.1,
        (built.0 - start.0) as f64 / endpoints as f64
    );
    freed(
        "ClusterState: objects (in `Arc<Object>`), indexes, per-service compile results",
        endpoints,
        || drop(state),
    );
    let Snapshot { dns, routes, .. } = Arc::try_unwrap(snap).expect("the only reference");
    let tables::RouteTable {
        services,
        frontends,
        node_ports,
        http,
        tls,
    } = routes;
    freed("snapshot: L4 frontends and node ports", endpoints, || {
        drop((frontends, node_ports, http, tls))
    });
    let names = dns.names.len();
    freed(
        &format!("snapshot: DNS names ({names} names, their records)"),
        endpoints,
        || drop(dns),
    );
    freed(
        "snapshot: service routes (ports, endpoints, `Arc<Service>`)",
        endpoints,
        || drop(services),
    );
    let end = now();
    println!("\nleft after dropping everything: {} B", end.0 - start.0);
}

fn mib(bytes: isize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
