#!/usr/bin/env bash
# Starts replication-serve from the environment variables people already use
# with the reference server's image:
#
#   port, log_level, password, server_password, timeout
#
# each also in upper case (PORT, LOG_LEVEL, ...). They become the server's
# own REPLICATION_* variables, never command-line options, so that no
# password shows in the process list (ps, /proc/PID/cmdline); a mistake in
# one is reported under the name that was set. The REPLICATION_* variables
# work as well. Arguments given after the image
# name are server options and win over the environment; they may start with
# the reference program name (`replication.serve -p 5555 -pwd admin`), as
# pasted into a cloud console. Any other first argument is run as a command
# instead (`docker run -it IMAGE bash`).
#
# `entrypoint.sh --health-check` asks the running server whether it serves,
# on the port it was started with (Docker's HEALTHCHECK).
#
# The server replaces this script (exec), so it is PID 1 in a container:
# `docker stop`'s SIGTERM reaches it directly and it shuts down cleanly.
#
# Also used by scripts/start-server.sh, so the same variables work there.
# Written for bash 3.2 and later (macOS ships 3.2).
set -euo pipefail

readonly program=replication-serve
# Where the server's port and bind address are noted for --health-check,
# when set (the image sets it). Without it, the health check takes them from
# the environment, which misses a port given as an argument.
readonly target_file="${HEALTH_CHECK_FILE:-}"

fail() {
    printf '%s: %s\n' "$program" "$*" >&2
    exit 2
}

# "REPLICATION_X=name" for each variable set under a reference name, to
# name it in the server's messages.
mapped=()

# take TARGET NAME...: the value of whichever of the variables NAME... is
# set becomes the server's variable TARGET. Variables set to different
# values are refused, since it cannot be known which one was meant.
take() {
    local target=$1 name value="" source=""
    shift
    for name in "$@"; do
        [[ -n ${!name+set} ]] || continue
        if [[ -n $source && ${!name} != "$value" ]]; then
            fail "$source and $name are both set, to different values: set only one"
        fi
        value=${!name}
        source=$name
    done
    if [[ -n $source && $source != "$target" ]]; then
        export "$target=$value"
        mapped+=("$target=$source")
    fi
}

take REPLICATION_PORT port PORT REPLICATION_PORT
take REPLICATION_ADMIN_PASSWORD password PASSWORD REPLICATION_ADMIN_PASSWORD
take REPLICATION_SERVER_PASSWORD server_password SERVER_PASSWORD REPLICATION_SERVER_PASSWORD
take REPLICATION_TIMEOUT timeout TIMEOUT REPLICATION_TIMEOUT
take REPLICATION_LOG_LEVEL log_level LOG_LEVEL REPLICATION_LOG_LEVEL

case ${1:-} in
    replication.serve | replication.server | "$program") shift ;;
    python | python3)
        if [[ ${2:-} == -m && ${3:-} == replication.server ]]; then
            shift 3
        fi
        ;;
esac
if [[ $# -gt 0 && $1 != -* ]]; then
    exec "$@"
fi

health_check=false
informational=false
for arg in "$@"; do
    case $arg in
        --health-check) health_check=true ;;
        --print-config | -h | --help | -V | --version) informational=true ;;
    esac
done

if $health_check; then
    noted=()
    if [[ -n $target_file && -r $target_file ]]; then
        read -r noted_port noted_bind <"$target_file" || true
        [[ -z ${noted_port:-} ]] || noted+=(--port "$noted_port")
        [[ -z ${noted_bind:-} ]] || noted+=(--bind "$noted_bind")
    fi
    # Later options win, so the noted port and address come last.
    exec "$program" "$@" ${noted[@]+"${noted[@]}"}
fi

if $informational; then
    exec "$program" "$@"
fi

# Checks every value before starting, and learns the port: the server
# prints its effective configuration and exits. A mistake is reported by the
# server itself, in one line; the variables set here are named there as
# they were set (timeout, not REPLICATION_TIMEOUT).
status=0
if errors=$(mktemp 2>/dev/null); then
    effective=$("$program" "$@" --print-config 2>"$errors") || status=$?
    message=$(<"$errors")
    rm -f "$errors"
    if [[ $status -ne 0 ]]; then
        for item in ${mapped[@]+"${mapped[@]}"}; do
            message=${message//"${item%%=*}"/"${item#*=}"}
        done
        printf '%s\n' "$message" >&2
        exit "$status"
    fi
else
    effective=$("$program" "$@" --print-config) || exit $?
fi

# Local names differ from the variables read above (port is one of them),
# which stay in the environment the server inherits.
base=$(sed -n 's/^port = \([0-9]*\).*/\1/p' <<<"$effective")
address=$(sed -n 's/^bind = "\([^"]*\)".*/\1/p' <<<"$effective")
if [[ -n $base ]]; then
    printf '%s: clients need TCP ports %s, %s, %s and %s (commands, subscriber, publisher, heartbeat)\n' \
        "$program" "$base" "$((base + 1))" "$((base + 2))" "$((base + 3))" >&2
    if [[ -n $target_file ]]; then
        printf '%s %s\n' "$base" "$address" >"$target_file" ||
            printf '%s: cannot write %s; the health check will use the environment\n' "$program" "$target_file" >&2
    fi
fi

exec "$program" "$@"
