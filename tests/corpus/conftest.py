"""Fixtures for the corpus: start a service with faults; read its environment sketch."""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from runbook_lib.flows import Flow, FlowStep
from runbook_lib.settings import ProtocolSettings

from .serve import Running, serve_corpus

_TUPLES = (
    "event_type",
    "user_id",
    "run_id",
    "ignore",
    "error_types",
    "pong_types",
    "subprotocols",
    "critical_events",
)


@pytest.fixture
async def corpus() -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """Factory: ``await corpus("text_chat", "leak")`` -> a running service."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(name: str, *faults: str) -> Running:
            return await stack.enter_async_context(serve_corpus(name, faults))

        yield start


def protocol_from_env(env: str) -> ProtocolSettings:
    """The ``[protocol]`` table of an environment sketch as settings (as the loader does)."""
    table: dict[str, Any] = dict(tomllib.loads(env).get("protocol", {}))
    for key in _TUPLES:
        if key in table:
            table[key] = tuple(table[key])
    if "required_fields" in table:
        table["required_fields"] = {k: tuple(v) for k, v in table["required_fields"].items()}
    return ProtocolSettings(**table)


def flows_from_env(env: str) -> dict[str, Flow]:
    """The ``[flows.NAME]`` tables of an environment sketch, as a user wrote them."""
    raw = tomllib.loads(env).get("flows", {})
    return {
        name: Flow(name, tuple(FlowStep(**step) for step in body["steps"]))
        for name, body in raw.items()
    }


def quick(flow: Flow, timeout_s: float = 1.0) -> Flow:
    """``flow`` with every expect step bounded by ``timeout_s`` (fault tests wait less)."""
    steps = tuple(s if s.send is not None else replace(s, timeout_s=timeout_s) for s in flow.steps)
    return Flow(flow.name, steps)
