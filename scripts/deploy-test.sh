#!/usr/bin/env bash
# The scale profile of compose.yaml run as written, without Docker: migrate, bootstrap, api and the
# two api-replica, each with the command and environment `docker compose config` gives it, against
# this machine's PostgreSQL and Redis, behind deploy/nginx.conf in a real nginx (Debian's, installed
# with apt when missing). See scripts/deploy_test.py for what it checks.
#
#   scripts/deploy-test.sh                  # PostgreSQL at postgres://postgres@127.0.0.1:5432, Redis at 127.0.0.1:6379
#   DEPLOY_TEST_POSTGRES=postgres://user@host:5432 DEPLOY_TEST_REDIS=redis://host:6379 scripts/deploy-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "deploy-test: $*" >&2
  exit 1
}

if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  echo "installing nginx"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

# shellcheck source=scripts/lib/deploy-tools.sh
source scripts/lib/deploy-tools.sh
# shellcheck source=scripts/lib/binary.sh
source scripts/lib/binary.sh

env NGINX_BIN="$NGINX" BIN="$BIN" COMPOSE="$COMPOSE" python3 scripts/deploy_test.py
