#!/usr/bin/env bash
# Drives a real browser (Debian's chromium, through chromium-driver and Selenium) through the API
# reference at /docs of the real service with demo data: see scripts/browser_test.py for what it
# checks. Installs chromium and chromium-driver with apt when they are missing.
#
#   scripts/browser-test.sh            # screenshots go to target/ci-artifacts/
#   ARTIFACTS=/some/folder scripts/browser-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# 4.52.0 requires a certifi newer than any published.
SELENIUM_VERSION=4.51.0
ARTIFACTS="${ARTIFACTS:-target/ci-artifacts}"

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "installing chromium and chromium-driver"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

TOOLS="${XDG_CACHE_HOME:-$HOME/.cache}/signal-scans-tools"
VENV="$TOOLS/selenium-$SELENIUM_VERSION"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import selenium' 2>/dev/null; then
  echo "installing selenium $SELENIUM_VERSION into $VENV"
  rm -rf "$VENV"
  mkdir -p "$TOOLS"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "selenium==$SELENIUM_VERSION"
fi

# shellcheck source=scripts/lib/demo-service.sh
source scripts/lib/demo-service.sh

mkdir -p "$ARTIFACTS"
# Selenium Manager (which would look for or download a driver, and report usage) stays off: the
# driver is chromium-driver's, named explicitly.
SE_OFFLINE=true SE_AVOID_STATS=true CHROMIUM="$(command -v chromium)" CHROMEDRIVER="$(command -v chromedriver)" \
  ARTIFACTS="$ARTIFACTS" "$VENV/bin/python" scripts/browser_test.py
