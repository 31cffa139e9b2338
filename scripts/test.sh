#!/usr/bin/env bash
# Every test layer Stockpile has, in one command (what CI runs):
#   1. setup: the Debian packages the build and tests need
#   2. format, placement rules (scripts/check-placement.sh), monitoring assets
#      (promtool: Prometheus config, alert rules and their unit tests), lint (clippy -D warnings)
#   3. unit and property tests: keys, codec, config, validation, apply vs a model
#   4. storage conformance: openraft's storage suite over our RocksDB stores
#   5. integration: real stockpile-node processes on loopback, through the client
#   6. HTTP face (scripts/http-suite.sh): the OpenAPI document validated and served
#      as checked in, Schemathesis against a TLS cluster, stock invariants after it,
#      the web console in headless Chromium (a killed node turns to down)
#   7. Jepsen-style: real nodes in a network namespace under partitions, kills and
#      pauses, histories checked for linearizability and stock conservation; and the
#      planted bugs must be caught (scripts/jepsen-suite.sh)
# Everything builds with one profile (release) into one target directory, so
# RocksDB's C++ build happens once.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
section() { printf '\n==> %s (%ds elapsed)\n' "$*" "$((SECONDS - started))"; }

section "setup"
scripts/setup.sh

section "format"
cargo fmt --all -- --check

section "placement rules (docs/ARCHITECTURE.md), and that the check catches violations"
scripts/check-placement.sh
scripts/check-placement.sh --self-test

section "monitoring assets: promtool check config, check rules, test rules (deploy/monitoring)"
if ! command -v promtool >/dev/null; then
  echo "installing promtool (Debian package prometheus)"
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The package may start a Prometheus server; the tests do not need it running.
  pkill -x prometheus 2>/dev/null || true
fi
promtool check config deploy/monitoring/prometheus.yml
promtool check rules deploy/monitoring/alerts.yml
promtool test rules deploy/monitoring/alerts-test.yml

section "build (release profile, whole workspace)"
cargo build --release --workspace --all-targets

section "lint"
cargo clippy --release --workspace --all-targets -- -D warnings

section "tests: unit, property, storage conformance, integration"
cargo test --release --workspace 2>&1 | tee /tmp/stockpile-test.log

section "HTTP face: OpenAPI validator, Schemathesis, stock invariants, console in headless Chromium"
scripts/http-suite.sh

section "Jepsen-style suite"
scripts/jepsen-suite.sh

section "all tests passed"
