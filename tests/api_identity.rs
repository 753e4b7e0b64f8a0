//! How switchboard identifies itself to the API server: every request carries the
//! `User-Agent` `switchboard/VERSION` (seen by the project's test API server, which records
//! each distinct one).

mod common;

use std::time::Duration;

use apiserver::{ApiServer, Options};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_carries_the_user_agent() {
    let api = ApiServer::start(Options::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kc).unwrap();
    let sb = Switchboard::start(&["--kubeconfig", kc.to_str().unwrap()]);
    sb.wait_admin("/readyz", Duration::from_secs(15), "ready", |code, _| {
        code == 200
    })
    .await;
    // Lists and watches (and the leader election's Lease requests) have gone out by now.
    assert!(
        api.wait_until(Duration::from_secs(10), |s| s.active_watches >= 7)
            .await
    );
    let expected = format!("switchboard/{}", env!("CARGO_PKG_VERSION"));
    let seen = api.user_agents();
    assert_eq!(
        seen,
        [expected].into_iter().collect(),
        "requests: {:?}",
        api.requests().iter().take(20).collect::<Vec<_>>()
    );
}
