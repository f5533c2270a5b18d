"""Figures for the run folder: handshakes, warm-up, load latency, event delivery, monitoring.

Every function takes plain data (what the step functions measured), draws with
matplotlib's object-oriented API on a ``Figure`` that is never attached to
pyplot (so nothing leaks between notebook cells and no GUI backend is needed),
and returns that ``Figure``. Axes carry units; failures are drawn in red so a
PNG read on its own still tells the story.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = [
    "plot_event_timeline",
    "plot_handshakes",
    "plot_load_latency",
    "plot_load_tasks",
    "plot_monitor",
    "plot_traffic_share",
    "plot_warmup",
]

OK_COLOR = "#2e7d32"
FAIL_COLOR = "#c62828"
WARN_COLOR = "#ef6c00"
NEUTRAL_COLOR = "#1565c0"
# Largest number of points drawn for a CDF: beyond this the curve looks the same
# and 100,000 raw points would only slow rendering down.
_CDF_POINTS = 2000


def _new_figure(ax: Axes | None, width: float, height: float) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _status_value(status: Any) -> float:
    """HTTP status as a number; no response is drawn at 0."""
    try:
        return float(status) if status is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


def plot_handshakes(rows: Sequence[Mapping[str, Any]], *, ax: Axes | None = None) -> Figure:
    """One bar per WebSocket path: the handshake's HTTP status, green when upgraded.

    Args:
        rows: ``{"path", "status" (int | None), "ok" (bool), "cause" (str)}`` per path.
        ax: draw into this axes instead of a new figure.
    """
    fig, ax = _new_figure(ax, 8.0, 1.2 + 0.55 * max(len(rows), 1))
    if not rows:
        ax.text(
            0.5,
            0.5,
            "no WebSocket path probed",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color=FAIL_COLOR,
        )
        ax.set_axis_off()
        return fig
    paths = [str(r.get("path", "?")) for r in rows]
    values = [_status_value(r.get("status")) for r in rows]
    colors = [OK_COLOR if r.get("ok") else FAIL_COLOR for r in rows]
    y = np.arange(len(rows))
    ax.barh(y, values, color=colors, height=0.6)
    ax.set_yticks(y, paths)
    ax.invert_yaxis()
    top = max([*values, 101.0])
    ax.set_xlim(0, top * 2.4)
    for i, r in enumerate(rows):
        status = r.get("status")
        label = f"{status}" if status is not None else "no response"
        cause = _short_cause(str(r.get("cause") or ("upgraded" if r.get("ok") else "")))
        ax.text(values[i] + top * 0.02, i, f"{label}  {cause}", va="center", fontsize=8)
    ax.axvline(101, color=OK_COLOR, linestyle=":", linewidth=1)
    ax.set_xlabel("handshake HTTP status code (101 = upgraded; 0 = no response)")
    ax.set_ylabel("WebSocket path")
    ax.set_title("WebSocket handshake per path")
    return fig


def _arrival(sample: Mapping[str, Any]) -> float:
    """When a poll's answer arrived: its start plus its latency (seconds since polling began)."""
    return float(sample.get("t_s") or 0.0) + float(sample.get("latency_s") or 0.0)


def _short_cause(cause: str, limit: int = 64) -> str:
    """The head of a cause sentence, short enough to sit beside a bar (the table has it all)."""
    if cause.startswith("HTTP ") and ": " in cause:
        cause = cause.split(": ", 1)[1]  # "HTTP 200 instead of 101: <why>": the bar shows 200
    for sep in (" (", ": ", "; ", ", "):
        cause = cause.split(sep)[0]
    return cause if len(cause) <= limit else cause[: limit - 1] + "…"


def plot_warmup(
    samples: Sequence[Mapping[str, Any]],
    *,
    thresholds: Mapping[str, float] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Status code of every warm-up poll over time, per URL, with ready times and limits.

    Args:
        samples: ``{"t_s", "url", "status" (int | None), "error", "latency_s"}`` per poll.
        thresholds: URL -> seconds allowed until the first 200 (drawn dashed).
        ax: draw into this axes instead of a new figure.

    Each answer is drawn when it *arrived* (poll start + latency), the instant the
    ``*.ready_within`` checks judge, so a slow 200 is drawn where the check saw it.
    """
    fig, ax = _new_figure(ax, 9.0, 4.0)
    urls = list(dict.fromkeys(str(s.get("url", "")) for s in samples))
    markers = ["o", "s", "^", "D", "v"]
    for i, url in enumerate(urls):
        pts = [s for s in samples if str(s.get("url", "")) == url]
        t = [_arrival(s) for s in pts]
        v = [_status_value(s.get("status")) for s in pts]
        c = [OK_COLOR if 200 <= x < 300 else FAIL_COLOR for x in v]
        ax.plot(t, v, color="#9e9e9e", linewidth=0.8, zorder=1)
        ax.scatter(t, v, c=c, marker=markers[i % len(markers)], zorder=2, s=28)
        # Legend entry in a neutral colour: the marker shape tells the URLs apart.
        ax.scatter([], [], color="#616161", marker=markers[i % len(markers)], label=url)
        ready = next((tt for tt, vv in zip(t, v, strict=True) if 200 <= vv < 300), None)
        if ready is not None:
            ax.axvline(ready, color=OK_COLOR, linewidth=1)
            ax.annotate(
                f"{url} ready {ready:.1f} s",
                (ready, 200),
                xytext=(4, 8 + 14 * i),
                textcoords="offset points",
                fontsize=8,
                color=OK_COLOR,
            )
        limit = (thresholds or {}).get(url)
        if limit is not None:
            ax.axvline(limit, color=WARN_COLOR, linestyle="--", linewidth=1)
            ax.annotate(
                f"limit {limit:g} s",
                (limit, 0),
                xytext=(4, 4 + 12 * i),
                textcoords="offset points",
                fontsize=8,
                color=WARN_COLOR,
            )
    limits = [float(x) for x in (thresholds or {}).values()]
    t_all = [_arrival(s) for s in samples]
    ax.set_xlim(-0.5, max([*limits, *t_all, 1.0]) * 1.12)
    if not samples:
        ax.text(
            0.5,
            0.5,
            "no warm-up poll recorded",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color=FAIL_COLOR,
        )
    ax.set_ylim(-20, 620)
    ax.set_xlabel("time since polling began, at each answer (s)")
    ax.set_ylabel("HTTP status code (0 = no response)")
    ax.set_title("Warm-up: status of each poll")
    if urls:
        ax.legend(loc="upper right", fontsize=8)
    return fig


def plot_load_latency(
    rtt_s: Sequence[float] | np.ndarray,
    p50: float | None,
    p95: float | None,
    p99: float | None,
    threshold_s: float | None = None,
) -> Figure:
    """Histogram and CDF of the load flow's reply times (every expect step), with
    p50/p95/p99 (and the limit) marked.

    Args:
        rtt_s: round-trip times in seconds (100,000 samples render in well under a second).
        p50, p95, p99: percentiles as computed by the check (drawn as given).
        threshold_s: the p95 limit, drawn dashed when set.
    """
    data = np.asarray(rtt_s, dtype=float)
    data = data[np.isfinite(data)] * 1000.0  # drawn in ms: loopback round trips are ~1 ms
    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    hist_ax, cdf_ax = fig.subplots(1, 2)
    marks = [("p50", p50, "#455a64"), ("p95", p95, WARN_COLOR), ("p99", p99, FAIL_COLOR)]
    limit_ms = threshold_s * 1000.0 if threshold_s is not None else None
    if data.size == 0:
        for a in (hist_ax, cdf_ax):
            a.text(
                0.5,
                0.5,
                "no expect step answered",
                ha="center",
                va="center",
                transform=a.transAxes,
                color=FAIL_COLOR,
            )
        right = limit_ms or 1.0
    else:
        # Zoom on the data; the limit is drawn only when it is near enough to be readable,
        # otherwise the title says how far below it the whole distribution sits.
        right = float(np.max(data)) * 1.15 or 1.0
        if limit_ms is not None and limit_ms <= right * 3:
            right = max(right, limit_ms * 1.1)
        hist_ax.hist(
            data,
            bins=min(80, max(5, int(np.sqrt(data.size)))),
            range=(0.0, right),
            color=NEUTRAL_COLOR,
        )
        q = np.linspace(0.0, 1.0, min(_CDF_POINTS, data.size))
        cdf_ax.plot(np.quantile(data, q), q * 100.0, color=NEUTRAL_COLOR)
    for name, value, color in marks:
        if value is None:
            continue
        for a in (hist_ax, cdf_ax):
            a.axvline(
                value * 1000.0,
                color=color,
                linewidth=1.2,
                label=f"{name} = {value * 1000.0:.1f} ms",
            )
    off_scale = ""
    if limit_ms is not None:
        if limit_ms <= right:
            for a in (hist_ax, cdf_ax):
                a.axvline(
                    limit_ms,
                    color="black",
                    linestyle="--",
                    linewidth=1,
                    label=f"limit = {limit_ms:g} ms",
                )
        else:
            off_scale = f"; limit {limit_ms:g} ms is off scale"
    for a in (hist_ax, cdf_ax):
        a.set_xlim(0.0, right)
        a.set_xlabel("reply time per expect step (ms)")
    hist_ax.set_ylabel("replies (count)")
    hist_ax.set_title(f"Load test latency ({data.size:,} samples{off_scale})")
    cdf_ax.set_ylabel("share of replies at or below (%)")
    cdf_ax.set_ylim(0, 101)
    cdf_ax.set_title("Cumulative distribution")
    if any(v is not None for _, v, _ in marks) or limit_ms is not None:
        cdf_ax.legend(loc="lower right", fontsize=8)
    return fig


def _cdf_points(hist: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(ms, cumulative %) of a histogram record (``LatencyHistogram.to_dict``)."""
    from .load.histogram import LatencyHistogram

    h = LatencyHistogram.from_dict(hist)
    if not h.count:
        return np.zeros(0), np.zeros(0)
    pct = np.linspace(0.0, 1.0, 201)
    ms = np.array([(h.quantile(float(q)) or 0.0) * 1000.0 for q in pct])
    return ms, pct * 100.0


def plot_load_tasks(
    per_task: Mapping[int, Mapping[str, Any]],
    merged: Mapping[str, Any],
    *,
    threshold_s: float | None = None,
    missing: Sequence[int] = (),
    ax: Axes | None = None,
) -> Figure:
    """Per-task and merged round-trip distributions of a load fanned out as a job.

    Args:
        per_task: task index -> its round-trip histogram record.
        merged: the merged histogram record (its p50/p95/p99 are marked).
        threshold_s: the p95 limit, drawn dashed when set.
        missing: tasks that failed or never reported (named in red in the title).
    """
    from .load.histogram import LatencyHistogram

    fig, a = _new_figure(ax, 10.0, 4.5)
    for i, hist in sorted(per_task.items()):
        ms, pct = _cdf_points(hist)
        if ms.size:
            a.plot(ms, pct, linewidth=0.9, alpha=0.6, label=f"task {i} ({hist['count']:,})")
    ms, pct = _cdf_points(merged)
    h = LatencyHistogram.from_dict(merged)
    if ms.size:
        a.plot(ms, pct, color="black", linewidth=2.0, label=f"merged ({h.count:,})")
        for name, q, color in (
            ("p50", 0.50, "#455a64"),
            ("p95", 0.95, WARN_COLOR),
            ("p99", 0.99, FAIL_COLOR),
        ):
            v = (h.quantile(q) or 0.0) * 1000.0
            a.axvline(v, color=color, linewidth=1.0, label=f"{name} = {v:.1f} ms")
    else:
        a.text(
            0.5,
            0.5,
            "no successful round trip",
            ha="center",
            va="center",
            transform=a.transAxes,
            color=FAIL_COLOR,
        )
    if threshold_s is not None and ms.size and threshold_s * 1000.0 <= float(ms.max()) * 3:
        a.axvline(
            threshold_s * 1000.0,
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"limit = {threshold_s * 1000.0:g} ms",
        )
    title = f"Load job: {len(per_task)} task(s) reported"
    if missing:
        title += f"; MISSING/FAILED: {', '.join(str(i) for i in missing)}"
    a.set_title(title, color=FAIL_COLOR if missing else "black")
    a.set_xlabel(f"round-trip time (ms; histogram, ±{h.relative_error:.0%} relative)")
    a.set_ylabel("share of round trips at or below (%)")
    a.set_ylim(0, 101)
    if a.get_legend_handles_labels()[0]:
        a.legend(loc="lower right", fontsize=7, ncol=2)
    return fig


def plot_event_timeline(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    expected: Sequence[str],
    *,
    ax: Axes | None = None,
) -> Figure:
    """Which event reached which user when; missing events listed, foreign ones in red.

    Args:
        runs: user id -> events ``{"t_s", "type", "foreign" (bool)}`` in arrival order.
        expected: the event types every user should receive.
        ax: draw into this axes instead of a new figure.
    """
    users = list(runs)
    fig, ax = _new_figure(ax, 10.0, 1.6 + 0.6 * max(len(users), 1))
    palette = ["#1565c0", "#6a1b9a", "#00838f", "#2e7d32", "#f9a825", "#5d4037", "#37474f"]
    colors = {etype: palette[i % len(palette)] for i, etype in enumerate(expected)}
    seen_labels: set[str] = set()
    t_max = 0.0
    for y, user in enumerate(users):
        events = list(runs[user])
        ts = [float(e.get("t_s") or 0.0) for e in events]
        if ts:
            t_max = max(t_max, *ts)
            ax.plot(ts, [y] * len(ts), color="#bdbdbd", linewidth=1, zorder=1)
        for e, t in zip(events, ts, strict=True):
            etype = str(e.get("type", "?"))
            if e.get("foreign"):
                label = "another user's event"
                ax.scatter(
                    [t],
                    [y],
                    marker="X",
                    s=120,
                    color=FAIL_COLOR,
                    zorder=3,
                    label=None if label in seen_labels else label,
                )
            else:
                label = etype
                ax.scatter(
                    [t],
                    [y],
                    s=45,
                    color=colors.get(etype, "#9e9e9e"),
                    zorder=2,
                    label=None if label in seen_labels else label,
                )
            seen_labels.add(label)
    for y, user in enumerate(users):
        got = {str(e.get("type")) for e in runs[user] if not e.get("foreign")}
        missing = [etype for etype in expected if etype not in got]
        if missing:
            ax.annotate(
                "missing: " + ", ".join(missing),
                (1.0, y),
                xycoords=("axes fraction", "data"),
                xytext=(6, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
                color=FAIL_COLOR,
            )
    if not users:
        ax.text(
            0.5,
            0.5,
            "no user session recorded",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color=FAIL_COLOR,
        )
    ax.set_yticks(range(len(users)), users)
    ax.set_ylim(-0.7, max(len(users), 1) - 0.3)
    ax.set_xlim(0, max(t_max * 1.05, 0.1))
    ax.invert_yaxis()
    ax.set_xlabel("time since request sent (s)")
    ax.set_ylabel("user")
    ax.set_title("Event delivery per user")
    if seen_labels:
        # Outside the axes on the right: below them it covered the x-axis label.
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="event type")
    return fig


def plot_monitor(
    samples: Sequence[Mapping[str, Any]], *, avg_response_s: float | None = None
) -> Figure:
    """Latency over the monitoring window (HTTP and WebSocket) with failures marked.

    Args:
        samples: ``{"t_s", "http_status", "http_latency_s", "ws_ok", "ws_status",
            "ws_latency_s"}`` per probe round.
        avg_response_s: the ``monitor.avg_response`` limit, drawn dashed when set.

    A failed WebSocket probe has no round trip: its latency is not drawn as one.
    """
    fig = Figure(figsize=(10.0, 5.0), layout="constrained")
    lat_ax, fail_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    t = np.array([float(s.get("t_s") or 0.0) for s in samples])

    def col(key: str) -> np.ndarray:
        return np.array([np.nan if s.get(key) is None else float(s[key]) for s in samples])

    http_lat, ws_lat = col("http_latency_s"), col("ws_latency_s")
    http_fail = np.array(
        [not (200 <= _status_value(s.get("http_status")) < 400) for s in samples], dtype=bool
    )
    ws_fail = np.array([not s.get("ws_ok") for s in samples], dtype=bool)
    if samples:
        ws_lat = np.where(ws_fail, np.nan, ws_lat)
        lat_ax.plot(t, http_lat, marker=".", color=NEUTRAL_COLOR, label="HTTP health")
        lat_ax.plot(t, ws_lat, marker=".", color="#6a1b9a", label="WebSocket round trip")
        for mask, y, label in ((http_fail, 1.0, "HTTP failed"), (ws_fail, 0.0, "WS failed")):
            fail_ax.scatter(
                t[mask],
                np.full(mask.sum(), y),
                marker="x",
                color=FAIL_COLOR,
                label=label if mask.any() else None,
            )
            fail_ax.scatter(t[~mask], np.full((~mask).sum(), y), marker="|", color=OK_COLOR)
        for x in t[http_fail | ws_fail]:
            lat_ax.axvline(x, color=FAIL_COLOR, alpha=0.25, linewidth=2)
        # Latency from zero, with headroom so the legend never hides a point.
        top = float(np.nanmax(np.concatenate([http_lat, ws_lat, [0.001]])))
        if avg_response_s is not None and avg_response_s > 5 * top:
            # Drawing a 2 s line over 10 ms samples would flatten them: name it instead.
            lat_ax.plot([], [], " ", label=f"average limit {avg_response_s:g} s (off scale)")
        elif avg_response_s is not None:
            lat_ax.axhline(
                avg_response_s,
                color=WARN_COLOR,
                linestyle="--",
                linewidth=1,
                label=f"average limit {avg_response_s:g} s",
            )
            top = max(top, avg_response_s)
        lat_ax.set_ylim(0, top * 1.35)
        lat_ax.legend(loc="upper left", fontsize=8, ncol=2)
    else:
        lat_ax.text(
            0.5,
            0.5,
            "no monitoring sample",
            ha="center",
            va="center",
            transform=lat_ax.transAxes,
            color=FAIL_COLOR,
        )
    n = len(samples)
    lat_ax.set_ylabel("latency (s)")
    lat_ax.set_title(
        f"Monitoring: {n} probes, {int(http_fail.sum())} HTTP and "
        f"{int(ws_fail.sum())} WebSocket failures"
    )
    fail_ax.set_yticks([0, 1], ["WebSocket", "HTTP"])
    fail_ax.set_ylim(-0.6, 1.6)
    fail_ax.set_xlabel("time since monitoring started (s)")
    fail_ax.set_ylabel("probe result")
    return fig


def plot_traffic_share(
    rows: Sequence[Mapping[str, Any]],
    *,
    new_revision: str = "",
    first_step: int | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Each revision's share of traffic over a rollout, as steps (``traffic_plan.share_rows``).

    Args:
        rows: ``{"t_s", "revision", "percent", "label"}`` per (sample, revision).
        new_revision: the revision being rolled out (drawn thick, in blue).
        first_step: the first traffic step's percent (drawn dashed, for reference).
        ax: draw into this axes instead of a new figure.
    """
    fig, ax = _new_figure(ax, 9.0, 3.6)
    revisions = list(dict.fromkeys(str(r.get("revision", "")) for r in rows))
    palette = ["#6d4c41", "#546e7a", "#8e24aa", "#00897b", "#f9a825"]
    others = iter(palette * 4)
    times = sorted({float(r.get("t_s", 0.0)) for r in rows})
    end = (max(times) if times else 1.0) * 1.08 + 0.5
    for rev in revisions:
        pts = sorted(
            (float(r.get("t_s", 0.0)), int(r.get("percent", 0)))
            for r in rows
            if r["revision"] == rev
        )
        t = [x for x, _ in pts] + [end]
        v = [y for _, y in pts] + [pts[-1][1] if pts else 0]
        new = rev == new_revision
        ax.step(
            t,
            v,
            where="post",
            linewidth=2.6 if new else 1.6,
            color=NEUTRAL_COLOR if new else next(others),
            label=f"{rev} (new)" if new else rev,
        )
    labels: dict[float, str] = {}
    for r in rows:
        labels.setdefault(float(r.get("t_s", 0.0)), str(r.get("label", "")))
    for i, (t_s, label) in enumerate(sorted(labels.items())):
        ax.axvline(t_s, color="#bdbdbd", linewidth=0.8, zorder=0)
        bad = "restore" in label or "refused" in label or "failed" in label
        ax.annotate(
            label,
            (t_s, 100),
            xytext=(3, -12 - 11 * (i % 3)),
            textcoords="offset points",
            fontsize=8,
            color=FAIL_COLOR if bad else "#424242",
        )
    if first_step is not None:
        ax.axhline(first_step, color=WARN_COLOR, linestyle="--", linewidth=1)
        ax.annotate(
            f"first step {first_step} %",
            (end, first_step),
            xytext=(-80, 3),
            textcoords="offset points",
            fontsize=8,
            color=WARN_COLOR,
        )
    if not rows:
        ax.text(
            0.5,
            0.5,
            "no traffic change recorded",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color=FAIL_COLOR,
        )
    ax.set_xlim(-0.2, end)
    ax.set_ylim(-3, 118)
    ax.set_xlabel("time since the rollout began (s)")
    ax.set_ylabel("share of traffic (%)")
    ax.set_title("Traffic share per revision during the rollout")
    if revisions:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, title="revision")
    return fig
