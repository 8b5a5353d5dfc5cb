#!/usr/bin/env bash
# fqdnd vs dnsdist, same run, same queries, same upstream (NSD), on loopback.
#
# Both proxies enforce the same allow-list: 50 policies with 1,000 patterns in all (500 exact
# names, 500 `*.suffix` patterns) for the querying endpoint; names outside it get NXDOMAIN from
# the proxy, names inside are forwarded to NSD. fqdnd also learns every allowed answer (the same
# patterns as toFQDNs selectors: cache entry, selector match, datapath delta before release).
# dnsdist gets the equivalent rules (QNameSetRule for exact names, SuffixMatchNodeRule for the
# suffixes, NXDOMAIN otherwise). dnsdist keeps no per-query records, so the comparison runs
# fqdnd with its flow ring off (flow-ring-size: 0); a third row shows fqdnd with flows on
# (the default: every query and answer becomes a Hubble-shaped flow in a 4096-entry ring).
# Half of the queries are allowed, half denied.
#
# For each proxy, two dnsperf phases:
#   1. a fixed rate (RATE q/s) with per-query latencies (-v): p50 / p90 latency;
#   2. unthrottled: maximum queries/s, and the proxy's CPU time (utime+stime from
#      /proc/<pid>/stat) per 100k queries.
# Prints a table and the fqdnd/dnsdist ratios. Reports only, asserts nothing.
#
# Usage: benches/dnsperf.sh            (builds the release binary first)
#   env: DURATION=10 RATE=10000 CLIENTS=4 OUTSTANDING=200 FQDND_BIN=path
#        FQDND_CONFIG=file: extra fqdnd config (e.g. udp-workers: 1)
#        PERF_DATA=file: also record a `perf record -g` profile of fqdnd (or PERF_TARGET=fqdnd-flows)
#        during its unthrottled phase
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-10}
RATE=${RATE:-10000}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-200}

for tool in nsd dnsdist dnsperf dig ss awk; do
    command -v "$tool" >/dev/null || { echo "dnsperf.sh: needs $tool (Debian: nsd dnsdist dnsperf dnsutils iproute2)" >&2; exit 1; }
done

if [ -z "${FQDND_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release --quiet --bin fqdnd)
    FQDND_BIN=$ROOT/target/release/fqdnd
fi

WORK=$(mktemp -d /tmp/fqdnd-dnsperf.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# A port free for UDP and TCP on loopback.
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 30000))
        ss -Hlntu | awk '{print $5}' | grep -q ":$p\$" || { echo "$p"; return; }
    done
}

NSD_ADDR=127.0.0.2
NSD_PORT=$(free_port)
FQDND_PORT=$(free_port)
DNSDIST_PORT=$(free_port)

# --- NSD with a wildcard zone: every name under bench.test. answers A 10.1.1.1 ---------------
mkdir -p "$WORK/nsd"
cat >"$WORK/nsd/bench.test.zone" <<ZONE
\$ORIGIN bench.test.
\$TTL 300
@   IN SOA ns hostmaster 1 3600 600 86400 60
@   IN NS  ns
ns  IN A   10.1.0.1
*   IN A   10.1.1.1
ZONE
cat >"$WORK/nsd/nsd.conf" <<CONF
server:
  ip-address: $NSD_ADDR@$NSD_PORT
  port: $NSD_PORT
  do-ip6: no
  username: ""
  chroot: ""
  zonesdir: "$WORK/nsd"
  pidfile: "$WORK/nsd/nsd.pid"
  xfrdfile: "$WORK/nsd/xfrd.state"
  xfrdir: "$WORK/nsd"
  zonelistfile: "$WORK/nsd/zone.list"
  database: ""
  logfile: "$WORK/nsd/nsd.log"
  server-count: 1
  verbosity: 0
  rrl-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: "bench.test"
  zonefile: "$WORK/nsd/bench.test.zone"
CONF
nsd -d -c "$WORK/nsd/nsd.conf" &
PIDS+=($!)

# --- Policies (50 x 20 patterns), endpoints, queries -----------------------------------------
mkdir -p "$WORK/policies"
for i in $(seq 0 49); do
    {
        cat <<POL
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench-$i, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: bench}}
  egress:
  - toEndpoints:
    - matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}
    toPorts:
    - ports: [{port: "$NSD_PORT", protocol: ANY}]
      rules:
        dns:
POL
        for j in $(seq 0 9); do echo "        - matchName: \"h$((i * 10 + j)).bench.test\""; done
        for j in $(seq 0 9); do echo "        - matchPattern: \"*.s$((i * 10 + j)).bench.test\""; done
        # The same names as toFQDNs: answers are learned and their IPs allowed (the cache and
        # the in-memory datapath do their work on every allowed answer).
        echo "  - toFQDNs:"
        for j in $(seq 0 9); do echo "    - matchName: \"h$((i * 10 + j)).bench.test\""; done
        for j in $(seq 0 9); do echo "    - matchPattern: \"*.s$((i * 10 + j)).bench.test\""; done
        echo "    toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]"
    } >"$WORK/policies/bench-$i.yaml"
done
cat >"$WORK/endpoints.yaml" <<EPS
- {namespace: kube-system, name: kube-dns, labels: {k8s-app: kube-dns}, ips: [$NSD_ADDR]}
- {namespace: bench, name: dnsperf, labels: {app: bench}, ips: [127.0.0.1]}
EPS
awk 'BEGIN {
    for (n = 0; n < 20000; n++) {
        k = n % 500
        m = n % 4
        if (m == 0) printf "h%d.bench.test A\n", k
        else if (m == 1) printf "w%d.s%d.bench.test A\n", n, k
        else if (m == 2) printf "w%d.denied%d.bench.test A\n", n, k
        else printf "h%d.other.test AAAA\n", k
    }
}' >"$WORK/queries.txt"

# --- dnsdist with the same allow-list ----------------------------------------------------------
{
    echo "setSecurityPollSuffix('')"
    echo "setLocal('127.0.0.1:$DNSDIST_PORT')"
    echo "newServer({address='$NSD_ADDR:$NSD_PORT', checkName='bench.test.', name='nsd'})"
    echo "local exact = newDNSNameSet()"
    echo "local suffixes = newSuffixMatchNode()"
    for k in $(seq 0 499); do
        echo "exact:add(newDNSName('h$k.bench.test.'))"
        echo "suffixes:add(newDNSName('s$k.bench.test.'))"
    done
    echo "addAction(AndRule({NotRule(QNameSetRule(exact)), NotRule(SuffixMatchNodeRule(suffixes, true))}), RCodeAction(DNSRCode.NXDOMAIN))"
} >"$WORK/dnsdist.conf"

wait_answer() { # port
    for _ in $(seq 1 200); do
        if dig @127.0.0.1 -p "$1" +tries=1 +time=1 h0.bench.test A 2>/dev/null | grep -q "status: NOERROR"; then return 0; fi
        sleep 0.05
    done
    echo "dnsperf.sh: nothing answers on port $1" >&2
    exit 1
}

for _ in $(seq 1 100); do
    dig @$NSD_ADDR -p "$NSD_PORT" +tries=1 +time=1 h0.bench.test A 2>/dev/null | grep -q NOERROR && break
    sleep 0.05
done

start_fqdnd() { # name port flow-ring-size -> pid
    FQDND_LOG=warn "$FQDND_BIN" run --listen "127.0.0.1:$2" --upstream "$NSD_ADDR:$NSD_PORT" \
        --policies "$WORK/policies" --endpoints "$WORK/endpoints.yaml" --state-dir "$WORK/state-$1" \
        --metrics-addr none --flow-ring-size "$3" --max-inflight 65536 --max-qps-per-endpoint 0 \
        ${FQDND_CONFIG:+--config "$FQDND_CONFIG"} 2>"$WORK/$1.log" &
}
FLOWS_PORT=$(free_port)
start_fqdnd fqdnd "$FQDND_PORT" 0
FQDND_PID=$!
PIDS+=($FQDND_PID)
start_fqdnd fqdnd-flows "$FLOWS_PORT" 4096
FLOWS_PID=$!
PIDS+=($FLOWS_PID)
dnsdist --supervised --disable-syslog -C "$WORK/dnsdist.conf" >"$WORK/dnsdist.log" 2>&1 &
DNSDIST_PID=$!
PIDS+=($DNSDIST_PID)
wait_answer "$FQDND_PORT"
wait_answer "$FLOWS_PORT"
wait_answer "$DNSDIST_PORT"

# Sanity: each refuses a denied name and forwards an allowed one.
for port in "$FQDND_PORT" "$FLOWS_PORT" "$DNSDIST_PORT"; do
    dig @127.0.0.1 -p "$port" +tries=1 +time=2 w1.denied1.bench.test A | grep -q "status: NXDOMAIN" \
        || { echo "dnsperf.sh: port $port does not refuse denied names" >&2; exit 1; }
    dig @127.0.0.1 -p "$port" +tries=1 +time=2 w1.s1.bench.test A | grep -q "10.1.1.1" \
        || { echo "dnsperf.sh: port $port does not forward allowed names" >&2; exit 1; }
done

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# phase 1: fixed rate, latency percentiles (seconds -> microseconds)
latency() { # port -> "p50 p90"
    dnsperf -s 127.0.0.1 -p "$1" -d "$WORK/queries.txt" -l "$DURATION" -Q "$RATE" -c "$CLIENTS" -q "$OUTSTANDING" -v 2>/dev/null \
        | awk '/^> / && $2 != "T" {print $NF * 1000000}' | sort -n \
        | awk '{a[NR] = $1} END { if (NR == 0) { print "- -"; exit } printf "%.0f %.0f\n", a[int(NR * 0.5) + 1], a[int(NR * 0.9) + 1] }'
}

# phase 2: unthrottled, qps and CPU per 100k queries
throughput() { # port pid -> "qps cpu_per_100k completed lost"
    local before after out
    before=$(cpu_ticks "$2")
    out=$(dnsperf -s 127.0.0.1 -p "$1" -d "$WORK/queries.txt" -l "$DURATION" -c "$CLIENTS" -q "$OUTSTANDING" 2>/dev/null)
    after=$(cpu_ticks "$2")
    echo "$out" | awk -v b="$before" -v a="$after" -v hz="$CLK_TCK" '
        /Queries completed:/ { done = $3 }
        /Queries lost:/ { lost = $3 }
        /Queries per second:/ { qps = $4 }
        END { printf "%.0f %.3f %d %d\n", qps, (a - b) / hz / (done > 0 ? done : 1) * 100000, done, lost }'
}

if [ -n "${SYSCALLS:-}" ]; then
    # Diagnosis: system calls per query of each proxy at a fixed rate (strace -c).
    for who in "fqdnd $FQDND_PORT $FQDND_PID" "dnsdist $DNSDIST_PORT $DNSDIST_PID"; do
        set -- $who
        strace -c -f -p "$3" -o "$WORK/strace.$1" &
        SPID=$!
        sleep 0.5
        dnsperf -s 127.0.0.1 -p "$2" -d "$WORK/queries.txt" -n 1 -Q 5000 -c "$CLIENTS" -q "$OUTSTANDING" >/dev/null 2>&1
        kill -INT "$SPID"; wait "$SPID" 2>/dev/null || true
        echo "== $1: system calls for 20000 queries"; grep -E "^ *[0-9]|total" "$WORK/strace.$1" | sort -k4 -n -r | head -12
    done
    exit 0
fi
echo "dnsperf: ${DURATION}s per phase, $CLIENTS clients, $OUTSTANDING outstanding, latency at ${RATE} q/s; 50% allowed / 50% denied"
printf "\n%-14s %10s %9s %9s %14s %14s\n" proxy "max q/s" "p50 us" "p90 us" "CPU s/100k q" "lost/done"
declare -A QPS CPU P50
# The last row is the flows-on instance again, now with a live `fqdnd observe -f` client reading
# every flow (its own CPU is not in the proxy's column).
OBSERVER_PID=
for target in "fqdnd $FQDND_PORT $FQDND_PID" "dnsdist $DNSDIST_PORT $DNSDIST_PID" "fqdnd-flows $FLOWS_PORT $FLOWS_PID" \
    "fqdnd-observed $FLOWS_PORT $FLOWS_PID"; do
    set -- $target
    if [ "$1" = fqdnd-observed ]; then
        "$FQDND_BIN" observe -f -o json --state-dir "$WORK/state-fqdnd-flows" >"$WORK/observed.jsonl" 2>"$WORK/observe.log" &
        OBSERVER_PID=$!
        PIDS+=($OBSERVER_PID)
        sleep 0.5
    fi
    read -r L50 L90 < <(latency "$2")
    if [ -n "${PERF_DATA:-}" ] && [ "$1" = "${PERF_TARGET:-fqdnd}" ]; then
        perf record -q -g -o "$PERF_DATA" -p "$3" -- sleep "$DURATION" >/dev/null 2>&1 &
        PERF_PID=$!
    fi
    read -r TQPS TCPU TDONE TLOST < <(throughput "$2" "$3")
    if [ -n "${PERF_DATA:-}" ] && [ "$1" = "${PERF_TARGET:-fqdnd}" ]; then wait "$PERF_PID" || true; fi
    QPS[$1]=$TQPS; CPU[$1]=$TCPU; P50[$1]=$L50
    printf "%-14s %10s %9s %9s %14s %14s\n" "$1" "$TQPS" "$L50" "$L90" "$TCPU" "$TLOST/$TDONE"
done
if [ -n "$OBSERVER_PID" ]; then
    kill "$OBSERVER_PID" 2>/dev/null || true
    wait "$OBSERVER_PID" 2>/dev/null || true
    echo "observe -f client received $(grep -c '"flow"' "$WORK/observed.jsonl") flows (and was told of $(grep -o '"lost_events"' "$WORK/observed.jsonl" | wc -l) gaps)"
fi
awk -v fq="${QPS[fqdnd]}" -v dq="${QPS[dnsdist]}" -v fc="${CPU[fqdnd]}" -v dc="${CPU[dnsdist]}" \
    -v f50="${P50[fqdnd]}" -v d50="${P50[dnsdist]}" -v wq="${QPS[fqdnd-flows]}" -v wc="${CPU[fqdnd-flows]}" \
    -v oq="${QPS[fqdnd-observed]}" -v oc="${CPU[fqdnd-observed]}" 'BEGIN {
    printf "\nfqdnd/dnsdist: max q/s %.2f, CPU per query %.2f, p50 latency %.2f\n",
        (dq > 0 ? fq / dq : 0), (dc > 0 ? fc / dc : 0), (d50 > 0 ? f50 / d50 : 0)
    printf "fqdnd with flows on/dnsdist: max q/s %.2f, CPU per query %.2f\n", (dq > 0 ? wq / dq : 0), (dc > 0 ? wc / dc : 0)
    printf "fqdnd with flows on, observe -f attached/not attached: max q/s %.2f, CPU per query %.2f\n",
        (wq > 0 ? oq / wq : 0), (wc > 0 ? oc / wc : 0)
}'
