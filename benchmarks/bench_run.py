"""Wall time of the default sandbox scenario, and where it goes.

Runs what the README's main command runs (`runbook run --approve` against a fresh sandbox:
incident, deploy, validation) and prints, per phase, the notebook's wall time split into
kernel start + imports + parameter injection (papermill overhead) and the checks
themselves, plus the sandbox start/stop and the run-folder sealing (HTML exports, manifest).
Target (issue 4): the whole default run under 60 s.

    python benchmarks/bench_run.py [--repeat N]

A benchmark, not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from runbook_lib.runner import Progress, RunOptions, run

TARGET_S = 60.0


def one_run(out_dir: Path) -> dict:
    marks: dict[str, float] = {}
    t0 = time.monotonic()

    def progress(p: Progress) -> None:
        if p.event == "phase-start" and "first_phase" not in marks:
            marks["first_phase"] = time.monotonic() - t0

    with tempfile.TemporaryDirectory() as state:
        outcome = run(
            RunOptions(approve=True, out_dir=out_dir, sandbox_state_dir=Path(state)),
            progress=progress,
        )
    total = time.monotonic() - t0
    results = json.loads((outcome.run_dir / "results.json").read_text())
    phases = []
    for p in results["phases"]:
        pf = outcome.run_dir / "phases" / f"{p['phase']:02d}.json"
        checks_s = json.loads(pf.read_text())["elapsed_s"] if pf.is_file() else 0.0
        phases.append(
            {
                "phase": p["phase"],
                "notebook": p["notebook"],
                "status": p["status"],
                "notebook_s": p["duration_s"],
                "checks_s": checks_s,
                "overhead_s": max(p["duration_s"] - checks_s, 0.0),
            }
        )
    in_notebooks = sum(p["notebook_s"] for p in phases)
    return {
        "exit_code": outcome.exit_code,
        "verdict": results["verdict"],
        "total_s": total,
        "sandbox_start_s": marks.get("first_phase", 0.0),
        "phases": phases,
        "rest_s": max(total - marks.get("first_phase", 0.0) - in_notebooks, 0.0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs to make (fresh sandbox each)")
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as out:
        for i in range(args.repeat):
            r = one_run(Path(out))
            runs.append(r)
            print(
                f"run {i + 1}/{args.repeat}: exit {r['exit_code']}, verdict {r['verdict']}, "
                f"{r['total_s']:.1f} s",
                flush=True,
            )
    last = runs[-1]
    print()
    print(f"{'phase':<32}{'notebook s':>11}{'kernel+imports s':>18}{'checks s':>10}{'share':>8}")
    total = last["total_s"]
    print(
        f"{'sandbox start (up)':<32}{last['sandbox_start_s']:>11.1f}{'':>18}{'':>10}"
        f"{last['sandbox_start_s'] / total:>8.0%}"
    )
    for p in last["phases"]:
        print(
            f"{p['notebook']:<32}{p['notebook_s']:>11.1f}{p['overhead_s']:>18.1f}"
            f"{p['checks_s']:>10.1f}{p['notebook_s'] / total:>8.0%}"
        )
    print(
        f"{'HTML export, seal, sandbox down':<32}{last['rest_s']:>11.1f}{'':>18}{'':>10}"
        f"{last['rest_s'] / total:>8.0%}"
    )
    overhead = sum(p["overhead_s"] for p in last["phases"])
    checks = sum(p["checks_s"] for p in last["phases"])
    print(f"{'all notebooks':<32}{overhead + checks:>11.1f}{overhead:>18.1f}{checks:>10.1f}")
    totals = [r["total_s"] for r in runs]
    summary = (
        f"whole run: {statistics.median(totals):.1f} s median of {len(totals)} "
        f"(min {min(totals):.1f}, max {max(totals):.1f}); target < {TARGET_S:.0f} s: "
        + ("met" if statistics.median(totals) < TARGET_S else "MISSED")
    )
    print(summary)
    return 0 if all(r["exit_code"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
