#!/usr/bin/env bash
# Install everything the APN twin needs on this machine, idempotently.
#
#   sudo scripts/install.sh [--skip-image] [--help]
#
# Safe to rerun: apt packages are only installed when dpkg says they are
# missing, the venv is only reinstalled when pyproject.toml changed, Open
# vSwitch is only started when it is not answering, and the workload image is
# only rebuilt when the sources it is made from changed (scripts/build-image.sh).
# A rerun on an installed machine takes a few seconds and needs no network.
#
# Environment:
#   TWIN_PYTHON=/path       interpreter for .venv (default /usr/bin/python3)
#   TWIN_INSTALL_EXTRAS     ignored (podman, runc and chromium are always installed now)
# Testing hooks only (used by tests/unit/test_install_script.py):
#   TWIN_INSTALL_ASSUME_NONROOT=1   behave as if not run as root
#   TWIN_OS_RELEASE=/path           read this instead of /etc/os-release
set -euo pipefail

# --- what gets installed ----------------------------------------------------
# Needed for every twin run: OVS (userspace or kernel datapath), mnexec from
# the mininet package, tc/ip, traffic and capture tools, and what pip needs
# to build the few C extensions in the emulation extra.
BASE_PKGS=(
    openvswitch-switch mininet iproute2 iperf3 iputils-ping tcpdump ethtool
    python3-venv python3-dev gcc procps kmod
)
# Needed by the test suite (tests/unit/test_install_script.py lints the
# shell scripts with shellcheck; in CI a missing shellcheck is a failure).
TEST_PKGS=(shellcheck)
# Workload containers (podman; runc because crun refuses the hybrid cgroup
# layout of some kernels; catatonit as the containers' init; debootstrap builds
# the image, as no image registry is reachable; on Ubuntu it needs Debian's
# keyring), the browser-driven dashboard checks, and QEMU for the netem guest
# (scripts/netem-guest.sh: a kernel with sch_netem and the openvswitch module,
# for the kernel paths this host may lack). The test suite needs all
# of them, so they are part of every install. Set per distribution below
# because Ubuntu names the chromium packages differently.
EXTRA_PKGS=()
# Where podman reads drop-in configuration (containers.conf.d, podman >= 4.0).
CONTAINERS_CONF_D=/etc/containers/containers.conf.d

MIN_PYTHON="3.11"

# --- helpers ------------------------------------------------------------------
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REPO_ROOT}/.venv"
STAMP="${VENV}/.twin-install-stamp"
PYTHON="${TWIN_PYTHON:-/usr/bin/python3}"
OS_RELEASE="${TWIN_OS_RELEASE:-/etc/os-release}"
START_TS=$(date +%s)

log() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat <<'EOF'
Usage: sudo scripts/install.sh [--skip-image]

Installs the apt packages (Open vSwitch, Mininet, podman, runc, chromium, ...),
the Python venv (.venv), podman's settings for the twin, the workload image
(scripts/build-image.sh) and starts Open vSwitch, then probes the kernel
(netem, openvswitch module) and CRIU. Idempotent: a rerun on an installed
machine finishes in a few seconds.

  --skip-image       do not build the workload container image
  --with-workloads   accepted for old instructions; does nothing (podman,
                     runc and chromium are always installed now)
  -h, --help         show this help
EOF
}

SKIP_IMAGE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --with-workloads) ;;
        --skip-image) SKIP_IMAGE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

# --- 1. operating system ------------------------------------------------------
# Read KEY=value from os-release without sourcing it; strip optional quotes.
os_field() {
    sed -n "s/^$1=//p" "$OS_RELEASE" | head -n 1 | tr -d "\"'"
}

check_os() {
    [ -r "$OS_RELEASE" ] || die "cannot read ${OS_RELEASE}; supported: Debian 12+, Ubuntu 22.04+"
    local id version major
    id=$(os_field ID)
    version=$(os_field VERSION_ID)
    major="${version%%.*}"
    [[ "$major" =~ ^[0-9]+$ ]] || major=0
    case "$id" in
        debian) [ "$major" -ge 12 ] || die "Debian ${version:-unknown} is too old; supported: Debian 12+, Ubuntu 22.04+" ;;
        ubuntu) [ "$major" -ge 22 ] || die "Ubuntu ${version:-unknown} is too old; supported: Debian 12+, Ubuntu 22.04+" ;;
        *) die "unsupported OS '${id:-unknown} ${version}'; supported: Debian 12+, Ubuntu 22.04+ (or use vagrant/, see vagrant/README.md)" ;;
    esac
    OS_ID="$id"
    OS_VERSION="$version"
}

check_root() {
    if [ "$(id -u)" -ne 0 ] || [ "${TWIN_INSTALL_ASSUME_NONROOT:-0}" = 1 ]; then
        die "must run as root; fix: sudo $0"
    fi
}

# --- 2. apt packages ------------------------------------------------------------
is_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

install_packages() {
    local want=("${BASE_PKGS[@]}" "${TEST_PKGS[@]}")
    if [ "$OS_ID" = ubuntu ]; then
        # Ubuntu ships sch_netem in linux-modules-extra for some kernel
        # flavours; add it when apt knows a package for the running kernel
        # (it does not in containers, where the kernel is the host's).
        local extra_mods
        extra_mods="linux-modules-extra-$(uname -r)"
        if apt-cache show "$extra_mods" >/dev/null 2>&1; then
            want+=("$extra_mods")
        fi
        EXTRA_PKGS=(podman runc catatonit debootstrap debian-archive-keyring chromium-browser chromium-chromedriver
                    qemu-system-x86)
    else
        EXTRA_PKGS=(podman runc catatonit debootstrap chromium chromium-driver qemu-system-x86)
    fi
    want+=("${EXTRA_PKGS[@]}")
    # CRIU only when the registry serves 4.x: 3.x (Debian 12) fails
    # `criu check` on kernels whose vDSO has a [vvar_vclock] area.
    local criu_candidate
    criu_candidate=$(apt-cache policy criu 2>/dev/null | sed -n 's/^ *Candidate: *//p' | head -n 1)
    case "$criu_candidate" in
        [4-9].*|[1-9][0-9]*.*) want+=(criu) ;;
    esac

    local missing=() p
    for p in "${want[@]}"; do
        is_installed "$p" || missing+=("$p")
    done
    PKG_SUMMARY="${#want[@]} wanted, ${#missing[@]} installed now"
    if [ "${#missing[@]}" -eq 0 ]; then
        log "apt packages: all ${#want[@]} present"
        return 0
    fi
    log "apt packages missing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || log "warning: apt-get update failed; trying the install with the cached lists"
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# --- 3. Python venv ------------------------------------------------------------
python_ok() {
    "$1" -c "import sys; sys.exit(0 if sys.version_info >= tuple(map(int, '${MIN_PYTHON}'.split('.'))) else 1)" 2>/dev/null
}

setup_venv() {
    [ -x "$PYTHON" ] || die "${PYTHON} not found; fix: apt-get install python3 (Python >= ${MIN_PYTHON})"
    if ! python_ok "$PYTHON"; then
        die "$("$PYTHON" -V 2>&1) at ${PYTHON} is too old, need >= ${MIN_PYTHON}; fix (Ubuntu 22.04): apt-get install python3.11 python3.11-venv python3.11-dev, then rerun with TWIN_PYTHON=/usr/bin/python3.11"
    fi
    if [ -x "${VENV}/bin/python" ] && ! python_ok "${VENV}/bin/python"; then
        log "existing .venv is broken or too old; recreating it"
        rm -rf "$VENV"
    fi
    if [ ! -x "${VENV}/bin/python" ]; then
        log "creating .venv with ${PYTHON}"
        "$PYTHON" -m venv "$VENV"
        rm -f "$STAMP"
    fi
    if [ -f "$STAMP" ] && [ ! "${REPO_ROOT}/pyproject.toml" -nt "$STAMP" ]; then
        VENV_SUMMARY="up to date"
        log ".venv: up to date (pyproject.toml unchanged since last install)"
    else
        log "installing the twin into .venv: pip install -e '.[emulation,workloads,report,test]'"
        "${VENV}/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
        (cd "$REPO_ROOT" && "${VENV}/bin/python" -m pip install -q --disable-pip-version-check -e '.[emulation,workloads,report,test]')
        touch "$STAMP"
        VENV_SUMMARY="installed now"
    fi
    # Under sudo, hand the venv back to the invoking user so that unprivileged
    # runs (unit tests, `twin plan`) keep working.
    if [ -n "${SUDO_UID:-}" ] && [ "${SUDO_UID}" != 0 ]; then
        chown -R "${SUDO_UID}:${SUDO_GID:-$SUDO_UID}" "$VENV" 2>/dev/null \
            || log "warning: could not chown .venv to uid ${SUDO_UID} (shared folder?)"
    fi
}

# --- 4. Open vSwitch -----------------------------------------------------------
OVS_CTL=/usr/share/openvswitch/scripts/ovs-ctl

ovs_answers() { ovs-vsctl --timeout=2 show >/dev/null 2>&1; }

start_ovs() {
    if ovs_answers; then
        log "Open vSwitch: running"
        return 0
    fi
    log "Open vSwitch not answering; starting it"
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl start openvswitch-switch || true
    fi
    if ! ovs_answers && [ -x "$OVS_CTL" ]; then
        # ovs-ctl works without systemd. It refuses to start ovs-vswitchd when
        # /proc/modules exists but the openvswitch module cannot be loaded;
        # then run ovsdb-server via ovs-ctl and ovs-vswitchd by hand, which
        # is fine for the userspace (netdev) datapath.
        if ! "$OVS_CTL" start; then
            log "ovs-ctl could not start ovs-vswitchd (no kernel module?); starting it for the userspace datapath"
            "$OVS_CTL" start --no-ovs-vswitchd
            ovs-vswitchd unix:/var/run/openvswitch/db.sock -vconsole:emer -vsyslog:err -vfile:info \
                --no-chdir --log-file --pidfile --detach --monitor
        fi
    fi
    ovs_answers || die "Open vSwitch does not answer 'ovs-vsctl show'; see /var/log/openvswitch/*.log"
    log "Open vSwitch: started"
}

# --- 5. containers ----------------------------------------------------------------
# Default ulimits for every container: podman's own default asks for a higher
# nofile limit than root may set where it lacks CAP_SYS_RESOURCE, and then
# every `podman run` fails. The runtime (runc vs crun) is not set here: the
# twin detects at run time which one works (twin/workloads/containers.py).
CONTAINERS_CONF_TEXT='# Written by scripts/install.sh of the APN twin; rewritten on every install.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]'

configure_containers() {
    local conf="${CONTAINERS_CONF_D}/twin.conf"
    if [ -f "$conf" ] && [ "$(cat "$conf")" = "$CONTAINERS_CONF_TEXT" ]; then
        log "podman settings: ${conf} up to date"
        return 0
    fi
    mkdir -p "$CONTAINERS_CONF_D"
    printf '%s\n' "$CONTAINERS_CONF_TEXT" >"${conf}.tmp"
    mv "${conf}.tmp" "$conf"
    log "podman settings: wrote ${conf}"
}

build_image() {
    if [ "$SKIP_IMAGE" = 1 ]; then
        IMAGE_LINE="skipped (--skip-image)"
        return 0
    fi
    IMAGE_LINE=$("${REPO_ROOT}/scripts/build-image.sh") \
        || die "building the workload image failed; see the messages above, fix, rerun"
}

# `criu check` decides whether checkpoint/restore migration can run here.
probe_criu() {
    if ! command -v criu >/dev/null 2>&1; then
        CRIU_LINE="absent (no CRIU 4.x in the package registry; checkpoint/restore migration is skipped)"
    elif criu check >/dev/null 2>&1; then
        CRIU_LINE="$(criu --version 2>/dev/null | head -n 1), criu check passed"
    else
        CRIU_LINE="$(criu --version 2>/dev/null | head -n 1), criu check FAILED (checkpoint/restore migration is skipped)"
    fi
}

# --- 6. kernel probe ------------------------------------------------------------
# A throwaway veth pair (dummy links may be unavailable) named twprobe<pid>a/b,
# at most 15 characters. The EXIT trap removes it whatever happens.
PROBE_IF="twprobe$$a"

cleanup_probe() {
    if ip link show "$PROBE_IF" >/dev/null 2>&1; then
        ip link del "$PROBE_IF" >/dev/null 2>&1 || true
    fi
}
trap cleanup_probe EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

probe_kernel() {
    NETEM=no
    OVS_MOD=no
    modprobe -q sch_netem >/dev/null 2>&1 || true
    if ip link add "$PROBE_IF" type veth peer name "twprobe$$b" >/dev/null 2>&1; then
        if tc qdisc add dev "$PROBE_IF" root netem delay 1ms >/dev/null 2>&1; then
            NETEM=yes
        fi
    else
        NETEM=unknown
    fi
    cleanup_probe

    modprobe -q openvswitch >/dev/null 2>&1 || true
    if [ -d /sys/module/openvswitch ] \
        || { command -v genl >/dev/null 2>&1 && genl ctrl list 2>/dev/null | grep -qw ovs_datapath; }; then
        OVS_MOD=yes
    fi

    local backend=userspace datapath=netdev
    if [ "$NETEM" = yes ]; then backend=netem; fi
    if [ "$OVS_MOD" = yes ]; then datapath=system; fi
    KERNEL_LINE="kernel: netem=${NETEM} ovs-module=${OVS_MOD} -> link backend ${backend}, OVS datapath ${datapath}"
}

# --- main -------------------------------------------------------------------------
check_os
check_root
log "OS: ${OS_ID} ${OS_VERSION}; repo: ${REPO_ROOT}"
install_packages
setup_venv
start_ovs
configure_containers
build_image
probe_criu
probe_kernel

echo "----- install summary -----"
echo "os:        ${OS_ID} ${OS_VERSION}"
echo "packages:  ${PKG_SUMMARY}"
echo "venv:      ${VENV} ($("${VENV}/bin/python" -V 2>&1), ${VENV_SUMMARY})"
echo "ovs:       $(ovs-vsctl --timeout=2 get Open_vSwitch . ovs_version 2>/dev/null | tr -d '"') answering"
echo "image:     ${IMAGE_LINE}"
echo "criu:      ${CRIU_LINE}"
echo "${KERNEL_LINE}"
echo "took:      $(( $(date +%s) - START_TS ))s"
