#!/usr/bin/env bash
# Installs the generated Python client (clients/python) into a fresh virtual environment and runs
# scripts/python-client/test_client.py with it against the real service with demo data: a cancel
# of a queued scan, reading it back, and typed error objects for a 422, a 404, a 400 and a 401. Answers
# the service never gives (a proxy's or a CDN's) come from small fake servers the test starts itself.
set -euo pipefail
cd "$(dirname "$0")/.."

# Change streams end after 1.5 s here, so that the client's change-stream helper is seen to
# reconnect (tests 12 and 27).
export STREAM_MAX_AGE_MS=1500
# shellcheck source=scripts/lib/demo-service.sh
source scripts/lib/demo-service.sh

python3 -m venv "$WORK/venv"
# h2: httpx's `http2` extra, for the test that follows changes over HTTP/2 (test 30).
"$WORK/venv/bin/pip" install --quiet --disable-pip-version-check ./clients/python "h2>=4,<5"
export SIGNAL_SCANS_BIN="$BIN"
# From outside the repository, so the installed package is what is imported.
(cd "$WORK" && "$WORK/venv/bin/python" "$OLDPWD/scripts/python-client/test_client.py")
