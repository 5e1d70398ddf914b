#!/usr/bin/env bash
# Make a Docker engine available on this machine, as root, where none runs:
#   1. install Debian's docker.io (the engine) and debootstrap when dockerd is missing;
#   2. start dockerd in the background when `docker info` does not answer (log: $DOCKERD_LOG);
#   3. wait until it answers.
# Exits 0 when `docker info` works, 1 with the reason on stderr when Docker cannot run here
# (not root and no engine, apt refused, dockerd died: e.g. inside an unprivileged container).
# Used by `make image` and `.ci/run`; safe to run again (it does nothing when Docker is up).
set -uo pipefail

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/lossd-dockerd.log}
WAIT_S=${DOCKER_WAIT_S:-60}

say() { echo "docker-setup: $*" >&2; }

if docker info >/dev/null 2>&1; then
    exit 0
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        say "no Docker engine and not root: install docker.io yourself (apt-get install docker.io debootstrap)"
        exit 1
    fi
    say "installing Debian's docker.io and debootstrap (apt-get; about a minute)"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends \
            docker.io debootstrap iptables ca-certificates >/dev/null; }; then
        say "apt-get could not install docker.io"
        exit 1
    fi
fi

if ! docker info >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        say "dockerd is installed but not running, and starting it needs root"
        exit 1
    fi
    if ! pgrep -x dockerd >/dev/null 2>&1; then
        say "starting dockerd (log: $DOCKERD_LOG)"
        # setsid: the engine outlives this shell, as a service would.
        setsid dockerd >"$DOCKERD_LOG" 2>&1 < /dev/null &
    fi
    for _ in $(seq "$WAIT_S"); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
fi

if ! docker info >/dev/null 2>&1; then
    say "dockerd did not answer within ${WAIT_S}s; last lines of $DOCKERD_LOG:"
    tail -n 15 "$DOCKERD_LOG" >&2 2>/dev/null
    exit 1
fi
say "Docker is running ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
