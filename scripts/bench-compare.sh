#!/usr/bin/env bash
# Stockpile against etcd and Redis on this machine, in one session, with the same
# workload semantics (docs/PERFORMANCE.md, "Against etcd and Redis"):
#   hot      one SKU with stock 10^12, a conditional decrement of 1 per op
#   uniform  10,000 SKUs with stock 10^12 each, a decrement of 1 of a random SKU per op
# 64 clients each. The systems run one after the other, never together:
#   - Stockpile: the local 3-node cluster (shipped config: durable log, mutual TLS),
#     `stockpile bench`, with and without client coalescing, and --batch 100;
#   - etcd 3.4: 3 members on loopback (fsync on), a read then a transaction guarded by
#     the key's mod_revision (retried on conflict), through its JSON gateway
#     (scripts/compare/etcd_load.py, asyncio, standard library only);
#   - Redis 7: one node, appendonly with appendfsync always (not replicated), a Lua
#     check-and-decrement, driven by redis-benchmark.
# Installs etcd-server, etcd-client and redis-server from Debian when missing; uses
# ports 23791-23803 and 6390 and data under data/compare/; stops everything it starts.
#
#   scripts/bench-compare.sh [SECONDS]    (default 10 s per run)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
clients=64

if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null || ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  echo "installing etcd and redis (apt)..." >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends etcd-server etcd-client redis-server redis-tools >/dev/null
fi
cargo build --release --workspace --quiet

work=data/compare
rm -rf "$work"
mkdir -p "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/cluster.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT

declare -A result
row() { result["$1"]=$2; printf '%-34s %s\n' "$1" "$2" >&2; }

# --- Stockpile ---------------------------------------------------------------
d=data/certs/local-3node
stockpile_run() {
  local name=$1; shift
  scripts/cluster.sh down >/dev/null 2>&1 || true
  rm -rf data/node-1 data/node-2 data/node-3
  scripts/cluster.sh up >/dev/null
  target/release/stockpile --ca "$d/ca.pem" --cert "$d/client-admin.pem" --key "$d/client-admin.key" \
    bench "$@" --clients "$clients" --duration "$secs" --json >"$work/$name.json"
  row "$name" "$(python3 -c "
import json; d = json.load(open('$work/$name.json')); l = d['latency_us']
print(f\"{d['succeeded_per_s']:.0f} {l['p50']/1000:.2f} {l['p99']/1000:.2f}\")")"
  scripts/cluster.sh down >/dev/null 2>&1 || true
}
stockpile_run stockpile-hot --workload hot
stockpile_run stockpile-uniform-nocoalesce --workload uniform --coalesce off
stockpile_run stockpile-uniform --workload uniform
stockpile_run stockpile-uniform-batch100 --workload uniform --batch 100

# --- etcd ----------------------------------------------------------------------
cluster="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
etcd_up() {
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$work/etcd-$i" \
      --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
      --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token stockpile-compare \
      --log-level error >"$work/etcd-$i.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793 endpoint health >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "etcd did not become healthy; see $work/etcd-*.log" >&2
  return 1
}
etcd_down() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
  rm -rf "$work"/etcd-?
}
etcd_run() {
  local workload=$1
  etcd_up
  python3 scripts/compare/etcd_load.py 127.0.0.1:23791 "$workload" 1 0 --setup
  python3 scripts/compare/etcd_load.py 127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793 \
    "$workload" "$clients" "$secs" >"$work/etcd-$workload.json"
  row "etcd-$workload" "$(python3 -c "
import json; d = json.load(open('$work/etcd-$workload.json')); l = d['latency_ms']
print(f\"{d['per_s']:.0f} {l['p50']} {l['p99']}\")")"
  etcd_down
}
etcd_run hot
etcd_run uniform

# --- Redis ---------------------------------------------------------------------
redis_run() {
  local workload=$1 key requests
  redis-server --port 6390 --bind 127.0.0.1 --dir "$work" --appendonly yes --appendfsync always \
    --save "" --daemonize no >"$work/redis.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 50); do redis-cli -p 6390 ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -p 6390 eval "for i = 0, 9999 do redis.call('SET', string.format('sku:%012d', i), ARGV[1]) end redis.call('SET', 'sku:hot', ARGV[1])" 0 1000000000000 >/dev/null
  local sha
  sha=$(redis-cli -p 6390 script load "local v = tonumber(redis.call('GET', KEYS[1])) if v and v >= 1 then return redis.call('DECRBY', KEYS[1], 1) end return -1")
  key=sku:hot
  [ "$workload" = uniform ] && key=sku:__rand_int__
  # About SECONDS of load at the rate measured in a short probe.
  requests=$(redis-benchmark -p 6390 -c "$clients" -n 20000 -r 10000 --csv evalsha "$sha" 1 "$key" \
    | python3 -c "import csv, sys; r = list(csv.reader(sys.stdin))[1]; print(int(float(r[1]) * $secs))")
  redis-benchmark -p 6390 -c "$clients" -n "$requests" -r 10000 --csv evalsha "$sha" 1 "$key" >"$work/redis-$workload.csv"
  row "redis-$workload" "$(python3 -c "
import csv; r = list(csv.reader(open('$work/redis-$workload.csv')))[1]
print(f'{float(r[1]):.0f} {r[4]} {r[6]}')")"
  redis-cli -p 6390 shutdown nosave >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  pids=()
  rm -rf "$work"/appendonly*
}
redis_run hot
redis_run uniform

# --- the table -----------------------------------------------------------------
ops() { echo "${result[$1]}" | cut -d' ' -f1; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
echo
echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores, $clients clients, ${secs} s per run: scripts/bench-compare.sh $secs"
echo
echo "| system and workload | successful ops/s | p50 ms | p99 ms | × etcd (same workload) | × Redis (same workload) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for name in stockpile-hot stockpile-uniform-nocoalesce stockpile-uniform stockpile-uniform-batch100 etcd-hot etcd-uniform redis-hot redis-uniform; do
  read -r n p50 p99 <<<"${result[$name]}"
  w=uniform
  case "$name" in *hot) w=hot ;; esac
  echo "| $name | $n | $p50 | $p99 | $(ratio "$n" "$(ops "etcd-$w")") | $(ratio "$n" "$(ops "redis-$w")") |"
done
