#!/usr/bin/env bash
# Checks the running daemon against its own OpenAPI description with schemathesis: no 5xx,
# every answer's status, content type, headers and body as documented.
#
# Installs schemathesis into a cached virtualenv when missing, builds the binary, starts the
# daemon on a free loopback port with a temporary database seeded from fixtures/deliveries,
# runs the checks, and stops the daemon. SCHEMATHESIS_MAX_EXAMPLES bounds the test cases per
# operation (default 100); SCHEMATHESIS_ARGS adds options (for example `--seed 1`).
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${XDG_CACHE_HOME:-$HOME/.cache}/rebilly-webhookd-ci"
venv="$cache/venv"
if [[ ! -x "$venv/bin/schemathesis" ]]; then
    echo "== installing schemathesis into $venv"
    mkdir -p "$cache"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check schemathesis
fi
"$venv/bin/schemathesis" --version

echo "== building the daemon"
cargo build --locked --quiet
binary="target/debug/rebilly-webhookd"

work="$(mktemp -d)"
daemon=""
stop_daemon() {
    if [[ -n "$daemon" ]] && kill -0 "$daemon" 2>/dev/null; then
        kill -TERM "$daemon"
        wait "$daemon" || true
    fi
    rm -rf "$work"
}
trap stop_daemon EXIT

random_secret() { head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 40; }
password="$(random_secret)"
token="$(random_secret)"
cat >"$work/config.toml" <<EOF
[server]
listen = "127.0.0.1:0"

[storage]
path = "$work/db/webhookd.db"

[[auth.basic]]
username = "schemathesis"
password = "$password"

[api]
token = "$token"

[[handlers]]
name = "audit"
kind = "log"

[log]
format = "text"
level = "info"
EOF

echo "== seeding the database from fixtures/deliveries"
"$binary" replay --config "$work/config.toml" fixtures/deliveries >/dev/null

echo "== starting the daemon"
"$binary" serve --config "$work/config.toml" >"$work/daemon.log" 2>&1 &
daemon=$!
address=""
for _ in $(seq 1 200); do
    address="$(sed -n 's/.*listening.*address=\([0-9.:]*\).*/\1/p' "$work/daemon.log" | head -n1)"
    [[ -n "$address" ]] && break
    kill -0 "$daemon" 2>/dev/null || { cat "$work/daemon.log"; exit 1; }
    sleep 0.1
done
if [[ -z "$address" ]]; then
    echo "the daemon did not report its address" >&2
    cat "$work/daemon.log" >&2
    exit 1
fi
echo "daemon at $address"

# Credentials go through the description's security schemes: Basic for the webhook, the
# bearer token for the query and admin endpoints.
cat >"$work/schemathesis.toml" <<EOF
[auth.openapi.basic]
username = "schemathesis"
password = "$password"

[auth.openapi.bearer]
bearer = "$token"
EOF

# Every check that can hold for this API. Left out: positive_data_acceptance, since a body can
# match the schema and still be unusable (a customer id that differs from the embedded one is a
# documented 422), and negative_data_rejection, since it sends unknown headers and expects a
# refusal where HTTP says to ignore them.
checks="not_a_server_error,status_code_conformance,content_type_conformance"
checks+=",response_schema_conformance,response_headers_conformance,missing_required_header"
checks+=",unsupported_method,allow_header_conformance,use_after_free"
checks+=",ensure_resource_availability,ignored_auth"

echo "== schemathesis"
status=0
# From the temporary folder, where schemathesis leaves its cache and report. One worker: with
# several, Python 3.11's parser can fail inside hypothesis ("AST constructor recursion depth
# mismatch"), an error of the tool rather than of the daemon.
# shellcheck disable=SC2086 # SCHEMATHESIS_ARGS is a list of options
(cd "$work" && "$venv/bin/schemathesis" --config-file "$work/schemathesis.toml" run \
    "http://$address/openapi.json" \
    --checks "$checks" \
    --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-100}" \
    --workers 1 \
    --no-color \
    --generation-database none \
    ${SCHEMATHESIS_ARGS:-}) || status=$?

if [[ $status -ne 0 ]]; then
    echo "== daemon log (last 50 lines)"
    tail -n 50 "$work/daemon.log"
fi
exit "$status"
