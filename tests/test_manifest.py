"""The chain cannot be forged: every tampering case makes ``runbook verify`` exit 1 and
say where the chain breaks (checked against the outputs folder's ``.manifest-chain``)."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runbook_lib import evidence
from runbook_lib.cli import main
from runbook_lib.manifest import CHAIN_FILE, is_run_id, verify_run


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
