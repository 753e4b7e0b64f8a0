"""Shared pieces of the benchmark harness (stdlib only).

- processes: start a server with its output in a log file, stop it (SIGTERM, then SIGKILL) on exit
  even when a run fails; start switchboard and read the `listening on NAME ADDR` lines it logs;
- CPU accounting from /proc: the CPU time of a process tree, of the whole machine, and so of
  "everything else" during a run (the noise stack-notes asks to record);
- statistics: median and spread of repeated runs, percentiles;
- docs/benchmarks.md: each part rewrites only its own section, between
  `<!-- bench:NAME:begin -->` and `<!-- bench:NAME:end -->`, and leaves every other line alone.
"""

import atexit
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "target" / "bench"
RESULTS = WORK / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
# SWITCHBOARD_BIN overrides the binary under test (e.g. a debug build while developing the
# harness; numbers from such a build are meaningless).
BIN = Path(os.environ.get("SWITCHBOARD_BIN") or ROOT / "target" / "release" / "switchboard")
GEN = Path(os.environ.get("BENCH_GEN") or ROOT / "target" / "release" / "bench-gen")
TICK = os.sysconf("SC_CLK_TCK")

_children = []


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


class Proc:
    """A server process started by the harness; its stdout+stderr go to `logfile`."""

    def __init__(self, name, cmd, logfile, env=None, cwd=None):
        self.name = name
        self.cmd = [str(c) for c in cmd]
        self.logfile = Path(logfile)
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ)
        full_env.update(env or {})
        self._log = open(self.logfile, "w")
        self.p = subprocess.Popen(
            self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
            start_new_session=True,
        )
        _children.append(self)

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p.poll() is None

    def text(self):
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, n=15):
        return "\n".join(self.text().splitlines()[-n:])

    def pause(self):
        """SIGSTOP the process group: a server not being timed takes no CPU from the one that is."""
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGSTOP)

    def resume(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGCONT)

    def stop(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait(timeout=5)
        self._log.close()
        if self in _children:
            _children.remove(self)


class Alone:
    """`with Alone(proc, others):` pauses every other server while `proc` is timed."""

    def __init__(self, proc, others):
        self.others = [o for o in others if o is not None and o is not proc]

    def __enter__(self):
        for o in self.others:
            o.pause()
        time.sleep(0.2)

    def __exit__(self, *exc):
        for o in self.others:
            o.resume()


def _stop_all():
    for c in list(_children):
        try:
            c.stop()
        except Exception:
            pass


atexit.register(_stop_all)
for _sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(_sig, lambda s, f: sys.exit(128 + s))


def free_port(kind=socket.SOCK_DGRAM):
    """A port free for both UDP and TCP on 127.0.0.1 (for servers that cannot take port 0)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t, socket.socket(
                socket.AF_INET, socket.SOCK_DGRAM
            ) as u:
                t.bind(("127.0.0.1", port))
                u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


def wait_for(pred, timeout, what, proc=None, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited while waiting for {what}:\n{proc.tail()}")
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}" +
                       (f":\n{proc.tail()}" if proc else ""))


LISTEN_RE = re.compile(r"listening on (\S+) (\S+)")


def listeners(text):
    """`{name: [addr, ...]}` from `listening on NAME ADDR` log lines."""
    out = {}
    for m in LISTEN_RE.finditer(re.sub(r"\x1b\[[0-9;]*m", "", text)):
        out.setdefault(m.group(1), []).append(m.group(2).rstrip(","))
    return out


def http_get(addr, path, timeout=5):
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1]) if head else 0
    return status, body.decode(errors="replace")


def start_switchboard(args, name="switchboard", env=None, timeout=120, logdir=None, bin=None):
    """`switchboard run ARGS` (with `--admin 127.0.0.1:0` unless given); waits for readiness.
    `bin`: another switchboard binary than BIN (a baseline). Returns (Proc, listeners dict)."""
    bin = Path(bin or BIN)
    if "--admin" not in args:
        args = list(args) + ["--admin", "127.0.0.1:0"]
    if "--upstream" not in args:
        # Never let a benchmark query leave the machine: forward to a dead loopback port.
        args = list(args) + ["--upstream", "127.0.0.1:9"]
    if "--lame-duck" in switchboard_help(bin):
        # Stop at once on SIGTERM (the default keeps answering DNS for 5 s).
        args = list(args) + ["--lame-duck", "0s"]
    logdir = Path(logdir or WORK / "logs")
    p = Proc(name, [bin, "run", *args], logdir / f"{name}.log", env=env)
    wait_for(lambda: "switchboard started" in p.text(), timeout, "switchboard to start", p)
    ls = listeners(p.text())
    admin = ls["admin"][0]

    def ready():
        try:
            return http_get(admin, "/readyz")[0] == 200
        except OSError:
            return False

    wait_for(ready, timeout, "switchboard /readyz", p)
    return p, ls


_help = {}


def switchboard_help(bin=None):
    """`switchboard run --help` of BIN (or of `bin`): which flags that binary has."""
    bin = Path(bin or BIN)
    if bin in _help:
        return _help[bin]
    try:
        _help[bin] = subprocess.run([bin, "run", "--help"], capture_output=True, text=True,
                                    timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return _help[bin]


# ---------------------------------------------------------------- CPU accounting


def children_of():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        ppid = int(s.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_pids(pid):
    kids = children_of()
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(kids.get(p, []))
    return out


def proc_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            f = f.read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    except (OSError, IndexError):
        return 0


def tree_ticks(pids):
    return sum(proc_ticks(p) for p in pids)


def tree_rss_kib(pid):
    """Resident memory of a process and its descendants (KiB)."""
    total = 0
    for p in tree_pids(pid):
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def machine_ticks():
    """(busy, total, irq + softirq) jiffies over all CPUs."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + vals[4]
    total = sum(vals[:8])
    return total - idle, total, vals[5] + vals[6]


class CpuWindow:
    """CPU taken during a window by the server tree, the load generator, the benchmark's own
    helpers (`extra_pids`: backends), the kernel's interrupt and softirq work (where loopback and
    veth packet processing is accounted), and everything else: the other processes on the
    machine, the noise to record. Call `start()`, run the load, then `stop(loadgen_ticks)`."""

    def __init__(self, server_pid, extra_pids=()):
        self.server_pid = server_pid
        self.extra_pids = [p for p in extra_pids if p]

    def start(self):
        self.pids = tree_pids(self.server_pid) if self.server_pid else []
        self.xpids = [q for p in self.extra_pids for q in tree_pids(p)]
        self.s0 = tree_ticks(self.pids)
        self.x0 = tree_ticks(self.xpids)
        self.m0 = machine_ticks()
        self.t0 = time.monotonic()
        self.load = open("/proc/loadavg").read().split()[0]

    def stop(self, loadgen_ticks=0):
        self.s1 = tree_ticks(self.pids)
        x1 = tree_ticks(self.xpids)
        m1 = machine_ticks()
        secs = time.monotonic() - self.t0
        busy = (m1[0] - self.m0[0]) / TICK
        irq = (m1[2] - self.m0[2]) / TICK
        server = (self.s1 - self.s0) / TICK
        extra = (x1 - self.x0) / TICK
        loadgen = loadgen_ticks / TICK
        ncpu = os.cpu_count() or 1
        pct = (lambda v: v / secs / ncpu * 100) if secs else (lambda v: 0)
        return {
            "seconds": secs,
            "server_cpu_s": server,
            "loadgen_cpu_s": loadgen,
            "helpers_cpu_s": extra,
            "softirq_pct": pct(irq),
            "others_cpu_pct": max(0.0, pct(busy - irq - server - loadgen - extra)),
            "machine_busy_pct": pct(busy),
            "loadavg_start": float(self.load),
        }


def run_timed(cmd, timeout):
    """Runs a load generator to completion (killed after `timeout` s); returns (stdout, stderr,
    its CPU ticks including its children, wall seconds)."""
    _child_usage_delta()
    t = time.monotonic()
    p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        err += f"\n(killed after {timeout}s)"
    return out, err, _child_usage_delta(), time.monotonic() - t


_last_children = [0.0]


def _child_usage_delta():
    """CPU ticks of children reaped since the last call."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = r.ru_utime + r.ru_stime
    d = total - _last_children[0]
    _last_children[0] = total
    return d * TICK


_child_usage_delta()

# ---------------------------------------------------------------- statistics


def median_spread(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    k = max(1, min(len(sorted_vals), int(-(-p / 100 * len(sorted_vals) // 1))))
    return sorted_vals[k - 1]


def fmt_num(v, digits=0):
    if v is None:
        return "–"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def fmt_spread(ms, digits=0, unit=""):
    """`123,456 (120,001–125,000)` from a median_spread dict."""
    if not ms:
        return "–"
    if ms["n"] == 1:
        return f"{fmt_num(ms['median'], digits)}{unit}"
    return (f"{fmt_num(ms['median'], digits)}{unit} "
            f"({fmt_num(ms['min'], digits)}–{fmt_num(ms['max'], digits)})")


# ---------------------------------------------------------------- machine and docs


def machine():
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) // 1024 // 1024} GiB"
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory": mem,
        "kernel": platform.release(),
        "loadavg": open("/proc/loadavg").read().split()[:3],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "build": build_info(),
    }


def build_info(bin=None):
    """Which switchboard was measured: the commit (and whether the tree had uncommitted changes)
    as `bench/run` recorded them when it built and copied the binary (BUILD next to it), else
    as git says now; and when the binary was built. `bin`: another binary than BIN (a baseline),
    described by its own BUILD or else by its path, never by the tree's commit."""
    rev = None
    if bin is not None:
        bin = Path(bin)
        rev = f"`{bin}`"
    else:
        bin = BIN
    stamp = bin.parent / "BUILD"
    try:
        rev = stamp.read_text().strip() or rev
    except OSError:
        pass
    if rev is None:
        try:
            rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True, timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain",
                                    "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            rev += " + uncommitted changes" if dirty else ""
        except (OSError, subprocess.TimeoutExpired):
            rev = "?"
    try:
        built = datetime.datetime.fromtimestamp(bin.stat().st_mtime, datetime.timezone.utc)
        built = built.strftime("%Y-%m-%d %H:%M UTC")
    except OSError:
        built = "not built"
    return f"switchboard release build of {rev}, built {built}"


def copy_baseline(path):
    """Copies the baseline binary (and a BUILD next to it) to target/bench/bin/baseline/: a
    rebuild at its path during the runs cannot swap it."""
    src = Path(path).resolve()
    if not os.access(src, os.X_OK):
        raise SystemExit(f"--baseline-bin {path}: not an executable")
    d = WORK / "bin" / "baseline"
    if src == (d / "switchboard").resolve():
        return d / "switchboard"
    d.mkdir(parents=True, exist_ok=True)
    (d / "BUILD").unlink(missing_ok=True)
    shutil.copy2(src, d / "switchboard.new")
    os.replace(d / "switchboard.new", d / "switchboard")
    if (src.parent / "BUILD").is_file():
        shutil.copy2(src.parent / "BUILD", d / "BUILD")
    else:
        (d / "BUILD").write_text(f"`{src}`")
    return d / "switchboard"


def machine_line(m, extra=""):
    return (f"{m['date']} · {m['cores']} cores ({m['cpu'] or 'unknown CPU'}), {m['memory']} · "
            f"load average at start {' '.join(m['loadavg'])}{extra} · {m.get('build', '')}")


def pkg_version(pkg):
    try:
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def not_installed(cmd, pkg):
    """Why `cmd` is missing: apt-get's error for its package if bench/run recorded one."""
    reason = ""
    try:
        for line in (WORK / "install-failures").read_text().splitlines():
            if line.startswith(f"{pkg}: "):
                reason = line.split(": ", 1)[1].strip()
    except OSError:
        pass
    return f"`{cmd}` not installed (Debian package {pkg}" + (f": {reason})" if reason else ")")


def which(cmd):
    for d in os.environ.get("PATH", "").split(":") + ["/usr/sbin", "/sbin"]:
        p = Path(d) / cmd
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


HEADER = """# Benchmarks

Every performance claim of switchboard is a ratio against a real peer measured in the same run
on the same machine. Numbers below are rewritten by the harness; nothing here is typed in by hand.

```sh
bench/run all            # everything below (installs peers from Debian, builds release): ~30 min
bench/run dns            # one part: dns | propagation | http | l4
bench/run dns --quick    # a short smoke run (1 round, short loads): numbers are not for comparing
cargo bench -p tables --bench compile   # the criterion bench of table compilation (own section)
bench/dns/compare.sh     # the DNS work's quick switchboard-vs-Knot comparison (own section)
```

Each figure is the median of at least 3 runs with the range (min–max) in brackets. Runs of
different servers are interleaved round by round, so slow drift of the machine's load hits all of
them alike, and while one server is timed the others are paused (SIGSTOP), so an idle server's
background work cannot slow the one under test. The load average at the start and the CPU that
*other* processes took during the runs are recorded with each table, since on a shared 2-core
machine that noise can halve throughput; the CPU time per query or request of the server is the
steadiest figure to compare. Raw results
(every run) are in `target/bench/results/*.json` after a run. "Other processes' CPU" is the
machine's busy time minus the server, the load generator, the benchmark's backends and the
kernel's interrupt/softirq time (where loopback and veth packets are processed), in % of all cores. Benchmarks are not part of
`cargo test` and never gate CI.
"""


def docs_args(ap):
    """The options every part has: --no-docs and --render."""
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--render", action="store_true",
                    help="only rewrite the docs section from the last saved results")


def run_part(name, a, run, summarize):
    """Runs a part (with --render: reloads its last saved results instead), prints its section
    and writes it into docs/benchmarks.md unless --no-docs."""
    results = json.loads((RESULTS / f"{name}.json").read_text()) if a.render else run(a)
    md = summarize(results)
    print(md)
    if a.render or not a.no_docs:
        update_docs(name, md)


def update_docs(name, markdown):
    """Replaces the section between this part's markers in docs/benchmarks.md (appending it if
    it is not there yet, before the criterion section if that exists)."""
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    block = f"{begin}\n{markdown.rstrip()}\n{end}\n"
    text = DOCS.read_text() if DOCS.exists() else ""
    if not text.strip():
        text = HEADER + "\n"
    elif "bench/run all" not in text:
        # Someone else started the file: put the header on top, in place of a bare title.
        body = text[len("# Benchmarks"):].lstrip("\n") if text.startswith("# Benchmarks") else text
        text = HEADER + "\n" + body
    if begin in text and text.find(end, text.index(begin)) >= 0:
        a = text.index(begin)
        b = text.index(end, a) + len(end)
        if text[b:b + 1] == "\n":
            b += 1
        text = text[:a] + block + text[b:]
        # A hand edit elsewhere can leave a second copy or a stray marker: keep one section.
        rest = text[a + len(block):]
        while begin in rest and rest.find(end, rest.index(begin)) >= 0:
            i = rest.index(begin)
            j = rest.index(end, i) + len(end)
            rest = rest[:i] + rest[j + (1 if rest[j:j + 1] == "\n" else 0):]
        rest = rest.replace(end + "\n", "").replace(begin + "\n", "")
        head = text[:a].replace(end + "\n", "").replace(begin + "\n", "")
        text = head + block + rest
    elif name == "summary" and "`cargo test` and never gate CI.\n" in text:
        pos = text.index("`cargo test` and never gate CI.\n") + len("`cargo test` and never gate CI.\n")
        text = text[:pos] + "\n" + block + text[pos:]
    else:
        order = ["dns", "propagation", "http", "l4", "l4prog", "memory"]
        # Insert after the last present section of ours that comes before this one.
        pos = None
        for other in order[: order.index(name)] if name in order else []:
            e = f"<!-- bench:{other}:end -->"
            if e in text:
                pos = text.rindex(e) + len(e) + 1
        if pos is None:
            for other in order[order.index(name) + 1:] if name in order else []:
                b = f"<!-- bench:{other}:begin -->"
                if b in text:
                    pos = text.index(b)
                    break
        if pos is None:
            crit = text.find("## Table compilation (tables crate)")
            pos = crit if crit >= 0 else len(text)
        sep = "" if text[:pos].endswith("\n\n") else "\n"
        text = text[:pos] + sep + block + "\n" + text[pos:]
    DOCS.write_text(text)


LABEL_OF = {"knot": "Knot", "nsd": "NSD", "unbound": "Unbound", "dnsmasq": "dnsmasq",
            "haproxy": "HAProxy", "nginx": "nginx", "nftables": "nftables DNAT"}


def save_results(name, data):
    """Saves a run's results for `--render` and the summary. A `--no-docs` run (an A/B, a
    partial or experimental run) saves beside them (`NAME.no-docs.json`): the summary is built
    from the last documented run, and a partial one must not replace its rows (it once left the
    L4 rows without HAProxy)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = ".no-docs" if "--no-docs" in sys.argv else ""
    path = RESULTS / f"{name}{suffix}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def cmdline(cmd):
    return " ".join(shlex.quote(str(c)) for c in cmd).replace(str(ROOT) + "/", "")
