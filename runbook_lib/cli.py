"""``runbook``: run the phases, drive the sandbox, verify and compare run folders.

::

    runbook run [--env NAME|PATH] [--phases 1,3-5] [--approve] [--out DIR] [--param K=V ...]
    runbook sandbox up|down|status [--serving PROFILE] [--deploy-image IMAGE]
    runbook verify RUN_DIR
    runbook compare RUN_A RUN_B

Exit codes: 0 all gates pass (verify: folder intact); 1 a check failed (verify:
a file changed, went missing or was added); 2 usage or configuration error;
3 a notebook errored, timed out or its kernel died.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from . import evidence, runner
from .exceptions import ConfigError, RunbookError, SandboxError
from .runner import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, Progress, RunOptions

__all__ = ["ConsoleProgress", "build_parser", "main"]

log = logging.getLogger(__name__)


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    # argparse exits on its own; raising lets main() return 2 and stay testable.
    def error(self, message: str) -> Any:
        raise _UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    """The ``runbook`` argument parser."""
    p = _Parser(
        prog="runbook",
        description="Executable incident runbook for WebSocket services on Cloud Run.",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="execute the phase notebooks and write a run folder")
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
    r.add_argument("--notebooks", default=None, help=argparse.SUPPRESS)
    r.add_argument("--kernel", default="python3", help=argparse.SUPPRESS)

    s = sub.add_parser("sandbox", help="start, stop or show the embedded sandbox", add_help=False)
    s.add_argument("args", nargs=argparse.REMAINDER)

    v = sub.add_parser("verify", help="check a run folder against its manifest")
    v.add_argument("run_dir")

    c = sub.add_parser("compare", help="check status changes and latency deltas between runs")
    c.add_argument("run_a")
    c.add_argument("run_b")
    return p


class ConsoleProgress:
    """Prints runner progress: every step on a terminal, one line per phase otherwise.

    On a terminal the current step's line is rewritten every ``tick_s`` with its
    elapsed time, so a long step (the monitoring window, a held socket) visibly
    progresses; call :meth:`close` when the run ends.
    """

    def __init__(
        self, stream: IO[str] | None = None, tty: bool | None = None, tick_s: float = 1.0
    ) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.tick_s = tick_s
        self._lock = threading.Lock()
        self._live = ""
        self._since = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

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

    def close(self) -> None:
        """Stop the ticker and end the live line."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.tick_s + 1)
        with self._lock:
            if self._live:
                self._write("\n")
                self._live = ""

    def __call__(self, p: Progress) -> None:
        where = f"[{p.index}/{p.total}] {p.notebook}"
        if p.event == "phase-end":
            # Phase 1 observes the service before any remediation: a FAIL there is the
            # incident being seen, which a later deploy supersedes.
            before = " - state before remediation" if p.phase == 1 else ""
            self._say(f"{where}: {p.status.upper()} ({p.message}{before}) t={p.elapsed_s:.1f}s")
        elif p.event == "phase-skip":
            self._say(f"{where}: SKIPPED ({p.message})")
        elif not self.tty:
            return
        elif p.event == "phase-start":
            self._say(f"{where} starting (t={p.elapsed_s:.1f}s)")
        elif p.event == "step":
            self._start_live(f"    > {p.step}  ({p.message}, t={p.elapsed_s:.1f}s)")
        elif p.event == "note":
            self._say(f"- {p.message}")


def _cmd_run(args: argparse.Namespace) -> int:
    overrides, nb_params = runner.parse_params(args.param)
    phases = runner.parse_phases(args.phases) if args.phases.strip() else None
    if args.cell_timeout <= 0 or args.deadline <= 0:
        raise ConfigError("--cell-timeout and --deadline must be positive")
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
    )
    progress = ConsoleProgress()
    try:
        outcome = runner.run(options, progress=progress)
    finally:
        progress.close()
    rec = outcome.recommendation
    print(
        f"verdict: {outcome.verdict.upper()}  (exit {outcome.exit_code}, {outcome.elapsed_s:.1f} s)"
    )
    target = f" to {rec.target_revision}" if rec.target_revision else ""
    print(f"recommendation: {rec.action}{target}: {rec.reason}")
    if not outcome.safe_to_share:
        print(
            f"NOT SAFE TO SHARE: the secret scan found secret material; see "
            f"{outcome.run_dir / evidence.UNSAFE_MARKER}",
            file=sys.stderr,
        )
    print(f"run folder: {outcome.run_dir}")
    print(f"front page: {outcome.run_dir / 'index.html'}")
    return outcome.exit_code


def _cmd_verify(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"not a folder: {run_dir}")
    report = evidence.verify_run(run_dir)
    if report.chain == "no-manifest":
        print(f"FAILED: {run_dir} has no readable {evidence.MANIFEST}")
        return EXIT_CHECK_FAILED
    for label, items in (
        ("changed", report.changed),
        ("missing", report.missing),
        ("added", report.added),
    ):
        for item in items:
            print(f"{label}: {item}")
    chain = {
        "ok": "linked to the previous run's manifest",
        "genesis": "first run of its chain",
        "unchecked": "previous run folder not present (link not checked)",
        "broken": "BROKEN: the previous run's manifest no longer matches its recorded hash",
    }
    print(f"chain: {chain.get(report.chain, report.chain)}")
    if not report.safe_to_share:
        print("warning: this folder is marked NOT SAFE TO SHARE (secret material found)")
    if report.ok:
        print(f"OK: every file of {run_dir} matches {evidence.MANIFEST}")
        return EXIT_OK
    print(f"FAILED: {run_dir} does not match its manifest")
    return EXIT_CHECK_FAILED


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = "" if value is None else str(value)
    return text if len(text) <= 30 else text[:29] + "…"


def _cmd_compare(args: argparse.Namespace) -> int:
    for d in (args.run_a, args.run_b):
        if not (Path(d) / "results.json").is_file():
            raise ConfigError(f"{d}: no results.json (not a run folder?)")
    cmp = evidence.compare_runs(args.run_a, args.run_b)
    print(f"A: {cmp.run_a} ({cmp.verdict_a})")
    print(f"B: {cmp.run_b} ({cmp.verdict_b})")
    print(f"\nstatus changes ({len(cmp.status_changes)}):")
    for d in cmp.status_changes:
        print(f"  {d.id:34} {d.status_a or '-':>6} -> {d.status_b or '-'}")
    print(f"\nnumeric observations ({len(cmp.numeric)}), B - A:")
    for d in cmp.numeric:
        assert d.delta is not None
        print(f"  {d.id:34} {_fmt(d.observed_a):>10} -> {_fmt(d.observed_b):>10}  ({d.delta:+.4g})")
    print("\nphase durations (s):")
    for phase, a, b in cmp.phase_durations:
        delta = f"({b - a:+.1f})" if a is not None and b is not None else ""
        print(f"  phase {phase}: {_fmt(a):>8} -> {_fmt(b):>8} {delta}")
    return EXIT_OK


def _cmd_sandbox(argv: Sequence[str]) -> int:
    try:
        from .sandbox.manager import sandbox_main
    except ImportError as exc:
        raise ConfigError(f"the sandbox manager is not available: {exc}") from exc
    return int(sandbox_main(list(argv)) or 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``runbook``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["sandbox"]:
        try:
            return _cmd_sandbox(argv[1:])
        except ConfigError as exc:
            print(f"runbook: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        parser.print_usage(sys.stderr)
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    started = time.monotonic()
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "verify":
            return _cmd_verify(args)
        if args.command == "compare":
            return _cmd_compare(args)
    except (ConfigError, SandboxError) as exc:
        print(f"runbook: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RunbookError as exc:
        print(f"runbook: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError) as exc:
        print(f"runbook: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:  # RunInterrupted: everything the run started is stopped
        print(f"runbook: {exc or 'interrupted'}: stopped", file=sys.stderr)
        return runner.EXIT_NOTEBOOK_ERROR
    finally:
        log.debug("%s took %.1f s", args.command, time.monotonic() - started)
    return EXIT_USAGE
