"""The DNS servers under test, each configured to serve the generator's records on 127.0.0.1:PORT
with N worker threads. Settings follow shared/stack-notes.md ("Benchmarking on this machine"):
NSD without response rate limiting, Knot with its journal and zone-file sync off, Unbound with
only the iterator module and static local zones, dnsmasq with A records from a hosts file and
`local=` so unknown names are NXDOMAIN. Logging is at warning level or off for every server.

`start(name, data, port, threads, workdir)` returns a running benchlib.Proc, or raises
Unsupported with the reason (e.g. dnsmasq has no worker threads).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import benchlib as B  # noqa: E402

ZONE = "cluster.local"
REVERSE = "10.in-addr.arpa"


class Unsupported(Exception):
    pass


def _knot(data, port, threads, wd):
    (wd / "db").mkdir(parents=True, exist_ok=True)
    conf = wd / "knot.conf"
    conf.write_text(f"""server:
    rundir: "{wd}"
    listen: 127.0.0.1@{port}
    udp-workers: {threads}
    tcp-workers: 1
    background-workers: 1
control:
    listen: "{wd}/knot.sock"
database:
    storage: "{wd}/db"
log:
  - target: stderr
    any: warning
template:
  - id: default
    storage: "{data}/zone"
    file: "%s.zone"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: off
zone:
  - domain: {ZONE}
  - domain: {REVERSE}
""")
    return [B.which("knotd") or "knotd", "-c", conf]


def _nsd(data, port, threads, wd):
    conf = wd / "nsd.conf"
    conf.write_text(f"""server:
    ip-address: 127.0.0.1@{port}
    server-count: {threads}
    reuseport: yes
    username: ""
    chroot: ""
    zonesdir: "{data}/zone"
    database: ""
    zonelistfile: "{wd}/zone.list"
    xfrdfile: "{wd}/xfrd.state"
    xfrdir: "{wd}"
    pidfile: "{wd}/nsd.pid"
    logfile: "{wd}/nsd.log"
    verbosity: 0
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
    tcp-count: 100
    hide-version: yes
remote-control:
    control-enable: no
zone:
    name: "{ZONE}"
    zonefile: "{ZONE}.zone"
zone:
    name: "{REVERSE}"
    zonefile: "{REVERSE}.zone"
""")
    return [B.which("nsd") or "nsd", "-d", "-c", conf]


def _unbound(data, port, threads, wd):
    conf = wd / "unbound.conf"
    conf.write_text(f"""server:
    interface: 127.0.0.1@{port}
    port: {port}
    num-threads: {threads}
    so-reuseport: yes
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{wd}"
    pidfile: "{wd}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 0
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
    do-not-query-localhost: yes
    num-queries-per-thread: 4096
    outgoing-range: 8192
    msg-cache-size: 4m
    rrset-cache-size: 4m
    include: "{data}/unbound-local-data.conf"
remote-control:
    control-enable: no
""")
    return [B.which("unbound") or "unbound", "-d", "-c", conf]


def _dnsmasq(data, port, threads, wd):
    if threads != 1:
        raise Unsupported("single-threaded (no worker option)")
    conf = wd / "dnsmasq.conf"
    conf.write_text(f"""port={port}
listen-address=127.0.0.1
bind-interfaces
no-resolv
no-hosts
no-poll
user=root
pid-file={wd}/dnsmasq.pid
addn-hosts={data}/dnsmasq/hosts
conf-file={data}/dnsmasq/records.conf
local-ttl=30
cache-size=0
dns-forward-max=1000
""")
    return [B.which("dnsmasq") or "dnsmasq", "-k", "--conf-file=" + str(conf)]


PEERS = {
    "knot": ("Knot DNS", "knot", _knot),
    "nsd": ("NSD", "nsd", _nsd),
    "unbound": ("Unbound (local-data)", "unbound", _unbound),
    "dnsmasq": ("dnsmasq", "dnsmasq", _dnsmasq),
}


def start(name, data, port, threads, wd):
    label, pkg, make = PEERS[name]
    wd = Path(wd)
    wd.mkdir(parents=True, exist_ok=True)
    cmd = make(Path(data), port, threads, wd)
    if not B.which(Path(cmd[0]).name):
        raise Unsupported(B.not_installed(Path(cmd[0]).name, pkg))
    return B.Proc(name, cmd, wd / f"{name}.out")
