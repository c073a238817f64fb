"""Unit strings: every kind, and every way a value can be wrong."""

from __future__ import annotations

import doctest

import pytest

from twin.model import optics, units, zoo
from twin.model.units import UnitError


@pytest.mark.parametrize(("parser", "text", "expected"), [
    (units.parse_duration, "2.5ms", 0.0025),
    (units.parse_duration, "30min", 1800.0),
    (units.parse_duration, "24h", 86400.0),
    (units.parse_duration, "1d", 86400.0),
    (units.parse_duration, "150us", 150e-6),
    (units.parse_duration, "500ns", 500e-9),
    (units.parse_duration, " 3 s ", 3.0),
    (units.parse_length, "600km", 600.0),
    (units.parse_length, "350m", 0.35),
    (units.parse_length, "1.2Mm", 1200.0),
    (units.parse_rate, "100Mbit", 1e8),
    (units.parse_rate, "10Gbps", 1e10),
    (units.parse_rate, "1e3kbit", 1e6),
    (units.parse_size, "4KiB", 4096.0),
    (units.parse_size, "50MB", 50e6),
    (units.parse_size, "512B", 512.0),
    (units.parse_power, "1.2kW", 1200.0),
    (units.parse_power, "350W", 350.0),
    (units.parse_frequency, "50/s", 50.0),
    (units.parse_frequency, "600/min", 10.0),
    (units.parse_propagation, "4.9us/km", 4.9e-6),
    (units.parse_propagation, "4900ns/km", 4.9e-6),
])
def test_parses_every_kind(parser, text, expected):
    assert parser(text) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("text", ["5", "5.0", " 7 "])
def test_missing_unit_is_an_error_with_an_example(text):
    with pytest.raises(UnitError, match=r"has no unit; write it with one, e.g. '2.5ms'"):
        units.parse_duration(text)


@pytest.mark.parametrize("value", [5, 2.5])
def test_bare_numbers_are_rejected(value):
    with pytest.raises(UnitError, match="has no unit"):
        units.parse_length(value)


def test_unknown_unit_lists_the_known_ones():
    with pytest.raises(UnitError, match=r"unknown duration unit 'fortnights'.*use one of ns, us, ms"):
        units.parse_duration("2fortnights")


def test_unit_of_another_kind_is_unknown():
    with pytest.raises(UnitError, match="unknown length unit 'ms'"):
        units.parse_length("5ms")


@pytest.mark.parametrize("value", [True, False, None, [1], {"a": 1}])
def test_non_scalar_inputs_are_rejected(value):
    with pytest.raises(UnitError, match="expected a rate such as '100Mbit'"):
        units.parse_rate(value)


@pytest.mark.parametrize("text", ["ms", "", "1.2.3ms", "five ms", "1e999ms"])
def test_garbage_is_rejected(text):
    with pytest.raises(UnitError):
        units.parse_duration(text)


def test_negative_values_parse_so_validation_can_say_what_is_wrong():
    # Signs are kept: the cross-field rules report "must be positive" with the path.
    assert units.parse_length("-5km") == -5.0


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0031, "3.1ms"), (7200, "2h"), (90, "1.5min"), (2.0, "2s"), (0.00015, "150us"),
])
def test_format_duration(seconds, text):
    assert units.format_duration(seconds) == text


@pytest.mark.parametrize("module", [units, optics, zoo])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0
