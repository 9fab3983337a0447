#!/usr/bin/env bash
# Build the Fast-Flow runner image without any registry access.
#
#   deploy/runner/build-offline.sh [TAG]
#
# Produces an image equivalent to deploy/runner/Dockerfile: Debian bookworm
# (debootstrap minbase) with python3, python3-venv, ca-certificates and a
# pinned `uv` binary taken from the uv wheel on PyPI; user `runner`
# (uid/gid 1000, home /home/runner); /pipeline (workdir) and /opt/fastflow.
#
# Needs: root, a running docker engine, debootstrap, python3 with pip, and
# access to a Debian mirror (debootstrap default) and to PyPI.
#
# Arguments / environment:
#   TAG                     image tag (default: $FASTFLOW_RUNNER_IMAGE, else
#                           fastflow-runner:latest)
#   FASTFLOW_RUNNER_IMAGE   image tag used when no TAG argument is given
#   FASTFLOW_CA_BUNDLE      optional PEM bundle installed as
#                           /etc/ssl/certs/ca-certificates.crt in the image
#                           (SSL_CERT_FILE points there, so uv uses it too:
#                           by default uv ignores the system store)
#   FASTFLOW_UV_VERSION     uv version to install (default 0.13.9)
#   FASTFLOW_SUITE          Debian suite (default bookworm)
#   PYTHON                  host interpreter used to run pip (default python3)
set -euo pipefail
umask 022

TAG="${1:-${FASTFLOW_RUNNER_IMAGE:-fastflow-runner:latest}}"
UV_VERSION="${FASTFLOW_UV_VERSION:-0.13.9}"
SUITE="${FASTFLOW_SUITE:-bookworm}"
PYTHON="${PYTHON:-python3}"
CA_BUNDLE="${FASTFLOW_CA_BUNDLE:-}"
STD_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf 'build-offline: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- preflight --------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "must be run as root (debootstrap needs it)"
[ -n "$TAG" ] || die "empty image tag"
command -v docker >/dev/null 2>&1 || die "docker CLI not found: run deploy/start-dockerd.sh"
timeout 20 docker info >/dev/null 2>&1 || die "docker engine not answering: run deploy/start-dockerd.sh"
DEBOOTSTRAP="$(PATH="$PATH:$STD_PATH" command -v debootstrap)" \
    || die "debootstrap not found: run deploy/start-dockerd.sh (it installs it) or apt-get install debootstrap"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (needed to download the uv wheel)"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "pip is not available for $PYTHON"
if [ -n "$CA_BUNDLE" ]; then
    [ -f "$CA_BUNDLE" ] && [ -r "$CA_BUNDLE" ] || die "FASTFLOW_CA_BUNDLE=$CA_BUNDLE is not a readable file"
fi

# --- work dir + cleanup ------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/fastflow-runner.XXXXXX")"
ROOTFS="$WORK/rootfs"

mounts_under() {
    # Mount points below $1, deepest first.
    awk -v p="$1/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r
}

cleanup() {
    local rc=$? m
    # debootstrap mounts proc/sys inside the target; never delete through a
    # mount that was left behind by an interrupted run.
    for m in $(mounts_under "$WORK"); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    if [ -n "$(mounts_under "$WORK")" ]; then
        log "WARNING: mounts remain under $WORK; not removing it"
    else
        rm -rf --one-file-system "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

start=$SECONDS

# --- 1. root file system -----------------------------------------------------------
log "debootstrap $SUITE (minbase) into a temporary directory (about a minute)..."
if ! env -i PATH="$STD_PATH" LANG=C LC_ALL=C HOME=/root \
        ${http_proxy:+http_proxy="$http_proxy"} ${https_proxy:+https_proxy="$https_proxy"} \
        "$DEBOOTSTRAP" --variant=minbase \
        --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$ROOTFS" >"$WORK/debootstrap.out" 2>&1; then
    tail -n 30 "$WORK/debootstrap.out" >&2 || true
    [ -f "$ROOTFS/debootstrap/debootstrap.log" ] && tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" >&2
    die "debootstrap failed (is a Debian mirror reachable?)"
fi
[ -x "$ROOTFS/usr/bin/python3" ] || die "debootstrap finished but usr/bin/python3 is missing"
[ -z "$(mounts_under "$ROOTFS")" ] || die "debootstrap left file systems mounted under the target"
log "debootstrap done after $(( SECONDS - start ))s"

# --- 2. uv from the PyPI wheel ------------------------------------------------------
log "downloading uv==$UV_VERSION wheel from PyPI..."
mkdir -p "$WORK/uv"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    --disable-pip-version-check "uv==$UV_VERSION" -d "$WORK/uv" \
    || die "pip download uv==$UV_VERSION failed (is PyPI reachable?)"
shopt -s nullglob
wheels=("$WORK"/uv/uv-"$UV_VERSION"-*.whl)
shopt -u nullglob
[ "${#wheels[@]}" -eq 1 ] || die "expected exactly one uv $UV_VERSION wheel, got ${#wheels[@]}"
mkdir -p "$ROOTFS/usr/local/bin"
"$PYTHON" - "${wheels[0]}" "$UV_VERSION" "$ROOTFS/usr/local/bin" <<'PY' || die "could not extract uv from ${wheels[0]}"
import os, shutil, sys, zipfile
whl, version, bindir = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    names = set(z.namelist())
    for tool in ("uv", "uvx"):
        member = f"uv-{version}.data/scripts/{tool}"
        if member not in names:
            if tool == "uv":
                sys.exit(f"{member} not found in wheel")
            continue
        dst = os.path.join(bindir, tool)
        with z.open(member) as src, open(dst, "wb") as out:
            shutil.copyfileobj(src, out)
        os.chmod(dst, 0o755)
PY
chroot "$ROOTFS" /usr/local/bin/uv --version >/dev/null 2>&1 \
    || die "the uv binary does not run inside the new root file system (architecture mismatch?)"

# --- 3. python, user, directories, CA bundle -----------------------------------------
ln -sfn /usr/bin/python3 "$ROOTFS/usr/local/bin/python"

if ! grep -q '^runner:' "$ROOTFS/etc/group"; then
    echo 'runner:x:1000:' >>"$ROOTFS/etc/group"
fi
if ! grep -q '^runner:' "$ROOTFS/etc/passwd"; then
    echo 'runner:x:1000:1000::/home/runner:/bin/bash' >>"$ROOTFS/etc/passwd"
fi
if [ -f "$ROOTFS/etc/shadow" ] && ! grep -q '^runner:' "$ROOTFS/etc/shadow"; then
    echo "runner:!:$(( $(date +%s) / 86400 )):0:99999:7:::" >>"$ROOTFS/etc/shadow"
fi
if [ -f "$ROOTFS/etc/gshadow" ] && ! grep -q '^runner:' "$ROOTFS/etc/gshadow"; then
    echo 'runner:!::' >>"$ROOTFS/etc/gshadow"
fi
mkdir -p "$ROOTFS/home/runner"
if [ -d "$ROOTFS/etc/skel" ]; then
    cp -a "$ROOTFS/etc/skel/." "$ROOTFS/home/runner/"
fi
chown -R 1000:1000 "$ROOTFS/home/runner"
chmod 755 "$ROOTFS/home/runner"

install -d -m 755 -o 1000 -g 1000 "$ROOTFS/pipeline"
install -d -m 755 -o 0 -g 0 "$ROOTFS/opt/fastflow"

if [ -n "$CA_BUNDLE" ]; then
    log "installing CA bundle from FASTFLOW_CA_BUNDLE"
    install -D -m 644 -o 0 -g 0 "$CA_BUNDLE" "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
fi

# --- 4. slim down ---------------------------------------------------------------------
# Keep later `apt-get install`s inside the image small too (as Debian's slim
# images do), then drop caches, package lists, docs (but copyright), man pages,
# translations and logs.
mkdir -p "$ROOTFS/etc/dpkg/dpkg.cfg.d"
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/fastflow-nodoc" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
CFG
rm -rf "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/lib/apt/lists/* \
       "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
       "$ROOTFS"/usr/share/locale/* "$ROOTFS"/usr/share/lintian/* \
       "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/var/lib/dpkg/*-old \
       "$ROOTFS"/debootstrap
find "$ROOTFS/usr/share/doc" -xdev -mindepth 1 ! -type d ! -name copyright -delete
find "$ROOTFS/usr/share/doc" -xdev -mindepth 1 -depth -type d -empty -delete
find "$ROOTFS/var/log" -xdev -type f -delete
# Host-specific files copied by debootstrap; the engine provides its own at run time.
: >"$ROOTFS/etc/resolv.conf"
echo localhost >"$ROOTFS/etc/hostname"
[ ! -e "$ROOTFS/etc/machine-id" ] || : >"$ROOTFS/etc/machine-id"
# /dev is provided by the engine.
find "$ROOTFS/dev" -xdev -mindepth 1 -delete
chmod 755 "$ROOTFS"

# --- 5. import -------------------------------------------------------------------------
[ -z "$(mounts_under "$ROOTFS")" ] || die "file systems still mounted under the target; refusing to tar it"
log "importing as $TAG..."
previous="$(docker image inspect "$TAG" --format '{{.Id}}' 2>/dev/null || true)"
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change "ENV PATH=$STD_PATH" \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PYTHONDONTWRITEBYTECODE=1' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'WORKDIR /pipeline' \
    --change 'LABEL org.fastflow.runner=1' \
    --change 'CMD ["python3"]' \
    --message "fastflow runner ($SUITE, uv $UV_VERSION, built offline)" \
    - "$TAG" >/dev/null \
    || die "docker import failed"

docker run --rm --network none "$TAG" python -c 'import ssl, venv' \
    || die "smoke test failed: python does not run in $TAG"
# Drop the image this tag pointed to before, unless still in use or tagged.
current="$(docker image inspect "$TAG" --format '{{.Id}}')"
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
    docker rmi "$previous" >/dev/null 2>&1 || true
fi
size="$(docker image inspect "$TAG" --format '{{.Size}}')"
log "built $TAG in $(( SECONDS - start ))s ($(( size / 1000000 )) MB)"
