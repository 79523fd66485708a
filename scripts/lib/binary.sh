# Sourced by the scripts that run the real binary: builds it (debug; PROFILE=release for a release
# build) and sets BIN to its path.

PROFILE="${PROFILE:-debug}"
if [ "$PROFILE" = release ]; then
  cargo build --locked --release --bin signal-scans
else
  cargo build --locked --bin signal-scans
fi
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
BIN="$TARGET_DIR/$PROFILE/signal-scans"
