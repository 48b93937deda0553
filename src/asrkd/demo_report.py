"""Evaluation, table, plots and Markdown report of `asrkd demo`."""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from asrkd import __version__
from asrkd.config import LM_ORDERS, DemoConfig, EvalConfig, parse_bigrams, to_dict
from asrkd.distill.pseudo_labels import LEFT_OUT_FILE
from asrkd.files import code_fingerprint

# The targets the demo is judged by (our source: 25 % lower WER at 40 % less memory).
TARGET_WER_REDUCTION = 0.25
TARGET_MEMORY_RATIO = 0.60
TARGET_SMALL_MEMORY_RATIO = 0.25
TARGET_SMALL_WER_GAP = 0.10


def evaluate_runs(
    specs,
    out: Path,
    data: dict[str, Path],
    cfg: DemoConfig,
    delivered: tuple | None = None,
    dev_wer: dict[str, float] | None = None,
) -> list[dict]:
    """Evaluate every run's best-on-dev model on the test speakers, and the delivered int8
    file (a (RunSpec, path) pair from demo.deliver_int8) if any; one row per model. A row's
    dev WER is dev_wer's (demo.dev_wers: decoded as the test set is) where it has one, else the
    training run's best (greedy)."""
    from asrkd.evaluation import measure_costs, write_summary
    from asrkd.scoring import hyps_path

    dev_wer = dev_wer or {}

    tests = [data["test"], *([data["test_noisy"]] if "test_noisy" in data else [])]
    models = [(spec, spec.name, out / "runs" / spec.name / "model.safetensors") for spec in specs]
    teacher_rows = []
    if cfg.external_teacher:  # scored by its own runtimes below, not as an asrkd model file
        teacher_spec = models.pop(0)[0]
        # the noisy set with the first runtime only: the same weights, and the others are slow
        teacher_rows = [
            _row(
                teacher_spec,
                f"teacher-{runtime}",
                evaluate_teacher_runtime(cfg, runtime, tests if i == 0 else tests[:1], out),
            )
            for i, runtime in enumerate(cfg.teacher_runtimes)
        ]
    if delivered is not None:
        spec, path = delivered
        models.append((spec, f"{spec.name}-int8", path))
    score_cfg = scoring_config(cfg)  # the timing below uses cfg.eval's threads
    jobs = [(model, tests, out / "eval" / n, score_cfg, cfg.eval) for _, n, model in models]
    summaries = in_processes(_score, jobs, cfg.parallel_runs)
    rows = list(teacher_rows)
    for (spec, name, model), summary in zip(models, summaries):
        # timed one model at a time on a quiet machine, after all the scoring
        summary.update(measure_costs(model, data["test"], cfg.eval, memory=False))
        run_summary = out / "runs" / spec.name / "summary.json"
        trained = json.loads(run_summary.read_text())
        summary["best_dev_wer"] = trained.get("best_dev_wer")
        summary["train_precision"] = trained.get("precision", "fp32")  # runs before it: fp32
        if "pseudo_labels_checked" in trained:  # sequence KD: what its filter left out
            listed = run_summary.with_name(LEFT_OUT_FILE)  # runs trained before it: none
            summary["teacher_transcripts"] = {
                **{k: trained.get(f"pseudo_labels_{k}", 0)
                   for k in ("checked", "over_max_wer", "unmappable")},
                "listed_in": str(listed) if listed.is_file() else None,
            }  # fmt: skip
        if spec.name in dev_wer:
            summary["dev_wer"] = dev_wer[spec.name]
        write_summary(summary, out / "eval" / name)
        rows.append(_row(spec, name, summary))
        # the clean test set's transcripts, for the paired intervals of the targets' comparisons
        hyps = hyps_path(out / "eval" / name, next(iter(summary["sets"])), summary["decoding"])
        rows[-1]["hyps"] = str(hyps) if hyps.is_file() else None
    add_relative(rows)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    return rows


def evaluate_teacher_runtime(cfg: DemoConfig, runtime: str, tests: list[Path], out: Path) -> dict:
    """An external teacher's summary for one runtime, reused while its inputs are unchanged."""
    from asrkd.distill.teachers import file_sha256
    from asrkd.evaluation import MEMORY_PROBE
    from asrkd.teacher_eval import evaluate_teacher

    eval_dir = out / "eval" / f"teacher-{runtime}"
    stamp = {"teacher": cfg.run.teacher.path, "runtime": runtime,
             "tests": [file_sha256(t) for t in tests], "eval": to_dict(cfg.eval),
             "memory_probe": MEMORY_PROBE, "code": code_fingerprint()}  # fmt: skip
    done = eval_dir / "inputs.json"
    if done.is_file() and json.loads(done.read_text()) == stamp:
        return json.loads((eval_dir / "summary.json").read_text())
    summary = evaluate_teacher(cfg.run.teacher.path, runtime, tests, eval_dir, cfg.eval)
    done.write_text(json.dumps(stamp))
    return summary


def _row(spec, name: str, summary: dict) -> dict:
    """One table row from an evaluation summary (first test set clean, second noisy)."""
    sets = list(summary["sets"].values())
    test = sets[0]
    int8 = summary["format"] == "onnx-int8"
    return {
        "name": name,
        "scenario": spec.scenario,
        "preset": spec.preset,
        "strategy": spec.strategy,
        "variant": f"{spec.variant}-int8" if int8 else spec.variant,
        "format": summary["format"],
        "params": summary["n_params"],
        # the bytes a device holds: fp32 weights, or the whole int8 file
        "mb": (summary["bytes_on_disk"] if int8 else summary["bytes_fp32"]) / 1e6,
        "wer": test["wer"],
        "cer": test["cer"],
        "greedy_wer": test.get("greedy_wer", test["wer"]),
        "noisy_wer": sets[1]["wer"] if len(sets) > 1 else None,
        "oov_rate": test.get("oov_rate"),
        "latency_ms": summary["speed"]["latency_ms"],
        "rtf": summary["speed"]["rtf"],
        # the teacher runtimes time and probe the whole transcription: no decoder split
        "decoder_rtf": summary["speed"].get("decoder_rtf"),
        "memory_mb": summary["memory"]["model_memory_mb"],
        "decoder_mb": summary["memory"].get("decoder_mb"),
        "uses_teacher": spec.uses_teacher,
        "dev_wer": summary.get("dev_wer", summary.get("best_dev_wer")),
        "teacher_transcripts": summary.get("teacher_transcripts"),
        "train_precision": summary.get("train_precision"),  # None: the teacher
        "eval_precision": summary.get("precision"),  # None: ONNX files and teacher runtimes
    }


def teacher_transcript_lines(rows: list[dict]) -> list[str]:
    """What sequence KD left out of each student's teacher transcripts (the run's summary.json:
    pseudo_labels_*), so that the table says how much of the teacher's labelling was used."""
    lines = []
    for r in rows:
        t = r.get("teacher_transcripts")
        if not t or r["variant"].endswith("-int8"):
            continue
        far = (
            f"{t['over_max_wer']} of {t['checked']} checked against the utterance's transcript "
            "were too far from it (distill.max_pseudo_wer)"
            if t["checked"]
            else "none checked against a transcript (distill.max_pseudo_wer off)"
        )
        where = f"; listed in `{t['listed_in']}`" if t.get("listed_in") else ""
        lines.append(
            f"- {r['name']}: {far}; {t['unmappable']} could not be written in the student's "
            f"units{where}"
        )
    if not lines:
        return []
    return ["Sequence KD's teacher transcripts left out:", "", *lines, ""]


def _score(model: Path, tests: list[Path], out_dir: Path, score_cfg, cfg) -> dict:
    """Decode and score one model on the test cuts (score_cfg), and probe its memory (cfg)."""
    from asrkd.evaluation import evaluate, measure_costs

    summary = evaluate(model, tests, out_dir, score_cfg, measure=False)
    summary.update(measure_costs(model, tests[0], cfg, speed=False))
    return summary


def scoring_config(cfg: DemoConfig) -> EvalConfig:
    """cfg.eval for decoding in parallel processes: one thread each when parallel_runs > 1."""
    return replace(cfg.eval, threads=1) if cfg.parallel_runs > 1 else cfg.eval


def in_processes(fn, jobs: list[tuple], n_workers: int) -> list:
    """[fn(*job) for job in jobs], n_workers fresh one-thread processes at a time (in this
    process when n_workers is 1). The jobs score models, so the workers start with the kernel
    caches capped as `asrkd evaluate` does (asrkd.precision.INFERENCE_ENV)."""
    if n_workers <= 1:
        return [fn(*job) for job in jobs]
    from asrkd.precision import INFERENCE_ENV
    from asrkd.processes import spawn_pool

    with spawn_pool(n_workers, env=INFERENCE_ENV) as pool:
        return list(pool.map(fn, *zip(*jobs)))


def add_relative(rows: list[dict]) -> None:
    """WER change against the same student without KD, memory against the teacher."""
    teacher = reference_teacher(rows)
    for row in rows:
        base = next(
            (
                r
                for r in rows
                if r["scenario"] == row["scenario"]
                and r["preset"] == row["preset"]
                and r["variant"] == "none"
            ),
            None,
        )
        own = base is not None and row["scenario"] != "teacher"
        for key in ("wer", "cer"):
            row[f"{key}_change"] = (row[key] - base[key]) / base[key] if own and base[key] else None
        row["wer_base"] = base["wer"] if own else None
        row["size_vs_teacher"] = row["mb"] / teacher["mb"]
        row["params_vs_teacher"] = row["params"] / teacher["params"]
        row["memory_vs_teacher"] = (
            row["memory_mb"] / teacher["memory_mb"] if teacher["memory_mb"] > 0 else None
        )
        row["speed_vs_teacher"] = teacher["rtf"] / row["rtf"] if row["rtf"] > 0 else None


def reference_teacher(rows: list[dict]) -> dict:
    """The teacher row others are compared with: the fastest way the teacher was run (for an
    external Whisper teacher, faster-whisper int8 where measured)."""
    return min((r for r in rows if r["scenario"] == "teacher"), key=lambda r: r["rtf"])


def _pct(x: float | None, signed: bool = False, digits: int = 0) -> str:
    if x is None:
        return "–"
    return f"{x:+.1%}" if signed else f"{x:.{digits}%}"


def table_lines(rows: list[dict]) -> list[str]:
    noisy = any(r.get("noisy_wer") is not None for r in rows)
    head = (
        "| model | params | MB | WER | CER | greedy WER |"
        + (" WER noisy |" if noisy else "")
        + " peak MB | latency ms | RTF | WER vs baseline | CER vs baseline | size vs teacher "
        "| speed vs teacher |"
    )
    lines = [head, "|" + "---|" * (13 + noisy)]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['params'] / 1e6:.2f} M | {r['mb']:.1f} | {r['wer']:.1%} "
            f"| {r['cer']:.1%} | {r['greedy_wer']:.1%} |"
            + (f" {_pct(r.get('noisy_wer'), digits=1)} |" if noisy else "")
            + f" {r['memory_mb']:.0f} | {r['latency_ms']:.1f} | {r['rtf']:.4f} "
            f"| {_pct(r['wer_change'], True)} | {_pct(r['cer_change'], True)} "
            f"| {_pct(r['size_vs_teacher'])} | {_times(r.get('speed_vs_teacher'))} |"
        )
    return lines


def _times(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}x"


def print_table(rows: list[dict]) -> None:
    print()
    for line in table_lines(rows):
        print(line)


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


def _rel(x: float, ref: float) -> float | None:
    return (x - ref) / ref if ref else None


# The targets of the real-speech recipe with a pretrained (Whisper) teacher, against the teacher
# run the fastest way (faster-whisper int8), all measured in the same run.
WHISPER_MAX_WER_RATIO = 2.5
WHISPER_MAX_PARAMS_RATIO = 0.25
WHISPER_MIN_SPEEDUP = 5.0
WHISPER_MIN_VS_BASELINE = 0.25
WHISPER_MIN_KD_VS_INIT = 0.15
WHISPER_BEYOND = (1.5, 10.0)  # WER ratio, speed-up


def external_target_lines(rows: list[dict]) -> list[str]:
    """The recipe's targets; the best student of a situation is the one with the best dev WER
    (never chosen on test), distilled rows only (strategy other than none)."""
    teacher = reference_teacher(rows)
    lines = []
    for scenario, label in (("full", "(a) all transcripts"), ("partial", "(b) partial")):
        students = [r for r in rows if r["scenario"] == scenario and r["format"] == "safetensors"]
        distilled = [r for r in students if r["strategy"] != "none"]
        if not distilled:
            continue
        best = min(distilled, key=lambda r: r["dev_wer"])
        wer_ratio, ok = _first_target(best, teacher)
        lines.append(
            f"- {label}: best distilled student (by dev WER, decoded as test is) "
            f"{best['name']}: WER "
            f"{best['wer']:.1%} = {wer_ratio:.2f}x the teacher's {teacher['wer']:.1%} (target ≤ "
            f"{WHISPER_MAX_WER_RATIO}x), {_pct(best['params_vs_teacher'], digits=1)} of its parameters "
            f"(≤ {WHISPER_MAX_PARAMS_RATIO:.0%}), {_times(best['speed_vs_teacher'])} its speed "
            f"(≥ {WHISPER_MIN_SPEEDUP:g}x, vs {teacher['name']}): "
            f"**{'reached' if ok else 'not reached'}**"
        )
        lines += _delivered_target_lines(rows, best, teacher)
        change, which = best["wer_change"], "the same student without distillation"
        # its situation's baseline (add_relative's), else (a)'s, which saw every transcript
        bases = {r["scenario"]: r for r in rows if r["variant"] == "none"
                 and r["preset"] == best["preset"] and r["format"] == "safetensors"}  # fmt: skip
        base = bases.get(scenario, bases.get("full"))
        if change is None and base is not None and base["wer"]:
            change = (best["wer"] - base["wer"]) / base["wer"]
            which = f"{base['name']} (trained on every transcript: a harder reference)"
        ok = change is not None and -change >= WHISPER_MIN_VS_BASELINE
        lines.append(
            f"  - vs {which}: {_pct(change, True)} WER "
            f"(target ≤ -{WHISPER_MIN_VS_BASELINE:.0%}{interval_text(base, best)}): "
            f"**{'reached' if ok else 'not reached'}**"
        )
        init = [r for r in students if r["strategy"] == "none" and r["uses_teacher"]]
        if init:
            ref = init[0]["wer"]
            gain = (ref - best["wer"]) / ref if ref else 0.0
            ok = gain >= WHISPER_MIN_KD_VS_INIT
            lines.append(
                f"  - the KD terms vs the initialisation alone ({init[0]['name']}, {ref:.1%}): "
                f"{-gain:+.1%} WER (target ≤ -{WHISPER_MIN_KD_VS_INIT:.0%}"
                f"{interval_text(init[0], best)}): **{'reached' if ok else 'not reached'}**"
            )
        beyond = (
            wer_ratio <= WHISPER_BEYOND[0] and (best["speed_vs_teacher"] or 0) >= WHISPER_BEYOND[1]
        )
        lines.append(
            f"  - beyond: WER ≤ {WHISPER_BEYOND[0]}x the teacher's at ≥ {WHISPER_BEYOND[1]:g}x "
            f"its speed: **{'reached' if beyond else 'not reached'}**"
        )
    return lines


def _first_target(row: dict, teacher: dict) -> tuple[float, bool]:
    """(WER / the teacher's, whether the first target is met: that ratio, the parameters and
    the speed against the teacher) of a student row."""
    ratio = row["wer"] / teacher["wer"] if teacher["wer"] else float("inf")
    ok = (
        ratio <= WHISPER_MAX_WER_RATIO
        and row["params_vs_teacher"] <= WHISPER_MAX_PARAMS_RATIO
        and (row["speed_vs_teacher"] or 0) >= WHISPER_MIN_SPEEDUP
    )
    return ratio, ok


def _delivered_target_lines(rows: list[dict], best: dict, teacher: dict) -> list[str]:
    """The first target for the files exported from `best` and scored as delivered (the int8
    ONNX row, deliver_int8): the same student, so the same target, never chosen on test. Its
    row names the student as _row writes it: best's scenario, preset and variant + "-int8"."""
    source = (best["scenario"], best["preset"], f"{best['variant']}-int8")
    lines = []
    for row in rows:
        if (
            row["format"] == "safetensors"
            or (row["scenario"], row["preset"], row["variant"]) != source
        ):
            continue
        ratio, ok = _first_target(row, teacher)
        lines.append(
            f"  - as delivered ({row['name']}, {row['format']}): WER {row['wer']:.1%} = "
            f"{ratio:.2f}x the teacher's, {_times(row['speed_vs_teacher'])} its speed: "
            f"**{'reached' if ok else 'not reached'}**"
        )
    return lines


def interval_text(a: dict | None, b: dict | None) -> str:
    """How sure the WER difference of row b against row a is over the test utterances (a
    paired bootstrap, asrkd.scoring.paired_bootstrap), for a target's line; "" where a row has
    no transcripts file (rows measured before it was kept)."""
    from asrkd.scoring import paired_bootstrap, read_results

    if not (a and b and a.get("hyps") and b.get("hyps")):
        return ""
    if not (Path(a["hyps"]).is_file() and Path(b["hyps"]).is_file()):
        return ""
    r = paired_bootstrap(read_results(a["hyps"]), read_results(b["hyps"]))
    lo, hi = (100 * x for x in r["ci95"])
    return (
        f"; difference {100 * r['difference']:+.1f} WER points, 95 % interval over the test "
        f"utterances [{lo:+.1f}, {hi:+.1f}]"
    )


def target_lines(rows: list[dict]) -> list[str]:
    """Whether the demo met its targets, with the numbers either way."""
    lines = []
    teacher = next(r for r in rows if r["scenario"] == "teacher")
    for scenario, label in (("full", "(a) all transcripts"), ("partial", "(b) partial")):
        distilled = [
            r
            for r in rows
            if r["scenario"] == scenario
            and r["variant"] != "none"
            and r.get("format", "safetensors") == "safetensors"  # the effect of KD alone
            and r["wer_change"] is not None
            and r["size_vs_teacher"] <= TARGET_MEMORY_RATIO
        ]
        if not distilled:
            lines.append(
                f"- {label}: distilled student ≥ {TARGET_WER_REDUCTION:.0%} lower WER at ≤ "
                f"{TARGET_MEMORY_RATIO:.0%} of the teacher's memory: **not measured** — no "
                f"distilled student that small (student_preset is too large)."
            )
            continue
        best = min(distilled, key=lambda r: r["dev_wer"])  # chosen on dev, never on test
        base = next((r for r in rows if r["scenario"] == scenario and r["variant"] == "none"
                     and r["preset"] == best["preset"]), None)  # fmt: skip
        ok = -best["wer_change"] >= TARGET_WER_REDUCTION
        memory = best["memory_vs_teacher"]
        lines.append(
            f"- {label}: distilled student ≥ {TARGET_WER_REDUCTION:.0%} lower WER than the same "
            f"student without KD at ≤ {TARGET_MEMORY_RATIO:.0%} of the teacher's memory "
            f"(weights): **{'reached' if ok else 'not reached'}** — best on dev is "
            f"{best['name']} at "
            f"{_pct(best['wer_change'], True)} WER ({best['wer']:.1%} vs {best['wer_base']:.1%}"
            f"{interval_text(base, best)}), {best['mb']:.1f} MB of weights = {_pct(best['size_vs_teacher'])} of the "
            f"teacher's {teacher['mb']:.1f} MB"
            + (
                "."
                if memory is None
                else f". Measured peak decoding memory is {best['memory_mb']:.1f} MB vs "
                f"{teacher['memory_mb']:.1f} MB ({_pct(memory)}): at these sizes the runtime's "
                "own buffers and the decoder's tables, not the weights, set the process's "
                "memory."
            )
        )
    small = [
        r
        for r in rows
        if r["size_vs_teacher"] <= TARGET_SMALL_MEMORY_RATIO
        and (r["scenario"] == "full" or r.get("format", "safetensors") != "safetensors")
    ]
    if not small:
        lines.append(
            f"- A student at ≤ {TARGET_SMALL_MEMORY_RATIO:.0%} of the teacher's memory within "
            f"{TARGET_SMALL_WER_GAP:.0%} relative WER of the teacher: **not measured** — no "
            "student that small (set small_student_preset, or deliver_int8)."
        )
    else:
        lines.extend(_small_student_line(r, teacher) for r in small)
    return lines


def _small_student_line(row: dict, teacher: dict) -> str:
    gap = _rel(row["wer"], teacher["wer"]) or 0.0
    ok = gap <= TARGET_SMALL_WER_GAP
    how = (
        f"the int8 ONNX file of a distilled student with {_pct(row['params_vs_teacher'])} of the "
        f"teacher's parameters, {row['mb']:.2f} MB vs the teacher's {teacher['mb']:.1f} MB of "
        "fp32 weights (int8 would shrink the teacher ~2.7x too; like for like the student is "
        f"{_pct(row['params_vs_teacher'])} of it)"
        if row.get("format", "safetensors") != "safetensors"
        else f"{row['mb']:.1f} MB of fp32 weights vs the teacher's {teacher['mb']:.1f} MB"
    )
    return (
        f"- A student at ≤ {TARGET_SMALL_MEMORY_RATIO:.0%} of the teacher's memory within "
        f"{TARGET_SMALL_WER_GAP:.0%} relative WER of the teacher: "
        f"**{'reached' if ok else 'not reached'}** by {row['name']} "
        f"({_pct(row['size_vs_teacher'])}: {how}) — {row['wer']:.1%} WER vs the teacher's "
        f"{teacher['wer']:.1%} ({_pct(gap, True)}); CER {row['cer']:.1%} vs "
        f"{teacher['cer']:.1%} ({_pct(_rel(row['cer'], teacher['cer']), True)})."
    )


def decoding_text(cfg: DemoConfig, rows: list[dict]) -> str:
    if cfg.eval.decoder == "greedy":
        return "greedy CTC best path (no lexicon, no language model)"
    oov = next((r["oov_rate"] for r in rows if r.get("oov_rate") is not None), None)
    words = "the words of the student's own training transcripts"
    if cfg.eval.vocabulary != "train":
        words = f"the vocabulary `{cfg.eval.vocabulary}` (asrkd.lexicon.vocabulary_lm)"
    prune = f", tokens above log-prob {cfg.eval.token_prune:g}"
    if cfg.eval.blank_penalty:
        prune += f", blank's log-prob lowered by {cfg.eval.blank_penalty:g}"
    if cfg.eval.arpa:
        order = LM_ORDERS[cfg.eval.lm_order]
        return (
            f"a lexicon beam search (beam {cfg.eval.beam}{prune}) over the words of the ARPA LM "
            f"`{cfg.eval.arpa}` with its {order} (weight {cfg.eval.lm_weight:g}, word bonus "
            f"{cfg.eval.word_bonus:g}; the same decoder for every model)"
        )
    sources = {
        "train": "the student's own transcripts",
        "books": "English books (Google Books, symspellpy)",
        "sphinx": "CMU Sphinx's US English LM (pocketsphinx)",
    }
    chain = " over ".join(sources[s] for s in parse_bigrams(cfg.eval.bigrams))
    pairs = f"word pairs of {chain}, backing off to the unigram"
    lm = {
        1: "unigram LM",
        2: f"bigram LM ({pairs})",
        3: f"trigram LM (CMU Sphinx's US English word triples over a bigram of the {pairs})",
    }[cfg.eval.lm_order]
    return (
        f"a lexicon beam search (beam {cfg.eval.beam}{prune}) over {words} with a {lm} "
        f"(weight {cfg.eval.lm_weight:g}, word bonus {cfg.eval.word_bonus:g}; "
        f"{'' if oov is None else f'{oov:.1%} of test words are outside it; '}"
        "the same decoder for every model)"
    )


def feature_timing(test: Path, cfg: DemoConfig) -> dict:
    """RTF of computing the students' features from audio without PyTorch (what a device does
    before the network: asrkd.data.audio.features_np) on the first eval.latency_utterances
    test cuts by id."""
    from asrkd.data.audio import features_np
    from asrkd.data.dataset import load_cuts

    cuts = sorted(load_cuts(test), key=lambda c: c.id)[: cfg.eval.latency_utterances]
    audio = [c.load_audio().mean(axis=0) for c in cuts]
    features_np(audio[0], cfg.prepare.features)  # warm-up
    t0 = time.perf_counter()
    for samples in audio:
        features_np(samples, cfg.prepare.features)
    seconds = time.perf_counter() - t0
    return {"kind": cfg.prepare.features.kind, "rtf": seconds / sum(c.duration for c in cuts)}


def rows_text(cfg: DemoConfig, rows: list[dict]) -> str:
    """What the rows of a recipe with an external (Whisper) teacher are, and how they were
    measured."""
    teacher = ", ".join(f"`{r}`" for r in cfg.teacher_runtimes)
    noisy = (
        f"WER noisy: the same test utterances with {'/'.join(cfg.noise_types)} noise at "
        f"{cfg.noise_snr_db:g} dB SNR (seed {cfg.noise_seed}; for the teacher with its first runtime "
        "only). "
        if cfg.noise_snr_db > 0
        else ""
    )
    return (
        f"Rows: the teacher `{cfg.run.teacher.path}` run by {teacher} (greedy, batch 1; its WER "
        "is that of its own decoder, text normalised like its pseudo-labels); then the same "
        f"student in situation (a) `full` (every transcript of the train speakers) and (b) "
        f"`partial` (transcripts for {cfg.partial_fraction:.0%} of them, the rest as audio only "
        "the teacher labels; its baseline sees only the transcribed part). Distilled students "
        "(sequence or hidden KD) also hear the untranscribed folder"
        f"{f' `{cfg.unlabelled_audio}`' if cfg.unlabelled_audio else ''}. Variants: `none` = "
        "no distillation, random init (the baseline); `init` = the teacher's front end and "
        "evenly spaced encoder blocks copied in (blocks above the teacher's depth start as the "
        "identity), CTC only; `seq` = + sequence KD on the "
        "teacher's transcripts (filtered by distill.max_pseudo_wer where a transcript exists); "
        "`hidden` = + hidden-state KD from its encoder; every student of a situation has the "
        f"same number of steps{precision_text(rows)}. Student WER/CER decoded by "
        f"{decoding_text(cfg, rows)}; greedy "
        f"WER = best path without lexicon or LM. {noisy}MB = fp32 weights (int8 row: the whole "
        "int8 ONNX file); peak MB = resident memory added by loading the model and the decoder "
        "its WER is scored with and transcribing utterances one at a time in a fresh process "
        "(the teacher's: loading and transcribing); latency and RTF at batch 1 on "
        f"{cfg.eval.threads or 'all'} threads: a student's is its network on its stored features "
        "(their computation is timed in the next line) and the decoder its WER is scored with "
        f"({search_text(cfg)}), the teacher's the whole transcription"
        f"{eval_precision_text(rows)}; "
        "speed vs teacher = the fastest teacher row's RTF over the row's."
    )


def eval_precision_text(rows: list[dict]) -> str:
    """How the model files' forward pass computed in scoring and timing (eval.precision as
    run), for the rows' explanation: nothing when in float32."""
    bf16 = [r["name"] for r in rows if r.get("eval_precision") == "bf16"]
    if not bf16:
        return ""
    return (
        f"; {', '.join(f'`{n}`' for n in bf16)} scored and timed with the forward pass in "
        "bfloat16 (eval.precision; ONNX files as exported)"
    )


def precision_text(rows: list[dict]) -> str:
    """How the students' training forward pass computed (train.precision as run), for the
    rows' explanation: nothing when every student trained in float32."""
    students = [r for r in rows if r.get("train_precision")]
    used = {r["train_precision"] for r in students}
    if used <= {"fp32"}:
        return ""
    if used == {"bf16"}:
        return ", its forward pass in bfloat16 (train.precision; weights and losses float32)"
    bf16 = ", ".join(f"`{r['name']}`" for r in students if r["train_precision"] == "bf16")
    return f"; the forward pass in bfloat16 (train.precision) for {bf16}, else float32"


def search_text(cfg: DemoConfig) -> str:
    """How the students' text is searched, for the rows' explanation."""
    if cfg.eval.decoder == "greedy":
        return "greedy CTC, no search"
    engine = {"flashlight": "flashlight-text's C++ search", "python": "asrkd's Python search"}
    return f"the lexicon beam search, {engine[cfg.eval.lexicon_engine]}"


def decoder_lines(rows: list[dict], cfg: DemoConfig) -> list[str]:
    """The decoder's part of the student rows' RTF and peak memory (in those columns already)."""
    students = [r for r in rows if r["scenario"] != "teacher"]
    parts = [r["decoder_rtf"] / r["rtf"] for r in students if r.get("decoder_rtf") and r["rtf"] > 0]
    tables = [r["decoder_mb"] for r in students if r.get("decoder_mb") is not None]
    lines = []
    if parts:
        lines.append(
            f"Of a student row's RTF, its decoder takes {min(parts):.0%}-{max(parts):.0%} (the "
            "rest is the network)."
        )
    if tables and max(tables) >= 1:
        lines.append(
            f"Of a student row's peak MB, its decoder's tables (words, LM) take "
            f"{min(tables):.0f}-{max(tables):.0f} MB (resident growth of making them)."
        )
    lines += lm_cache_lines(cfg)
    return [*lines, ""] if lines else []


def _span(values: list[float], fmt: str) -> str:
    """The values' range in format fmt, "low-high", or one value where both print alike."""
    low, high = format(min(values), fmt), format(max(values), fmt)
    return low if low == high else f"{low}-{high}"


def lm_cache_lines(cfg: DemoConfig) -> list[str]:
    """The decoder LMs the rows read from eval.lm_cache (asrkd.lexicon_cache), as its entries
    for cfg's LM fields and this code record them; nothing without a cache."""
    from asrkd.lexicon_cache import LM_FIELDS, LM_SOURCES, cached_entries

    folder = Path(cfg.eval.lm_cache) if cfg.eval.lm_cache else None
    if folder is None or cfg.eval.decoder == "greedy" or not folder.is_dir():
        return []
    wanted = {k: v for k, v in to_dict(cfg.eval).items() if k in LM_FIELDS and k != "arpa"}
    wanted["code"] = code_fingerprint(LM_SOURCES)
    built = [
        (record["build_s"], arpa.stat().st_size / 1e6)
        for record, arpa in cached_entries(folder)
        if all(record["inputs"].get(k) == v for k, v in wanted.items())
    ]
    if not built:
        return []
    seconds = _span([b[0] for b in built], ".1f")
    sizes = _span([b[1] for b in built], ".0f")
    return [
        (
            f"The students' decoder LMs were built once each ({len(built)}: one per set of "
            f"training transcripts; {seconds} s to build, ARPA text {sizes} MB) into "
            f"`{folder}` (eval.lm_cache); every row's scoring, timing and memory probe reads "
            "its LM from there, as the int8 file's decoder reads the LM inside the file, so no "
            "row's peak MB holds the building's."
        )
    ]


def sherpa_lines(sherpa: dict | None, rows: list[dict]) -> list[str]:
    """The delivered student as sherpa-onnx runs it, beside asrkd's greedy score of its int8
    ONNX file (the same weights; sherpa-onnx decodes greedily)."""
    if sherpa is None:
        return []
    int8 = next((r for r in rows if r["name"] == f"{sherpa['name']}-int8"), None)
    same = f" (asrkd's greedy WER of its int8 ONNX file: {int8['greedy_wer']:.1%})" if int8 else ""
    return [
        "## Delivered through sherpa-onnx",
        "",
        (
            f"`{sherpa['dir']}` (`asrkd export --target sherpa-onnx --quantize`, {sherpa['mb']:.1f} "
            f"MB), decoded by sherpa-onnx itself (greedy, 1 thread): test WER {sherpa['wer']:.1%}, "
            f"CER {sherpa['cer']:.1%}{same}; RTF {sherpa['rtf']:.4f} including its own features."
        ),
        "",
    ]


def write_report(
    rows,
    out: Path,
    cfg: DemoConfig,
    timings: dict,
    librispeech,
    sherpa: dict | None = None,
    features: dict | None = None,
) -> Path:
    plots = plot(rows, out)
    data = (
        f"LibriSpeech folder {librispeech}"
        if librispeech
        else (
            f"the embedded synthetic corpus ({cfg.corpus.hours} h, seed {cfg.corpus.seed}; "
            "test voices unseen in training)"
        )
    )
    lines = [
        "# asrkd demo report",
        "",
        (
            f"Data: {data}. Machine: {os.cpu_count()} CPU cores, {platform.machine()}, "
            f"date {datetime.date.today().isoformat()}, asrkd {__version__} (code "
            f"{code_fingerprint()}). Total wall time "
            f"{timings['total'] / 60:.1f} min (stages reused from an earlier run count ~0 s)."
        ),
        "",
        rows_text(cfg, rows)
        if cfg.external_teacher
        else (
            "Rows: the teacher; the student in situation (a) `full` (every transcript) and (b) "
            f"`partial` (transcripts for {cfg.partial_fraction:.0%} of the train speakers, the rest "
            "as untranscribed audio; its baseline sees only the transcribed part). Strategy `none` "
            "is the student trained without distillation; every student of a situation has the same "
            f"number of steps. WER/CER on test voices, decoded by {decoding_text(cfg, rows)}; "
            "greedy WER = best-path decoding without lexicon or LM; MB = fp32 weights, or for "
            "the `-int8` row the whole int8 ONNX file `asrkd export` wrote for the distilled "
            "student with the best dev WER (decoded as the test set is; lexicon included; run "
            "by onnxruntime); size = MB relative to the teacher; memory = peak resident memory "
            "added by loading the model and its decoder and transcribing utterances one at a "
            "time in a fresh process (activations, buffers and the decoder's tables dominate it "
            "at these sizes); latency at batch size 1, network and decoder."
        ),
        "",
        *table_lines(rows),
        "",
        *(
            [
                (
                    f"Features ({features['kind']}, numpy, from audio, one thread) cost RTF "
                    f"{features['rtf']:.4f} more for every student row."
                ),
                "",
            ]
            if features
            else []
        ),
        *decoder_lines(rows, cfg),
        *teacher_transcript_lines(rows),
        "## Targets",
        "",
        *(external_target_lines(rows) if cfg.external_teacher else target_lines(rows)),
        "",
        *sherpa_lines(sherpa, rows),
        *[f"![{p.stem}]({p.name})" for p in plots],
        "",
        "## Stage times (s)",
        "",
        *[f"- {k}: {v:.0f}" for k, v in timings.items()],
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
