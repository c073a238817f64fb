#!/usr/bin/env bash
# Quick start for the APN twin. See ./lab.sh --help.
set -euo pipefail

# The main job of `./lab.sh demo`: the default scenario, end to end (about 6 minutes).
MAIN_CMD=(.venv/bin/twin run scenarios/spring-day.yaml --out runs/spring-day --force)
# The whole test suite; CI must not skip root tests, hence the variable.
TEST_CMD=(env TWIN_REQUIRE_ROOT_TESTS=1 .venv/bin/python -m pytest -q tests)

cd "$(dirname "${BASH_SOURCE[0]}")"

usage() {
    cat <<EOF
Usage: sudo ./lab.sh COMMAND [ARGS...]

Commands:
  demo [ARGS]      install (scripts/install.sh), then run the main job:
                     ${MAIN_CMD[*]} [ARGS]
  test [ARGS]      install, then run the whole test suite (root tests required):
                     ${TEST_CMD[*]} [ARGS]
                   e.g. sudo ./lab.sh test -k install -x
  install [FLAGS]  only install; FLAGS go to scripts/install.sh
                   (e.g. --skip-image: no workload container image)
  -h, --help       show this help

Needs root (sudo) for everything but --help: the twin creates network
namespaces, veth links and Open vSwitch bridges. Supported hosts: Debian 12+,
Ubuntu 22.04+; elsewhere use the VM in vagrant/ (see vagrant/README.md).
The exit status is that of the job.
EOF
}

if [ $# -eq 0 ]; then
    usage >&2
    exit 2
fi

cmd="$1"
shift
case "$cmd" in
    -h|--help|help)
        usage
        ;;
    install)
        exec scripts/install.sh "$@"
        ;;
    demo)
        scripts/install.sh
        echo "lab: running ${MAIN_CMD[*]} $*"
        exec "${MAIN_CMD[@]}" "$@"
        ;;
    test)
        scripts/install.sh
        echo "lab: running ${TEST_CMD[*]} $*"
        exec "${TEST_CMD[@]}" "$@"
        ;;
    *)
        echo "lab: unknown command '$cmd'; see ./lab.sh --help" >&2
        exit 2
        ;;
esac
