#!/usr/bin/env bash
# The main job: build Stockpile, start a local 3-node cluster (RocksDB data under
# ./data/), load sample stock, sell it concurrently through the client, kill -9 the
# leader of a shard, show that the cluster keeps serving, restart the node and show
# that it caught up; then a 4th node joins and node 1 is drained and removed while
# sales continue, and shard 4 is split and merged back while it sells. Ends with the
# cluster stopped unless --keep is given.
#
#   scripts/demo.sh          run the demonstration (starts from empty data)
#   scripts/demo.sh --keep   leave the cluster running afterwards (stop: scripts/cluster.sh down)
set -euo pipefail
cd "$(dirname "$0")/.."

keep=0
for a in "$@"; do
  case "$a" in
    --keep) keep=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "unknown argument: $a (try --help)" >&2; exit 2 ;;
  esac
done

config=cluster-config/local-3node.toml
cli() { target/release/stockpile "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }

cleanup() {
  # A background seller stops at this file, also when a step failed.
  touch data/sales.stop
  if [ "$keep" = 0 ]; then
    step "Stopping the cluster"
    scripts/cluster.sh down "$config" || true
    # The drain retired node 1 for good: these data directories can no longer start
    # as the 3-node cluster, so `scripts/cluster.sh up` begins afresh.
    rm -rf data/node-1 data/node-2 data/node-3 data/node-4 data/node-4.toml
    say "the demo's data was removed; scripts/cluster.sh up starts a fresh cluster"
  else
    step "Leaving the cluster running (stop it with: scripts/cluster.sh down)"
  fi
}

step "Installing what the build needs (scripts/setup.sh)"
scripts/setup.sh

step "Building (cargo build --release --workspace; the first build compiles RocksDB, about 10 minutes)"
cargo build --release --workspace --quiet
say "built target/release/stockpile-node and target/release/stockpile"

step "Starting a local 3-node cluster ($config)"
scripts/cluster.sh down "$config" >/dev/null 2>&1 || true
rm -rf data/node-1 data/node-2 data/node-3 data/node-4
trap cleanup EXIT
scripts/cluster.sh up "$config"
# The cluster serves mutual TLS; the CLI is the `admin` identity the first `up` made.
# shellcheck source=/dev/null
. data/certs/local-3node/env.sh
say "TLS on: certificates in data/certs/local-3node/, the CLI uses them via STOCKPILE_CA/CERT/KEY"
say "each node keeps its RocksDB under data/node-N/db and logs in data/logs/"
cli cluster status

step "Loading sample stock (12 SKUs over 4 shards split at g, n, t)"
for sku in apple-red banana-ripe cherry-dark grape-green kiwi-gold lemon-fresh \
           nectarine-white orange-navel peach-flat tomato-roma walnut-raw zucchini-small; do
  cli stock set "$sku" 100 >/dev/null
done
cli stock list

step "Selling concurrently: 200 clients race to decrement 'kiwi-gold' (stock 100) by 1"
cli rush kiwi-gold --clients 200 --attempts 200
say "exactly 100 sales succeed; the other 100 get INSUFFICIENT_STOCK: never oversold"

step "Reserving and confirming (a checkout): hold 2 'peach-flat' for 30 s, then confirm"
res_id=$(cli --json reserve peach-flat:2 --ttl 30s | sed -n 's/.*"reservation_id":"\([^"]*\)".*/\1/p')
say "reservation $res_id holds 2 units"
cli stock get peach-flat
cli confirm "$res_id" --sku peach-flat
cli stock get peach-flat

step "The same store over HTTP/JSON on the same port (curl; docs/HTTP.md)"
http() { curl -sS -L --cacert "$STOCKPILE_CA" --cert "$STOCKPILE_CERT" --key "$STOCKPILE_KEY" "$@"; echo; }
say "PUT /v1/skus/lemon-fresh, then the same decrement sent twice with one Idempotency-Key:"
http -X PUT https://127.0.0.1:7001/v1/skus/lemon-fresh -d '{"on_hand": 50}'
http -X POST https://127.0.0.1:7001/v1/skus/lemon-fresh:decrement -H 'Idempotency-Key: demo-order-1' -d '{"quantity": 2}'
http -X POST https://127.0.0.1:7001/v1/skus/lemon-fresh:decrement -H 'Idempotency-Key: demo-order-1' -d '{"quantity": 2}'
say "the retry says \"replayed\": true and on_hand stayed 48: sold once"
say "a set conditional on an old version (If-Match: \"1\") is refused 412 VERSION_MISMATCH:"
http -X PUT https://127.0.0.1:7001/v1/skus/lemon-fresh -H 'If-Match: "1"' -d '{"on_hand": 10}'

step "Killing (kill -9) the leader of shard 3 (SKUs n..t)"
leader=$(cli cluster leader 3)
scripts/cluster.sh kill "$leader" "$config"
say "node $leader is gone; the other two hold a majority of every shard"

step "The cluster keeps serving shard 3: decrement 'orange-navel' and 'peach-flat'"
start=$(date +%s%N)
cli stock decrement orange-navel 5
cli stock decrement peach-flat 1
say "served $(( ($(date +%s%N) - start) / 1000000 )) ms after the kill (the client waited for a new leader)"
say "new leader of shard 3: node $(cli cluster leader 3)"
cli cluster status || true

step "Writing more while node $leader is down"
for sku in nectarine-white orange-navel peach-flat; do cli stock adjust "$sku" 10 >/dev/null; done
cli stock get nectarine-white orange-navel peach-flat

step "Restarting node $leader on its data: it catches up from the leaders"
scripts/cluster.sh start "$leader" "$config"
cli cluster wait --within 60s
for _ in $(seq 1 50); do
  a=$(cli --json stock get nectarine-white orange-navel peach-flat --from-node "$leader" | sed 's/"applied_index":[0-9]*,//g; s/"node_id":[0-9]*,//g')
  b=$(cli --json stock get nectarine-white orange-navel peach-flat | sed 's/"applied_index":[0-9]*,//g; s/"node_id":[0-9]*,//g')
  [ "$a" = "$b" ] && break
  sleep 0.2
done
say "node $leader's own replicas (stale read answered by node $leader):"
cli stock get nectarine-white orange-navel peach-flat --from-node "$leader"
if [ "$a" = "$b" ]; then say "node $leader matches the leaders' linearizable reads: caught up"; else say "node $leader has NOT caught up"; exit 1; fi
cli cluster status

step "Growing and shrinking while it sells: node 4 joins, node 1 is drained and removed"
cfg4=data/node-4.toml
{ cat "$config"; printf '\n[[nodes]]\nid = 4\naddr = "127.0.0.1:7004"\nmetrics_addr = "127.0.0.1:9004"\nregion = "local"\nzone = "d"\ndata_dir = "data/node-4"\n'; } >"$cfg4"
cli certs node data/certs/local-3node 4 >/dev/null
say "node 4's config ($cfg4) is the cluster's file plus its own [[nodes]] entry; nodes 1-3 keep theirs"
say "the cluster map before (held by the meta shard, shard 0):"
cli cluster map
scripts/cluster.sh join 4 "$cfg4" 127.0.0.1:7001
for _ in $(seq 1 100); do cli --json node list 2>/dev/null | grep -q '"node_id": *4' && break; sleep 0.2; done
# Stock enough for however long the drain takes: a sale refused for stock would be
# counted as a failure of the drain.
cli stock set melon-sale 1000000 >/dev/null
rm -f data/sales.stop data/sales.log
( while [ ! -e data/sales.stop ]; do
    if cli stock decrement melon-sale 1 >/dev/null 2>>data/sales.log; then echo ok >>data/sales.log; else echo FAILED >>data/sales.log; fi
  done ) &
sales=$!
say "selling melon-sale one unit at a time in the background; draining node 1 (every replica, the meta shard's too):"
cli node drain 1
scripts/cluster.sh stop 1 "$config"
say "node 1 stopped: it held no replica and no leadership any more"
sleep 1
touch data/sales.stop; wait "$sales" || true
sold=$(grep -c '^ok$' data/sales.log || true); failed=$(grep -c '^FAILED$' data/sales.log || true)
say "sales during the drain: $sold succeeded, $failed failed"
cli stock get melon-sale
say "the cluster map after (node 1 removed, node 4 up):"
cli cluster map
cli node list
[ "$failed" = 0 ] || { say "a sale failed during the drain:"; grep -v '^ok$' data/sales.log | sort | uniq -c | head -5; exit 1; }

step "Splitting shard 4 and merging it back while it sells"
cli stock set zucchini-small 1000 >/dev/null
rm -f data/sales.stop data/sales.log
( while [ ! -e data/sales.stop ]; do
    if cli stock decrement zucchini-small 1 >/dev/null 2>>data/sales.log; then echo ok >>data/sales.log; else echo FAILED >>data/sales.log; fi
  done ) &
sales=$!
child=$(cli --json shard split 4 --at walnut-raw | sed -n 's/.*"child":{[^}]*"shard_id":\([0-9]*\).*/\1/p')
say "shard 4 split at walnut-raw: shard $child took [walnut-raw, end) with its stock, holds and stored outcomes"
cli stock get walnut-raw zucchini-small
cli shard merge 4 --right "$child"
say "shard $child was frozen and its state carried into shard 4's log: shard $child is gone"
touch data/sales.stop; wait "$sales" || true
sold=$(grep -c '^ok$' data/sales.log || true); failed=$(grep -c '^FAILED$' data/sales.log || true)
say "sales of zucchini-small during the split and the merge: $sold succeeded, $failed failed"
cli stock get zucchini-small
[ "$failed" = 0 ] || { say "a sale failed during the split or the merge"; exit 1; }

step "Done"
say "try: . data/certs/local-3node/env.sh; target/release/stockpile --help    (the CLI; README.md has a tour)"
say "HTTP/JSON: docs/HTTP.md (curl tour); web console: https://127.0.0.1:7002/ui (scripts/demo.sh --keep)"
