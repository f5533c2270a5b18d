"""A corpus of small, differently shaped WebSocket services (SPEC section 8, issue 9).

Each module is one service with injectable faults chosen at start:

* ``jsonrpc_pubsub``: JSON-RPC 2.0 pub/sub, no auth, ``/healthz``;
* ``text_chat``: plain-text chat rooms, static bearer token, no JSON at all;
* ``graphql_ws``: GraphQL over WebSocket (``graphql-transport-ws`` subprotocol);
* ``agent_stream``: agent events nested under ``payload``, ``?access_token=`` auth;
* ``no_health``: one WebSocket route and no HTTP endpoint at all;
* ``socketio_chat``: chat rooms over Socket.IO (python-socketio, Engine.IO v4 framing);
* ``crash_chat``: JSON chat rooms whose handler can die right after the accept.

Every module has ``FAULTS`` (name -> what it breaks), ``make_app(faults)`` and ``ENV``
(the environment file a user would write for it, ``{base_url}`` to fill in). The
fault ``ws_missing`` is common to all: uvicorn runs without a WebSocket library
(``ws="none"``) so every upgrade answers 404 while the routes exist in the source.
See ``README.md`` and :func:`corpus.serve.serve_corpus`.
"""

from __future__ import annotations

SERVICES = (
    "jsonrpc_pubsub",
    "text_chat",
    "graphql_ws",
    "agent_stream",
    "no_health",
    "socketio_chat",
    "crash_chat",
)
