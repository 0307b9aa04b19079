# syntax=docker/dockerfile:1
#
# replication-serve in a container. docs/hosting.md explains how to use it:
#
#   docker build -t replication-serve .
#   docker run -d --ulimit nofile=65536:65536 -p 5555-5558:5555-5558 \
#       -e password=CHANGE-ME replication-serve
#
# The server needs four open files per user; it raises its soft limit to
# what its limits need and refuses to start when the container's hard limit
# (set with --ulimit, or by the Docker daemon) is too low.
#
# Building needs BuildKit (for the cache mounts below): it is Docker's
# builder since Docker Engine 23 and in Docker Desktop. On an older engine,
# build with `DOCKER_BUILDKIT=1 docker build ...`, or with `docker buildx
# build`; the legacy builder stops at `RUN --mount` with "the --mount option
# requires BuildKit".
#
# Settings: port, password, server_password, timeout, log_level (lower or
# upper case, as with the reference server's image), the REPLICATION_*
# variables, or server options after the image name. Passwords reach the
# server through its environment, never its command line.

# --- Build ------------------------------------------------------------------
# The Rust image has the C++ compiler that the bundled libzmq needs; nothing
# else is installed.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the downloaded crates and the compiled dependencies
# (libzmq takes the longest) from one build to the next, so a change to the
# server's own code rebuilds only that. The target directory lives in the
# cache, so the binary is copied out of it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin replication-serve \
    && install -D target/release/replication-serve /out/replication-serve

# --- Run --------------------------------------------------------------------
# The binary needs only the C and C++ runtime libraries, which the slim image
# already has (apt itself uses them), so no package is installed.
FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 replication \
    && useradd --system --uid 10001 --gid replication --home-dir /data \
        --no-create-home --shell /usr/sbin/nologin replication \
    && mkdir /data \
    && chown replication:replication /data
COPY --from=build /out/replication-serve /usr/local/bin/replication-serve
COPY docker/entrypoint.sh /usr/local/bin/docker-entrypoint.sh

# Where the entrypoint notes the port the server was started with, so that
# the health check asks the right one even when it came from an argument.
ENV HEALTH_CHECK_FILE=/tmp/replication-serve.health

# The recorded session (session.db) and its backups (backups/) live in the
# volume, so they survive the container. It is also the working directory,
# so a relative log file (-lf server.log) lands there too.
ENV REPLICATION_DATA_DIR=/data
VOLUME /data
WORKDIR /data
USER 10001:10001

# commands, subscriber, publisher, heartbeat (for the default base port)
EXPOSE 5555-5558

# Asks the server itself: all four ports must answer and SERVER_INFO must be
# answered within 3 s.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
    CMD ["docker-entrypoint.sh", "--health-check"]

# The entrypoint execs the server, which is then PID 1: `docker stop`'s
# SIGTERM reaches it directly and it shuts down cleanly at once. It starts
# no child processes, so there are no zombies to reap and no init is needed.
ENTRYPOINT ["docker-entrypoint.sh"]
