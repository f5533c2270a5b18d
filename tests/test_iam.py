"""403 hints name the role that grants the permission Google refused."""

from __future__ import annotations

import pytest

from runbook_lib.iam import role_hint


@pytest.mark.parametrize(
    ("message", "what", "role"),
    [
        (
            "Permission 'run.services.get' denied on resource 'x' (or resource may not exist).",
            "get service",
            "roles/run.viewer",
        ),
        (
            "Permission 'run.revisions.list' denied on resource 'x'",
            "list revisions",
            "roles/run.viewer",
        ),
        (
            "Permission 'run.services.update' denied on resource 'x'",
            "traffic",
            "roles/run.developer",
        ),
        (
            "Permission 'iam.serviceaccounts.actAs' denied on service account "
            "sa@p.iam.gserviceaccount.com (or it may not exist).",
            "deploy",
            "roles/iam.serviceAccountUser",
        ),
        (
            "Permission 'logging.logEntries.list' denied on resource (or it may not exist).",
            "read",
            "roles/logging.viewer",
        ),
        ("The caller does not have permission", "get service", "roles/run.viewer"),
        ("The caller does not have permission", "deploy", "roles/iam.serviceAccountUser"),
    ],
)
def test_role_hint_names_the_role_for_the_refused_permission(
    message: str, what: str, role: str
) -> None:
    assert role in role_hint(message, what)
