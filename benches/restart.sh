#!/usr/bin/env bash
# Restarting the agent under a steady load of real queries from a pod through the datapath
# (transparent mode, eBPF redirect, NSD as kube-dns, network namespaces): queries sent, answered,
# lost, and the longest stretch without an answer, for the handover (--takeover), SIGTERM then
# start, and SIGKILL then start. Reports only, asserts nothing (the asserting test is
# tests/netns_restart.rs takeover_through_the_datapath_loses_no_query). Root only.
#
# Usage: benches/restart.sh
#   env: RUNS=3 restarts of each kind, SETTLE=3 seconds of load before and after each,
#        FQDND_BIN=another fqdnd binary to measure (e.g. a build of main; its agent then lacks
#        --takeover: RESTARTS=sigterm,sigkill), RESTARTS=takeover,sigterm,sigkill
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "restart.sh: needs root (network namespaces, eBPF)" >&2; exit 1; }
export FQDND_REQUIRE_PRIVILEGED=1
exec cargo test --release -p fqdnd --test netns_restart -- --ignored --exact restart_figures --nocapture --test-threads 1
