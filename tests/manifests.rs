//! The manifest-directory source and the command line, with the real binary.

mod common;

use std::time::{Duration, Instant};

use common::*;

const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  clusterIP: 10.0.0.1\n  ports: [{port: 80}]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_file_is_reported_and_keeps_its_objects() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), SVC).unwrap();
    let sb = Switchboard::start(&["--manifests", dir.path().to_str().unwrap()]);
    sb.wait_tables("a", |t| {
        t.contains("service default/a ClusterIP clusterIPs=10.0.0.1")
    })
    .await;

    // A YAML type error on line 6: reported with path, line, object and field.
    std::fs::write(
        dir.path().join("a.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  clusterIP: 10.0.0.2\n  ports: [{port: eighty}]\n",
    )
    .unwrap();
    sb.wait_log("manifest rejected", Duration::from_secs(10))
        .await;
    assert!(sb.log_contains("a.yaml:6:"), "path and line:\n{}", sb.log());
    assert!(
        sb.log_contains("Service default/a") || sb.log_contains("Service a"),
        "object:\n{}",
        sb.log()
    );
    assert!(
        sb.log_contains("spec.ports[0].port"),
        "field:\n{}",
        sb.log()
    );
    assert!(
        sb.metric("switchboard_source_errors_total{reason=\"parse\",source=\"manifests\"}")
            .await
            >= Some(1.0),
        "parse error counted"
    );
    // The objects the file held before stay.
    assert!(sb.tables().await.contains("clusterIPs=10.0.0.1\n"));

    // Fixed: picked up.
    std::fs::write(
        dir.path().join("a.yaml"),
        SVC.replace("10.0.0.1", "10.0.0.3"),
    )
    .unwrap();
    sb.wait_tables("fixed file", |t| t.contains("clusterIPs=10.0.0.3"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_nested_dirs_unknown_kinds_and_dotfiles() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("team/x")).unwrap();
    std::fs::write(
        dir.path().join("team/x/a.yml"),
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\nspec: {{}}\n---\n{SVC}"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join(".hidden.yaml"),
        SVC.replace("name: a", "name: hidden"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("notes.txt"),
        SVC.replace("name: a", "name: txt"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.json"),
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"b","namespace":"x"},"spec":{"clusterIP":"10.0.0.5"}}"#,
    )
    .unwrap();
    let sb = Switchboard::start(&["--manifests", dir.path().to_str().unwrap()]);
    let t = sb
        .wait_tables("a and b", |t| {
            t.contains("service default/a ") && t.contains("service x/b ")
        })
        .await;
    assert!(!t.contains("hidden") && !t.contains("txt"), "{t}");
    sb.wait_admin("/readyz", Duration::from_secs(5), "ready", |c, _| c == 200)
        .await;

    // Renaming a file keeps its objects (removed from the old source, added by the new one).
    std::fs::rename(
        dir.path().join("team/x/a.yml"),
        dir.path().join("team/a2.yaml"),
    )
    .unwrap();
    // Wait until the watcher has handled both ends of the rename (the old path removed, the new
    // one loaded): only then does finding `a` in the tables say the rename kept it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = |what: &str, path: &str| {
        let log = sb.log();
        let found = log.lines().any(|l| l.contains(what) && l.contains(path));
        found
    };
    while !(seen("manifest removed", "team/x/a.yml") && seen("manifest loaded", "team/a2.yaml")) {
        assert!(
            Instant::now() < deadline,
            "rename not handled:\n{}",
            sb.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = sb
        .wait_tables("a after rename", |t| t.contains("service default/a "))
        .await;
    assert!(t.contains("service x/b "));
    // Deleting a directory removes what it held.
    std::fs::remove_dir_all(dir.path().join("team")).unwrap();
    sb.wait_tables("a gone", |t| !t.contains("service default/a "))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_generation_objects_and_latency() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), SVC).unwrap();
    let sb = Switchboard::start(&["--manifests", dir.path().to_str().unwrap()]);
    sb.wait_admin("/readyz", Duration::from_secs(5), "ready", |c, _| c == 200)
        .await;
    assert_eq!(
        sb.metric("switchboard_objects{kind=\"Service\",source=\"manifests\"}")
            .await,
        Some(1.0)
    );
    assert!(sb.metric("switchboard_snapshot_generation").await >= Some(1.0));
    assert!(
        sb.metric("switchboard_programming_latency_seconds_count")
            .await
            >= Some(1.0)
    );
    assert_eq!(sb.metric("switchboard_ready").await, Some(1.0));
    assert_eq!(sb.admin_get("/healthz").await.0, 200);
    assert_eq!(sb.admin_get("/nope").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut sb = Switchboard::start(&["--manifests", dir.path().to_str().unwrap()]);
    let status = sb.terminate();
    assert!(status.success(), "exit status {status}:\n{}", sb.log());
    assert!(sb.log_contains("SIGTERM received"));
}

#[test]
fn bad_flags_and_config_keys_exit_nonzero_naming_them() {
    let (code, out) = run_to_end(&["run", "--no-such-flag"]);
    assert_ne!(code, 0);
    assert!(out.contains("--no-such-flag"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "dns = [\"127.0.0.1:0\"]\ncluster-domian = \"x.local\"\n",
    )
    .unwrap();
    let (code, out) = run_to_end(&["run", "--config", cfg.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(out.contains("cluster-domian"), "{out}");

    let (code, out) = run_to_end(&["run", "--l4", "ipvs"]);
    assert_ne!(code, 0);
    assert!(out.contains("ipvs"), "{out}");

    let (code, out) = run_to_end(&["run", "--manifests", "/nonexistent/dir"]);
    assert_ne!(code, 0);
    assert!(out.contains("/nonexistent/dir"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_keys_apply_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    std::fs::create_dir(&m).unwrap();
    std::fs::write(m.join("a.yaml"), SVC).unwrap();
    // The file's admin address is one this test holds, so binding it fails even as root.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().map(|a| (taken, a)).unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "manifests = {:?}\ncluster-domain = \"corp.example\"\nadmin = \"{}\"\n",
            m.to_str().unwrap(),
            taken.1
        ),
    )
    .unwrap();
    // --admin on the command line wins over the file's (taken) address: switchboard starts
    // (it would exit on a bind failure) and listens elsewhere.
    let sb = Switchboard::start(&["--config", cfg.to_str().unwrap(), "--admin", "127.0.0.1:0"]);
    assert_ne!(sb.listener("admin"), taken.1, "{}", sb.log());
    sb.wait_tables("zone from config", |t| {
        t.contains("dns a.default.svc.corp.example. A 10.0.0.1")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_files_are_not_reloaded() {
    // Regression: the watcher reacted to the inotify access events of its own reads and
    // reloaded every file in a loop.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), SVC).unwrap();
    let sb = Switchboard::start(&["--manifests", dir.path().to_str().unwrap()]);
    sb.wait_admin("/readyz", Duration::from_secs(5), "ready", |c, _| c == 200)
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sb.log_count("manifest loaded"), 1, "{}", sb.log());
    // An edit still loads it again.
    std::fs::write(
        dir.path().join("a.yaml"),
        SVC.replace("10.0.0.1", "10.0.0.4"),
    )
    .unwrap();
    sb.wait_tables("edit", |t| t.contains("clusterIPs=10.0.0.4"))
        .await;
    assert!(sb.log_count("manifest loaded") >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ip_edited_without_cluster_ips_is_served_with_a_warning() {
    // The demo's Services set both fields, as `kubectl get -o yaml` prints them. An edit of
    // `clusterIP` alone used to be ignored without a word (clusterIPs won).
    let both = |ip: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: a}}\nspec:\n  clusterIP: {ip}\n  clusterIPs:\n  - 10.0.0.1\n  ports: [{{port: 80}}]\n"
        )
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), both("10.0.0.1")).unwrap();
    let sb = Switchboard::start(&["--manifests", dir.path().to_str().unwrap()]);
    sb.wait_tables("a", |t| {
        t.contains("service default/a ClusterIP clusterIPs=10.0.0.1\n")
    })
    .await;
    assert!(!sb.log_contains("manifest warning"), "{}", sb.log());

    std::fs::write(dir.path().join("a.yaml"), both("10.0.0.9")).unwrap();
    sb.wait_tables("the edited clusterIP", |t| {
        t.contains("service default/a ClusterIP clusterIPs=10.0.0.9\n")
    })
    .await;
    sb.wait_log("manifest warning", Duration::from_secs(10))
        .await;
    assert!(
        sb.log_contains(
            "a.yaml:5:3: Service a: spec.clusterIP: 10.0.0.9 differs from spec.clusterIPs[0] 10.0.0.1"
        ),
        "the warning names the place and both addresses:\n{}",
        sb.log()
    );
    let dns = sb.tables().await;
    assert!(
        dns.contains("dns a.default.svc.cluster.local. A 10.0.0.9\n"),
        "{dns}"
    );
}

/// The services in a tables dump: `ns/name` → its `clusterIPs=` value.
fn services(dump: &str) -> std::collections::BTreeMap<String, String> {
    dump.lines()
        .filter_map(|l| l.strip_prefix("service "))
        .filter_map(|l| {
            let (key, rest) = l.split_once(' ')?;
            let ips = rest
                .split("clusterIPs=")
                .nth(1)?
                .split_whitespace()
                .next()?;
            Some((key.to_string(), ips.to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_many_document_file_is_reread_document_by_document() {
    let svc = |name: &str, ip: &str| {
        SVC.replace("name: a", &format!("name: {name}"))
            .replace("10.0.0.1", ip)
    };
    let invalid_b =
        "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  clusterIP: 10.0.0.300\n";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("many.yaml");
    let write = |docs: &[String]| {
        let tmp = dir.path().join(".many.yaml.tmp");
        std::fs::write(&tmp, docs.join("---\n")).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    write(&[
        svc("a", "10.0.0.1"),
        svc("b", "10.0.0.2"),
        svc("c", "10.0.0.3"),
        svc("d", "10.0.0.4"),
    ]);
    let sb = Switchboard::start(&["--manifests", dir.path().to_str().unwrap()]);
    sb.wait_tables("four services", |t| services(t).len() == 4)
        .await;

    // (case, the file's documents, the services served afterwards, documents parsed, the
    // rejection logged as `many.yaml:LINE`). Each case starts from the one before.
    type Case<'a> = (
        &'a str,
        Vec<String>,
        &'a [(&'a str, &'a str)],
        usize,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "one document edited changes exactly its object",
            vec![
                svc("a", "10.0.0.1"),
                svc("b", "10.0.0.22"),
                svc("c", "10.0.0.3"),
                svc("d", "10.0.0.4"),
            ],
            &[
                ("a", "10.0.0.1"),
                ("b", "10.0.0.22"),
                ("c", "10.0.0.3"),
                ("d", "10.0.0.4"),
            ],
            1,
            None,
        ),
        (
            "a removed document deletes only its object",
            vec![
                svc("a", "10.0.0.1"),
                svc("b", "10.0.0.22"),
                svc("d", "10.0.0.4"),
            ],
            &[("a", "10.0.0.1"), ("b", "10.0.0.22"), ("d", "10.0.0.4")],
            0,
            None,
        ),
        (
            "reordered documents change nothing",
            vec![
                svc("d", "10.0.0.4"),
                svc("b", "10.0.0.22"),
                svc("a", "10.0.0.1"),
            ],
            &[("a", "10.0.0.1"), ("b", "10.0.0.22"), ("d", "10.0.0.4")],
            0,
            None,
        ),
        (
            "an invalid document keeps its last good version, the rest applies",
            vec![
                svc("d", "10.0.0.4"),
                invalid_b.to_string(),
                svc("a", "10.0.0.11"),
            ],
            &[("a", "10.0.0.11"), ("b", "10.0.0.22"), ("d", "10.0.0.4")],
            2,
            Some("many.yaml:12:3: Service b: spec.clusterIP:"),
        ),
        (
            "the fixed document replaces its kept version",
            vec![
                svc("d", "10.0.0.4"),
                svc("b", "10.0.0.23"),
                svc("a", "10.0.0.11"),
            ],
            &[("a", "10.0.0.11"), ("b", "10.0.0.23"), ("d", "10.0.0.4")],
            1,
            None,
        ),
    ];
    for (case, docs, want, parsed, rejected) in cases {
        let loads = sb.log_count("manifest loaded");
        let generation = sb.metric("switchboard_snapshot_generation").await;
        write(&docs);
        // One write (a temporary file renamed over the old) may be read more than once, as
        // its events arrive: the documents parsed by every read since, summed, must be the
        // changed ones (a second read of the same text parses none).
        let parsed_since = |log: &str| -> (usize, usize) {
            let reads: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("manifest loaded"))
                .skip(loads)
                .collect();
            let sum = reads
                .iter()
                .filter_map(|l| {
                    l.split(" parsed=")
                        .nth(1)?
                        .split(' ')
                        .next()?
                        .parse::<usize>()
                        .ok()
                })
                .sum::<usize>();
            (reads.len(), sum)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (reads, sum) = parsed_since(&sb.log());
            if reads > 0 && sum >= parsed {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{case}: not re-read:\n{}",
                sb.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let log = sb.log();
        let (_, sum) = parsed_since(&log);
        assert_eq!(
            sum, parsed,
            "{case}: documents parsed since the write\n{log}"
        );
        let want: std::collections::BTreeMap<String, String> = want
            .iter()
            .map(|(n, ip)| (format!("default/{n}"), ip.to_string()))
            .collect();
        let dump = sb.wait_tables(case, |t| services(t) == want).await;
        assert_eq!(services(&dump), want, "{case}");
        if case.starts_with("reordered") {
            assert_eq!(
                sb.metric("switchboard_snapshot_generation").await,
                generation,
                "{case}: nothing published"
            );
        }
        if let Some(place) = rejected {
            assert!(
                log.lines()
                    .any(|l| l.contains("manifest rejected") && l.contains(place)),
                "{case}: want {place:?} in\n{log}"
            );
        }
    }
}
