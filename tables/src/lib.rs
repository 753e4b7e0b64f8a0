//! switchboard's routing tables: the slim object model, the per-source cluster state, and the
//! immutable `Snapshot` that DNS and the proxies read.
//!
//! ```text
//!  controller ──apply/delete/reset──> ClusterState ──commit──> Arc<Snapshot> ──> SnapshotCell
//!                                      (objects,       (only dirty      (one ArcSwap; dns/ and
//!                                       per source)     services)        proxy/ load() per query)
//! ```
//!
//! Nothing here knows about kube, hickory or pingora: conversion from API objects happens in
//! `controller`, and wire formats live in `dns` and `proxy`. The cost of a commit is proportional
//! to what changed: maps are sharded behind `Arc`s and only touched shards are copied.
#![forbid(unsafe_code)]

pub mod compile;
pub mod dump;
pub mod few;
pub mod grants;
mod held;
pub mod intern;
mod keyset;
pub mod model;
pub mod ports;
pub mod sharded;
pub mod snapshot;
pub mod state;
pub mod synth;

use std::sync::Arc;

pub use arc_swap::ArcSwap;
pub use compile::TableConfig;
pub use dump::dump;
pub use model::*;
pub use snapshot::*;
pub use state::{ClusterState, ObjectRef, Origin, SourceId};

/// The one published snapshot, shared by every reader.
pub type SnapshotCell = Arc<ArcSwap<Snapshot>>;

/// A cell holding the empty, not-yet-synced snapshot.
pub fn new_cell(cluster_domain: &str) -> SnapshotCell {
    Arc::new(ArcSwap::from_pointee(Snapshot::empty(cluster_domain)))
}
