#!/usr/bin/env bash
# Mutation testing with cargo-mutants, pinned to 27.1.0. Not in CI: even one file's mutants take an
# hour or more on the shared 2-core machine (the whole of src/ would take a day or two), so it is run
# by hand over the code a change touched. Pass what to mutate and which tests to run, e.g.
#   scripts/mutants.sh --file src/store/publisher.rs -- --lib --test api -- feed changes::
# Each mutant builds incrementally in CARGO_TARGET_DIR (default /tmp/mutants-target) and runs at
# the lowest priority, one at a time, so other builds on the machine keep going.
set -euo pipefail
cd "$(dirname "$0")/.."

version=27.1.0
if ! cargo mutants --version 2>/dev/null | grep -qF "$version"; then
  cargo install --locked cargo-mutants --version "$version"
fi

CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/mutants-target}" \
  exec nice -n 19 cargo mutants --jobs 1 --timeout 240 --build-timeout 600 "$@"
