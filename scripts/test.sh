#!/usr/bin/env bash
# Runs the whole test suite: unit, property and integration tests of the
# server (against the real server on free local ports).
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/test.sh [--help]

Builds the server and runs every test. Needs Rust (cargo) and a C/C++
compiler; libzmq is built from the bundled sources on the first run.
USAGE
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "") ;;
    *) usage >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
cargo test --all-targets --locked
