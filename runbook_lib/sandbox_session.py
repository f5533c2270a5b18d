"""The embedded sandbox for one run of ``runbook run`` (no environment given).

:class:`SandboxSession` is a context manager around the sandbox manager: it reuses a
running sandbox only when it provably matches the run's options, else starts one (and
stops it on exit), and hands the runner the environment file and the sandbox's secrets
(registered with :mod:`runbook_lib.redaction` so the final scan looks for them).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .exceptions import ConfigError
from .redaction import register_secret

if TYPE_CHECKING:
    from .runner import RunOptions

__all__ = ["SandboxSession"]

log = logging.getLogger(__name__)
# The checkout whose ``environments/local.toml`` the sandbox writes by default.
_REPO_ROOT = Path(__file__).resolve().parent.parent


def _field(info: Any, key: str) -> Any:
    if isinstance(info, Mapping):
        return info.get(key)
    return getattr(info, key, None)


class SandboxSession:
    """The embedded sandbox for one run: reused only when provably the same, else started.

    With the real manager (``manager.Sandbox``): the run lock of the checkout's sandbox
    is held for the whole run (a concurrent run is refused, exit 2); a running sandbox
    is reused only when it answers and matches ``--serving``/``--deploy-image``; one left
    by a dead run is cleaned up; a started one belongs to this process (it stops if the
    run dies) and is stopped on exit. Every note goes through ``note`` (the runner
    records it and shows it as a progress note). A manager
    without ``Sandbox`` (a test double) is driven through ``status``/``up``/``down``.
    """

    def __init__(self, manager: Any, options: RunOptions, note: Callable[[str], None]) -> None:
        self.manager = manager
        self.options = options
        self.note = note
        self.started = False
        self.env_file: str = ""
        self.secrets: list[str] = []
        self._claim: Any = None
        self.pid = 0

    def _kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.options.sandbox_state_dir is not None:
            kw["state_dir"] = self.options.sandbox_state_dir
        return kw

    def _note(self, message: str) -> None:
        self.note(message)

    def _remember(self, info: Any) -> None:
        pid = _field(info, "pid")
        self.pid = pid if isinstance(pid, int) else 0
        env_file = _field(info, "env_file")
        if env_file:
            self.env_file = str(env_file)
        # The sandbox's secrets (JWT secret, tokens) are read inside the kernels:
        # register them here too so the final scan looks for them.
        for key in ("jwt_secret", "token", "secret"):
            value = _field(info, key)
            if isinstance(value, str) and register_secret(value):
                self.secrets.append(value)
        environ = _field(info, "environ")
        if isinstance(environ, Mapping):
            for k, v in environ.items():
                os.environ[str(k)] = str(v)
                if ("SECRET" in str(k) or "TOKEN" in str(k)) and register_secret(str(v)):
                    self.secrets.append(str(v))

    def _up_kwargs(self) -> dict[str, Any]:
        kw = self._kwargs()
        if self.options.serving:
            kw["serving"] = self.options.serving
        if self.options.deploy_image:
            kw["deploy_image"] = self.options.deploy_image
        if self.options.sandbox_state_dir is not None:
            # An isolated sandbox (tests, parallel rehearsals) keeps its env file too.
            kw["env_file"] = Path(self.options.sandbox_state_dir) / "local.toml"
        return kw

    def __enter__(self) -> SandboxSession:
        claim_class = getattr(self.manager, "Sandbox", None)
        if claim_class is not None:
            self._claim = claim_class(note=self._note, **self._up_kwargs())
            info = self._claim.__enter__()
            self.started = bool(self._claim.started)
        else:
            info = self._enter_plain()
        self._remember(info)
        if not self.env_file:
            self.env_file = str(_REPO_ROOT / "environments" / "local.toml")
        return self

    def _enter_plain(self) -> Any:
        info = None
        try:
            info = self.manager.status(**self._kwargs())
        except Exception as exc:  # not running / no state yet
            log.info("sandbox status: %s", exc)
        if bool(info) and _field(info, "running") is not False:
            if self.options.serving or self.options.deploy_image:
                raise ConfigError(
                    "a sandbox is already running and this manager cannot check that it "
                    "matches --serving/--deploy-image: `runbook sandbox down` first"
                )
            self._note("sandbox already running: using it")
            return info
        self._note("starting the sandbox")
        info = self.manager.up(**self._up_kwargs())
        self.started = True
        return info

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
            return
        if self.started:
            self._note("stopping the sandbox")
            try:
                self.manager.down(**self._kwargs())
            except Exception as err:
                log.warning("sandbox down failed: %s", err)
