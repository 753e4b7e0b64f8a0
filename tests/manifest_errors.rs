//! How a broken manifest is reported, with the real binary: the file, the line and column of the
//! mistake in the file (not in its document), the object where it can be read, the field path
//! once, and the message. One table of broken files; `switchboard run` must log each, and
//! `switchboard check` must list each the same way.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// A first document that is fine, so that every mistake below is in a later document and its
/// line is only right if counted from the top of the file.
const FIRST: &str = "\
apiVersion: v1
kind: Service
metadata: {name: fine}
spec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}
---
";

/// (file name, text, what the report must say right after the path). The line numbers count
/// `FIRST`'s five lines.
const BROKEN: &[(&str, &str, &str)] = &[
    // YAML syntax: an item's key out of line. The object is read from the lines before.
    (
        "syntax.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  ports:\n  - port: 80\n    targetPort: 8080\n   name: http\n",
        ":15:4: Service shop/web: spec: did not find expected key, while parsing a block mapping at line 12 column 3",
    ),
    // A value of the wrong type: serde's own path, said once.
    (
        "type.yaml",
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: shop}\naddressType: IPv4\nendpoints:\n- addresses: [10.1.0.1]\n  conditions: {ready: yes please}\n",
        ":12:23: EndpointSlice shop/web-1: endpoints[0].conditions.ready: invalid type: string \"yes please\", expected a boolean",
    ),
    // Well-formed but invalid: found by conversion, located in the text afterwards.
    (
        "invalid.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n  - port: 70000\n",
        ":13:5: Service web: spec.ports[1].port: 70000 is not a port (1-65535)",
    ),
    // A required field left out: the place it belongs.
    (
        "required.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  namespace: shop\nspec: {}\n",
        ":8:1: Service shop/(unnamed): metadata.name: is required",
    ),
    // An unclosed quote: reported at the end of the document, with the line it opened on.
    (
        "quote.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: \"web\nspec: {}\n",
        ":11:1: Service (unnamed): metadata.name: found unexpected end of stream, while scanning a quoted scalar at line 9 column 9",
    ),
    // An object inside a List: the item's path and line.
    (
        "list.yaml",
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: b}\n  spec:\n    clusterIP: 10.0.0.300\n",
        ":16:5: Service b: items[1].spec.clusterIP: \"10.0.0.300\" is not an IP address",
    ),
];

/// The line of `log` that reports `file`.
fn report<'a>(log: &'a str, file: &str) -> Option<&'a str> {
    log.lines()
        .find(|l| l.contains("manifest rejected") && l.contains(&format!("/{file}:")))
}

/// A directory holding every broken file.
fn broken_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text, _) in BROKEN {
        std::fs::write(dir.path().join(name), format!("{FIRST}{text}")).unwrap();
    }
    dir
}

/// Checks one report `line` of file `name` against `want`: the place right after the file's
/// path, the rest as written, the field path once.
fn assert_reported(line: &str, name: &str, want: &str) {
    let want = format!("/{name}{want}");
    assert!(line.contains(&want), "{name}: want {want:?} in\n{line}");
    let field = want.split(": ").nth(2).unwrap_or_default();
    assert_eq!(
        line.matches(field).count(),
        1,
        "{name}: {field:?} once in\n{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_manifests_name_the_line_object_and_field() {
    let dir = broken_dir();
    let sb = Switchboard::start(&["--manifests", dir.path().to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while BROKEN
        .iter()
        .any(|(name, ..)| report(&sb.log(), name).is_none())
    {
        assert!(
            Instant::now() < deadline,
            "not every file reported:\n{}",
            sb.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = sb.log();
    for (name, _, want) in BROKEN {
        assert_reported(report(&log, name).unwrap(), name, want);
    }
}

#[test]
fn check_lists_the_same_reports() {
    let dir = broken_dir();
    let (code, out) = run_to_end(&["check", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let errors = out.split("errors (").nth(1).unwrap_or_default();
    for (name, _, want) in BROKEN {
        let line = errors
            .lines()
            .find(|l| l.contains(&format!("/{name}:")))
            .unwrap_or_else(|| panic!("{name} not listed:\n{out}"));
        assert_reported(line, name, want);
    }
    // The first document of every file is fine, but a file is all or nothing.
    assert!(out.contains("services (0):"), "{out}");
}
