"""Fixtures for the corpus: start a service with faults; read its environment sketch."""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import replace

import pytest

from runbook_lib.flows import Flow
from runbook_lib.protocol import ProtocolSettings
from runbook_lib.settings import Settings
from runbook_lib.settings_load import settings_from_dict

from . import agent_stream, text_chat
from .serve import Running, serve_corpus

# The environment variables the sketches name (token_env): the values the services accept.
SKETCH_ENVIRON = {
    "CORPUS_CHAT_TOKEN": text_chat.DEFAULT_TOKEN,
    "CORPUS_AGENT_TOKEN": next(iter(agent_stream.TOKENS)),
    "CORPUS_CHAT_TOKEN_B": text_chat.SECOND_TOKEN,
    "CORPUS_AGENT_TOKEN_B": list(agent_stream.TOKENS)[1],
}


@pytest.fixture
async def corpus() -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """Factory: ``await corpus("text_chat", "leak")`` -> a running service."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(name: str, *faults: str) -> Running:
            return await stack.enter_async_context(serve_corpus(name, faults))

        yield start


class _AnyVariable(Mapping[str, str]):
    """An environment where every variable a file names is set (parsing, not connecting)."""

    def __getitem__(self, key: str) -> str:
        return SKETCH_ENVIRON.get(key, "set-for-parsing-only")

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(SKETCH_ENVIRON)

    def __len__(self) -> int:
        return len(SKETCH_ENVIRON)


def settings_from_env(
    env: str, base_url: str = "http://127.0.0.1:1", environ: Mapping[str, str] | None = None
) -> Settings:
    """An environment file loaded by the real settings loader (strict, as ``runbook run``);
    the variables it names come from ``environ`` (default: the sketches' tokens)."""
    raw = tomllib.loads(env.replace("{base_url}", base_url))
    return settings_from_dict(raw, source="<corpus sketch>", environ=environ or SKETCH_ENVIRON)


def protocol_from_env(env: str) -> ProtocolSettings:
    """The ``[protocol]`` table of an environment file as the loader builds it."""
    return settings_from_env(env, environ=_AnyVariable()).protocol


def flows_from_env(env: str) -> dict[str, Flow]:
    """The ``[flows.NAME]`` tables of an environment file, as the loader parses them."""
    return dict(settings_from_env(env, environ=_AnyVariable()).flows)


def quick(flow: Flow, timeout_s: float = 1.0) -> Flow:
    """``flow`` with every expect step bounded by ``timeout_s`` (fault tests wait less)."""
    steps = tuple(s if s.send is not None else replace(s, timeout_s=timeout_s) for s in flow.steps)
    return Flow(flow.name, steps)
