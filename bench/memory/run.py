#!/usr/bin/env python3
"""Memory at scale: switchboard's resident memory after the first sync and after churn.

Cells: 1,000 and 10,000 Services × 10,000 and 100,000 endpoints (`bench-gen cluster`: one
EndpointSlice per Service, every 10th Service headless), each with two role sets:
- `dns`: `--dns` only;
- `all`: `--dns`, `--http` and `--l4 nftables` (the kernel path programs a real nftables table),
  which needs root: switchboard then runs in a network namespace this part creates and removes.
Sources: the manifest directory (`files`), and with `--api` also the test API server
(`bench-gen api`, list/watch over HTTP from the bench-gen process; switchboard's RSS only).

Per run: VmRSS 2 s after /readyz first answers 200 ("ready"), then, for `files`, after
`--changes` EndpointSlice edits (one address of one file rewritten each, write + rename,
every 20 ms) and 2 s of quiet ("churn"), and the peak (VmHWM). Every figure is the median of
`--runs` runs (min–max). The model line is a least-squares fit over the four cells of each
role set: RSS = base + a × (services / 1,000) + b × (endpoints / 10,000), next to CoreDNS's
published sizing model for its `kubernetes` plugin (coredns/deployment `Scaling_CoreDNS.md`:
(pods + services) × 0.000858 MB + 49.1 MB, i.e. 0.86 MB per 1k services and 8.6 MB per 10k
endpoints above 49.1 MB).
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import benchlib as B  # noqa: E402

CELLS = [(1000, 10), (1000, 100), (10000, 1), (10000, 10)]  # (services, endpoints per service)
COREDNS_BASE_MB, COREDNS_PER_OBJECT_MB = 49.1, 0.000858
NETNS = f"sbmem-{os.getpid()}"


def status_kib(pid, field):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def in_ns(cmd, ns):
    return ["ip", "netns", "exec", ns, *cmd] if ns else cmd


def ns_get(ns, addr, path):
    """HTTP GET through the namespace (the admin listener is on its loopback)."""
    code = ("import sys,socket\n"
            "h,p=sys.argv[1].rsplit(':',1)\n"
            "s=socket.create_connection((h,int(p)),timeout=3)\n"
            "s.sendall(('GET '+sys.argv[2]+' HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n').encode())\n"
            "d=b''\n"
            "while True:\n"
            "  c=s.recv(65536)\n"
            "  if not c: break\n"
            "  d+=c\n"
            "sys.stdout.write(d.decode(errors='replace'))\n")
    if not ns:
        status, body = B.http_get(addr, path)
        return status, body
    out = subprocess.run(in_ns(["python3", "-c", code, addr, path], ns), capture_output=True,
                         text=True, timeout=10).stdout
    head, _, body = out.partition("\r\n\r\n")
    return (int(head.split()[1]) if head else 0), body


def generation(ns, admin):
    try:
        _, body = ns_get(ns, admin, "/metrics")
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    for line in body.splitlines():
        if line.startswith("switchboard_snapshot_generation "):
            return float(line.split()[1])
    return None


def churn(manifests, n, ns, admin, proc):
    """Moves one endpoint address in each of `n` files (write + rename, every 20 ms), then
    waits until the snapshot generation has not moved for 2 s (at most 120 s)."""
    files = sorted(manifests.iterdir())[:n]
    for i, f in enumerate(files):
        text = f.read_text()
        lines = text.split("\n")
        # The first endpoint address of the slice: the line after the first `- addresses:`.
        for j, line in enumerate(lines):
            if line.startswith("- addresses:"):
                lines[j + 1] = f"  - 10.250.{i // 250}.{i % 250 + 1}"
                break
        tmp = f.with_suffix(".tmp")
        tmp.write_text("\n".join(lines))
        tmp.rename(f)
        time.sleep(0.02)
    last, since, deadline = generation(ns, admin), time.monotonic(), time.monotonic() + 120
    while time.monotonic() < deadline and proc.alive():
        time.sleep(0.5)
        g = generation(ns, admin)
        if g != last:
            last, since = g, time.monotonic()
        elif time.monotonic() - since >= 2:
            return True
    return False


def one_run(cell_dir, roles, source, changes, wd):
    ns = NETNS if roles == "all" else None
    args = ["--dns", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--upstream", "127.0.0.1:9",
            "--lame-duck", "0s", "--log", "info,kube=warn,hyper=warn"]
    if roles == "all":
        args += ["--http", "127.0.0.1:0", "--l4", "nftables", "--node-name", "node-0001",
                 "--cleanup-on-exit"]
    api = None
    manifests = None
    if source == "files":
        # A fresh copy per run: churn edits it.
        manifests = wd / "manifests"
        subprocess.run(["rm", "-rf", str(manifests)], check=True)
        subprocess.run(["cp", "-r", str(cell_dir / "manifests"), str(manifests)], check=True)
        args += ["--manifests", str(manifests)]
    else:
        kubeconfig = wd / "kubeconfig"
        spec = (cell_dir / "spec").read_text().split()
        api = subprocess.Popen(in_ns([str(B.GEN), "api", "--services", spec[0], "--endpoints",
                                      spec[1], "--kubeconfig", str(kubeconfig)], ns),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if api.stdout.readline().strip() != "ready":
            raise RuntimeError("bench-gen api did not start")
        args += ["--kubeconfig", str(kubeconfig)]
    p = B.Proc("switchboard", in_ns([str(B.BIN), "run", *args], ns), wd / "switchboard.log")
    try:
        started = time.monotonic()
        B.wait_for(lambda: "listening on admin" in p.text(), 120, "the admin listener", p)
        admin = B.listeners(p.text())["admin"][0]
        pid = sb_pid(p.p.pid)

        def ready():
            try:
                return ns_get(ns, admin, "/readyz")[0] == 200
            except (OSError, subprocess.SubprocessError, ValueError):
                return False

        B.wait_for(ready, 600, "switchboard /readyz", p, interval=0.1)
        ready_s = time.monotonic() - started
        time.sleep(2)
        r = {"ready_s": ready_s, "rss_ready_kib": status_kib(pid, "VmRSS"),
             "threads": status_kib(pid, "Threads")}
        if manifests is not None and changes:
            if not churn(manifests, changes, ns, admin, p):
                raise RuntimeError("the generation did not settle after the changes")
            r["rss_churn_kib"] = status_kib(pid, "VmRSS")
        r["peak_kib"] = status_kib(pid, "VmHWM")
        return r
    finally:
        p.stop()
        if api is not None:
            api.stdin.close()
            api.wait(timeout=30)


def sb_pid(pid):
    """The switchboard process itself (under `ip netns exec`, a child that execs)."""
    for _ in range(50):
        for q in B.tree_pids(pid):
            try:
                if Path(f"/proc/{q}/exe").resolve().name == Path(B.BIN).name:
                    return q
            except OSError:
                pass
        time.sleep(0.05)
    return pid


def run(a):
    results = {"machine": B.machine(), "args": vars(a), "cells": []}
    wd = B.WORK / "memory"
    wd.mkdir(parents=True, exist_ok=True)
    roles = a.roles
    if "all" in roles and os.geteuid() != 0:
        B.log("memory: not root, skipping the `all` role set (nftables needs a namespace)")
        roles = [r for r in roles if r != "all"]
        results["skipped_all"] = "needs root (network namespace, nftables)"
    if "all" in roles:
        subprocess.run(["ip", "netns", "add", NETNS], check=True)
        subprocess.run(["ip", "netns", "exec", NETNS, "ip", "link", "set", "lo", "up"], check=True)
    try:
        for services, per in CELLS:
            cell_dir = wd / f"c{services}x{per}"
            if not (cell_dir / "spec").exists():
                B.log(f"memory: bench-gen cluster --services {services} --endpoints {per}")
                subprocess.run([str(B.GEN), "cluster", "--services", str(services),
                                "--endpoints", str(per), "--queries", "10", "--out",
                                str(cell_dir)], check=True, capture_output=True)
                (cell_dir / "spec").write_text(f"{services} {per}")
            for roles_name in roles:
                for source in a.sources:
                    e = {"services": services, "endpoints": services * per, "roles": roles_name,
                         "source": source, "runs": []}
                    results["cells"].append(e)
                    for i in range(a.runs):
                        try:
                            r = one_run(cell_dir, roles_name, source, a.changes, wd)
                        except (RuntimeError, OSError, subprocess.SubprocessError) as ex:
                            e["error"] = str(ex).splitlines()[0]
                            B.log(f"memory {services}/{services * per} {roles_name} {source}: "
                                  f"{e['error']}")
                            break
                        e["runs"].append(r)
                        B.log(f"memory {services}/{services * per} {roles_name} {source} run "
                              f"{i + 1}: {r}")
    finally:
        if "all" in roles:
            subprocess.run(["ip", "netns", "del", NETNS], check=False)
    B.save_results("memory", results)
    return results


def mib(kib):
    return kib / 1024


def fit(points):
    """Least squares RSS = c0 + c1 × services/1k + c2 × endpoints/10k over (s, e, rss MB)."""
    rows = [(1.0, s / 1000, e / 10000) for s, e, _ in points]
    ys = [y for _, _, y in points]
    n = 3
    ata = [[sum(r[i] * r[j] for r in rows) for j in range(n)] for i in range(n)]
    aty = [sum(r[i] * y for r, y in zip(rows, ys)) for i in range(n)]
    # Gaussian elimination on the 3×3 normal equations.
    m = [ata[i] + [aty[i]] for i in range(n)]
    for c in range(n):
        piv = max(range(c, n), key=lambda r: abs(m[r][c]))
        m[c], m[piv] = m[piv], m[c]
        if abs(m[c][c]) < 1e-12:
            return None
        for r in range(n):
            if r != c:
                f = m[r][c] / m[c][c]
                m[r] = [x - f * y for x, y in zip(m[r], m[c])]
    return [m[i][n] / m[i][i] for i in range(n)]


def summarize(r):
    m = r["machine"]
    lines = ["## Memory: resident memory at scale", "",
             B.machine_line(m), "",
             f"Command: `bench/run memory` (`bench/memory/run.py --runs {r['args']['runs']} "
             f"--changes {r['args']['changes']}`{' --api' if 'api' in r['args']['sources'] else ''}).",
             "", __doc__.split("\n\n", 1)[1].strip(), "",
             "| services / endpoints | roles | source | RSS ready | RSS after churn | peak | "
             "threads | ready after | CoreDNS model | × model |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    per_roles = {}
    for e in r["cells"]:
        runs = e["runs"]
        model = COREDNS_BASE_MB + (e["services"] + e["endpoints"]) * COREDNS_PER_OBJECT_MB
        if not runs:
            lines.append(f"| {e['services']:,} / {e['endpoints']:,} | {e['roles']} | "
                         f"{e['source']} | {e.get('error', 'no runs')} | | | | | | |")
            continue
        ready = B.median_spread([mib(x["rss_ready_kib"]) for x in runs])
        churned = B.median_spread([mib(x["rss_churn_kib"]) for x in runs if "rss_churn_kib" in x])
        peak = B.median_spread([mib(x["peak_kib"]) for x in runs])
        secs = B.median_spread([x["ready_s"] for x in runs])
        threads = B.median_spread([x["threads"] for x in runs])
        mb = ready["median"] * 1.048576
        lines.append(
            f"| {e['services']:,} / {e['endpoints']:,} | {e['roles']} | {e['source']} | "
            f"{B.fmt_spread(ready, 0, ' MiB')} | "
            f"{B.fmt_spread(churned, 0, ' MiB') if churned else '–'} | "
            f"{B.fmt_spread(peak, 0, ' MiB')} | {threads['median']:.0f} | "
            f"{B.fmt_spread(secs, 1, ' s')} | {model:.1f} MB | {mb / model:.2f} |")
        per_roles.setdefault((e["roles"], e["source"]), []).append(
            (e["services"], e["endpoints"], mb))
    lines += ["", "Model (least squares over the four cells, RSS after the first sync, MB):", "",
              "| roles | source | base | per 1k services | per 10k endpoints |",
              "|---|---|---|---|---|",
              f"| CoreDNS `kubernetes` plugin (published) | | {COREDNS_BASE_MB} | "
              f"{COREDNS_PER_OBJECT_MB * 1000:.2f} | {COREDNS_PER_OBJECT_MB * 10000:.2f} |"]
    for (roles, source), pts in per_roles.items():
        c = fit(pts) if len(pts) >= 3 else None
        if c:
            lines.append(f"| switchboard {roles} | {source} | {c[0]:.1f} | {c[1]:.2f} | "
                         f"{c[2]:.2f} |")
    if r.get("skipped_all"):
        lines += ["", f"The `all` role set was not run: {r['skipped_all']}."]
    lines += ["", "MiB = 2^20 bytes (RSS), MB = 10^6 bytes (CoreDNS's model and the fit). Where "
              "the bytes go, by structure, and what was cut: docs/memory.md."]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--roles", type=lambda s: s.split(","), default=["dns", "all"])
    ap.add_argument("--sources", type=lambda s: s.split(","), default=["files"])
    ap.add_argument("--api", action="store_true", help="also the test API server as source")
    ap.add_argument("--duration", type=int, default=0, help="(accepted for bench/run --quick)")
    B.docs_args(ap)
    a = ap.parse_args()
    if a.api and "api" not in a.sources:
        a.sources.append("api")
    B.run_part("memory", a, run, summarize)


if __name__ == "__main__":
    main()
