#!/usr/bin/env bash
# Sourced by scripts/idle-cpu.sh and scripts/shard-memory.sh: three local nodes of a
# generated config, started and waited for.
#
#   start_nodes CONFIG LOG_PREFIX   starts nodes 1-3 of CONFIG in the background from
#                                   target/${STOCKPILE_PROFILE:-release} (built if
#                                   missing), logs to LOG_PREFIX-N.log; sets `bin` and
#                                   `pids`, and stops the nodes when the script exits
#   wait_leaders ENDPOINTS          returns once every shard has a leader, retrying the
#                                   wait (many shards take a while to start: the map is
#                                   not served until they have) for at most 600 s;
#                                   sets `started` to when the wait began
start_nodes() {
  local cfg=$1 log_prefix=$2 n
  bin=target/${STOCKPILE_PROFILE:-release}
  [ -x "$bin/stockpile-node" ] || cargo build --release --workspace --quiet
  pids=()
  for n in 1 2 3; do
    "$bin/stockpile-node" --config "$cfg" --node-id "$n" >"$log_prefix-$n.log" 2>&1 &
    pids+=($!)
  done
  trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
}

wait_leaders() {
  local eps=$1
  started=$SECONDS
  until "$bin/stockpile" --endpoints "$eps" --timeout 20s cluster wait --within 300s >/dev/null 2>&1; do
    [ $((SECONDS - started)) -lt 600 ] || { echo "no leader for every shard after 600 s" >&2; exit 1; }
    sleep 2
  done
}
