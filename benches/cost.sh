#!/usr/bin/env bash
# What one query costs fqdnd (flows off and on) and dnsdist, in figures that survive a noisy
# machine, with the same policies, upstream (NSD) and query mix as benches/dnsperf.sh:
#
#   instructions/query  valgrind callgrind, counters zeroed after a warm-up, so start-up and
#                       policy loading are not in it;
#   syscalls/query      perf's raw_syscalls:sys_enter on the proxy's process during RATE q/s;
#   allocations/query   valgrind dhat over two runs of N1 and N2 allowed (forwarded) queries:
#                       (blocks(N2) - blocks(N1)) / (N2 - N1), so start-up cancels out.
#
# Reports only, asserts nothing. Usage: benches/cost.sh   (env: RATE=5000 DURATION=10
# CG_QUERIES=4000 N1=1000 N2=5000 FQDND_BIN=path CG_KEEP=dir: keep the callgrind dumps)
set -euo pipefail

for tool in valgrind callgrind_control perf; do
    command -v "$tool" >/dev/null || { echo "cost.sh: needs $tool (Debian: valgrind linux-perf)" >&2; exit 1; }
done
RATE=${RATE:-5000}
# shellcheck source=benches/common.sh
. "$(dirname "$0")/common.sh"
CG_QUERIES=${CG_QUERIES:-4000}
N1=${N1:-1000}
N2=${N2:-5000}

head -n "$CG_QUERIES" "$WORK/queries.txt" >"$WORK/cg-queries.txt"
# Allowed names only: every one is forwarded, learned and released.
awk 'NR % 4 == 1 || NR % 4 == 2' "$WORK/queries.txt" >"$WORK/allowed.txt"

completed() { awk '/Queries completed:/ {print $3}'; }

# Instructions per query of the process `pid` answering on `port` (already running under
# callgrind with --instr-atstart=yes).
instructions() { # port pid out-prefix
    dnsperf -s 127.0.0.1 -p "$1" -d "$WORK/cg-queries.txt" -n 1 -Q 300 -c 1 -q 20 >/dev/null 2>&1 # warm-up
    callgrind_control -z "$2" >/dev/null 2>&1
    local done
    done=$(dnsperf -s 127.0.0.1 -p "$1" -d "$WORK/cg-queries.txt" -n 1 -Q 300 -c 1 -q 20 2>/dev/null | completed)
    callgrind_control -d "$2" >/dev/null 2>&1
    # The first dump (<out-file>.1) holds what ran between the zeroing and the dump.
    local ir
    ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$3.$2.1")
    echo "$ir $done" | awk '{ printf "%.0f\n", ($2 > 0 ? $1 / $2 : 0) }'
}

wait_slow() { # port: under valgrind the first answer takes a while
    for _ in $(seq 1 600); do
        if dig @127.0.0.1 -p "$1" +tries=1 +time=1 h0.bench.test A 2>/dev/null | grep -q "status: NOERROR"; then return 0; fi
        sleep 0.1
    done
    echo "cost.sh: nothing answers on port $1" >&2
    exit 1
}

declare -A IPQ SPQ APQ

# --- instructions/query ----------------------------------------------------------------------
for flows in 0 4096; do
    name=$([ "$flows" = 0 ] && echo fqdnd || echo fqdnd-flows)
    port=$(free_port)
    FQDND_WRAP="valgrind --tool=callgrind --callgrind-out-file=$WORK/cg.$name.%p" start_fqdnd "cg-$name" "$port" "$flows"
    pid=$!
    PIDS+=("$pid")
    wait_slow "$port"
    IPQ[$name]=$(instructions "$port" "$pid" "$WORK/cg.$name")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    # CG_KEEP=dir: keep the measured dump for callgrind_annotate.
    if [ -n "${CG_KEEP:-}" ]; then mkdir -p "$CG_KEEP" && cp "$WORK/cg.$name.$pid.1" "$CG_KEEP/$name.callgrind"; fi
done
port=$(free_port)
sed "s/setLocal('127.0.0.1:$DNSDIST_PORT')/setLocal('127.0.0.1:$port')/" "$WORK/dnsdist.conf" >"$WORK/dnsdist-cg.conf"
valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.dnsdist.%p" \
    dnsdist --supervised --disable-syslog -C "$WORK/dnsdist-cg.conf" >"$WORK/dnsdist-cg.log" 2>&1 &
pid=$!
PIDS+=("$pid")
wait_slow "$port"
IPQ[dnsdist]=$(instructions "$port" "$pid" "$WORK/cg.dnsdist")
kill "$pid"; wait "$pid" 2>/dev/null || true

# --- syscalls/query at RATE ---------------------------------------------------------------------
syscalls() { # port pid
    local out done calls
    perf stat -e raw_syscalls:sys_enter -p "$2" -x, -o "$WORK/perf.$2" -- sleep "$DURATION" &
    local perf_pid=$!
    sleep 0.2
    done=$(dnsperf -s 127.0.0.1 -p "$1" -d "$WORK/queries.txt" -l "$((DURATION - 1))" -Q "$RATE" -c "$CLIENTS" -q "$OUTSTANDING" 2>/dev/null | completed)
    wait "$perf_pid" || true
    calls=$(awk -F, '/raw_syscalls/ {print $1}' "$WORK/perf.$2")
    echo "$calls $done" | awk '{ printf "%.2f\n", ($2 > 0 ? $1 / $2 : 0) }'
}
for flows in 0 4096; do
    name=$([ "$flows" = 0 ] && echo fqdnd || echo fqdnd-flows)
    port=$(free_port)
    start_fqdnd "sc-$name" "$port" "$flows"
    pid=$!
    PIDS+=("$pid")
    wait_answer "$port"
    SPQ[$name]=$(syscalls "$port" "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
done
port=$(free_port)
sed "s/setLocal('127.0.0.1:$DNSDIST_PORT')/setLocal('127.0.0.1:$port')/" "$WORK/dnsdist.conf" >"$WORK/dnsdist-sc.conf"
dnsdist --supervised --disable-syslog -C "$WORK/dnsdist-sc.conf" >"$WORK/dnsdist-sc.log" 2>&1 &
pid=$!
PIDS+=("$pid")
wait_answer "$port"
SPQ[dnsdist]=$(syscalls "$port" "$pid")
kill "$pid"; wait "$pid" 2>/dev/null || true

# --- allocations/forwarded query (fqdnd only) ---------------------------------------------------
blocks() { # flows queries -> heap blocks allocated over the whole run
    local port pid
    port=$(free_port)
    head -n "$2" "$WORK/allowed.txt" >"$WORK/allowed-$2.txt"
    # The C library's malloc, where dhat counts (fqdnd's own allocator is mimalloc).
    FQDND_WRAP="env FQDND_MALLOC=system valgrind --tool=dhat --dhat-out-file=/dev/null" start_fqdnd "dhat-$1-$2" "$port" "$1"
    pid=$!
    PIDS+=("$pid")
    wait_slow "$port"
    dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/allowed-$2.txt" -n 1 -Q 300 -c 1 -q 20 >/dev/null 2>&1
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    awk '/Total:/ {gsub(",", "", $0); for (i = 1; i <= NF; i++) if ($i == "blocks") print $(i - 1)}' "$WORK/dhat-$1-$2.log" | head -1
}
for flows in 0 4096; do
    name=$([ "$flows" = 0 ] && echo fqdnd || echo fqdnd-flows)
    b1=$(blocks "$flows" "$N1")
    b2=$(blocks "$flows" "$N2")
    APQ[$name]=$(echo "$b1 $b2" | awk -v n1="$N1" -v n2="$N2" '{ printf "%.1f\n", ($2 - $1) / (n2 - n1) }')
done

printf "\n%-14s %18s %18s %24s\n" proxy "instructions/query" "syscalls/query" "allocations/fwd query"
for p in fqdnd fqdnd-flows dnsdist; do
    printf "%-14s %18s %18s %24s\n" "$p" "${IPQ[$p]:--}" "${SPQ[$p]:--}" "${APQ[$p]:--}"
done
echo "(instructions: callgrind, $CG_QUERIES-query mix after a warm-up; syscalls: perf at $RATE q/s for ${DURATION}s; allocations: dhat, $N1 vs $N2 forwarded queries)"
