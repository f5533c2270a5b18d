"""The Admin API v2 emulator served on loopback with revisions that need no process.

``served_emulator(service)`` runs :func:`create_emulator_app` under uvicorn in the
test's loop; a revision "starts" at once (an image tagged ``:deploy-fails`` fails
to), so the real ``google-cloud-run`` client and :class:`GoogleCloudRun` meet every
rule of the emulator in milliseconds. Blocking client calls must go through
``asyncio.to_thread`` (the server shares the loop).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from runbook_lib.sandbox.api import create_emulator_app
from runbook_lib.sandbox.emulator import CloudRunEmulator, RevisionStartError
from runbook_lib.sandbox.resources import RevisionState, ServiceState
from runbook_lib.settings import Settings
from runbook_lib.settings_load import settings_from_dict
from tests.asgi_server import served

FAILING_IMAGE = "sandbox/backend:deploy-fails"


class InstantRuntime:
    """Revisions listen at once on a made-up port; ``:deploy-fails`` never does."""

    def __init__(self) -> None:
        self._ports = itertools.count(20000)

    async def start(self, revision: RevisionState, sink: CloudRunEmulator) -> int:
        if revision.profile == "deploy-fails":
            raise RevisionStartError("exited with code 1 before listening")
        return next(self._ports)

    async def stop(self, revision: RevisionState) -> None:
        pass


@dataclass
class Served:
    emulator: CloudRunEmulator
    service: ServiceState
    endpoint: str

    def settings(self, tmp: Path, **timeouts: float) -> Settings:
        """An environment whose ``[cloudrun]`` points at this emulator."""
        return settings_from_dict(
            {
                "name": "strict",
                "cloudrun": {
                    "project": self.emulator.project,
                    "region": self.emulator.region,
                    "service": self.service.name,
                    "api_endpoint": self.endpoint,
                },
                "timeouts": {"cloudrun_s": 5, "operation_s": 10, **timeouts},
            },
            source=str(tmp / "strict.toml"),
        )

    def client(self) -> Any:
        """The real ``run_v2.ServicesClient`` (REST) against the emulator."""
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import run_v2

        return run_v2.ServicesClient(
            transport="rest",
            client_options=ClientOptions(api_endpoint=self.endpoint),
            credentials=AnonymousCredentials(),
        )


def add_revisions(svc: ServiceState, names: Iterable[str], *, image: str) -> list[str]:
    """Ready revisions created one second apart, oldest first (no process, no port)."""
    start = datetime.now(UTC) - timedelta(days=1)
    made = []
    for i, name in enumerate(names):
        svc.revisions[name] = RevisionState(
            name=name,
            service=svc,
            image=image,
            profile=image.rsplit(":", 1)[-1],
            template={"containers": [{"image": image}]},
            generation=i + 1,
            create_time=start + timedelta(seconds=i),
            ready=True,
            port=30000 + i,
        )
        made.append(name)
    return made


@asynccontextmanager
async def served_emulator(
    service: str = "backend", *, deny: Iterable[str] = (), image: str = "sandbox/backend:healthy"
) -> AsyncIterator[Served]:
    """An emulator with ``service`` serving one ready revision of ``image`` at LATEST 100 %."""
    emu = CloudRunEmulator(InstantRuntime(), project="p", region="r", deny=deny)
    svc = emu.create_service(service, {}, uri="http://127.0.0.1:9")
    try:
        async with served(create_emulator_app(emu)) as port:
            await emu.deploy(svc, image)
            yield Served(emu, svc, f"http://127.0.0.1:{port}")
    finally:
        await emu.aclose()
