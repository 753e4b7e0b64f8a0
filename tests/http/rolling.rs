//! Endpoints coming and going: rolling replacement, pooled connections to a removed one, drain.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_replacement_under_load_fails_no_request() {
    rolling_replacement(None, 4).await;
}

/// The same with the Service's requests pipelined to its endpoints: requests waiting behind
/// another on a connection to a pod that goes away are sent again, and none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_replacement_with_upstream_pipelining_fails_no_request() {
    rolling_replacement(Some("true"), 12).await;
}

/// Replaces all three pods of a Service one by one under the load of `clients` looping
/// clients, with `pipelining` as the Service's `switchboard.dev/upstream-pipelining`.
async fn rolling_replacement(pipelining: Option<&str>, clients: usize) {
    let mut pods: Vec<Backend> = Vec::new();
    for i in 0..3 {
        pods.push(Backend::start(&format!("old{i}")).await);
    }
    let svc = |eps: &[(SocketAddr, Cond)]| {
        let yaml = service_yaml("default", "web", "10.96.6.1", eps);
        match pipelining {
            Some(v) => annotated(&yaml, "web", "switchboard.dev/upstream-pipelining", v),
            None => yaml,
        }
    };
    let Fixture { sb, proxy, dir, .. } = Fixture::start(&[], &[("roll.test", "/")], |d| {
        write(
            d,
            "svc.yaml",
            &svc(&ready(&pods.iter().collect::<Vec<_>>())),
        );
        write(d, "ing.yaml", &simple_ingress("roll.test", "web"));
    })
    .await;
    let d = dir.path();

    // Load: the clients, each a bounded loop of GETs (some slow) until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let served = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
    let mut load = Vec::new();
    for w in 0..clients {
        let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            for i in 0..20_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let delay = if (i + w) % 10 == 0 { "30" } else { "0" };
                match request(&c, "GET", proxy, "roll.test", "/", &[("x-delay-ms", delay)]).await {
                    Ok(a) if a.status == 200 => {
                        *served
                            .lock()
                            .unwrap()
                            .entry(a.backend().to_string())
                            .or_default() += 1;
                    }
                    Ok(a) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{} {}", a.status, a.body)),
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        }));
    }

    // Replace every pod, one at a time, as a Deployment's rolling update does: start the new
    // pod, add it ready, mark the old one terminating, remove it, then stop it.
    let mut current: Vec<Backend> = pods;
    for i in 0..3 {
        let new = Backend::start(&format!("new{i}")).await;
        let mut eps: Vec<(SocketAddr, Cond)> =
            current.iter().map(|b| (b.addr, Cond::Ready)).collect();
        eps.push((new.addr, Cond::Ready));
        write(d, "svc.yaml", &svc(&eps));
        let deadline = Instant::now() + Duration::from_secs(15);
        while new.hits() == 0 {
            assert!(
                Instant::now() < deadline,
                "new pod never served:\n{}",
                sb.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let old = current.remove(0);
        let mut eps: Vec<(SocketAddr, Cond)> = vec![(old.addr, Cond::Terminating)];
        eps.extend(current.iter().map(|b| (b.addr, Cond::Ready)));
        eps.push((new.addr, Cond::Ready));
        write(d, "svc.yaml", &svc(&eps));
        let old_ep = format!("endpoint {} ready", old.addr);
        sb.wait_tables("old pod terminating", |t| !t.contains(&old_ep))
            .await;
        current.push(new);
        write(
            d,
            "svc.yaml",
            &svc(&current
                .iter()
                .map(|b| (b.addr, Cond::Ready))
                .collect::<Vec<_>>()),
        );
        let gone = format!("endpoint {} ", old.addr);
        sb.wait_tables("old pod removed", |t| !t.contains(&gone))
            .await;
        // The pod gets SIGTERM: it finishes what it has and closes its connections.
        old.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while old.in_flight.load(Ordering::SeqCst) > 0 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Let the load run against the new set for a moment.
        let seen = current.last().unwrap().hits();
        let deadline = Instant::now() + Duration::from_secs(10);
        while current.last().unwrap().hits() < seen + 50 {
            assert!(
                Instant::now() < deadline,
                "no load on the new pod:\n{}",
                sb.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    let served = std::mem::take(&mut *served.lock().unwrap());
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}\nserved: {served:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    let total: u64 = served.values().sum();
    assert!(total > 300, "load too small: {served:?}");
    for b in &current {
        assert!(served.get(&b.name).copied().unwrap_or(0) > 0, "{served:?}");
    }
    if pipelining.is_some() {
        let pipelined = sb
            .metric("switchboard_http_fast_path_total{outcome=\"pipelined\"}")
            .await
            .unwrap_or(0.0);
        assert!(pipelined > 0.0, "no request was pipelined (of {total})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let slow = Backend::start("slow").await;
    // Served on the process runtime, not on dedicated workers (the default): that mode's drain.
    let Fixture {
        sb,
        c,
        proxy,
        dir: _dir,
    } = Fixture::start(&["--http-workers", "0"], &[("slow.test", "/")], |d| {
        write_service(d, "slow", "10.96.7.1", &[&slow]);
        write(d, "ing.yaml", &simple_ingress("slow.test", "slow"));
    })
    .await;
    terminate_with_a_request_in_flight(sb, &c, &slow, proxy, "slow.test").await;
}

/// After an endpoint leaves the table: its idle pooled connections are closed at once (not after
/// the 60 s pool idle timeout), a request in flight on it finishes, and its connection is closed
/// when that request is done. The pool gauge shows the pooled connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_connections_to_a_removed_endpoint_are_closed() {
    let old = Backend::start("old").await;
    let new = Backend::start("new").await;
    let Fixture { sb, c, proxy, dir } = Fixture::start(&[], &[], |d| {
        write(d, "ing.yaml", &simple_ingress("pool.test", "web"));
        write_service(d, "web", "10.96.7.1", &[&old]);
    })
    .await;
    wait_get(&sb, &c, "pool.test", "/", "reached old", |a| {
        a.backend() == "old"
    })
    .await;
    for _ in 0..5 {
        assert_eq!(get(&c, proxy, "pool.test", "/").await.backend(), "old");
    }
    assert!(old.conns() >= 1);
    let gauge =
        "switchboard_http_upstream_pool_connections{service=\"default/web:80\",state=\"idle\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sb.metric(gauge).await.is_some_and(|v| v >= 1.0) {
        assert!(Instant::now() < deadline, "{gauge} never >= 1");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A slow request holds the pooled connection; a second request meanwhile opens another,
    // which then idles in the pool.
    let slow = {
        let c = c.clone();
        tokio::spawn(async move {
            request(&c, "GET", proxy, "pool.test", "/slow", &[("x-hold", "1")]).await
        })
    };
    eventually(&sb, "the slow request reached old", || {
        old.in_flight.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(get(&c, proxy, "pool.test", "/").await.backend(), "old");
    assert!(old.conns() >= 2);
    // The client has its answer before the proxy puts that connection back in the pool: wait
    // until the pool holds it idle (one busy with the slow request, one idle; the gauge is
    // refreshed every 2 s), or the sweep below could find nothing and the connection be
    // dropped on its way back instead. The slow request is held until the test releases it,
    // so a loaded machine only makes this wait longer, never lets the request end first.
    let busy =
        "switchboard_http_upstream_pool_connections{service=\"default/web:80\",state=\"busy\"}";
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(sb.metric(gauge).await == Some(1.0) && sb.metric(busy).await == Some(1.0)) {
        assert!(
            Instant::now() < deadline,
            "the pool never held one idle, one busy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // old leaves the table. No request is sent until the new table is out: one would take the
    // idle connection, and a connection busy at the swap is closed when its request ends
    // (silently), not by the sweep of idle ones this test is about.
    let generation = "switchboard_snapshot_generation";
    let before = sb.metric(generation).await.expect("generation metric");
    write_service(dir.path(), "web", "10.96.7.1", &[&new]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sb.metric(generation).await.is_some_and(|g| g > before) {
        assert!(
            Instant::now() < deadline,
            "the table never changed\n{}",
            sb.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually(&sb, "the idle connections to old closed", || {
        old.conns() == 1
    })
    .await;
    assert_eq!(get(&c, proxy, "pool.test", "/").await.backend(), "new");
    assert_eq!(
        old.in_flight.load(Ordering::SeqCst),
        1,
        "the slow request is still in flight"
    );
    old.release();
    let a = slow.await.unwrap().expect("the in-flight request finishes");
    assert_eq!((a.status, a.backend()), (200, "old"));
    eventually(
        &sb,
        "the finished request's connection to old closed",
        || old.conns() == 0,
    )
    .await;
    assert!(new.conns() >= 1);
    // The log reaches the test through a pipe and a reader thread: wait for the line rather
    // than expect it the moment its effect is seen.
    eventually(&sb, "the close logged", || {
        sb.log().contains("closed idle upstream connections")
    })
    .await;
}
