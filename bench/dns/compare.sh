#!/usr/bin/env bash
# DNS comparison on one synthetic cluster: switchboard vs Knot DNS, one server worker thread
# each, dnsperf with bench-gen's query mix (docs/benchmarks.md, "## DNS").
#
#   bench/dns/compare.sh [SERVICES] [SECONDS] [ROUNDS]
#
# Servers:
#   sb-dns  the DNS server alone over the same manifests, loaded once (`dns` example `serve`):
#           the query path without the manifest watcher and controller threads
#   sb      the `switchboard run --manifests` binary (one tokio worker thread, one UDP worker)
#   knot    Knot DNS serving bench-gen's zone files (udp-workers 1)
# Needs: cargo build --release --bin switchboard --bin bench-gen -p dns --example serve
# (or just run from the repo root: this script builds them), Debian packages dnsperf, knot, bc.
#
# Per server and round: QPS at saturation (-T 2 -c 16 -q 200), the server's CPU microseconds per
# query (utime+stime over the run / answered queries: the steadiest figure on a shared machine),
# then p50/p99 latency at a fixed 20k QPS (-Q, -v), and RSS.
set -euo pipefail
SERVICES=${1:-10000}
RUN=${2:-10}
ROUNDS=${3:-2}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
(cd "$ROOT" && cargo build --release -q --bin switchboard && cargo build --release -q -p bench-gen && cargo build --release -q -p dns --example serve)
BIN=$ROOT/target/release
WD=$(mktemp -d /tmp/sb-dnsbench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WD"; }
trap cleanup EXIT
"$BIN/bench-gen" cluster --services "$SERVICES" --out "$WD/c" >"$WD/cluster.json"
Q=$WD/c/queries.txt

cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{print ($14+$15)/hz}' "/proc/$1/stat"; }
wait_dns() { # port name: until a cluster name answers NOERROR
  for _ in $(seq 1 1200); do
    dig +tries=1 +time=1 -p "$1" @127.0.0.1 "$2" 2>/dev/null | grep -q "status: NOERROR" && return 0
    sleep 0.1
  done
  echo "server on $1 never answered $2" >&2; return 1
}
FIRST=$(grep -m1 ' A$' "$Q" | grep -v missing | cut -d' ' -f1 || head -1 "$Q" | cut -d' ' -f1)

TOKIO_WORKER_THREADS=1 UDP_WORKERS=1 "$BIN/examples/serve" "$WD/c/manifests" 127.0.0.1:25361 >"$WD/sbdns.log" 2>&1 &
PIDS+=($!); SBDNS=$!
TOKIO_WORKER_THREADS=1 "$BIN/switchboard" run --manifests "$WD/c/manifests" --dns 127.0.0.1:25362 \
  --dns-udp-workers 1 --admin 127.0.0.1:25369 --upstream 127.0.0.1:1 --log warn >"$WD/sb.log" 2>&1 &
PIDS+=($!); SB=$!
mkdir -p "$WD/knot/db"
cat >"$WD/knot/knot.conf" <<KNOT
server:
    rundir: "$WD/knot"
    listen: 127.0.0.1@25363
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "$WD/knot/db"
log:
  - target: stderr
    any: warning
template:
  - id: default
    storage: "$WD/c/zone"
    file: "%s.zone"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: off
zone:
  - domain: cluster.local
  - domain: 10.in-addr.arpa
KNOT
knotd -c "$WD/knot/knot.conf" >"$WD/knot.log" 2>&1 &
PIDS+=($!); KNOT=$!
wait_dns 25361 "$FIRST"; wait_dns 25363 "$FIRST"; wait_dns 25362 "$FIRST"
until curl -sf http://127.0.0.1:25369/readyz >/dev/null; do sleep 0.2; done
sleep 2

measure() { # name port pid
  local before after n
  before=$(cpu_of "$3")
  dnsperf -s 127.0.0.1 -p "$2" -d "$Q" -l "$RUN" -T 2 -c 16 -q 200 >"$WD/$1.perf" 2>&1
  after=$(cpu_of "$3")
  n=$(awk '/Queries completed/{print $3}' "$WD/$1.perf")
  dnsperf -s 127.0.0.1 -p "$2" -d "$Q" -l 5 -Q 20000 -v 2>/dev/null | awk '/^> /{print $NF}' | sort -g >"$WD/$1.lat"
  local cnt p50 p99
  cnt=$(wc -l <"$WD/$1.lat")
  p50=$(sed -n "$((cnt / 2 + 1))p" "$WD/$1.lat")
  p99=$(sed -n "$((cnt * 99 / 100 + 1))p" "$WD/$1.lat")
  printf '%-7s qps=%-8.0f cpu_us/q=%-6.2f p50_us=%-5.0f p99_us=%-5.0f %s load=%s\n' "$1" \
    "$(awk '/Queries per second/{print $4}' "$WD/$1.perf")" \
    "$(echo "($after - $before) * 1000000 / $n" | bc -l)" \
    "$(echo "$p50 * 1000000" | bc -l)" "$(echo "$p99 * 1000000" | bc -l)" \
    "$(grep -o 'NOERROR [0-9]* ([0-9.]*%), NXDOMAIN [0-9]* ([0-9.]*%)' "$WD/$1.perf")" \
    "$(cut -d' ' -f1 /proc/loadavg)"
}

echo "# services=$SERVICES $(jq -r '"records=\(.records) endpoints=\(.endpoints)"' "$WD/cluster.json" 2>/dev/null || true) run=${RUN}s cpus=$(nproc) $(date -u +%FT%TZ)"
for r in $(seq 1 "$ROUNDS"); do
  measure knot 25363 "$KNOT"
  measure sb-dns 25361 "$SBDNS"
  measure sb 25362 "$SB"
done
for p in "knot $KNOT" "sb-dns $SBDNS" "sb $SB"; do
  set -- $p; echo "$1 RSS $(awk '/VmRSS/{print $2, $3}' "/proc/$2/status")"
done
