#!/usr/bin/env bash
# The placement rules of docs/ARCHITECTURE.md, checked on the node's sources:
#   1. `inventory` imports nothing else from the crate (pure domain logic);
#   2. only `storage` names RocksDB;
#   3. only `raft` and `storage` name openraft;
#   4. the planted-bug module exists only with its feature (lib.rs gates it, so no
#      default build can call it), and every use of it is behind the feature;
#   5. the node's sources read no environment variable but RUST_LOG (main.rs) and the
#      planted bug's (planted.rs, feature only): test settings are injected instead.
#
#   scripts/check-placement.sh [SRC_DIR]     check (default: node/src)
#   scripts/check-placement.sh --self-test   plant one violation of each rule in a copy
#                                            and require each to be caught
# Exit status: 0 every rule holds, 1 a rule is broken (each violation is printed).
set -uo pipefail
cd "$(dirname "$0")/.."

# Lines of Rust code, without line comments and doc comments.
code() { grep -nE "$2" "$1" | grep -vE '^[0-9]+:\s*//' ; }

check() {
  local src=$1 fail=0 f
  while IFS= read -r f; do
    local hits
    hits=$(code "$f" 'crate::[a-z_]+' | grep -vE 'crate::inventory\b' | grep -E 'crate::' || true)
    if [ -n "$hits" ]; then echo "rule 1: $f imports from the crate outside inventory:"; echo "$hits"; fail=1; fi
    hits=$(code "$f" 'super::super' || true)
    if [ -n "$hits" ]; then echo "rule 1: $f reaches outside inventory:"; echo "$hits"; fail=1; fi
  done < <(find "$src/inventory" -name '*.rs')
  while IFS= read -r f; do
    case "$f" in "$src"/storage/*) continue ;; esac
    local hits
    hits=$(code "$f" '\brocksdb::|use rocksdb\b' || true)
    if [ -n "$hits" ]; then echo "rule 2: $f names RocksDB:"; echo "$hits"; fail=1; fi
  done < <(find "$src" -name '*.rs')
  while IFS= read -r f; do
    case "$f" in "$src"/storage/*|"$src"/raft/*) continue ;; esac
    local hits
    hits=$(code "$f" '\bopenraft::|use openraft\b' || true)
    if [ -n "$hits" ]; then echo "rule 3: $f names openraft:"; echo "$hits"; fail=1; fi
  done < <(find "$src" -name '*.rs')
  if ! grep -B1 -E '^pub mod planted;' "$src/lib.rs" | grep -q 'cfg(feature = "planted-bugs")'; then
    echo "rule 4: $src/lib.rs declares the planted module without #[cfg(feature = \"planted-bugs\")]"; fail=1
  fi
  while IFS= read -r f; do
    [ "$f" = "$src/planted.rs" ] && continue
    local line
    while IFS=: read -r line _; do
      [ -z "$line" ] && continue
      local from=$((line > 3 ? line - 3 : 1))
      if ! sed -n "${from},${line}p" "$f" | grep -q 'cfg(feature = "planted-bugs")'; then
        echo "rule 4: $f:$line uses the planted module outside #[cfg(feature = \"planted-bugs\")]"; fail=1
      fi
    done < <(code "$f" 'planted::' || true)
  done < <(find "$src" -name '*.rs')
  while IFS= read -r f; do
    case "$f" in "$src/main.rs"|"$src/planted.rs") continue ;; esac
    local hits
    hits=$(code "$f" 'env::var' || true)
    if [ -n "$hits" ]; then echo "rule 5: $f reads an environment variable:"; echo "$hits"; fail=1; fi
  done < <(find "$src" -name '*.rs')
  local hits
  hits=$(grep -rn 'STOCKPILE_TEST' "$src" || true)
  if [ -n "$hits" ]; then echo "rule 5: a test-only variable in the node's sources:"; echo "$hits"; fail=1; fi
  return $fail
}

self_test() {
  local tmp plant rule ok=0
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  for rule in 1 2 3 4 5; do
    rm -rf "$tmp/src" && cp -r node/src "$tmp/src"
    case $rule in
      1) echo 'use crate::storage::Store;' >> "$tmp/src/inventory/mem.rs" ;;
      2) echo 'type Db = rocksdb::DB;' >> "$tmp/src/router.rs" ;;
      3) echo 'type S = openraft::ServerState;' >> "$tmp/src/api/admin.rs" ;;
      4) sed -i 's/^#\[cfg(feature = "planted-bugs")\]$//' "$tmp/src/lib.rs" ;;
      5) echo 'fn skew() -> Option<String> { std::env::var("STOCKPILE_TEST_SKEW").ok() }' >> "$tmp/src/clock.rs" ;;
    esac
    if check "$tmp/src" > "$tmp/out" 2>&1; then
      echo "self-test: a planted violation of rule $rule was NOT caught"; ok=1
    elif grep -q "^rule $rule:" "$tmp/out"; then
      echo "self-test: rule $rule violation caught: $(grep -m1 "^rule $rule:" "$tmp/out")"
    else
      echo "self-test: rule $rule violation caught by another rule only:"; cat "$tmp/out"; ok=1
    fi
  done
  return $ok
}

case "${1:-}" in
  --self-test) self_test ;;
  *) if check "${1:-node/src}"; then echo "placement rules: ok"; else exit 1; fi ;;
esac
