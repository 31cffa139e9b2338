#!/usr/bin/env bash
# The short Jepsen-style suite run by scripts/test.sh (a few minutes):
#   1. partition, kill and pause scenarios, each on a 3-node cluster, and membership
#      changes (a node joins and another is drained, a replica moves, a killed node is
#      declared dead) with partitions and kills on 4 nodes, and shard splits with
#      partitions and kills on 3 nodes: every check must pass;
#   2. the slow-link scenario: the largest legal entry over rate-limited links commits;
#   3. each planted bug must be flagged as an anomaly within three seeds.
# Needs root or user namespaces (unshare), nftables and iproute2 (scripts/setup.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${JEPSEN_TIME:-20}

fail=0
for nemesis in partition kill pause; do
  echo "--- jepsen: $nemesis, 3 nodes, ${secs}s"
  scripts/jepsen.sh --nodes 3 --nemesis "$nemesis" --time "$secs" --seed "$((RANDOM + 1))" | tail -3
  code=${PIPESTATUS[0]}
  if [ "$code" != 0 ]; then echo "jepsen $nemesis: exit $code (1 = anomaly, 2 = run failed)"; fail=1; fi
done

msecs=$((secs + 10))
echo "--- jepsen: membership (joins, drains, moves, dead nodes) with partitions and kills, 4 nodes, ${msecs}s"
scripts/jepsen.sh --nodes 4 --nemesis membership,partition,kill --time "$msecs" --seed "$((RANDOM + 1))" | tail -3
code=${PIPESTATUS[0]}
if [ "$code" != 0 ]; then echo "jepsen membership: exit $code (1 = anomaly, 2 = run failed)"; fail=1; fi

echo "--- jepsen: splits and merges with partitions and kills, 3 nodes, ${secs}s"
scripts/jepsen.sh --nodes 3 --nemesis split,merge,partition,kill --time "$secs" --seed "$((RANDOM + 1))" | tail -3
code=${PIPESTATUS[0]}
if [ "$code" != 0 ]; then echo "jepsen split: exit $code (1 = anomaly, 2 = run failed)"; fail=1; fi

echo "--- jepsen: slow-link scenario (the largest legal entry over rate-limited links)"
scripts/jepsen.sh --scenario slow-link | tail -8
code=${PIPESTATUS[0]}
if [ "$code" != 0 ]; then echo "jepsen slow-link: exit $code (1 = the shard stalled, 2 = run failed)"; fail=1; fi

for spec in "local-reads partition 3" "ignore-request-ids partition,kill 3" "ack-before-commit kill,partition 3" "keep-removed-replicas membership 4" "split-range-unchecked split 3" "merge-unfrozen merge 3"; do
  set -- $spec
  bug=$1 nemesis=$2 nodes=$3
  flagged=0
  for seed in 1 2 3; do
    echo "--- jepsen: planted bug $bug under $nemesis, $nodes nodes, seed $seed"
    scripts/jepsen.sh --nodes "$nodes" --nemesis "$nemesis" --time 15 --seed "$seed" --bug "$bug" | tail -2
    code=${PIPESTATUS[0]}
    if [ "$code" = 1 ]; then flagged=1; break; fi
    if [ "$code" != 0 ]; then echo "jepsen $bug: the run itself failed (exit $code)"; break; fi
  done
  if [ "$flagged" = 1 ]; then echo "planted bug $bug: flagged"; else echo "planted bug $bug: NOT flagged"; fail=1; fi
done
exit $fail
