"""``runbook sandbox up|down|status`` (and the internal ``daemon`` command)."""

from __future__ import annotations

import argparse
import os
import sys

from ..exceptions import SandboxError
from .manager import (
    DEFAULT_DEPLOY_IMAGE,
    DEFAULT_SERVING,
    DENY_ENV,
    LOG_DELAY_ENV,
    SERVICE_ENV,
    down,
    log_delay_env,
    status,
    up,
)
from .state import (
    DEFAULT_STATE_DIR,
    STATE_NAME,
    SandboxBusy,
    SandboxInfo,
    read_state,
    resolve_state_dir,
    run_holder,
)

__all__ = ["sandbox_main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="runbook sandbox", description="The embedded Cloud Run sandbox (all on 127.0.0.1)."
    )
    p.add_argument(
        "command",
        choices=["up", "down", "status", "daemon"],
        metavar="{up,down,status}",  # `daemon` is internal: what `up` spawns
        help="up: start; down: stop everything; status: show revisions and URLs",
    )
    p.add_argument(
        "--serving",
        default=None,
        help=f"profile of the revision serving at start (default {DEFAULT_SERVING}); "
        "a running sandbox serving another profile is refused",
    )
    p.add_argument(
        "--deploy-image",
        default=None,
        help=f"image the deploy phase rolls out (default {DEFAULT_DEPLOY_IMAGE}); "
        "a running sandbox with another one is refused",
    )
    p.add_argument(
        "--state-dir",
        default=None,
        help=f"state folder (default $RUNBOOK_SANDBOX_DIR, else {DEFAULT_STATE_DIR}, "
        "whatever the current directory)",
    )
    p.add_argument(
        "--env-file",
        default=None,
        help="environment file to write (default: the checkout's environments/local.toml)",
    )
    p.add_argument(
        "--deny",
        action="append",
        default=[],
        metavar="PERMISSION",
        help="answer the calls that need this IAM permission with 403 PERMISSION_DENIED, "
        "as Google does (repeatable; e.g. run.services.update, iam.serviceAccounts.actAs, "
        "logging.logEntries.list, run.revisions.list)",
    )
    p.add_argument(
        "--log-delay",
        type=float,
        default=0.0,
        metavar="S",
        help="Cloud Logging ingestion delay: a log entry is listed S seconds after its "
        "timestamp (default 0), to rehearse the log checks' wait",
    )
    p.add_argument("--owner-pid", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--owner-started", type=float, default=0.0, help=argparse.SUPPRESS)
    return p


def _print_info(info: SandboxInfo) -> None:
    print(f"sandbox running (daemon pid {info.pid}, since {info.started_at})")
    owner = (
        f"process {info.owner_pid} (the sandbox stops when it ends)"
        if info.owner_pid
        else "none (started by `runbook sandbox up`; stop it with `runbook sandbox down`)"
    )
    print(f"  owner       : {owner}")
    print(f"  state dir   : {info.state_dir}")
    print(f"  service url : {info.service_url}")
    print(f"  auth url    : {info.auth_url}")
    print(
        f"  cloud run   : {info.emulator_url}  "
        f"(projects/{info.project}/locations/{info.region}/services/{info.service})"
    )
    print(f"  env file    : {info.env_file}")
    print(f"  deploy image: {info.deploy_image}")
    print(f"  traffic     : {', '.join(info.traffic) or '(none)'}")
    if info.log_delay_s:
        print(f"  log delay   : {info.log_delay_s:g} s (entries are listed that late)")
    print("  revisions:")
    for r in info.revisions:
        ready = {True: "ready", False: "NOT READY", None: "starting"}[r.ready]
        extra = f"  ({r.message})" if r.message and r.ready is not True else ""
        print(f"    {r.name:24} {r.profile:22} {ready:9} {r.percent:3d}%{extra}")


def _say(message: str) -> None:
    print(f"- {message}", flush=True)


def sandbox_main(argv: list[str]) -> int:
    """``runbook sandbox up|down|status``.

    Exit codes: 0 ok; 1 not running (status) or the sandbox failed; 2 usage error, or a
    running sandbox that does not match or answer (refused); 3 interrupted.
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    if args.command == "daemon":
        from .daemon import DaemonConfig, daemon_main

        return daemon_main(
            DaemonConfig(
                start_timeout_s=float(os.environ.get("SANDBOX_START_TIMEOUT_S") or 30.0),
                state_file=resolve_state_dir(args.state_dir) / STATE_NAME,
                serving=args.serving or DEFAULT_SERVING,
                deploy_image=args.deploy_image or DEFAULT_DEPLOY_IMAGE,
                owner_pid=args.owner_pid,
                owner_started=args.owner_started,
                deny=tuple(p for p in os.environ.get(DENY_ENV, "").split(",") if p),
                log_delay_s=float(os.environ.get(LOG_DELAY_ENV) or 0.0),
                # Rehearsing a long service name (Cloud Run's tag length rule counts it).
                service=os.environ.get(SERVICE_ENV) or "backend",
            )
        )
    from ..interrupts import guard

    try:
        if args.command == "up":
            # No reaping: the daemon is meant to outlive this command.
            with guard(reap=False):
                before = read_state(args.state_dir)
                env = {
                    **({DENY_ENV: ",".join(args.deny)} if args.deny else {}),
                    **(log_delay_env(args.log_delay) or {}),
                } or None
                info = up(
                    args.serving,
                    args.deploy_image,
                    args.state_dir,
                    args.env_file,
                    env=env,
                    note=_say,
                )
            if before and before.get("pid") == info.pid:
                print("sandbox already running; not starting a second one")
                running = sorted((read_state(args.state_dir) or {}).get("deny") or [])
                if args.deny and running != sorted(args.deny):
                    print(
                        f"error: it denies {', '.join(running) or 'nothing'}, not "
                        f"{', '.join(args.deny)}: `runbook sandbox down` first",
                        file=sys.stderr,
                    )
                    return 2
            _print_info(info)
            return 0
        if args.command == "down":
            holder = run_holder(args.state_dir)
            if holder:
                print(
                    f"note: a run (process {holder.get('pid', '?')}: "
                    f"{holder.get('command', '?')}) is using this sandbox; it will end "
                    f"with errors"
                )
            stopped = down(args.state_dir)
            print("sandbox stopped" if stopped else "sandbox was not running")
            return 0
        shown = status(args.state_dir)
        if shown is None:
            print(f"sandbox not running (state dir {resolve_state_dir(args.state_dir)})")
            return 1
        _print_info(shown)
        return 0
    except SandboxBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if "unknown sandbox profile" in str(exc) or "not a sandbox" in str(exc) else 1
    except KeyboardInterrupt as exc:
        print(
            f"interrupted ({exc or 'SIGINT'}): every process this command started is stopped",
            file=sys.stderr,
        )
        return 3
