"""The manifest chain, its verification and the secret scan of a run folder."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from run_records import JWT, finalize, pass_outcomes, persist_phase

from runbook_lib import evidence, manifest
from runbook_lib.redaction import register_secret


def test_secret_scan_catches_planted_secret_and_jwt(tmp_path: Path) -> None:
    """A secret that slipped into any file marks the folder unsafe and the verdict error."""
    run = evidence.create_run_dir(tmp_path, "test")
    persist_phase(run, 3, [("ws.upgrade", "pass")])
    register_secret("sup3r-s3cret-value")
    (run / "leak.txt").write_text("token=sup3r-s3cret-value")
    (run / "figures").mkdir(exist_ok=True)
    (run / "figures" / "note.txt").write_text(f"Authorization: Bearer {JWT}")
    ev = finalize(run, pass_outcomes(3))
    assert not ev.safe_to_share and ev.verdict == "error"
    assert {lk.file for lk in ev.leaks} == {"leak.txt", "figures/note.txt"}
    marker = (run / manifest.UNSAFE_MARKER).read_text()
    assert "leak.txt" in marker and "sup3r-s3cret-value" not in marker and JWT not in marker
    for name in ("results.json", "summary.md", "index.html", "junit.xml", "manifest.json"):
        text = (run / name).read_text()
        assert "sup3r-s3cret-value" not in text and JWT not in text
    assert "NOT SAFE TO SHARE" in (run / "summary.md").read_text()
    assert json.loads((run / "manifest.json").read_text())["safe_to_share"] is False


def test_secret_scan_uses_values_passed_by_the_runner(tmp_path: Path) -> None:
    """Secrets read only inside the kernels are found when the runner names their values."""
    run = evidence.create_run_dir(tmp_path, "test")
    (run / "out.txt").write_text("x kernel-only-secret x")
    assert manifest.scan_secrets(run) == []
    leaks = manifest.scan_secrets(run, ["kernel-only-secret"])
    assert leaks == [manifest.Leak("out.txt", "registered secret value", 1)]


def test_clean_folder_passes_scan(tmp_path: Path) -> None:
    run = evidence.create_run_dir(tmp_path, "test")
    persist_phase(run, 3, [("ws.upgrade", "pass")], figure=True)
    ev = finalize(run, pass_outcomes(3))
    assert ev.safe_to_share and not (run / manifest.UNSAFE_MARKER).exists()
    scan = next(c for c in ev.results["checks"] if c["id"] == "evidence.secret_scan")
    assert scan["status"] == "pass"


def test_verify_detects_edited_removed_and_added_files(tmp_path: Path) -> None:
    run = evidence.create_run_dir(tmp_path, "test")
    persist_phase(run, 3, [("ws.upgrade", "pass")], figure=True)
    finalize(run, pass_outcomes(3))
    assert manifest.verify_run(run).ok
    doc = json.loads((run / "manifest.json").read_text())
    assert "results.json" in doc["files"] and "manifest.json" not in doc["files"]
    assert doc["tool_versions"]["python"]
    (run / "summary.md").write_text("edited")
    (run / "junit.xml").unlink()
    (run / "extra.txt").write_text("new")
    report = manifest.verify_run(run)
    assert not report.ok
    assert report.changed == ("summary.md",)
    assert report.missing == ("junit.xml",)
    assert report.added == ("extra.txt",)


def test_manifest_chain_links_runs_and_detects_tampering(tmp_path: Path) -> None:
    first = evidence.create_run_dir(tmp_path, "a")
    finalize(first, [])
    second = evidence.create_run_dir(tmp_path, "b")
    finalize(second, [])
    m2 = json.loads((second / "manifest.json").read_text())
    assert m2["previous_manifest"]["run_id"] == first.name
    assert manifest.verify_run(first).chain == "genesis"
    assert manifest.verify_run(second).chain == "ok"
    (first / "manifest.json").write_text("{}")
    assert manifest.verify_run(second).chain == "broken"
    assert not manifest.verify_run(second).ok


_CONCURRENT = textwrap.dedent("""
    import sys, time
    from datetime import UTC, datetime
    from pathlib import Path
    from runbook_lib import evidence
    out = Path(sys.argv[1])
    while time.time() < float(sys.argv[2]):
        time.sleep(0.005)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    run = evidence.create_run_dir(out, "same", now=now)
    evidence.finalize_run(run, run_id=run.name, environment="same",
                          started_at=now.isoformat(), outcomes=[], parameters={})
    print(run.name)
""")


def test_concurrent_runs_get_distinct_folders_and_one_linear_chain(tmp_path: Path) -> None:
    """Two processes finishing at the same moment: own folders, chain A <- B (or B <- A)."""
    import time

    start_at = time.time() + 3.0  # both interpreters are up before either starts
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONCURRENT, str(tmp_path), str(start_at)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    names = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(names)) == 2
    links = {
        n: json.loads((tmp_path / n / "manifest.json").read_text())["previous_manifest"]
        for n in names
    }
    assert sorted(v is None for v in links.values()) == [False, True]
    later = next(n for n, v in links.items() if v is not None)
    earlier = next(n for n, v in links.items() if v is None)
    assert links[later]["run_id"] == earlier
    assert manifest.verify_run(tmp_path / later).chain == "ok"
    chain = (tmp_path / manifest.CHAIN_FILE).read_text().splitlines()
    assert [json.loads(line)["run_id"] for line in chain] == [earlier, later]


def test_verify_names_the_previous_run_whose_manifest_changed(tmp_path: Path) -> None:
    first = evidence.create_run_dir(tmp_path, "a")
    finalize(first, [])
    second = evidence.create_run_dir(tmp_path, "b")
    finalize(second, [])
    report = manifest.verify_run(second)
    assert report.chain == "ok" and report.previous_run_id == first.name
    assert report.run_id == second.name and report.verdict == "pass"
    (first / "manifest.json").write_text("{}")
    report = manifest.verify_run(second)
    assert report.chain == "broken" and report.previous_run_id == first.name


def test_a_second_seal_of_one_run_does_not_link_to_itself(tmp_path: Path) -> None:
    first = evidence.create_run_dir(tmp_path, "a")
    finalize(first, [])
    run = evidence.create_run_dir(tmp_path, "b")
    finalize(run, [])
    finalize(run, [])  # e.g. re-sealed after an interrupt hit the first seal
    doc = json.loads((run / "manifest.json").read_text())
    assert doc["previous_manifest"]["run_id"] == first.name
    assert manifest.verify_run(run).ok
