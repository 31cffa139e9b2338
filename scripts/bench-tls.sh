#!/usr/bin/env bash
# The cost of TLS: each workload against a fresh local 3-node cluster twice, with the
# shipped mutual TLS and with TLS off (the same config without its [security]
# section; plaintext is allowed on loopback), alternating, and prints a markdown row
# per run (docs/PERFORMANCE.md, "The cost of TLS").
#
#   scripts/bench-tls.sh [SECONDS]      (default 15 s per run)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
cargo build --release --workspace --quiet
tls_config=cluster-config/local-3node.toml
plain_config=data/local-3node-plaintext.toml
mkdir -p data
awk '/^\[security\]/{skip=1; next} /^\[/{skip=0} !skip' "$tls_config" >"$plain_config"
rows=("--workload uniform --coalesce off" "--workload hot" "--workload read --coalesce off")
echo "| command (\`stockpile bench ... --clients 64 --duration $secs\`) | transport | successful ops/s | p50 ms | p99 ms | drain check |"
echo "| --- | --- | ---: | ---: | ---: | --- |"
for args in "${rows[@]}"; do
  for mode in tls plaintext; do
    config=$tls_config
    [ "$mode" = plaintext ] && config=$plain_config
    scripts/cluster.sh down "$config" >/dev/null 2>&1 || true
    rm -rf data/node-1 data/node-2 data/node-3
    scripts/cluster.sh up "$config" >/dev/null
    creds=()
    if [ "$mode" = tls ]; then
      d=data/certs/local-3node
      creds=(--ca "$d/ca.pem" --cert "$d/client-admin.pem" --key "$d/client-admin.key")
    fi
    # shellcheck disable=SC2086
    env -u STOCKPILE_CA -u STOCKPILE_CERT -u STOCKPILE_KEY target/release/stockpile "${creds[@]}" \
      bench $args --clients 64 --duration "$secs" --json | python3 -c "
import json, sys
d = json.load(sys.stdin); l = d['latency_us']; dc = d['drain_check']
print(f\"| \`$args\` | $mode | {d['succeeded_per_s']:,.0f} | {l['p50']/1000:.1f} | {l['p99']/1000:.1f} | {'ok' if dc is None or dc['ok'] else 'FAILED'}{'' if dc else ' (reads)'} |\")"
    scripts/cluster.sh down "$config" >/dev/null 2>&1 || true
  done
done
