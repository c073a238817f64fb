"""One root for every error the twin raises on purpose.

Callers (the CLI above all) catch :class:`TwinError` and print its one-line
message; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


class TwinError(Exception):
    """Base class of the twin's own errors; ``str(err)`` is a complete one-line message."""

    exit_code = 1


@dataclass(frozen=True)
class Problem:
    """One problem in a description file: where, what is wrong, how to fix it."""

    file: str
    line: int | None
    path: str
    message: str
    fix: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        path = self.path or "(top level)"
        return f"{where}: {path}: {self.message}; {self.fix}"


class ValidationError(TwinError):
    """A description file is not valid; carries every problem found, not just the first."""

    exit_code = 2

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class NoPathError(TwinError):
    """No lightpath can be set up between two sites."""
