"""``runbook``: run the phases, drive the sandbox, verify and compare run folders.

::

    runbook run [--env NAME|PATH] [--phases 1,3-5] [--approve] [--out DIR] [--param K=V ...]
    runbook sandbox up|down|status [--serving PROFILE] [--deploy-image IMAGE]
    runbook verify RUN_DIR
    runbook compare RUN_A RUN_B [--json] [--fail-on-regression]
    runbook postmortem RUN_DIR [RUN_DIR ...] | --chain [OUTPUTS] [--since T] [--until T] [--out DIR]

Exit codes: 0 all gates pass (verify: folder intact); 1 a check failed (verify:
a file changed, went missing or was added; compare: a regression when
``--fail-on-regression``); 2 usage or configuration error; 3 a notebook errored,
timed out or its kernel died, or the run was interrupted (SIGINT/SIGTERM: the run
folder is sealed with verdict ``interrupted``).

This module is the one place exceptions become exit codes (:func:`exit_code_for`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from . import compare, evidence, manifest, runner
from .exceptions import ConfigError, NotebookError, RunbookError
from .runner import (
    EXIT_CHECK_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOTEBOOK_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    Progress,
    RunOptions,
)

__all__ = ["ConsoleProgress", "build_parser", "exit_code_for", "main"]

EXIT_CODES_HELP = """exit codes:
  0  every gate passed
  1  a check failed (or the final secret scan found secret material)
  2  usage or configuration error (nothing was run)
  3  a notebook errored, timed out or its kernel died, or the run was
     interrupted (SIGINT/SIGTERM): the run folder is then sealed with
     verdict "interrupted" and `runbook verify` accepts it
"""

log = logging.getLogger(__name__)


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    # argparse exits on its own; raising lets main() return 2 and stay testable.
    def error(self, message: str) -> Any:
        raise _UsageError(f"{self.prog}: {message}")


# A bound is a bound: a day is longer than any incident step the runbook waits on.
_MAX_SECONDS = 86_400.0


def _check_seconds(flag: str, value: float) -> None:
    """Refuse a bound that bounds nothing (nan, inf, <= 0, more than a day), naming the flag."""
    if not (math.isfinite(value) and 0 < value <= _MAX_SECONDS):
        raise ConfigError(
            f"{flag} must be positive and finite, at most {_MAX_SECONDS:g} s; got {value:g}"
        )


def build_parser() -> argparse.ArgumentParser:
    """The ``runbook`` argument parser."""
    p = _Parser(
        prog="runbook",
        description="Executable incident runbook for WebSocket services on Cloud Run.",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser(
        "run",
        help="execute the phase notebooks and write a run folder",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument(
        "--env",
        default="",
        help="environment name or TOML path "
        "(default: the embedded sandbox, started and stopped with the run)",
    )
    r.add_argument(
        "--phases",
        default="",
        help="phases to run, e.g. 1,3-5 "
        "(default 1-5,7; 6 when a rollback is recommended and approved)",
    )
    r.add_argument(
        "--approve",
        action="store_true",
        help="allow mutating steps (deploy, traffic changes); otherwise they are dry runs",
    )
    r.add_argument("--out", default="outputs", help="folder for run folders (default outputs)")
    r.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="K=V",
        help="dotted setting override (thresholds.hold_s=5) or rollback_to=REV",
    )
    r.add_argument(
        "--cell-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="per-cell timeout in seconds (default 600)",
    )
    r.add_argument(
        "--deadline",
        type=float,
        default=1800.0,
        metavar="S",
        help="whole-run deadline in seconds (default 1800)",
    )
    r.add_argument("--serving", default=None, help="sandbox only: profile serving at start")
    r.add_argument("--deploy-image", default=None, help="sandbox only: image phase 2 deploys")
    r.add_argument(
        "--log-delay",
        type=float,
        default=0.0,
        metavar="S",
        help="sandbox only: log entries are listed S s after their timestamp (default 0)",
    )
    r.add_argument("--notebooks", default=None, help=argparse.SUPPRESS)
    r.add_argument("--kernel", default="python3", help=argparse.SUPPRESS)
    # An isolated sandbox (tests, parallel rehearsals): its state and env file live there.
    r.add_argument("--sandbox-state-dir", default=None, help=argparse.SUPPRESS)

    s = sub.add_parser("sandbox", help="start, stop or show the embedded sandbox", add_help=False)
    s.add_argument("args", nargs=argparse.REMAINDER)

    v = sub.add_parser("verify", help="check a run folder against its manifest")
    v.add_argument("run_dir")

    c = sub.add_parser("compare", help="check status changes and latency deltas between runs")
    c.add_argument("run_a")
    c.add_argument("run_b")
    c.add_argument("--json", action="store_true", help="print the comparison as JSON")
    c.add_argument(
        "--fail-on-regression",
        action="store_true",
        help="exit 1 when a check went from pass to fail or error",
    )

    pm = sub.add_parser(
        "postmortem",
        help="write postmortem.html and postmortem.md from verified run folders",
    )
    pm.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run folders, any order")
    pm.add_argument(
        "--chain",
        nargs="?",
        const="outputs",
        default=None,
        metavar="OUTPUTS",
        help="use the runs of the manifest chain in this outputs folder (default outputs)",
    )
    pm.add_argument(
        "--since",
        default=None,
        metavar="T",
        help="with --chain: runs started at or after T (ISO 8601, UTC when no offset)",
    )
    pm.add_argument(
        "--until", default=None, metavar="T", help="with --chain: runs started at or before T"
    )
    pm.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="folder for postmortem.html and postmortem.md (default: postmortem/ beside the runs)",
    )

    # Parsed by init.init_main (its own options, help and exit codes).
    i = sub.add_parser(
        "init",
        help="probe a live service and write a commented environment file",
        add_help=False,
    )
    i.add_argument("args", nargs=argparse.REMAINDER)
    return p


class ConsoleProgress:
    """Prints runner progress to stderr: every step on a terminal, phases and notes always.

    Without a terminal (CI, a pipe) one line per phase and every note (sandbox reuse,
    configuration warnings, an added rollback phase) still print, one line each, and a
    heartbeat line ("still running ...") whenever nothing was printed for
    ``heartbeat_s``, so a CI log reader can tell a long window from a hang. On a
    terminal the current step's line is rewritten every ``tick_s`` with its elapsed
    time, so a long step (the monitoring window, a held socket) visibly progresses;
    call :meth:`close` when the run ends.
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        tty: bool | None = None,
        tick_s: float = 1.0,
        heartbeat_s: float = 20.0,
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.tick_s = tick_s
        self.heartbeat_s = heartbeat_s
        self._lock = threading.Lock()
        self._live = ""
        self._since = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Without a terminal: what runs now (phase, step, since when) and the last output.
        self._where = ""
        self._step = ""
        self._phase_t0 = self._step_t0 = self._last_out = time.monotonic()

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
        self._last_out = time.monotonic()

    def _say(self, text: str) -> None:
        with self._lock:
            if self._live:
                self._write("\n")
                self._live = ""
            self._write(text + "\n")

    def _start_live(self, text: str) -> None:
        with self._lock:
            if self._live:
                self._write("\n")
            self._live, self._since = text, time.monotonic()
            self._write(text)
        if self._thread is None and self.tick_s > 0:
            self._thread = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._thread.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.tick_s):
            with self._lock:
                if self._live:
                    self._write(f"\r{self._live}  {time.monotonic() - self._since:5.1f} s")

    def _start_heartbeat(self) -> None:
        if self._thread is None and self.heartbeat_s > 0:
            self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        # Checked a few times per interval, so a line comes at most heartbeat_s after the
        # last one and never more often.
        while not self._stop.wait(min(1.0, self.heartbeat_s / 4)):
            with self._lock:
                now = time.monotonic()
                if not self._where or now - self._last_out < self.heartbeat_s:
                    continue
                step = f", step {self._step} {now - self._step_t0:.0f} s" if self._step else ""
                self._write(
                    f"    ... still running {self._where}{step} "
                    f"(phase {now - self._phase_t0:.0f} s)\n"
                )

    def close(self) -> None:
        """Stop the ticker and end the live line."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * max(self.tick_s, 1.0) + 1)
        with self._lock:
            if self._live:
                self._write("\n")
                self._live = ""

    def __call__(self, p: Progress) -> None:
        where = f"[{p.index}/{p.total}] {p.notebook}"
        if not self.tty:
            self._follow(p, where)
        if p.event == "phase-end":
            # Phase 1 observes the service before any remediation: a FAIL there is the
            # incident being seen, which a later deploy supersedes.
            before = " - state before remediation" if p.phase == 1 else ""
            self._say(f"{where}: {p.status.upper()} ({p.message}{before}) t={p.elapsed_s:.1f}s")
        elif p.event == "phase-skip":
            self._say(f"{where}: SKIPPED ({p.message})")
        elif p.event == "note":
            self._say(f"- {p.message}")
        elif p.event == "phase-start" and self.tty:
            self._say(f"{where} starting (t={p.elapsed_s:.1f}s)")
        elif p.event == "step" and self.tty:
            self._start_live(f"    > {p.step}  ({p.message}, t={p.elapsed_s:.1f}s)")

    def _follow(self, p: Progress, where: str) -> None:
        """Without a terminal: remember what runs, for the heartbeat."""
        with self._lock:
            now = time.monotonic()
            if p.event == "phase-start":
                self._where, self._step, self._phase_t0 = f"phase {p.phase} {where}", "", now
            elif p.event == "step":
                self._step, self._step_t0 = p.step, now
            elif p.event in ("phase-end", "phase-skip"):
                self._where = self._step = ""
        if p.event in ("phase-start", "step"):
            self._start_heartbeat()


def _cmd_run(args: argparse.Namespace) -> int:
    overrides, nb_params = runner.parse_params(args.param)
    phases = runner.parse_phases(args.phases) if args.phases.strip() else None
    _check_seconds("--cell-timeout", args.cell_timeout)
    _check_seconds("--deadline", args.deadline)
    if args.log_delay < 0:
        raise ConfigError("--log-delay must be >= 0 seconds")
    options = RunOptions(
        environment=args.env,
        phases=phases,
        approve=args.approve,
        out_dir=Path(args.out),
        overrides=overrides,
        rollback_to=nb_params.get("rollback_to", ""),
        cell_timeout_s=args.cell_timeout,
        deadline_s=args.deadline,
        notebooks=Path(args.notebooks) if args.notebooks else None,
        kernel_name=args.kernel,
        serving=args.serving,
        deploy_image=args.deploy_image,
        log_delay_s=args.log_delay,
        sandbox_state_dir=Path(args.sandbox_state_dir) if args.sandbox_state_dir else None,
    )
    progress = ConsoleProgress()
    try:
        outcome = runner.run(options, progress=progress)
    finally:
        progress.close()
    rec = outcome.recommendation
    target = f" to {rec.target_revision}" if rec.target_revision else ""
    if not outcome.safe_to_share:
        print(
            f"NOT SAFE TO SHARE: the secret scan found secret material; see "
            f"{outcome.run_dir / manifest.UNSAFE_MARKER}",
            file=sys.stderr,
        )
    print(f"run folder: {outcome.run_dir}")
    print(f"front page: {outcome.run_dir / 'index.html'}")
    print(f"recommendation: {rec.action}{target}: {rec.reason}")
    # Last, so a CI log ends with the verdict and how much of the catalog it rests on.
    print(
        f"verdict: {_verdict_words(outcome.run_dir, outcome.verdict)}  "
        f"(exit {outcome.exit_code}, {outcome.elapsed_s:.1f} s)"
    )
    return outcome.exit_code


def _verdict_words(run_dir: Path, verdict: str) -> str:
    """``PASS: 19 judged, 20 not applicable`` from the sealed record (the bare verdict
    when the record cannot be read)."""
    from .reports import verdict_line

    try:
        results = json.loads((run_dir / manifest.RESULTS).read_text(encoding="utf-8"))
        return verdict_line({**results, "verdict": verdict})
    except (OSError, ValueError, KeyError, TypeError):
        return verdict.upper()


def _cmd_verify(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"not a folder: {run_dir}")
    report = manifest.verify_run(run_dir)
    name = report.run_id or run_dir.name
    if report.chain == "no-manifest":
        state = (
            f"its {manifest.RESULTS} says verdict {report.verdict}"
            if report.verdict
            else f"it has no {manifest.RESULTS} either"
        )
        print(
            f"FAILED: run {name} ({run_dir}) has no readable {manifest.MANIFEST}: the folder "
            f"was never sealed (a run killed with SIGKILL, or not a run folder); {state}"
        )
        # What a post-mortem still needs from an unsealed folder: how far it got, and
        # every mutation it claimed (persisted before each API call).
        records = evidence.read_phase_records(run_dir)
        if records:
            print(f"  phases persisted: {', '.join(str(p) for p in sorted(records))}")
        for rec in records.values():
            for m in rec.mutations():
                extra = ", ".join(f"{k} {m[k]}" for k in ("operation", "revision") if m.get(k))
                print(
                    f"  mutation claimed in phase {m['phase']}: {m.get('key')} "
                    f"({m.get('state')}, started {m.get('started_at', '?')}"
                    f"{', ' + extra if extra else ''})"
                )
        return EXIT_CHECK_FAILED
    for label, items in (
        ("changed", report.changed),
        ("missing", report.missing),
        ("added", report.added),
    ):
        for item in items:
            print(f"{label}: {item} (run {name})")
    chain = {
        "ok": f"linked to the previous run's manifest ({report.previous_run_id})",
        "genesis": "first run of its chain",
        "unchecked": f"previous run {report.previous_run_id} not present (link not checked)",
        "broken": f"BROKEN: {report.chain_detail}",
    }
    words = chain.get(report.chain, report.chain)
    if report.chain != "broken" and report.chain_detail:
        words += f"; {report.chain_detail}"
    print(f"chain: {words}")
    if report.verdict == "interrupted":
        print(f"note: run {name} was interrupted; its folder was sealed as such")
    if not report.safe_to_share:
        print("warning: this folder is marked NOT SAFE TO SHARE (secret material found)")
    if report.ok:
        print(f"OK: every file of run {name} ({run_dir}) matches its {manifest.MANIFEST}")
        return EXIT_OK
    what = "its own files" if report.changed or report.missing or report.added else "its chain"
    print(f"FAILED: run {name} ({run_dir}) does not match its manifest ({what})")
    return EXIT_CHECK_FAILED


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = "" if value is None else str(value)
    return text if len(text) <= 30 else text[:29] + "…"


def _cmd_compare(args: argparse.Namespace) -> int:
    cmp = compare.compare_runs(args.run_a, args.run_b)
    failing = bool(args.fail_on_regression and cmp.regressions)
    if args.json:
        print(json.dumps(cmp.to_record(), indent=2, default=str))
        return EXIT_CHECK_FAILED if failing else EXIT_OK
    print(f"A: {cmp.run_a} ({cmp.verdict_a})")
    print(f"B: {cmp.run_b} ({cmp.verdict_b})")
    print(f"\nstatus changes ({len(cmp.status_changes)}, regressions {len(cmp.regressions)}):")
    for d in cmp.status_changes:
        mark = "  REGRESSION" if d.regression else ""
        print(f"  {d.id:34} {d.status_a or '-':>6} -> {d.status_b or '-'}{mark}")
    if cmp.superseded_changes:
        print(
            f"\nbefore-remediation findings (phase 1 superseded by a deploy; not counted) "
            f"({len(cmp.superseded_changes)}):"
        )
        for d in cmp.superseded_changes:
            print(f"  {d.id:34} {d.status_a or '-':>6} -> {d.status_b or '-'}")
    changed = [d for d in cmp.numeric if d.delta is not None and d.delta * d.scale != 0]
    print(
        f"\nnumeric observations that changed ({len(changed)} of {len(cmp.numeric)}), B - A, "
        "largest relative change first:"
    )
    for d in changed:
        unit = f" {d.unit}" if d.unit else ""
        shown_a, shown_b = (
            _fmt(v * d.scale if isinstance(v, (int, float)) else v)
            for v in (d.observed_a, d.observed_b)
        )
        delta = f"{(d.delta or 0) * d.scale:+.4g}{' pp' if d.scale != 1 else unit}"
        rel = f", {d.relative:+.0%}" if d.relative is not None else ""
        print(f"  {d.id:34} {shown_a:>10} -> {shown_b:>10}{unit}  ({delta}{rel})")
    if len(changed) < len(cmp.numeric):
        print(f"  ({len(cmp.numeric) - len(changed)} unchanged not shown; --json lists all)")
    print("\nphase durations:")
    for phase, a, b in cmp.phase_durations:
        delta = f"({b - a:+.1f} s)" if a is not None and b is not None else ""
        print(f"  phase {phase}: {_fmt(a):>8} -> {_fmt(b):>8} s {delta}")
    if failing:
        print(f"\nFAILED: {len(cmp.regressions)} check(s) went from pass to fail/error")
    return EXIT_CHECK_FAILED if failing else EXIT_OK


def _when(flag: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ConfigError(f"{flag}: not an ISO 8601 time: {value!r}") from exc
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _cmd_postmortem(args: argparse.Namespace) -> int:
    from .postmortem import chain_window, write_postmortem

    if (args.since or args.until) and args.chain is None:
        raise ConfigError("--since and --until select runs of the chain: add --chain")
    runs = [Path(d) for d in args.run_dirs]
    if args.chain is not None:
        if not Path(args.chain).is_dir():
            raise ConfigError(f"--chain: not a folder: {args.chain}")
        runs += chain_window(args.chain, _when("--since", args.since), _when("--until", args.until))
    if not runs:
        raise ConfigError("no run folder: give RUN_DIR ... or --chain [OUTPUTS]")
    for run in runs:
        if not run.is_dir():
            raise ConfigError(f"not a folder: {run}")
    out = Path(args.out) if args.out else runs[-1].resolve().parent / "postmortem"
    written = write_postmortem(list(dict.fromkeys(runs)), out)
    for source in written.document.sources:
        state = "used" if source.used else "NOT USED"
        print(f"{state}: {source.run_id}: {source.verify_words}")
    print(f"postmortem: {written.html}")
    print(f"markdown: {written.markdown}")
    if written.leaks:
        print(
            f"NOT SAFE TO SHARE: the secret scan found secret material in "
            f"{', '.join(written.leaks)}",
            file=sys.stderr,
        )
        return EXIT_CHECK_FAILED
    if written.document.refused:
        print(
            f"FAILED: {len(written.document.refused)} run folder(s) failed verification "
            "and were left out (named in the document)"
        )
        return EXIT_CHECK_FAILED
    return EXIT_OK


def _cmd_sandbox(argv: Sequence[str]) -> int:
    try:
        from .sandbox.cli import sandbox_main
    except ImportError as exc:
        raise ConfigError(f"the sandbox is not available: {exc}") from exc
    return int(sandbox_main(list(argv)) or 0)


def exit_code_for(exc: BaseException) -> int:
    """The exit code of an exception that ends a command (SPEC section 5).

    ``KeyboardInterrupt`` (and ``RunInterrupted``) and ``NotebookError`` are 3; every
    other ``RunbookError`` (configuration, sandbox, Cloud Run before any phase) and
    unreadable input files (``OSError``, ``ValueError``) are usage errors, 2.
    """
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, NotebookError):
        return EXIT_NOTEBOOK_ERROR
    return EXIT_USAGE


def _interrupted_message(exc: KeyboardInterrupt, command: str) -> str:
    signum = getattr(exc, "signum", 0) or 2
    run_dir = getattr(exc, "run_dir", None)
    if command != "run":
        return f"runbook {command}: interrupted by signal {signum}"
    if run_dir is None:
        return f"runbook: interrupted by signal {signum} before a run folder was created"
    if getattr(exc, "sealed", False):
        return (
            f"runbook: interrupted by signal {signum}; run folder sealed as interrupted: "
            f"{run_dir} (exit {EXIT_INTERRUPTED})"
        )
    return f"runbook: interrupted by signal {signum}; run folder left unsealed: {run_dir}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``runbook``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    command = argv[0] if argv else ""
    try:
        if command == "sandbox":
            return _cmd_sandbox(argv[1:])
        if command == "init":
            from .init import init_main

            return init_main(argv[1:])
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except _UsageError as exc:
            parser.print_usage(sys.stderr)
            print(exc, file=sys.stderr)
            return EXIT_USAGE
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "verify":
            return _cmd_verify(args)
        if args.command == "compare":
            return _cmd_compare(args)
        if args.command == "postmortem":
            return _cmd_postmortem(args)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        # One line, no traceback: the runner sealed the folder before letting it through.
        print(_interrupted_message(exc, command), file=sys.stderr)
        return exit_code_for(exc)
    except (RunbookError, OSError, ValueError) as exc:
        print(f"runbook: error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    finally:
        log.debug("%s took %.1f s", command, time.monotonic() - started)
