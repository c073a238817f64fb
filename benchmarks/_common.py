"""Helpers every benchmark script shares: percentiles of samples and the JSON result file."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def percentile(samples: list[float], q: float) -> float:
    """Percentile ``q`` (0-100) with linear interpolation between the nearest ranks."""
    ordered = sorted(samples)
    rank = q / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def write_result(path: str | Path, doc: object, *, indent: int = 2) -> Path:
    """Write the benchmark's JSON (creating its folder) and say where on stderr."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=indent, default=str) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return path
