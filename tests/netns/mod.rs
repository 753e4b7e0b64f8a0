//! Helpers for the L4 tests: network namespaces joined by veth pairs (root only), switchboard
//! running inside a "node" namespace, real TCP/UDP backends, and manifest builders.
//!
//! Everything a test creates is removed on `Drop`, also when the test fails: processes first,
//! then namespaces (which takes their veths, addresses, routes and nftables tables with them).
//! Names are unique per process and test (`sb<pid>n<counter>`). Traffic only ever flows between
//! addresses inside these namespaces, or on 127.0.0.0/8 for the unprivileged tests.
#![allow(dead_code)]

#[path = "../common/mod.rs"]
mod common;
pub use common::Switchboard;

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// True when this test cannot run here (not root, or no `ip`/`nft`): says so on the terminal,
/// or fails the test when `SWITCHBOARD_REQUIRE_ROOT=1` (see `common::skip_unless_root`).
pub fn skip_unless_root(test: &str) -> bool {
    common::skip_unless_root(test, &["ip", "nft"])
}

fn unique() -> String {
    format!(
        "sb{}n{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Netns {
        let name = format!("{}{role}", unique());
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip("link set lo up");
        ns
    }

    /// `ip -n NAME ARGS` (whitespace-separated); panics on failure.
    pub fn ip(&self, args: &str) -> String {
        let mut v = vec!["-n", &self.name];
        v.extend(args.split_whitespace());
        run("ip", &v)
    }

    /// Runs a command inside the namespace; panics on failure.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut v = vec!["netns", "exec", &self.name];
        v.extend(args);
        run("ip", &v)
    }

    /// Like `exec`, returning (success, stdout+stderr) instead of panicking.
    pub fn try_exec(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Sets `a.b.c=v` through /proc/sys (no procps needed).
    pub fn sysctl(&self, kv: &str) {
        let (k, v) = kv.split_once('=').expect("key=value");
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        self.exec(&["sh", "-c", &format!("echo {v} > {path}")]);
    }

    /// Runs `f` on a thread inside this namespace; sockets it creates stay in the namespace.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(move || {
                let fd = std::fs::File::open(&path).expect("open netns");
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The endpoint pick of a kernel-path chain in switchboard's table in `ns`, as nft lists it:
/// `numgen random mod N [offset O] map @MAP` gives (N, O, MAP's listing). `Err` with the chain's
/// listing when the chain has no pick (it DNATs to one endpoint, or does not exist).
pub fn chain_pick(ns: &Netns, chain: &str) -> Result<(usize, u32, String), String> {
    let table = chain_table(chain);
    let (_, listing) = ns.try_exec(&["nft", "list", "chain", "inet", &table, chain]);
    let words: Vec<&str> = listing
        .split("numgen random mod ")
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    // nft leaves out `offset 0`.
    let (n, offset, map) = match words[..] {
        [n, "offset", o, "map", m, ..] => (n, o.parse().ok(), m),
        [n, "map", m, ..] => (n, Some(0), m),
        _ => return Err(listing),
    };
    let (Ok(n), Some(offset)) = (n.parse(), offset) else {
        return Err(listing);
    };
    let map = map.trim_start_matches('@');
    Ok((
        n,
        offset,
        ns.exec(&["nft", "list", "map", "inet", &table, map]),
    ))
}

/// The service table (`inet switchboard-svcN`) holding a kernel-path chain of switchboard's
/// default table.
pub fn chain_table(chain: &str) -> String {
    proxy::l4::nft::chain_table(&proxy::l4::NftConfig::default(), chain)
}

/// `nft list chain` of a kernel-path chain in its service table.
pub fn list_chain(ns: &Netns, chain: &str) -> String {
    ns.exec(&["nft", "list", "chain", "inet", &chain_table(chain), chain])
}

/// switchboard's tables in `ns` (the main one and the service tables): every table there.
pub fn list_tables(ns: &Netns) -> String {
    ns.exec(&["nft", "list", "ruleset"])
}

/// A veth pair from `a` (interface `a_if`) to `b` (`b_if`), both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    run(
        "ip",
        &[
            "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
            &b.name,
        ],
    );
    a.ip(&format!("link set {a_if} up"));
    b.ip(&format!("link set {b_if} up"));
}

/// Runs `f` in `ns`, or here when `None`.
pub fn within<T: Send>(ns: Option<&Netns>, f: impl FnOnce() -> T + Send) -> T {
    match ns {
        Some(ns) => ns.enter(f),
        None => f(),
    }
}

mod backend;
mod client;
mod cluster;
// Each test uses some of these.
#[allow(unused_imports)]
pub use backend::*;
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use cluster::*;
