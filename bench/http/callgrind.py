#!/usr/bin/env python3
"""Instructions per request, counted by callgrind: switchboard (and nginx and HAProxy as
proxies) under the same bounded load in either setup of `run.py`. Counted, not timed, so it
means the same on a busy machine; it covers user space only (the kernel's loopback TCP work,
about half of a proxy's CPU here, is not in it).

Each proxy runs under `valgrind --tool=callgrind --instr-atstart=no`; after its 30 checked
requests, instrumentation is switched on (`callgrind_control -i on`) only while
`wrk -t1 -cC -dD -H 'Host: bench.local'` runs, then the counts are dumped, and the whole
process's instructions (every thread) are divided by wrk's request count. nginx runs with
`master_process off` (one process), HAProxy with `nbthread 1`, switchboard with
`--http-workers 1` and the setup's flags and environment (as `run.py` starts it).

    bench/http/callgrind.py [--setup bench|defaults] [--bin PATH] [--targets switchboard,nginx,haproxy]
                            [--duration 10] [--connections 4] [--out DIR] [--top 40]

Writes DIR/TARGET.cg (the dump), DIR/TARGET.incl and .excl (`callgrind_annotate`
inclusive and exclusive) and prints, per target, requests, Ir per request, and the largest
functions per request.
"""

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import benchlib as B  # noqa: E402
import run as H  # noqa: E402

VALGRIND = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]


def start(target, wd, ups, setup, binary, out):
    """(Proc, address) of `target` under callgrind."""
    cg = ["--callgrind-out-file=" + str(out / f"{target}.cg.%p")]
    if target == "switchboard":
        tuned = H.SETUPS[setup]["tuned"]
        man = H.switchboard_manifests(wd, ups)
        port = B.free_port()
        flags = ["--log", "warn,switchboard=info,proxy=info", "--lb-algorithm", "round-robin"]
        args = ["run", "--manifests", man, "--http", f"127.0.0.1:{port}",
                *(flags if tuned else []), "--http-workers", "1", "--admin", "127.0.0.1:0",
                "--upstream", "127.0.0.1:9", "--lame-duck", "0s"]
        env = {"TOKIO_WORKER_THREADS": "1"} if tuned else {}
        proc = B.Proc(target, [*VALGRIND, *cg, binary, *args], wd / f"cg-{target}.log", env=env)
        addr = f"127.0.0.1:{port}"
    else:
        port = B.free_port()
        start_proxy = H.nginx_proxy if target == "nginx" else H.haproxy
        proc = start_proxy(wd, port, ups, 1, prefix=[*VALGRIND, *cg])
        addr = f"127.0.0.1:{port}"

    def up():
        try:
            return H.get(addr)[0] > 0
        except OSError:
            return False

    B.wait_for(up, 300, f"{target} to answer", proc, interval=0.5)
    return proc, addr


def annotate(dump, inclusive):
    out = subprocess.run(["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}",
                          "--threshold=100", str(dump)], capture_output=True, text=True).stdout
    return out


def rows(text):
    """(Ir, function) rows of callgrind_annotate's output."""
    for m in re.finditer(r"^\s*([\d,]+) \([^)]*\)\s+(?:[^:\s]+:(?!:))?(.*?)(?: \[[^]]*\])?$", text, re.M):
        yield int(m.group(1).replace(",", "")), m.group(2)


def measure(target, wd, ups, a, out):
    proc, addr = start(target, wd, ups, a.setup, a.bin, out)
    try:
        problem = H.check(addr, True, len(ups))
        if problem:
            raise RuntimeError(f"{target}: {problem}")
        for f in out.glob(f"{target}.cg.*"):
            f.unlink()
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True,
                       capture_output=True)
        w = subprocess.run(["wrk", "-t1", f"-c{a.connections}", f"-d{a.duration}s",
                            "-H", f"Host: {H.HOST}", f"http://{addr}/"],
                           capture_output=True, text=True).stdout
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True,
                       capture_output=True)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                       capture_output=True)
        m = re.search(r"(\d+) requests in", w)
        requests = int(m.group(1)) if m else 0
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors.*", w)
        if errors:
            B.log(f"{target}: wrk says {errors.group(0)}")
        dumps = sorted(out.glob(f"{target}.cg.*.1"))
        B.wait_for(lambda: bool(sorted(out.glob(f"{target}.cg.*.1"))), 60, "the dump")
        dumps = sorted(out.glob(f"{target}.cg.*.1"))
        time.sleep(1)
    finally:
        proc.stop()
    dump = out / f"{target}.cg"
    dumps[-1].rename(dump)
    for f in out.glob(f"{target}.cg.*"):
        f.unlink()
    incl, excl = annotate(dump, True), annotate(dump, False)
    (out / f"{target}.incl").write_text(incl)
    (out / f"{target}.excl").write_text(excl)
    total = int(re.search(r"^\s*([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", incl, re.M)
                .group(1).replace(",", ""))
    print(f"\n== {target} ({a.setup} setup): {requests} requests, "
          f"{total / max(requests, 1):,.0f} Ir per request")
    for label, text in (("inclusive", incl), ("exclusive", excl)):
        print(f"-- {label}, Ir per request")
        for ir, fn in list(rows(text))[1:a.top + 1]:
            print(f"{ir / max(requests, 1):10,.0f}  {fn[:150]}")
    return requests, total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setup", choices=list(H.SETUPS), default="defaults")
    ap.add_argument("--bin", type=Path, default=B.BIN)
    ap.add_argument("--targets", default="switchboard")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--out", type=Path, default=B.WORK / "callgrind")
    ap.add_argument("--top", type=int, default=40)
    a = ap.parse_args()
    a.out = a.out.resolve()
    a.out.mkdir(parents=True, exist_ok=True)
    setup = H.SETUPS[a.setup]
    wd = B.WORK / ("callgrind-" + a.setup)
    wd.mkdir(parents=True, exist_ok=True)
    ups, backends = H.start_backends(wd, setup)
    try:
        for t in a.targets.split(","):
            measure(t, wd, ups, a, a.out)
    finally:
        backends.stop()


if __name__ == "__main__":
    main()
