"""``python -m runbook_lib.sandbox up|down|status [...]`` (and the internal ``daemon``)."""

from __future__ import annotations

import sys

from .cli import sandbox_main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(sandbox_main(sys.argv[1:]))
