#!/usr/bin/env bash
# Property-based API testing with schemathesis: runs the real service (debug build, embedded SQLite)
# and tests it against the OpenAPI document it serves at /openapi.json, with every check enabled.
# Any violation fails the script.
#
#   scripts/schemathesis.sh                       # at most 100 examples per operation and phase
#   SCHEMATHESIS_MAX_EXAMPLES=200 scripts/schemathesis.sh
#   SCHEMATHESIS_PROFILE=release scripts/schemathesis.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-100}"
PROFILE="${SCHEMATHESIS_PROFILE:-debug}"
GROUP=507f1f77bcf86cd799439011

# schemathesis, in its own virtualenv, installed once.
TOOLS="${XDG_CACHE_HOME:-$HOME/.cache}/signal-scans-tools"
VENV="$TOOLS/schemathesis-$SCHEMATHESIS_VERSION"
if [ ! -x "$VENV/bin/schemathesis" ]; then
  echo "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  rm -rf "$VENV"
  mkdir -p "$TOOLS"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# The service binary.
# shellcheck source=scripts/lib/binary.sh
source scripts/lib/binary.sh

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export DATABASE_URL="sqlite://$WORK/s.db"
export LISTEN_ADDR="127.0.0.1:$PORT"
# Limits high enough not to interfere: schemathesis sends many requests, some without a key.
export RATE_LIMIT_PER_SECOND=100000
export RATE_LIMIT_BURST=100000
export AUTH_FAILURES_PER_MINUTE=100000
# A change stream is endless by design: each one ends after a second here, so every generated
# request to it gets a whole response to check.
export STREAM_MAX_AGE_MS=1000
export RUST_LOG="${RUST_LOG:-warn}"

# A key with every permission on every account group (so the runner's routes are reached too), and
# a few scans in each status.
KEY="$("$BIN" keys create --name schemathesis --permission signals:read --permission signals:write \
  --permission signals:run --all-account-groups --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')"
for status in queued queued running running completed failed cancelled; do
  "$BIN" scans create --account-group "$GROUP" --status "$status" --json >/dev/null
done

"$BIN" serve >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
  if "$BIN" healthcheck >/dev/null 2>&1; then
    break
  fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "the service exited:" >&2
    cat "$WORK/server.log" >&2
    exit 1
  fi
  sleep 0.1
done
"$BIN" healthcheck

# A valid cancel of a completed or failed scan is refused with the documented 422: a refusal by the
# scan's state (like a 409), not by the request's data, so positive_data_acceptance accepts it there.
cat >"$WORK/schemathesis.toml" <<'TOML'
[[operations]]
include-operation-id = "cancelSignalScan"
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]

# A runner's move of a scan whose status does not allow it is the documented 422, as for a cancel;
# so is an Idempotency-Key reused for another account group.
[[operations]]
include-operation-id = "startSignalScan"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "422", "429", "5xx"]

[[operations]]
include-operation-id = "completeSignalScan"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "422", "429", "5xx"]

[[operations]]
include-operation-id = "failSignalScan"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "422", "429", "5xx"]

[[operations]]
include-operation-id = "createSignalScan"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "422", "429", "5xx"]

# A cursor that matches the documented pattern may still be malformed (400, e.g. a leading zero), or
# no place in this database's change history (410: one this feed never issued).
[[operations]]
include-operation-id = "followSignalScanChanges"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "410", "429"]
TOML

echo "== schemathesis $SCHEMATHESIS_VERSION against http://$LISTEN_ADDR/openapi.json"
status=0
"$VENV/bin/schemathesis" --config-file "$WORK/schemathesis.toml" run "http://$LISTEN_ADDR/openapi.json" \
  --checks all \
  --header "Authorization: Bearer $KEY" \
  --max-examples "$MAX_EXAMPLES" \
  --workers 1 \
  --request-timeout 10 \
  --generation-database none \
  --no-color || status=$?
if [ "$status" -ne 0 ]; then
  echo "schemathesis found violations (exit $status); the service's log:" >&2
  tail -n 50 "$WORK/server.log" >&2
fi
exit "$status"
