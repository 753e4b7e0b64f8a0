#!/usr/bin/env python3
"""Idle client connections: the memory an L7 proxy holds per open keep-alive connection.

The same proxies and backends as the HTTP part (`bench/http/run.py`: switchboard with an
Ingress, HAProxy in http mode, nginx with upstream keepalive; one worker each). For each, N
client connections are opened and each sends one request and reads its answer, so every
connection is a served keep-alive HTTP/1.1 connection, then left idle. The proxy's resident
memory (all its processes) is read before and 2 s after, and the difference is reported per
connection and scaled to 10,000. N defaults to 3,000 because the peers' configurations in the
HTTP part allow at most 4,096 (nginx `worker_connections`) and 8,000 (HAProxy `maxconn`)
connections; the memory per connection does not depend on N at these sizes.
"""

import argparse
import resource
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http"))
import benchlib as B  # noqa: E402
import run as H  # noqa: E402  (the HTTP part: its proxies, backends and checks)

TARGETS = ["switchboard", "haproxy", "nginx"]


def open_idle(addr, n, timeout=60):
    """n connections, each with one request answered; returns the open sockets."""
    host, port = addr.rsplit(":", 1)
    socks = []
    deadline = time.time() + timeout
    req = f"GET / HTTP/1.1\r\nHost: {H.HOST}\r\n\r\n".encode()
    for _ in range(n):
        if time.time() > deadline:
            raise RuntimeError(f"opened only {len(socks)} of {n} connections in {timeout} s")
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(req)
        data = b""
        while b"\r\n\r\n" not in data or not data.split(b"\r\n\r\n", 1)[1]:
            c = s.recv(4096)
            if not c:
                raise RuntimeError(f"connection {len(socks)} closed before its answer")
            data += c
        if not data.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"connection {len(socks)}: {data[:40]!r}")
        socks.append(s)
    return socks


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--connections", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=1, help="(accepted for bench/run --quick)")
    ap.add_argument("--duration", type=int, default=0, help="(accepted for bench/run --quick)")
    ap.add_argument("--no-docs", action="store_true")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, a.connections + 1000)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    n = min(a.connections, want - 1000)

    results = {"machine": B.machine(), "args": vars(a), "connections": n, "targets": {},
               "versions": {t: B.pkg_version(H.PKG[t]) for t in ("haproxy", "nginx")}}
    wd = B.WORK / "idle"
    wd.mkdir(parents=True, exist_ok=True)
    help_text = B.switchboard_help()
    bport = B.free_port()
    backends = H.nginx_backends(wd, bport)
    B.wait_for(lambda: H._ok(f"{H.BACKENDS[0]}:{bport}"), 30, "the backends", backends)
    for t in TARGETS:
        e = results["targets"][t] = {}
        try:
            proc, addr = H.start(t, wd, bport, 1, help_text)
        except (LookupError, RuntimeError) as ex:
            e["skip"] = str(ex).splitlines()[0]
            B.log(f"idle {t}: {e['skip']}")
            continue
        try:
            problem = H.check(addr, True)
            if problem:
                e["skip"] = f"failed check: {problem}"
                continue
            time.sleep(1)
            before = B.tree_rss_kib(proc.pid)
            socks = open_idle(addr, n)
            time.sleep(2)
            after = B.tree_rss_kib(proc.pid)
            # Still served after idling: the proxy kept them open.
            still = sum(1 for s in socks[:50] if _alive(s))
            for s in socks:
                s.close()
            e.update(rss_before_kib=before, rss_after_kib=after,
                     per_conn_kib=(after - before) / n, alive_sample=still)
            B.log(f"idle {t}: {before} -> {after} KiB for {n} connections "
                  f"({(after - before) / n:.1f} KiB each)")
        except (RuntimeError, OSError) as ex:
            e["skip"] = f"failed: {ex}"
            B.log(f"idle {t}: {e['skip']}")
        finally:
            proc.stop()
    backends.stop()
    B.save_results("idle", results)
    if not a.no_docs:
        B.update_docs("idle", render(results))


def _alive(s):
    try:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {H.HOST}\r\n\r\n".encode())
        return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def render(r):
    m = r["machine"]
    n = r["connections"]
    lines = [
        "## HTTP: memory per idle client connection",
        "",
        B.machine_line(m),
        "",
        f"Command: `bench/run idle` ({n:,} connections per proxy, one worker each).",
        "",
        "Each connection sent one request through the proxy (same backends and configuration as "
        "the HTTP part) and then idled; the proxy's resident memory (all its processes) before "
        "and 2 s after, the difference per connection, scaled to 10,000 connections. Alive: of "
        "50 sampled connections, how many still answered a second request after the reading.",
        "",
        "| proxy | RSS before | RSS with the idle connections | per connection | per 10k idle connections | alive |",
        "|---|---|---|---|---|---|",
    ]
    for t, e in r["targets"].items():
        label = H.LABEL[t] + (f" {r['versions'][t]}" if r["versions"].get(t) else "")
        if "skip" in e:
            lines.append(f"| {label} | {e['skip']} | | | | |")
            continue
        per = e["per_conn_kib"]
        lines.append(
            f"| {label} | {e['rss_before_kib'] / 1024:.1f} MiB | {e['rss_after_kib'] / 1024:.1f} MiB "
            f"| {per:.1f} KiB | {per * 10000 / 1024:.0f} MiB | {e['alive_sample']}/50 |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
