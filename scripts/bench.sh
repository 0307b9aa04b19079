#!/usr/bin/env bash
# Builds in release mode and runs every benchmark: the load scenarios of
# replication-bench against a real server process, then the Criterion
# micro-benchmarks of the hot paths. Takes a few minutes.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/bench.sh [--runs N] [--no-micro] [--help]

  --runs N     runs of each load scenario (default 3); the table shows the
               median and the spread
  --no-micro   skip the Criterion micro-benchmarks
USAGE
}

runs=3
micro=1
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --runs) runs="${2:?--runs needs a number}"; shift 2 ;;
        --no-micro) micro=0; shift ;;
        *) usage >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
cargo build --release --locked --bin replication-serve --bin replication-bench
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -sr)"
./target/release/replication-bench --runs "$runs"
if [ "$micro" = 1 ]; then
    cargo bench --locked --bench hot_paths -- --noplot --warm-up-time 1 --measurement-time 3
fi
