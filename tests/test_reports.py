"""The front page as a browser lays it out: ids and statuses readable at 1,400 and 900 px.

Rendered by headless Chromium from the distribution's packages when present (skipped
otherwise): a script appended to a copy of ``index.html`` measures the layout and the
test reads the result from the dumped DOM.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from runbook_lib.reports import write_index

CHROMIUM = next(
    (p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).is_file()), None
)

_MEASURE = """
<script>
const bad = [];
for (const td of document.querySelectorAll('td.k')) {
  const range = document.createRange(); range.selectNodeContents(td);
  const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
  if (lines.size > 1) bad.push(td.textContent);
}
const over = document.documentElement.scrollWidth > window.innerWidth;
document.body.setAttribute('data-layout', JSON.stringify({wrapped: bad, overflow: over}));
</script>
"""


def _results() -> dict:
    long_detail = "Cause: " + " ".join(["the source registers /websocket"] * 30)
    checks = [
        {
            "id": cid,
            "phase": phase,
            "status": status,
            "observed": {"probes": ["x" * 80], "ids": list(range(40))},
            "threshold": "open 30s, clean close",
            "detail": long_detail + " https://example.invalid/" + "a" * 200,
            "duration_s": 12.3456,
        }
        for cid, phase, status in [
            ("predeploy.local_agent_events_suite", 2, "pass"),
            ("monitor.ws_failure_rate", 7, "fail"),
            ("health.no_5xx_during_warmup", 2, "error"),
            ("ws.routes_probe", 1, "fail"),
        ]
    ]
    return {
        "run_id": "20261207T000000Z-local",
        "environment": "local",
        "started_at": "2026-12-07T00:00:00+00:00",
        "finished_at": "2026-12-07T00:01:00+00:00",
        "verdict": "fail",
        "phases": [
            {
                "phase": 1,
                "notebook": "01_deployment_status.ipynb",
                "status": "fail",
                "duration_s": 1.0,
            }
        ],
        "checks": checks,
        "recommendation": {"action": "hold", "reason": "x", "target_revision": None},
        "superseded_phases": [1],
    }


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium from the distribution's packages")
@pytest.mark.parametrize("width", [1400, 900])
def test_index_ids_and_statuses_never_wrap_and_nothing_overflows(
    tmp_path: Path, width: int
) -> None:
    page = tmp_path / "index.html"
    write_index(_results(), tmp_path, page)
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", _MEASURE + "</body>"))
    profile = tmp_path / "profile"
    out = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--window-size={width},900",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    shutil.rmtree(profile, ignore_errors=True)
    marker = 'data-layout="'
    assert marker in out.stdout, out.stderr[-2000:]
    raw = out.stdout.split(marker, 1)[1].split('"', 1)[0].replace("&quot;", '"')
    layout = json.loads(raw)
    assert layout == {"wrapped": [], "overflow": False}, layout


def test_headline_says_rolled_back_once_traffic_moved(tmp_path: Path) -> None:
    from runbook_lib.reports import write_summary

    doc = _results() | {
        "recommendation": {"action": "rollback", "reason": "r", "target_revision": "rev-1"},
        "superseded_phases": [],
    }
    write_summary(doc, tmp_path / "pending.md")
    assert (
        "## Recommendation: ROLLBACK to revision `rev-1`" in (tmp_path / "pending.md").read_text()
    )
    done = doc | {"mutations": [{"phase": 6, "key": "rollback", "state": "done"}]}
    write_summary(done, tmp_path / "done.md")
    write_index(done, tmp_path, tmp_path / "index.html")
    assert "## ROLLED BACK to revision `rev-1`" in (tmp_path / "done.md").read_text()
    page = (tmp_path / "index.html").read_text()
    assert "<h2>ROLLED BACK to revision <code>rev-1</code></h2>" in page
    assert "Recommendation: ROLLBACK" not in page


def test_summary_cuts_long_details_between_words(tmp_path: Path) -> None:
    from runbook_lib.reports import write_summary

    write_summary(_results(), tmp_path / "summary.md")
    for line in (tmp_path / "summary.md").read_text().splitlines():
        if "…" in line and "the source" in line:
            before = line.split("…")[0]
            assert before.endswith(" "), before[-40:]


def test_headline_when_the_deploy_already_restored_the_split() -> None:
    from runbook_lib.reports import _headline

    doc = {
        "recommendation": {"action": "rollback", "target_revision": "rev-1"},
        "artifacts": {"6": {"rollback_rule": "already-serving"}},
    }
    assert (
        _headline(doc) == "TRAFFIC ALREADY BACK on what served before the deploy (revision `rev-1`)"
    )
