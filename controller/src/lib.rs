//! The controller: turns what the sources say into `ClusterState` changes and publishes
//! snapshots.
//!
//! ```text
//!  files.rs (manifest dir, watched) ──┐                         ┌─ commit ─> SnapshotCell
//!                                     ├─ Change ─> Controller ──┤            (dns, proxy, admin)
//!  kubernetes.rs (a watcher per kind)─┘  (mpsc)    (one task)   └─ metrics
//! ```
//!
//! Both sources convert objects with `convert/`, so they are validated alike. The controller
//! task drains every queued change before committing, so a burst costs one publish. Nothing a
//! source reports — API errors, broken files, dropped watches — unpublishes what was last seen:
//! only a complete relist or a successfully re-read file replaces a source's objects.
#![forbid(unsafe_code)]

pub mod convert;
pub mod filedocs;
pub mod files;
pub mod gateway_api;
pub mod health;
pub mod kubeconfig;
pub mod kubernetes;
mod kubernetes_event;
mod kubernetes_list;
pub mod kubernetes_pb;
mod kubernetes_pb_items;
pub mod locate;
pub mod metrics;
pub mod parse;
pub mod status;

use std::collections::BTreeSet;
use std::time::Instant;

use tables::{ClusterState, Kind, Object, ObjectKey, Origin, SnapshotCell, SourceId};
use tokio::sync::mpsc;

pub use health::SourceHealth;
pub use metrics::Metrics;

/// One change reported by a source.
#[derive(Debug)]
pub enum Change {
    Apply {
        source: SourceId,
        object: Object,
    },
    Delete {
        source: SourceId,
        key: ObjectKey,
    },
    /// Replace everything `source` holds with `objects`, except that the objects named in
    /// `keep` (present in the source but invalid right now) keep their last good version.
    Reset {
        source: SourceId,
        objects: Vec<Object>,
        keep: Vec<ObjectKey>,
    },
    /// Some of what `source` holds changed: `delete` go, then `apply` are added or replaced
    /// (a re-read manifest file's changed documents, in one change so they publish together).
    Update {
        source: SourceId,
        apply: Vec<Object>,
        delete: Vec<ObjectKey>,
    },
    /// A part of a source (`manifests`, `kubernetes/Service`, ...) has delivered its first
    /// complete state.
    Synced {
        part: String,
    },
    /// Whether a part can read its source right now: `problem` is `None` after a complete,
    /// error-free read. A failing part keeps its last good objects; this only makes the
    /// staleness visible (log, metrics, `/readyz` detail).
    Health {
        part: String,
        problem: Option<String>,
    },
}

/// A change and when it was received, for the programming-latency metric.
#[derive(Debug)]
pub struct Event {
    pub change: Change,
    pub received: Instant,
}

impl Event {
    pub fn now(change: Change) -> Self {
        Event {
            change,
            received: Instant::now(),
        }
    }
}

pub type Sender = mpsc::UnboundedSender<Event>;
pub type Receiver = mpsc::UnboundedReceiver<Event>;

pub fn channel() -> (Sender, Receiver) {
    mpsc::unbounded_channel()
}

/// The parts a source must sync before the tables count as ready.
pub fn parts_of(origin: Origin) -> Vec<String> {
    match origin {
        Origin::Manifests => vec!["manifests".into()],
        Origin::Kubernetes => Kind::ALL
            .iter()
            .map(|k| format!("kubernetes/{}", k.as_str()))
            .collect(),
    }
}

/// What to say of an object that two sources define (`ClusterState::take_conflicts`).
pub fn conflict(key: &ObjectKey, served: &SourceId, also: &SourceId) -> String {
    format!(
        "{key} is defined by both {served} and {also}; serving the copy from {served} (the lowest-sorting source)"
    )
}

/// How often a partial state is published while some source has not synced yet ([`Controller::run`]).
pub const PARTIAL_PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// How long after start the first partial state may be published ([`Controller::run`]).
pub const PARTIAL_PUBLISH_FIRST: std::time::Duration = std::time::Duration::from_secs(1);

/// Owns the cluster state; applies changes in batches and publishes snapshots.
pub struct Controller {
    state: ClusterState,
    cell: SnapshotCell,
    metrics: Metrics,
    pending: BTreeSet<String>,
    health: SourceHealth,
    /// When the process started (or the controller was made), for the time to the first
    /// complete state.
    created: Instant,
    /// Set when the last part syncs: the next publish says so in the log.
    announce_ready: bool,
    /// How often a partial state is published before every source has synced, and how long
    /// after `created` the first one may be.
    partial_every: std::time::Duration,
    partial_first: std::time::Duration,
    /// Told each published generation, for readers that act on a change instead of polling
    /// (the L4 sync task).
    published: Option<tokio::sync::watch::Sender<u64>>,
}

impl Controller {
    /// `parts` are the source parts that must report `Synced` before the snapshot is ready;
    /// `health` receives what the sources report of their reads (the admin listener shows it).
    pub fn new(
        state: ClusterState,
        cell: SnapshotCell,
        metrics: Metrics,
        parts: Vec<String>,
        health: SourceHealth,
    ) -> Self {
        Controller {
            state,
            cell,
            metrics,
            pending: parts.into_iter().collect(),
            health,
            created: Instant::now(),
            announce_ready: false,
            partial_every: PARTIAL_PUBLISH_EVERY,
            partial_first: PARTIAL_PUBLISH_FIRST,
            published: None,
        }
    }

    /// Sends every published generation to `tx` (after the snapshot is in the cell).
    pub fn notify_published(mut self, tx: tokio::sync::watch::Sender<u64>) -> Self {
        self.published = Some(tx);
        self
    }

    /// Counts the time to the first complete state (and to the first partial publish) from
    /// `start`, the process's start, instead of from the controller's making.
    pub fn started_at(mut self, start: Instant) -> Self {
        self.created = start;
        self
    }

    /// Publishes partial states at most every `every`, the first no sooner than `first` after
    /// start, until every source has synced (default [`PARTIAL_PUBLISH_FIRST`],
    /// [`PARTIAL_PUBLISH_EVERY`]).
    pub fn partial_publish(
        mut self,
        first: std::time::Duration,
        every: std::time::Duration,
    ) -> Self {
        self.partial_first = first;
        self.partial_every = every;
        self
    }

    /// Runs until every sender is gone.
    ///
    /// Until every source has synced, what the sources delivered so far is published at most
    /// every [`PARTIAL_PUBLISH_EVERY`], and not before [`PARTIAL_PUBLISH_FIRST`] after start:
    /// at start the kinds arrive one list at a time, and compiling the tables after each would
    /// compile every Service once per kind. A partial publish 250 ms after the first (empty)
    /// kinds came compiled the 10,000 Services of the bench alone, before their EndpointSlices
    /// arrived, and again with them: 0.15–0.5 s of CPU on the start-up's critical path
    /// (docs/sources.md, "Start-up"). The first complete state is published at once; a source
    /// that never syncs (an API server that is down) still lets the others' objects be served
    /// after a second (CoreDNS waits up to 5 s for its API sync before it serves).
    pub async fn run(mut self, mut rx: Receiver) {
        let mut batch = Vec::new();
        // Changes applied but not yet published: the earliest one's arrival, and when the
        // held partial state is published anyway.
        let mut held: Option<(Option<Instant>, tokio::time::Instant)> = None;
        loop {
            let received = match held {
                Some((_, due)) => tokio::select! {
                    // Changes first: the one that completes the sync saves a partial publish.
                    biased;
                    n = rx.recv_many(&mut batch, 4096) => n,
                    _ = tokio::time::sleep_until(due) => {
                        let (earliest, _) = held.take().expect("held");
                        self.publish(earliest);
                        continue;
                    }
                },
                None => rx.recv_many(&mut batch, 4096).await,
            };
            if received == 0 {
                break;
            }
            let mut earliest = batch.iter().map(|e| e.received).min();
            for event in batch.drain(..) {
                self.apply(event.change);
            }
            for (key, served, also) in self.state.take_conflicts() {
                tracing::warn!(
                    object = %key,
                    %served,
                    %also,
                    "{}",
                    conflict(&key, &served, &also)
                );
            }
            if let Some((e, _)) = held {
                earliest = earliest.into_iter().chain(e).min();
            }
            if self.pending.is_empty() {
                held = None;
                self.publish(earliest);
            } else {
                let first = tokio::time::Instant::from_std(self.created + self.partial_first);
                let due = held.map_or_else(
                    || (tokio::time::Instant::now() + self.partial_every).max(first),
                    |(_, due)| due,
                );
                held = Some((earliest, due));
            }
        }
    }

    /// Applies one change to the state without publishing.
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Apply { source, object } => self.state.apply(&source, object),
            Change::Delete { source, key } => self.state.delete(&source, &key),
            Change::Reset {
                source,
                objects,
                keep,
            } => self.state.reset(&source, objects, &keep),
            Change::Update {
                source,
                apply,
                delete,
            } => {
                for key in &delete {
                    self.state.delete(&source, key);
                }
                for object in apply {
                    self.state.apply(&source, object);
                }
            }
            Change::Synced { part } => {
                if self.pending.remove(&part) {
                    tracing::info!(%part, remaining = self.pending.len(), "source synced");
                    self.announce_ready = self.pending.is_empty();
                }
                if self.pending.is_empty() {
                    self.state.set_synced(true);
                }
            }
            Change::Health { part, problem } => self.report_health(&part, problem),
        }
    }

    /// Says once, when the first complete state is published, what is served, how long it took
    /// since start, and how long compiling and publishing it took.
    fn log_ready(&self, publish: std::time::Duration) {
        let count = |kind: Kind| {
            [Origin::Manifests, Origin::Kubernetes]
                .iter()
                .map(|o| self.state.object_count(*o, kind))
                .sum::<usize>()
        };
        // Endpoint addresses over every slice (once, at start).
        let endpoints = self.state.endpoint_count();
        tracing::info!(
            services = count(Kind::Service),
            endpoint_slices = count(Kind::EndpointSlice),
            endpoints,
            ingresses = count(Kind::Ingress),
            http_routes = count(Kind::HttpRoute),
            gateways = count(Kind::Gateway),
            seconds = self.created.elapsed().as_secs_f64(),
            publish_seconds = publish.as_secs_f64(),
            "ready: every source has synced; the first complete table is published"
        );
    }

    /// Records a part's health, exports it, and logs the start and the end of each outage once.
    fn report_health(&mut self, part: &str, problem: Option<String>) {
        let now = std::time::SystemTime::now();
        let up = problem.is_none();
        match self.health.report(part, problem.clone(), now) {
            health::Transition::Same => {}
            health::Transition::Failing => tracing::warn!(
                %part,
                problem = problem.as_deref().unwrap_or(""),
                "source cannot be read; serving its last good objects"
            ),
            health::Transition::Recovered(after) => tracing::info!(
                %part,
                after_s = after.as_secs_f64(),
                "source reads again"
            ),
        }
        self.metrics
            .source_up
            .with_label_values(&[part])
            .set(up as i64);
        if up {
            let secs = now
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            self.metrics
                .source_last_sync
                .with_label_values(&[part])
                .set(secs);
        }
    }

    /// Commits and stores the next snapshot, if anything changed.
    pub fn publish(&mut self, earliest: Option<Instant>) {
        let began = Instant::now();
        let Some(mut snap) = self.state.commit() else {
            return;
        };
        if let Some(s) = std::sync::Arc::get_mut(&mut snap) {
            s.received_at = earliest;
        }
        let generation = snap.generation;
        let synced = snap.synced;
        self.cell.store(snap);
        if let Some(tx) = &self.published {
            tx.send_replace(generation);
        }
        if let Some(t) = earliest {
            self.metrics
                .programming_latency
                .observe(t.elapsed().as_secs_f64());
        }
        self.metrics.generation.set(generation as i64);
        self.metrics.publishes.inc();
        self.metrics.ready.set(synced as i64);
        for origin in [Origin::Manifests, Origin::Kubernetes] {
            for kind in Kind::ALL {
                let n = self.state.object_count(origin, kind);
                self.metrics
                    .objects
                    .with_label_values(&[origin.as_str(), kind.as_str()])
                    .set(n as i64);
            }
        }
        if synced && std::mem::take(&mut self.announce_ready) {
            self.log_ready(began.elapsed());
        }
        tracing::debug!(
            generation,
            synced,
            seconds = began.elapsed().as_secs_f64(),
            "published snapshot"
        );
    }
}

#[cfg(test)]
mod publish_tests;
