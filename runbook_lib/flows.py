"""Flows: a service's conversation as data (SPEC section 8).

A flow is an ordered list of steps; each step either sends a rendered template or
waits, within a bounded time, for a frame that matches. Values captured from one
frame can be used in later templates (subscribe -> publish -> notification,
GraphQL ``connection_init`` -> ``subscribe`` -> ``next``). The checks that talk to
a service run named flows: ``agent`` (``e2e.agent_response``, ``events.*``),
``chat`` (``chat.flow``), ``load`` (each load session) and ``isolation`` (each
simulated user). The seed's protocol gives the default flows.

This module holds the model only: frozen dataclasses, no I/O. ``settings`` parses
``[flows.NAME]`` tables into them; the flow engine renders, matches and captures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FLOW_NAMES", "Flow", "FlowStep"]

# The flows the checks run, by name. Users may define others; these are the ones read.
FLOW_NAMES = ("agent", "chat", "load", "isolation")


@dataclass(frozen=True, slots=True)
class FlowStep:
    """One step of a flow: exactly one of ``send``, ``expect``, ``expect_pattern``, ``expect_event``.

    Attributes:
        send: a template to send: a string (sent as a text frame) or a table (sent as
            JSON). Placeholders: ``{marker}``, ``{user_id}``, ``{run_id}``,
            ``{thread_id}``, ``{text}`` and any name captured earlier.
        expect: dotted path -> value; a JSON frame matches when every path holds the
            (rendered) value.
        expect_pattern: a regular expression searched in the frame's text (text or JSON).
        expect_event: an event type, found at the ``[protocol] event_type`` paths (JSON)
            or by ``[protocol] event_patterns`` (text).
        capture: name -> dotted path (JSON) or regex group name (with ``expect_pattern``);
            the captured value is usable as ``{name}`` in later steps.
        timeout_s: how long an expect step waits; ``None`` = the check's own default.
    """

    send: str | Mapping[str, Any] | None = None
    expect: Mapping[str, Any] | None = None
    expect_pattern: str | None = None
    expect_event: str | None = None
    capture: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float | None = None

    @property
    def kind(self) -> str:
        """``"send"`` or ``"expect"``."""
        return "send" if self.send is not None else "expect"


@dataclass(frozen=True, slots=True)
class Flow:
    """A named, ordered list of steps."""

    name: str
    steps: tuple[FlowStep, ...]
