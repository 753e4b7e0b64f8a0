//! When the controller publishes during the first sync: one complete snapshot, partial ones
//! only after an interval ([`Controller::run`]).

use super::*;
use std::time::Duration;
use tables::model::Service;

fn service(name: &str) -> Object {
    Object::Service(
        Service {
            namespace: "default".into(),
            name: name.into(),
            cluster_ips: vec!["10.96.0.10".parse().unwrap()],
            ..Default::default()
        }
        .into(),
    )
}

/// Sends `part`'s whole state: one Service, synced, healthy.
fn send_part(tx: &Sender, part: &str) {
    let source = SourceId::new(Origin::Manifests, part);
    for change in [
        Change::Reset {
            source,
            objects: vec![service(part)],
            keep: vec![],
        },
        Change::Synced { part: part.into() },
        Change::Health {
            part: part.into(),
            problem: None,
        },
    ] {
        tx.send(Event::now(change)).unwrap();
    }
}

struct Running {
    tx: Sender,
    cell: SnapshotCell,
    health: SourceHealth,
}

fn start(first: Duration, every: Duration) -> Running {
    let (tx, rx) = channel();
    let cell = tables::new_cell("cluster.local");
    let health = SourceHealth::default();
    let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
    let controller = Controller::new(
        ClusterState::new(Default::default()),
        cell.clone(),
        metrics,
        vec!["a".into(), "b".into()],
        health.clone(),
    )
    .partial_publish(first, every);
    tokio::spawn(controller.run(rx));
    Running { tx, cell, health }
}

/// Waits (at most 10 s) until `ok` holds.
async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn the_first_complete_state_is_one_publish_when_kinds_arrive_apart() {
    let r = start(Duration::from_secs(3600), Duration::from_secs(3600));
    send_part(&r.tx, "a");
    // The controller has taken in `a` (its health is recorded) before `b` is sent.
    until("part a's health", || r.health.get("a").is_some()).await;
    assert_eq!(
        r.cell.load().generation,
        0,
        "nothing published before the sync"
    );
    send_part(&r.tx, "b");
    until("a synced snapshot", || r.cell.load().synced).await;
    let snap = r.cell.load();
    assert_eq!(
        snap.generation, 1,
        "one publish for the first complete state"
    );
    assert_eq!(snap.routes.services.len(), 2);
}

#[tokio::test]
async fn a_partial_state_is_published_after_the_interval_while_a_source_has_not_synced() {
    let r = start(Duration::from_millis(20), Duration::from_millis(20));
    send_part(&r.tx, "a");
    until("a partial snapshot", || r.cell.load().generation >= 1).await;
    let snap = r.cell.load();
    assert!(!snap.synced);
    assert_eq!(
        snap.routes.services.len(),
        1,
        "part a's Service is served before b syncs"
    );
    send_part(&r.tx, "b");
    until("a synced snapshot", || r.cell.load().synced).await;
    assert_eq!(r.cell.load().generation, 2);
}

/// The first partial state waits for `first` after start, however soon the interval after the
/// first change ends: at start the API's kinds arrive one list at a time (paused time).
#[tokio::test(start_paused = true)]
async fn no_partial_state_is_published_before_the_first_delay() {
    let r = start(Duration::from_secs(1), Duration::from_millis(20));
    send_part(&r.tx, "a");
    until("part a's health", || r.health.get("a").is_some()).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        r.cell.load().generation,
        0,
        "a partial state published before 1 s"
    );
    until("a partial snapshot after 1 s", || {
        r.cell.load().generation >= 1
    })
    .await;
    assert!(!r.cell.load().synced);
}
