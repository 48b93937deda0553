"""Sweep reports built from a results.jsonl written by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asrkd.report import baseline_of, load_rows, pareto_front, report, summarise

BASE_WER = {0: 0.30, 1: 0.34}  # per seed
GAIN = {(0.1, 1): 0.02, (0.1, 2): 0.03, (0.5, 1): 0.05, (0.5, 2): 0.08}  # (weight, T) -> WER drop
PRESETS = {"tiny": (60_000, 2.0), "demo-student-xs": (400_000, 6.0)}  # params, latency ms


def make_row(
    name: str,
    strategy: str,
    weight,
    temp,
    preset: str,
    seed: int,
    dev: float,
    state: str = "COMPLETE",
) -> dict:
    n_params, latency = PRESETS[preset]
    return {
        "name": name,
        "trial": 0,
        "state": state,
        "params": {
            "distill.strategy": strategy,
            "distill.weight": weight,
            "distill.temperature": temp,
            "model.preset": preset,
            "train.seed": seed,
        },
        "run_dir": f"trials/{name}",
        "error": None,
        "dev_wer": dev,
        "dev_cer": dev / 2,
        "test_wer": dev + 0.01,
        "test_cer": dev / 2,
        "n_params": n_params,
        "latency_ms": latency,
        "train_seconds": 3.0,
    }


def write_results(folder: Path, presets: tuple[str, ...] = ("tiny", "demo-student-xs")) -> None:
    rows = []
    for p, preset in enumerate(presets):
        shift = 0.1 * p  # the smaller preset... is here the worse one
        for seed, base in BASE_WER.items():
            rows.append(
                make_row(f"{preset}-none-s{seed}", "none", None, None, preset, seed, base - shift)
            )
            for (weight, temp), gain in GAIN.items():
                name = f"{preset}-logit-w{weight}-T{temp}-s{seed}"
                dev = base - shift - gain - 0.01 * seed * (weight == 0.5)
                rows.append(make_row(name, "logit", weight, temp, preset, seed, dev))
    # a run that failed first and completed when retried; one pruned run
    failed = make_row("tiny-logit-w0.1-T1-s0", "logit", 0.1, 1, "tiny", 0, 0.0, "FAIL")
    failed.update(dev_wer=None, test_wer=None, error="RuntimeError: boom")
    rows.insert(1, failed)
    rows.append(make_row("tiny-logit-w0.9-T1-s0", "logit", 0.9, 1, "tiny", 0, 0.9, "PRUNED"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_load_rows_keeps_the_last_row_per_run(tmp_path: Path) -> None:
    write_results(tmp_path)
    rows = load_rows(tmp_path)
    assert len(rows) == 2 * 2 * 5 + 1
    retried = next(r for r in rows if r["name"] == "tiny-logit-w0.1-T1-s0")
    assert retried["state"] == "COMPLETE"
    with pytest.raises(FileNotFoundError):
        load_rows(tmp_path / "missing")


def test_summarise_pairs_runs_with_the_baseline_of_their_seed(tmp_path: Path) -> None:
    write_results(tmp_path)
    entries = summarise(load_rows(tmp_path))
    best = entries[0]  # sorted by mean dev WER
    assert best["setting"] == {
        "distill.strategy": "logit",
        "distill.weight": 0.5,
        "distill.temperature": 2,
        "model.preset": "demo-student-xs",
    }
    assert best["n"] == 2
    # reductions per seed: 0.08 and 0.08 + 0.01 -> mean 0.085, std 0.00707
    mean, std = best["dev_reduction"]
    assert mean == pytest.approx(0.085) and std == pytest.approx(0.01 / 2**0.5)
    rel = best["dev_rel_reduction"][0]
    assert rel == pytest.approx((0.08 / 0.20 + 0.09 / 0.24) / 2)
    assert best["test_wer"][0] == pytest.approx((0.12 + 0.15) / 2 + 0.01)
    tiny_baseline = {"distill.strategy": "none", "model.preset": "tiny"}
    baseline = next(e for e in entries if e["setting"] == tiny_baseline)
    assert baseline["dev_wer"][0] == pytest.approx(0.32)
    assert baseline["dev_reduction"] == (0.0, 0.0)
    single = summarise([r for r in load_rows(tmp_path) if r["params"]["train.seed"] == 0])
    assert single[0]["dev_wer"] == (pytest.approx(0.12), None)  # one seed: no std


def test_report_writes_tables_and_plots(tmp_path: Path) -> None:
    write_results(tmp_path)
    path = report(tmp_path)
    text = path.read_text()
    assert path == tmp_path / "report.md"
    assert "Best overall: **logit w=0.5 T=2 demo-student-xs**" in text
    assert "test WER 14.50 ± 2.12" in text  # (0.13 + 0.16) / 2 over the two seeds
    assert "+8.50 ± 0.71" in text  # the dev WER reduction of the best setting, in points
    assert "| pruned" not in text and "PRUNED" in text and "1 pruned" in text
    assert text.count("heatmap-") == 2  # one weight x temperature map per preset
    for name in ("heatmap-0.png", "heatmap-1.png", "pareto.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert len([line for line in text.splitlines() if line.startswith("| [")]) == 21


def test_no_pareto_plot_for_one_student_size(tmp_path: Path) -> None:
    write_results(tmp_path, presets=("tiny",))
    text = report(tmp_path / "results.jsonl").read_text()
    assert not (tmp_path / "pareto.png").exists() and "Pareto" not in text
    assert "Best overall: **logit w=0.5 T=2 tiny**" in text


def test_pareto_front() -> None:
    points = [(1, 0.5), (2, 0.4), (2, 0.45), (3, 0.6), (4, 0.2), (5, 0.2)]
    assert pareto_front(points) == [(1, 0.5), (2, 0.4), (4, 0.2)]


def test_baseline_of_keeps_what_plain_training_reads() -> None:
    setting = (
        ("distill.init_from_teacher", True),
        ("distill.strategy", "logit"),
        ("distill.weight", 0.5),
        ("teacher.cache_topk", 8),
        ("train.lr", 0.001),
    )
    assert baseline_of(setting) == (
        ("distill.init_from_teacher", True),
        ("distill.strategy", "none"),
        ("train.lr", 0.001),
    )
