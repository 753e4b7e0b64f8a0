//! The command line as a person meets it, with the real binary: usage errors that suggest the
//! likely spelling, and start-up errors that say their cause once.

mod common;

use std::process::Command;

use common::*;

/// (arguments, text the output must hold): each a mistake and the hint that answers it.
const SUGGESTIONS: &[(&[&str], &str)] = &[
    // A mistyped subcommand and a mistyped flag: clap's suggestions.
    (
        &["demoo"],
        "tip: some similar subcommands exist: 'demo-backends', 'demo'",
    ),
    (&["chek"], "tip: a similar subcommand exists: 'check'"),
    (
        &["run", "--manifest", "x"],
        "tip: a similar argument exists: '--manifests'",
    ),
    (
        &["run", "--kube-config", "x"],
        "tip: a similar argument exists: '--kubeconfig'",
    ),
    (
        &["run", "--l4", "bnd"],
        "tip: a similar value exists: 'bind'",
    ),
    // A flag of `run` without `run`, or given to another subcommand: ours.
    (
        &["--manifests", "examples/demo"],
        "tip: --manifests is a flag of `switchboard run`",
    ),
    (
        &["demo", "--dns", "127.0.0.1:53"],
        "tip: --dns is a flag of `switchboard run`",
    ),
];

#[test]
fn mistyped_subcommands_flags_and_values_get_a_suggestion() {
    for (args, hint) in SUGGESTIONS {
        let (code, out) = run_to_end(args);
        assert_eq!(code, 2, "{args:?} is a usage error:\n{out}");
        assert!(
            out.contains(hint),
            "{args:?} should suggest {hint:?}:\n{out}"
        );
    }
}

#[test]
fn a_mistyped_config_key_gets_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "dns = [\"127.0.0.1:0\"]\nclustr-domain = \"x.local\"\n",
    )
    .unwrap();
    let (code, out) = run_to_end(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(":2"), "names the line: {out}");
    assert!(
        out.contains("unknown key `clustr-domain`; did you mean `cluster-domain`?"),
        "{out}"
    );
}

/// `switchboard run` in Kubernetes mode with `env` and `args`, to its exit: (code, stderr).
fn kube_mode(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--no-admin"]).args(args);
    // Not in a pod, whatever the machine running the tests is.
    cmd.env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run switchboard");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_missing_kubeconfig_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-kubeconfig");
    let missing = missing.to_str().unwrap();
    // Through $KUBECONFIG (kube-rs's inference: the kubeconfig, then in-cluster) and through
    // --kubeconfig (that file only).
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 2] = [
        (
            &[],
            &[("KUBECONFIG", missing)],
            "no usable Kubernetes configuration",
        ),
        (&["--kubeconfig", missing], &[], "--kubeconfig"),
    ];
    for (args, env, opening) in cases {
        let (code, err) = kube_mode(args, env);
        assert_eq!(code, 1, "{err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!("switchboard: {opening}")),
            "{err}"
        );
        assert_eq!(last.matches(missing).count(), 1, "the path once: {last}");
        assert_eq!(
            last.matches("No such file or directory").count(),
            1,
            "the cause once: {last}"
        );
    }
}
