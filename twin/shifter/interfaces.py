"""What the daemon needs from the world, as small protocols.

The daemon never touches containers, namespaces or the controller itself: it
talks to a :class:`Runtime`. The emulated runtime (``twin.workloads.site_runtime``)
drives podman and the controller's HTTP API; unit tests hand in a fake.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol

from twin.errors import TwinError


class ControllerUnavailable(TwinError):
    """The controller (or another dependency) did not answer; worth retrying later."""


class MigrationFailed(TwinError):
    """A migration did not complete; the service still runs at its source."""


@dataclass
class MigrationOutcome:
    """What one migration cost, as the service's clients saw it."""

    service: str
    src: str
    dst: str
    strategy: str
    ok: bool
    duration_s: float = 0.0
    state_bytes: int = 0
    transfer_s: float = 0.0
    interruption_ms: float | None = None
    failed_requests: int = 0
    error: str | None = None
    phases_s: dict[str, float] = field(default_factory=dict)

    def to_event(self) -> dict:
        event = asdict(self)
        event["from"] = event.pop("src")
        event["to"] = event.pop("dst")
        return event


class Runtime(Protocol):
    """Where services run and how they move; every call may raise ControllerUnavailable."""

    async def placements(self) -> dict[str, str]:
        """Site that serves each service now (new connections go there)."""

    async def migrate(self, service: str, src: str, dst: str) -> MigrationOutcome:
        """Move ``service``; on failure it must still run at ``src`` (raise MigrationFailed)."""

    async def ensure_running(self, service: str, site: str) -> None:
        """Start ``service`` at ``site`` if no instance of it runs anywhere."""

    async def apply_event(self, kind: str, span: tuple[str, str] | None, site: str | None) -> dict:
        """Apply a scenario event (fibre cut/repair, site down/up); returns what happened."""
