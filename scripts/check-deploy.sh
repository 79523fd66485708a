#!/usr/bin/env bash
# Lints the deployment files without a Docker engine: hadolint on the Dockerfile (any warning fails);
# `docker compose config` on compose.yaml, with and without the `scale` profile (any warning fails);
# and that compose refuses to start without POSTGRES_PASSWORD and publishes the API on 127.0.0.1 only.
# deploy/nginx.conf is run in a real nginx by scripts/deploy-test.sh.
# The tools (pinned, from PyPI): scripts/lib/deploy-tools.sh.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() {
    echo "check-deploy: $*" >&2
    exit 1
}

# shellcheck source=scripts/lib/deploy-tools.sh
source scripts/lib/deploy-tools.sh

echo "== hadolint $("$HADOLINT" --version | awk '{print $NF}'): Dockerfile"
"$HADOLINT" --no-color --failure-threshold warning Dockerfile
echo "ok"

# `config -q` prints nothing on success; anything on stderr (an unset variable, an obsolete key) fails.
compose_config() {
    local label=$1
    shift
    echo "== docker compose $COMPOSE_VERSION: $label"
    local stderr
    stderr=$(mktemp)
    if ! "$COMPOSE" -f compose.yaml "$@" config -q 2>"$stderr"; then
        cat "$stderr" >&2
        rm -f "$stderr"
        die "compose.yaml is invalid ($label)"
    fi
    if [[ -s "$stderr" ]]; then
        cat "$stderr" >&2
        rm -f "$stderr"
        die "compose.yaml has warnings ($label)"
    fi
    rm -f "$stderr"
    echo "ok"
}

COMPOSE_VERSION=$("$COMPOSE" version --short)
# Required, without a default: a stand-in for the checks, never a value to deploy with.
export POSTGRES_PASSWORD=check-deploy-placeholder
compose_config "config (default services)"
compose_config "config --profile scale" --profile scale

echo "== docker compose: POSTGRES_PASSWORD is required"
if env -u POSTGRES_PASSWORD "$COMPOSE" -f compose.yaml config -q 2>/dev/null; then
    die "compose.yaml accepts a missing POSTGRES_PASSWORD"
fi
echo "ok"

echo "== docker compose: the API is published on 127.0.0.1 only"
published=$(env -u API_BIND "$COMPOSE" -f compose.yaml config --format json \
    | "$PYTHON" -c 'import json, sys
ports = json.load(sys.stdin)["services"]["api"].get("ports", [])
print(" ".join(sorted({p.get("host_ip") or "0.0.0.0" for p in ports})))')
[[ "$published" == "127.0.0.1" ]] || die "the api service is published on '$published', not 127.0.0.1"
echo "ok"

echo "check-deploy: all checks passed"
