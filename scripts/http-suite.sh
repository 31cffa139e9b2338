#!/usr/bin/env bash
# The HTTP face against real tools, on one real 3-node TLS cluster of its own
# (ports 7111-7113, data in a temporary directory), as scripts/test.sh runs it:
#   1. the OpenAPI document: docs/openapi.json passes a standard validator
#      (openapi-spec-validator) and is exactly what a node serves at /v1/openapi.json;
#   2. Schemathesis: property-based requests from the spec (bounded examples, fixed
#      seed) against the cluster: no 5xx, every status, content type, header and body
#      conforms to the spec;
#   3. stock invariants afterwards over HTTP, and every replica converged
#      (scripts/http/check_invariants.py);
#   4. the web console in headless Chromium (scripts/http/console_test.mjs): every
#      node and shard shown, a killed node turns to down.
# Needs a release build (scripts/test.sh builds first). Installs schemathesis and
# openapi-spec-validator (PyPI) and chromium (Debian) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release
[ -x "$bin/stockpile-node" ] && [ -x "$bin/stockpile" ] || { echo "build first: cargo build --release --workspace" >&2; exit 2; }

# Pinned so that a run is repeatable.
SCHEMATHESIS_VERSION=4.32.5
VALIDATOR_VERSION=0.9.0
pip_install() {
  # Debian's own Python refuses system-wide installs (PEP 668); a machine's pyenv or
  # venv Python does not need the flag.
  python3 -m pip install -q --root-user-action=ignore "$@" 2>/dev/null ||
    python3 -m pip install -q --root-user-action=ignore --break-system-packages "$@"
}
if ! command -v st >/dev/null || ! st --version | grep -q "$SCHEMATHESIS_VERSION"; then
  pip_install "schemathesis==$SCHEMATHESIS_VERSION"
fi
if ! command -v openapi-spec-validator >/dev/null; then
  pip_install "openapi-spec-validator==$VALIDATOR_VERSION"
fi

work=$(mktemp -d /tmp/stockpile-http.XXXXXX)
config=$work/cluster.toml
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ "${KEEP:-}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# The shipped local config on other ports, with its data and certificates in $work.
sed -e 's/cluster_name = "local-3node"/cluster_name = "http-suite"/' \
    -e 's/127.0.0.1:700\([0-9]\)/127.0.0.1:711\1/' \
    -e 's/127.0.0.1:900\([0-9]\)/127.0.0.1:911\1/' \
    -e "s#data/node-#$work/node-#" \
    -e "s#data/certs/local-3node#$work/certs#g" \
    cluster-config/local-3node.toml >"$config"
"$bin/stockpile" certs init "$work/certs" --config "$config" >/dev/null
# shellcheck source=/dev/null
. "$work/certs/env.sh"
for id in 1 2 3; do
  "$bin/stockpile-node" --config "$config" --node-id "$id" >"$work/node-$id.log" 2>&1 &
  pids+=($!)
  disown   # the console test kill -9s one: no job-control noise about it
done
endpoints=127.0.0.1:7111,127.0.0.1:7112,127.0.0.1:7113
"$bin/stockpile" --endpoints "$endpoints" --timeout 3s cluster wait --within 90s >/dev/null
base=https://127.0.0.1:7111
curl_tls=(curl -sS --fail-with-body --cacert "$STOCKPILE_CA" --cert "$STOCKPILE_CERT" --key "$STOCKPILE_KEY")

echo "--- OpenAPI: validator, and served == docs/openapi.json"
openapi-spec-validator docs/openapi.json
"${curl_tls[@]}" "$base/v1/openapi.json" | cmp - docs/openapi.json
echo "served document is docs/openapi.json"

# Every shard led by node 1, so that generated requests are served there instead of
# answered 307 (the redirect is checked in the curl integration tests).
for shard in 1 2 3 4; do
  "$bin/stockpile" --endpoints "$endpoints" cluster transfer-leader "$shard" 1 >/dev/null
done
echo "--- Schemathesis (bounded: ${HTTP_EXAMPLES:-25} examples per operation, seed 7)"
# Some SKUs to find, so that reads and conditional writes meet real records.
for sku in apple banana kiwi tomato; do
  "${curl_tls[@]}" -L -o /dev/null -X PUT "$base/v1/skus/$sku" -d '{"on_hand": 100}'
done
st run docs/openapi.json --url "$base" \
  --tls-verify "$STOCKPILE_CA" --request-cert "$STOCKPILE_CERT" --request-cert-key "$STOCKPILE_KEY" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing --max-examples "${HTTP_EXAMPLES:-25}" --seed 7 \
  --workers 1 --no-color

echo "--- stock invariants and replica convergence after Schemathesis"
python3 scripts/http/check_invariants.py "$STOCKPILE_CA" "$STOCKPILE_CERT" "$STOCKPILE_KEY" \
  https://127.0.0.1:7111 https://127.0.0.1:7112 https://127.0.0.1:7113

echo "--- web console in headless Chromium (playwright-core, Debian's chromium)"
scripts/http/ensure-chromium.sh
token=$("$bin/stockpile" token create console --role writer --ttl 1h --access "$work/certs/access.toml" 2>/dev/null | grep -o 'spk_[0-9a-f]*' | head -1)
[ -n "$token" ] || { echo "could not create a token" >&2; exit 1; }
for pid in "${pids[@]}"; do kill -HUP "$pid"; done   # the nodes re-read the access file
sleep 1
NODE_PATH=$PWD/scripts/http/node_modules node scripts/http/console_test.mjs "$base" "$token" "${pids[2]}" 3 "$work/console.png"
echo "HTTP suite passed"
