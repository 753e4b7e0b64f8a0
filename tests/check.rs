//! `switchboard check` with the real binary: what a manifest directory would serve, its
//! warnings, its errors by FILE:LINE:COLUMN, the config file, and the exit status a CI pipeline
//! acts on (0 fine, 1 errors, 2 usage).

mod common;

use common::*;

const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  clusterIP: 10.0.0.1\n  clusterIPs: [10.0.0.1]\n  ports: [{port: 80}]\n";

#[test]
fn the_demo_is_summarized() {
    // The path as given is printed; tests run in the package's directory.
    let (code, out) = run_to_end(&["check", "examples/demo"]);
    assert_eq!(code, 0, "{out}");
    for line in [
        "examples/demo: 6 files, 17 objects",
        "services (7):",
        "  default/web ClusterIP 127.10.0.1 8080/TCP: 2 of 2 endpoints ready",
        "  default/api ClusterIP 127.10.0.2 8081/TCP: 1 of 2 endpoints ready",
        "  web.default.svc.cluster.local. A 127.10.0.1",
        "HTTP routes (3):",
        "L4 frontends (6):",
        "warnings (0):",
        "errors (0):",
    ] {
        assert!(out.lines().any(|l| l == line), "no line {line:?} in\n{out}");
    }
    assert_golden("check-demo.txt", &out);

    // --tables adds the whole dump, SRV and PTR records included.
    let (code, full) = run_to_end(&["check", "examples/demo", "--tables"]);
    assert_eq!(code, 0, "{full}");
    assert!(full.starts_with(&out), "the summary first:\n{full}");
    assert!(
        full.contains("\ntables:\n")
            && full.contains("dns _http._tcp.web.default.svc.cluster.local. SRV 0 100 8080 web.default.svc.cluster.local.\n"),
        "{full}"
    );
}

#[test]
fn warnings_are_listed_and_pass() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        SVC.replace("clusterIP: 10.0.0.1", "clusterIP: 10.0.0.9"),
    )
    .unwrap();
    // A slice whose Service is nowhere.
    std::fs::write(
        dir.path().join("orphan.yaml"),
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: b-1\n  labels: {kubernetes.io/service-name: b}\naddressType: IPv4\nendpoints: []\n",
    )
    .unwrap();
    let (code, out) = run_to_end(&["check", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "warnings do not fail a check:\n{out}");
    assert!(out.contains("warnings (2):\n"), "{out}");
    assert!(
        out.contains("/a.yaml:5:3: Service a: spec.clusterIP: 10.0.0.9 differs from spec.clusterIPs[0] 10.0.0.1"),
        "{out}"
    );
    assert!(
        out.contains(
            "orphan.yaml: EndpointSlice default/b-1: its Service default/b is not defined"
        ),
        "{out}"
    );
    assert!(
        out.contains("  default/a ClusterIP 10.0.0.9 80/TCP"),
        "{out}"
    );
}

#[test]
fn errors_fail_with_their_places() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), SVC).unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        format!(
            "{SVC}---\n{}",
            SVC.replace("name: a", "name: b")
                .replace("port: 80", "port: 0")
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("c.yaml"), "kind: [\n").unwrap();
    let (code, out) = run_to_end(&["check", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("errors (2):\n"), "{out}");
    assert!(
        out.contains("/b.yaml:15:12: Service b: spec.ports[0].port: 0 is not a port (1-65535)"),
        "{out}"
    );
    assert!(
        out.contains("/c.yaml:1:7: kind: invalid type: sequence"),
        "{out}"
    );
    // What the good file holds is still summarized, and the last line says how many errors.
    assert!(
        out.contains("  default/a ClusterIP 10.0.0.1 80/TCP"),
        "{out}"
    );
    assert!(out.trim_end().ends_with(": 2 errors"), "{out}");
}

#[test]
fn the_config_file_is_checked_and_shapes_the_tables() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    std::fs::create_dir(&m).unwrap();
    std::fs::write(m.join("a.yaml"), SVC).unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "manifests = {:?}\ncluster-domain = \"corp.example\"\n",
            m.to_str().unwrap()
        ),
    )
    .unwrap();
    // The directory from the config file, the zone too.
    let (code, out) = run_to_end(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("  a.default.svc.corp.example. A 10.0.0.1\n"),
        "{out}"
    );

    std::fs::write(&cfg, "cluster-domian = \"corp.example\"\n").unwrap();
    let (code, out) = run_to_end(&[
        "check",
        m.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(":1:1: unknown key `cluster-domian`; did you mean `cluster-domain`?"),
        "{out}"
    );

    // Neither a directory nor a config file that names one.
    std::fs::write(&cfg, "cluster-domain = \"corp.example\"\n").unwrap();
    let (code, out) = run_to_end(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no manifest directory to check"), "{out}");
}

#[test]
fn usage_errors_exit_2() {
    let (code, out) = run_to_end(&["check", "examples/demo", "--tabels"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("a similar argument exists: '--tables'"),
        "{out}"
    );
}
