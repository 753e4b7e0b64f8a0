//! Retries on another endpoint (connect failures, 503 for idempotent requests) and ejection.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_retried_on_another_endpoint() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let down = closed_port().await;
    // Round robin, so the dead endpoint is certainly picked, and ejection off the table for
    // long enough that it keeps being tried.
    let Fixture {
        sb,
        c,
        proxy,
        dir: _dir,
    } = Fixture::start(
        &["--lb-algorithm", "round-robin"],
        &[("r.test", "/")],
        |d| {
            write(
                d,
                "svc.yaml",
                &service_yaml(
                    "default",
                    "web",
                    "10.96.2.1",
                    &[
                        (a.addr, Cond::Ready),
                        (down, Cond::Ready),
                        (b.addr, Cond::Ready),
                    ],
                ),
            );
            write(d, "ing.yaml", &simple_ingress("r.test", "web"));
        },
    )
    .await;
    let mut errors = Vec::new();
    for i in 0..300 {
        // Fresh connections too: half the requests on a new client.
        let fresh;
        let cl = if i % 2 == 0 {
            fresh = client();
            &fresh
        } else {
            &c
        };
        match request(cl, "GET", proxy, "r.test", "/", &[]).await {
            Ok(a) if a.status == 200 => {}
            Ok(a) => errors.push(format!("{} {}", a.status, a.body)),
            Err(e) => errors.push(e),
        }
    }
    assert!(
        errors.is_empty(),
        "client-visible errors: {errors:?}\n{}",
        sb.log()
    );
    assert!(a.hits() > 50 && b.hits() > 50);
    let connect_errors = sb
        .metric("switchboard_http_upstream_connect_errors_total{service=\"default/web:80\"}")
        .await
        .unwrap_or(0.0);
    assert!(connect_errors >= 1.0, "the dead endpoint was tried");
    assert!(
        sb.metric("switchboard_http_retries_total{reason=\"connect\",service=\"default/web:80\"}")
            .await
            >= Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_are_retried_on_503_within_budget() {
    let good = Backend::start("good").await;
    let busy = Backend::start("busy").await;
    busy.status.store(503, Ordering::SeqCst);
    // Ejection off (0): the 503 endpoint stays in the round robin, so every other request
    // meets it.
    let Fixture {
        sb,
        c,
        proxy,
        dir: _dir,
    } = Fixture::start(
        &[
            "--lb-algorithm",
            "round-robin",
            "--outlier-ejection-ms",
            "0",
        ],
        &[("b.test", "/")],
        |d| {
            write_service(d, "web", "10.96.9.1", &[&good, &busy]);
            write(d, "ing.yaml", &simple_ingress("b.test", "web"));
        },
    )
    .await;
    // A few GETs: each one that meets the 503 endpoint goes on to the good one, so the client
    // sees only 200 (a handful, well within the budget's floor of 10 retries).
    for _ in 0..8 {
        let a = get(&c, proxy, "b.test", "/").await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.backend(), "good");
    }
    assert!(busy.hits() >= 1, "the 503 endpoint was tried");
    assert!(
        sb.metric("switchboard_http_retries_total{reason=\"status\",service=\"default/web:80\"}")
            .await
            >= Some(1.0)
    );
    // POST is not idempotent: its 503 reaches the client.
    let mut saw_503 = false;
    for _ in 0..10 {
        let a = request(&c, "POST", proxy, "b.test", "/", &[])
            .await
            .unwrap();
        saw_503 |= a.status == 503;
    }
    assert!(saw_503, "a POST met the 503 endpoint and was not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoint_is_ejected_and_readmitted() {
    let good1 = Backend::start("good1").await;
    let good2 = Backend::start("good2").await;
    let bad = Backend::start("bad").await;
    bad.status.store(500, Ordering::SeqCst);
    // Long enough that the 30 GETs below always run inside it (they take well under a second);
    // the test fails, rather than skip the check, if they somehow do not.
    let ejection = Duration::from_secs(10);
    let ejection_ms = ejection.as_millis().to_string();
    let Fixture {
        sb,
        c,
        proxy,
        dir: _dir,
    } = Fixture::start(
        &[
            "--lb-algorithm",
            "round-robin",
            "--outlier-ejection-ms",
            &ejection_ms,
        ],
        &[("e.test", "/")],
        |d| {
            write(
                d,
                "svc.yaml",
                &service_yaml(
                    "default",
                    "web",
                    "10.96.3.1",
                    &ready(&[&good1, &good2, &bad]),
                ),
            );
            write(d, "ing.yaml", &simple_ingress("e.test", "web"));
        },
    )
    .await;
    // POST is not retried, so the 500s reach the client and count toward ejection.
    let series = "switchboard_http_ejections_total{service=\"default/web:80\"}";
    let mut sent = 0;
    // The ejection starts after the last POST was sent: it lasts at least until then + ejection.
    let mut last_post = Instant::now();
    while sb.metric(series).await.unwrap_or(0.0) < 1.0 {
        sent += 1;
        assert!(
            sent < 200,
            "never ejected after {sent} requests:\n{}",
            sb.log()
        );
        last_post = Instant::now();
        let _ = request(&c, "POST", proxy, "e.test", "/", &[])
            .await
            .unwrap();
    }
    // Ejected: the next requests avoid it.
    let before = bad.hits();
    for _ in 0..30 {
        assert_eq!(get(&c, proxy, "e.test", "/").await.status, 200);
    }
    assert!(
        last_post.elapsed() < ejection,
        "the 30 GETs outlasted the {ejection:?} ejection ({:?}): the check below would not hold",
        last_post.elapsed()
    );
    assert_eq!(bad.hits(), before, "an ejected endpoint got requests");
    // Healthy again: re-admitted once the ejection ends.
    bad.status.store(200, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while bad.hits() == before {
        assert!(
            Instant::now() < deadline,
            "never re-admitted:\n{}",
            sb.log()
        );
        assert_eq!(get(&c, proxy, "e.test", "/").await.status, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
