"""Typed unit strings used in description files: ``"2.5ms"``, ``"600km"``, ``"100Mbit"``.

Every quantity in a file carries its unit, so a reader never has to guess whether
``5`` meant milliseconds or microseconds. Values are converted to one base unit
per kind (seconds, kilometres, bit/s, bytes, watts, seconds per km, 1/s):

>>> parse_duration("2.5ms")
0.0025
>>> parse_length("1.2Mm")
1200.0
>>> parse_rate("10Gbit")
10000000000.0
>>> parse_size("4KiB")
4096.0
>>> round(parse_propagation("4.9us/km") * 1e6, 9)   # seconds per km, shown in us
4.9
"""

from __future__ import annotations

import math
import re

_NUMBER = r"(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
_PATTERN = re.compile(rf"^\s*{_NUMBER}\s*(?P<unit>[A-Za-z/%]*)\s*$")

DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0,
    "min": 60.0, "h": 3600.0, "d": 86400.0,
}
LENGTH_UNITS = {"m": 1e-3, "km": 1.0, "Mm": 1e3}
RATE_UNITS = {
    "bit": 1.0, "kbit": 1e3, "Mbit": 1e6, "Gbit": 1e9, "Tbit": 1e12,
    "bps": 1.0, "kbps": 1e3, "Mbps": 1e6, "Gbps": 1e9, "Tbps": 1e12,
}
SIZE_UNITS = {
    "B": 1.0, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9,
    "KiB": 1024.0, "MiB": 1024.0**2, "GiB": 1024.0**3,
}
POWER_UNITS = {"W": 1.0, "kW": 1e3, "MW": 1e6}
FREQUENCY_UNITS = {"/s": 1.0, "/min": 1 / 60.0, "/h": 1 / 3600.0}
PROPAGATION_UNITS = {"us/km": 1e-6, "ns/km": 1e-9, "ms/km": 1e-3}


class UnitError(ValueError):
    """A unit string could not be parsed; the message says what a valid one looks like."""


def _parse(text: object, units: dict[str, float], kind: str, example: str) -> float:
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise UnitError(f"expected a {kind} such as {example!r}, got {type(text).__name__}")
    if not isinstance(text, str):
        raise UnitError(f"{kind} {text!r} has no unit; write it with one, e.g. {example!r}")
    match = _PATTERN.match(text)
    if not match:
        raise UnitError(f"{text!r} is not a {kind}; write a number and a unit, e.g. {example!r}")
    unit = match["unit"]
    if not unit:
        raise UnitError(f"{kind} {text!r} has no unit; write it with one, e.g. {example!r}")
    if unit not in units:
        known = ", ".join(units)
        raise UnitError(f"unknown {kind} unit {unit!r} in {text!r}; use one of {known}")
    value = float(match["num"]) * units[unit]
    if not math.isfinite(value):
        raise UnitError(f"{kind} {text!r} is not a finite number")
    return value


def parse_duration(text: object) -> float:
    """Seconds from ``"2.5ms"``, ``"30min"``, ``"24h"``."""
    return _parse(text, DURATION_UNITS, "duration", "2.5ms")


def parse_length(text: object) -> float:
    """Kilometres from ``"600km"``, ``"350m"``."""
    return _parse(text, LENGTH_UNITS, "length", "600km")


def parse_rate(text: object) -> float:
    """Bits per second from ``"100Mbit"``, ``"10Gbps"``."""
    return _parse(text, RATE_UNITS, "rate", "100Mbit")


def parse_size(text: object) -> float:
    """Bytes from ``"512B"``, ``"4KiB"``, ``"50MB"``."""
    return _parse(text, SIZE_UNITS, "size", "4KiB")


def parse_power(text: object) -> float:
    """Watts from ``"350W"``, ``"1.2kW"``."""
    return _parse(text, POWER_UNITS, "power", "350W")


def parse_frequency(text: object) -> float:
    """Events per second from ``"50/s"``, ``"600/min"``."""
    return _parse(text, FREQUENCY_UNITS, "rate of events", "50/s")


def parse_propagation(text: object) -> float:
    """Seconds per kilometre from ``"4.9us/km"``."""
    return _parse(text, PROPAGATION_UNITS, "propagation delay", "4.9us/km")


def format_duration(seconds: float) -> str:
    """A short human string for a duration: ``format_duration(0.0031)`` -> ``'3.1ms'``."""
    if seconds >= 3600:
        return f"{seconds / 3600:g}h"
    if seconds >= 60:
        return f"{seconds / 60:g}min"
    if seconds >= 1:
        return f"{seconds:g}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.4g}ms"
    return f"{seconds * 1e6:.4g}us"
