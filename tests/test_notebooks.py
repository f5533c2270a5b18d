"""Static checks of the seven phase notebooks (no kernel needed)."""

from __future__ import annotations

import ast
import re

import nbformat
import papermill as pm
import pytest

from runbook_lib import runner
from runbook_lib.checks.catalog import steps_of
from runbook_lib.context import PHASES

NB_DIR = runner.notebooks_dir()
NOTEBOOKS = {phase: NB_DIR / name for phase, (name, _, _) in PHASES.items()}
FORBIDDEN = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Lambda,
    ast.For,
    ast.AsyncFor,
    ast.While,
    ast.If,
    ast.IfExp,
    ast.Try,
    ast.With,
    ast.AsyncWith,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
    ast.Match,
)
SYNC_STEPS = {"source_status", "phase_summary"}


def _read(phase: int) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS[phase], as_version=4)


def _code(phase: int) -> list[str]:
    return [c.source for c in _read(phase).cells if c.cell_type == "code"]


def _parse(src: str) -> ast.Module:
    # Top-level await is valid in a notebook cell (IPython runs it in its loop).
    return compile(src, "<cell>", "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_every_phase_has_its_public_notebook() -> None:
    assert sorted(p.name for p in NB_DIR.glob("*.ipynb")) == sorted(
        name for name, _, _ in PHASES.values()
    )


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_committed_without_outputs(phase: int) -> None:
    nb = _read(phase)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], cell.source
            assert cell.execution_count is None, cell.source
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_parameters_match_what_the_runner_passes(phase: int) -> None:
    """The tagged cell declares exactly the parameters the runner injects, with primitives."""
    nb = _read(phase)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    params = pm.inspect_notebook(str(NOTEBOOKS[phase]))
    assert tuple(params) == runner.NOTEBOOK_PARAMETERS[phase]
    tree = _parse(tagged[0].source)
    for node in tree.body:
        assert isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant), ast.unparse(
            node
        )
    defaults = {n.targets[0].id: n.value.value for n in tree.body}  # type: ignore[attr-defined]
    assert defaults["environment"] == "local" and defaults["run_dir"] == ""
    assert defaults["approve"] is False and defaults["overrides_json"] == "{}"
    supplied = runner.notebook_parameters(phase, environment="e", run_dir="r", approve=True)
    assert set(supplied) == set(defaults)


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_cells_hold_no_logic(phase: int) -> None:
    """No def, loops, branching or comprehensions: those belong in the library."""
    for src in _code(phase):
        for node in ast.walk(_parse(src)):
            assert not isinstance(node, FORBIDDEN), f"{type(node).__name__} in: {src}"


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_layout_import_open_steps_summary(phase: int) -> None:
    """Parameters, one import cell, open_phase, one step call per cell, then the summary."""
    code = _code(phase)
    assert code[1] == "import runbook_lib as rb\nimport runbook_lib.steps"
    assert sum("import" in src for src in code) == 1
    assert code[2] == (
        f"ctx = rb.open_phase({phase}, environment=environment, run_dir=run_dir, "
        "approve=approve, overrides_json=overrides_json)"
    )
    calls = []
    for src in code[3:]:
        tree = _parse(src)
        assert len(tree.body) == 1, src  # exactly one call per cell
        m = re.fullmatch(r"(await )?rb\.steps\.(\w+)\(ctx(, rollback_to)?\)", src)
        assert m, src
        calls.append(m.group(2))
        assert bool(m.group(1)) == (m.group(2) not in SYNC_STEPS), src
    # The notebook calls exactly the catalog's steps of its phase, in order.
    assert calls == [*(s.name for s in steps_of(phase)), "phase_summary"]


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_each_step_is_explained_for_the_on_call_engineer(phase: int) -> None:
    """Markdown before every step: what it proves and what to do when it fails."""
    cells = _read(phase).cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith(f"# Phase {phase}:")
    for i, cell in enumerate(cells):
        if (
            cell.cell_type == "code"
            and "rb.steps." in cell.source
            and "phase_summary" not in cell.source
        ):
            md = cells[i - 1]
            assert md.cell_type == "markdown", cell.source
            assert "**What it proves.**" in md.source and "**When it fails.**" in md.source


def test_seed_commands_are_shown_where_the_seed_used_them() -> None:
    text = {
        p: "\n".join(c.source for c in _read(p).cells if c.cell_type == "markdown") for p in PHASES
    }
    assert "gcloud run services describe" in text[1]
    assert "gcloud run deploy" in text[2]
    assert "Sec-WebSocket-Key" in text[3]
    assert "gcloud run services update-traffic" in text[6]
    assert "gcloud logging read" in text[7]


def test_mutating_phases_say_so() -> None:
    for phase, (_, _, mutating) in PHASES.items():
        intro = _read(phase).cells[0].source
        assert ("mutates" in intro) == mutating, phase


def test_prose_names_the_configured_values_and_cites_no_spec() -> None:
    """A markdown cell cannot be parameterised: it never states a setting's default as if it
    were in force ("`hold_s` (30 s)"); it says "the configured" and the step shows the
    value. Product text speaks in its own words, never "SPEC section N"."""
    default_as_fact = re.compile(r"`\w+` \(\d+(\.\d+)? ?(s|%)\)")
    for phase in PHASES:
        for cell in _read(phase).cells:
            if cell.cell_type != "markdown":
                continue
            assert not default_as_fact.search(cell.source), (phase, cell.source[:200])
            assert "SPEC" not in cell.source, (phase, cell.source[:200])
    text = {p: "\n".join(c.source for c in _read(p).cells) for p in (2, 4, 7)}
    assert "the configured `health_ready_s`" in text[2]
    assert "the configured `event_timeout_s`" in text[4]
    assert "the configured `monitor_window_s`" in text[7] and "the configured `hold_s`" in text[7]
