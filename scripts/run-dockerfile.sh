#!/usr/bin/env bash
# Builds the replication-serve Docker image from this repository and runs it.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/run-dockerfile.sh [OPTIONS]

Builds the replication-serve Docker image from this repository, then runs
it with the four TCP ports published and the session data in a volume.
Needs Docker, and a user allowed to use it.

Options (the defaults are the server's):
  -p, --port PORT               base port; publishes PORT to PORT+3 [5555]
  -pwd, --password PASSWORD     admin password [admin: change it]
  -spwd, --server-password PW   password every user must give [none]
  -t, --timeout MS              disconnect users silent this long [5000]
  -l, --log-level LEVEL         ERROR, WARNING, INFO or DEBUG [INFO]
  -d, --detach                  run in the background, restarted with the
                                machine; manage it with docker attach
      --fresh                   start with an empty session, after saving the
                                recorded scene to the volume's backups/
                                (not with --detach: see below)
      --name NAME               container name [replication-serve]
      --image TAG               image name [replication-serve]
      --volume NAME             volume for the data directory [replication-data]
      --no-build                run the image built before
  -h, --help                    show this help

What it runs, for the defaults:

  docker build -t replication-serve .
  docker run -it --ulimit nofile=65536:65536 -p 5555-5558:5555-5558 -e port=5555 \
      -e password -e timeout=5000 -e log_level=INFO -v replication-data:/data \
      replication-serve

The passwords go to docker, and from it to the server, through the
environment, not the command line, so other users of the machine cannot
read them in the process list. Every value is checked before anything is
built.

The scene is kept in the volume: a restart (docker restart, a reboot, the
server stopped with exit) comes back with it. To start a new scene, type
reset at the server's console (docker attach NAME), or run this script in
the foreground with --fresh. A detached container keeps its settings for
every restart, so --fresh there would empty the session again each time.

The image is built with BuildKit (Docker Engine 23 or later, or Docker
Desktop); this script asks for it with DOCKER_BUILDKIT=1.
USAGE
}

fail() {
    printf 'run-dockerfile.sh: %s\n' "$*" >&2
    exit 2
}

port=5555
admin_password=""
server_password=""
timeout=5000
log_level=INFO
detach=false
name=replication-serve
image=replication-serve
volume=replication-data
build=true
fresh=false

while [[ $# -gt 0 ]]; do
    option=$1
    case $option in
        -h | --help)
            usage
            exit 0
            ;;
        -d | --detach) detach=true ;;
        --no-build) build=false ;;
        --fresh) fresh=true ;;
        -p | --port | -pwd | --password | -spwd | --server-password | -t | --timeout | \
            -l | --log-level | --name | --image | --volume)
            [[ $# -ge 2 ]] || fail "$option needs a value"
            value=$2
            shift
            case $option in
                -p | --port) port=$value ;;
                -pwd | --password) admin_password=$value ;;
                -spwd | --server-password) server_password=$value ;;
                -t | --timeout) timeout=$value ;;
                -l | --log-level) log_level=$value ;;
                --name) name=$value ;;
                --image) image=$value ;;
                --volume) volume=$value ;;
            esac
            ;;
        *) fail "unknown option $option (see --help)" ;;
    esac
    shift
done

# Every value is checked here, before a build that takes minutes.
if [[ ! $port =~ ^[0-9]{1,5}$ ]] || ((10#$port < 1 || 10#$port > 65532)); then
    fail "--port $port: give a number from 1 to 65532 (the server uses it and the next three)"
fi
port=$((10#$port))
last=$((port + 3))
if [[ ! $timeout =~ ^[0-9]{1,9}$ ]] || ((10#$timeout < 100)); then
    fail "--timeout $timeout: give a number of milliseconds, at least 100 (the default is 5000)"
fi
timeout=$((10#$timeout))
case $(printf '%s' "$log_level" | tr '[:lower:]' '[:upper:]') in
    ERROR | WARNING | WARN | INFO | DEBUG) ;;
    *) fail "--log-level $log_level: give ERROR, WARNING, INFO or DEBUG" ;;
esac
for pair in "--name:$name" "--volume:$volume"; do
    if [[ ! ${pair#*:} =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]]; then
        fail "${pair%%:*} ${pair#*:}: use letters, digits, _ . and - (starting with a letter or digit)"
    fi
done
if [[ ! $image =~ ^[a-z0-9]+([._/-][a-z0-9]+)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$ ]]; then
    fail "--image $image: use lower-case letters, digits and . _ - /, with an optional :TAG"
fi
if $fresh && $detach; then
    fail "--fresh with --detach would start an empty session again at every restart: start detached without it, then type reset at the console (docker attach $name)"
fi

command -v docker >/dev/null || fail "docker not found: install Docker first"
docker info >/dev/null 2>&1 ||
    fail "cannot reach the Docker engine: is it running, and may this user use it (or try sudo)?"

root=$(cd "$(dirname "$0")/.." && pwd)
if $build; then
    # The Dockerfile's cache mounts need BuildKit; older engines build with
    # it only when asked.
    DOCKER_BUILDKIT=1 docker build -t "$image" "$root"
fi

if docker container inspect "$name" >/dev/null 2>&1; then
    fail "a container named $name exists already: remove it with 'docker rm -f $name', or choose another --name"
fi

# The server needs four open files per user (docs/hosting.md, "Open
# files"); the container's hard limit is the ceiling it can raise to.
run=(docker run --name "$name"
    --ulimit "nofile=65536:65536"
    -p "$port-$last:$port-$last"
    -e "port=$port" -e "timeout=$timeout" -e "log_level=$log_level"
    -v "$volume:/data")
if [[ -n $admin_password ]]; then
    run+=(-e password)
else
    echo "run-dockerfile.sh: no --password: the admin password is the well-known default 'admin'" >&2
fi
if [[ -n $server_password ]]; then
    run+=(-e server_password)
fi
if $fresh; then
    run+=(-e REPLICATION_FRESH=1)
fi
if $detach; then
    # -i and -t keep the console open for a later `docker attach`.
    run+=(-d -i -t --restart unless-stopped)
else
    run+=(--rm -i)
    if [[ -t 0 ]]; then
        run+=(-t)
    fi
fi
run+=("$image")

echo "run-dockerfile.sh: users need TCP ports $port to $last open on this machine" >&2
password=$admin_password server_password=$server_password "${run[@]}"

if $detach; then
    cat <<EOF
The server runs in the background as '$name'.
  console:  docker attach $name    (leave it with Ctrl+P then Ctrl+Q)
  log:      docker logs $name
  status:   docker ps              (shows "healthy" once the server answers)
  stop:     docker stop $name
Docker restarts it when it ends otherwise ('exit' at the console, Ctrl+C
while attached, a reboot), with the scene as it was: it is kept in the
volume $volume. To start a new scene, type 'reset' at the console.
EOF
fi
