"""The progress bar's SLO state, read incrementally from the load generators' CSV files."""

from __future__ import annotations

import csv
from types import SimpleNamespace

from twin.experiment.emulated_run import LiveSlo
from twin.workloads.stats import CSV_FIELDS, RequestRecord


class _Fleet:
    def __init__(self, files):
        self._files = files

    def files(self):
        return self._files


def _scenario():
    slo = SimpleNamespace(latency=0.012, percentile=99.9)
    return SimpleNamespace(services=[SimpleNamespace(id="drive-assist", slo=slo)])


def _rows(n, start, latency_ms=3.0, outcome="ok"):
    return [RequestRecord(start + i, "fuk", "fuk", "i1", latency_ms, 300, outcome, 200).csv_row()
            for i in range(n)]


def test_rows_written_in_pieces_with_crlf_endings_are_all_read_whole(tmp_path):
    path = tmp_path / "drive-assist.fuk.csv"
    live = LiveSlo(_scenario(), _Fleet({("drive-assist", "fuk"): path}))
    with path.open("w", newline="") as fh:  # as the load generator writes it: csv's \r\n rows
        writer = csv.writer(fh)
        writer.writerow(CSV_FIELDS)
        for row in _rows(50, 0.0):
            writer.writerow(row)
        fh.write("1000.5,fuk,fuk,i1,3.0")  # a row the writer has not finished yet
    state = live.update()["drive-assist"]
    assert state == "p99.9=3.0ms", state
    with path.open("a", newline="") as fh:
        fh.write(",300,ok,200\r\n")
        writer = csv.writer(fh)
        for _ in range(3):  # several reads: a byte lost per row would shift each next read
            for row in _rows(50, 2000.0):
                writer.writerow(row)
            fh.flush()
            state = live.update()["drive-assist"]
            assert "err" not in state and state == "p99.9=3.0ms", state
    assert len(live.recent["drive-assist"]) == 50 + 1 + 150


def test_failures_and_misses_show_in_the_state(tmp_path):
    path = tmp_path / "drive-assist.fuk.csv"
    live = LiveSlo(_scenario(), _Fleet({("drive-assist", "fuk"): path}))
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_FIELDS)
        for row in _rows(20, 0.0) + _rows(2, 50.0, latency_ms=None, outcome="timeout"):
            writer.writerow(row)
    assert live.update()["drive-assist"] == "p99.9=infms! 2err"
