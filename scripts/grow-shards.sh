#!/usr/bin/env bash
# Grows a local 4-node cluster from 4 shards to at least TARGET shards by splits while
# it serves, then checks it still serves, drains node 4 (every replica moved off it,
# the drain's own check that it runs nothing), and measures the idle CPU of the three
# remaining nodes at that size (docs/PERFORMANCE.md, "A cluster grown by splits").
#
#   scripts/grow-shards.sh [TARGET] [SECONDS]
#
# TARGET defaults to 256, SECONDS (the idle measurement) to 30. Each shard starts with
# three replicas on the four nodes; 10,000 SKUs are spread over the four shards first
# (four `stockpile bench` runs), then every shard is split at its middle SKU, round by
# round, until the map holds TARGET shards. Uses ports 7301-7304 and data under
# ./data/grow-*; stops the nodes at the end. Exit status 0 when every step passed.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/cpu-use.sh
source scripts/cpu-use.sh
target=${1:-256}
secs=${2:-30}
cfg=data/grow.toml
mkdir -p data
rm -rf data/grow-node-*
{
  echo 'cluster_name = "grow"'
  for n in 1 2 3 4; do
    printf '[[nodes]]\nid = %d\naddr = "127.0.0.1:730%d"\ndata_dir = "data/grow-node-%d"\n' "$n" "$n" "$n"
  done
  printf '[[shards]]\nid = 1\nstart = ""\nend = "g"\nreplicas = [1, 2, 3]\n'
  printf '[[shards]]\nid = 2\nstart = "g"\nend = "n"\nreplicas = [2, 3, 4]\n'
  printf '[[shards]]\nid = 3\nstart = "n"\nend = "t"\nreplicas = [3, 4, 1]\n'
  printf '[[shards]]\nid = 4\nstart = "t"\nend = ""\nreplicas = [4, 1, 2]\n'
} > "$cfg"
[ -x target/release/stockpile-node ] || cargo build --release --workspace --quiet
cli() { target/release/stockpile --endpoints 127.0.0.1:7301,127.0.0.1:7302,127.0.0.1:7303,127.0.0.1:7304 --timeout 30s "$@"; }
pids=()
for n in 1 2 3 4; do
  target/release/stockpile-node --config "$cfg" --node-id "$n" >"data/grow-node-$n.log" 2>&1 &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
cli cluster wait --within 120s >/dev/null
for prefix in apple grape orange tomato; do
  cli bench --workload uniform --skus 2500 --prefix "$prefix" --duration 1 --clients 8 >/dev/null
done
echo "10,000 SKUs over 4 shards"

shard_ids() { cli cluster map --json | python3 -c 'import json,sys; print(" ".join(str(s["shard_id"]) for s in json.load(sys.stdin)["shards"] if s["shard_id"] != 0))'; }
started=$SECONDS
# The shards made are tracked from the splits' own answers: one node's map learns other
# nodes' splits only within seconds.
ids=$(shard_ids)
count=$(wc -w <<<"$ids")
made=0
for round in $(seq 1 12); do
  [ "$count" -lt "$target" ] || break
  next=""
  for id in $ids; do
    [ "$count" -lt "$target" ] || break
    if child=$(cli shard split "$id" --json 2>&1 | python3 -c 'import json,sys; t=sys.stdin.read(); r=json.loads(t) if t.startswith("{") else {}; print(r["child"]["shard_id"]) if "child" in r else sys.exit(t.strip()[:200])' 2>/tmp/grow-split-refusal); then
      next="$next $id $child"
      made=$((made + 1))
      count=$((count + 1))
    else
      echo "  split of shard $id refused: $(cat /tmp/grow-split-refusal)"
    fi
  done
  ids=$next
  echo "round $round: $count shards ($((SECONDS - started)) s)"
done
sleep 6
count=$(wc -w <<<"$(shard_ids)")
echo "grown to $count shards by $made splits in $((SECONDS - started)) s"
[ "$count" -ge "$target" ] || { echo "FAIL: the map holds $count shards"; exit 1; }

out=$(cli bench --workload uniform --skus 10000 --prefix apple --duration 5 --clients 16 --json)
errors=$(python3 -c 'import json,sys; e=json.loads(sys.argv[1])["errors"]; print(sum(e.values()) if isinstance(e, dict) else len(e))' "$out")
ops=$(python3 -c 'import json,sys; print(round(json.loads(sys.argv[1])["succeeded_per_s"]))' "$out")
echo "serving at $count shards: $ops ops/s, $errors errors"
[ "$errors" = 0 ] || { echo "FAIL: errors while serving"; exit 1; }

drain_started=$SECONDS
cli node drain 4 | tail -3
echo "node 4 drained in $((SECONDS - drain_started)) s"
cli cluster wait --within 120s >/dev/null

sleep 5
echo "idle at $count shards, 3 nodes (node 4 drained), over ${secs} s:"
cpu_use "$secs" "${pids[@]:0:3}"
