#!/usr/bin/env bash
# Runs the whole test suite: unit, property and integration tests of the
# server (against the real server on free local ports), then the Python
# client's tests (clients/python) against the built binary, including a
# session shared by the Rust and Python clients, and the Multi-User
# compatibility package's (clients/multiuser), including the unmodified
# Multi-User add-on in two real Blenders.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/test.sh [--help]

Builds the server and runs every test. Needs Rust (cargo), a C/C++
compiler (libzmq is built from the bundled sources on the first run) and
Python 3 with pip: the Python tests run in a virtual environment that this
script creates in .venv. The Blender 3.4 tests also need blender and
xvfb-run (.ci/run installs them); without them they are reported as
skipped. The Blender 4.5 and 5.0 tests need Python 3.11: they run PyPI's
bpy (Blender as a Python module), which this script installs once into
$REPLICATION_BLENDER_SITE (default .venv/blender-site; about 2 GB) and
reuses; where it cannot be installed they are reported as skipped.
USAGE
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "") ;;
    *) usage >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
root=$PWD
venv=$root/.venv

cargo build --locked

# A virtual environment with the Python client and pytest. An environment
# that no longer runs (its Python was moved or removed) is made again.
if ! "$venv/bin/python" -c "" 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv" || {
        echo "error: python3 -m venv failed; install the venv module" \
            "(Debian: apt-get install python3-venv)" >&2
        exit 1
    }
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --editable "$root/clients/python[test]" \
    --editable "$root/clients/multiuser[test]"

export REPLICATION_SERVE_BIN=$root/target/debug/replication-serve
export REPLICATION_PYTHON=$venv/bin/python
export REPLICATION_BLENDER_SITE=${REPLICATION_BLENDER_SITE:-$venv/blender-site}

# Blender 4.5 and 5.0 as Python modules, for the Multi-User extension's
# tests: large downloads, made once and kept.
"$venv/bin/python" "$root/clients/multiuser/tests/bpy_module.py" ||
    echo "warning: Blender as a Python module could not be installed;" \
        "the Blender 4.5 and 5.0 tests will be skipped" >&2

cargo test --all-targets --locked

# Each package's tests run on their own: both have a conftest.py, which
# pytest imports under the same module name.
status=0
for tests in "$root/clients/python/tests" "$root/clients/multiuser/tests"; do
    code=0
    "$venv/bin/python" -m pytest -q -rs "$tests" || code=$?
    if [ "$code" -eq 5 ]; then
        echo "error: pytest collected no tests in $tests" >&2
        code=1
    fi
    if [ "$code" -ne 0 ]; then
        status=$code
    fi
done
exit "$status"
