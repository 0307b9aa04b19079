#!/usr/bin/env bash
# Builds replication-serve when needed and starts it in this terminal.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/start-server.sh [SERVER OPTIONS]

Builds replication-serve (release mode) if it is missing or older than its
sources, prints the four TCP ports your users need, and starts the server
in this terminal with its admin console (type 'help').

Server options are passed on as they are, for example:

  scripts/start-server.sh -p 5555 -pwd MY-ADMIN-PASSWORD -t 5000 -l INFO -lf server.log

Settings can also come from the environment, with the names the Docker
image uses (port, password, server_password, timeout, log_level, in lower
or upper case) or the server's own REPLICATION_* variables:

  port=5555 password=MY-ADMIN-PASSWORD log_level=DEBUG scripts/start-server.sh

or from a config file: --config config/replication.toml.

Every server option: target/release/replication-serve --help
Stop the server with 'exit' at its console, Ctrl+C, or SIGTERM.
USAGE
}

case ${1:-} in
    -h | --help)
        usage
        exit 0
        ;;
    "" | -*) ;;
    *)
        printf 'start-server.sh: unexpected argument %s (server options start with -)\n\n' "$1" >&2
        usage >&2
        exit 2
        ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release/replication-serve"

stale() {
    [[ ! -x $bin ]] ||
        [[ -n $(find "$root/src" "$root/Cargo.toml" "$root/Cargo.lock" -newer "$bin" -print 2>/dev/null | head -n 1) ]]
}

if stale; then
    if ! command -v cargo >/dev/null; then
        echo "start-server.sh: cargo not found: install Rust (rustup), then run this again" >&2
        exit 1
    fi
    echo "start-server.sh: building replication-serve (the first build takes a few minutes)..." >&2
    cargo build --release --locked --bin replication-serve --manifest-path "$root/Cargo.toml" >&2
    # cargo leaves the binary alone when nothing it depends on changed.
    touch "$bin"
fi

# Every user holds four connections, each an open file: let the server use
# all this shell may give it (it raises its own soft limit to what its
# limits need, and says so when the hard limit is too low).
ulimit -S -n "$(ulimit -H -n)" 2>/dev/null || true

# The Docker image's entrypoint turns the environment variables into
# options, checks the settings, prints the ports and becomes the server.
PATH="$(dirname "$bin"):$PATH" exec "$root/docker/entrypoint.sh" "$@"
