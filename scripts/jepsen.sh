#!/usr/bin/env bash
# Jepsen-style test run against real stockpile-node processes in a private network
# namespace (see jepsen-style-tests/).
#
#   scripts/jepsen.sh [--nodes N] [--nemesis partition,kill,pause,clock|none]
#                     [--workload register,reservations,idempotency] [--time SECONDS]
#                     [--seed N] [--bug local-reads|ignore-request-ids|ack-before-commit]
#                     [--plaintext]
#   scripts/jepsen.sh --scenario slow-link [--nodes N] [--plaintext]
#   scripts/jepsen.sh --scenario failover [--kills N] [--time QUIET_SECONDS]
#       (a measurement: leader kills under load, write unavailability, and leader
#        changes during QUIET_SECONDS of load and of idleness)
#
# Nodes serve mutual TLS with certificates made for the run (as shipped);
# --plaintext runs them without, for comparison.
# Builds what it needs (with --bug: a node with the planted-bugs feature, kept as
# target/release/stockpile-node-planted). Exit status: 0 every check passed, 1 an
# anomaly was found (the report says which), 2 the run could not be carried out.
# Reports go to data/jepsen/<time>-seed<N>/index.html.
set -uo pipefail
cd "$(dirname "$0")/.."

bug=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bug) bug=${2:?--bug needs a mode}; args+=("$1" "$2"); shift 2 ;;
    --nodes|--nemesis|--workload|--time|--seed|--budget|--out|--scenario|--kills) args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    --plaintext) args+=("$1"); shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
done
case "$bug" in
  ""|local-reads|ignore-request-ids|ack-before-commit|keep-removed-replicas|split-range-unchecked|merge-unfrozen) ;;
  *) echo "unknown --bug $bug (local-reads, ignore-request-ids, ack-before-commit, keep-removed-replicas, split-range-unchecked, merge-unfrozen)" >&2; exit 2 ;;
esac

command -v nft >/dev/null && command -v unshare >/dev/null || scripts/setup.sh >/dev/null || exit 2
if ! cargo build --release --workspace --quiet; then exit 2; fi
if [ -n "$bug" ]; then
  # The planted-bug node is built with the feature and kept aside; the normal build is
  # restored right after (both are cached, so this is quick after the first time).
  cargo build --release --workspace --quiet --features stockpile-node/planted-bugs || exit 2
  cp target/release/stockpile-node target/release/stockpile-node-planted
  cargo build --release --workspace --quiet || exit 2
fi
target/release/stockpile-jepsen "${args[@]}"
