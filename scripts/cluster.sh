#!/usr/bin/env bash
# Start, stop or inspect a local Stockpile cluster.
#
#   scripts/cluster.sh up     [CONFIG]   build if needed, start every node in the background
#   scripts/cluster.sh down   [CONFIG]   stop the nodes this script started (SIGTERM, then SIGKILL)
#   scripts/cluster.sh status [CONFIG]   show `stockpile cluster status`
#   scripts/cluster.sh stop N [CONFIG]   stop node N (SIGTERM, then SIGKILL); the others keep running
#   scripts/cluster.sh kill N [CONFIG]   kill -9 node N (for demonstrations)
#   scripts/cluster.sh start N [CONFIG]  start node N again on its data
#   scripts/cluster.sh join N CONFIG [ADDR,...]  start node N (listed in CONFIG, not in the
#                                        others' configs) with --join: it registers in the
#                                        cluster map through ADDR (default: CONFIG's other nodes)
#
# CONFIG defaults to cluster-config/local-3node.toml. Data and logs live under
# ./data/ (each node's data_dir from the config; logs in data/logs, PIDs in data/pids).
# With [security] tls on (as shipped), `up` creates the certificates on first use in
# data/certs/<cluster_name>/; use the CLI as admin with: . data/certs/<name>/env.sh
#
# The nodes share this machine, so each gets an equal share of its cores as runtime
# threads (--worker-threads, at least 1); STOCKPILE_WORKER_THREADS=N overrides it.
set -euo pipefail
cd "$(dirname "$0")/.."

cmd=${1:-}
case "$cmd" in
  stop|kill|start) node_arg=${2:?"usage: $0 $cmd NODE_ID [CONFIG]"}; config=${3:-cluster-config/local-3node.toml} ;;
  join) node_arg=${2:?"usage: $0 join NODE_ID CONFIG [ADDR,...]"}; config=${3:?"usage: $0 join NODE_ID CONFIG [ADDR,...]"}; join_via=${4:-} ;;
  up|down|status) config=${2:-cluster-config/local-3node.toml} ;;
  *) echo "usage: $0 up|down|status [CONFIG] | stop|kill|start NODE_ID [CONFIG] | join NODE_ID CONFIG [ADDR,...]" >&2; exit 2 ;;
esac
[ -f "$config" ] || { echo "no such config: $config" >&2; exit 2; }

# STOCKPILE_PROFILE=perf runs the binaries of `cargo build --profile perf` (fat LTO).
profile=${STOCKPILE_PROFILE:-release}
bin=target/$profile
pids=data/pids
logs=data/logs
mkdir -p "$pids" "$logs"

# Node ids and addresses of the config's [[nodes]] tables.
nodes() {
  awk '/^\[\[nodes\]\]/{n=1; next} /^\[/{n=0} n && /^id *=/{gsub(/[^0-9]/,"",$3); id=$3} n && /^addr *=/{gsub(/"/,"",$3); print id, $3}' "$config"
}

build() {
  if [ ! -x "$bin/stockpile-node" ] || [ ! -x "$bin/stockpile" ] || [ -n "$(find node client proto Cargo.toml -newer "$bin/stockpile-node" -type f 2>/dev/null | head -1)" ]; then
    echo "building (cargo build --profile $profile --workspace; the first build compiles RocksDB, about 10 minutes)..."
    cargo build --profile "$profile" --workspace --quiet
  fi
}

endpoints() { nodes | awk '{print $2}' | paste -sd, -; }

# The CA file of the config's [security] section (empty when TLS is off).
security_ca() {
  awk '/^\[security\]/{s=1; next} /^\[/{s=0} s && /^ca *=/{gsub(/"/,"",$3); print $3}' "$config"
}

# With TLS on: creates the CA, node certificates, an `admin` client certificate and
# the access file on first use (stockpile certs init), and makes this script's CLI
# calls the `admin` identity (the env.sh it writes: STOCKPILE_CA/CERT/KEY).
certs() {
  local ca dir
  ca=$(security_ca)
  [ -n "$ca" ] || return 0
  dir=$(dirname "$ca")
  if [ ! -f "$ca" ]; then
    [ "${1:-}" = create ] || return 0
    "$bin/stockpile" certs init "$dir" --config "$config" >/dev/null
    echo "created certificates in $dir (CA, nodes, client 'admin'); use the CLI with: . $dir/env.sh"
  fi
  # shellcheck source=/dev/null
  . "$dir/env.sh"
}

# This machine's cores split among the config's nodes: three nodes on two cores each
# ran one thread, not two (docs/PERFORMANCE.md, "What was changed", 14).
worker_threads() {
  local nodes_n share
  nodes_n=$(nodes | wc -l)
  share=$(( $(nproc) / (nodes_n > 0 ? nodes_n : 1) ))
  echo "${STOCKPILE_WORKER_THREADS:-$(( share > 1 ? share : 1 ))}"
}

running() { [ -f "$pids/node-$1.pid" ] && kill -0 "$(cat "$pids/node-$1.pid")" 2>/dev/null; }

start_node() {
  local id=$1
  shift
  if running "$id"; then echo "node $id already running (pid $(cat "$pids/node-$id.pid"))"; return; fi
  nohup "$bin/stockpile-node" --config "$config" --node-id "$id" --worker-threads "$(worker_threads)" "$@" >>"$logs/node-$id.log" 2>&1 &
  echo $! >"$pids/node-$id.pid"
  echo "node $id started (pid $!, log $logs/node-$id.log)"
}

wait_ready() {
  # Ready when every node answers and every shard has a leader.
  if ! "$bin/stockpile" --endpoints "$(endpoints)" --timeout 3s cluster wait --within "${1:-60}s" >/dev/null; then
    echo "cluster not ready after ${1:-60}s; see $logs/" >&2
    return 1
  fi
}

stop_node() {
  local id=$1
  if running "$id"; then
    kill -TERM "$(cat "$pids/node-$id.pid")"
    for _ in $(seq 1 100); do running "$id" || break; sleep 0.1; done
    if running "$id"; then kill -KILL "$(cat "$pids/node-$id.pid")"; echo "node $id killed (did not stop in 10 s)"; else echo "node $id stopped"; fi
  fi
  rm -f "$pids/node-$id.pid"
}

[ "$cmd" = up ] || [ ! -x "$bin/stockpile" ] || certs

case "$cmd" in
  up)
    build
    certs create
    while read -r id _; do start_node "$id"; done < <(nodes)
    wait_ready 90
    echo "cluster up: every shard has a leader. Endpoints: $(endpoints)"
    ;;
  down)
    # The config's nodes, and any node this script started besides (joined ones).
    while read -r id _; do stop_node "$id"; done < <(nodes)
    for f in "$pids"/node-*.pid; do
      [ -e "$f" ] || continue
      id=${f##*/node-}; stop_node "${id%.pid}"
    done
    ;;
  stop)
    if running "$node_arg"; then stop_node "$node_arg"; else echo "node $node_arg is not running"; fi
    ;;
  status)
    "$bin/stockpile" --endpoints "$(endpoints)" cluster status
    ;;
  kill)
    if running "$node_arg"; then kill -KILL "$(cat "$pids/node-$node_arg.pid")"; rm -f "$pids/node-$node_arg.pid"; echo "node $node_arg killed (-9)"; else echo "node $node_arg is not running"; fi
    ;;
  start)
    start_node "$node_arg"
    ;;
  join)
    via=${join_via:-$(nodes | awk -v me="$node_arg" '$1 != me {print $2}' | paste -sd, -)}
    start_node "$node_arg" --join "$via"
    ;;
esac
