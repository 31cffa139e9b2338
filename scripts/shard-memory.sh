#!/usr/bin/env bash
# Measures how a node's memory follows the traffic its shards have served: a local
# 3-node cluster of SHARDS shards whose ranges cut the bench's 10,000 SKUs evenly (so
# `uniform` traffic reaches every shard, unlike scripts/idle-cpu.sh's hex ranges, where
# it reaches a few), then ROUNDS runs of `stockpile bench --workload uniform
# --coalesce off` of SECONDS each. Prints each node's RSS after the start and after
# every round, and, where gdb is installed, the bytes RocksDB's allocator (glibc
# malloc; the node's own heap is jemalloc's) holds in use, to tell the two apart
# (docs/PERFORMANCE.md, "Idle shards").
#
#   scripts/shard-memory.sh [SHARDS] [ROUNDS] [SECONDS]
#
# Defaults: 1,000 shards, 5 rounds of 40 s. HEARTBEAT_MS=N in the environment sets
# raft.heartbeat_interval_ms (default 100; election timeouts 10-20x it), QUIET_AFTER_MS=N
# raft.quiet_after_ms (default 500; 0 turns quiet shards off). Uses ports 7401-7403 and data under
# ./data/shard-memory-*; stops the nodes at the end. STOCKPILE_PROFILE=NAME runs
# target/NAME's binaries, as scripts/cluster.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/local-nodes.sh
source scripts/local-nodes.sh
shards=${1:-1000}
rounds=${2:-5}
secs=${3:-40}
cfg=data/shard-memory-$shards.toml
mkdir -p data
rm -rf data/shard-memory-node-*
# The bench's SKU names (`stockpile bench`'s `sku()`: a letter, the prefix, a number),
# sorted and cut into SHARDS equal runs.
python3 - "$shards" "${HEARTBEAT_MS:-100}" "${QUIET_AFTER_MS:-500}" >"$cfg" <<'EOF'
import sys
n, hb, quiet = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
skus = sorted(f"{chr(97 + i % 26)}bench-{i:06}" for i in range(10_000))
print('cluster_name = "shard-memory"')
for k in (1, 2, 3):
    print(f'[[nodes]]\nid = {k}\naddr = "127.0.0.1:740{k}"\ndata_dir = "data/shard-memory-node-{k}"')
bounds = [""] + [skus[j * len(skus) // n] for j in range(1, n)] + [""]
for j in range(n):
    print(f'[[shards]]\nid = {j + 1}\nstart = "{bounds[j]}"\nend = "{bounds[j + 1]}"\nreplicas = [1, 2, 3]')
print(f'[raft]\nheartbeat_interval_ms = {hb}\nelection_timeout_min_ms = {hb * 10}\nelection_timeout_max_ms = {hb * 20}\nquiet_after_ms = {quiet}')
EOF
start_nodes "$cfg" data/shard-memory-node
eps=127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403
wait_leaders "$eps"

# One line: each node's RSS, and glibc's bytes in use (malloc_stats() through gdb
# prints them to the node's stderr, its log) when gdb is here.
memory() {
  local line="RSS" n
  for n in 1 2 3; do
    line+=" node $n $(( $(awk '/VmRSS/ {print $2}' "/proc/${pids[n-1]}/status") / 1024 )) MiB"
  done
  if command -v gdb >/dev/null; then
    line+="; RocksDB (glibc) in use"
    for n in 1 2 3; do
      gdb -p "${pids[n-1]}" -batch -ex 'call (void)malloc_stats()' >/dev/null 2>&1 || true
      local used
      used=$(grep -a 'in use bytes' "data/shard-memory-node-$n.log" | tail -1 | awk '{print $NF}')
      line+=" $(( ${used:-0} / 1048576 ))"
    done
    line+=" MiB"
  fi
  echo "$line"
}

echo "shards=$shards: all leaders elected after $((SECONDS - started)) s"
sleep 5
echo "after the start: $(memory)"
for r in $(seq 1 "$rounds"); do
  "$bin/stockpile" --endpoints "$eps" bench --workload uniform --clients 64 \
    --duration "$secs" --coalesce off | grep -E '^ops/s|^errors' || true
  sleep 3
  echo "after round $r: $(memory)"
done
