"""A scaled-down `asrkd demo` end to end: tiny corpus, tiny models, real report."""

from __future__ import annotations

import json

from asrkd.cli import main
from asrkd.config import DemoConfig, load_config
from asrkd.demo import plan_runs


def tiny_demo_overrides(out) -> list[str]:
    return [
        f"out_dir={out}",
        "corpus.hours=0.03",
        "corpus.n_train_voices=4",
        "corpus.n_dev_voices=2",
        "corpus.n_test_voices=2",
        "corpus.chapters_per_speaker=1",
        "corpus.max_words=6",
        "teacher_preset=tiny",
        "student_preset=tiny-xs",
        "small_student_preset=",
        "teacher_steps=30",
        "student_steps=10",
        "run.data.max_batch_seconds=30",
        "run.train.warmup_steps=5",
        "run.train.eval_every=10",
        "run.train.checkpoint_every=10",
        "run.train.progress=false",
        "eval.latency_utterances=2",
    ]


def test_plan_covers_both_situations():
    specs = plan_runs(DemoConfig())
    names = [s.name for s in specs]
    assert names[0] == "teacher"
    for scenario in ("full", "partial"):
        strategies = {s.strategy for s in specs if s.scenario == scenario}
        assert {"none", "logit"} <= strategies
    logit = next(s for s in specs if s.variant == "logit")
    assert logit.overrides == ("distill.strategy=logit",)  # logit KD at its defaults


def test_scaled_down_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    sets = [a for o in tiny_demo_overrides(out) for a in ("--set", o)]
    assert main(["demo", "configs/demo.yaml", *sets]) == 0
    printed = capsys.readouterr().out
    report = (out / "report.md").read_text()
    rows = json.loads((out / "results.json").read_text())
    names = {r["name"] for r in rows}
    assert {
        "teacher",
        "full-tiny-xs-none",
        "full-tiny-xs-logit",
        "partial-tiny-xs-none",
        "partial-tiny-xs-logit-w0.5-T2",
    } <= names
    for row in rows:
        assert 0.0 <= row["wer"] and row["params"] > 0 and row["latency_ms"] > 0
        assert row["name"] in report and row["name"] in printed
    assert "## Targets" in report and ("reached" in report)
    assert (out / "wer_vs_size.png").stat().st_size > 1000
    assert (out / "wer_vs_latency.png").stat().st_size > 1000
    # the baseline in (b) saw only the transcribed speakers, the distilled students all audio
    partial_base = load_config(out / "runs" / "partial-tiny-xs-none" / "config.yaml")
    assert partial_base.data.labelled_fraction < 1.0
    # a second run reuses every completed stage
    assert main(["demo", "configs/demo.yaml", *sets]) == 0
    timings = json.loads((out / "timings.json").read_text())
    assert timings["teacher"] < 5.0
