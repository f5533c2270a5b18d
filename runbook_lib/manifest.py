"""The tamper-evident seal of a run folder: secret scan, manifest, hash chain, verify.

``manifest.json`` holds the SHA-256 of every file in the folder, the redacted
parameters, tool versions and the hash of the previous run's manifest in the same
outputs folder (``.manifest-chain``), so editing any file of any chained run shows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from .redaction import JWT_PATTERN, count_secrets, redact, redact_obj, registered_secrets

__all__ = [
    "CHAIN_FILE",
    "MANIFEST",
    "RESULTS",
    "SECRET_SCAN_ID",
    "UNSAFE_MARKER",
    "Leak",
    "VerifyReport",
    "chain_runs",
    "is_run_id",
    "scan_secrets",
    "tool_versions",
    "unsealed_runs",
    "verify_run",
    "write_manifest",
]

MANIFEST = "manifest.json"
RESULTS = "results.json"
UNSAFE_MARKER = "UNSAFE_TO_SHARE"
# Append-only list of manifests written in one outputs folder: the chain's head.
CHAIN_FILE = ".manifest-chain"
_CHAIN_LOCK = ".manifest-chain.lock"
# Check id recorded for the final secret scan (phase 0 = the run itself).
SECRET_SCAN_ID = "evidence.secret_scan"


@dataclass(frozen=True, slots=True)
class Leak:
    """A secret found by the final scan (the value itself is never kept)."""

    file: str
    kind: str
    count: int


# ------------------------------------------------------------------ secret scan

_JWT_BYTES = re.compile(JWT_PATTERN.pattern.encode())


def scan_secrets(run_dir: str | os.PathLike[str], secrets: Iterable[str] = ()) -> list[Leak]:
    """Every file in the folder searched for each secret value and for JWT-shaped strings.

    Args:
        run_dir: the run folder.
        secrets: values to look for besides :func:`registered_secrets` (e.g. the values of
            the environment variables the settings name: the kernels read them, not us).
    """
    values = {s for s in (*registered_secrets(), *secrets) if s and len(s) >= 6}
    leaks: list[Leak] = []
    root = Path(run_dir)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == UNSAFE_MARKER:
            continue
        data = path.read_bytes()
        count = count_secrets(data, values)  # every encoded form too (redaction.secret_forms)
        if count:
            leaks.append(Leak(rel, "registered secret value", count))
        jwts = len(_JWT_BYTES.findall(data))
        if jwts:
            leaks.append(Leak(rel, "JWT-shaped string", jwts))
    return leaks


# ------------------------------------------------------------------ manifest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def _hash_files(run_dir: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir).as_posix()
        if p.is_file() and rel != MANIFEST:
            out[rel] = _sha256(p)
    return out


def tool_versions() -> dict[str, str]:
    """Versions of Python and the packages that shaped the run folder."""
    out = {"python": platform.python_version()}
    for dist in (
        "websocket-runbook",
        "papermill",
        "nbclient",
        "nbconvert",
        "nbformat",
        "ipykernel",
        "matplotlib",
        "pandas",
        "httpx",
        "websockets",
        "google-cloud-run",
        "google-cloud-logging",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


@contextlib.contextmanager
def _chain_lock(out_dir: Path) -> Iterator[None]:
    """Serialise chain updates between concurrent runs sharing one outputs folder."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: best effort without a lock
        yield
        return
    with (out_dir / _CHAIN_LOCK).open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _chain_head(out_dir: Path, exclude: str = "") -> dict[str, str] | None:
    """The last manifest in the chain, skipping ``exclude`` (a run sealed a second time,
    e.g. after an interrupt during its first seal, must not link to itself)."""
    chain = out_dir / CHAIN_FILE
    if not chain.is_file():
        return None
    for line in reversed(chain.read_text(encoding="utf-8").splitlines()):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (
            isinstance(entry, dict)
            and {"run_id", "sha256"} <= entry.keys()
            and entry["run_id"] != exclude
        ):
            return {"run_id": str(entry["run_id"]), "sha256": str(entry["sha256"])}
    return None


def write_manifest(
    run_dir: Path, *, parameters: Mapping[str, Any], safe_to_share: bool = True
) -> str:
    """Write ``manifest.json`` and link it to the previous run's; return its SHA-256.

    The previous manifest is the last one written in the same outputs folder
    (``.manifest-chain``); reading the head, writing this manifest and appending
    it happen under one file lock, so concurrent runs form one linear chain.
    """
    out_dir = run_dir.parent
    with _chain_lock(out_dir):
        previous = _chain_head(out_dir, exclude=run_dir.name)
        doc = {
            "run_id": run_dir.name,
            "created_at": datetime.now(UTC).isoformat(),
            "algorithm": "sha256",
            "files": _hash_files(run_dir),
            "parameters": redact_obj(dict(parameters)),
            "tool_versions": tool_versions(),
            "previous_manifest": previous,
            "safe_to_share": safe_to_share,
        }
        path = run_dir / MANIFEST
        path.write_text(
            redact(json.dumps(doc, indent=2, sort_keys=True, default=str)), encoding="utf-8"
        )
        digest = _sha256(path)
        with (out_dir / CHAIN_FILE).open("a", encoding="utf-8") as chain:
            chain.write(json.dumps({"run_id": run_dir.name, "sha256": digest}) + "\n")
    return digest


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Result of :func:`verify_run`.

    Attributes:
        run_dir: the folder verified.
        changed, missing, added: relative paths that differ from the manifest.
        chain: ``ok``, ``genesis`` (first run), ``unchecked`` (no ``.manifest-chain``
            and the previous folder absent), ``broken`` (this manifest, a link, or an
            earlier run disagrees with ``.manifest-chain``, an earlier run is missing)
            or ``no-manifest`` (the folder was never sealed, e.g. the run was killed).
        safe_to_share: the manifest's flag (false when the secret scan found something).
        run_id: the run the manifest seals.
        previous_run_id: the chained previous run (whose manifest changed when ``broken``).
        verdict: the verdict in ``results.json`` ('' when absent or unreadable), e.g.
            ``interrupted`` for a run sealed after a signal.
        chain_detail: what was checked, or where the chain breaks, in words.
    """

    run_dir: Path
    changed: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    chain: str = "ok"
    safe_to_share: bool = True
    run_id: str = ""
    previous_run_id: str = ""
    verdict: str = ""
    chain_detail: str = ""

    @property
    def ok(self) -> bool:
        """True when every file matches and the chain is not broken."""
        return not (self.changed or self.missing or self.added) and self.chain not in (
            "broken",
            "no-manifest",
        )


def _verdict(root: Path) -> str:
    try:
        doc = json.loads((root / RESULTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(doc.get("verdict", "")) if isinstance(doc, dict) else ""


def verify_run(run_dir: str | os.PathLike[str]) -> VerifyReport:
    """Recompute every file's SHA-256 and compare with ``manifest.json``; check the chain.

    Never raises for a partial or damaged folder: a missing or unreadable manifest is
    ``chain="no-manifest"``.
    """
    root = Path(run_dir).resolve()
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        recorded: dict[str, str] = {str(k): str(v) for k, v in dict(manifest["files"]).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return VerifyReport(
            root, chain="no-manifest", safe_to_share=False, run_id=root.name, verdict=_verdict(root)
        )
    actual = _hash_files(root)
    changed = tuple(sorted(k for k in recorded if k in actual and actual[k] != recorded[k]))
    missing = tuple(sorted(k for k in recorded if k not in actual))
    added = tuple(sorted(k for k in actual if k not in recorded))
    chain, chain_detail, previous_run_id = _check_chain(root, manifest, _sha256(path))
    return VerifyReport(
        root,
        changed,
        missing,
        added,
        chain,
        bool(manifest.get("safe_to_share", True)),
        run_id=str(manifest.get("run_id") or root.name),
        previous_run_id=previous_run_id,
        verdict=_verdict(root),
        chain_detail=chain_detail,
    )


def _read_chain(out_dir: Path) -> tuple[list[tuple[str, str]], list[int]] | None:
    """(run id, manifest SHA-256) per line of ``.manifest-chain`` and the numbers of the
    lines that are not entries; None when the outputs folder has no chain file."""
    chain = out_dir / CHAIN_FILE
    try:
        text = chain.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return [], [0]
    entries: list[tuple[str, str]] = []
    bad: list[int] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            entries.append((str(entry["run_id"]), str(entry["sha256"])))
        except (ValueError, KeyError, TypeError):
            bad.append(n)
    return entries, bad


def _check_chain(root: Path, manifest: Mapping[str, Any], own_sha: str) -> tuple[str, str, str]:
    """(chain state, the break in words, previous run id) of a sealed run.

    With ``.manifest-chain`` beside the folder, the whole chain up to this run is
    checked against it: this manifest's own hash, its link to the run listed before it,
    and every earlier run (present, and its manifest unchanged). Without one, only the
    link to the previous run's folder can be checked. Run ids read from a manifest or
    the chain are checked to be run ids before they name a folder.
    """
    name = root.name
    prev = manifest.get("previous_manifest")
    prev_id = str(prev.get("run_id")) if isinstance(prev, dict) and prev else ""
    prev_sha = str(prev.get("sha256")) if isinstance(prev, dict) and prev else ""
    if prev_id and not is_run_id(prev_id):
        return (
            "broken",
            f"its manifest names {prev_id!r} as the previous run, which is not a run id "
            "(never used as a path): the manifest was edited",
            "",
        )
    read = _read_chain(root.parent)
    if read is None:
        if not prev_id:
            return "genesis", f"no {CHAIN_FILE} beside the folder: only its own files checked", ""
        prev_path = root.parent / prev_id / MANIFEST
        if not prev_path.is_file():
            return "unchecked", f"no {CHAIN_FILE} beside the folder", prev_id
        ok = _sha256(prev_path) == prev_sha
        return ("ok" if ok else "broken"), "", prev_id
    entries, bad = read
    if bad:
        where = "unreadable" if bad == [0] else f"line(s) {', '.join(map(str, bad[:5]))}"
        return "broken", f"{CHAIN_FILE}: {where} not a chain entry: the file was edited", prev_id
    shas: dict[str, list[str]] = {}
    for rid, sha in entries:
        shas.setdefault(rid, []).append(sha)
    order = list(shas)
    if name not in shas:
        return (
            "broken",
            f"run {name} is not listed in {CHAIN_FILE} of {root.parent}: it was not sealed "
            "there, or the chain was edited",
            prev_id,
        )
    if shas[name][-1] != own_sha:
        return (
            "broken",
            f"the manifest of run {name} changed after it was sealed ({CHAIN_FILE} recorded "
            f"sha256 {shas[name][-1][:12]}..., it now hashes to {own_sha[:12]}...)",
            prev_id,
        )
    idx = order.index(name)
    expected = order[idx - 1] if idx else ""
    if not expected and prev_id:
        return "broken", f"it links to {prev_id}, but {CHAIN_FILE} lists it first", prev_id
    if expected and not prev_id:
        return (
            "broken",
            f"a forged first run: its manifest says no run came before it, but {CHAIN_FILE} "
            f"lists {expected} before it",
            expected,
        )
    if expected and prev_id != expected:
        return (
            "broken",
            f"it links to {prev_id}, but {CHAIN_FILE} lists {expected} before it",
            prev_id,
        )
    if expected and prev_sha not in shas[expected]:
        return (
            "broken",
            f"the hash it recorded for {expected} is not the one {CHAIN_FILE} holds",
            expected,
        )
    for rid in order[:idx]:
        if not is_run_id(rid):
            return "broken", f"{CHAIN_FILE} lists {rid!r}, which is not a run id", prev_id
        folder = root.parent / rid
        if not folder.is_dir():
            return (
                "broken",
                f"run {rid}, listed in {CHAIN_FILE} before {name}, is missing from "
                f"{root.parent} (deleted or moved: archive an outputs folder whole)",
                rid,
            )
        path = folder / MANIFEST
        if not path.is_file() or _sha256(path) != shas[rid][-1]:
            return (
                "broken",
                f"the manifest of run {rid} changed since it was sealed (run `runbook "
                f"verify` on {folder} to see which files)",
                rid,
            )
    if not expected:
        return "genesis", "", ""
    return "ok", f"{idx} earlier run(s) checked against {CHAIN_FILE}", prev_id


def chain_runs(out_dir: str | os.PathLike[str]) -> list[str]:
    """The run ids ``.manifest-chain`` lists in ``out_dir``, oldest first, each once
    (entries that are not run ids are left out: they never name a folder)."""
    read = _read_chain(Path(out_dir))
    if read is None:
        return []
    return [rid for rid in dict.fromkeys(rid for rid, _ in read[0]) if is_run_id(rid)]


def unsealed_runs(out_dir: str | os.PathLike[str]) -> list[str]:
    """Run folders in ``out_dir`` newer than the last sealed run that have no manifest
    (their run was killed with SIGKILL, lost its machine, or is still running)."""
    root = Path(out_dir)
    if not root.is_dir():
        return []
    read = _read_chain(root)
    last = max((rid for rid, _ in read[0]), default="") if read else ""
    return sorted(
        p.name
        for p in root.iterdir()
        if is_run_id(p.name) and p.name > last and p.is_dir() and not (p / MANIFEST).exists()
    )


# What ``evidence.create_run_dir`` names a run folder: UTC timestamp, environment name.
_RUN_ID = re.compile(r"\d{8}T\d{6}Z-[A-Za-z0-9_.-]+")


def is_run_id(value: str) -> bool:
    """True when ``value`` is shaped like a run folder's name (never a path)."""
    return bool(_RUN_ID.fullmatch(value)) and value not in (".", "..")
