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
# (the default: every query and answer becomes a Hubble-shaped flow in a 4096-entry ring), then
# the same instance with a live `fqdnd observe -f` on the admin socket, then with a live
# `fqdnd observe --server -f` on Hubble's Observer API (a gRPC GetFlows follower).
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

# shellcheck source=benches/common.sh
. "$(dirname "$0")/common.sh"

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
# The last rows are the flows-on instance again, now with a live client reading every flow: `fqdnd
# observe -f` on the admin socket, then `fqdnd observe --server -f` over gRPC (the client's own CPU
# is not in the proxy's column; on a small machine it competes for cores).
OBSERVER_PID=
GRPC_PID=
for target in "fqdnd $FQDND_PORT $FQDND_PID" "dnsdist $DNSDIST_PORT $DNSDIST_PID" "fqdnd-flows $FLOWS_PORT $FLOWS_PID" \
    "fqdnd-observed $FLOWS_PORT $FLOWS_PID" "fqdnd-grpc $FLOWS_PORT $FLOWS_PID"; do
    set -- $target
    if [ "$1" = fqdnd-observed ]; then
        "$FQDND_BIN" observe -f -o json --state-dir "$WORK/state-fqdnd-flows" >"$WORK/observed.jsonl" 2>"$WORK/observe.log" &
        OBSERVER_PID=$!
        PIDS+=($OBSERVER_PID)
        sleep 0.5
    fi
    if [ "$1" = fqdnd-grpc ]; then
        kill "$OBSERVER_PID" 2>/dev/null || true
        wait "$OBSERVER_PID" 2>/dev/null || true
        "$FQDND_BIN" observe -f -o json --server "unix:$WORK/state-fqdnd-flows/hubble.sock" \
            >"$WORK/grpc.jsonl" 2>"$WORK/grpc.log" &
        GRPC_PID=$!
        PIDS+=($GRPC_PID)
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
    echo "observe -f client received $(grep -c '"flow"' "$WORK/observed.jsonl") flows (and was told of $(grep -o '"lost_events"' "$WORK/observed.jsonl" | wc -l) gaps)"
fi
if [ -n "$GRPC_PID" ]; then
    kill "$GRPC_PID" 2>/dev/null || true
    wait "$GRPC_PID" 2>/dev/null || true
    # observe prints lost_events notices on stderr, one line each.
    echo "observe --server -f (gRPC) client received $(grep -c '"flow"' "$WORK/grpc.jsonl") flows (and was told of $(grep -c 'flows lost' "$WORK/grpc.log") gaps)"
fi
awk -v fq="${QPS[fqdnd]}" -v dq="${QPS[dnsdist]}" -v fc="${CPU[fqdnd]}" -v dc="${CPU[dnsdist]}" \
    -v f50="${P50[fqdnd]}" -v d50="${P50[dnsdist]}" -v wq="${QPS[fqdnd-flows]}" -v wc="${CPU[fqdnd-flows]}" \
    -v oq="${QPS[fqdnd-observed]}" -v oc="${CPU[fqdnd-observed]}" \
    -v gq="${QPS[fqdnd-grpc]}" -v gc="${CPU[fqdnd-grpc]}" 'BEGIN {
    printf "\nfqdnd/dnsdist: max q/s %.2f, CPU per query %.2f, p50 latency %.2f\n",
        (dq > 0 ? fq / dq : 0), (dc > 0 ? fc / dc : 0), (d50 > 0 ? f50 / d50 : 0)
    printf "fqdnd with flows on/dnsdist: max q/s %.2f, CPU per query %.2f\n", (dq > 0 ? wq / dq : 0), (dc > 0 ? wc / dc : 0)
    printf "fqdnd with flows on, observe -f attached/not attached: max q/s %.2f, CPU per query %.2f\n",
        (wq > 0 ? oq / wq : 0), (wc > 0 ? oc / wc : 0)
    printf "fqdnd with flows on, gRPC GetFlows follower attached/not attached: max q/s %.2f, CPU per query %.2f\n",
        (wq > 0 ? gq / wq : 0), (wc > 0 ? gc / wc : 0)
}'
