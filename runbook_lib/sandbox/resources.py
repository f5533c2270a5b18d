"""The Cloud Run resources the emulator keeps: services, revisions, operations, jobs.

Mutable dataclasses, no behaviour beyond naming and traffic resolution: the
emulator (:mod:`.emulator`) and the job runner (:mod:`.jobs`) change them, the wire
format (:mod:`.wire`) renders them. This module imports nothing else of the sandbox.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "ExecutionState",
    "JobState",
    "OperationState",
    "RevisionState",
    "ServiceState",
    "TaskState",
]


@dataclass
class RevisionState:
    """One revision: its template, its process and its readiness (mutable emulator state)."""

    name: str
    service: ServiceState
    image: str
    profile: str
    template: dict[str, Any]
    generation: int
    create_time: datetime
    ready: bool | None = None
    reason_field: str = "revisionReason"
    reason: str = "PENDING"
    message: str = ""
    transition_time: datetime | None = None
    port: int = 0
    pid: int = 0
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def full_name(self) -> str:
        return f"{self.service.full_name}/revisions/{self.name}"


@dataclass
class ServiceState:
    """One Cloud Run service (mutable emulator state)."""

    project: str
    region: str
    name: str
    template: dict[str, Any]
    uri: str = ""
    traffic: list[dict[str, Any]] = field(
        default_factory=lambda: [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}]
    )
    revisions: dict[str, RevisionState] = field(default_factory=dict)
    generation: int = 0
    observed_generation: int = 0
    latest_created: str = ""
    latest_ready: str = ""
    ingress: str = "INGRESS_TRAFFIC_ALL"
    create_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    update_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    failure: str = ""
    reconciling: bool = False
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    # Revision tag -> its own URL (Cloud Run: https://TAG---SERVICE-HASH-REGION.a.run.app).
    tag_uris: dict[str, str] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"projects/{self.project}/locations/{self.region}/services/{self.name}"

    def tagged(self, tag: str) -> str:
        """The revision ``tag`` points at now (LATEST resolved), or ``""``."""
        for rev, _, t in self.resolved_traffic():
            if t == tag:
                return rev
        return ""

    def resolved_traffic(self) -> list[tuple[str, int, str]]:
        """(revision, percent, tag) per target, with LATEST resolved to the latest ready one."""
        out = []
        for t in self.traffic:
            if t.get("type") == "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST":
                rev = self.latest_ready
            else:
                rev = t.get("revision", "")
            out.append((rev, int(t.get("percent", 0)), t.get("tag", "")))
        return out


@dataclass
class OperationState:
    """A long-running operation (``done`` flips when the rollout ends)."""

    name: str
    service: ServiceState
    done: bool = False
    error: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    task: asyncio.Task[None] | None = None


@dataclass
class TaskState:
    """One task of an execution (mutable emulator state)."""

    index: int
    state: str = "PENDING"  # PENDING RUNNING SUCCEEDED FAILED CANCELLED
    attempt: int = 0
    retried: int = 0
    pid: int = 0
    exit_code: int | None = None
    message: str = ""
    start_time: datetime | None = None
    completion_time: datetime | None = None
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class ExecutionState:
    """One execution of a job (mutable emulator state)."""

    name: str
    job: JobState
    task_count: int
    parallelism: int
    max_retries: int
    timeout_s: float
    template: dict[str, Any]
    create_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    start_time: datetime | None = None
    completion_time: datetime | None = None
    tasks: list[TaskState] = field(default_factory=list)
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    cancelled: bool = False
    pids: set[int] = field(default_factory=set)

    @property
    def full_name(self) -> str:
        return f"{self.job.full_name}/executions/{self.name}"

    @property
    def done(self) -> bool:
        return self.completion_time is not None

    def count(self, state: str) -> int:
        return sum(1 for t in self.tasks if t.state == state)


@dataclass
class JobState:
    """One Cloud Run job (mutable emulator state)."""

    project: str
    region: str
    name: str
    template: dict[str, Any]
    labels: dict[str, str] = field(default_factory=dict)
    generation: int = 1
    create_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    update_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    executions: list[ExecutionState] = field(default_factory=list)
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def full_name(self) -> str:
        return f"projects/{self.project}/locations/{self.region}/jobs/{self.name}"
