#!/usr/bin/env bash
# Installs what the console test needs when missing: Debian's chromium (the test
# tools' own browser downloads do not work here) and playwright-core (pinned, from
# npm, into scripts/http/node_modules; it drives the system chromium).
set -euo pipefail
cd "$(dirname "$0")"
PLAYWRIGHT_VERSION=1.64.1
if [ ! -x /usr/bin/chromium ]; then
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  echo "installing chromium (Debian)"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
command -v node >/dev/null || { echo "node (Node.js) is needed for the console test" >&2; exit 1; }
if [ ! -f node_modules/playwright-core/package.json ] || ! grep -q "\"version\": \"$PLAYWRIGHT_VERSION\"" node_modules/playwright-core/package.json; then
  echo "installing playwright-core@$PLAYWRIGHT_VERSION (npm)"
  npm install --no-save --no-audit --no-fund --silent "playwright-core@$PLAYWRIGHT_VERSION" >/dev/null
fi
