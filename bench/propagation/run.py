#!/usr/bin/env python3
"""Propagation: at 10,000 services / 100,000 endpoints, the time from an EndpointSlice change
(a manifest file rewritten, or an object applied to the test API server) until switchboard's DNS
answers it and until the published tables hold it; p50/p99 over 100 changes, each figure the
median of 3 runs. Also: time to ready, resident memory next to CoreDNS's published model
((pods + services) × 0.000858 MB + 49.1 MB).

Sources (rows): `files` (one manifest file per service), `files-ns` (one file per namespace: 20
files of 500 Services and their EndpointSlices, about 700 KB each, the shape `kubectl get -o
yaml` or kustomize gives; a change rewrites a whole file with one address line different) and
`api`. `--baseline-bin PATH` runs the file rows with a second switchboard too (e.g. a build of
main), interleaved. Knot DNS is the peer reference where one applies: its load of the same
records from zone files at start, and its reload after one address is edited (`knotc
zone-reload`), each timed to the first correct answer.

The measuring is done by `bench-gen propagation` (bench/gen/src/propagation.rs); this script
repeats it, interleaving the rows, and writes the section of docs/benchmarks.md.
"""

import argparse
import json
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dns"))
import benchlib as B  # noqa: E402

# Row → bench-gen arguments.
SOURCES = {
    "files": ["--source", "files", "--layout", "service"],
    "files-ns": ["--source", "files", "--layout", "namespace", "--namespaces", "20"],
    "api": ["--source", "api"],
}
DESCRIBE = {
    "files": "files, one per service",
    "files-ns": "files, one per namespace (20 × 500 services)",
    "api": "Kubernetes API",
}


def dns_query(port, name, timeout=0.2):
    """(rcode, raw answer) of `name A` from 127.0.0.1:port, or (None, b"")."""
    qid = 0x5B5B
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    q += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(q, ("127.0.0.1", port))
            r = s.recv(4096)
        except OSError:
            return None, b""
    if len(r) < 12 or struct.unpack(">H", r[:2])[0] != qid:
        return None, b""
    return r[3] & 0xF, r


def wait_answer(port, name, ip, timeout):
    """Seconds until `name A` answers with `ip` (polled every 1 ms), or None."""
    want = socket.inet_aton(ip)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        rcode, r = dns_query(port, name)
        if rcode == 0 and want in r[12:]:
            return time.monotonic() - t0
        time.sleep(0.001)
    return None


def knot_round(a, data, rnd):
    """Knot's load of the cluster's zone files at start, and its reload after one A record's
    address is edited (serial bumped), each until the answer is right."""
    import peers  # bench/dns/peers.py
    if not B.which("knotd"):
        return {"error": B.not_installed("knotd", "knot")}
    wd = B.WORK / "propagation" / f"knot{rnd}"
    shutil.rmtree(wd, ignore_errors=True)
    wd.mkdir(parents=True)
    zdir = wd / "data" / "zone"
    shutil.copytree(data / "zone", zdir)
    port = B.free_port()
    zone = zdir / f"{peers.ZONE}.zone"
    text = zone.read_text()
    m = re.search(r"^(\S+\.svc\.cluster\.local)\. \d+ IN A (\S+)$", text, re.M)
    name, ip = m.group(1), m.group(2)
    t0 = time.monotonic()
    proc = B.Proc(f"knot{rnd}", peers._knot(wd / "data", port, 1, wd), wd / "knot.log")
    load = wait_answer(port, name, ip, a.timeout)
    out = {"load_s": load and time.monotonic() - t0, "records_file_bytes": len(text)}
    try:
        new_ip = "10.255.255.254"
        edited = text.replace(f" IN A {ip}\n", f" IN A {new_ip}\n", 1)
        edited = re.sub(r"(IN SOA \S+ \S+ )1 ", r"\g<1>2 ", edited, count=1)
        t0 = time.monotonic()
        tmp = zone.with_suffix(".tmp")
        tmp.write_text(edited)
        tmp.rename(zone)
        subprocess.run([B.which("knotc") or "knotc", "-s", str(wd / "knot.sock"), "zone-reload",
                        peers.ZONE], capture_output=True, timeout=60)
        got = wait_answer(port, name, new_ip, a.timeout)
        out["reload_s"] = got and time.monotonic() - t0
    finally:
        proc.stop()
    return out


def run(a):
    results = {"machine": B.machine(), "args": vars(a), "runs": {}, "knot": []}
    if a.note:
        results["note"] = a.note
    rows = [(src, None) for src in a.sources]
    if a.baseline_bin:
        rows += [(src, a.baseline_bin) for src in a.sources if src.startswith("files")]
    data = None
    if a.knot:
        data = B.WORK / "propagation" / "cluster"
        cmd = [B.GEN, "cluster", "--services", a.services, "--queries", 1, "--out", data]
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True, timeout=600)
    for rnd in range(a.runs):
        for src, bin in rows:
            key = src if bin is None else f"{src} (baseline)"
            wd = B.WORK / "propagation" / key.replace(" ", "_").strip("()")
            out = wd.parent / f"{wd.name}-run{rnd + 1}.json"
            cmd = [B.GEN, "propagation", "--bin", bin or B.BIN, *SOURCES[src],
                   "--services", a.services, "--changes", a.changes, "--work", wd, "--out", out]
            B.log(f"propagation {key} run {rnd + 1}: {B.cmdline(cmd)}")
            cpu = B.CpuWindow(None)
            cpu.start()
            stdout, err, ticks, wall = B.run_timed(cmd, a.timeout)
            w = cpu.stop(0)
            try:
                r = json.loads(stdout)
            except json.JSONDecodeError:
                r = {"error": (err or stdout)[-600:]}
                B.log(f"propagation {key} failed:\n{r['error']}")
            # Everything here is our own (switchboard + bench-gen); the rest is other processes'.
            r["others_cpu_pct"] = max(0.0, w["machine_busy_pct"] - w["softirq_pct"] - ticks / B.TICK
                                      / wall / (B.machine()["cores"] or 1) * 100)
            r["loadavg_start"] = w["loadavg_start"]
            r["cmd"] = B.cmdline(cmd)
            if bin is not None:
                r["build"] = B.build_info(bin)
            results["runs"].setdefault(key, []).append(r)
            if "dns" in r:
                B.log(f"  ready {r['ready_ms']:.0f} ms, DNS p50 {r['dns']['p50_ms']} p99 "
                      f"{r['dns']['p99_ms']} ms, tables p50 {r['tables']['p50_ms']} p99 "
                      f"{r['tables']['p99_ms']} ms, RSS {(r['rss_end_kib'] or 0) / 1024:.0f} MiB")
            B.save_results("propagation", results)
        if data is not None:
            k = knot_round(a, data, rnd + 1)
            B.log(f"  knot: {k}")
            results["knot"].append(k)
            B.save_results("propagation", results)
    return results


def summarize(results):
    a = results["args"]
    m = results["machine"]
    runs_all = [r for rs in results["runs"].values() for r in rs]
    others = max((r.get("others_cpu_pct", 0) for r in runs_all), default=0)
    base = a.get("baseline_bin")
    ns_mb = next((f"{r['changed_file_bytes'] / 1e6:.1f} MB" for rs in results["runs"].values()
                  for r in rs if r.get("layout") == "namespace" and r.get("changed_file_bytes")),
                 "about 1.5 MB")
    baseline = next((r.get("build") for rs in results["runs"].values() for r in rs
                     if r.get("build")), None)
    lines = ["## Propagation: EndpointSlice change → DNS answer and tables", "",
             B.machine_line(m, f" · other processes took {others:.0f}% of the machine at most "
                               f"during a run"), "",
             f"Command: `bench/run propagation{' --baseline-bin ' + str(base) if base else ''}` "
             f"(`bench-gen propagation --source files|api [--layout namespace --namespaces 20] "
             f"--services {a['services']} --changes {a['changes']}`, {a['runs']} runs per "
             "row, interleaved)."
             + (f" Rows marked (baseline): {baseline}." if baseline else ""), "",
             "Rows: `files` is one manifest file per service (its Service and EndpointSlice), "
             "`files-ns` one file per namespace, 20 files of 500 Services and their "
             f"EndpointSlices ({ns_mb} each), `api` the Kubernetes API. "
             "Each change moves one endpoint of a headless StatefulSet-style service to a new "
             "address (a pod replaced): the manifest source gets the service's file rewritten "
             f"(write + rename; in `files-ns` the whole {ns_mb} file, one line different), the "
             "Kubernetes source gets the EndpointSlice applied to the test "
             "API server (`tests/apiserver`, list/watch over HTTP, in the bench-gen process). "
             "DNS: time until `<hostname>.<svc>.<ns>.svc.cluster.local A` answers the new "
             "address (polled every 1 ms). Tables: time until `switchboard_snapshot_generation` "
             "on /metrics passes its value before the change (polled every 1 ms); the proxies "
             "read that same snapshot. The first 3 changes of each run are also looked up in the "
             "full `/debug/tables` dump afterwards (its fetch time is shown).", ""]
    if results.get("note"):
        lines += [results["note"], ""]
    lines += ["| source | DNS p50 | DNS p99 | tables p50 | tables p99 | failed | CPU per change | "
              "idle CPU | ready after (logged) | names right | /debug/tables fetch |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    mem_rows = []
    for src, rs in results["runs"].items():
        ok = [r for r in rs if "dns" in r]
        if not ok:
            err = rs[0].get("error", "no run") if rs else "no run"
            lines.append(f"| {src} | failed: {err.splitlines()[-1] if err else ''} | | | | | | | | | |")
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
            f"{B.fmt_spread(B.median_spread([r['ready_ms'] / 1000 for r in ok]), 2, ' s')} "
            f"({B.fmt_spread(B.median_spread([r.get('logged_ready_s') for r in ok]), 2, ' s')}) | "
            f"{min((r.get('correct_after_ready') or 0) for r in ok):,} of {ok[0]['services']:,} | "
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
    knot = [k for k in results.get("knot", []) if "load_s" in k]
    if knot:
        load = B.median_spread([k["load_s"] for k in knot])
        reload = B.median_spread([k.get("reload_s") for k in knot])
        lines += ["Peer reference, Knot DNS "
                  f"{B.pkg_version('knot') or ''} (one UDP worker, settings as in the DNS part) "
                  f"on the same cluster's records as zone files "
                  f"({knot[0]['records_file_bytes'] / 1e6:.1f} MB): start to the first right "
                  f"answer {B.fmt_spread(load, 2, ' s')}; one A record's address edited (serial "
                  f"bumped, `knotc zone-reload`, which reads the whole file) to the new answer "
                  f"{B.fmt_spread(reload, 3, ' s')}.", ""]
    elif results.get("knot"):
        lines += [f"Knot DNS: {results['knot'][0].get('error', 'failed')}.", ""]
    lines += ["Ready after: from process start to `/readyz` 200 (in brackets, the `seconds=` of "
              "switchboard's `ready: every source has synced` log line); names right: service "
              "names (`<svc>.<ns>.svc.cluster.local A`) answering exactly the cluster's "
              "addresses, each checked once right after ready (the lowest count over the runs).", ""]
    lines += ["Figures: median (min–max) over the runs of each run's p50 / p99 over its "
              f"{a['changes']} changes. CPU per change: switchboard's CPU time over 20 further "
              "changes made without any polling (one every 250 ms), minus its idle CPU over as "
              "long, divided by 20 (the clock-tick resolution is 10 ms per stretch, so about "
              "0.5 ms per change; a busy idle process makes this figure unreliable, hence the "
              "idle CPU column: the process's CPU use, in % of one core, with nothing changing). "
              "The manifest source gathers inotify events for at most 15 ms (less once every file "
              "named is closed by its writer or renamed into place) before it reads.", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sources", type=lambda s: s.split(","), default=["files", "files-ns", "api"],
                    help="rows: " + ", ".join(SOURCES))
    ap.add_argument("--baseline-bin", help="also run the file rows with this switchboard")
    ap.add_argument("--no-knot", dest="knot", action="store_false",
                    help="skip the Knot DNS reference")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per run")
    ap.add_argument("--note", help="a paragraph for the docs section (how this run was made)")
    B.docs_args(ap)
    a = ap.parse_args()
    B.run_part("propagation", a, run, summarize)


if __name__ == "__main__":
    main()
