#!/usr/bin/env bash
# Installs the Debian packages Stockpile's build and tests need, when missing.
# Safe to run twice. Needs root (or sudo) only when something must be installed.
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# libclang-dev: bindgen (RocksDB's Rust bindings); g++/make: RocksDB's C++ build and jemalloc's;
# nftables/iproute2: the Jepsen-style tests' network namespaces and partitions;
# pkg-config: -sys crates; curl: the HTTP face's tests.
for p in libclang-dev g++ make pkg-config nftables iproute2 procps util-linux curl; do
  have_pkg "$p" || need+=("$p")
done

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found. Install Rust with https://rustup.rs (rustup), then run this again." >&2
  exit 1
fi
echo "setup: ok ($(cargo --version))"
