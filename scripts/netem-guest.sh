#!/usr/bin/env bash
# A throwaway Debian 12 guest whose kernel has what this host's lacks (sch_netem,
# cls_flower, the openvswitch module), to run the twin's kernel paths for real:
# the netem link backend and OVS's kernel datapath.
#
#   sudo scripts/netem-guest.sh build            # make (or find) the guest image
#   sudo scripts/netem-guest.sh run [--out DIR] -- CMD...
#                                                # boot it, run CMD in this checkout, power off
#   scripts/netem-guest.sh --help
#
# The guest boots Debian's own kernel under QEMU, with a root file system made
# by debootstrap (no image is downloaded: only Debian packages). This checkout
# is shared into it at the same path (9p), so the guest runs the same code with
# the same .venv (made from Debian 12's python3.11, as the guest's). The root
# file system is opened with -snapshot: every run starts from the same image
# and nothing it writes survives, except what CMD writes into the checkout or
# into DIR (--out: a host folder shared into the guest at the same path).
# CMD runs as root with Open vSwitch started (kernel datapath), and its exit
# status is this script's. Ctrl-C or a kill ends QEMU (by PID); nothing else
# is left on the host.
#
# KVM is used when the CPU offers virtualisation to this host (vmx/svm in
# /proc/cpuinfo); otherwise QEMU emulates the CPU (TCG), 10-30x slower, and
# the guest exports TWIN_TIMEOUT_SCALE so the twin's start-up deadlines stretch.
# Delays measured under TCG carry its overhead: they check that the kernel
# paths work, not the accuracy a real VM reaches.
#
# Environment:
#   TWIN_GUEST_CACHE    where images are kept (default /var/cache/twin/guest)
#   TWIN_DEBIAN_MIRROR  Debian mirror for debootstrap (default http://deb.debian.org/debian)
#   TWIN_GUEST_ACCEL    auto | kvm | tcg (default auto)
#   TWIN_GUEST_MEM_MB   guest memory (default 3072)
#   TWIN_GUEST_TIMEOUT  seconds before the guest is stopped (default 1800)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${TWIN_GUEST_CACHE:-/var/cache/twin/guest}"
MIRROR="${TWIN_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ACCEL="${TWIN_GUEST_ACCEL:-auto}"
MEM_MB="${TWIN_GUEST_MEM_MB:-3072}"
TIMEOUT_S="${TWIN_GUEST_TIMEOUT:-1800}"
SUITE=bookworm
GUEST_PYTHON=3.11   # bookworm's python3: the shared .venv must be made from the same
# What the twin's network needs in the guest (scripts/install.sh's BASE_PKGS, less
# what only builds or tests on the host).
GUEST_PKGS=linux-image-amd64,openvswitch-switch,mininet,iproute2,iperf3,iputils-ping,tcpdump,ethtool,python3,python3-venv,kmod,procps,util-linux,e2fsprogs
# Bump when the recipe below changes in a way the package list does not show.
RECIPE_VERSION=1
# Under TCG the twin's own start-up is 10-30x slower.
TCG_TIMEOUT_SCALE=15

log() { printf 'netem-guest: %s\n' "$*" >&2; }
die() { printf 'netem-guest: error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

# The guest's QEMU and job folder, for the EXIT trap (globals: it runs after cmd_run returns).
QEMU_PID=""
JOB=""

# PID 1 of the guest: mount what the twin needs, share the checkout, start OVS,
# run the job, record its status, power off. Kept here so the cache key covers it.
guest_init() {
    cat <<'EOF'
#!/bin/sh
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export PATH
mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null; mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp; mount -t tmpfs tmpfs /dev/shm
mount -o remount,rw /
arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
repo=$(arg twin.repo); out=$(arg twin.out); scale=$(arg twin.timeout_scale)
modprobe 9pnet_virtio; modprobe 9p
mkdir -p "$repo" /job
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 twinrepo "$repo" &&
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 twinjob /job || {
    echo "netem-guest: cannot mount the shared folders"; echo o > /proc/sysrq-trigger; sleep 30; }
if [ -n "$out" ]; then
    mkdir -p "$out" && mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 twinout "$out"
fi
ip link set lo up
hostname twin-guest
[ -n "$scale" ] && export TWIN_TIMEOUT_SCALE="$scale"
export TWIN_GUEST=1   # tests/conftest.py collects tests/guest only here
export PYTHONUNBUFFERED=1   # the console shows Python output as it comes, not at exit
echo "netem-guest: up: kernel $(uname -r), $(nproc) CPUs, timeout scale ${scale:-1}"
/usr/share/openvswitch/scripts/ovs-ctl start --system-id=random >/job/ovs-ctl.log 2>&1 ||
    echo "netem-guest: ovs-ctl start failed (see its log)"
cd "$repo" && bash /job/cmd.sh </dev/null
echo $? > /job/rc
sync
echo o > /proc/sysrq-trigger
sleep 30
EOF
}

cache_key() {
    { echo "$SUITE $GUEST_PKGS $RECIPE_VERSION $MIRROR"; guest_init; } | sha256sum | cut -c1-16
}

need_root() { [ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, QEMU's 9p as root); run with sudo"; }

cmd_build() {
    need_root
    [ "$(uname -m)" = x86_64 ] || die "the guest is amd64; this host is $(uname -m)"
    for tool in debootstrap mkfs.ext4 qemu-system-x86_64; do
        command -v "$tool" >/dev/null || die "$tool not found; fix: sudo scripts/install.sh"
    done
    local key dir tmp
    key=$(cache_key)
    dir="${CACHE}/${key}"
    if [ -s "${dir}/root.img" ] && [ -s "${dir}/vmlinuz" ] && [ -s "${dir}/initrd.img" ]; then
        log "image ${dir} is up to date"
        echo "$dir"
        return
    fi
    mkdir -p "$CACHE"
    tmp=$(mktemp -d "${CACHE}/build.XXXXXX")
    # A failed or interrupted build leaves nothing half-made behind.
    trap 'rm -rf "$tmp"' EXIT
    log "debootstrap ${SUITE} with the twin's network packages (about 2 minutes)"
    debootstrap --variant=minbase --include="$GUEST_PKGS" "$SUITE" "${tmp}/rootfs" "$MIRROR" \
        > "${tmp}/debootstrap.log" 2>&1 || { tail -n 5 "${tmp}/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
    guest_init > "${tmp}/rootfs/sbin/twin-guest-init"
    chmod 755 "${tmp}/rootfs/sbin/twin-guest-init"
    echo twin-guest > "${tmp}/rootfs/etc/hostname"
    cp "${tmp}"/rootfs/boot/vmlinuz-* "${tmp}/vmlinuz"
    cp "${tmp}"/rootfs/boot/initrd.img-* "${tmp}/initrd.img"
    # 3 GiB sparse; about 1 GiB used.
    mkfs.ext4 -q -F -L twinroot -d "${tmp}/rootfs" "${tmp}/root.img" 3G >&2
    rm -rf "${tmp}/rootfs"
    # Only now, so a half-built image is never taken for a whole one; older keys go.
    find "$CACHE" -mindepth 1 -maxdepth 1 -type d ! -name "build.*" ! -name "$key" -exec rm -rf {} +
    rm -rf "$dir"
    mv "$tmp" "$dir"
    trap - EXIT
    log "image ${dir} built"
    echo "$dir"
}

choose_accel() {
    case "$ACCEL" in
        kvm|tcg) echo "$ACCEL" ;;
        auto)
            # /dev/kvm alone is not enough: in a nested VM without virtualisation
            # extensions it opens, and guests hang at boot.
            if [ -w /dev/kvm ] && grep -qE '\b(vmx|svm)\b' /proc/cpuinfo; then echo kvm; else echo tcg; fi ;;
        *) die "TWIN_GUEST_ACCEL=${ACCEL}: use auto, kvm or tcg" ;;
    esac
}

check_venv() {
    local cfg="${REPO_ROOT}/.venv/pyvenv.cfg" version
    [ -r "$cfg" ] || die "no .venv in ${REPO_ROOT}; fix: sudo scripts/install.sh"
    version=$(sed -n 's/^version *= *\([0-9]*\.[0-9]*\).*/\1/p' "$cfg")
    [ "$version" = "$GUEST_PYTHON" ] || die ".venv is Python ${version:-unknown}, the guest's python3 is ${GUEST_PYTHON}; fix: rerun scripts/install.sh with TWIN_PYTHON=/usr/bin/python${GUEST_PYTHON}"
}

cmd_run() {
    need_root
    local out=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --out) [ $# -ge 2 ] || die "--out needs a folder"; out=$(cd "$2" 2>/dev/null && pwd) ||
                       die "--out $2: no such folder; create it first"; shift 2 ;;
            --) shift; break ;;
            *) break ;;
        esac
    done
    [ $# -gt 0 ] || die "run needs a command, e.g. run -- .venv/bin/twin up topologies/triangle.yaml --check"
    check_venv
    local dir accel rc scale=1
    dir=$(cmd_build)
    accel=$(choose_accel)
    [ "$accel" = tcg ] && scale=$TCG_TIMEOUT_SCALE
    JOB=$(mktemp -d /tmp/twin-guest-job.XXXXXX)
    local job=$JOB
    printf '%q ' "$@" > "${job}/cmd.sh"
    echo >> "${job}/cmd.sh"
    local share_out=() out_arg=""
    if [ -n "$out" ]; then
        share_out=(-virtfs "local,path=${out},mount_tag=twinout,security_model=passthrough,id=out")
        out_arg="twin.out=${out}"
    fi
    local accel_args=(-accel "tcg,thread=multi" -cpu max)
    [ "$accel" = kvm ] && accel_args=(-accel kvm -cpu host)
    : > "${job}/console.log"
    log "booting (${accel}, $(nproc) CPUs, ${MEM_MB} MiB); running: $*"
    qemu-system-x86_64 "${accel_args[@]}" -m "$MEM_MB" -smp "$(nproc)" -nographic -no-reboot \
        -kernel "${dir}/vmlinuz" -initrd "${dir}/initrd.img" \
        -append "console=ttyS0 root=/dev/vda rw init=/sbin/twin-guest-init quiet panic=-1 twin.repo=${REPO_ROOT} twin.timeout_scale=${scale} ${out_arg}" \
        -drive "file=${dir}/root.img,format=raw,if=virtio" -snapshot \
        -virtfs "local,path=${REPO_ROOT},mount_tag=twinrepo,security_model=passthrough,id=repo" \
        -virtfs "local,path=${job},mount_tag=twinjob,security_model=passthrough,id=job" "${share_out[@]}" \
        < /dev/null > "${job}/console.log" 2>&1 &
    QEMU_PID=$!
    local qemu_pid=$QEMU_PID
    # Ctrl-C, a kill or an error: end our QEMU (by PID) and drop the job folder.
    # (|| true: errexit holds inside traps too, and QEMU has usually ended by then.)
    trap 'if [ -n "$QEMU_PID" ]; then kill "$QEMU_PID" 2>/dev/null || true; wait "$QEMU_PID" 2>/dev/null || true; fi; rm -rf "$JOB"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    # The guest's console from its own first line on (the firmware's screen codes are noise).
    tail -n +1 -f "${job}/console.log" --pid="$qemu_pid" | sed -u -n -e 's/^.*\(netem-guest: up\)/\1/' -e '/netem-guest: up/,$p' &
    local waited=0
    while kill -0 "$qemu_pid" 2>/dev/null; do
        if [ "$waited" -ge "$TIMEOUT_S" ]; then
            log "the guest ran over ${TIMEOUT_S} s (TWIN_GUEST_TIMEOUT); stopping it"
            break
        fi
        sleep 1
        waited=$((waited + 1))
    done
    kill "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    if [ ! -s "${job}/rc" ]; then
        tail -n 20 "${job}/console.log" >&2
        die "the guest stopped without the command's status (console above)"
    fi
    rc=$(cat "${job}/rc")
    log "command exited with status ${rc} after ${waited} s"
    return "$rc"
}

[ $# -gt 0 ] || { usage >&2; exit 2; }
case "$1" in
    -h|--help|help) usage ;;
    build) shift; [ $# -eq 0 ] || die "build takes no arguments"; cmd_build >/dev/null ;;
    run) shift; cmd_run "$@" ;;
    *) usage >&2; die "unknown command '$1'" ;;
esac
