"""Configured shell commands (pre-deploy checks, mission-critical suites).

A :class:`~runbook_lib.settings.CommandSpec` runs in its own process group so a
timeout kills the whole tree (a test runner's workers included). Output is kept
as a redacted tail; when ``junit`` names a JUnit XML report, its counts are parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Mapping
from pathlib import Path

from .observations import CommandObservation, JUnitSummary
from .redaction import redact
from .settings import CommandSpec

__all__ = [
    "parse_junit",
    "run_command",
]

log = logging.getLogger(__name__)

_TAIL_LINES = 200


def parse_junit(path: str | os.PathLike[str]) -> JUnitSummary:
    """Totals of a JUnit XML file (``<testsuites>`` or a single ``<testsuite>``).

    Raises:
        OSError: the file cannot be read.
        ET.ParseError: the file is not XML.
    """
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tests = failures = errors = skipped = 0
    total_time = 0.0
    failed: list[str] = []
    for s in suites:
        cases = list(s.iter("testcase"))
        tests += int(s.get("tests", len(cases)) or 0)
        failures += int(s.get("failures", 0) or 0)
        errors += int(s.get("errors", 0) or 0)
        skipped += int(s.get("skipped", s.get("disabled", 0)) or 0)
        with contextlib.suppress(ValueError):
            total_time += float(s.get("time", 0) or 0)
        for c in cases:
            if c.find("failure") is not None or c.find("error") is not None:
                failed.append(f"{c.get('classname', '')}.{c.get('name', '')}".lstrip("."))
    return JUnitSummary(tests, failures, errors, skipped, round(total_time, 3), tuple(failed[:20]))


async def run_command(
    spec: CommandSpec,
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    tail_lines: int = _TAIL_LINES,
) -> CommandObservation:
    """Run ``spec.run`` in a shell with ``spec.timeout_s``; never raises for a failing command.

    Args:
        spec: name, command line, timeout, optional ``junit`` report path and ``cwd``.
        cwd: working directory (default ``spec.cwd`` or the current one).
        env: environment (default: inherited).
        tail_lines: how many trailing output lines to keep.
    """
    workdir = str(cwd or spec.cwd or Path.cwd())
    start = time.perf_counter()
    command = redact(spec.run)
    try:
        proc = await asyncio.create_subprocess_shell(
            spec.run,
            cwd=workdir,
            env=dict(env) if env is not None else None,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # own process group: a timeout kills the whole tree
        )
    except OSError as exc:
        return CommandObservation(
            spec.name,
            command,
            None,
            time.perf_counter() - start,
            timeout_s=spec.timeout_s,
            error=f"could not start: {exc}",
        )
    tail: deque[bytes] = deque(maxlen=max(1, tail_lines))

    async def pump() -> None:
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError:  # a line longer than the stream limit: keep a piece of it
                line = await proc.stdout.read(65536)
            if not line:
                return
            tail.append(line)

    reader = asyncio.ensure_future(pump())
    timed_out = False
    try:
        await asyncio.wait_for(asyncio.gather(asyncio.shield(reader), proc.wait()), spec.timeout_s)
    except TimeoutError:
        timed_out = True
        _kill_group(proc.pid)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5.0)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(reader, 2.0)
    finally:
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if proc.returncode is None:
            _kill_group(proc.pid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5.0)
    duration = time.perf_counter() - start
    output = redact(b"".join(tail).decode("utf-8", "replace"))
    junit, junit_error = None, ""
    if spec.junit:
        path = Path(spec.junit)
        if not path.is_absolute():
            path = Path(workdir) / path
        try:
            junit = parse_junit(path)
        except (OSError, ET.ParseError, ValueError) as exc:
            junit_error = f"JUnit report {path} unreadable: {exc}"
    log.info("command %s exited %s in %.1fs", spec.name, proc.returncode, duration)
    return CommandObservation(
        name=spec.name,
        command=command,
        exit_code=proc.returncode,
        duration_s=duration,
        timed_out=timed_out,
        timeout_s=spec.timeout_s,
        output_tail=output,
        junit=junit,
        junit_error=junit_error,
    )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
