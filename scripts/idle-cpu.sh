#!/usr/bin/env bash
# Measures the idle CPU of a local 3-node cluster holding N shards (every shard on
# every node), after every shard has a leader: the cost of many idle Raft groups.
#
#   scripts/idle-cpu.sh SHARDS [HEARTBEAT_MS] [SECONDS]
#
# HEARTBEAT_MS (default 100) sets raft.heartbeat_interval_ms; election timeouts are
# 10-20x it. Quiet shards are on (raft.quiet_after_ms = 500, the default; QUIET_AFTER_MS=0 in the
# environment turns them off). Prints each node's CPU use as a percentage of one core. Uses ports
# 7201-7203 and data under ./data/idle-*; stops the nodes at the end.
#
# SERVE_S=N in the environment then serves `stockpile bench --workload uniform` for N
# seconds, waits SETTLE_S (default 20) for the shards to fall quiet again, and measures
# the idle CPU once more: idling after traffic, which issue 14 also bounds.
#
# STOCKPILE_PROFILE=NAME runs target/NAME's binaries (as scripts/cluster.sh does; default
# release): to compare two builds, copy one's binaries to target/NAME.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/cpu-use.sh
source scripts/cpu-use.sh
# shellcheck source=scripts/local-nodes.sh
source scripts/local-nodes.sh
shards=${1:?usage: $0 SHARDS [HEARTBEAT_MS] [SECONDS]}
hb=${2:-100}
secs=${3:-30}
cfg=data/idle-$shards.toml
mkdir -p data
rm -rf data/idle-node-*
{
  echo "cluster_name = \"idle-$shards\""
  for n in 1 2 3; do
    printf '[[nodes]]\nid = %d\naddr = "127.0.0.1:720%d"\ndata_dir = "data/idle-node-%d"\n' "$n" "$n" "$n"
  done
  prev=""
  for i in $(seq 1 "$shards"); do
    if [ "$i" -eq "$shards" ]; then end=""; else end=$(printf '%04x' $(( i * 65536 / shards ))); fi
    printf '[[shards]]\nid = %d\nstart = "%s"\nend = "%s"\nreplicas = [1, 2, 3]\n' "$i" "$prev" "$end"
    prev=$end
  done
  printf '[raft]\nheartbeat_interval_ms = %d\nelection_timeout_min_ms = %d\nelection_timeout_max_ms = %d\nquiet_after_ms = %d\n' "$hb" $((hb * 10)) $((hb * 20)) "${QUIET_AFTER_MS:-500}"

} > "$cfg"
start_nodes "$cfg" data/idle-node
wait_leaders 127.0.0.1:7201,127.0.0.1:7202,127.0.0.1:7203
echo "shards=$shards heartbeat=${hb}ms: all leaders elected after $((SECONDS - started)) s; settling 5 s, measuring ${secs} s"
sleep 5
cpu_use "$secs" "${pids[@]}"
if [ -n "${SERVE_S:-}" ]; then
  echo "serving: stockpile bench --workload uniform --clients 64 --duration $SERVE_S"
  "$bin/stockpile" --endpoints 127.0.0.1:7201,127.0.0.1:7202,127.0.0.1:7203 \
    bench --workload uniform --clients 64 --duration "$SERVE_S" | grep -E 'ops/s|p99|error' || true
  echo "settling ${SETTLE_S:-20} s, measuring ${secs} s after serving"
  sleep "${SETTLE_S:-20}"
  cpu_use "$secs" "${pids[@]}"
fi
