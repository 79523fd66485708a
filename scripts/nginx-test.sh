#!/usr/bin/env bash
# Runs deploy/nginx.conf in a real nginx (Debian's, installed with apt when missing) in front of the
# real service with demo data, and checks what a client of `docker compose --profile scale` gets:
# see scripts/nginx_test.py. The file is taken as it is, but for what only Docker has, each
# replaced exactly once (or the run fails, so a change to the file is seen here): Docker's DNS
# (`resolver`, `resolve`, the name api-replica) becomes two local replicas, the live service and an
# address that refuses connections; port 80, the user and the log paths become the test's own.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  echo "installing nginx"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

# shellcheck source=scripts/lib/demo-service.sh
source scripts/lib/demo-service.sh

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
LB_PORT="$(free_port)"
# Bound and closed again: nothing listens there, so a connection to it is refused.
REFUSING_PORT="$(free_port)"

NGINX_DIR="$WORK/nginx"
mkdir -p "$NGINX_DIR/logs"
python3 - "$NGINX_DIR" "$LB_PORT" "$DEMO_PORT" "$REFUSING_PORT" "$(id -un)" <<'PY'
import sys
folder, lb_port, live_port, refusing_port, user = sys.argv[1:]
text = open("deploy/nginx.conf").read()
for old, new in [
    ("user nginx;", f"user {user};\npid {folder}/nginx.pid;"),
    ("error_log /dev/stderr warn;", f"error_log {folder}/logs/error.log warn;"),
    ("    resolver 127.0.0.11 valid=10s ipv6=off;\n", ""),
    ("access_log /dev/stdout json;", f"access_log {folder}/logs/access.log json;"),
    (
        "server api-replica:8080 resolve max_fails=3 fail_timeout=10s;",
        f"server 127.0.0.1:{refusing_port} max_fails=3 fail_timeout=10s;\n"
        f"        server 127.0.0.1:{live_port} max_fails=3 fail_timeout=10s;",
    ),
    ("listen 80;", f"listen 127.0.0.1:{lb_port};"),
    # Debian's nginx keeps its buffers' files under /var/lib/nginx, which only root may write.
    ("http {", "http {\n" + "".join(f"    {kind}_temp_path {folder}/{kind};\n"
                                    for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"])),
]:
    if text.count(old) != 1:
        sys.exit(f"nginx-test: deploy/nginx.conf no longer holds {old!r} once; update scripts/nginx-test.sh")
    text = text.replace(old, new)
open(f"{folder}/nginx.conf", "w").write(text)
PY

"$NGINX" -t -q -p "$NGINX_DIR" -c "$NGINX_DIR/nginx.conf"
"$NGINX" -p "$NGINX_DIR" -c "$NGINX_DIR/nginx.conf" -g 'daemon off;' &
NGINX_PID=$!
stop_all() {
  kill "$NGINX_PID" 2>/dev/null || true
  wait "$NGINX_PID" 2>/dev/null || true
  demo_service_stop
}
trap stop_all EXIT INT TERM

LB_URL="http://127.0.0.1:$LB_PORT" NGINX_LOGS="$NGINX_DIR/logs" REFUSING_PORT="$REFUSING_PORT" \
  DEMO_SERVICE_PID="$DEMO_SERVICE_PID" python3 scripts/nginx_test.py
