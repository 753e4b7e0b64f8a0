#!/usr/bin/env python3
"""L4 programming at scale: how fast switchboard's kernel path (`--l4 nftables`) gets a large
cluster into the kernel and keeps it there (root needed).

A node namespace holds switchboard with a synthetic cluster of 10,000 Services of 10 endpoints
each, served by the test API server (`bench-gen api`, in the node namespace; `--source files`:
one manifest per Service instead), plus one probe Service, from a manifest, whose endpoints are
real: backend pod namespaces answering HTTP on 8080. A client pod namespace connects to the
probe's ClusterIP. Measured, per round (a fresh process each round):

- start → first correctly forwarded connection: from spawning switchboard until the client's
  HTTP request to the probe's ClusterIP is answered by the backend (the client retries every
  10 ms from before the start);
- the first full table: the time of the sync that installs it once every source has synced
  (`l4: synced ... seconds=` in switchboard's log: computing every verdict and chain, and one
  `nft -f` transaction that loads them);
- one EndpointSlice change of the probe, from its manifest being read to the kernel holding it
  (the sync's own time, from the same log line, with what carried it):
  - an endpoint replaced (same number of endpoints: only map elements change → netlink);
  - an endpoint added or removed (the chain's rule changes too, and the kernel then validates
    the chain's service table), in the same one transaction;
- for comparison, the same element-only change applied by `nft -f` by hand against the loaded
  table (what switchboard did for every change before it used netlink).

Everything (namespaces, nftables tables, processes) is removed on exit, also on failure.
"""

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import benchlib as B  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "l4"))
import run as l4  # noqa: E402  (bench/l4/run.py: the same namespaces and helpers)

PROBE_VIP = "172.30.0.1"
SYNCED = re.compile(r"l4: synced generation=(\d+) seconds=([0-9.e-]+) commands=(\d+) "
                    r"via=\"?(\w*)\"?(?: compute_ms=([0-9.e-]+) apply_ms=([0-9.e-]+))?"
                    r"(?: apply_cpu_ms=([0-9.e-]+))?(?: chains=(\d+))?")

BACKEND = """
import socket, sys, threading
name = sys.argv[1]
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(512)
body = ("backend-" + name + "\\n").encode()
def serve(c):
    try:
        c.recv(4096)
        c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n" % len(body) + body)
    finally:
        c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# Connects to the probe every 10 ms until a backend answers; prints CLOCK_MONOTONIC then.
CLIENT = """
import socket, sys, time
vip, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
print("waiting", flush=True)
while time.monotonic() < deadline:
    try:
        s = socket.create_connection((vip, 80), timeout=0.2)
        s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
        d = b""
        while True:
            c = s.recv(4096)
            if not c: break
            d += c
        if b"backend-" in d:
            print("ok", time.monotonic(), flush=True)
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.01)
print("timeout", flush=True)
sys.exit(1)
"""


def probe_manifest(d, backends):
    eps = "\n".join(f"""  - addresses: ["{ip}"]
    conditions: {{ ready: true, serving: true, terminating: false }}
    nodeName: node-1""" for ip in backends)
    text = f"""apiVersion: v1
kind: Service
metadata: {{ name: probe, namespace: bench }}
spec:
  clusterIP: {PROBE_VIP}
  ports:
  - {{ name: http, protocol: TCP, port: 80, targetPort: 8080 }}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: probe-1
  namespace: bench
  labels: {{ kubernetes.io/service-name: probe }}
addressType: IPv4
ports:
- {{ name: http, protocol: TCP, port: 8080 }}
endpoints:
{eps}
"""
    tmp = d / ".probe.yaml.tmp"
    tmp.write_text(text)
    tmp.rename(d / "probe.yaml")


def synced(p):
    # (generation, seconds, commands, via, chains, compute ms, transaction ms, its CPU ms)
    opt = lambda v: float(v) if v else None  # noqa: E731
    return [(int(m[1]), float(m[2]), int(m[3]), m[4], m[8], float(m[5] or 0), float(m[6] or 0),
             opt(m[7]))
            for m in SYNCED.finditer(p.text())]


def wait_sync(p, after, timeout=60):
    """The first `l4: synced` line of a generation newer than `after`."""
    found = []

    def newer():
        found[:] = [s for s in synced(p) if s[0] > after]
        return bool(found)

    B.wait_for(newer, timeout, f"a sync after generation {after}", p, interval=0.005)
    return found[0]


def service_table(chain):
    """The service table of a kernel-path chain: `proxy/src/l4/service_tables.rs`'s FNV-1a of
    the name's first five parts, modulo 16."""
    h = 0x811C9DC5
    for b in "/".join(chain.split("/")[:5]).encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return f"switchboard-svc{h % 16}"


def nft_by_hand(table, map_name, key, ip, n=11):
    """Times `nft -f` of one element replaced in `map_name` (delete + add, one transaction)
    inside the node namespace, n times; returns (wall ms, CPU ms) pairs."""
    script = (f"delete element inet {table} {map_name} {{ {key} }}\n"
              f"add element inet {table} {map_name} {{ {key} : {ip} . 8080 }}\n")
    out = l4.nsx(l4.NODE, "python3", "-c", f"""
import resource, subprocess, time
script = {script!r}
def cpu():
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime
for _ in range({n}):
    t, c = time.monotonic(), cpu()
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)
    print((time.monotonic() - t) * 1000, (cpu() - c) * 1000)
""")
    vals = [float(x) for x in out.split()]
    return list(zip(vals[0::2], vals[1::2]))


PROBE_CHAIN = "svc-bench/probe/tcp/80/int4"


def probe_pick():
    """(table, map, offset) of the probe's pick, from its chain's rule."""
    table = service_table(PROBE_CHAIN)
    chain = l4.nsx(l4.NODE, "nft", "list", "chain", "inet", table, PROBE_CHAIN)
    m = re.search(r"numgen random mod \d+ (?:offset (\d+) )?map @(\S+)", chain)
    if not m:
        raise RuntimeError(f"no pick in the probe's chain:\n{chain}")
    return table, m[2], int(m[1] or 0)


def one_round(a, wd, source_args, probe_dir, rnd, full_table="netlink"):
    """One fresh process; with `full_table` "nft" (`--l4-full-table nft`), only its start
    and first full table are timed."""
    backends = [ip for _, ip in l4.BACKENDS]
    probe_manifest(probe_dir, backends[:1])
    api = None
    if a.source == "api":
        api = subprocess.Popen(["ip", "netns", "exec", l4.NODE, B.GEN, "api", "--services",
                                str(a.services), "--endpoints", str(a.endpoints),
                                "--headless-every", "5000", "--kubeconfig", wd / "kubeconfig"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if api.stdout.readline().strip() != "ready":
            raise RuntimeError("bench-gen api did not start")
    client = subprocess.Popen(["ip", "netns", "exec", l4.CLIENT, "python3", "-c", CLIENT,
                               PROBE_VIP, "180"], stdout=subprocess.PIPE, text=True)
    assert client.stdout.readline().strip() == "waiting"
    t0 = time.monotonic()
    p = B.Proc(f"switchboard-l4prog-{rnd}",
               ["ip", "netns", "exec", l4.NODE, B.BIN, "run", *source_args,
                "--l4", "nftables", "--node-name", "node-1", "--admin", "127.0.0.1:0",
                "--upstream", "127.0.0.1:9",
                "--log", "warn,switchboard=info,proxy::l4::sync=debug",
                "--l4-full-table", full_table],
               wd / f"switchboard-{rnd}.log")
    try:
        line = client.stdout.readline().split()
        client.wait(timeout=10)
        if not line or line[0] != "ok":
            raise RuntimeError(f"the probe was never forwarded:\n{p.text()[-3000:]}")
        first_forward = float(line[1]) - t0
        full = re.compile(r"installing the full table generation=(\d+)")
        B.wait_for(lambda: full.search(p.text()), 60, "the full table", p)
        first = wait_sync(p, int(full.search(p.text())[1]) - 1)
        r = {"first_forward_s": first_forward, "first_sync_s": first[1],
             "first_compute_ms": first[5], "first_apply_ms": first[6],
             "first_apply_cpu_ms": first[7], "first_via": first[3],
             "chains": int(first[4] or 0), "changes": []}
        B.log(f"l4prog round {rnd + 1} ({full_table}): forwarded after {first_forward:.2f} s, first sync "
              f"{first[1]:.3f} s ({r['chains']} chains)")
        if full_table == "nft":
            return r
        gen = max(s[0] for s in synced(p))
        # Two endpoints: the probe gets a pick (a rule change, nft).
        probe_manifest(probe_dir, backends[:2])
        gen = wait_sync(p, gen)[0]
        plan = []
        for i in range(a.changes):
            plan.append(("replace", [backends[0], backends[2 - i % 2]]))
        for i in range(a.changes):
            plan.append(("add", backends[:3]))
            plan.append(("remove", backends[:2]))
        for kind, eps in plan:
            time.sleep(0.05)
            probe_manifest(probe_dir, eps)
            s = wait_sync(p, gen)
            gen = s[0]
            r["changes"].append({"kind": kind, "ms": s[1] * 1000, "via": s[3],
                                 "commands": s[2], "compute_ms": s[5], "apply_ms": s[6],
                                 "apply_cpu_ms": s[7]})
        table, pick_map, offset = probe_pick()
        r["nft_by_hand_ms"] = nft_by_hand(table, pick_map, offset, backends[1])
        return r
    finally:
        client.kill()
        p.stop()
        if api:
            api.stdin.close()
            api.wait(timeout=30)
        # switchboard's tables (the main one and the service tables) are all the node has.
        l4.nsx(l4.NODE, "nft", "flush", "ruleset", check=False)


def run(a):
    if os.geteuid() != 0:
        return {"skip": "needs root (network namespaces, nftables)"}
    if not B.BIN.exists():
        return {"skip": "target/release/switchboard not built"}
    wd = B.WORK / "l4prog"
    wd.mkdir(parents=True, exist_ok=True)
    if a.source == "files":
        B.log(f"l4prog: generating {a.services} services × {a.endpoints} endpoints")
        subprocess.run([B.GEN, "cluster", "--services", str(a.services), "--endpoints",
                        str(a.endpoints), "--headless-every", "5000", "--queries", "10",
                        "--out", wd / "cluster"], check=True, capture_output=True)
        probe_dir = wd / "cluster" / "manifests"
        source_args = ["--manifests", probe_dir]
    else:
        probe_dir = wd / "probe"
        probe_dir.mkdir(parents=True, exist_ok=True)
        source_args = ["--kubeconfig", wd / "kubeconfig", "--manifests", probe_dir]
    results = {"args": vars(a), "machine": B.machine(), "build": B.build_info(),
               "nft": B.pkg_version("nftables"), "rounds": []}
    try:
        l4.topology()
        procs = [B.Proc(f"backend-{name}", ["ip", "netns", "exec", f"{l4.PREFIX}{name}",
                                             "python3", "-c", BACKEND, name],
                        wd / f"backend-{name}.log") for name, _ in l4.BACKENDS]
        results["nft_rounds"] = []
        for rnd in range(a.runs):
            results["rounds"].append(one_round(a, wd, source_args, probe_dir, rnd))
            # Interleaved: the same start with the whole table through `nft -f`.
            results["nft_rounds"].append(
                one_round(a, wd, source_args, probe_dir, rnd, full_table="nft"))
            B.save_results("l4prog", results)
        for pr in procs:
            pr.stop()
    finally:
        l4.cleanup()
    return results


def summarize(results):
    if "skip" in results:
        return f"## L4: programming at scale\n\nNot run: {results['skip']}.\n"
    a, rounds = results["args"], results["rounds"]
    nft_rounds = results.get("nft_rounds", [])
    ms = lambda vals, d=1: B.fmt_spread(B.median_spread(vals), d)  # noqa: E731
    changes = [c for r in rounds for c in r["changes"]]
    by = lambda kind: [c for c in changes if c["kind"] == kind]  # noqa: E731
    via = lambda kind: "/".join(sorted({c["via"] for c in by(kind)}))  # noqa: E731
    lines = [
        "## L4: programming at scale (kernel path)", "",
        B.machine_line(results["machine"], f" · nft {results.get('nft') or '?'}"), "",
        f"Command: `bench/run l4prog`, as root (source={a.get('source', 'files')}, "
        f"services={a['services']}, "
        f"endpoints={a['endpoints']} each, runs={a['runs']}, changes={a['changes']} of each "
        "kind per run). A fresh switchboard process per run, in a node namespace, reading the "
        "Services from the project's test API server (source=api) or from one manifest per "
        "Service (source=files); a probe Service with real backends that a client pod "
        "namespace connects to (see `bench/l4prog/run.py`).", "",
        "| what | median (min–max) | of which: computing | of which: the transaction "
        "(its CPU time) | carried by |", "|---|---|---|---|---|",
        f"| start → first correctly forwarded connection | "
        f"{ms([r['first_forward_s'] for r in rounds], 2)} s | | | |",
        f"| first full table ({rounds[0]['chains'] if rounds else '?'} chains, "
        f"{a['services'] * a['endpoints']:,} endpoints): its sync | "
        f"{ms([r['first_sync_s'] for r in rounds], 3)} s | "
        f"{ms([r.get('first_compute_ms') for r in rounds], 0)} ms | "
        f"{ms([r.get('first_apply_ms') for r in rounds], 0)} ms "
        f"({ms([r.get('first_apply_cpu_ms') for r in rounds], 0)} ms) | "
        f"{'/'.join(sorted({r.get('first_via') or '?' for r in rounds}))}, one transaction |",
        f"| the same start with `--l4-full-table nft`: start → first forwarded | "
        f"{ms([r['first_forward_s'] for r in nft_rounds], 2)} s | | | |",
        f"| … its first full table | {ms([r['first_sync_s'] for r in nft_rounds], 3)} s | "
        f"{ms([r.get('first_compute_ms') for r in nft_rounds], 0)} ms | "
        f"{ms([r.get('first_apply_ms') for r in nft_rounds], 0)} ms "
        f"({ms([r.get('first_apply_cpu_ms') for r in nft_rounds], 0)} ms) | "
        f"{'/'.join(sorted({r.get('first_via') or '?' for r in nft_rounds}))}, one transaction |",
        *[f"| {label} | {ms([c['ms'] for c in by(kind)], 2)} ms | "
          f"{ms([c.get('compute_ms') for c in by(kind)], 2)} ms | "
          f"{ms([c.get('apply_ms') for c in by(kind)], 2)} ms "
          f"({ms([c.get('apply_cpu_ms') for c in by(kind)], 2)} ms) | {via(kind)} |"
          for kind, label in (("replace", "one endpoint replaced (same count)"),
                              ("add", "one endpoint added"),
                              ("remove", "one endpoint removed"))],
        f"| the same element change by `nft -f`, by hand | | | "
        f"{ms([w for r in rounds for w, _ in r['nft_by_hand_ms']], 2)} ms "
        f"({ms([c for r in rounds for _, c in r['nft_by_hand_ms']], 2)} ms) | nft |", "",
        "A change's time is the sync's own (`l4: synced … seconds=`, with `compute_ms` and "
        "`apply_ms`; the transaction's CPU time in brackets is the sending thread's for "
        "netlink, where the kernel applies the batch, and the `nft` process's for nft): "
        "recomputing the changed Service's verdicts and chain, the transaction, "
        "then the bookkeeping after it (health-check servers, metrics); it starts once the "
        "manifest is read. For scale, kube-proxy v1.36.2's nftables mode on the same kind of machine and "
        "cluster (outside run, issue #15): 47.2 s from start to the first forwarded "
        "connection, 34–52 s for the first sync, 9.7–18.2 s per one-endpoint sync.", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--changes", type=int, default=10)
    ap.add_argument("--source", choices=["api", "files"], default="api")
    B.docs_args(ap)
    a = ap.parse_args()
    B.run_part("l4prog", a, run, summarize)


if __name__ == "__main__":
    main()
