#!/usr/bin/env bash
# Where fqdnd's heap allocations per forwarded query come from: dhat over N allowed queries
# (the mix of benches/dnsperf.sh, flows on), the allocation sites with the most blocks, each
# with its first fqdnd frames. Start-up is in the totals; with N large it is a small share.
# Reports only. Usage: benches/alloc-sites.sh   (env: N=5000 TOP=25 FLOWS=4096 FQDND_BIN=path)
set -euo pipefail
command -v valgrind >/dev/null || { echo "alloc-sites.sh: needs valgrind" >&2; exit 1; }
# shellcheck source=benches/common.sh
. "$(dirname "$0")/common.sh"
N=${N:-5000}
TOP=${TOP:-25}
FLOWS=${FLOWS:-4096}

awk -v n="$N" '(NR % 4 == 1 || NR % 4 == 2) && c++ < n' "$WORK/queries.txt" >"$WORK/allowed.txt"
port=$(free_port)
FQDND_WRAP="env FQDND_MALLOC=system valgrind --tool=dhat --dhat-out-file=$WORK/dhat.json" \
    start_fqdnd dhat "$port" "$FLOWS"
pid=$!
PIDS+=("$pid")
for _ in $(seq 1 600); do
    dig @127.0.0.1 -p "$port" +tries=1 +time=1 h0.bench.test A 2>/dev/null | grep -q "status: NOERROR" && break
    sleep 0.1
done
done=$(dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/allowed.txt" -n 1 -Q 300 -c 1 -q 20 2>/dev/null |
    awk '/Queries completed:/ {print $3}')
kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
echo "$done queries answered"
python3 - "$WORK/dhat.json" "$TOP" "$done" <<'PY'
import json, re, sys
d = json.load(open(sys.argv[1]))
top, queries = int(sys.argv[2]), max(int(sys.argv[3] or 1), 1)
ftbl = d["ftbl"]
noise = re.compile(r"^(alloc::|core::|std::|hashbrown::|__rust|<alloc::|<core::|<std::|<hashbrown::|\[root\]|malloc|calloc|realloc)")
total = sum(p["tbk"] for p in d["pps"])
print(f"{total} blocks in all, {total / queries:.1f} per query")
print(f"{'blocks/query':>12} {'bytes/block':>11}  site")
for p in sorted(d["pps"], key=lambda p: -p["tbk"])[:top]:
    names = [re.sub(r"^0x[0-9A-Fa-f]+: ", "", ftbl[i]) for i in p["fs"]]
    ours = [n for n in names if not noise.match(n)][:3]
    print(f"{p['tbk'] / queries:>12.2f} {p['tb'] // max(p['tbk'], 1):>11}  " + "\n" + " " * 27 + "<- ".join(x[:100] + "\n" + " " * 27 for x in ours).rstrip())
PY
