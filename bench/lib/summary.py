#!/usr/bin/env python3
"""The summary at the top of docs/benchmarks.md: switchboard's headline ratios against the best
peer, read from the raw results of the last run of each part (target/bench/results/*.json)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as B  # noqa: E402


def load(name):
    try:
        return json.loads((B.RESULTS / f"{name}.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def med(runs, key):
    m = B.median_spread([r.get(key) for r in runs])
    return m["median"] if m else None


def ratio(a, b, digits=2):
    return f"{a / b:.{digits}f}" if a and b else "–"


def dns_rows(d):
    rows = []
    for cell in d["cells"].values():
        srv = cell["servers"]
        peers = {k: v for k, v in srv.items()
                 if k not in ("switchboard", "sb-dns", "sb-dns-base") and v["runs"]}
        if not peers:
            continue
        best = max(peers, key=lambda k: med(peers[k]["runs"], "qps") or 0)
        bq, bc = med(peers[best]["runs"], "qps"), med(peers[best]["runs"], "cpu_us_per_query")
        for ours in ("switchboard", "sb-dns"):
            e = srv.get(ours)
            if not e:
                continue
            what = (f"DNS QPS, {cell['size']:,} services, {cell['threads']} thread"
                    f"{'s' if cell['threads'] > 1 else ''}"
                    f"{' (DNS server alone)' if ours == 'sb-dns' else ''}")
            if e.get("skip") or not e["runs"]:
                rows.append((what, e.get("skip", "no runs"), "", ""))
                continue
            q, c = med(e["runs"], "qps"), med(e["runs"], "cpu_us_per_query")
            rows.append((what, f"{q:,.0f} vs {bq:,.0f} ({B.LABEL_OF.get(best, best)})",
                         ratio(q, bq), f"{c:.1f} vs {bc:.1f} µs ({ratio(bc, c)}×)"))
    return rows


def http_rows(d):
    rows = []
    for workers, cell in d["cells"].items():
        peers = {k: v for k, v in cell.items() if k in ("haproxy", "nginx") and v["runs"]}
        best = max(peers, key=lambda k: med(peers[k]["runs"], "rps") or 0, default=None)
        cell_name = ("HTTP requests/s, 1 worker pinned" if workers.endswith("p") else
                     f"HTTP requests/s, {workers} worker{'s' if workers != '1' else ''}")
        for ours, note in (("switchboard", ""), ("switchboard-pipelined", ", upstream pipelining")):
            e = cell.get(ours)
            if ours != "switchboard" and not e:
                continue
            what = cell_name + note
            if not e or e.get("skip") or not e["runs"] or not peers:
                rows.append((what, (e or {}).get("skip", "no runs"), "", ""))
                continue
            q, bq = med(e["runs"], "rps"), med(peers[best]["runs"], "rps")
            c = med(e["runs"], "cpu_us_per_request")
            bc = med(peers[best]["runs"], "cpu_us_per_request")
            p, bp = med(e["runs"], "p99_ms"), med(peers[best]["runs"], "p99_ms")
            rows.append((what, f"{q:,.0f} vs {bq:,.0f} ({B.LABEL_OF.get(best, best)})",
                         ratio(q, bq),
                         f"{c:.1f} vs {bc:.1f} µs ({ratio(bc, c)}×); p99 {p:.2f} vs {bp:.2f} ms"))
    return rows


def l4_rows(d):
    rows = []
    if "skip" in d:
        return [("L4", d["skip"], "", "")]
    for workers, cell in d["cells"].items():
        e = cell.get("switchboard")

        def v(t, kind):
            runs = [r for r in cell.get(t, {}).get("runs", []) if r["kind"] == kind]
            return med(runs, "value")

        if not e or e.get("skip") or not e["runs"]:
            rows.append((f"L4, {workers} worker", (e or {}).get("skip", "no runs"), "", ""))
            continue
        for kind, what, peer in (("conn", "TCP connections/s", "haproxy"),
                                 ("tput", "TCP throughput (Gbit/s)", "haproxy"),
                                 ("udp", "UDP datagrams/s", "nftables")):
            ours, theirs, dnat = v("switchboard", kind), v(peer, kind), v("nftables", kind)
            dg = 2 if kind == "tput" else 0
            rows.append((f"L4 {what}, {workers} worker",
                         f"{B.fmt_num(ours, dg)} vs {B.fmt_num(theirs, dg)} "
                         f"({B.LABEL_OF.get(peer, peer)})", ratio(ours, theirs),
                         f"× DNAT ceiling {ratio(ours, dnat)}"))
    return rows


def prop_rows(d):
    rows = []
    for src, runs in d["runs"].items():
        ok = [r for r in runs if "dns" in r]
        if not ok:
            continue
        p50 = med([r["dns"] for r in ok], "p50_ms")
        p99 = med([r["dns"] for r in ok], "p99_ms")
        t50 = med([r["tables"] for r in ok], "p50_ms")
        rss = med(ok, "rss_end_kib")
        model = ok[0]["coredns_model_mb"]
        rows.append((f"Propagation ({src}), 10k services / 100k endpoints",
                     f"DNS p50 {p50 or 0:.1f} ms, p99 {p99 or 0:.1f} ms; tables p50 {t50 or 0:.1f} ms",
                     "", f"RSS {rss / 1024:.0f} MiB = {rss / 1024 * 1.048576 / model:.2f}× "
                         f"CoreDNS's model ({model:.0f} MB)"))
    return rows


def l4prog_rows(d):
    if "skip" in d or not d.get("rounds"):
        return [("L4 programming", d.get("skip", "no runs"), "", "")]
    a, rounds = d["args"], d["rounds"]
    changes = [c for r in rounds for c in r["changes"]]

    def m(vals):
        return med([{"v": v} for v in vals], "v")

    def kind(k, key="ms"):
        return m([c.get(key) for c in changes if c["kind"] == k]) or 0

    full = m([r["first_sync_s"] for r in rounds])
    fwd = m([r["first_forward_s"] for r in rounds])
    return [(f"L4 programming, {a['services']:,} services / "
             f"{a['services'] * a['endpoints']:,} endpoints ({a.get('source', 'files')})",
             f"endpoint replaced {kind('replace'):.1f} ms, added {kind('add'):.1f} ms, removed "
             f"{kind('remove'):.1f} ms (transaction CPU {kind('replace', 'apply_cpu_ms'):.1f} / "
             f"{kind('add', 'apply_cpu_ms'):.1f} / {kind('remove', 'apply_cpu_ms'):.1f} ms); "
             f"full table {full or 0:.2f} s; start to first forwarded {fwd or 0:.2f} s", "",
             "kube-proxy nftables (outside run): 9.7–18.2 s per sync, 34–52 s first sync, "
             "47.2 s to first forwarded")]


def memory_rows(d):
    rows = []
    for e in d["cells"]:
        if not e["runs"] or e["services"] != 10000 or e["endpoints"] != 100000:
            continue
        rss = med(e["runs"], "rss_ready_kib") / 1024
        churn = med(e["runs"], "rss_churn_kib")
        model = 49.1 + (e["services"] + e["endpoints"]) * 0.000858
        rows.append((f"Memory ({e['roles']} role set, {e['source']}), 10k services / 100k endpoints",
                     f"RSS {rss:.0f} MiB after sync"
                     f"{f', {churn / 1024:.0f} MiB after churn' if churn else ''}",
                     "", f"{rss * 1.048576 / model:.2f}× CoreDNS's model ({model:.0f} MB)"))
    return rows


# The summary rows of each part start with one of these; a part whose raw results are gone
# (target/bench is scratch) keeps its rows and run date from the summary already in the docs.
PREFIXES = {"dns": ("DNS ",), "propagation": ("Propagation ",), "http": ("HTTP ",),
            "l4": ("L4 TCP", "L4 UDP", "L4,"), "l4prog": ("L4 programming",),
            "memory": ("Memory ",)}


def previous(name):
    """(rows, date) of `name` in the summary now in docs/benchmarks.md."""
    text = B.DOCS.read_text() if B.DOCS.exists() else ""
    begin, end = "<!-- bench:summary:begin -->", "<!-- bench:summary:end -->"
    if begin not in text or end not in text:
        return [], None
    block = text[text.index(begin):text.index(end)]
    rows = []
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith(PREFIXES[name]):
            rows.append(tuple(cells))
    date = None
    if "(runs: " in block:
        for part in block.split("(runs: ", 1)[1].split(")", 1)[0].split("; "):
            if part.startswith(name + " "):
                date = part
    return rows, date


def main():
    rows = []
    dates = []
    for name, fn in (("dns", dns_rows), ("propagation", prop_rows), ("http", http_rows),
                     ("l4", l4_rows), ("l4prog", l4prog_rows), ("memory", memory_rows)):
        d = load(name)
        if d:
            rows += fn(d)
            dates.append(f"{name} {d['machine']['date'] if 'machine' in d else '?'}")
        else:
            kept, date = previous(name)
            rows += kept
            if date:
                dates.append(date)
    if not rows:
        return
    md = ["## Summary: switchboard against the best peer", "",
          "From the sections below (runs: " + "; ".join(dates) + "). Ratio > 1 means "
          "switchboard is ahead; CPU ratios are peer ÷ switchboard per query or request.", "",
          "| what | switchboard vs best peer | ratio | CPU per op / notes |", "|---|---|---|---|"]
    md += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    B.update_docs("summary", "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
