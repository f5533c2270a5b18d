"""The IAM roles the runbook's Cloud Run and Cloud Logging calls need, for 403 hints.

Google's 403 names the permission it refused (``Permission 'run.services.update'
denied on resource ...``); the hint names the predefined role that grants it, so
the on-call engineer knows what to ask for. The table per phase is in
``docs/cloud-run.md``.
"""

from __future__ import annotations

import re

__all__ = ["ROLE_FOR_PERMISSION", "role_hint"]

# Permission (lowercased, as Google's messages vary in case) -> the smallest predefined
# role that holds it.
ROLE_FOR_PERMISSION = {
    "run.services.get": "roles/run.viewer",
    "run.services.list": "roles/run.viewer",
    "run.revisions.get": "roles/run.viewer",
    "run.revisions.list": "roles/run.viewer",
    "run.operations.get": "roles/run.viewer",
    "run.services.update": "roles/run.developer",
    "run.jobs.get": "roles/run.viewer",
    "run.executions.get": "roles/run.viewer",
    "run.tasks.list": "roles/run.viewer",
    "run.jobs.create": "roles/run.developer",
    "run.jobs.update": "roles/run.developer",
    "run.jobs.run": "roles/run.developer",
    "run.executions.cancel": "roles/run.developer",
    "iam.serviceaccounts.actas": "roles/iam.serviceAccountUser",
    "logging.logentries.list": "roles/logging.viewer",
}

_PERMISSION = re.compile(r"Permission '([A-Za-z0-9_.]+)' denied")


def role_hint(message: str, what: str = "") -> str:
    """The role to grant for a 403 whose message is ``message`` (the call was ``what``).

    Names the refused permission and its role when Google's message says which;
    otherwise the role for the kind of call (reads: viewer; writes: developer).
    """
    m = _PERMISSION.search(message)
    permission = m.group(1) if m else ""
    role = ROLE_FOR_PERMISSION.get(permission.lower(), "")
    if permission.lower() == "iam.serviceaccounts.actas":
        return (
            "permission denied: a deploy runs the new revision as its service account, so "
            "the caller needs iam.serviceAccounts.actAs on it: grant "
            "roles/iam.serviceAccountUser on that service account (plus roles/run.developer "
            "on the service)"
        )
    if role:
        return f"permission denied: the caller lacks {permission}; grant {role} on the project"
    if permission:
        return f"permission denied: the caller lacks {permission}"
    reads = ("get", "list", "read", "describe")
    if any(w in what.lower() for w in reads):
        return "permission denied: reads need roles/run.viewer on the project"
    return (
        "permission denied: writes need roles/run.developer on the project, and a deploy "
        "also roles/iam.serviceAccountUser on the runtime service account"
    )
