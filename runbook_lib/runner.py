"""Execute the phase notebooks with papermill and leave a run folder behind.

``runbook run`` is a thin shell over :func:`run`: it validates the environment
(configuration errors stop the run before any kernel starts), creates the run
folder, executes the chosen phases in order on a phase engine
(:mod:`runbook_lib.engines`: by default one fresh ``python3`` kernel per notebook,
working directory = the repository root; or the same steps in this process) and hands
the folder to :mod:`runbook_lib.evidence` to be judged and sealed. A kernel is driven
by :mod:`runbook_lib.kernels`; the embedded sandbox of a run without an environment by
:mod:`runbook_lib.sandbox_session`.

The runner keeps each phase's outcome and record in memory and, before every
phase, asks the pure :func:`runbook_lib.verdict.next_action` whether it runs (the
gates: a failed deploy skips validation, the rollback joins when recommended and
approved). Exit codes: 0 all gates pass, 1 a check failed, 3 a notebook errored,
timed out or lost its kernel, or the run was interrupted (the folder is then
sealed with verdict ``interrupted`` before the interrupt propagates).
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import evidence
from .engines import KernelEngine, PhaseEngine, PhaseRequest
from .evidence import RunContext
from .exceptions import ConfigError
from .interrupts import guarded
from .kernels import signum_of
from .manifest import unsealed_runs
from .phases import DEFAULT_PHASES, PHASES, ROLLBACK_PHASE
from .results import Recommendation
from .sandbox_session import SandboxSession
from .settings_load import load_settings, resolve_environment
from .settings_rules import CELL_TIMEOUT_S
from .verdict import PhaseOutcome, PhaseRecord, RunPlan, next_action, settle

__all__ = [
    "EXIT_CHECK_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NOTEBOOK_ERROR",
    "EXIT_OK",
    "EXIT_USAGE",
    "NOTEBOOK_PARAMETERS",
    "Progress",
    "RunOptions",
    "RunOutcome",
    "notebook_parameters",
    "notebooks_dir",
    "parse_params",
    "parse_phases",
    "repo_root",
    "run",
]

log = logging.getLogger(__name__)

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_NOTEBOOK_ERROR = 0, 1, 2, 3
# An interrupted run is sealed and exits like a notebook that did not complete.
EXIT_INTERRUPTED = EXIT_NOTEBOOK_ERROR
_CONFIG_NOTE = "configuration: "
_COMMON = ("environment", "run_dir", "approve", "overrides_json")
# The parameters the runner injects into each phase notebook (a test checks the
# notebooks' parameters cells declare exactly these).
NOTEBOOK_PARAMETERS: dict[int, tuple[str, ...]] = {
    p: _COMMON + (("rollback_to",) if p == ROLLBACK_PHASE else ()) for p in PHASES
}
# Notebook parameters that ``--param`` may set directly (everything else is a dotted setting).
_NOTEBOOK_PARAMS_FROM_CLI = ("rollback_to",)


def repo_root() -> Path:
    """The repository root (kernels run there so relative environment paths resolve)."""
    return Path(__file__).resolve().parent.parent


def notebooks_dir() -> Path:
    """Where the seven phase notebooks live."""
    return repo_root() / "notebooks"


def parse_phases(spec: str | None) -> tuple[int, ...]:
    """``"1,3-5"`` -> ``(1, 3, 4, 5)``; ``None``/``""`` -> the default plan.

    Raises:
        ConfigError: unknown phase numbers or malformed ranges.
    """
    if not spec or not spec.strip():
        return DEFAULT_PHASES
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise ConfigError(f"--phases: {part!r} is not a phase number or range like 3-5")
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        if lo > hi:
            raise ConfigError(f"--phases: range {part!r} is backwards")
        for p in range(lo, hi + 1):
            if p not in PHASES:
                raise ConfigError(f"--phases: unknown phase {p}; phases are 1-{max(PHASES)}")
            out.add(p)
    return tuple(sorted(out))


def parse_params(items: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--param K=V`` items -> (dotted setting overrides, notebook parameters).

    Values are read as JSON when they parse (``5``, ``true``, ``["/a"]``), else as text.
    ``rollback_to=REV`` is a notebook parameter; other keys must be dotted settings
    (``thresholds.hold_s=5``).

    Raises:
        ConfigError: an item without ``=`` or an undotted unknown key.
    """
    overrides: dict[str, Any] = {}
    nb_params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--param {item!r}: expected KEY=VALUE")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if key in _NOTEBOOK_PARAMS_FROM_CLI:
            nb_params[key] = str(value)
        elif "." in key:
            overrides[key] = value
        else:
            raise ConfigError(
                f"--param {key}: use a dotted setting such as thresholds.hold_s=5, or one of "
                f"{', '.join(_NOTEBOOK_PARAMS_FROM_CLI)}"
            )
    return overrides, nb_params


def notebook_parameters(
    phase: int,
    *,
    environment: str,
    run_dir: str,
    approve: bool,
    overrides: Mapping[str, Any] | None = None,
    rollback_to: str = "",
) -> dict[str, Any]:
    """The papermill parameters for ``phase`` (keys = :data:`NOTEBOOK_PARAMETERS`)."""
    params: dict[str, Any] = {
        "environment": environment,
        "run_dir": run_dir,
        "approve": approve,
        "overrides_json": json.dumps(dict(overrides or {}), sort_keys=True),
    }
    if phase == ROLLBACK_PHASE:
        params["rollback_to"] = rollback_to
    return params


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What ``runbook run`` was asked to do.

    Attributes:
        environment: environment name or TOML path; '' = the embedded sandbox.
        phases: phases to run ('' / None = 1,2,3,4,5,7 with 6 when a rollback is recommended
            and approved); an explicit list runs exactly those (6 included if listed).
        approve: allow mutating steps.
        out_dir: where run folders are created.
        overrides: dotted settings overrides (``--param thresholds.hold_s=5``).
        rollback_to: revision for phase 6 ('' = the one that served before the deploy).
        cell_timeout_s: per-cell execution timeout.
        deadline_s: whole-run deadline (kernel starts included).
        start_timeout_s: how long a kernel may take to start.
        kernel_name: Jupyter kernel to run the notebooks in.
        notebooks: folder holding the phase notebooks (default: the repo's ``notebooks/``).
        serving, deploy_image, sandbox_state_dir: passed to the sandbox when the runner starts it.
        log_delay_s: the started sandbox's Cloud Logging ingestion delay (``--log-delay``).
    """

    environment: str = ""
    phases: tuple[int, ...] | None = None
    approve: bool = False
    out_dir: Path = Path("outputs")
    overrides: Mapping[str, Any] = field(default_factory=dict)
    rollback_to: str = ""
    cell_timeout_s: float = CELL_TIMEOUT_S
    deadline_s: float = 1800.0
    start_timeout_s: float = 60.0
    kernel_name: str = "python3"
    notebooks: Path | None = None
    serving: str | None = None
    deploy_image: str | None = None
    sandbox_state_dir: Path | None = None
    log_delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Progress:
    """One progress event for the terminal (the CLI decides how to show it).

    ``event`` is ``phase-start``, ``step``, ``phase-end``, ``phase-skip`` or ``note``.
    """

    event: str
    phase: int = 0
    index: int = 0
    total: int = 0
    notebook: str = ""
    step: str = ""
    elapsed_s: float = 0.0
    status: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How a run ended.

    Attributes:
        run_dir: the run folder.
        exit_code: 0 all gates pass, 1 a check failed, 3 a notebook errored/timed out.
        verdict: ``pass``, ``fail`` or ``error``.
        recommendation: ``none`` / ``hold`` / ``rollback`` with target and reasons.
        phases: what happened to each phase.
        safe_to_share: false when the final secret scan found secret material.
        elapsed_s: wall time of the whole run.
    """

    run_dir: Path
    exit_code: int
    verdict: str
    recommendation: Recommendation
    phases: tuple[PhaseOutcome, ...]
    safe_to_share: bool
    elapsed_s: float


ProgressFn = Callable[[Progress], None]


@guarded
def run(
    options: RunOptions,
    *,
    progress: ProgressFn | None = None,
    sandbox: Any = None,
    engine: PhaseEngine | None = None,
) -> RunOutcome:
    """Execute the phases, apply the gates, write and seal the run folder.

    Args:
        options: what to run.
        progress: receives :class:`Progress` events (the CLI prints them).
        sandbox: the sandbox manager module (default ``runbook_lib.sandbox.manager``),
            used only when ``options.environment`` is empty.
        engine: executes each phase (default :class:`~runbook_lib.engines.KernelEngine`,
            the notebooks in Jupyter kernels; ``InProcessEngine`` runs their steps here).

    Raises:
        ConfigError: bad environment, overrides or phases (before any kernel starts).
        SandboxError: the sandbox could not be started.
        KeyboardInterrupt: a signal stopped the run (``RunInterrupted`` for SIGTERM);
            when a run folder exists it was sealed first, and the exception carries
            ``run_dir`` and ``outcome`` (a :class:`RunOutcome` with exit code 3).
    """
    notes: list[str] = []
    user_progress: ProgressFn = progress or (lambda _p: None)

    def emit(p: Progress) -> None:
        # Every note the operator sees is recorded in the run folder too.
        if p.event == "note":
            notes.append(p.message)
        user_progress(p)

    eng = engine if engine is not None else KernelEngine()
    if options.environment:
        return _run(options, options.environment, emit, (), notes, eng)
    manager = sandbox or importlib.import_module("runbook_lib.sandbox.manager")
    session = SandboxSession(
        manager,
        serving=options.serving,
        deploy_image=options.deploy_image,
        state_dir=options.sandbox_state_dir,
        log_delay_s=options.log_delay_s,
        note=lambda m: emit(Progress("note", message=m)),
    )
    with session as sb:
        return _run(options, sb.env_file, emit, tuple(sb.secrets), notes, eng, sandbox_lost=sb.lost)


@dataclass
class _RunState:
    """What the run has produced so far (kept in memory; the disk is the record)."""

    run_dir: Path
    run_id: str
    started_at: str
    outcomes: list[PhaseOutcome] = field(default_factory=list)
    records: dict[int, PhaseRecord] = field(default_factory=dict)
    deadline_hit: bool = False
    lost: str = ""  # the sandbox died: where, and what it means


def _run(
    options: RunOptions,
    environment: str,
    emit: ProgressFn,
    extra_secrets: Sequence[str],
    notes: list[str] | None = None,
    engine: PhaseEngine | None = None,
    sandbox_lost: Callable[[], str] | None = None,
) -> RunOutcome:
    engine = engine if engine is not None else KernelEngine()
    t0 = time.monotonic()
    notes = notes if notes is not None else []
    env_path = resolve_environment(environment).resolve()
    # Loading here validates the file and overrides (exit 2 before any kernel) and
    # registers the secrets the settings name, so the final scan knows their values.
    settings = load_settings(env_path, overrides=dict(options.overrides))
    for warning in settings.warnings:
        emit(Progress("note", message=f"{_CONFIG_NOTE}{warning}"))
    explicit = bool(options.phases)
    requested = tuple(sorted(set(options.phases))) if options.phases else DEFAULT_PHASES
    plan = RunPlan(requested, explicit, options.approve or settings.auto_approve)
    nb_dir = options.notebooks or notebooks_dir()
    for p in plan.order:
        if not (nb_dir / PHASES[p].notebook).is_file():
            raise ConfigError(f"notebook for phase {p} not found: {nb_dir / PHASES[p].notebook}")

    for name in unsealed_runs(options.out_dir):
        emit(
            Progress(
                "note",
                message=f"run folder {name} was never sealed (its run was killed, or is still "
                f"running): `runbook verify {Path(options.out_dir) / name}` lists the phases "
                "it recorded and any mutation it claimed",
            )
        )
    run_dir = evidence.create_run_dir(options.out_dir, settings.name).resolve()
    state = _RunState(run_dir, run_dir.name, datetime.now(UTC).isoformat())
    parameters = {
        "environment": str(env_path),
        "environment_name": settings.name,
        "requested_phases": list(requested),
        "approve": options.approve,
        "auto_approve": settings.auto_approve,
        "overrides": dict(options.overrides),
        "rollback_to": options.rollback_to,
        "cell_timeout_s": options.cell_timeout_s,
        "deadline_s": options.deadline_s,
        "kernel_name": options.kernel_name,
        # A folder from the in-process engine holds no executed notebooks: the record says why.
        "engine": type(engine).__name__,
        "settings": settings.redacted_dict(),
    }
    secrets = [*(v for v in (settings.auth.token, settings.auth.jwt_secret) if v), *extra_secrets]

    def seal(interrupted: Mapping[str, Any] | None = None) -> evidence.RunEvidence:
        context = RunContext(
            environment_ref=str(env_path),
            warnings=tuple(settings.warnings),
            not_applicable=dict(settings.not_applicable),
            # Configuration warnings have their own place in the record.
            notes=tuple(n for n in notes if not n.startswith(_CONFIG_NOTE)),
            interrupted=interrupted,
        )
        return evidence.finalize_run(
            run_dir,
            run_id=state.run_id,
            environment=settings.name,
            started_at=state.started_at,
            outcomes=state.outcomes,
            parameters={**parameters, "phases": [o.phase for o in state.outcomes]},
            secrets=secrets,
            records=state.records,
            context=context,
        )

    during = "start"
    try:
        total = len(requested)
        index = 0
        for phase in plan.order:
            during = f"phase {phase}"
            notebook = PHASES[phase].notebook
            remaining = options.deadline_s - (time.monotonic() - t0)
            if remaining <= 1:
                state.deadline_hit = True
            action = next_action(
                plan,
                phase,
                state.records,
                state.outcomes,
                deadline_reason=(
                    f"run deadline of {options.deadline_s:g} s reached: not executed"
                    if state.deadline_hit
                    else ""
                ),
            )
            if action.kind == "omit":
                continue
            if action.added:
                total += 1
                emit(
                    Progress(
                        "note",
                        message=f"rollback recommended: phase {phase} ({notebook}) joins the "
                        f"run, {total} phases in all",
                    )
                )
            index += 1
            if action.kind == "skip":
                state.outcomes.append(
                    PhaseOutcome(phase, notebook, action.status, 0.0, action.reason)
                )
                emit(Progress("phase-skip", phase, index, total, notebook, message=action.reason))
                continue
            outcome = _execute(
                options, phase, index, total, state, env_path, nb_dir, emit, t0, engine
            )
            state.outcomes.append(outcome)
            emit(
                Progress(
                    "phase-end",
                    phase,
                    index,
                    total,
                    notebook,
                    elapsed_s=time.monotonic() - t0,
                    status=outcome.status,
                    message=outcome.reason or f"{outcome.duration_s:.1f} s",
                )
            )
            lost = sandbox_lost() if sandbox_lost is not None else ""
            if lost:
                # Nothing after this point would be about the service: stop and say why.
                emit(Progress("note", message=f"{lost}; the run stops after phase {phase}"))
                state.lost = f"phase {phase}: {lost}"
                break
        during = "finalization"
        ev = seal({"signal": 0, "during": state.lost}) if state.lost else seal()
    except KeyboardInterrupt as exc:
        _seal_interrupted(exc, state, during, plan, seal, t0)
        raise
    if state.deadline_hit or state.lost or any(o.status == "error" for o in state.outcomes):
        code = EXIT_NOTEBOOK_ERROR
    elif ev.verdict != "pass":
        code = EXIT_CHECK_FAILED
    else:
        code = EXIT_OK
    return RunOutcome(
        run_dir,
        code,
        ev.verdict,
        ev.recommendation,
        tuple(state.outcomes),
        ev.safe_to_share,
        time.monotonic() - t0,
    )


def _execute(
    options: RunOptions,
    phase: int,
    index: int,
    total: int,
    state: _RunState,
    env_path: Path,
    nb_dir: Path,
    emit: ProgressFn,
    t0: float,
    engine: PhaseEngine,
) -> PhaseOutcome:
    """Run one phase on ``engine``, export its notebook, read its record, judge the outcome."""
    notebook = PHASES[phase].notebook
    run_dir = state.run_dir
    remaining = options.deadline_s - (time.monotonic() - t0)
    emit(Progress("phase-start", phase, index, total, notebook, elapsed_s=time.monotonic() - t0))
    params = notebook_parameters(
        phase,
        environment=str(env_path),
        run_dir=str(run_dir),
        approve=options.approve,
        overrides=options.overrides,
        rollback_to=options.rollback_to,
    )
    cell_timeout = min(options.cell_timeout_s, remaining)

    def on_step(cell_index: int, step: str) -> None:
        emit(
            Progress(
                "step",
                phase,
                index,
                total,
                notebook,
                step=step,
                elapsed_s=time.monotonic() - t0,
                message=f"cell {cell_index}",
            )
        )

    try:
        outcome = engine.execute(
            PhaseRequest(
                phase,
                notebook_in=nb_dir / notebook,
                notebook_out=run_dir / notebook,
                parameters=params,
                cwd=repo_root(),
                kernel_name=options.kernel_name,
                cell_timeout_s=cell_timeout,
                start_timeout_s=options.start_timeout_s,
                on_step=on_step,
                kernel_log=run_dir / "logs" / f"kernel-{phase:02d}.log",
            )
        )
    finally:
        # Whatever happened, the phase's record (mutations included) is what it persisted.
        record = evidence.read_phase_record(run_dir, phase)
        if record is not None:
            state.records[phase] = record
    if (
        outcome.status == "error"
        and cell_timeout < options.cell_timeout_s
        and "timed out" in outcome.reason
    ):
        state.deadline_hit = True
        outcome = PhaseOutcome(
            phase,
            notebook,
            "error",
            outcome.duration_s,
            f"run deadline of {options.deadline_s:g} s reached: {outcome.reason}",
            outcome.cell_index,
        )
    if (run_dir / notebook).is_file():
        try:
            evidence.export_html(run_dir / notebook)
        except Exception as exc:  # the .ipynb is the record; HTML is a convenience
            log.warning("HTML export of %s failed: %s", notebook, exc)
    return settle(outcome, record)


def _seal_interrupted(
    exc: BaseException,
    state: _RunState,
    during: str,
    plan: RunPlan,
    seal: Callable[[Mapping[str, Any] | None], evidence.RunEvidence],
    t0: float,
) -> None:
    """Seal the folder of an interrupted run and attach the outcome to the exception.

    The phase in flight is ``interrupted``; phases not reached are recorded as not
    executed. A second interrupt while sealing gets one more attempt (the first may
    have left a half-written report); a third gives up, the folder unsealed.
    """
    signum = signum_of(exc)
    in_flight = getattr(exc, "phase_outcome", None)
    phase_now = int(during.split()[1]) if during.startswith("phase ") else None
    if isinstance(in_flight, PhaseOutcome):
        state.outcomes.append(in_flight)
    elif phase_now is not None and phase_now not in {o.phase for o in state.outcomes}:
        # Stopped between the runner's own steps for this phase (before or after its kernel).
        state.outcomes.append(
            PhaseOutcome(
                phase_now,
                PHASES[phase_now].notebook,
                "interrupted",
                0.0,
                f"interrupted by signal {signum}",
            )
        )
    done = {o.phase for o in state.outcomes}
    for phase in plan.order:
        if phase not in done and not (phase == ROLLBACK_PHASE and plan.conditional_rollback):
            done.add(phase)
            state.outcomes.append(
                PhaseOutcome(
                    phase,
                    PHASES[phase].notebook,
                    "skipped",
                    0.0,
                    f"not executed: the run was interrupted by signal {signum}",
                )
            )
    info = {"signal": signum, "during": during}
    ev = None
    for attempt in (1, 2):
        try:
            ev = seal(info)
            break
        except KeyboardInterrupt:
            log.warning("interrupted again while sealing (attempt %d)", attempt)
    outcome = RunOutcome(
        state.run_dir,
        EXIT_INTERRUPTED,
        ev.verdict if ev is not None else "interrupted",
        ev.recommendation
        if ev is not None
        else Recommendation("hold", "the run was interrupted and its folder is not sealed"),
        tuple(state.outcomes),
        ev.safe_to_share if ev is not None else False,
        time.monotonic() - t0,
    )
    exc.run_dir = state.run_dir  # type: ignore[attr-defined]
    exc.outcome = outcome  # type: ignore[attr-defined]
    exc.sealed = ev is not None  # type: ignore[attr-defined]
