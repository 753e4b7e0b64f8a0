#!/usr/bin/env python3
"""Propagation: at 10,000 services / 100,000 endpoints, the time from an EndpointSlice change
(a manifest file rewritten, or an object applied to the test API server) until switchboard's DNS
answers it and until the published tables hold it; p50/p99 over 100 changes, each figure the
median of 3 runs. Also: time to ready, resident memory next to CoreDNS's published model
((pods + services) × 0.000858 MB + 49.1 MB).

The measuring is done by `bench-gen propagation` (bench/gen/src/propagation.rs); this script
repeats it, interleaving the two sources, and writes the section of docs/benchmarks.md.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import benchlib as B  # noqa: E402


def run(a):
    results = {"machine": B.machine(), "args": vars(a), "runs": {s: [] for s in a.sources}}
    for rnd in range(a.runs):
        for src in a.sources:
            wd = B.WORK / "propagation" / src
            out = wd.parent / f"{src}-run{rnd + 1}.json"
            cmd = [B.GEN, "propagation", "--bin", B.BIN, "--source", src,
                   "--services", a.services, "--changes", a.changes, "--work", wd, "--out", out]
            B.log(f"propagation {src} run {rnd + 1}: {B.cmdline(cmd)}")
            cpu = B.CpuWindow(None)
            cpu.start()
            stdout, err, ticks, wall = B.run_timed(cmd, a.timeout)
            w = cpu.stop(0)
            try:
                r = json.loads(stdout)
            except json.JSONDecodeError:
                r = {"error": (err or stdout)[-600:]}
                B.log(f"propagation {src} failed:\n{r['error']}")
            # Everything here is our own (switchboard + bench-gen); the rest is other processes'.
            r["others_cpu_pct"] = max(0.0, w["machine_busy_pct"] - w["softirq_pct"] - ticks / B.TICK
                                      / wall / (B.machine()["cores"] or 1) * 100)
            r["loadavg_start"] = w["loadavg_start"]
            r["cmd"] = B.cmdline(cmd)
            results["runs"][src].append(r)
            if "dns" in r:
                B.log(f"  ready {r['ready_ms']:.0f} ms, DNS p50 {r['dns']['p50_ms']} p99 "
                      f"{r['dns']['p99_ms']} ms, tables p50 {r['tables']['p50_ms']} p99 "
                      f"{r['tables']['p99_ms']} ms, RSS {(r['rss_end_kib'] or 0) / 1024:.0f} MiB")
            B.save_results("propagation", results)
    return results


def summarize(results):
    a = results["args"]
    m = results["machine"]
    runs_all = [r for rs in results["runs"].values() for r in rs]
    others = max((r.get("others_cpu_pct", 0) for r in runs_all), default=0)
    lines = ["## Propagation: EndpointSlice change → DNS answer and tables", "",
             B.machine_line(m, f" · other processes took {others:.0f}% of the machine at most "
                               f"during a run"), "",
             f"Command: `bench/run propagation` (`bench-gen propagation --source files|api "
             f"--services {a['services']} --changes {a['changes']}`, {a['runs']} runs per "
             "source, interleaved).", "",
             "Each change moves one endpoint of a headless StatefulSet-style service to a new "
             "address (a pod replaced): the manifest source gets the service's file rewritten "
             "(write + rename), the Kubernetes source gets the EndpointSlice applied to the test "
             "API server (`tests/apiserver`, list/watch over HTTP, in the bench-gen process). "
             "DNS: time until `<hostname>.<svc>.<ns>.svc.cluster.local A` answers the new "
             "address (polled every 1 ms). Tables: time until `switchboard_snapshot_generation` "
             "on /metrics passes its value before the change (polled every 1 ms); the proxies "
             "read that same snapshot. The first 3 changes of each run are also looked up in the "
             "full `/debug/tables` dump afterwards (its fetch time is shown).", ""]
    lines += ["| source | DNS p50 | DNS p99 | tables p50 | tables p99 | failed | CPU per change | "
              "idle CPU | ready after | /debug/tables fetch |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    mem_rows = []
    for src, rs in results["runs"].items():
        ok = [r for r in rs if "dns" in r]
        if not ok:
            err = rs[0].get("error", "no run") if rs else "no run"
            lines.append(f"| {src} | failed: {err.splitlines()[-1] if err else ''} | | | | | | | | |")
            continue

        def ms(path, digits=1):
            vals = []
            for r in ok:
                v = r
                for k in path:
                    v = v.get(k) if isinstance(v, dict) else None
                vals.append(v)
            return B.fmt_spread(B.median_spread(vals), digits, " ms")

        dns_state = ok[0]["dns_state"]
        dns50 = ms(["dns", "p50_ms"], 2) if dns_state == "ok" else dns_state
        dns99 = ms(["dns", "p99_ms"], 2) if dns_state == "ok" else ""
        failed = sum(r["dns"]["failed"] + r["tables"]["failed"] for r in ok)
        verified = all(v["in_tables"] for r in ok for v in r["verified_in_dump"])
        fetch = B.median_spread([x for r in ok for x in r["debug_tables_fetch_ms"]])
        lines.append(
            f"| {src} | {dns50} | {dns99} | {ms(['tables', 'p50_ms'], 2)} | "
            f"{ms(['tables', 'p99_ms'], 2)} | {failed}{'' if verified else ' (dump check failed)'}"
            f" | {ms(['cpu_ms_per_change'], 1)} | "
            f"{B.fmt_spread(B.median_spread([r.get('idle_cpu_pct') for r in ok]), 0, '%')} | "
            f"{B.fmt_spread(B.median_spread([r['ready_ms'] / 1000 for r in ok]), 1, ' s')} | "
            f"{B.fmt_spread(fetch, 0, ' ms')} |")
        rss = B.median_spread([(r["rss_ready_kib"] or 0) / 1024 for r in ok])
        end = B.median_spread([(r["rss_end_kib"] or 0) / 1024 for r in ok])
        hwm = B.median_spread([(r["hwm_kib"] or 0) / 1024 for r in ok])
        model = ok[0]["coredns_model_mb"]
        mem_rows.append(
            f"| {src} | {ok[0]['services']:,} / {ok[0]['endpoints']:,} | "
            f"{B.fmt_spread(rss, 0, ' MiB')} | {B.fmt_spread(end, 0, ' MiB')} | "
            f"{B.fmt_spread(hwm, 0, ' MiB')} | {model:.1f} MB | "
            f"{end['median'] * 1.048576 / model:.2f} |")
    lines += ["", "Resident memory of the switchboard process (VmRSS after the first sync and "
              f"after the {a['changes']} changes, and its peak VmHWM), next to CoreDNS's published sizing "
              "model for the `kubernetes` plugin, (pods + services) × 0.000858 MB + 49.1 MB, with "
              "pods = endpoints:", "",
              "| source | services / endpoints | RSS ready | RSS end | peak | CoreDNS model | "
              "× model |", "|---|---|---|---|---|---|---|", *mem_rows, ""]
    lines += ["Figures: median (min–max) over the runs of each run's p50 / p99 over its "
              f"{a['changes']} changes. CPU per change: switchboard's CPU time over 20 further "
              "changes made without any polling (one every 250 ms), minus its idle CPU over as "
              "long, divided by 20 (the clock-tick resolution is 10 ms per stretch, so about "
              "0.5 ms per change; a busy idle process makes this figure unreliable, hence the "
              "idle CPU column: the process's CPU use, in % of one core, with nothing changing). "
              "The manifest source debounces inotify events for 15 ms before it rescans.", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sources", type=lambda s: s.split(","), default=["files", "api"])
    ap.add_argument("--timeout", type=int, default=900, help="seconds per run")
    B.docs_args(ap)
    a = ap.parse_args()
    B.run_part("propagation", a, run, summarize)


if __name__ == "__main__":
    main()
