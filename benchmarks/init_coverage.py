"""How much of the catalog an unedited `runbook init` file judges, per corpus service.

For each service in tests/corpus (healthy): `runbook init --url ... --app ...` writes the
file, `runbook run --env FILE --phases 1,3,4,5,7` runs it (real papermill kernels), and
the table shows checks judged (pass/warn/fail/error) vs skipped, and every false alarm
(fail or error on a healthy service) with its detail. Run by hand:

    .venv/bin/python benchmarks/init_coverage.py [SERVICE ...]

Exit 1 when any healthy service has a false alarm.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))

from corpus import SERVICES  # noqa: E402
from corpus.agent_stream import TOKENS  # noqa: E402
from corpus.serve import Running, serve_corpus  # noqa: E402
from corpus.text_chat import DEFAULT_TOKEN  # noqa: E402

TOKEN_ENV = {"text_chat": "CORPUS_CHAT_TOKEN", "agent_stream": "CORPUS_AGENT_TOKEN"}
TOKEN = {"CORPUS_CHAT_TOKEN": DEFAULT_TOKEN, "CORPUS_AGENT_TOKEN": next(iter(TOKENS))}
SHORT = {
    "thresholds.monitor_window_s": 2.5,
    "thresholds.monitor_interval_s": 0.5,
    "thresholds.hold_s": 1.0,
}
JUDGED = ("pass", "warn", "fail", "error")


@contextmanager
def threaded(name: str) -> Iterator[Running]:
    box: dict = {}
    ready = threading.Event()

    async def main() -> None:
        async with serve_corpus(name) as svc:
            box["svc"], box["stop"] = svc, asyncio.Event()
            ready.set()
            await box["stop"].wait()

    def run() -> None:
        loop = box["loop"] = asyncio.new_event_loop()
        loop.run_until_complete(main())
        # The servers' background tasks (Engine.IO's pings) end with the loop.
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0.1))
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not ready.wait(20):
        raise RuntimeError(f"{name} did not start")
    try:
        yield box["svc"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(10)


def _repo(tmp: Path) -> Path:
    """The user's checkout: the corpus committed in a fresh git repository."""
    root = tmp / "repo"
    shutil.copytree(TESTS / "corpus", root / "corpus", ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "corpus"], check=True)
    return root


def measure(name: str, repo: Path, tmp: Path) -> dict:
    env_file = tmp / f"{name}.toml"
    environ = {**os.environ, **TOKEN}
    runbook = [sys.executable, "-m", "runbook_lib"]
    with threaded(name) as svc:
        init = [*runbook, "init", "--url", svc.base_url, "--app", f"corpus.{name}:app"]
        init += ["--repo-dir", str(repo), "--out", str(env_file), "--timeout", "2"]
        if name in TOKEN_ENV:
            init += ["--token-env", TOKEN_ENV[name]]
        done = subprocess.run(init, capture_output=True, text=True, env=environ, timeout=180)
        if done.returncode != 0:
            return {"name": name, "init_rc": done.returncode, "error": done.stderr[-500:]}
        params = [a for k, v in SHORT.items() for a in ("--param", f"{k}={v}")]
        out = tmp / f"runs-{name}"
        cmd = [*runbook, "run", "--env", str(env_file), "--phases", "1,3,4,5,7"]
        proc = subprocess.run(
            [*cmd, "--out", str(out), *params],
            capture_output=True,
            text=True,
            env=environ,
            timeout=600,
        )
    folders = sorted(p for p in out.iterdir() if p.is_dir()) if out.exists() else []
    results = json.loads((folders[-1] / "results.json").read_text()) if folders else {}
    checks = results.get("checks", [])
    judged = [c for c in checks if c["status"] in JUDGED]
    alarms = {c["id"]: c["detail"] for c in checks if c["status"] in ("fail", "error")}
    return {
        "name": name,
        "rc": proc.returncode,
        "total": len(checks),
        "judged": len(judged),
        "skipped": len(checks) - len(judged),
        "alarms": alarms,
        "judged_ids": sorted(c["id"] for c in judged),
    }


def main(argv: list[str]) -> int:
    names = argv or list(SERVICES)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        repo = _repo(tmp)
        for name in names:
            row = measure(name, repo, tmp)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"{'service':16} {'exit':>4} {'judged':>7} {'skipped':>7} {'share':>6} false alarms")
    bad = 0
    for r in rows:
        if "error" in r:
            print(f"{r['name']:16} init exit {r['init_rc']}: {r['error']}")
            bad += 1
            continue
        share = r["judged"] / r["total"] if r["total"] else 0.0
        alarms = ", ".join(r["alarms"]) or "0"
        print(
            f"{r['name']:16} {r['rc']:>4} {r['judged']:>7} {r['skipped']:>7} {share:>6.0%} {alarms}"
        )
        bad += bool(r["alarms"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
