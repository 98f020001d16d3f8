"""What a pipeline run produced: :class:`PipelineResult` (read by the runner and the report)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsplit.inference.schedule import Schedule
from fedsplit.serving.serve_sim import ServeReport
from fedsplit.inference.system_model import Problem
from fedsplit.models.family import separation


@dataclass
class PipelineResult:
    """Everything a pipeline run produced (also on disk in ``folder``)."""

    folder: Path
    catalog: dict[str, Any]
    problem: Problem
    devices: list[str]
    schedule: Schedule
    serve: ServeReport
    member_dirs: dict[str, Path]
    timings_s: dict[str, float] = field(default_factory=dict)

    family: tuple[str, ...] = ()

    @property
    def separation(self) -> list[str]:
        """Adjacent members of ``family.sizes`` (by FLOPs) whose accuracy or FLOPs do not increase;
        empty if they separate."""
        return separation([m for m in self.catalog["models"] if m["name"] in self.family])
