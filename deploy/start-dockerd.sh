#!/usr/bin/env bash
# Start a local Docker engine for Fast-Flow pipeline runners.
#
# Idempotent: safe to run any number of times.
#   1. installs docker.io and debootstrap with apt-get if dockerd / debootstrap
#      are missing;
#   2. starts dockerd in the background if `docker info` does not answer;
#   3. waits (up to DOCKERD_WAIT_SECONDS, default 60) for `docker info` to answer.
#
# The engine is started with the bridge driver disabled and without iptables
# management: no docker bridge network is ever created, so containers can only
# use network mode `host` or `none`.
#
# Environment:
#   DOCKERD_LOG           log file (default /var/log/dockerd.log)
#   DOCKERD_WAIT_SECONDS  how long to wait for the engine (default 60)
set -euo pipefail

DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"
DOCKERD_WAIT_SECONDS="${DOCKERD_WAIT_SECONDS:-60}"
DOCKERD_PIDFILE=/var/run/docker.pid

log() { printf 'start-dockerd: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must be run as root"

docker_answers() {
    command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1
}

# --- 1. packages ------------------------------------------------------------
missing=()
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    missing+=(docker.io)
fi
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)

if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and apt-get is not available"
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Keep the package's maintainer scripts from starting a default-configured
    # dockerd (which would create the docker0 bridge): deny service starts
    # while installing, unless a policy is already in place.
    policy=/usr/sbin/policy-rc.d
    added_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=1
    fi
    cleanup_policy() { if [ "$added_policy" -eq 1 ]; then rm -f "$policy"; fi; }
    trap cleanup_policy EXIT
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
    cleanup_policy
    trap - EXIT
    command -v dockerd >/dev/null 2>&1 || die "dockerd still not found after installing docker.io"
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap still not found after installing it"
fi

# --- 2. engine ----------------------------------------------------------------
if docker_answers; then
    log "docker engine already running"
    exit 0
fi

dockerd_pid=""
if [ -s "$DOCKERD_PIDFILE" ] && kill -0 "$(cat "$DOCKERD_PIDFILE")" 2>/dev/null; then
    dockerd_pid="$(cat "$DOCKERD_PIDFILE")"
    log "dockerd already started (pid $dockerd_pid), waiting for it to answer"
else
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    log "starting dockerd (log: $DOCKERD_LOG)"
    # setsid + nohup: the engine must outlive this script and its session.
    setsid nohup dockerd \
        --bridge=none \
        --iptables=false \
        --ip6tables=false \
        --storage-driver=overlay2 \
        >>"$DOCKERD_LOG" 2>&1 </dev/null &
    dockerd_pid=$!
fi

dockerd_alive() {
    kill -0 "$dockerd_pid" 2>/dev/null && return 0
    [ -s "$DOCKERD_PIDFILE" ] && kill -0 "$(cat "$DOCKERD_PIDFILE")" 2>/dev/null
}

# --- 3. wait --------------------------------------------------------------------
deadline=$(( SECONDS + DOCKERD_WAIT_SECONDS ))
until docker_answers; do
    if ! dockerd_alive; then
        log "dockerd (pid $dockerd_pid) exited; last lines of $DOCKERD_LOG:"
        tail -n 20 "$DOCKERD_LOG" >&2 || true
        die "docker engine failed to start"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        log "last lines of $DOCKERD_LOG:"
        tail -n 20 "$DOCKERD_LOG" >&2 || true
        die "docker engine did not answer 'docker info' within ${DOCKERD_WAIT_SECONDS}s"
    fi
    sleep 1
done
log "docker engine is up ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
