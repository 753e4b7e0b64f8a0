//! Table compilation: the full build of a large cluster, the compile+publish cost of one change
//! in it, and the memory the state and its snapshot take.
//!
//! The cluster comes from `tables::synth` (10,000 Services / 100,000 endpoints, one
//! EndpointSlice per service, 100 namespaces, 10% headless, 1–2 ports per service). Every
//! benchmark first checks that the built snapshot has the table sizes the spec implies, so a
//! broken generator fails loudly instead of timing a smaller cluster.
//!
//! Memory is printed before any timing (lines starting with `memory:`): resident memory from
//! `/proc/self/status` and, exactly, the live heap bytes counted by the global allocator below
//! (counting is switched on only while the memory report runs).
//!
//! Run: `cargo bench -p tables --bench compile` (results: docs/benchmarks.md).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, SamplingMode};
use tables::synth::{self, Expected, PortShape, SynthCluster, SynthSpec};
use tables::{ArcSwap, ClusterState, Kind, Object, ObjectKey, Snapshot, SourceId, TableConfig};

// ---- memory ----

/// The system allocator, counting live bytes and blocks while `COUNTING` is on.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_BLOCKS: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() && COUNTING.load(Relaxed) {
            LIVE_BYTES.fetch_add(layout.size() as isize, Relaxed);
            LIVE_BLOCKS.fetch_add(1, Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() && COUNTING.load(Relaxed) {
            LIVE_BYTES.fetch_add(layout.size() as isize, Relaxed);
            LIVE_BLOCKS.fetch_add(1, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        if COUNTING.load(Relaxed) {
            LIVE_BYTES.fetch_sub(layout.size() as isize, Relaxed);
            LIVE_BLOCKS.fetch_sub(1, Relaxed);
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() && COUNTING.load(Relaxed) {
            LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Resident memory (VmRSS) in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[derive(Clone, Copy)]
struct Mem {
    rss_kib: u64,
    heap: isize,
    blocks: isize,
}

fn mem() -> Mem {
    Mem {
        rss_kib: rss_kib(),
        heap: LIVE_BYTES.load(Relaxed),
        blocks: LIVE_BLOCKS.load(Relaxed),
    }
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

/// Prints one step of the memory report: live heap and RSS, as growth since `base`.
fn report(label: &str, base: Mem, now: Mem, per: usize) {
    let heap = (now.heap - base.heap) as f64;
    println!(
        "memory: {label:<44} heap {:>10} in {:>8} blocks ({:>6.0} B/endpoint)   RSS {:>8} KiB (+{})",
        mib(heap),
        now.blocks - base.blocks,
        heap / per.max(1) as f64,
        now.rss_kib,
        mib((now.rss_kib.saturating_sub(base.rss_kib) * 1024) as f64),
    );
}

/// Builds a cluster of `spec`'s size step by step and prints what each step keeps alive.
fn memory_report(spec: &SynthSpec) {
    let per = spec.endpoints();
    println!(
        "memory: --- {} services / {} endpoints ---",
        spec.services, per
    );
    COUNTING.store(true, Relaxed);
    let base = mem();
    println!(
        "memory: {:<44} RSS {} KiB",
        "before generating", base.rss_kib
    );

    let objects = SynthCluster::generate(spec).into_objects();
    let after_objects = mem();
    report("slim objects (Vec<Object>)", base, after_objects, per);

    let started = Instant::now();
    let (mut state, snap) = synth::build(TableConfig::default(), objects);
    let took = started.elapsed();
    assert_eq!(Expected::of(&snap), spec.expected(), "synthetic cluster");
    let cell = Arc::new(ArcSwap::new(snap));
    let after_build = mem();
    report(
        "ClusterState (objects inside) + snapshot",
        base,
        after_build,
        per,
    );

    // What a reader that keeps the old generation pins after one EndpointSlice change.
    let i = spec.find(0, |h, _| !h).expect("a ClusterIP service");
    let held = cell.load_full();
    let before_change = mem();
    let slice = synth::with_ready(&synth::slice(spec, i), 0, false);
    state.apply(
        &synth::source_of(Kind::EndpointSlice),
        Object::EndpointSlice(slice),
    );
    cell.store(state.commit().expect("a real change"));
    let after_change = mem();
    println!(
        "memory: {:<44} heap {:>6.1} KiB",
        "+ one slice change while the old one is held",
        (after_change.heap - before_change.heap) as f64 / 1024.0,
    );
    drop(held);

    drop(state);
    let snapshot_only = mem();
    report(
        "snapshot alone (ClusterState dropped)",
        base,
        snapshot_only,
        per,
    );
    drop(cell);
    let end = mem();
    report("after dropping everything", base, end, per);
    COUNTING.store(false, Relaxed);
    println!(
        "memory: build (generate excluded) took {:.0} ms with counting on",
        took.as_secs_f64() * 1e3
    );
}

// ---- timing ----

fn size_name(spec: &SynthSpec) -> String {
    let k = |n: usize| {
        if n >= 1000 && n.is_multiple_of(1000) {
            format!("{}k", n / 1000)
        } else {
            n.to_string()
        }
    };
    let mut name = format!("{}svc_{}ep", k(spec.services), k(spec.endpoints()));
    if spec.namespaces != SynthSpec::new(spec.services).namespaces {
        name.push_str(&format!("_{}ns", spec.namespaces));
    }
    name
}

/// Fails loudly if the snapshot does not have the sizes the spec implies.
fn check(spec: &SynthSpec, snap: &Snapshot) {
    let got = Expected::of(snap);
    let want = spec.expected();
    assert_eq!(
        got, want,
        "snapshot of the synthetic {}-service cluster has the wrong size",
        spec.services
    );
}

fn bench_full_build(c: &mut Criterion, specs: &[SynthSpec]) {
    let mut group = c.benchmark_group("full_build");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    for spec in specs {
        let objects = SynthCluster::generate(spec).into_objects();
        let (_, snap) = synth::build(TableConfig::default(), objects.clone());
        check(spec, &snap);
        drop(snap);
        group.bench_function(size_name(spec), |b| {
            b.iter_batched(
                || objects.clone(),
                // Returned, so that dropping the state and snapshot is not timed.
                |objects| synth::build(TableConfig::default(), objects),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// A built cluster, published through a cell as the controller does.
struct Fixture {
    spec: SynthSpec,
    cluster: SynthCluster,
    state: ClusterState,
    cell: Arc<ArcSwap<Snapshot>>,
}

impl Fixture {
    fn new(spec: &SynthSpec) -> Self {
        let cluster = SynthCluster::generate(spec);
        let (state, snap) = cluster.build(TableConfig::default());
        check(spec, &snap);
        Fixture {
            spec: spec.clone(),
            cluster,
            state,
            cell: Arc::new(ArcSwap::new(snap)),
        }
    }

    /// Applies `b` then `a`, checking that each is a real change and that the tables are back
    /// to the expected sizes afterwards.
    fn check_pair(&mut self, source: &SourceId, a: &Op, b: &Op) {
        for op in [b, a] {
            op.clone().run(&mut self.state, source);
            let snap = self.state.commit().expect("each version is a real change");
            self.cell.store(snap);
        }
        check(&self.spec, &self.cell.load());
    }
}

/// One change to the state.
#[derive(Clone)]
enum Op {
    Apply(Object),
    Delete(ObjectKey),
}

impl Op {
    fn kind(&self) -> Kind {
        match self {
            Op::Apply(o) => o.kind(),
            Op::Delete(k) => k.kind,
        }
    }

    fn run(self, state: &mut ClusterState, source: &SourceId) {
        match self {
            Op::Apply(o) => state.apply(source, o),
            Op::Delete(k) => state.delete(source, &k),
        }
    }
}

/// How a change is published.
#[derive(Clone, Copy)]
enum Publish {
    /// `ArcSwap::store`; the previous generation is dropped by the store.
    Store,
    /// A reader holds the current generation across the change (released after the timing),
    /// as an in-flight DNS query or connection would.
    StoreWhileOldHeld,
    /// Committed but never published: no other snapshot shares the shards the change touches,
    /// so copy-on-write does not copy. For comparison only.
    Unpublished,
}

/// Times `apply` (or `delete`) + `commit` + publish of changes alternating between `a` and `b`,
/// so every iteration is a real change.
fn bench_change(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    fx: &mut Fixture,
    name: &str,
    a: Op,
    b: Op,
    publish: Publish,
) {
    let source = synth::source_of(a.kind());
    fx.check_pair(&source, &a, &b);
    let Fixture { state, cell, .. } = fx;
    let mut flip = false;
    group.bench_function(name, |bench| {
        bench.iter_batched(
            || {
                flip = !flip;
                if flip {
                    b.clone()
                } else {
                    a.clone()
                }
            },
            |op: Op| {
                let held = matches!(publish, Publish::StoreWhileOldHeld).then(|| cell.load_full());
                op.run(state, &source);
                let snap = state.commit().expect("every iteration is a real change");
                match publish {
                    Publish::Store | Publish::StoreWhileOldHeld => cell.store(snap),
                    Publish::Unpublished => drop(snap),
                }
                held
            },
            BatchSize::SmallInput,
        )
    });
    // Leave the state at `a`.
    a.run(state, &source);
    if let Some(snap) = state.commit() {
        cell.store(snap);
    }
}

fn bench_changes(c: &mut Criterion, spec: &SynthSpec, all: bool) {
    let mut fx = Fixture::new(spec);
    let mut group = c.benchmark_group(format!("change_{}", size_name(spec)));

    // A ClusterIP service with one named port, and a headless one (both have 10 endpoints).
    let clusterip = |fx: &Fixture, from: usize| {
        fx.spec
            .find(from, |h, s| !h && s == PortShape::NamedHttp)
            .expect("a ClusterIP service with a named port")
    };
    let headless = spec
        .find(0, |h, _| h)
        .expect("a headless service (headless_every > 0)");
    let slice = |fx: &Fixture, i: usize| fx.cluster.slices[i].clone();

    let i = clusterip(&fx, 0);
    let a = slice(&fx, i);
    let b = synth::with_ready(&a, 0, false);
    bench_change(
        &mut group,
        &mut fx,
        "slice_ready_flip/clusterip",
        Op::Apply(Object::EndpointSlice(a)),
        Op::Apply(Object::EndpointSlice(b)),
        Publish::Store,
    );

    let i = clusterip(&fx, i + 1);
    let a = fx.cluster.services[i].clone();
    let b = synth::with_port(&a, 0, 8081);
    bench_change(
        &mut group,
        &mut fx,
        "service_port_change/clusterip",
        Op::Apply(Object::Service(a.into())),
        Op::Apply(Object::Service(b.into())),
        Publish::Store,
    );

    // A Service created and deleted again (no EndpointSlice): it joins and leaves its
    // namespace's DNS name `<ns>.svc.<zone>`, which every service of the namespace shares.
    let n = spec.services + 1;
    assert!(!spec.is_headless(n));
    let created = synth::service(spec, n);
    let key = Object::Service(created.clone().into()).key();
    bench_change(
        &mut group,
        &mut fx,
        "service_create_delete/clusterip",
        Op::Delete(key),
        Op::Apply(Object::Service(created.into())),
        Publish::Store,
    );

    if all {
        let a = slice(&fx, headless);
        let b = synth::with_ready(&a, 0, false);
        bench_change(
            &mut group,
            &mut fx,
            "slice_ready_flip/headless",
            Op::Apply(Object::EndpointSlice(a)),
            Op::Apply(Object::EndpointSlice(b)),
            Publish::Store,
        );

        let i = clusterip(&fx, i + 1);
        let a = slice(&fx, i);
        let b = synth::with_address(&a, 3, synth::spare_pod_ip(0));
        bench_change(
            &mut group,
            &mut fx,
            "slice_address_replace/clusterip",
            Op::Apply(Object::EndpointSlice(a)),
            Op::Apply(Object::EndpointSlice(b)),
            Publish::Store,
        );

        let i = clusterip(&fx, i + 1);
        let a = slice(&fx, i);
        let b = synth::with_ready(&a, 0, false);
        bench_change(
            &mut group,
            &mut fx,
            "slice_ready_flip/clusterip_old_snapshot_held",
            Op::Apply(Object::EndpointSlice(a)),
            Op::Apply(Object::EndpointSlice(b)),
            Publish::StoreWhileOldHeld,
        );

        let i = clusterip(&fx, i + 1);
        let a = slice(&fx, i);
        let b = synth::with_ready(&a, 0, false);
        bench_change(
            &mut group,
            &mut fx,
            "slice_ready_flip/clusterip_unpublished",
            Op::Apply(Object::EndpointSlice(a)),
            Op::Apply(Object::EndpointSlice(b)),
            Publish::Unpublished,
        );
    }
    // The part of every publish that does not depend on the change: `commit` clones the
    // snapshot (one `Arc` per shard of every sharded map) and the store drops the previous one.
    group.bench_function("publish_floor/snapshot_clone_and_drop", |b| {
        b.iter(|| fx.state.snapshot())
    });
    group.finish();
    check(spec, &fx.cell.load());
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .without_plots()
        .configure_from_args();

    let small = SynthSpec::new(100);
    let large = SynthSpec::new(10_000);
    assert_eq!(large.endpoints(), 100_000);
    memory_report(&small);
    memory_report(&large);

    // Everything in one namespace (many clusters keep their services in `default`).
    let one_ns = SynthSpec {
        namespaces: 1,
        ..large.clone()
    };
    bench_full_build(&mut c, &[small.clone(), large.clone(), one_ns.clone()]);
    bench_changes(&mut c, &large, true);
    bench_changes(&mut c, &one_ns, false);
    bench_changes(&mut c, &small, false);
    c.final_summary();
}
