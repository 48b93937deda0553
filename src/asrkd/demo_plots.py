"""The plots of `asrkd demo`'s report: each measure against WER, one point per row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOT_AXES = (
    (
        "mb",
        "size (MB: fp32 weights; the delivered -int8 row: its file; log scale)",
        "wer_vs_size.png",
    ),
    ("latency_ms", "latency per utterance (ms, batch 1, log scale)", "wer_vs_latency.png"),
)


def plot(rows: list[dict], out: Path) -> list[Path]:
    """WER against size and against latency, one PNG each (plot_figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, _, fname in PLOT_AXES:
        fig = plot_figure(rows, key)
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        paths.append(out / fname)
    return paths


def _short_name(row: dict, one_preset: bool) -> str:
    """A row's name, `full · init-seq` when every student row has the same preset (its name
    repeats it), else `full · whisper-tiny-enc4-init-seq`."""
    if row["scenario"] == "teacher":
        return row["name"]
    rest = row["name"].removeprefix(f"{row['scenario']}-")
    if one_preset:
        rest = rest.replace(f"{row['preset']}-", "", 1)
    return f"{row['scenario']} · {rest}"


def plot_figure(rows: list[dict], key: str) -> Any:
    """One scatter of test WER against `key` (mb or latency_ms, log scale: students and
    teachers differ ten-fold): each point numbered, the numbers placed where they overlap no
    other number (students of one size and speed cluster), and a legend of number, name and
    WER beside the axes. Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    label = {k: lab for k, lab, _ in PLOT_AXES}[key]
    markers = {"teacher": "*", "full": "o", "partial": "s"}
    fig, ax = plt.subplots(figsize=(10, 4.8))
    one_preset = len({r["preset"] for r in rows if r["scenario"] != "teacher"}) == 1
    points = []
    for i, r in enumerate(rows, 1):
        x = r[key]
        ax.scatter(
            x, 100 * r["wer"], marker=markers[r["scenario"]], s=50, alpha=0.85,
            color=f"C{(i - 1) % 10}",
            label=f"{i}  {_short_name(r, one_preset)}  ({100 * r['wer']:.1f} %)",
        )  # fmt: skip
        points.append((x, 100 * r["wer"]))
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    xs = [x for x, _ in points]
    ax.set_xlim(min(xs) / 1.5, max(xs) * 1.5)
    ax.set_xlabel(label)
    ax.set_ylabel("test WER (%)")
    ax.set_title("WER on the test set (o: all transcripts, s: partial transcripts, *: teacher)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    fig.tight_layout()
    _number_points(fig, ax, points)
    return fig


def _number_points(fig, ax, points: list[tuple[float, float]]) -> None:
    """Write 1..n beside the points, each at the first of a ring of offsets where its box
    overlaps no number placed before and no marker (where every offset overlaps something, the
    one that overlaps fewest); a thin line leads back to a moved one."""
    fig.canvas.draw()
    to_pixels = ax.transData.transform
    markers = [to_pixels(p) for p in points]
    offsets = [(6, 4), (6, -12), (-16, 4), (-16, -12)]
    offsets += [(dx, dy) for r in (16, 26, 36, 48, 60) for dx, dy in
                ((8, r), (8, -r - 8), (-r - 8, 4), (r, 4), (-20, r), (-20, -r - 8))]  # fmt: skip
    scale = fig.dpi / 72  # offsets in points, boxes in pixels
    marker_boxes = [
        (mx - 5 * scale, my - 5 * scale, mx + 5 * scale, my + 5 * scale) for mx, my in markers
    ]
    placed: list[tuple[float, float, float, float]] = []
    order = sorted(range(len(points)), key=lambda i: -markers[i][1])
    for i in order:
        text = str(i + 1)
        w, h = (6 * len(text) + 2) * scale, 10 * scale
        px, py = markers[i]
        best = None
        for dx, dy in offsets:
            box = (px + dx * scale, py + dy * scale, px + dx * scale + w, py + dy * scale + h)
            hits = sum(_overlap(box, other) for other in (*placed, *marker_boxes))
            if best is None or hits < best[0]:
                best = (hits, dx, dy, box)
            if hits == 0:
                break
        _, dx, dy, box = best
        placed.append(box)
        far = abs(dx) > 16 or abs(dy) > 12
        ax.annotate(
            text, points[i], xytext=(dx, dy), textcoords="offset points", fontsize=8,
            arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.4"} if far else None,
        )  # fmt: skip


def _overlap(a: tuple, b: tuple) -> bool:
    """Whether two (x0, y0, x1, y1) boxes intersect."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
