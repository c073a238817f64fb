#!/usr/bin/env bash
# Build the workload container image localhost/twin-workload:<source hash>
# locally (no image registry is reachable, nothing is pulled).
#
#   sudo scripts/build-image.sh [--print-ref] [--force] [--help]
#
# Prints the reference of the image it built or found on stdout (messages go
# to stderr).
#
# Two layers (twin/workloads/image.py names them and computes the hashes):
#  1. base localhost/twin-workload-base:<key>: debootstrap --variant=minbase
#     bookworm + python3, a venv at /opt/twin/venv with the run-time
#     dependencies pinned to the versions in .venv. debootstrap's result is
#     cached as a tarball under /var/cache/twin, the wheels in
#     /var/cache/twin/wheels, so a base rebuild takes seconds after the first.
#  2. the image: base + the wheel built from this checkout (pip wheel --no-deps)
#     + the ONNX models (python -m twin.workloads.models --build) in
#     /var/lib/twin/models, where the server looks when it runs as root, via
#     `podman build`, so a code change adds only a small layer.
# An unchanged tree finds its image and exits in well under a second. Old tags
# of both are removed (podman keeps any still used by a container) unless
# TWIN_IMAGE_NO_PRUNE=1 (benchmarks/containers.py builds copies beside the real one).
# TWIN_IMAGE_CACHE moves /var/cache/twin (debootstrap tarball, wheels, lock).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_PY="${REPO_ROOT}/.venv/bin/python"
CACHE="${TWIN_IMAGE_CACHE:-/var/cache/twin}"
MIRROR="${TWIN_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Must match BASE_SUITE / BASE_PACKAGES in twin/workloads/image.py; bump
# BASE_RECIPE_VERSION there when build_base below changes.
SUITE=bookworm
DEBOOTSTRAP_INCLUDE=python3,python3-venv
# The suite's python3 (wheels are fetched for it, not for the host's Python).
IMAGE_PYTHON=3.11
# Build tools pip needs to make the project's wheel offline (build isolation).
BUILD_REQS=("setuptools>=77" "wheel")

log() { printf 'build-image: %s\n' "$*" >&2; }
die() { printf 'build-image: error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat <<'EOF'
Usage: sudo scripts/build-image.sh [--print-ref] [--force]

Builds localhost/twin-workload:<hash> for this checkout unless it exists.
  --print-ref   only print the image reference for this checkout and exit
  --force       rebuild the code layer even if the image exists
  -h, --help    show this help
EOF
}

PRINT_ONLY=0
FORCE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --print-ref) PRINT_ONLY=1 ;;
        --force) FORCE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

[ -x "$VENV_PY" ] || die "${VENV_PY} missing; fix: sudo scripts/install.sh"
REF=$(cd "$REPO_ROOT" && "$VENV_PY" -m twin.workloads.image --ref)
if [ "$PRINT_ONLY" = 1 ]; then
    echo "$REF"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || die "must run as root; fix: sudo $0"
command -v podman >/dev/null 2>&1 || die "podman not found; fix: sudo scripts/install.sh"

# runc works on every cgroup layout; crun refuses the hybrid one.
RUNTIME_ARGS=()
if command -v runc >/dev/null 2>&1; then RUNTIME_ARGS=(--runtime runc); fi

if [ "$FORCE" = 0 ] && podman image exists "$REF"; then
    log "${REF} up to date"
    echo "$REF"
    exit 0
fi

mkdir -p "$CACHE"
# One build at a time (two installs may run at once, e.g. from two checkouts).
exec 9>"${CACHE}/build.lock"
flock 9
if [ "$FORCE" = 0 ] && podman image exists "$REF"; then
    log "${REF} built by another run meanwhile"
    echo "$REF"
    exit 0
fi

WORK=$(mktemp -d "${CACHE}/work.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

START_S=$(date +%s)
BASE_REF=$(cd "$REPO_ROOT" && "$VENV_PY" -m twin.workloads.image --base-ref)
WHEELS="${CACHE}/wheels"
mkdir -p "$WHEELS"

# --- wheels: pinned run-time dependencies + build tools --------------------------
fetch_wheels() {
    (cd "$REPO_ROOT" && "$VENV_PY" -m twin.workloads.image --requirements) >"${WORK}/requirements.txt"
    local pip=("$VENV_PY" -m pip download -q --disable-pip-version-check --only-binary=:all: -d "$WHEELS"
        --python-version "$IMAGE_PYTHON" --implementation cp --abi "cp${IMAGE_PYTHON//./}"
        --platform "manylinux_2_28_$(uname -m)" --platform "manylinux2014_$(uname -m)")
    # Offline first: everything may already be in the cache.
    if ! "${pip[@]}" --no-index --find-links "$WHEELS" --no-deps -r "${WORK}/requirements.txt" "${BUILD_REQS[@]}" >/dev/null 2>&1; then
        log "downloading wheels into ${WHEELS}"
        "${pip[@]}" --no-deps -r "${WORK}/requirements.txt" "${BUILD_REQS[@]}"
    fi
}

# --- 1. base image -----------------------------------------------------------------
build_base() {
    local tarball="${CACHE}/debootstrap-${SUITE}-minbase-${DEBOOTSTRAP_INCLUDE//,/-}.tar"
    local rootfs="${WORK}/rootfs"
    mkdir -p "$rootfs"
    if [ -f "$tarball" ]; then
        log "base: unpacking cached ${tarball}"
        tar -xf "$tarball" -C "$rootfs"
    else
        command -v debootstrap >/dev/null 2>&1 || die "debootstrap not found; fix: sudo scripts/install.sh"
        log "base: debootstrap --variant=minbase ${SUITE} (+${DEBOOTSTRAP_INCLUDE}), about 30 s"
        debootstrap --variant=minbase --include="$DEBOOTSTRAP_INCLUDE" "$SUITE" "$rootfs" "$MIRROR" >"${WORK}/debootstrap.log" 2>&1 \
            || { tail -n 20 "${WORK}/debootstrap.log" >&2; die "debootstrap failed (log above); fix the mirror/network, rerun"; }
        rm -rf "${rootfs}/var/cache/apt/archives/"*.deb "${rootfs}/var/lib/apt/lists/"*
        tar -cf "${tarball}.tmp" -C "$rootfs" .
        mv "${tarball}.tmp" "$tarball"
    fi
    log "base: venv with $(wc -l <"${WORK}/requirements.txt") pinned packages"
    # env -i: the host's PIP_* settings (find-links, certificates) mean nothing inside.
    local in_root=(chroot "$rootfs" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root)
    "${in_root[@]}" /usr/bin/python3 -m venv /opt/twin/venv
    mkdir -p "${rootfs}/tmp/wheels"
    cp "${WHEELS}"/*.whl "${WORK}/requirements.txt" "${rootfs}/tmp/wheels/"
    "${in_root[@]}" /opt/twin/venv/bin/python -m pip install -q --disable-pip-version-check \
        --no-index --no-deps --find-links /tmp/wheels -r /tmp/wheels/requirements.txt
    rm -rf "${rootfs}/tmp/wheels" "${rootfs}/root/.cache"
    # The container's root filesystem is read-only: precompiled bytecode only.
    log "base: importing ${BASE_REF}"
    tar -C "$rootfs" -c . | podman import -q \
        --change 'ENV PATH=/opt/twin/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV PYTHONDONTWRITEBYTECODE=1' \
        --change 'ENV PYTHONUNBUFFERED=1' \
        --change 'WORKDIR /state' \
        - "$BASE_REF" >/dev/null
    rm -rf "$rootfs"
}

if podman image exists "$BASE_REF"; then
    log "base: ${BASE_REF} present"
else
    fetch_wheels
    build_base
fi

# --- 2. code layer -------------------------------------------------------------------
# Build the wheel from a copy of exactly the hashed files, so the checkout gets
# no build/ directory and the wheel holds what the hash covers.
SRC="${WORK}/src"
mkdir -p "$SRC" "${WORK}/ctx"
(cd "$REPO_ROOT" && "$VENV_PY" -m twin.workloads.image --sources) | while IFS= read -r rel; do
    mkdir -p "${SRC}/$(dirname "$rel")"
    cp "${REPO_ROOT}/${rel}" "${SRC}/${rel}"
done
# The tag is the hash of the copy, which is what goes into the image, even if
# the checkout changed since the check above.
REF=$(cd "$REPO_ROOT" && "$VENV_PY" -m twin.workloads.image --ref --repo "$SRC")
# Offline first (quietly: a miss only means the build tools are not cached yet).
"$VENV_PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-index --find-links "$WHEELS" -w "${WORK}/ctx" "$SRC" >/dev/null 2>&1 \
    || { fetch_wheels; "$VENV_PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-index --find-links "$WHEELS" -w "${WORK}/ctx" "$SRC" >/dev/null; } \
    || die "pip wheel of the checkout failed"

MODELS_STEP=""
if [ -f "${REPO_ROOT}/twin/workloads/models.py" ]; then
    MODELS_STEP="RUN python -m twin.workloads.models --build /var/lib/twin/models"
else
    log "twin/workloads/models.py not there yet: image without models"
fi
HASH="${REF##*:}"
cat >"${WORK}/ctx/Containerfile" <<EOF
FROM ${BASE_REF}
COPY *.whl /tmp/
RUN python -m pip install -q --disable-pip-version-check --no-index --no-deps /tmp/*.whl && rm -f /tmp/*.whl && rm -rf /root/.cache
${MODELS_STEP}
LABEL twin.source-hash=${HASH}
EOF
log "code layer: podman build ${REF}"
podman build -q "${RUNTIME_ARGS[@]}" --network host --pull=never -f "${WORK}/ctx/Containerfile" -t "$REF" "${WORK}/ctx" >/dev/null

# --- prune old tags (never the ones just built; podman refuses images in use) -------
# Keeps the newest few besides the one just built: a test that looked up its
# image a moment ago may be about to create a container from it.
KEEP_OLD=3
prune() {
    local repo="$1" keep="$2" ref n=0
    while IFS= read -r ref; do
        [ "$ref" = "$keep" ] && continue
        n=$((n + 1))
        [ "$n" -le "$KEEP_OLD" ] && continue
        podman rmi "$ref" >/dev/null 2>&1 || log "kept ${ref} (in use)"
    done < <(podman images --sort created --format '{{.Repository}}:{{.Tag}}' --filter "reference=${repo}" 2>/dev/null)
}
if [ "${TWIN_IMAGE_NO_PRUNE:-0}" != 1 ]; then
    prune "${REF%%:*}" "$REF"
    KEEP_OLD=0 prune "${BASE_REF%%:*}" "$BASE_REF"
fi
log "${REF} built in $(( $(date +%s) - START_S ))s"
echo "$REF"
