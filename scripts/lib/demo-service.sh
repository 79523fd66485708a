# Sourced by the scripts that need the real service running: builds the binary, starts
# `signal-scans serve --demo` on a free port of 127.0.0.1 with a fresh SQLite database, waits until
# it answers, and reads the demo data from what it prints. Stops it on exit.
#
# Sets: BIN, WORK (a temporary folder, removed on exit), BASE_URL, DEMO_KEY, DEMO_GROUP,
# DEMO_QUEUED_SCAN, DEMO_COMPLETED_SCAN, DEMO_RUNNER_KEY. PROFILE=release uses a release build (default: debug).
# A script that needs its own clean-up on exit calls demo_service_stop from its trap.

# shellcheck source=scripts/lib/binary.sh
source scripts/lib/binary.sh

WORK="$(mktemp -d)"
DEMO_SERVICE_PID=""
demo_service_stop() {
  if [ -n "$DEMO_SERVICE_PID" ] && kill -0 "$DEMO_SERVICE_PID" 2>/dev/null; then
    kill "$DEMO_SERVICE_PID" 2>/dev/null || true
    wait "$DEMO_SERVICE_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap demo_service_stop EXIT INT TERM

DEMO_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BASE_URL="http://127.0.0.1:$DEMO_PORT"

DATABASE_URL="sqlite://$WORK/demo.db" LISTEN_ADDR="127.0.0.1:$DEMO_PORT" RUST_LOG="${RUST_LOG:-warn}" \
  "$BIN" serve --demo >"$WORK/demo.out" 2>"$WORK/server.log" &
DEMO_SERVICE_PID=$!
for _ in $(seq 1 100); do
  if LISTEN_ADDR="127.0.0.1:$DEMO_PORT" "$BIN" healthcheck >/dev/null 2>&1 && grep -q '^# 400' "$WORK/demo.out"; then
    break
  fi
  if ! kill -0 "$DEMO_SERVICE_PID" 2>/dev/null; then
    echo "the service exited:" >&2
    cat "$WORK/server.log" >&2
    exit 1
  fi
  sleep 0.1
done
LISTEN_ADDR="127.0.0.1:$DEMO_PORT" "$BIN" healthcheck

# The demo prints one curl command per outcome, each after a "# <status>: ..." line; the key and
# the ids are read from the commands for 200 (a queued scan) and 422 (a completed scan).
demo_command() {
  grep -A1 "^# $1" "$WORK/demo.out" | tail -n 1
}
DEMO_KEY="$(demo_command '200: cancel a queued scan' | sed -E "s/.*Bearer ([^']+)'.*/\1/")"
DEMO_GROUP="$(demo_command '200: cancel a queued scan' | sed -E 's#.*/v1/accounts/([0-9a-f]+)/.*#\1#')"
DEMO_QUEUED_SCAN="$(demo_command '200: cancel a queued scan' | sed -E 's#.*/scans/([0-9a-f]+)/cancel.*#\1#')"
DEMO_COMPLETED_SCAN="$(demo_command '422: a completed' | sed -E 's#.*/scans/([0-9a-f]+)/cancel.*#\1#')"
DEMO_RUNNER_KEY="$(demo_command '200: the runner completes' | sed -E "s/.*Bearer ([^']+)'.*/\1/")"
for value in "$DEMO_KEY" "$DEMO_GROUP" "$DEMO_QUEUED_SCAN" "$DEMO_COMPLETED_SCAN" "$DEMO_RUNNER_KEY"; do
  if [ -z "$value" ] || [[ "$value" == *" "* ]]; then
    echo "cannot read the demo data from serve --demo's output:" >&2
    cat "$WORK/demo.out" >&2
    exit 1
  fi
done
export BASE_URL DEMO_KEY DEMO_GROUP DEMO_QUEUED_SCAN DEMO_COMPLETED_SCAN DEMO_RUNNER_KEY
