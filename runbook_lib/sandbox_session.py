"""The embedded sandbox for one run of ``runbook run`` (no environment given).

:class:`SandboxSession` is a context manager around the sandbox manager: it reuses a
running sandbox only when it provably matches the run's options, else starts one (and
stops it on exit), and hands the runner the environment file and the sandbox's secrets
(registered with :mod:`runbook_lib.redaction` so the final scan looks for them).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .redaction import register_secret

__all__ = ["SandboxSession"]

log = logging.getLogger(__name__)
# The checkout whose ``environments/local.toml`` the sandbox writes by default.
_REPO_ROOT = Path(__file__).resolve().parent.parent


class SandboxSession:
    """The embedded sandbox for one run: reused only when provably the same, else started.

    Drives the manager's ``Sandbox`` claim: the run lock of the checkout's sandbox is
    held for the whole run (a concurrent run is refused, exit 2); a running sandbox is
    reused only when it answers and matches ``serving``/``deploy_image``; one left by a
    dead run is cleaned up; a started one belongs to this process (it stops if the run
    dies) and is stopped on exit. Every note goes through ``note`` (the runner records
    it and shows it as a progress note).

    Args:
        manager: the sandbox manager module (``runbook_lib.sandbox.manager``) or a
            double with a ``Sandbox`` class of the same shape.
        serving, deploy_image: the profiles asked for (``None`` = the defaults).
        state_dir: an isolated sandbox (tests, parallel rehearsals), which then keeps
            its environment file there too; ``None`` = the checkout's.
        log_delay_s: Cloud Logging's ingestion delay for a sandbox this session starts
            (``--log-delay``); a running sandbox with another delay is reused with a note.
        note: receives every note for the operator.
    """

    def __init__(
        self,
        manager: Any,
        *,
        serving: str | None = None,
        deploy_image: str | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        log_delay_s: float = 0.0,
        note: Callable[[str], None],
    ) -> None:
        self.manager = manager
        self.serving = serving
        self.deploy_image = deploy_image
        self.state_dir = state_dir
        self.log_delay_s = log_delay_s
        self.note = note
        self.started = False
        self.env_file: str = ""
        self.secrets: list[str] = []
        self._claim: Any = None
        self.pid = 0

    def _claim_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.serving:
            kw["serving"] = self.serving
        if self.deploy_image:
            kw["deploy_image"] = self.deploy_image
        if self.state_dir is not None:
            kw["state_dir"] = self.state_dir
            kw["env_file"] = Path(self.state_dir) / "local.toml"
        if self.log_delay_s:
            kw["env"] = {"SANDBOX_LOG_DELAY_S": repr(float(self.log_delay_s))}
        return kw

    def __enter__(self) -> SandboxSession:
        self._claim = self.manager.Sandbox(note=self.note, **self._claim_kwargs())
        info = self._claim.__enter__()
        self.started = bool(self._claim.started)
        delay = getattr(info, "log_delay_s", None)
        if isinstance(delay, (int, float)) and delay != self.log_delay_s:
            self.note(
                f"the sandbox lists log entries {delay:g} s late, not "
                f"{self.log_delay_s:g} s as asked (--log-delay): it was already "
                "running; `runbook sandbox down` first to change it"
            )
        env_file = getattr(info, "env_file", "")
        self.env_file = str(env_file or _REPO_ROOT / "environments" / "local.toml")
        # The sandbox's JWT secret is read inside the kernels: register it here too so
        # the final scan looks for it.
        pid = getattr(info, "pid", 0)
        self.pid = pid if isinstance(pid, int) else 0
        secret = getattr(info, "jwt_secret", "")
        if isinstance(secret, str) and register_secret(secret):
            self.secrets.append(secret)
        return self

    def lost(self) -> str:
        """Why the sandbox can no longer answer ('' while its daemon runs, or unknown)."""
        if self.pid <= 0:
            return ""
        import psutil

        try:
            if psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE:
                return ""
        except psutil.Error:
            pass
        return (
            f"the sandbox daemon (pid {self.pid}) is no longer running: the service, the "
            "Cloud Run emulator and the auth service it provided are gone, so failures from "
            "then on say nothing about the revision under test"
        )

    def __exit__(self, *exc: Any) -> None:
        if self._claim is not None:
            self._claim.__exit__(*exc)
