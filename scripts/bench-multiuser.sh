#!/usr/bin/env bash
# Multi-User in real Blender: replication-serve with this project's package
# against the add-on's own library and server (clients/multiuser/bench).
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/bench-multiuser.sh [--moves N] [--vertices N] [--objects N]
                                  [--only ours|reference] [--json FILE]

Builds the release server, then runs the same scene in two real Blenders
(Debian's blender under xvfb-run) with each library: the late join of a
scene with a 1,000,000-vertex mesh and 10,000 objects, 200 moves timed from
one Blender to the other, and the bytes a one-vertex edit sends. Needs what
scripts/test.sh needs (it makes .venv the same way) and the Multi-User
releases beside the repository. Takes about half an hour.
USAGE
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
esac

cd "$(dirname "$0")/.."
root=$PWD
venv=$root/.venv

cargo build --release --locked
cargo build --locked
if ! "$venv/bin/python" -c "" 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --editable "$root/clients/python[test]" \
    --editable "$root/clients/multiuser[test]"
export REPLICATION_SERVE_BIN=$root/target/debug/replication-serve
exec "$venv/bin/python" "$root/clients/multiuser/bench/blender_bench.py" "$@"
