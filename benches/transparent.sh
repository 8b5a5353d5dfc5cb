#!/usr/bin/env bash
# The DNS path in transparent mode with the kernel datapath: dnsperf from a pod's namespace to
# kube-dns's address (redirected by eBPF to the agent, which writes every learned IP to the maps
# before it releases the answer), beside the same queries from the node straight to the DNS
# server. Prints q/s, p50/p99 latency, the agent's CPU per 100k queries, and the answer-hold time
# (fqdnd_datapath_ack_latency_seconds) p50/p99. Reports only, asserts nothing. Root only.
#
# Usage: benches/transparent.sh   (env: DURATION=10 seconds per phase, RATE=5000 q/s)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "transparent.sh: needs root (network namespaces, eBPF)" >&2; exit 1; }
command -v dnsperf >/dev/null || { echo "transparent.sh: needs dnsperf" >&2; exit 1; }
export FQDND_REQUIRE_PRIVILEGED=1
exec cargo test --release -p fqdnd --test netns_perf -- --ignored --exact transparent_figures --nocapture --test-threads 1
