#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets (fuzz/), each for a given time, and
# keeps any input that crashes one in fuzz/regressions/, where
# tests/fuzz_regressions.rs replays it with every test run.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/fuzz.sh [--seconds N] [--dev] [TARGET ...]

Builds the fuzz targets with cargo-fuzz and the nightly toolchain, then
runs each TARGET (default: all of them) for N seconds (default 60).
--dev builds without optimizations: several times faster to build, slower
to run; for short runs such as CI's. Prints
each target's executions and what it found. New inputs that reach new code
go to fuzz/corpus/TARGET (not committed); an input that crashes a target
is copied to fuzz/regressions/TARGET/ and the script fails: commit that
file with the fix.

Targets: headers publisher patches chunks session_file recorded_rows

Needs the nightly toolchain (rustup toolchain install nightly); installs
cargo-fuzz with cargo when it is missing.
USAGE
}

seconds=60
profile=()
targets=()
while [[ $# -gt 0 ]]; do
    case $1 in
        -h | --help)
            usage
            exit 0
            ;;
        --seconds)
            seconds=${2:?--seconds needs a number}
            shift 2
            ;;
        --dev)
            profile=(--dev)
            shift
            ;;
        -*)
            usage >&2
            exit 2
            ;;
        *)
            targets+=("$1")
            shift
            ;;
    esac
done
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(headers publisher patches chunks session_file recorded_rows)
fi

cd "$(dirname "$0")/.."

say() {
    printf 'fuzz.sh: %s\n' "$*" >&2
}

if ! cargo +nightly --version >/dev/null 2>&1; then
    say "the nightly toolchain is missing: rustup toolchain install nightly"
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# No sanitizer: the Rust code has no memory errors for one to find beyond
# what the compiler checks, and builds and runs are several times faster;
# coverage guides the search all the same. Panics (and so overflows, with
# debug assertions on) are the crashes.
cargo +nightly fuzz build ${profile[@]+"${profile[@]}"} --sanitizer none --debug-assertions

status=0
printf '| target | seconds | executions | corpus entries | crashes |\n| --- | ---: | ---: | ---: | ---: |\n'
for target in "${targets[@]}"; do
    corpus=fuzz/corpus/$target
    kept=fuzz/regressions/$target
    mkdir -p "$corpus" "$kept" "fuzz/artifacts/$target"
    log=$(mktemp)
    if cargo +nightly fuzz run ${profile[@]+"${profile[@]}"} --sanitizer none --debug-assertions \
        "$target" "$corpus" "$kept" -- \
        -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048 >"$log" 2>&1; then
        crashes=0
    else
        crashes=0
        for found in "fuzz/artifacts/$target"/*; do
            [[ -e $found ]] || continue
            cp "$found" "$kept/"
            say "$target crashed on $found; kept as $kept/$(basename "$found")"
            crashes=$((crashes + 1))
        done
        if [[ $crashes -eq 0 ]]; then
            tail -n 30 "$log" >&2
            say "$target failed without a crash input"
            crashes=1
        fi
        status=1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    entries=$(find "$corpus" -type f | wc -l)
    printf '| %s | %s | %s | %s | %s |\n' "$target" "$seconds" "${runs:-?}" "$entries" "$crashes"
    rm -f "$log"
done
exit "$status"
