"""Phase 4's load: many WebSocket sessions against one URL, timed and honestly reported.

- :mod:`~runbook_lib.load.engine`: ``run_load(plan)`` on this machine (small plans in
  the caller's event loop, larger ones in one spawned worker process per core);
- :mod:`~runbook_lib.load._worker`: the hot path each worker runs;
- :mod:`~runbook_lib.load.histogram`: the mergeable latency histogram tasks report;
- :mod:`~runbook_lib.load.task`: one Cloud Run Job task (``python -m
  runbook_lib.load.task``, the load-worker image's entry point) and the merge of the
  tasks' results;
- :mod:`~runbook_lib.load.jobs`: creates and runs that Job through the Cloud Run Admin
  API and reads the tasks' results from Cloud Logging.

Import from the module that owns a name; this package re-exports nothing, so importing
it stays cheap (numpy and the WebSocket clients load with ``engine``).
"""

__all__: list[str] = []
