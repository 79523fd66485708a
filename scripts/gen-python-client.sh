#!/usr/bin/env bash
# Generates the typed Python client in clients/python/ from the OpenAPI document the real service
# serves at /openapi.json, with openapi-python-client (pinned, in its own virtualenv).
#
#   scripts/gen-python-client.sh           # regenerate clients/python/ (then commit it)
#   scripts/gen-python-client.sh --check   # CI: fail when clients/python/ differs from a fresh generation
#
# Warnings fail the generation: a document the generator cannot fully use is fixed in
# src/http/openapi/ (and the routes' attributes), never in the generated code.
set -euo pipefail
cd "$(dirname "$0")/.."

GENERATOR_VERSION=0.29.1
# The generator formats its output with ruff; pinned too, so a regeneration is byte-for-byte stable.
RUFF_VERSION=0.17.6
CLIENT_DIR=clients/python

CHECK=false
case "${1:-}" in
  --check) CHECK=true ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

TOOLS="${XDG_CACHE_HOME:-$HOME/.cache}/signal-scans-tools"
VENV="$TOOLS/openapi-python-client-$GENERATOR_VERSION-ruff-$RUFF_VERSION"
if [ ! -x "$VENV/bin/openapi-python-client" ] || [ ! -x "$VENV/bin/ruff" ]; then
  echo "installing openapi-python-client $GENERATOR_VERSION into $VENV"
  rm -rf "$VENV"
  mkdir -p "$TOOLS"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "openapi-python-client==$GENERATOR_VERSION" "ruff==$RUFF_VERSION"
fi

# shellcheck source=scripts/lib/demo-service.sh
source scripts/lib/demo-service.sh
python3 -c 'import sys, urllib.request; sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1]).read())' \
  "$BASE_URL/openapi.json" >"$WORK/openapi.json"

# The change stream is followed by a module written by hand (scripts/python-client/changes.py): a
# generated operation reads a whole body before it parses it, and a stream's body does not end.
python3 - "$WORK/openapi.json" <<'PY'
import json, sys
path = sys.argv[1]
document = json.load(open(path))
del document["paths"]["/v1/accounts/{accountGroupId}/signals/scans/changes"]
# The generator documents a parameter by its schema's description alone: a parameter's own (what an
# Idempotency-Key is for, a page's limit) would not reach the function's docstring.
for item in document["paths"].values():
    for operation in item.values():
        for parameter in operation.get("parameters", []):
            # (Not beside a `$ref`: the generator keeps the referenced schema's description.)
            if "description" in parameter and "$ref" not in parameter["schema"]:
                parameter["schema"]["description"] = parameter["description"]
json.dump(document, open(path, "w"))
PY

OUTPUT="$CLIENT_DIR"
if [ "$CHECK" = true ]; then
  OUTPUT="$WORK/python"
fi
# The generator's post-hooks run ruff from PATH; ruff's cache would land in the output.
RUFF_NO_CACHE=true PATH="$VENV/bin:$PATH" "$VENV/bin/openapi-python-client" generate \
  --path "$WORK/openapi.json" \
  --config scripts/python-client/config.yml \
  --custom-template-path scripts/python-client/templates \
  --meta poetry \
  --output-path "$OUTPUT" \
  --overwrite \
  --fail-on-warning
cp scripts/python-client/changes.py "$OUTPUT/signal_scans_client/changes.py"
# The API key is never shown: attrs puts every field in a client's repr, and a logged client, or an
# error reporter that records local variables, would write the key out.
python3 - "$OUTPUT/signal_scans_client/client.py" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
field = "\n    token: str\n"
if text.count(field) != 1:
    sys.exit(f"{path}: no one `token: str` field to keep out of the repr")
open(path, "w").write(text.replace(field, "\n    token: str = field(repr=False)\n"))
PY

if [ "$CHECK" = true ]; then
  if ! diff -r -u "$CLIENT_DIR" "$OUTPUT"; then
    echo "$CLIENT_DIR differs from a fresh generation: run scripts/gen-python-client.sh and commit the result" >&2
    exit 1
  fi
  echo "$CLIENT_DIR matches a fresh generation from /openapi.json"
else
  echo "generated $CLIENT_DIR from $BASE_URL/openapi.json"
fi
