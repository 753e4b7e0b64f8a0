#!/usr/bin/env python3
"""DNS: dnsperf against switchboard and Knot DNS, NSD, Unbound (local-data) and dnsmasq serving the
same records (from `bench-gen cluster`), with 1 and then 2 server threads.

Per size and thread count: every server is started on its own loopback port, checked with `dig`
against `checks.jsonl` (a server that answers wrong is not timed), then timed in rounds; each
round runs every server once, in rotated order, so drift in the machine's load hits all alike:

- throughput: `dnsperf -l D -T 2 -c 32 -q 256` (saturating), giving QPS, lost queries, and the
  server's CPU time per answered query;
- latency: `dnsperf -l D2 -Q RATE -v` (fixed rate, below every peer's saturation, since `-v`
  caps dnsperf near 25-30k QPS), giving avg / p50 / p99 from the per-query lines.

switchboard's DNS threads are its UDP workers (`--dns-udp-workers N`, the `serve` example's
UDP_WORKERS) with TOKIO_WORKER_THREADS=N for the rest; the peers use
their own worker settings (Knot udp-workers, NSD server-count, Unbound num-threads).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import benchlib as B  # noqa: E402
import peers  # noqa: E402

SERVERS = ["switchboard", "sb-dns", "knot", "nsd", "unbound", "dnsmasq"]
OURS = ("switchboard", "sb-dns", "sb-dns-base")
LABEL = {"switchboard": "switchboard (`run --manifests`)",
         "sb-dns": "switchboard DNS alone (`dns` example `serve`)",
         "sb-dns-base": "switchboard DNS alone, baseline build (`--baseline-serve`)",
         **{k: v[0] for k, v in peers.PEERS.items()}}
PKG = {"switchboard": None, "sb-dns": None, "sb-dns-base": None, **{k: v[1] for k, v in peers.PEERS.items()}}
# The DNS engineer's server-alone binary (dns/examples/serve.rs, from bench/dns/compare.sh): the
# same `dns` crate and tables over the same manifests, loaded once, without the manifest watcher
# and controller, so the DNS path can be told apart from the rest of the process.
SERVE = B.BIN.parent / "serve" if (B.BIN.parent / "serve").exists() else \
    B.ROOT / "target" / "release" / "examples" / "serve"


# `--baseline-serve PATH`: another build of the `serve` example (e.g. the main branch's) timed
# in the same rounds, so a change to the DNS path is compared before/after on the same load.
BASELINE = [None]


# `--autogroup-nice N`: the scheduler's autogroup nice (kernel.sched_autogroup_enabled) of every
# server and of dnsperf. Each runs in its own session, so each is its own autogroup, and with
# other sessions busy (builds on a shared machine) the cores are split between all of them alike:
# a negative N gives the measured ones the larger share, every server the same. Recorded in the
# docs' command line; 0 (the default) leaves the scheduler alone.
AUTOGROUP_NICE = [0]


def boost(pid):
    if AUTOGROUP_NICE[0] and pid:
        try:
            Path(f"/proc/{pid}/autogroup").write_text(str(AUTOGROUP_NICE[0]))
        except OSError as e:
            B.log(f"autogroup nice of {pid}: {e}")


def boosted(cmd):
    if not AUTOGROUP_NICE[0]:
        return cmd
    return ["sh", "-c", f'echo {AUTOGROUP_NICE[0]} > /proc/self/autogroup; exec "$@"', "sh", *cmd]


class NotImplemented_(Exception):
    pass


def ensure_data(size):
    out = B.WORK / "data" / str(size)
    stamp = out / "cluster.json"
    if not stamp.exists() or stamp.stat().st_mtime < B.GEN.stat().st_mtime:
        B.log(f"generating the {size}-service cluster")
        subprocess.run([B.GEN, "cluster", "--services", str(size), "--out", out], check=True,
                       stdout=subprocess.DEVNULL)
    return out


def dig(port, name, qtype):
    r = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+norec", "+time=2", "+tries=2", "+noall",
         "+comments", "+answer", name, qtype],
        capture_output=True, text=True, timeout=15)
    status = None
    answers = []
    for line in r.stdout.splitlines():
        if "status:" in line:
            status = line.split("status:")[1].split(",")[0].strip()
        elif line and not line.startswith(";"):
            f = line.split()
            if len(f) >= 5 and f[3] == qtype:
                answers.append(" ".join(f[4:]))
    return status, sorted(answers)


def check(port, checks):
    """Problems found (empty: every check answered as the DNS spec prescribes)."""
    problems = []
    for c in checks:
        status, answers = dig(port, c["name"], c["type"])
        if status != c["rcode"] or answers != c["answers"]:
            problems.append(f"{c['name']} {c['type']}: got {status} {answers[:3]}, "
                            f"want {c['rcode']} {c['answers'][:3]}")
    return problems


def start(name, data, threads, wd):
    """(Proc, port)."""
    if name == "switchboard":
        if not B.BIN.exists():
            raise peers.Unsupported("target/release/switchboard not built")
        proc, ls = B.start_switchboard(
            ["--manifests", data / "manifests", "--dns", "127.0.0.1:0",
             "--dns-udp-workers", str(threads), "--log", "warn,switchboard=info,dns=info"],
            name=f"switchboard-dns-{threads}", env={"TOKIO_WORKER_THREADS": str(threads)},
            timeout=300, logdir=wd)
        if "dns/udp" not in ls:
            proc.stop()
            raise NotImplemented_("not yet implemented (switchboard run logs no dns/udp listener)")
        boost(proc.pid)
        return proc, int(ls["dns/udp"][0].rsplit(":", 1)[1])
    port = B.free_port()
    if name in ("sb-dns", "sb-dns-base"):
        serve = SERVE if name == "sb-dns" else Path(BASELINE[0] or "")
        if not serve.is_file():
            raise peers.Unsupported("not built (cargo build --release -p dns --example serve)")
        proc = B.Proc(f"{name}-{threads}", [serve, data / "manifests", f"127.0.0.1:{port}",
                                            "127.0.0.1:9"],
                      wd / f"{name}-{threads}.log",
                      env={"TOKIO_WORKER_THREADS": str(threads), "UDP_WORKERS": str(threads)})
    else:
        proc = peers.start(name, data, port, threads, wd / name)

    def up():
        try:
            return dig(port, "dns-version.cluster.local", "TXT")[0] is not None
        except subprocess.TimeoutExpired:
            return False

    B.wait_for(up, 300, f"{name} to answer", proc, interval=0.2)
    boost(proc.pid)
    return proc, port


def parse_dnsperf(out):
    r = {}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Queries sent:"):
            r["sent"] = int(line.split()[2])
        elif line.startswith("Queries completed:"):
            r["completed"] = int(line.split()[2])
        elif line.startswith("Queries lost:"):
            r["lost"] = int(line.split()[2])
        elif line.startswith("Queries per second:"):
            r["qps"] = float(line.split()[3])
        elif line.startswith("Average Latency (s):"):
            r["avg_ms"] = float(line.split()[3]) * 1e3
        elif line.startswith("Response codes:"):
            r["rcodes"] = line.split(":", 1)[1].strip()
    return r


def throughput(proc, port, data, a):
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", port, "-d", data / "queries.txt",
           "-l", a.duration, "-T", "2", "-c", "32", "-q", "256", "-t", "2"]
    cpu = B.CpuWindow(proc.pid)
    cpu.start()
    out, err, ticks, wall = B.run_timed(boosted(cmd), a.duration + 30)
    w = cpu.stop(ticks)
    r = parse_dnsperf(out)
    r.update(w)
    if r.get("completed"):
        r["cpu_us_per_query"] = w["server_cpu_s"] / r["completed"] * 1e6
        # The client's share: on 2 cores dnsperf competes with the server threads, and what it
        # spends per answer depends on how the answers arrive (bursts or one by one).
        r["client_us_per_query"] = w["loadgen_cpu_s"] / r["completed"] * 1e6
        r["softirq_us_per_query"] = (w["softirq_pct"] / 100 * (os.cpu_count() or 1) *
                                     w["seconds"] / r["completed"] * 1e6)
    r["cmd"] = B.cmdline(cmd)
    if "qps" not in r:
        r["error"] = (err or out)[-300:]
    return r


def latency(proc, port, data, a):
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", port, "-d", data / "queries.txt",
           "-l", a.latency_duration, "-Q", a.rate, "-c", "16", "-t", "2", "-v"]
    cpu = B.CpuWindow(proc.pid)
    cpu.start()
    out, err, ticks, wall = B.run_timed(boosted(cmd), a.latency_duration + 30)
    w = cpu.stop(ticks)
    lat = sorted(float(line.split()[-1]) * 1e3 for line in out.splitlines()
                 if line.startswith("> "))
    r = parse_dnsperf(out)
    r.update({"p50_ms": B.percentile(lat, 50), "p99_ms": B.percentile(lat, 99),
              "answered": len(lat), "others_cpu_pct": w["others_cpu_pct"],
              "cmd": B.cmdline(cmd)})
    # Below the offered rate means the server (or dnsperf -v) saturated: latency is queueing.
    r["saturated"] = r.get("qps", 0) < 0.95 * a.rate
    return r


def run(a):
    sizes = [int(s) for s in a.sizes.split(",")]
    threads = [int(t) for t in a.threads.split(",")]
    servers = a.servers.split(",")
    m = B.machine()
    results = {"machine": m, "args": vars(a), "cells": {}}
    versions = {s: (B.pkg_version(PKG[s]) if PKG[s] else None) for s in servers}
    results["versions"] = versions
    for size in sizes:
        data = ensure_data(size)
        checks = [json.loads(line) for line in (data / "checks.jsonl").read_text().splitlines()]
        info = json.loads((data / "cluster.json").read_text())
        for th in threads:
            key = f"{size}/{th}"
            cell = results["cells"][key] = {"size": size, "threads": th, "cluster": info,
                                            "servers": {}}
            wd = B.WORK / "dns" / key.replace("/", "-")
            running = {}
            for s in servers:
                entry = cell["servers"][s] = {"runs": [], "latency": []}
                try:
                    B.log(f"dns {size} services, {th} thread(s): starting {s}")
                    proc, port = start(s, data, th, wd)
                except (peers.Unsupported, NotImplemented_) as e:
                    entry["skip"] = str(e)
                    continue
                except RuntimeError as e:
                    entry["skip"] = f"did not start: {str(e).splitlines()[0]}"
                    B.log(str(e))
                    continue
                problems = check(port, checks)
                if problems:
                    entry["skip"] = f"answers differ from the spec ({len(problems)} of " \
                                    f"{len(checks)} checks): {problems[0]}"
                    entry["problems"] = problems
                    B.log(f"{s}: {len(problems)} wrong answers, e.g. {problems[0]}")
                    proc.stop()
                    continue
                entry["checked"] = len(checks)
                running[s] = (proc, port)
            order = list(running)
            for rnd in range(a.runs):
                rot = order[rnd % len(order):] + order[:rnd % len(order)] if order else []
                for s in rot:
                    proc, port = running[s]
                    if not proc.alive():
                        cell["servers"][s]["skip"] = f"exited during the runs: {proc.tail(3)}"
                        continue
                    with B.Alone(proc, [p for p, _ in running.values()]):
                        t = throughput(proc, port, data, a)
                        time.sleep(0.5)
                        lt = latency(proc, port, data, a)
                    cell["servers"][s]["runs"].append(t)
                    cell["servers"][s]["latency"].append(lt)
                    B.log(f"dns {key} round {rnd + 1} {s}: {t.get('qps', 0):,.0f} QPS, "
                          f"lost {t.get('lost')}, {t.get('cpu_us_per_query', 0):.1f} µs CPU/query, "
                          f"p99 {lt.get('p99_ms') or 0:.3f} ms; others' CPU "
                          f"{t['others_cpu_pct']:.0f}%")
                    time.sleep(0.5)
            for s, (proc, _) in running.items():
                cell["servers"][s]["rss_kib"] = B.tree_rss_kib(proc.pid)
                proc.stop()
            B.save_results("dns", results)
    return results


def summarize(results, a):
    m = results["machine"]
    versions = results["versions"]
    lines = ["## DNS: dnsperf, cluster names", ""]
    others_all = []
    for key, cell in results["cells"].items():
        for s, e in cell["servers"].items():
            others_all += [r["others_cpu_pct"] for r in e.get("runs", [])]
    lines.append(B.machine_line(m, f" · other processes took {max(others_all, default=0):.0f}% "
                                   f"of the machine at most during a timed run"))
    lines += ["", "Command: `bench/run dns` (" + ", ".join(
        f"{k}={v}" for k, v in results["args"].items() if k in ("sizes", "threads", "runs",
                                                                "duration", "latency_duration",
                                                                "rate", "baseline_serve",
                                                                "autogroup_nice")
        and v) + ").",
              ""]
    first = next(iter(results["cells"].values()), None)
    if first:
        mix = ", ".join(f"{x['per_100']}% {x['class']}" for x in first["cluster"]["mix"])
        lines += [
            "Data: `bench-gen cluster --services N` (the `tables::synth` cluster: 10 ready endpoints "
            "per service, up to 100 namespaces, every 10th service headless, half of those with "
            "StatefulSet hostnames; 1–2 ports per service, named and unnamed, TCP and UDP). "
            f"Query mix: {mix}; AAAA of existing names are NOERROR/NODATA (the cluster is "
            "IPv4-only), misses are NXDOMAIN inside the zone. Every server first answers the "
            "`checks.jsonl` queries (A, SRV, PTR, AAAA, TXT dns-version, NXDOMAIN) exactly as "
            "the spec prescribes, checked with `dig`, or it is not timed.",
            "",
        ]
    cmds = None
    for key, cell in results["cells"].items():
        info = cell["cluster"]
        lines.append(f"### {cell['size']:,} services ({info['endpoints']:,} endpoints, "
                     f"{info['records']:,} records), {cell['threads']} server "
                     f"thread{'s' if cell['threads'] > 1 else ''}")
        lines.append("")
        lines.append("| server | QPS | × best peer | CPU µs/query | dnsperf µs/query | softirq µs/query "
                     "| lost | avg latency | p50 | p99 | RSS |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        best = 0
        stats = {}
        for s, e in cell["servers"].items():
            qps = B.median_spread([r.get("qps") for r in e["runs"]])
            stats[s] = qps
            if s not in OURS and qps:
                best = max(best, qps["median"])
        for s, e in cell["servers"].items():
            label = LABEL[s] + (f" {versions[s].split('-')[0]}" if versions.get(s) else "")
            if e.get("skip") or not e["runs"]:
                lines.append(f"| {label} | {e.get('skip', 'no runs')} | | | | | | | | | |")
                continue
            qps = stats[s]
            ratio = f"{qps['median'] / best:.2f}" if best else "–"
            cpu = B.median_spread([r.get("cpu_us_per_query") for r in e["runs"]])
            client = B.median_spread([r.get("client_us_per_query") for r in e["runs"]])
            sirq = B.median_spread([r.get("softirq_us_per_query") for r in e["runs"]])
            lost = B.median_spread([100 * r.get("lost", 0) / max(1, r.get("sent", 1))
                                    for r in e["runs"]])
            avg = B.median_spread([r.get("avg_ms") for r in e["latency"]])
            p50 = B.median_spread([r.get("p50_ms") for r in e["latency"]])
            p99 = B.median_spread([r.get("p99_ms") for r in e["latency"]])
            sat = " ⚠ saturated" if any(r.get("saturated") for r in e["latency"]) else ""
            lines.append(
                f"| {label} | {B.fmt_spread(qps)} | {ratio} | {B.fmt_spread(cpu, 1)} | "
                f"{B.fmt_spread(client, 1)} | {B.fmt_spread(sirq, 1)} | "
                f"{B.fmt_num(lost['median'], 2)}% | {B.fmt_spread(avg, 3)} ms{sat} | "
                f"{B.fmt_spread(p50, 3)} ms | {B.fmt_spread(p99, 3)} ms | "
                f"{B.fmt_num((e.get('rss_kib') or 0) / 1024, 0)} MiB |")
            cmds = cmds or (e["runs"][0]["cmd"], e["latency"][0]["cmd"])
        lines.append("")
    rate = results["args"]["rate"]
    lines += [
        f"QPS: saturating run, median (min–max) of {results['args']['runs']} rounds. "
        "× best peer: switchboard's (or a peer's) median QPS over the best peer's at the same "
        "size and thread count. CPU µs/query: the server's CPU time (all its threads and "
        f"processes) per answered query in that run; dnsperf µs/query: the same for the load "
        "generator (on 2 cores it competes with the server threads, so its share bounds the QPS: "
        "QPS ≈ cores ÷ (server + dnsperf + softirq + others' µs per query)); softirq µs/query: "
        "the kernel's softirq time (loopback packet delivery not charged to a process) per query. "
        f"Latency: separate run at a fixed {rate:,} "
        "QPS (⚠ saturated: the server answered below that rate, so the figure is queueing). "
        "Threads: Knot `udp-workers`, NSD `server-count`, Unbound `num-threads`; the `serve` "
        "example `UDP_WORKERS` and `TOKIO_WORKER_THREADS`; `switchboard run` "
        "`--dns-udp-workers N` and `TOKIO_WORKER_THREADS=N`. dnsmasq "
        "has no worker threads and scans its `srv-host` list per query. "
        "Lost: queries with no answer within dnsperf's 2 s timeout (dropped, typically when "
        "the server's receive buffer overflows under the initial burst, or in flight at the "
        "end).",
        "",
    ]
    if cmds:
        lines += ["Exact load commands (PORT per server, DATA = `target/bench/data/N`):", "",
                  "```", cmds[0], cmds[1], "```", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,10000")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8, help="seconds per throughput run")
    ap.add_argument("--latency-duration", type=int, default=4)
    ap.add_argument("--rate", type=int, default=10000, help="QPS of the latency run")
    ap.add_argument("--autogroup-nice", type=int, default=0,
                    help="scheduler autogroup nice of the servers and dnsperf (e.g. -10 on a "
                         "shared, busy machine)")
    ap.add_argument("--baseline-serve", default=None,
                    help="another build of the dns `serve` example, timed as an extra row")
    B.docs_args(ap)
    a = ap.parse_args()
    AUTOGROUP_NICE[0] = a.autogroup_nice
    if a.baseline_serve:
        BASELINE[0] = a.baseline_serve
        if "sb-dns-base" not in a.servers:
            a.servers = a.servers.replace("sb-dns", "sb-dns,sb-dns-base", 1)
    B.run_part("dns", a, run, lambda r: summarize(r, a))


if __name__ == "__main__":
    main()
