"""The manifest chain, its verification and the secret scan of a run folder.

The chain cannot be forged: every tampering case makes ``runbook verify`` exit 1 and say
where the chain breaks (checked against the outputs folder's ``.manifest-chain``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from run_records import JWT, finalize, pass_outcomes, persist_phase

from runbook_lib import evidence, manifest
from runbook_lib.cli import main
from runbook_lib.manifest import CHAIN_FILE, chain_runs, is_run_id, verify_run
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


# ---------------------------------------------------------------- tampering with the chain


def _sealed_runs(out: Path, n: int = 4) -> list[Path]:
    runs = []
    for k in range(n):
        run = evidence.create_run_dir(out, f"env{k}")
        evidence.finalize_run(
            run,
            run_id=run.name,
            environment=f"env{k}",
            started_at=datetime.now(UTC).isoformat(),
            outcomes=[],
            parameters={},
        )
        runs.append(run)
    return runs


def _verify(run: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(["verify", str(run)])
    return rc, capsys.readouterr().out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rewrite_manifest(run: Path, edit) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads((run / "manifest.json").read_text())
    edit(doc)
    (run / "manifest.json").write_text(json.dumps(doc, indent=2, sort_keys=True))


def _rechain(out: Path, run: Path) -> None:
    """The forger also rewrites this run's line of .manifest-chain."""
    lines = (out / CHAIN_FILE).read_text().splitlines()
    fixed = [
        json.dumps({"run_id": run.name, "sha256": _sha(run / "manifest.json")})
        if json.loads(line)["run_id"] == run.name
        else line
        for line in lines
    ]
    (out / CHAIN_FILE).write_text("\n".join(fixed) + "\n")


def test_untouched_chain_verifies_every_run(tmp_path: Path, capsys) -> None:
    runs = _sealed_runs(tmp_path)
    for run in runs:
        rc, out = _verify(run, capsys)
        assert rc == 0, out
    assert "3 earlier run(s) checked" in out


def test_hand_rehashed_newest_run_is_caught(tmp_path: Path, capsys) -> None:
    *_, newest = _sealed_runs(tmp_path)
    results = newest / "results.json"
    results.write_text(results.read_text().replace('"verdict": "pass"', '"verdict": "fail"'))
    _rewrite_manifest(newest, lambda d: d["files"].update({"results.json": _sha(results)}))
    rc, out = _verify(newest, capsys)
    assert rc == 1 and "changed after it was sealed" in out and newest.name in out


def test_forged_genesis_on_a_later_run_is_caught(tmp_path: Path, capsys) -> None:
    runs = _sealed_runs(tmp_path)
    _rewrite_manifest(runs[-1], lambda d: d.update(previous_manifest=None))
    _rechain(tmp_path, runs[-1])
    rc, out = _verify(runs[-1], capsys)
    assert rc == 1 and "forged first run" in out and runs[-2].name in out


def test_a_run_deleted_from_the_middle_breaks_the_chain(tmp_path: Path, capsys) -> None:
    runs = _sealed_runs(tmp_path)
    shutil.rmtree(runs[1])
    rc, out = _verify(runs[-1], capsys)
    assert rc == 1 and "missing" in out and runs[1].name in out


def test_an_edited_earlier_manifest_is_named(tmp_path: Path, capsys) -> None:
    runs = _sealed_runs(tmp_path)
    _rewrite_manifest(runs[0], lambda d: d.update(safe_to_share=True, parameters={"x": 1}))
    rc, out = _verify(runs[-1], capsys)
    assert rc == 1 and runs[0].name in out and "changed since it was sealed" in out


def test_a_previous_run_id_that_is_a_path_is_refused_not_opened(tmp_path: Path, capsys) -> None:
    *_, newest = _sealed_runs(tmp_path, 2)
    _rewrite_manifest(
        newest, lambda d: d["previous_manifest"].update(run_id="../../../etc", sha256="0" * 64)
    )
    _rechain(tmp_path, newest)
    rc, out = _verify(newest, capsys)
    assert rc == 1 and "not a run id" in out
    assert not is_run_id("../../../etc") and is_run_id(newest.name)


def test_a_folder_missing_from_the_chain_file_is_refused(tmp_path: Path, capsys) -> None:
    runs = _sealed_runs(tmp_path, 2)
    fake = tmp_path / "20300101T000000Z-fake"
    shutil.copytree(runs[-1], fake)
    rc, out = _verify(fake, capsys)
    assert rc == 1 and "not listed" in out


def test_without_a_chain_file_only_the_link_is_checked(tmp_path: Path) -> None:
    runs = _sealed_runs(tmp_path, 2)
    (tmp_path / CHAIN_FILE).unlink()
    report = verify_run(runs[-1])
    assert report.ok and report.chain == "ok"


def test_unsealed_folders_since_the_last_sealed_run_are_listed(tmp_path: Path) -> None:
    from runbook_lib.manifest import unsealed_runs

    old_killed = tmp_path / "20000101T000000Z-old"
    old_killed.mkdir()  # before the last sealed run: already reported by an earlier run
    runs = _sealed_runs(tmp_path, 1)
    killed = tmp_path / "20991231T235959Z-killed"
    killed.mkdir()
    (tmp_path / "not-a-run").mkdir()
    assert unsealed_runs(tmp_path) == [killed.name]
    assert runs[0].name not in unsealed_runs(tmp_path)


def test_chain_runs_lists_each_chained_run_once_in_order_and_never_a_path(tmp_path):
    lines = [
        {"run_id": "20261207T100000Z-a", "sha256": "1"},
        {"run_id": "../../etc", "sha256": "2"},
        {"run_id": "20261207T100500Z-a", "sha256": "3"},
        {"run_id": "20261207T100000Z-a", "sha256": "4"},  # sealed a second time
    ]
    (tmp_path / CHAIN_FILE).write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert chain_runs(tmp_path) == ["20261207T100000Z-a", "20261207T100500Z-a"]
    assert chain_runs(tmp_path / "absent") == []
