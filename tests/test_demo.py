"""A scaled-down `asrkd demo` end to end: tiny corpus, tiny models, real report."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from asrkd.cli import main
from asrkd.config import DemoConfig, load_config, replace
from asrkd.demo import plan_runs, prepare_data, run_config, train_in_parallel, train_or_reuse
from asrkd.demo_scoring import code_stamp, in_fresh_process
from asrkd.distill.teachers import file_sha256
from asrkd.precision import INFERENCE_ENV
from tests.helpers import write_librispeech_tree


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
        "student_preset=tiny-half",
        "small_student_preset=",
        "teacher_steps=30",
        "student_steps=10",
        "run.data.max_batch_seconds=30",
        "run.train.warmup_steps=5",
        "run.train.eval_every=10",
        "run.train.checkpoint_every=10",
        "run.train.progress=false",
        "eval.latency_utterances=2",
        "deliver_int8=false",  # the end-to-end test turns it on
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
    assert logit.uses_teacher and not next(s for s in specs if s.variant == "none").uses_teacher
    init_only = DemoConfig(variants=(("init", ("distill.init_from_teacher=True",)),))
    assert [s.uses_teacher for s in plan_runs(init_only)[1:3]] == [False, True]


def _process_and_caps() -> tuple[int, dict]:
    return os.getpid(), {k: os.environ.get(k) for k in INFERENCE_ENV}


def test_every_model_is_timed_in_a_fresh_process_of_its_own(monkeypatch):
    """in_fresh_process, where the demo times each model: a new interpreter per call, neither
    this process nor the last call's, with the kernel caches capped as `asrkd transcribe` caps
    them."""
    for key in INFERENCE_ENV:
        monkeypatch.delenv(key, raising=False)
    first, caps = in_fresh_process(_process_and_caps)
    second, _ = in_fresh_process(_process_and_caps)
    assert len({os.getpid(), first, second}) == 3
    assert caps == INFERENCE_ENV


def test_the_noisy_test_copy(tmp_path):
    """write_noisy_copy: every utterance at the configured SNR under the same names, the
    transcripts copied, speakers' folders reached through links too, the same copy on a second
    call; a folder without audio is an error naming it, never a finished empty copy."""
    import numpy as np
    import soundfile as sf

    from asrkd.data.validate import DataError
    from asrkd.demo import write_noisy_copy

    corpus = write_librispeech_tree(tmp_path / "ls", {"test": 4}, n_speakers=2, seed=2)
    linked = tmp_path / "linked" / "test"
    linked.mkdir(parents=True)
    for speaker in sorted((corpus / "test").iterdir()):
        (linked / speaker.name).symlink_to(speaker, target_is_directory=True)
    cfg = DemoConfig(noise_snr_db=10.0)
    copy = write_noisy_copy(linked, tmp_path / "noisy", cfg)
    names = sorted(p.relative_to(corpus / "test") for p in (corpus / "test").rglob("*.*"))
    assert sorted(p.relative_to(copy) for p in copy.rglob("*.*")) == names and len(names) == 6
    for rel in (n for n in names if n.suffix == ".flac"):
        clean, _ = sf.read(corpus / "test" / rel, dtype="float32")
        noisy, rate = sf.read(copy / rel, dtype="float32")
        scale = float(np.dot(noisy, clean) / np.dot(clean, clean))  # a common gain, if clipped
        noise = noisy - scale * clean
        snr = 10 * np.log10(np.sum((scale * clean) ** 2) / np.sum(noise**2))
        assert rate == 16000 and abs(snr - 10.0) < 0.5, (rel, snr)
    mtime = (copy / names[0]).stat().st_mtime_ns
    assert write_noisy_copy(linked, tmp_path / "noisy", cfg) == copy  # reused
    assert (copy / names[0]).stat().st_mtime_ns == mtime
    (tmp_path / "empty" / "test").mkdir(parents=True)
    with pytest.raises(DataError, match="empty/test: no .flac files"):
        write_noisy_copy(tmp_path / "empty" / "test", tmp_path / "noisy2", cfg)
    assert not list((tmp_path / "noisy2").glob("*.done"))


def test_scaled_down_demo_end_to_end(tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"
    sets = [a for o in [*tiny_demo_overrides(out), "deliver_int8=true"] for a in ("--set", o)]
    timed = []  # every model's speed is measured alone in a fresh process

    def fresh(fn, *args):
        timed.append(str(args[0]))
        return in_fresh_process(fn, *args)

    monkeypatch.setattr("asrkd.demo_scoring.in_fresh_process", fresh)
    assert main(["demo", "configs/demo.yaml", *sets]) == 0
    printed = capsys.readouterr().out
    report = (out / "report.md").read_text()
    rows = json.loads((out / "results.json").read_text())
    assert sorted(Path(m).parent.name if m.endswith(".safetensors") else Path(m).stem
                  for m in timed) == sorted(r["name"] for r in rows)  # fmt: skip
    names = {r["name"] for r in rows}
    assert {
        "teacher",
        "full-tiny-half-none",
        "full-tiny-half-logit",
        "full-tiny-half-logit-init",
        "partial-tiny-half-none",
        "partial-tiny-half-logit-init",
    } <= names
    for row in rows:
        assert 0.0 <= row["wer"] and row["params"] > 0 and row["latency_ms"] > 0
        assert row["name"] in report and row["name"] in printed
    # the distilled student with the best dev WER, shipped as one int8 ONNX file and scored
    int8 = next(r for r in rows if r["name"].endswith("-int8"))
    source = next(r for r in rows if r["name"] == int8["name"].removesuffix("-int8"))
    # dev WER decoded as the test set is (the lexicon), not the training run's greedy one
    distilled = [
        r["name"]
        for r in rows
        if r["scenario"] != "teacher" and r["variant"] != "none" and r["format"] == "safetensors"
    ]
    dev_wers = {}
    for name in distilled:
        dev = json.loads((out / "eval-dev" / name / "summary.json").read_text())
        assert dev["decoding"].startswith("lexicon")
        dev_wers[name] = next(iter(dev["sets"].values()))["wer"]
        assert next(r for r in rows if r["name"] == name)["dev_wer"] == dev_wers[name]
    assert source["name"] == min(dev_wers, key=dev_wers.__getitem__)
    assert int8["format"] == "onnx-int8" and int8["params"] == source["params"]
    # (no size check here: the tiny model's int8 file is mostly graph and lexicon, not weights;
    # tests/test_export.py checks that int8 files are smaller)
    assert int8["size_vs_teacher"] == pytest.approx(int8["mb"] / rows[0]["mb"])
    assert (out / "export" / f"{int8['name']}.onnx").stat().st_size == pytest.approx(
        int8["mb"] * 1e6
    )
    assert "int8 ONNX file" in report
    targets = report.split("## Targets")[1]
    assert "(a) all transcripts" in targets and "(b) partial" in targets
    assert "lexicon beam search" in report and "greedy WER" in report
    assert (out / "wer_vs_size.png").stat().st_size > 1000
    assert (out / "wer_vs_latency.png").stat().st_size > 1000
    # the baseline in (b) saw only the transcribed speakers, the distilled students all audio
    partial_base = load_config(out / "runs" / "partial-tiny-half-none" / "config.yaml")
    assert partial_base.data.labelled_fraction < 1.0
    distilled = load_config(out / "runs" / "partial-tiny-half-logit-init" / "config.yaml")
    assert Path(distilled.teacher.path).is_absolute() and Path(distilled.teacher.path).is_file()
    # `asrkd report` on the folder of run folders (no results.jsonl): every run, and the
    # distilled students paired with the baseline of their situation
    assert main(["report", str(out / "runs")]) == 0
    runs_report = (out / "runs" / "report.md").read_text()
    assert all(f"[{name}]" in runs_report for name in names if not name.endswith("-int8"))
    reductions = runs_report.split("## WER reduction")[1].split("##")[0]
    assert "logit" in reductions and "No distillation run has a baseline" not in reductions
    # a second run reuses every completed stage, also when it trains students in parallel:
    # no model, no export and no score is written again
    written = {
        p: p.stat().st_mtime_ns for p in [*out.glob("runs/*/*.safetensors"), *out.glob("export/*")]
    }
    # (a decoder setting in the runs' configs changes no trained model: nothing retrains)
    again = [*sets, "--set", "parallel_runs=2", "--set", "run.eval.beam=3"]
    assert main(["demo", "configs/demo.yaml", *again]) == 0
    assert {p: p.stat().st_mtime_ns for p in written} == written
    timings = json.loads((out / "timings.json").read_text())
    assert timings["teacher"] < 5.0 and timings["export"] < 5.0
    # nor is a student decoded or measured again: the dev WERs and the table are reused
    assert timings["dev decoding"] < 5.0 and timings["evaluate"] < 5.0
    assert json.loads((out / "results.json").read_text()) == rows
    # ... while asrkd's code is the same: the stamp holds its fingerprint, the report names it
    code = code_stamp()
    assert json.loads((out / "eval" / "inputs.json").read_text())["code"] == code
    assert f"(code {code})" in (out / "report.md").read_text()
    # another asrkd (another fingerprint of its code): dev WERs, the int8 file and every row
    # are made again, no student retrained
    monkeypatch.setattr("asrkd.demo_scoring.code_stamp", lambda: "other-code")
    assert main(["demo", "configs/demo.yaml", *sets]) == 0
    assert {p: p.stat().st_mtime_ns for p in written if p.suffix == ".safetensors"} == {
        p: t for p, t in written.items() if p.suffix == ".safetensors"
    }
    assert all(p.stat().st_mtime_ns != t for p, t in written.items() if p.suffix == ".onnx")
    assert json.loads((out / "eval" / "inputs.json").read_text())["code"] == "other-code"
    assert "(code other-code)" in (out / "report.md").read_text()
    assert json.loads((out / "timings.json").read_text())["evaluate"] > 5.0
    # a retrained teacher behind the same path invalidates the distilled students, not baselines
    runs = out / "runs"
    before = {p.parent.name: p.stat().st_mtime for p in runs.glob("*/summary.json")}
    assert main(["demo", "configs/demo.yaml", *sets, "--set", "teacher_steps=31"]) == 0
    after = {p.parent.name: p.stat().st_mtime for p in runs.glob("*/summary.json")}
    changed = {name for name in before if after[name] != before[name]}
    assert changed == {name for name in before if name == "teacher" or "logit" in name}
    # ... and the int8 file follows its (retrained) source model
    int8 = next(
        r for r in json.loads((out / "results.json").read_text()) if r["format"] != "safetensors"
    )
    stamp = json.loads((out / "export" / f"{int8['name']}.inputs.json").read_text())
    source = runs / int8["name"].removesuffix("-int8") / "model.safetensors"
    assert stamp["model"] == file_sha256(source)


def test_students_trained_in_parallel_match_sequential_ones(tmp_path, capsys):
    """Two students at a time in their own processes: same configs (bar threads), same
    results as one after the other; an error inside a worker stops the runs with its own
    message, and a bad run config stops the demo before any worker starts.
    (The demo's own wiring of parallel_runs is run in test_scaled_down_demo_end_to_end.)"""
    seq, par = tmp_path / "seq", tmp_path / "par"
    base = [*tiny_demo_overrides(seq), "variants=[[logit, [distill.strategy=logit]]]"]
    cfg = load_config("configs/demo.yaml", base, DemoConfig)
    data = prepare_data(cfg, seq, None)
    specs = plan_runs(cfg)
    for spec in specs:
        train_or_reuse(run_config(cfg, spec, data, seq))
    # the same students from the same teacher (a copy: run_config points at out/runs/teacher)
    shutil.copytree(seq / "runs" / "teacher", par / "runs" / "teacher")
    train_in_parallel([run_config(cfg, spec, data, par) for spec in specs[1:]], 2)
    for name in ("full-tiny-half-none", "full-tiny-half-logit", "partial-tiny-half-logit"):
        a = json.loads((seq / "runs" / name / "summary.json").read_text())
        b = json.loads((par / "runs" / name / "summary.json").read_text())
        assert a["steps"] == b["steps"] and a["best_dev_wer"] == pytest.approx(b["best_dev_wer"])
        assert load_config(par / "runs" / name / "config.yaml").train.threads == 1
    # an error inside a worker (a manifest broken after the configs were checked) stops the
    # runs with the worker's own message, naming the file
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(b"not a manifest")
    none_run = run_config(cfg, specs[1], data, tmp_path / "err")
    assert none_run.distill.strategy == "none"
    with pytest.raises(Exception, match="broken.jsonl.gz"):
        train_in_parallel([replace(none_run, [f"data.train_cuts={broken}"])], 2)
    missing = tmp_path / "missing.json"
    bad = [*base, "parallel_runs=2"]
    bad.append(f"variants=[[logit, [distill.strategy=logit, model.tokenizer={missing}]]]")
    capsys.readouterr()
    assert main(["demo", "configs/demo.yaml", *[a for o in bad for a in ("--set", o)]]) == 2
    assert f"model.tokenizer='{missing}'" in capsys.readouterr().err


def test_demo_on_a_librispeech_folder(tmp_path):
    """`asrkd demo --librispeech DIR`: the same pipeline on a LibriSpeech-layout folder, dev
    speakers held out of the train part, the test part as test, the lexicon from the train
    split's transcripts."""
    root = write_librispeech_tree(tmp_path / "ls", {"train-clean-5": 60, "test-other": 12})
    out = tmp_path / "demo"
    sets = [
        *tiny_demo_overrides(out),
        "librispeech_dev_speakers=1",
        "variants=[[logit, [distill.strategy=logit]]]",
    ]
    args = ["demo", "configs/demo.yaml", "--librispeech", str(root)]
    assert main([*args, *[a for o in sets for a in ("--set", o)]]) == 0
    assert not (out / "corpus").exists()  # nothing synthesised
    rows = json.loads((out / "results.json").read_text())
    assert {r["name"] for r in rows} >= {
        "teacher",
        "full-tiny-half-logit",
        "partial-tiny-half-none",
    }
    teacher_cfg = load_config(out / "runs" / "teacher" / "config.yaml")
    assert teacher_cfg.data.train_cuts.endswith("cuts_train-split.jsonl.gz")
    assert "test-other" in teacher_cfg.data.test_cuts[0]
    assert "LibriSpeech folder" in (out / "report.md").read_text()
