"""The figures render from plain data, label their axes with units and stay fast."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from runbook_lib import plots

EVENTS = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"]


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    data = buf.getvalue()
    assert data.startswith(b"\x89PNG")
    return data


def _labels(fig: Figure) -> list[str]:
    return [a.get_xlabel() + "|" + a.get_ylabel() for a in fig.axes]


def test_handshakes_show_each_path_and_cause() -> None:
    """Each WS path gets a bar; the cause text of a failure is drawn next to it."""
    rows = [
        {"path": "/websocket", "status": 404, "ok": False, "cause": "route not registered"},
        {"path": "/ws/test", "status": 101, "ok": True, "cause": ""},
        {"path": "/ws/dead", "status": None, "ok": False, "cause": "connection refused"},
    ]
    fig = plots.plot_handshakes(rows)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["/websocket", "/ws/test", "/ws/dead"]
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "route not registered" in texts and "no response" in texts
    assert "(s)" not in ax.get_xlabel() and "status" in ax.get_xlabel()
    _png(fig)


def test_warmup_marks_ready_time_and_threshold() -> None:
    """The first 200 per URL is annotated as ready and the limit is drawn."""
    samples = [
        {"t_s": 0.0, "url": "/health", "status": None, "error": "refused", "latency_s": None},
        {"t_s": 1.0, "url": "/health", "status": 503, "error": None, "latency_s": 0.01},
        {"t_s": 2.0, "url": "/health", "status": 200, "error": None, "latency_s": 0.01},
        {"t_s": 2.5, "url": "/ws/health", "status": 200, "error": None, "latency_s": 0.02},
    ]
    fig = plots.plot_warmup(samples, thresholds={"/health": 30.0, "/ws/health": 60.0})
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "/health ready 2.0 s" in texts and "/ws/health ready 2.5 s" in texts
    assert "limit 30 s" in texts
    assert "(s)" in fig.axes[0].get_xlabel()
    _png(fig)


def test_load_latency_100k_samples_is_fast_and_marks_percentiles() -> None:
    """100,000 round trips render (histogram + CDF, PNG) in a few seconds at most."""
    rtt = np.random.default_rng(1).lognormal(mean=-2.0, sigma=0.6, size=100_000)
    p50, p95, p99 = np.percentile(rtt, [50, 95, 99])
    start = time.perf_counter()
    fig = plots.plot_load_latency(rtt, p50, p95, p99, threshold_s=3.0)
    _png(fig)
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0, elapsed  # generous: shared 2-core machine
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert any(label.startswith("p50") for label in labels)
    assert any(label.startswith("p99") for label in labels)
    assert "limit = 3000 ms" in labels
    assert all("(ms)" in a.get_xlabel() for a in fig.axes)
    # The CDF is downsampled: drawing 100k points would be slow and identical.
    assert len(fig.axes[1].lines[0].get_xdata()) <= 2000


def test_load_latency_zooms_on_data_and_names_a_far_limit() -> None:
    """Loopback round trips of ~1 ms stay readable next to a 3 s limit: the axis zooms."""
    rtt = np.random.default_rng(2).normal(0.001, 0.0002, size=1000).clip(0.0002)
    fig = plots.plot_load_latency(rtt, 0.001, 0.0013, 0.0015, threshold_s=3.0)
    assert fig.axes[0].get_xlim()[1] < 10.0  # ms, not 3000
    assert "limit 3000 ms is off scale" in fig.axes[0].get_title()
    _png(fig)


def test_load_latency_without_samples_says_so() -> None:
    fig = plots.plot_load_latency([], None, None, None)
    assert "no expect step answered" in fig.axes[0].texts[0].get_text()
    _png(fig)


def test_event_timeline_shows_missing_and_foreign_events() -> None:
    """Missing expected events are listed per user; another user's events are red crosses."""
    runs = {
        "user-0": [{"t_s": 0.1 * i, "type": e, "foreign": False} for i, e in enumerate(EVENTS)],
        "user-1": [
            {"t_s": 0.1, "type": "agent_started", "foreign": False},
            {"t_s": 0.2, "type": "agent_thinking", "foreign": True},
        ],
    }
    fig = plots.plot_event_timeline(runs, EVENTS)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert any(t.startswith("missing:") and "agent_completed" in t for t in texts)
    assert len([t for t in texts if t.startswith("missing:")]) == 1  # user-0 got everything
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "another user's event" in legend
    assert "(s)" in ax.get_xlabel()
    _png(fig)


def test_monitor_counts_failures_in_title() -> None:
    samples = [
        {
            "t_s": float(i),
            "http_status": 200 if i != 3 else 503,
            "http_latency_s": 0.05,
            "ws_ok": i != 5,
            "ws_status": 101 if i != 5 else 404,
            "ws_latency_s": 0.1,
        }
        for i in range(10)
    ]
    fig = plots.plot_monitor(samples)
    assert "1 HTTP and 1 WebSocket failures" in fig.axes[0].get_title()
    assert fig.axes[0].get_ylabel() == "latency (s)"
    assert "(s)" in fig.axes[1].get_xlabel()
    _png(fig)


@pytest.mark.parametrize(
    "draw",
    [
        lambda: plots.plot_handshakes([]),
        lambda: plots.plot_warmup([]),
        lambda: plots.plot_event_timeline({}, EVENTS),
        lambda: plots.plot_monitor([]),
    ],
)
def test_empty_data_renders_a_message_not_a_crash(draw) -> None:
    """Missing evidence is shown as missing, never as an empty-looking success."""
    fig = draw()
    _png(fig)
    texts = [t.get_text() for a in fig.axes for t in a.texts]
    assert any(t.startswith("no ") for t in texts), texts


def test_warmup_draws_answers_when_they_arrived() -> None:
    """A slow 200 is drawn when it arrived, the instant health.ready_within judges (2.1 s)."""
    samples = [{"t_s": 0.3, "url": "/health", "status": 200, "error": None, "latency_s": 1.8}]
    fig = plots.plot_warmup(samples, thresholds={"/health": 30.0})
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "/health ready 2.1 s" in texts, texts
    offsets = fig.axes[0].collections[0].get_offsets()
    assert offsets[0][0] == pytest.approx(2.1)


def test_monitor_draws_the_limit_and_no_round_trip_for_failed_handshakes() -> None:
    """The average-response limit is a dashed line; a 404 handshake is not a round trip."""
    samples = [
        {
            "t_s": float(i),
            "http_status": 200,
            "http_latency_s": 0.05,
            "ws_ok": i != 2,
            "ws_status": 101 if i != 2 else 404,
            "ws_latency_s": 0.1,
        }
        for i in range(5)
    ]
    fig = plots.plot_monitor(samples, avg_response_s=0.3)
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "average limit 0.3 s" in legend
    ws_line = next(line for line in ax.lines if line.get_label() == "WebSocket round trip")
    ys = np.asarray(ws_line.get_ydata(), dtype=float)
    assert np.isnan(ys[2]) and not np.isnan(ys[[0, 1, 3, 4]]).any()
    assert ax.get_ylim()[1] >= 0.3
    # A limit far above every sample is named, not drawn: the samples stay readable.
    far = plots.plot_monitor(samples, avg_response_s=2.0).axes[0]
    assert "average limit 2 s (off scale)" in [t.get_text() for t in far.get_legend().get_texts()]
    assert far.get_ylim()[1] < 1.0


@pytest.mark.parametrize("users", [1, 2, 5])
def test_event_timeline_legend_does_not_cover_the_axis_label(users: int) -> None:
    """The legend sits beside the axes: its box never overlaps the x-axis label."""
    runs = {
        f"user-{u}": [{"t_s": 0.1 * i, "type": e} for i, e in enumerate(EVENTS)]
        for u in range(users)
    }
    runs["user-0"].append({"t_s": 0.3, "type": "agent_thinking", "foreign": True})
    fig = plots.plot_event_timeline(runs, EVENTS)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # layout is computed at draw time
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    legend_box = ax.get_legend().get_window_extent(renderer)
    label_box = ax.xaxis.label.get_window_extent(renderer)
    assert not legend_box.overlaps(label_box)
    shown = {t.get_text() for t in ax.get_legend().get_texts()}
    assert set(EVENTS) <= shown  # no label hidden


def test_figures_are_not_attached_to_pyplot() -> None:
    """Figures built with the OO API never accumulate in pyplot's registry."""
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    plots.plot_monitor([])
    assert len(plt.get_fignums()) == before
    assert _labels(plots.plot_monitor([]))


def test_traffic_share_steps_each_revision_and_marks_the_restore() -> None:
    """The verify-then-shift figure: the new revision climbs to 10 % then drops to 0 on restore."""
    from runbook_lib.traffic_plan import share_rows

    rows = share_rows(
        [
            (0.0, {"old": 100}, "before the deploy"),
            (0.7, {"old": 100}, "deploy: new at 0 %"),
            (0.9, {"new": 10, "old": 90}, "step 10 %: gate failed"),
            (1.6, {"old": 100}, "restore: previous split"),
        ]
    )
    fig = plots.plot_traffic_share(rows, new_revision="new", first_step=10)
    ax = fig.axes[0]
    lines = {
        ln.get_label(): list(ln.get_ydata()) for ln in ax.get_lines() if ln.get_label()[0] != "_"
    }
    assert max(lines["new (new)"]) == 10 and lines["new (new)"][-1] == 0
    assert lines["old"][-1] == 100
    texts = [t.get_text() for t in ax.texts]
    assert "restore: previous split" in texts and "first step 10 %" in texts
    assert "(s)" in ax.get_xlabel() and "(%)" in ax.get_ylabel()
    _png(fig)
    empty = plots.plot_traffic_share([])
    assert any(t.get_text().startswith("no ") for t in empty.axes[0].texts)
