"""The seven phases of the runbook (SPEC section 2): a domain fact, not notebook state.

Every layer reads this table: the runner (what to execute), the verdict rules (which
phase deploys, which validates), the report writers (names and titles) and the
notebook context (where a phase persists). It imports nothing from the package.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_PHASES",
    "DEPLOY_PHASE",
    "PHASES",
    "ROLLBACK_PHASE",
    "VALIDATION_PHASES",
    "Phase",
    "phase_file",
]


@dataclass(frozen=True, slots=True)
class Phase:
    """One phase of the runbook.

    Attributes:
        number: 1-7.
        notebook: the public notebook file name (SPEC section 2).
        title: a short human title.
        mutating: true when the phase changes the service (deploy, traffic).

    For code written against the old ``(notebook, title, mutating)`` tuple,
    ``PHASES[p][0]`` and ``name, title, mutating = PHASES[p]`` still work.
    """

    number: int
    notebook: str
    title: str
    mutating: bool

    def _legacy(self) -> tuple[str, str, bool]:
        return (self.notebook, self.title, self.mutating)

    def __iter__(self) -> Iterator[str | bool]:
        return iter(self._legacy())

    def __getitem__(self, index: int) -> str | bool:
        return self._legacy()[index]

    def __len__(self) -> int:
        return 3


PHASES: dict[int, Phase] = {
    p.number: p
    for p in (
        Phase(1, "01_deployment_status.ipynb", "Deployment status", False),
        Phase(2, "02_deploy.ipynb", "Deploy", True),
        Phase(3, "03_endpoint_validation.ipynb", "Endpoint validation", False),
        Phase(4, "04_mission_critical.ipynb", "Mission-critical tests", False),
        Phase(5, "05_business_value.ipynb", "Business value", False),
        Phase(6, "06_rollback.ipynb", "Rollback", True),
        Phase(7, "07_monitoring.ipynb", "Monitoring", False),
    )
}

# The plan when no --phases is given (6 joins it only when a rollback is recommended).
DEFAULT_PHASES: tuple[int, ...] = (1, 2, 3, 4, 5, 7)
# Phases that validate a deploy: pointless (skipped) after the deploy itself failed.
VALIDATION_PHASES: tuple[int, ...] = (3, 4, 5, 7)
DEPLOY_PHASE = 2
ROLLBACK_PHASE = 6


def phase_file(run_dir: str | os.PathLike[str], phase: int) -> Path:
    """Where a phase's results are persisted inside a run folder."""
    return Path(run_dir) / "phases" / f"{phase:02d}.json"
