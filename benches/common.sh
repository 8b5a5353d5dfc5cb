# Shared by the benches in this directory (sourced, not run): parameters, NSD with a wildcard
# zone, 50 policies x 20 patterns for the querying endpoint (rules.dns and the same names as
# toFQDNs), the endpoints file, a 20,000-query mix (half allowed, half denied), dnsdist's
# equivalent configuration, and start_fqdnd. Everything lives in $WORK, removed on exit.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-10}
RATE=${RATE:-10000}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-200}

for tool in nsd dnsdist dnsperf dig ss awk; do
    command -v "$tool" >/dev/null || { echo "benches: needs $tool (Debian: nsd dnsdist dnsperf dnsutils iproute2)" >&2; exit 1; }
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
    echo "benches: nothing answers on port $1" >&2
    exit 1
}

for _ in $(seq 1 100); do
    dig @$NSD_ADDR -p "$NSD_PORT" +tries=1 +time=1 h0.bench.test A 2>/dev/null | grep -q NOERROR && break
    sleep 0.05
done

start_fqdnd() { # name port flow-ring-size -> pid
    FQDND_LOG=warn ${FQDND_WRAP:-} "$FQDND_BIN" run --listen "127.0.0.1:$2" --upstream "$NSD_ADDR:$NSD_PORT" \
        --policies "$WORK/policies" --endpoints "$WORK/endpoints.yaml" --state-dir "$WORK/state-$1" \
        --metrics-addr none --flow-ring-size "$3" --max-inflight 65536 \
        ${FQDND_CONFIG:+--config "$FQDND_CONFIG"} 2>"$WORK/$1.log" &
}
