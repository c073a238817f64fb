"""TWIN_TIMEOUT_SCALE stretches the twin's start-up deadlines; bad values get one clear line."""

from __future__ import annotations

import pytest

from twin.emulation.controller import ControllerClient, ControllerProcess
from twin.errors import TwinError
from twin.timeouts import ENV, scaled, timeout_scale


def test_unset_means_no_stretch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert timeout_scale() == 1.0 and scaled(20) == 20


def test_scale_reaches_the_controllers_deadlines(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv(ENV, "12.5")
    assert scaled(20) == 250
    assert ControllerClient().timeout == 375
    process = ControllerProcess("topologies/triangle.yaml", workdir=tmp_path)
    assert process.start_timeout == 250
    # an explicit deadline is the caller's and stays as given
    assert ControllerProcess("topologies/triangle.yaml", workdir=tmp_path, start_timeout=3).start_timeout == 3


@pytest.mark.parametrize("raw", ["fast", "0.5", "-2", "nan", "inf"])
def test_bad_values_name_the_variable_and_the_fix(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(ENV, raw)
    with pytest.raises(TwinError, match=f"{ENV}=.*must be a finite number >= 1"):
        timeout_scale()
