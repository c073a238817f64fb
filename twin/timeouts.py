"""Deadlines for the twin's own start-up steps, stretched on slow hosts.

The twin waits with fixed deadlines for things it starts: the controller's API
to answer, every switch to connect, a probe run to finish. They suit a real
machine with a margin of several times. A software-emulated VM (the netem
guest of ``scripts/netem-guest.sh`` under QEMU's TCG runs 10-30x slower) sets
``TWIN_TIMEOUT_SCALE`` to stretch them all at once instead of each by hand.
"""

from __future__ import annotations

import os

from twin.errors import TwinError

ENV = "TWIN_TIMEOUT_SCALE"


def timeout_scale() -> float:
    """``TWIN_TIMEOUT_SCALE`` as a number >= 1 (1 when unset).

    Raises:
        TwinError: not a number, or below 1.
    """
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return 1.0
    try:
        scale = float(raw)
    except ValueError:
        scale = float("nan")
    if not scale >= 1.0 or scale == float("inf"):
        raise TwinError(f"{ENV}={raw!r}: must be a finite number >= 1 (e.g. 10 on a software-emulated VM); "
                        f"unset it on a normal machine")
    return scale


def scaled(seconds: float) -> float:
    """``seconds`` times :func:`timeout_scale`."""
    return seconds * timeout_scale()
