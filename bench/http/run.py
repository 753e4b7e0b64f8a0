#!/usr/bin/env python3
"""HTTP: wrk through switchboard (`--http`, an Ingress), HAProxy (http mode) and nginx (upstream
with keepalive), and straight to one backend as the ceiling; 1 and 2 proxy workers.

Backends: one nginx process (1 worker) listening on 127.0.0.2, 127.0.0.3 and 127.0.0.4 (same
port), each answering `200 backend-N`. Every proxy balances over the three (round robin or its
default), keeps upstream connections alive, and logs nothing per request. Before timing, 30
requests through each proxy must all be 200 and reach all three backends.

switchboard runs twice: as is, and with the backend Service annotated
`switchboard.dev/upstream-pipelining: "true"` (target `switchboard-pipelined`).

`--baseline-bin PATH` adds a third switchboard, target `switchboard-baseline`: another build
(e.g. the commit before a change) started with the same flags, manifests and environment as the
target `switchboard`, and timed in the same rounds, interleaved with it, so both see the same
machine noise. Each cell then ends with the ratios switchboard / baseline. The binary is copied
to target/bench/bin/baseline/ first and described by a BUILD file next to it if there is one
(as bench/run leaves in target/bench/bin), else by its path. With bench/run, pair it with
`BENCH_NO_BUILD=1 SWITCHBOARD_BIN=PATH` to choose the other binary too:

    BENCH_NO_BUILD=1 SWITCHBOARD_BIN=/tmp/after bench/run http --baseline-bin /tmp/before --no-docs

Load: `wrk -t 2 -c 64 -d D --latency -H 'Host: bench.local'` (closed loop, keep-alive), giving
requests/s and the latency distribution (p50, p99) under that load, and the proxy's CPU time per
request. switchboard's workers are its HTTP event-loop threads (`--http-workers N`, each with its
own SO_REUSEPORT socket; the rest of the process runs on one tokio thread), or where the binary
has no such flag its tokio worker threads (TOKIO_WORKER_THREADS=N); HAProxy's `nbthread`,
nginx's `worker_processes`.
"""

import argparse
import hashlib
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import benchlib as B  # noqa: E402

HOST = "bench.local"
BACKENDS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
TARGETS = ["switchboard", "switchboard-pipelined", "haproxy", "nginx", "direct"]
LABEL = {"switchboard": "switchboard",
         "switchboard-baseline": "switchboard, baseline binary",
         "switchboard-pipelined": "switchboard, Service annotated `upstream-pipelining: \"true\"`",
         "haproxy": "HAProxy (http mode)",
         "nginx": "nginx (upstream keepalive)", "direct": "direct to one backend (ceiling)"}
PKG = {"haproxy": "haproxy", "nginx": "nginx", "direct": "nginx"}
# The two setups (`--setup`). `bench`: the first, tuned for comparing proxies (backends on three
# addresses answering from a `return`, switchboard round robin with its access log off and one
# tokio thread beside its HTTP worker). `defaults`: issue 17's independent run: backends on three
# ports of 127.0.0.1 serving a small file, switchboard as it starts with only `--http-workers N`
# (least-request balancing, access log on at INFO into its log file, tokio's default threads).
SETUPS = {"bench": {"ports": False, "static": False, "tuned": True},
          "defaults": {"ports": True, "static": True, "tuned": False}}
# Results file and docs/benchmarks.md section of each setup.
PART = {"bench": "http", "defaults": "http-defaults"}


def nginx_backends(wd, ups, static=False):
    """One nginx worker serving every address of `ups` (`ip:port`), the N-th answering
    `backend-N`: from a `return` (the first setup) or, with `static`, a small file (index.html)."""
    def answer(i):
        if not static:
            return f"location / {{ return 200 \"backend-{i + 1}\\n\"; }}"
        root = wd / f"www-{i + 1}"
        root.mkdir(parents=True, exist_ok=True)
        (root / "index.html").write_text(f"backend-{i + 1}\n")
        return f"root {root}; location / {{ index index.html; }}"
    servers = "\n".join(
        f"    server {{ listen {u} reuseport; keepalive_requests 1000000; {answer(i)} }}"
        for i, u in enumerate(ups))
    conf = wd / "backends.conf"
    conf.write_text(f"""daemon off;
worker_processes 1;
pid {wd}/backends.pid;
error_log {wd}/backends.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type text/plain;
    keepalive_timeout 65;
{servers}
}}
""")
    return B.Proc("backends", [B.which("nginx") or "nginx", "-c", conf, "-p", wd], wd / "backends.out")


def start_backends(wd, setup):
    """The backends of `setup` (a value of SETUPS), answering: (their `ip:port`s, Proc)."""
    if setup["ports"]:
        ports = set()
        while len(ports) < 3:
            ports.add(B.free_port())
        ups = [f"127.0.0.1:{p}" for p in sorted(ports)]
    else:
        bport = B.free_port()
        ups = [f"{ip}:{bport}" for ip in BACKENDS]
    backends = nginx_backends(wd, ups, static=setup["static"])
    B.wait_for(lambda: all(_ok(u) for u in ups), 30, "the backends", backends)
    return ups, backends


def nginx_proxy(wd, port, upstreams, workers, prefix=()):
    """nginx as the proxy; `prefix`: a command to run it under (callgrind.py's valgrind), which
    also makes it one process (`master_process off`)."""
    ups = "\n".join(f"        server {u};" for u in upstreams)
    conf = wd / f"nginx-{workers}.conf"
    conf.write_text(f"""daemon off;{chr(10) + "master_process off;" if prefix else ""}
worker_processes {workers};
pid {wd}/nginx-{workers}.pid;
error_log {wd}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    upstream web {{
{ups}
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://web;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
""")
    return B.Proc(f"nginx-{workers}", [*prefix, B.which("nginx") or "nginx", "-c", conf, "-p", wd],
                  wd / f"nginx-{workers}.out")


def haproxy(wd, port, ups, workers, prefix=()):
    servers = "\n".join(f"    server b{i + 1} {u}" for i, u in enumerate(ups))
    conf = wd / f"haproxy-{workers}.cfg"
    # maxconn stays below the file-descriptor hard limit (20000 here).
    conf.write_text(f"""global
    nbthread {workers}
    maxconn 8000
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:{port}
    default_backend web
backend web
    balance roundrobin
{servers}
""")
    return B.Proc(f"haproxy-{workers}", [*prefix, B.which("haproxy") or "haproxy", "-db", "-f", conf],
                  wd / f"haproxy-{workers}.out")


def switchboard_manifests(wd, ups, pipelining=False):
    """The Service, its endpoints and an Ingress for `HOST`. Endpoints that share a port are one
    EndpointSlice; one per port otherwise (the second setup's backends differ only by port)."""
    d = wd / ("manifests-pipelined" if pipelining else "manifests")
    d.mkdir(parents=True, exist_ok=True)
    by_port = {}
    for i, u in enumerate(ups):
        ip, port = u.rsplit(":", 1)
        by_port.setdefault(int(port), []).append((i, ip))
    target = next(iter(by_port)) if len(by_port) == 1 else "http"
    notes = ('\n  annotations: { switchboard.dev/upstream-pipelining: "true" }' if pipelining else "")
    slices = ""
    for n, (port, eps) in enumerate(by_port.items()):
        lines = "\n".join(f"""  - addresses: ["{ip}"]
    conditions: {{ ready: true, serving: true, terminating: false }}
    targetRef: {{ kind: Pod, namespace: bench, name: web-{i + 1} }}""" for i, ip in eps)
        slices += f"""---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-{n + 1}
  namespace: bench
  labels: {{ kubernetes.io/service-name: web }}
addressType: IPv4
ports: [{{ name: http, protocol: TCP, port: {port} }}]
endpoints:
{lines}
"""
    (d / "web.yaml").write_text(f"""apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: bench{notes}
spec:
  clusterIP: 10.96.200.1
  ports: [{{ name: http, protocol: TCP, port: 80, targetPort: {target} }}]
{slices}---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{ name: web, namespace: bench }}
spec:
  ingressClassName: switchboard
  rules:
  - host: {HOST}
    http:
      paths:
      - path: /
        pathType: Prefix
        backend: {{ service: {{ name: web, port: {{ number: 80 }} }} }}
""")
    return d


def get(addr, host=HOST):
    h, p = addr.rsplit(":", 1)
    import socket

    with socket.create_connection((h, int(p)), timeout=3) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            c = s.recv(65536)
            if not c:
                break
            data += c
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace").strip()


def check(addr, expect_all, n):
    seen = set()
    for _ in range(30):
        status, body = get(addr)
        if status != 200 or not body.startswith("backend-"):
            return f"GET / answered {status} {body[:60]!r}"
        seen.add(body)
    if expect_all and len(seen) != n:
        return f"30 requests reached only {sorted(seen)}"
    return None


def start(target, wd, ups, workers, setup, baseline=None):
    """(Proc or None, address). `ups`: the backends' `ip:port`s; `setup`: a key of SETUPS;
    `baseline`: the binary of the target `switchboard-baseline`."""
    if target == "direct":
        return None, ups[0]
    if target.startswith("switchboard"):
        binary = B.BIN
        if target == "switchboard-baseline":
            if not baseline:
                raise LookupError("no --baseline-bin given")
            binary = baseline
        if not binary.exists():
            raise RuntimeError(f"{binary} not built")
        # Flags each binary has (a baseline may predate some): the same ones where both have them.
        help_text = B.switchboard_help(binary)
        if "--http" not in help_text:
            raise LookupError("not yet implemented (no --http flag)")
        man = switchboard_manifests(wd, ups, target == "switchboard-pipelined")
        has_workers = "--http-workers" in help_text
        tuned = SETUPS[setup]["tuned"]
        flags = ["--log", "warn,switchboard=info,proxy=info",
                 *(["--lb-algorithm", "round-robin"] if "--lb-algorithm" in help_text else [])]
        proc, ls = B.start_switchboard(
            ["--manifests", man, "--http", "127.0.0.1:0", *(flags if tuned else []),
             *(["--http-workers", str(workers)] if has_workers else [])],
            name=f"{target}-http-{workers}",
            env=({"TOKIO_WORKER_THREADS": "1" if has_workers else str(workers)} if tuned
                 or not has_workers else {}),
            logdir=wd, bin=binary)
        if "http" not in ls:
            proc.stop()
            raise LookupError("not yet implemented (switchboard run logs no http listener)")
        return proc, ls["http"][0]
    if not B.which(target):
        raise LookupError(B.not_installed(target, PKG[target]))
    port = B.free_port()
    proc = (haproxy if target == "haproxy" else nginx_proxy)(wd, port, ups, workers)
    addr = f"127.0.0.1:{port}"

    def up():
        try:
            return get(addr)[0] > 0
        except OSError:
            return False

    B.wait_for(up, 30, f"{target} to answer", proc)
    return proc, addr


def to_ms(s):
    m = re.match(r"([\d.]+)(us|ms|s)", s)
    if not m:
        return None
    v = float(m.group(1))
    return v / 1000 if m.group(2) == "us" else v if m.group(2) == "ms" else v * 1000


def pin_tree(pid, cpus):
    """Sets the CPU affinity of every thread of `pid` and of its descendant processes."""
    pids, grew = {pid}, True
    while grew:
        grew = False
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) in pids:
                continue
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid in pids:
                pids.add(int(d.name))
                grew = True
    for p in pids:
        try:
            for t in (Path("/proc") / str(p) / "task").iterdir():
                os.sched_setaffinity(int(t.name), cpus)
        except OSError:
            pass


def cell_label(workers):
    """`1`, `2`: proxy workers sharing both cores with load and backends; `1p`: one worker with
    the proxy on CPU 1 and wrk and the backends on CPU 0."""
    if workers.endswith("p"):
        return "1 proxy worker, pinned (wrk and backends on CPU 0, the proxy on CPU 1)"
    return f"{workers} proxy worker{'s' if workers != '1' else ''}"


def wrk(proc, addr, a, helpers=(), pinned=False):
    cmd = ["taskset", "-c", "0"] if pinned else []
    cmd += ["wrk", "-t", "2", "-c", str(a.connections), "-d", f"{a.duration}s", "--latency",
           "-H", f"Host: {HOST}", f"http://{addr}/"]
    cpu = B.CpuWindow(proc.pid if proc else None, helpers)
    cpu.start()
    out, err, ticks, wall = B.run_timed(cmd, a.duration + 30)
    w = cpu.stop(ticks)
    r = {"cmd": B.cmdline(cmd)}
    r.update(w)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", out)
    r["requests"] = int(m.group(1)) if m else None
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        r[f"p{pct}_ms"] = to_ms(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["errors"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    r["socket_errors"] = m.group(1) if m else ""
    if proc and r["requests"]:
        r["cpu_us_per_request"] = w["server_cpu_s"] / r["requests"] * 1e6
    if r["rps"] is None:
        r["error"] = (err or out)[-300:]
    return r


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(a):
    results = {"machine": B.machine(), "args": vars(a), "cells": {},
               "versions": {t: B.pkg_version(p) for t, p in PKG.items()}}
    targets = a.targets.split(",")
    baseline = None
    if a.baseline_bin:
        baseline = B.copy_baseline(a.baseline_bin)
        if "switchboard-baseline" not in targets:
            at = targets.index("switchboard") + 1 if "switchboard" in targets else 0
            targets.insert(at, "switchboard-baseline")
        # Which binaries ran: the build each says it is, and their digests.
        results["binaries"] = {
            "switchboard": {"build": B.build_info(), "sha256": sha256(B.BIN)},
            "switchboard-baseline": {"build": B.build_info(baseline), "sha256": sha256(baseline),
                                     "given": str(Path(a.baseline_bin).resolve())}}
        for t, b in results["binaries"].items():
            B.log(f"http {t}: {b['build']}, sha256 {b['sha256'][:16]}")
    setup = SETUPS[a.setup]
    wd = B.WORK / PART[a.setup]
    wd.mkdir(parents=True, exist_ok=True)
    ups, backends = start_backends(wd, setup)
    all_cpus = os.sched_getaffinity(0)
    for key in a.workers.split(","):
        pinned = key.endswith("p")
        workers = int(key.rstrip("p"))
        pin_tree(backends.pid, {0} if pinned else all_cpus)
        cell = results["cells"][key] = {}
        running = {}
        for t in targets:
            e = cell[t] = {"runs": []}
            try:
                proc, addr = start(t, wd, ups, workers, a.setup, baseline)
            except (LookupError, RuntimeError) as ex:
                e["skip"] = str(ex).splitlines()[0]
                B.log(f"http {t}: {e['skip']}")
                continue
            if proc and pinned:
                pin_tree(proc.pid, {1})
            problem = check(addr, t != "direct", len(ups))
            if problem:
                e["skip"] = f"failed check: {problem}"
                B.log(f"http {t}: {problem}")
                if proc:
                    proc.stop()
                continue
            running[t] = (proc, addr)
        order = list(running)
        for rnd in range(a.runs):
            k = rnd % max(1, len(order))
            for t in order[k:] + order[:k]:
                proc, addr = running[t]
                with B.Alone(proc, [p for p, _ in running.values()]):
                    r = wrk(proc, addr, a, [backends.pid], pinned)
                cell[t]["runs"].append(r)
                B.log(f"http {key} worker(s) round {rnd + 1} {t}: {r['rps'] or 0:,.0f} req/s, "
                      f"p99 {r['p99_ms']} ms, {r.get('cpu_us_per_request', 0):.1f} µs CPU/req, "
                      f"others' CPU {r['others_cpu_pct']:.0f}%")
                time.sleep(0.5)
        for t, (proc, _) in running.items():
            if proc:
                proc.stop()
        B.save_results(PART[a.setup], results)
    backends.stop()
    return results


def _ok(addr):
    try:
        return get(addr)[0] == 200
    except OSError:
        return False


def summarize(results):
    a = results["args"]
    runs_all = [r for c in results["cells"].values() for e in c.values() for r in e["runs"]]
    others = max((r["others_cpu_pct"] for r in runs_all), default=0)
    setup = a.get("setup", "bench")
    command = "bench/run http" + (" --setup defaults" if setup == "defaults" else "")
    title = ("## HTTP: wrk through the L7 proxies" if setup == "bench" else
             "## HTTP, second setup: switchboard with its default settings")
    lines = [title, "",
             B.machine_line(results["machine"], f" · other processes took {others:.0f}% of the "
                                                f"machine at most during a timed run"), "",
             f"Command: `{command}` (workers={a['workers']}, runs={a['runs']}, "
             f"duration={a['duration']} s, connections={a['connections']}"
             + (f", baseline-bin={a['baseline_bin']}" if a.get("baseline_bin") else "") + ").", ""]
    if setup == "bench":
        lines += [
             "Three backends (one nginx worker answering `200 backend-N` on 127.0.0.2–4), the "
             "proxy in front balancing over them round robin (switchboard: an Ingress for host "
             "`bench.local` and `--lb-algorithm round-robin`, its default being least-request, "
             "and `--http-workers N` with N the cell's workers; "
             "HAProxy `balance roundrobin` with `http-reuse always`; nginx `upstream` with "
             "`keepalive 128`, HTTP/1.1 and an empty `Connection` header) with upstream keep-alive. "
             "The second switchboard row is the same with the backend Service annotated "
             "`switchboard.dev/upstream-pipelining: \"true\"`: GETs read in one pass and balanced "
             "to the same backend go upstream in one write (HTTP/1.1 pipelining, up to 8; off "
             "unless a Service asks for it, see `docs/http.md`); neither peer has an equivalent. "
             "Every proxy is checked to answer 200 and reach all three backends before it is "
             "timed. Load, proxy and backends share the 2 cores, except in the pinned table: there "
             "wrk and the backends run on CPU 0 and the proxy on CPU 1 (CPU affinity of every "
             "thread), so the load generator never takes the proxy's core.", ""]
    else:
        lines += [
             "The setup of issue 17's independent run: three backends on three ports of "
             "127.0.0.1, served by one nginx worker from a small file (`index.html`, "
             "`backend-N`); switchboard started with nothing but `--manifests`, `--http` and "
             "`--http-workers N`: its default balancing (least-request), its default log filter "
             "(`info`: one access-log line per request, into the log file the harness gives "
             "its output) and tokio's default thread count for the rest of the process; no "
             "Service annotation. HAProxy and nginx as in the first setup (no per-request log, "
             "round robin, upstream keep-alive). The same load, checks, rounds and pinning as "
             "there.", ""]
    cmd = None
    for workers, cell in results["cells"].items():
        lines += [f"### {cell_label(workers)}", "",
                  "| target | requests/s | × best peer | × ceiling | CPU µs/request | p50 | p99 | "
                  "errors |", "|---|---|---|---|---|---|---|---|"]
        med = {t: B.median_spread([r["rps"] for r in e["runs"]]) for t, e in cell.items()}
        best = max((m["median"] for t, m in med.items() if m and t in ("haproxy", "nginx")),
                   default=0)
        ceil = med.get("direct")
        for t, e in cell.items():
            v = results["versions"].get(t)
            label = LABEL[t] + (f" {v.split('-')[0]}" if v and t != "direct" else "")
            if t == "switchboard-baseline" and results.get("binaries"):
                label += f" ({results['binaries'][t]['build'].removeprefix('switchboard ')})"
            if e.get("skip") or not e["runs"]:
                lines.append(f"| {label} | {e.get('skip', 'no runs')} | | | | | | |")
                continue
            m = med[t]
            cpu = B.median_spread([r.get("cpu_us_per_request") for r in e["runs"]])
            p50 = B.median_spread([r["p50_ms"] for r in e["runs"]])
            p99 = B.median_spread([r["p99_ms"] for r in e["runs"]])
            errs = sum(r["errors"] for r in e["runs"])
            sock = "; ".join(sorted({r["socket_errors"] for r in e["runs"] if r["socket_errors"]}))
            vs_best = f"{m['median'] / best:.2f}" if best and t != "direct" else "–"
            vs_ceil = f"{m['median'] / ceil['median']:.2f}" if ceil else "–"
            lines.append(
                f"| {label} | {B.fmt_spread(m)} | "
                f"{vs_best} | {vs_ceil} | "
                f"{B.fmt_spread(cpu, 1) if t != 'direct' else '–'} | {B.fmt_spread(p50, 2, ' ms')} | "
                f"{B.fmt_spread(p99, 2, ' ms')} | {errs}{(' ' + sock) if sock else ''} |")
            cmd = cmd or e["runs"][0]["cmd"]
        lines.append("")
        ratios = baseline_ratios(cell)
        if ratios:
            lines += [f"switchboard / baseline (medians): {ratios}.", ""]
    lines += ["requests/s: median (min–max) of the rounds; × best peer against the better of "
              "HAProxy and nginx at the same worker count; × ceiling against wrk straight to one "
              "backend. CPU µs/request: the proxy's CPU time (all threads and processes) per "
              "request. p50/p99: wrk's latency distribution under the same saturating load.", ""]
    if cmd:
        lines += ["Exact load command (ADDR per target):", "", "```", cmd, "```", ""]
    return "\n".join(lines)


def baseline_ratios(cell):
    """`requests/s ×1.01, CPU µs/request ×0.99, p99 ×1.02` of switchboard against the baseline
    binary in one cell, or None when either has no runs."""
    a, b = cell.get("switchboard"), cell.get("switchboard-baseline")
    if not a or not b or not a["runs"] or not b["runs"]:
        return None
    out = []
    for name, key in (("requests/s", "rps"), ("CPU µs/request", "cpu_us_per_request"),
                      ("p50", "p50_ms"), ("p99", "p99_ms")):
        ma = B.median_spread([r.get(key) for r in a["runs"]])
        mb = B.median_spread([r.get(key) for r in b["runs"]])
        if ma and mb and mb["median"]:
            out.append(f"{name} ×{ma['median'] / mb['median']:.3f}")
    return ", ".join(out) or None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2,1p",
                    help="proxy worker counts; `1p`: one worker pinned to CPU 1, load and "
                         "backends on CPU 0")
    ap.add_argument("--targets", help="default: all; without `switchboard-pipelined` in the "
                                      "`defaults` setup")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--setup", choices=list(SETUPS), default="bench",
                    help="`bench`: backends on three addresses, switchboard tuned as the peers "
                         "(round robin, no access log); `defaults`: backends on three ports "
                         "serving a small file, switchboard with its default settings "
                         "(its own section in docs/benchmarks.md)")
    ap.add_argument("--baseline-bin", metavar="PATH",
                    help="another switchboard binary, timed as the target `switchboard-baseline` "
                         "with the same settings, interleaved with `switchboard`")
    B.docs_args(ap)
    a = ap.parse_args()
    if not a.targets:
        a.targets = ",".join(t for t in TARGETS
                             if a.setup == "bench" or t != "switchboard-pipelined")
    B.run_part(PART[a.setup], a, run, summarize)


if __name__ == "__main__":
    main()
