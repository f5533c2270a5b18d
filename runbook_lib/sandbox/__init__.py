"""The embedded sandbox: a local Cloud Run staging the real Google clients can drive.

Importable without the rest of ``runbook_lib``. Modules: ``manager`` (up/down/status),
``state`` (state folder, locks), ``processes`` (the daemon's process group),
``env_file`` (environments/local.toml), ``cli`` (``runbook sandbox``), ``daemon`` (the
emulator process), ``emulator`` (Cloud Run Admin API v2 + Cloud Logging), ``resources``
(the emulator's Cloud Run resources), ``router`` (traffic split), ``backend`` (one process
per revision), ``auth_service``, ``profiles`` (faults), ``suite`` (the sandbox's
mission-critical suite). See docs/sandbox.md.
"""

__all__: list[str] = []
