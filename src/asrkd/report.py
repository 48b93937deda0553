"""Sweep reports: ``report.md`` and PNG plots, rebuilt at any time from ``results.jsonl`` — or
from a folder of run folders (``asrkd train``/``distill`` outputs) without one.

The report holds: the best setting of each strategy (chosen on dev, with its test WER); each
setting's WER change against the no-distillation baseline of the same seed, as mean +- std over
seeds; heatmaps of dev WER over distill.weight x distill.temperature; a Pareto plot of WER
against student size and latency when several model presets were swept; every run in a table.

A *setting* is a row's params without the seed; the baseline of a setting is the
distill.strategy=none setting that agrees with it on every key plain training reads.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from asrkd.config import load_config, to_dict
from asrkd.sweep import RESULTS, ROW_KEYS, read_rows, set_name
from asrkd.sweep_grid import SEED_KEY, STRATEGY_KEY, flat_config, relevant

WEIGHT_KEY, TEMPERATURE_KEY, PRESET_KEY = "distill.weight", "distill.temperature", "model.preset"
Setting = tuple[tuple[str, Any], ...]  # sorted (key, value) pairs, seed excluded


# ---------------------------------------------------------------------------------------------
# Rows and settings.


def load_rows(folder: str | Path) -> list[dict]:
    """Rows of a sweep folder's results.jsonl (or of that file), the last per run name: a run
    retried after a failure replaces its FAIL row. A folder without results.jsonl is read as a
    folder of run folders (rows_from_runs)."""
    path = Path(folder)
    if path.is_dir() and not (path / RESULTS).is_file():
        return rows_from_runs(path)
    path = path if path.is_file() else path / RESULTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `asrkd sweep` into {path.parent} first")
    latest = {row["name"]: row for row in read_rows(path)}
    return list(latest.values())


# Run-folder settings that are bookkeeping, not something the runs compare.
_NOT_SETTINGS = ("train.out_dir", "train.threads", "train.progress", "teacher.path")


def rows_from_runs(folder: Path) -> list[dict]:
    """Rows like a sweep's for a folder of `asrkd train`/`asrkd distill` run folders: params
    are the usual row keys plus every config key whose value differs between the runs; dev WER
    is the run's best (greedy) dev WER from summary.json; test WER, latency and memory come
    from `<run>/eval/summary.json` when `asrkd evaluate` wrote one there."""
    runs = sorted(p.parent for p in folder.glob("*/config.yaml"))
    if not runs:
        raise FileNotFoundError(
            f"{folder}: neither a sweep folder ({RESULTS}) nor a folder of run folders "
            "(*/config.yaml)"
        )
    configs = {run: load_config(run / "config.yaml") for run in runs}
    flats = {run: flat_config(to_dict(cfg)) for run, cfg in configs.items()}
    keys = sorted({k for flat in flats.values() for k in flat} - set(_NOT_SETTINGS))
    varying = [k for k in keys if len({json.dumps(f.get(k)) for f in flats.values()}) > 1]
    return [_run_row(run, configs[run], flats[run], [*ROW_KEYS, *varying], folder) for run in runs]


def _run_row(run: Path, cfg, flat: dict, keys: list[str], folder: Path) -> dict:
    strategy = cfg.distill.strategy
    params = {
        k: _hashable(flat.get(k)) if relevant(k, strategy) else None for k in dict.fromkeys(keys)
    }
    summary_path = run / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    eval_path = run / "eval" / "summary.json"
    evaluated = json.loads(eval_path.read_text()) if eval_path.is_file() else {}
    test_names = [set_name(p) for p in cfg.data.test_cuts]
    test = next((evaluated["sets"][n] for n in test_names if n in evaluated.get("sets", {})), {})
    return {
        "name": run.name,
        "trial": None,
        "state": "COMPLETE" if summary else "INCOMPLETE",
        "params": params,
        "run_dir": str(run.relative_to(folder)),
        "error": None,
        "dev_wer": summary.get("best_dev_wer"),
        "test_wer": test.get("wer"),
        "test_cer": test.get("cer"),
        "n_params": summary.get("n_params"),
        "latency_ms": evaluated.get("speed", {}).get("latency_ms"),
        "model_memory_mb": evaluated.get("memory", {}).get("model_memory_mb"),
        "train_seconds": summary.get("train_seconds"),
    }


def _hashable(value: Any) -> Any:
    """Config values as row params: lists (tuples in configs) become JSON text."""
    return json.dumps(value) if isinstance(value, list | dict) else value


def setting_of(row: dict) -> Setting:
    """A row's params without the seed and without keys its strategy ignores (None)."""
    items = row["params"].items()
    return tuple(sorted((k, v) for k, v in items if k != SEED_KEY and v is not None))


def baseline_of(setting: Setting) -> Setting:
    """The no-distillation setting a setting is compared against: strategy none, the same
    values of every key that plain training reads (preset, lr, init_from_teacher, ...)."""
    kept = [(k, v) for k, v in setting if k != STRATEGY_KEY and relevant(k, "none")]
    return tuple(sorted([*kept, (STRATEGY_KEY, "none")]))


def summarise(rows: list[dict]) -> list[dict]:
    """One entry per setting of the COMPLETE rows: dev/test WER mean and std over seeds, size,
    latency, and the paired change against its baseline (same seed)."""
    groups: dict[Setting, list[dict]] = defaultdict(list)
    for row in rows:
        if row["state"] == "COMPLETE":
            groups[setting_of(row)].append(row)
    out = []
    for setting, runs in groups.items():
        base = {r["params"].get(SEED_KEY): r for r in groups.get(baseline_of(setting), [])}
        paired = [
            (base[r["params"].get(SEED_KEY)], r) for r in runs if r["params"].get(SEED_KEY) in base
        ]
        entry = {"setting": dict(setting), "n": len(runs), "runs": [r["name"] for r in runs]}
        for split in ("dev", "test"):
            values = [r[f"{split}_wer"] for r in runs if r.get(f"{split}_wer") is not None]
            entry[f"{split}_wer"] = _mean_std(values)
            diffs = [
                b[f"{split}_wer"] - r[f"{split}_wer"]
                for b, r in paired
                if b.get(f"{split}_wer") is not None and r.get(f"{split}_wer") is not None
            ]
            rel = [
                (b[f"{split}_wer"] - r[f"{split}_wer"]) / b[f"{split}_wer"]
                for b, r in paired
                if b.get(f"{split}_wer") and r.get(f"{split}_wer") is not None
            ]
            entry[f"{split}_reduction"] = _mean_std(diffs)  # WER points, > 0 = better
            entry[f"{split}_rel_reduction"] = _mean_std(rel)  # fraction of the baseline WER
        for key in ("n_params", "latency_ms", "model_memory_mb"):
            values = [r[key] for r in runs if r.get(key) is not None]
            entry[key] = statistics.fmean(values) if values else None
        out.append(entry)
    return sorted(out, key=lambda e: _sort_value(e["dev_wer"]))


def _mean_std(values: list[float]) -> tuple[float, float | None] | None:
    """(mean, sample std); std is None for a single value."""
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), std


def _sort_value(mean_std: tuple[float, float] | None) -> float:
    return math.inf if mean_std is None else mean_std[0]


def best_settings(entries: list[dict]) -> dict[str, dict]:
    """The setting of lowest mean dev WER, per strategy (entries come sorted by dev WER)."""
    best: dict[str, dict] = {}
    for entry in entries:
        strategy = str(entry["setting"].get(STRATEGY_KEY, "?"))
        if entry["dev_wer"] is not None and strategy not in best:
            best[strategy] = entry
    return best


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg backend: no display needed).


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmaps(entries: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per group of settings that vary weight x temperature (same strategy, same other
    keys): mean dev WER per cell, annotated."""
    groups: dict[Setting, list[dict]] = defaultdict(list)
    for e in entries:
        s = e["setting"]
        if s.get(WEIGHT_KEY) is None or s.get(TEMPERATURE_KEY) is None or e["dev_wer"] is None:
            continue
        rest = tuple(sorted((k, v) for k, v in s.items() if k not in (WEIGHT_KEY, TEMPERATURE_KEY)))
        groups[rest].append(e)
    plt, paths = _pyplot(), []
    for i, (rest, group) in enumerate(groups.items()):
        weights = sorted({e["setting"][WEIGHT_KEY] for e in group})
        temps = sorted({e["setting"][TEMPERATURE_KEY] for e in group})
        cells = [[math.nan] * len(weights) for _ in temps]
        for e in group:
            t, w = (
                temps.index(e["setting"][TEMPERATURE_KEY]),
                weights.index(e["setting"][WEIGHT_KEY]),
            )
            cells[t][w] = 100 * e["dev_wer"][0]
        fig, ax = plt.subplots(figsize=(1.2 * len(weights) + 2.5, 0.8 * len(temps) + 2))
        image = ax.imshow(cells, cmap="viridis_r", aspect="auto", origin="lower")
        for t, row in enumerate(cells):
            for w, value in enumerate(row):
                if not math.isnan(value):
                    ax.text(w, t, f"{value:.1f}", ha="center", va="center", color="w", fontsize=9)
        ax.set_xticks(range(len(weights)), [str(w) for w in weights])
        ax.set_yticks(range(len(temps)), [str(t) for t in temps])
        ax.set_xlabel(WEIGHT_KEY)
        ax.set_ylabel(TEMPERATURE_KEY)
        ax.set_title(_label(dict(rest)) or "dev WER", fontsize=9)
        fig.colorbar(image, ax=ax, label="dev WER (%)")
        fig.tight_layout()
        path = out_dir / f"heatmap-{i}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def pareto_plot(entries: list[dict], path: Path) -> Path | None:
    """Dev WER against parameters and latency per setting, the Pareto front drawn; only when
    several model presets were swept."""
    points = [e for e in entries if e["dev_wer"] is not None and e["n_params"]]
    if len({e["setting"].get(PRESET_KEY) for e in points}) < 2:
        return None
    plt = _pyplot()
    axes_keys = [("n_params", "parameters")]
    if all(e["latency_ms"] for e in points):
        axes_keys.append(("latency_ms", "latency per utterance (ms)"))
    fig, axes = plt.subplots(1, len(axes_keys), figsize=(5.5 * len(axes_keys), 4), squeeze=False)
    strategies = sorted({str(e["setting"].get(STRATEGY_KEY)) for e in points})
    for ax, (key, label) in zip(axes[0], axes_keys):
        for strategy in strategies:
            mine = [e for e in points if str(e["setting"].get(STRATEGY_KEY)) == strategy]
            ax.scatter(
                [e[key] for e in mine],
                [100 * e["dev_wer"][0] for e in mine],
                label=strategy,
                alpha=0.8,
            )
        front = pareto_front([(e[key], e["dev_wer"][0]) for e in points])
        ax.plot(
            [x for x, _ in front],
            [100 * y for _, y in front],
            "k--",
            lw=1,
            label="front",
            drawstyle="steps-post",
        )
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("dev WER (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (cost, error) points no other point beats on both, by increasing cost."""
    front: list[tuple[float, float]] = []
    for cost, error in sorted(points):
        if not front or error < front[-1][1]:
            front.append((cost, error))
    return front


# ---------------------------------------------------------------------------------------------
# Markdown.


def report(folder: str | Path) -> Path:
    """Write report.md and its plots beside results.jsonl; returns the report's path."""
    path = Path(folder)
    out_dir = path.parent if path.is_file() else path
    rows = load_rows(path)
    entries = summarise(rows)
    lines = [f"# Sweep report: {out_dir.resolve().name}", "", *_overview(rows), ""]
    lines += ["## Best settings (chosen on dev WER; test WER only reported)", ""]
    lines += _best_lines(entries) + [""]
    lines += ["## WER reduction relative to no distillation", ""]
    lines += _reduction_lines(entries) + [""]
    maps = heatmaps(entries, out_dir)
    if maps:
        lines += ["## Dev WER over weight x temperature", ""]
        lines += [f"![dev WER heatmap]({p.name})" for p in maps] + [""]
    pareto = pareto_plot(entries, out_dir / "pareto.png")
    if pareto:
        lines += ["## WER against size and latency", "", f"![Pareto plot]({pareto.name})", ""]
    lines += ["## Every run", ""] + _run_lines(rows)
    target = out_dir / "report.md"
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def _overview(rows: list[dict]) -> list[str]:
    states = defaultdict(int)
    for row in rows:
        states[row["state"]] += 1
    seeds = sorted({r["params"].get(SEED_KEY) for r in rows}, key=str)
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
    seed_list = ", ".join(map(str, seeds))
    return [f"{len(rows)} runs ({counts}); seeds {seed_list}. WER in %, mean ± std over seeds."]


def _label(setting: dict) -> str:
    short = {STRATEGY_KEY: "", WEIGHT_KEY: "w=", TEMPERATURE_KEY: "T=", PRESET_KEY: ""}
    keys = sorted((k for k, v in setting.items() if v is not None), key=_key_order)
    parts = [f"{short.get(k, k + '=')}{setting[k]}" for k in keys]
    return " ".join(parts)


def _pct(mean_std: tuple[float, float | None] | None, signed: bool = False) -> str:
    if mean_std is None:
        return "–"
    mean, std = mean_std
    text = f"{100 * mean:+.2f}" if signed else f"{100 * mean:.2f}"
    return text if std is None else f"{text} ± {100 * std:.2f}"


def _best_lines(entries: list[dict]) -> list[str]:
    best = best_settings(entries)
    if not best:
        return ["No run completed."]
    lines = [
        "| strategy | setting | seeds | dev WER | test WER | test WER reduction vs none |",
        "|---|---|---|---|---|---|",
    ]
    for strategy, e in sorted(best.items(), key=lambda kv: _sort_value(kv[1]["dev_wer"])):
        lines.append(
            f"| {strategy} | {_label(e['setting'])} | {e['n']} | {_pct(e['dev_wer'])} | "
            f"{_pct(e['test_wer'])} | {_pct(e['test_rel_reduction'], True)} % |"
        )
    top = next(iter(sorted(best.values(), key=lambda e: _sort_value(e["dev_wer"]))))
    lines += [
        "",
        (
            f"Best overall: **{_label(top['setting'])}** — dev WER {_pct(top['dev_wer'])},"
            f" test WER {_pct(top['test_wer'])} (runs: {', '.join(top['runs'])})."
        ),
    ]
    return lines


def _reduction_lines(entries: list[dict]) -> list[str]:
    rows = [
        e
        for e in entries
        if e["dev_reduction"] is not None and e["setting"].get(STRATEGY_KEY) != "none"
    ]
    if not rows:
        return ["No distillation run has a baseline run (distill.strategy=none) of the same seed."]
    lines = [
        "Reduction = baseline WER − WER of the same seed (positive = distillation helps), in WER",
        "points and relative to the baseline.",
        "",
        "| setting | seeds | dev WER | dev reduction | relative | test WER | test reduction | "
        + "relative |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in rows:
        lines.append(
            f"| {_label(e['setting'])} | {e['n']} | {_pct(e['dev_wer'])} | "
            f"{_pct(e['dev_reduction'], True)} | {_pct(e['dev_rel_reduction'], True)} % | "
            f"{_pct(e['test_wer'])} | {_pct(e['test_reduction'], True)} | "
            f"{_pct(e['test_rel_reduction'], True)} % |"
        )
    return lines


def _run_lines(rows: list[dict]) -> list[str]:
    keys = sorted({k for r in rows for k in r["params"]} - {SEED_KEY}, key=_key_order)
    head = ["run", "state", *keys, "seed", "dev WER", "test WER", "params", "latency ms", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: r["name"]):
        cells = [f"[{r['name']}]({r['run_dir']})", r["state"]]
        cells += ["–" if r["params"].get(k) is None else str(r["params"][k]) for k in keys]
        cells += [
            str(r["params"].get(SEED_KEY)),
            _num(r.get("dev_wer"), 100, 2),
            _num(r.get("test_wer"), 100, 2),
            _num(r.get("n_params"), 1, 0),
            _num(r.get("latency_ms"), 1, 1),
            _num(r.get("train_seconds"), 1, 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _key_order(key: str) -> tuple[int, str]:
    order = [STRATEGY_KEY, WEIGHT_KEY, TEMPERATURE_KEY, PRESET_KEY]
    return (order.index(key) if key in order else len(order), key)


def _num(value: Any, scale: float, digits: int) -> str:
    return "–" if value is None else f"{scale * value:.{digits}f}"
