#!/usr/bin/env bash
# Runs each `stockpile bench` workload of docs/PERFORMANCE.md against a fresh local
# 3-node cluster (data wiped between rows) and prints a markdown table row per run.
#
#   scripts/bench-table.sh [SECONDS]      (default 15 s per workload)
#   STOCKPILE_PROFILE=perf scripts/bench-table.sh   (binaries built with fat LTO)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
profile=${STOCKPILE_PROFILE:-release}
export STOCKPILE_PROFILE=$profile
cargo build --profile "$profile" --workspace --quiet
# The shipped config has mutual TLS on; `cluster.sh up` makes these certificates.
certs=data/certs/local-3node
rows=(
  "--workload uniform --coalesce off"
  "--workload uniform"
  "--workload hot --coalesce off"
  "--workload hot"
  "--workload uniform --batch 100"
  "--workload read"
  "--workload read --coalesce off"
  "--workload read --consistency stale"
  "--workload reserve-confirm"
  "--workload mixed"
)
echo "| command (\`stockpile bench ... --clients 64 --duration $secs\`) | successful ops/s | p50 ms | p99 ms | p99.9 ms | drain check | errors |"
echo "| --- | ---: | ---: | ---: | ---: | --- | --- |"
for args in "${rows[@]}"; do
  scripts/cluster.sh down >/dev/null 2>&1 || true
  rm -rf data/node-1 data/node-2 data/node-3
  scripts/cluster.sh up >/dev/null
  # shellcheck disable=SC2086
  "target/$profile/stockpile" --ca "$certs/ca.pem" --cert "$certs/client-admin.pem" --key "$certs/client-admin.key" \
    bench $args --clients 64 --duration "$secs" --json | python3 -c "
import json, sys
d = json.load(sys.stdin); l = d['latency_us']; dc = d['drain_check']
errors = ', '.join(f'{k} {v}' for k, v in d['errors'].items()) or 'none'
print(f\"| \`$args\` | {d['succeeded_per_s']:,.0f} | {l['p50']/1000:.1f} | {l['p99']/1000:.1f} | {l['p999']/1000:.1f} | {'ok' if dc is None or dc['ok'] else 'FAILED'}{'' if dc else ' (reads)'} | {errors} |\")"
done
scripts/cluster.sh down >/dev/null 2>&1 || true
