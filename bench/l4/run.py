#!/usr/bin/env python3
"""L4: TCP connections/s, TCP throughput and UDP datagrams/s to a Service VIP through switchboard
(`--l4 nftables`: its kernel path, and its userspace relay for a Service annotated
`switchboard.dev/l4-mode: proxy`), HAProxy (tcp mode) and plain nftables DNAT (the
kernel-forwarding ceiling), in a network-namespace topology like the kube-proxy tests (root
needed).

```
 client pod ─veth─ br-c 10.244.1.1 ┐ node namespace                 ┌ br-b 10.244.2.1 ─veth─ backend pods
 10.244.1.100                      │  VIP 10.96.0.10 → switchboard    │   10.244.2.11-13: nginx :8080
                                   │    (kernel path: DNAT)           │
                                   │  VIP 10.96.0.13 → switchboard    │
                                   │    (relay, l4-mode: proxy)       │
                                   │  VIP 10.96.0.11 → HAProxy (nft   │   (/ → 200, /big → 1 MiB)
                                   │     redirect to its port)        │   knotd :5353 (UDP answers)
                                   └  VIP 10.96.0.12 → nft DNAT ──────┘
```

Every VIP serves TCP 80 → 8080 and UDP 53 → 5353 over the same three backends, so all targets
run side by side and are timed in interleaved rounds. Loads run inside the client namespace:

- connections/s: `wrk -t 2 -c 32 -H 'Connection: close'` (one request per TCP connection);
- throughput: `wrk -t 2 -c 8` on `/big` (1 MiB responses, keep-alive), reported in Gbit/s;
- UDP datagrams/s: `dnsperf -T 2 -c 32 -q 256` to VIP:53 (one datagram each way per query).

Everything (namespaces, their veths, nftables tables and processes) is removed on exit, also
when a run fails or is interrupted. Addresses exist only inside these namespaces.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dns"))
import peers  # noqa: E402

PREFIX = f"sbl4{os.getpid()}"
NODE, CLIENT = f"{PREFIX}node", f"{PREFIX}cli"
BACKENDS = [("b1", "10.244.2.11"), ("b2", "10.244.2.12"), ("b3", "10.244.2.13")]
VIP = {"switchboard": "10.96.0.10", "relay": "10.96.0.13", "haproxy": "10.96.0.11",
       "nftables": "10.96.0.12"}
LABEL = {"switchboard": "switchboard kernel path (--l4 nftables)",
         "relay": "switchboard relay (l4-mode: proxy)", "haproxy": "HAProxy (tcp mode)",
         "nftables": "nftables DNAT (ceiling)"}
LABEL["switchboard+base"] = LABEL["switchboard"] + " — baseline"
# The targets served by a switchboard process (one at a time: see `Switchboards`).
SB_TARGETS = ("switchboard", "relay", "switchboard+base")
TARGETS = "switchboard,relay,haproxy,nftables"
HAPROXY_PORT = 20080
_namespaces = []


def sh(*args, check=True):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def nsx(ns, *args, check=True):
    return sh("ip", "netns", "exec", ns, *args, check=check)


def netns(name):
    sh("ip", "netns", "add", name)
    _namespaces.append(name)
    nsx(name, "ip", "link", "set", "lo", "up")


def cleanup():
    B._stop_all()
    for ns in reversed(_namespaces):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    _namespaces.clear()


def topology():
    netns(NODE)
    netns(CLIENT)
    nsx(NODE, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    for br, addr in (("brc", "10.244.1.1/24"), ("brb", "10.244.2.1/24")):
        nsx(NODE, "ip", "link", "add", br, "type", "bridge")
        nsx(NODE, "ip", "link", "set", br, "up")
        nsx(NODE, "ip", "addr", "add", addr, "dev", br)

    def pod(ns, ip, br, gw, ifname):
        sh("ip", "link", "add", ifname, "netns", NODE, "type", "veth", "peer", "name", "eth0",
           "netns", ns)
        nsx(NODE, "ip", "link", "set", ifname, "master", br)
        nsx(NODE, "ip", "link", "set", ifname, "up")
        nsx(ns, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        nsx(ns, "ip", "link", "set", "eth0", "up")
        nsx(ns, "ip", "route", "add", "default", "via", gw)

    pod(CLIENT, "10.244.1.100", "brc", "10.244.1.1", "vcli")
    # Each target's load comes from its own client address. Targets that keep the client's
    # address (switchboard's kernel path, plain DNAT) otherwise meet the backends' TIME_WAIT
    # sockets of the target timed before them: same 4-tuple, but TCP timestamps from another
    # per-destination offset, so the SYNs are refused for a second each (seen: 27k → 80
    # connections/s for whichever ran second).
    for i, (t, vip) in enumerate(sorted(VIP.items())):
        src = f"10.244.1.{110 + i}"
        nsx(CLIENT, "ip", "addr", "add", f"{src}/24", "dev", "eth0")
        nsx(CLIENT, "ip", "route", "add", f"{vip}/32", "via", "10.244.1.1", "src", src)
    for name, ip in BACKENDS:
        netns(f"{PREFIX}{name}")
        pod(f"{PREFIX}{name}", ip, "brb", "10.244.2.1", f"v{name}")


def start_backends(wd, data):
    procs = []
    (wd / "www").mkdir(parents=True, exist_ok=True)
    (wd / "www" / "big").write_bytes(os.urandom(1 << 20))
    for name, ip in BACKENDS:
        d = wd / name
        d.mkdir(parents=True, exist_ok=True)
        conf = d / "nginx.conf"
        conf.write_text(f"""daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type text/plain;
    sendfile on;
    keepalive_requests 1000000;
    server {{
        listen 8080 reuseport;
        location = / {{ return 200 "backend-{name}\\n"; }}
        location = /big {{ root {wd}/www; }}
    }}
}}
""")
        procs.append(B.Proc(f"nginx-{name}", ["ip", "netns", "exec", f"{PREFIX}{name}",
                                               B.which("nginx") or "nginx", "-c", conf, "-p", d],
                            d / "nginx.out"))
        knot_cmd = peers._knot(Path(data), 5353, 1, d / "knot")
        # Listen on every address of the pod, not loopback.
        kc = Path(knot_cmd[2])
        kc.write_text(kc.read_text().replace("listen: 127.0.0.1@5353", "listen: 0.0.0.0@5353"))
        procs.append(B.Proc(f"knot-{name}", ["ip", "netns", "exec", f"{PREFIX}{name}", *knot_cmd],
                            d / "knot.out"))
    return procs


def service_manifest(d):
    d.mkdir(parents=True, exist_ok=True)
    eps = "\n".join(f"""  - addresses: ["{ip}"]
    conditions: {{ ready: true, serving: true, terminating: false }}
    nodeName: node-1
    targetRef: {{ kind: Pod, namespace: bench, name: web-{name} }}""" for name, ip in BACKENDS)
    for svc, vip, annotations in (
            ("web", VIP["switchboard"], ""),
            ("web-relay", VIP["relay"], "\n  annotations: { switchboard.dev/l4-mode: proxy }")):
        (d / f"{svc}.yaml").write_text(f"""apiVersion: v1
kind: Service
metadata:
  name: {svc}
  namespace: bench{annotations}
spec:
  clusterIP: {vip}
  ports:
  - {{ name: http, protocol: TCP, port: 80, targetPort: 8080 }}
  - {{ name: dns, protocol: UDP, port: 53, targetPort: 5353 }}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {svc}-1
  namespace: bench
  labels: {{ kubernetes.io/service-name: {svc} }}
addressType: IPv4
ports:
- {{ name: http, protocol: TCP, port: 8080 }}
- {{ name: dns, protocol: UDP, port: 5353 }}
endpoints:
{eps}
""")
    return d


def nft_peers(wd):
    """HAProxy's redirect and the DNAT ceiling, in a table of our own in the node namespace."""
    ips = [ip for _, ip in BACKENDS]
    m = ", ".join(f"{i} : {ip}" for i, ip in enumerate(ips))
    rules = f"""table ip sbbench {{
    chain pre {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {VIP['haproxy']} tcp dport 80 redirect to :{HAPROXY_PORT}
        ip daddr {VIP['nftables']} tcp dport 80 dnat to numgen inc mod 3 map {{ {m} }} : 8080
        ip daddr {VIP['nftables']} udp dport 53 dnat to numgen inc mod 3 map {{ {m} }} : 5353
    }}
}}
"""
    f = wd / "sbbench.nft"
    f.write_text(rules)
    nsx(NODE, "nft", "-f", f)


def start_haproxy(wd, workers):
    servers = "\n".join(f"    server {n} {ip}:8080" for n, ip in BACKENDS)
    conf = wd / f"haproxy-{workers}.cfg"
    conf.write_text(f"""global
    nbthread {workers}
    maxconn 8000
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 0.0.0.0:{HAPROXY_PORT}
    default_backend web
backend web
    balance roundrobin
{servers}
""")
    return B.Proc(f"haproxy-l4-{workers}", ["ip", "netns", "exec", NODE,
                                            B.which("haproxy") or "haproxy", "-db", "-f", conf],
                  wd / f"haproxy-{workers}.out")


def start_switchboard(wd, workers, help_text, binary=None):
    binary = binary or B.BIN
    if not binary.exists():
        raise LookupError(f"{binary} not built")
    man = service_manifest(wd / "manifests")
    # `switchboard run` inside the node namespace (so it programs that namespace's nftables).
    name = f"switchboard-l4-{workers}" + ("-base" if binary != B.BIN else "")
    p = B.Proc(name, ["ip", "netns", "exec", NODE, binary, "run", "--manifests", man,
                      "--l4", "nftables", "--node-name", "node-1", "--admin", "127.0.0.1:0",
                      "--upstream", "127.0.0.1:9", "--log", "warn,switchboard=info,proxy=info"],
               wd / f"{name}.log", env={"TOKIO_WORKER_THREADS": str(workers)})
    B.wait_for(lambda: "switchboard started" in p.text(), 60, "switchboard to start", p)
    if "L4 proxy is not built yet" in p.text():
        p.stop()
        raise LookupError("not yet implemented (switchboard logs: the L4 proxy is not built yet)")
    time.sleep(1)
    return p


class Switchboards:
    """The switchboard processes of the targets: `switchboard` and `relay` share one process,
    `switchboard+base` (with --baseline-bin) is the baseline binary programming the same node
    namespace's tables, so only one of the two runs at a time: `get(target)` stops the other
    and starts the one asked for."""

    def __init__(self, wd, workers, help_text, baseline):
        self.args = (wd, workers, help_text)
        self.baseline = baseline
        self.proc, self.base = None, None

    def get(self, target):
        base = target.endswith("+base")
        if self.proc is None or not self.proc.alive() or self.base != base:
            self.stop()
            self.proc = start_switchboard(*self.args, self.baseline if base else None)
            self.base = base
        return self.proc

    def stop(self):
        if self.proc is not None:
            self.proc.stop()
        self.proc = None


def client_get(vip, path="/"):
    r = subprocess.run(["ip", "netns", "exec", CLIENT, "python3", "-c", f"""
import socket
s = socket.create_connection(("{vip}", 80), timeout=3)
s.sendall(b"GET {path} HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
d = b""
while True:
    c = s.recv(65536)
    if not c: break
    d += c
print(d.split(b"\\r\\n\\r\\n", 1)[1].decode(errors="replace").strip()[:40])
"""], capture_output=True, text=True, timeout=20)
    return r.stdout.strip() or r.stderr.strip().splitlines()[-1]


def check(target):
    vip = VIP[target.removesuffix("+base")]
    seen = {client_get(vip) for _ in range(15)}
    if not all(s.startswith("backend-") for s in seen) or len(seen) != 3:
        return f"TCP {vip}:80 answered {sorted(seen)[:3]}, want all three backends"
    if target != "haproxy":
        out = nsx(CLIENT, "dig", f"@{vip}", "-p", "53", "+time=2", "+tries=2", "+short",
                  "dns-version.cluster.local", "TXT", check=False)
        if '"1.1.0"' not in out:
            return f"UDP {vip}:53 answered {out.strip()[:60]!r}"
    return None


def load(target, kind, proc, a, data, helpers=()):
    vip = VIP[target.removesuffix("+base")]
    if kind == "conn":
        cmd = ["wrk", "-t", "2", "-c", "32", "-d", f"{a.duration}s", "-H", "Connection: close",
               f"http://{vip}/"]
    elif kind == "tput":
        cmd = ["wrk", "-t", "2", "-c", "8", "-d", f"{a.duration}s", f"http://{vip}/big"]
    else:
        cmd = ["dnsperf", "-s", vip, "-p", "53", "-d", Path(data) / "queries.txt", "-l",
               a.duration, "-T", "2", "-c", "32", "-q", "256", "-t", "2"]
    # Every target starts from an empty conntrack table: a run of short connections leaves ~100k
    # TIME_WAIT entries, and the targets timed after it would otherwise meet a full table
    # (nf_conntrack_max) and lose SYNs.
    for ns in [NODE, CLIENT] + [f"{PREFIX}{name}" for name, _ in BACKENDS]:
        nsx(ns, "conntrack", "-F", check=False)
    cpu = B.CpuWindow(proc.pid if proc else None, helpers)
    cpu.start()
    out, err, ticks, wall = B.run_timed(["ip", "netns", "exec", CLIENT, *cmd], a.duration + 30)
    w = cpu.stop(ticks)
    r = {"cmd": B.cmdline(cmd)}
    r.update(w)
    if kind == "udp":
        m = re.search(r"Queries per second:\s+([\d.]+)", out)
        r["value"] = float(m.group(1)) if m else None
        m = re.search(r"Queries completed:\s+(\d+)", out)
        n = int(m.group(1)) if m else 0
        m = re.search(r"Queries lost:\s+(\d+)", out)
        r["lost"] = int(m.group(1)) if m else None
    else:
        m = re.search(r"Requests/sec:\s+([\d.]+)", out)
        rps = float(m.group(1)) if m else None
        m = re.search(r"(\d+) requests in", out)
        n = int(m.group(1)) if m else 0
        if kind == "conn":
            r["value"] = rps
        else:
            m = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
            mult = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
            r["value"] = (float(m.group(1)) * mult.get(m.group(2), 1) * 8 / 1e9) if m else None
        m = re.search(r"Socket errors: (.*)", out)
        r["socket_errors"] = m.group(1) if m else ""
    if proc and n:
        r["cpu_us_per_op"] = w["server_cpu_s"] / n * 1e6
    if r["value"] is None:
        r["error"] = (err or out)[-300:]
    return r


def run(a):
    if os.geteuid() != 0:
        return {"skip": "needs root (network namespaces, nftables)"}
    for tool, pkg in (("ip", "iproute2"), ("nft", "nftables"), ("wrk", "wrk"),
                      ("dnsperf", "dnsperf"), ("knotd", "knot"), ("nginx", "nginx")):
        if not B.which(tool):
            return {"skip": B.not_installed(tool, pkg)}
    data = B.WORK / "data" / "100"
    if not (data / "cluster.json").exists():
        subprocess.run([B.GEN, "cluster", "--services", "100", "--out", data], check=True,
                       stdout=subprocess.DEVNULL)
    results = {"machine": B.machine(), "args": vars(a), "cells": {},
               "versions": {"haproxy": B.pkg_version("haproxy"), "nftables": B.pkg_version("nftables")}}
    wd = B.WORK / "l4"
    wd.mkdir(parents=True, exist_ok=True)
    help_text = B.switchboard_help()
    baseline = None
    targets = a.targets.split(",")
    if a.baseline_bin:
        baseline = B.copy_baseline(a.baseline_bin)
        results["baseline_build"] = B.build_info(baseline)
        if "switchboard" in targets:
            targets.insert(targets.index("switchboard") + 1, "switchboard+base")
    sbs = None
    try:
        topology()
        backends = start_backends(wd, data)
        time.sleep(1.5)
        nft_peers(wd)
        for workers in [int(w) for w in a.workers.split(",")]:
            cell = results["cells"][str(workers)] = {}
            running = {}
            sbs = Switchboards(wd, workers, help_text, baseline)
            for t in targets:
                e = cell[t] = {"runs": []}
                proc = None
                try:
                    if t in SB_TARGETS:
                        # One process serves both VIPs: the kernel path and the relay.
                        proc = sbs.get(t)
                    elif t == "haproxy":
                        if not B.which("haproxy"):
                            raise LookupError(B.not_installed("haproxy", "haproxy"))
                        proc = start_haproxy(wd, workers)
                        time.sleep(0.5)
                except (LookupError, RuntimeError) as ex:
                    e["skip"] = str(ex).splitlines()[0]
                    B.log(f"l4 {t}: {e['skip']}")
                    continue
                problem = check(t)
                if problem:
                    e["skip"] = f"failed check: {problem}"
                    B.log(f"l4 {t}: {problem}" + (f"\n{proc.tail()}" if proc else ""))
                    if proc:
                        proc.stop()
                    continue
                running[t] = proc
            order = list(running)
            for rnd in range(a.runs):
                k = rnd % max(1, len(order))
                for t in order[k:] + order[:k]:
                    if t in SB_TARGETS:
                        running[t] = sbs.get(t)
                        for o in SB_TARGETS:
                            if o in running and o != t and running[o] is not running[t]:
                                running[o] = None
                    for kind in ("conn", "tput", "udp"):
                        if kind == "udp" and t == "haproxy":
                            continue
                        with B.Alone(running[t], list(running.values())):
                            r = load(t, kind, running[t], a, data, [b.pid for b in backends])
                        r["kind"] = kind
                        cell[t]["runs"].append(r)
                        B.log(f"l4 {workers}w round {rnd + 1} {t} {kind}: {r['value'] or 0:,.2f}, "
                              f"others' CPU {r['others_cpu_pct']:.0f}%")
                        time.sleep(0.5)
            for p in {id(p): p for p in running.values() if p}.values():
                p.stop()
            sbs.stop()
            B.save_results("l4", results)
    finally:
        if sbs:
            sbs.stop()
        cleanup()
    return results


def opts(a):
    """The options of the run that are not the defaults, as typed."""
    out = ""
    if a.get("targets", TARGETS) != TARGETS:
        out += f" --targets {a['targets']}"
    if a.get("baseline_bin"):
        out += f" --baseline-bin {a['baseline_bin']}"
    return out


def summarize(results):
    if "skip" in results:
        return f"## L4: Service VIP traffic\n\nNot run: {results['skip']}.\n"
    a = results["args"]
    runs_all = [r for c in results["cells"].values() for e in c.values() for r in e["runs"]]
    others = max((r["others_cpu_pct"] for r in runs_all), default=0)
    lines = ["## L4: Service VIP traffic (network namespaces)", "",
             B.machine_line(results["machine"], f" · other processes took {others:.0f}% of the "
                                                f"machine at most during a timed run"), "",
             f"Command: `bench/run l4{opts(a)}`, as root (workers={a['workers']}, runs={a['runs']}, "
             f"duration={a['duration']} s).", "",
             "A client pod namespace reaches a Service VIP through a node namespace; three "
             "backend pod namespaces run nginx (TCP 8080) and Knot DNS (UDP 5353). Each target "
             "has its own VIP (switchboard's kernel path: DNAT chains it programs; switchboard's "
             "relay: a Service annotated `switchboard.dev/l4-mode: proxy` in the same process, "
             "nftables redirect/tproxy to it; an nftables redirect to HAProxy; plain nftables "
             "DNAT written by hand) and is checked to reach all three backends before it is "
             "timed. Client, node, backends and load share the 2 cores.", ""]
    cmds = {}
    for workers, cell in results["cells"].items():
        lines += [f"### {workers} proxy worker{'s' if workers != '1' else ''}", "",
                  "| target | TCP connections/s | × HAProxy | × DNAT | TCP throughput | "
                  "UDP datagrams/s (each way) | × DNAT | CPU µs per connection / datagram |",
                  "|---|---|---|---|---|---|---|---|"]

        def med(t, kind):
            e = cell.get(t, {})
            return B.median_spread([r["value"] for r in e.get("runs", []) if r["kind"] == kind])

        for t, e in cell.items():
            v = results["versions"].get(t)
            label = LABEL[t] + (f" {v.split('-')[0]}" if v else "")
            if e.get("skip") or not e["runs"]:
                lines.append(f"| {label} | {e.get('skip', 'no runs')} | | | | | | |")
                continue
            conn, tput, udp = med(t, "conn"), med(t, "tput"), med(t, "udp")
            hconn, dconn, dudp = med("haproxy", "conn"), med("nftables", "conn"), med("nftables", "udp")
            ratio = lambda x, y: f"{x['median'] / y['median']:.2f}" if x and y else "–"  # noqa: E731
            cpu_c = B.median_spread([r.get("cpu_us_per_op") for r in e["runs"] if r["kind"] == "conn"])
            cpu_u = B.median_spread([r.get("cpu_us_per_op") for r in e["runs"] if r["kind"] == "udp"])
            cpu = "–" if t == "nftables" else (
                f"{B.fmt_spread(cpu_c, 1)} / {B.fmt_spread(cpu_u, 1) if cpu_u else 'n/a'}")
            lines.append(
                f"| {label} | {B.fmt_spread(conn)} | {ratio(conn, hconn)} | {ratio(conn, dconn)} | "
                f"{B.fmt_spread(tput, 2, ' Gbit/s')} | "
                f"{B.fmt_spread(udp) if udp else 'n/a (no UDP proxying in HAProxy)'} | "
                f"{ratio(udp, dudp) if udp else ''} | {cpu} |")
            for r in e["runs"]:
                cmds.setdefault(r["kind"], r["cmd"])
        lines.append("")
    if results.get("baseline_build"):
        lines += [f"Rows marked baseline: {results['baseline_build']}, timed in the same rounds "
                  "(it and the build above take turns programming the node's tables).", ""]
    lines += ["Median (min–max) of the rounds. TCP connections/s: one HTTP request per "
              "connection. Throughput: 1 MiB responses over keep-alive connections. UDP: DNS "
              "queries and answers relayed to the Knot backends (dnsperf QPS). CPU: the proxy "
              "process's CPU time per connection or per query (for the kernel path, switchboard's "
              "own process, which only programs the table); DNAT runs in the kernel and has "
              "no process.", ""]
    if cmds:
        lines += ["Exact load commands (run in the client namespace, VIP per target):", "", "```",
                  *cmds.values(), "```", ""]
    return "\n".join(lines)


def run_and_clean_up(a):
    try:
        return run(a)
    finally:
        cleanup()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1")
    ap.add_argument("--targets", default=TARGETS)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=6)
    ap.add_argument("--baseline-bin", help="also time the kernel path with this binary "
                    "(target `switchboard+base`, interleaved with the others)")
    B.docs_args(ap)
    a = ap.parse_args()
    B.run_part("l4", a, run_and_clean_up, summarize)


if __name__ == "__main__":
    main()
