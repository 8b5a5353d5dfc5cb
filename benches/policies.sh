#!/usr/bin/env bash
# Policy resolution at scale: N_POLICIES CiliumNetworkPolicies (default 10,000) in a directory,
# N_ENDPOINTS endpoints (default 1,000: 100 apps in 10 namespaces, 10 pods each; every pod is
# selected by 100 policies with rules.dns, toFQDNs, toEndpoints and ingress rules). Reports:
#   start      process start to "fqdnd running" (every policy parsed, resolved and enforced);
#   memory     VmRSS after start, after one changed file, after every file was rewritten; VmHWM;
#   one change a file rewritten to the agent logging the new generation (median of CHANGES);
#   idle CPU   utime+stime over IDLE seconds with nothing changing, as % of one core.
# Plain mode, no DNS traffic. Reports only, asserts nothing.
# Usage: benches/policies.sh   (env: N_POLICIES N_ENDPOINTS CHANGES=5 IDLE=20 FQDND_BIN=path)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
N_POLICIES=${N_POLICIES:-10000}
N_ENDPOINTS=${N_ENDPOINTS:-1000}
CHANGES=${CHANGES:-5}
IDLE=${IDLE:-20}
if [ -z "${FQDND_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release --quiet --bin fqdnd)
    FQDND_BIN=$ROOT/target/release/fqdnd
fi
WORK=$(mktemp -d /tmp/fqdnd-policies.XXXXXX)
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

policy() { # index generation -> YAML
    local i=$1 g=$2
    cat <<POL
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p-$i, namespace: ns-$((i % 10))}
spec:
  endpointSelector: {matchLabels: {app: app-$((i % 100))}}
  egress:
  - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules: {dns: [{matchPattern: "*.svc-$i.example"}, {matchName: "api-$i-g$g.example"}]}
  - toFQDNs: [{matchPattern: "*.svc-$i.example"}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  - toEndpoints: [{matchLabels: {app: app-$(((i + 10) % 100))}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  ingress:
  - fromEndpoints: [{matchLabels: {app: app-$(((i + 20) % 100))}}]
POL
}
mkdir -p "$WORK/policies"
for i in $(seq 0 $((N_POLICIES - 1))); do policy "$i" 0 >"$WORK/policies/p-$(printf %05d "$i").yaml"; done
{
    echo "- {namespace: kube-system, name: kube-dns, labels: {k8s-app: kube-dns}, ips: [10.96.0.10]}"
    for j in $(seq 0 $((N_ENDPOINTS - 1))); do
        echo "- {namespace: ns-$((j % 10)), name: pod-$j, labels: {app: app-$((j % 100))}, ips: [10.$((j / 250)).$((j % 250)).1]}"
    done
} >"$WORK/endpoints.yaml"

ms() { date +%s%3N; }
rss() { awk -v k="$2:" '$1 == k {print $2 / 1024}' "/proc/$1/status"; }
wait_log() { # needle count -> waits until the log has `count` lines containing needle
    while [ "$(grep -c -- "$1" "$WORK/fqdnd.log" 2>/dev/null || true)" -lt "$2" ]; do
        kill -0 "$PID" 2>/dev/null || { echo "policies.sh: fqdnd exited:"; tail -20 "$WORK/fqdnd.log"; exit 1; }
        sleep 0.01
    done
}

t0=$(ms)
FQDND_LOG=info "$FQDND_BIN" run --listen 127.0.0.1:0 --upstream 127.0.0.1:9 --metrics-addr none \
    --policies "$WORK/policies" --endpoints "$WORK/endpoints.yaml" --state-dir "$WORK/state" \
    2>"$WORK/fqdnd.log" &
PID=$!
wait_log "fqdnd running" 1
start_ms=$(( $(ms) - t0 ))
rss_start=$(rss "$PID" VmRSS)

loads=$(grep -c "policies loaded" "$WORK/fqdnd.log")
changes=()
for c in $(seq 1 "$CHANGES"); do
    sleep 0.5
    t=$(ms)
    policy 1 "$c" >"$WORK/policies/.p-00001.yaml.tmp" && mv "$WORK/policies/.p-00001.yaml.tmp" "$WORK/policies/p-00001.yaml"
    loads=$((loads + 1))
    wait_log "policies loaded" "$loads"
    changes+=($(( $(ms) - t )))
done
rss_change=$(rss "$PID" VmRSS)
change_p50=$(printf "%s\n" "${changes[@]}" | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')

ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
sleep 2
before=$(ticks)
sleep "$IDLE"
after=$(ticks)
idle_pct=$(awk -v a="$after" -v b="$before" -v hz="$(getconf CLK_TCK)" -v s="$IDLE" 'BEGIN {printf "%.2f", (a - b) / hz / s * 100}')

t=$(ms)
for i in $(seq 0 $((N_POLICIES - 1))); do policy "$i" 100 >"$WORK/policies/p-$(printf %05d "$i").yaml"; done
loads=$((loads + 1))
wait_log "policies loaded" "$loads"
# Writing 10,000 files takes a while: more than one reload may have run; wait for quiet.
sleep 3
rewrite_ms=$(( $(ms) - t ))
rss_rewrite=$(rss "$PID" VmRSS)
hwm=$(rss "$PID" VmHWM)

echo "policies: $N_POLICIES, endpoints: $N_ENDPOINTS (each selected by $((N_POLICIES / 100)) policies)"
printf "start (process start to enforcing):   %6d ms\n" "$start_ms"
printf "one changed file applied, median:     %6d ms   (all: %s)\n" "$change_p50" "${changes[*]}"
printf "memory after start / change / rewrite: %.0f / %.0f / %.0f MB   (peak %.0f MB)\n" "$rss_start" "$rss_change" "$rss_rewrite" "$hwm"
printf "idle CPU over %ss:                     %6s %% of a core\n" "$IDLE" "$idle_pct"
printf "every file rewritten, until applied:  %6d ms (incl. 3 s of quiet)\n" "$rewrite_ms"
