"""Run the APN controller app under os-ken without the ``osken-manager`` script.

``python -m controllers.run --ofp-port 6653 --config ctl.json`` sets os-ken's
OpenFlow listen address (loopback by default: only local switches need it) and
runs :mod:`controllers.apn_controller` until SIGTERM. The API address is in the
config file (see that module).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controllers.run", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="controller config JSON (else $TWIN_CONTROLLER_CONFIG)")
    parser.add_argument("--ofp-host", default="127.0.0.1", help="OpenFlow listen address (default %(default)s)")
    parser.add_argument("--ofp-port", type=int, default=6653, help="OpenFlow listen port (default %(default)s)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    if args.config:
        os.environ["TWIN_CONTROLLER_CONFIG"] = args.config
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    # Imported here so that importing this module has no side effects.
    from os_ken import cfg
    from os_ken.base.app_manager import AppManager
    import os_ken.controller.controller  # noqa: F401  (registers the ofp-* options)

    cfg.CONF(args=[], project="os_ken")
    cfg.CONF.set_override("ofp_listen_host", args.ofp_host)
    cfg.CONF.set_override("ofp_tcp_listen_port", args.ofp_port)
    from twin.errors import TwinError
    try:
        AppManager.run_apps(["controllers.apn_controller"])
    except TwinError as err:
        print(f"controller: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
