#!/usr/bin/env bash
# Sourced by scripts/idle-cpu.sh and scripts/grow-shards.sh: `cpu_use SECONDS PID...`
# prints each process's CPU use (utime + stime from /proc) over SECONDS as a
# percentage of one core, with its RSS; the processes are named node 1, 2, ... in order.
cpu_use() {
  local secs=$1 hz i after rss
  shift
  local pids=("$@") before=()
  hz=$(getconf CLK_TCK)
  for i in "${!pids[@]}"; do before[$i]=$(awk '{print $14 + $15}' "/proc/${pids[$i]}/stat"); done
  sleep "$secs"
  for i in "${!pids[@]}"; do
    after=$(awk '{print $14 + $15}' "/proc/${pids[$i]}/stat")
    rss=$(awk '/VmRSS/{print $2}' "/proc/${pids[$i]}/status")
    awk -v d=$((after - before[i])) -v hz="$hz" -v s="$secs" -v n=$((i + 1)) -v rss="$rss" \
      'BEGIN { printf "node %d: %.1f%% of one core, RSS %d MiB\n", n, 100 * d / hz / s, rss / 1024 }'
  done
}
