"""The demo's plots stay readable when students cluster: every point numbered, no number over
another or over a marker, a legend naming each number."""

from __future__ import annotations

import itertools

import pytest

from asrkd.demo_plots import _overlap, plot_figure


def row(name: str, scenario: str, wer: float, mb: float, latency: float) -> dict:
    preset = "whisper-tiny-enc4"
    full = name if scenario == "teacher" else f"{scenario}-{preset}-{name}"
    return {"name": full, "scenario": scenario, "preset": preset, "wer": wer, "mb": mb,
            "latency_ms": latency}  # fmt: skip


# the real-speech recipe's shape: two teachers far away, six students within a point or two
ROWS = [
    row("teacher-faster-whisper-int8", "teacher", 0.153, 151.0, 469.0),
    row("teacher-pytorch", "teacher", 0.138, 151.0, 748.0),
    row("none", "full", 0.983, 30.6, 92.0),
    row("init", "full", 0.429, 30.6, 69.0),
    row("init-seq", "full", 0.440, 30.6, 66.0),
    row("init", "partial", 0.513, 30.6, 72.0),
    row("init-seq", "partial", 0.427, 30.6, 79.0),
    row("init-int8", "full", 0.430, 12.6, 45.5),
]


@pytest.mark.parametrize("key", ["mb", "latency_ms"])
def test_numbers_never_overlap(key: str) -> None:
    import matplotlib.pyplot as plt

    fig = plot_figure(ROWS, key)
    try:
        ax = fig.axes[0]
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        numbers = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts}
        assert sorted(numbers, key=int) == [str(i) for i in range(1, len(ROWS) + 1)]
        for (a, box_a), (b, box_b) in itertools.combinations(numbers.items(), 2):
            assert not _overlap(box_a.extents, box_b.extents), (key, a, b)
        markers = ax.transData.transform([(r[key], 100 * r["wer"]) for r in ROWS])
        for (name, box), (mx, my) in itertools.product(numbers.items(), markers):
            assert not box.contains(mx, my), (key, name)  # no number on a marker
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend[4] == "5  full · init-seq  (44.0 %)"
        assert legend[0] == "1  teacher-faster-whisper-int8  (15.3 %)"
        assert ax.get_xscale() == "log"
    finally:
        plt.close(fig)
