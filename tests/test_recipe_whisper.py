"""The real-speech recipe (configs/librispeech-whisper.yaml) scaled down, end to end: a tiny
random Whisper saved by the test (CTranslate2 form) teaches Whisper-encoder students on a tone
corpus in LibriSpeech layout, with an untranscribed folder and a noisy test set, and the report
holds every row the recipe promises."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from asrkd.cli import main
from tests.helpers import write_librispeech_tree


def scaled_variants(head_steps: int) -> list:
    """The recipe's own variants with their head phase shortened to fit its steps here, and
    only the front end and the first block frozen (the test's student has one block)."""
    recipe = yaml.safe_load(Path("configs/librispeech-whisper.yaml").read_text())
    return [
        [
            name,
            [
                re.sub(
                    r"^train\.freeze=.*$",
                    "train.freeze=[conv1,conv2,blocks.0]",
                    re.sub(r"^train\.head_steps=\d+$", f"train.head_steps={head_steps}", o),
                )
                for o in overrides
            ],
        ]
        for name, overrides in recipe["variants"]
    ]


@pytest.mark.slow
def test_scaled_down_whisper_recipe(tmp_path, tiny_whisper, capsys, monkeypatch):
    corpus = write_librispeech_tree(tmp_path / "ls", {"train-clean-5": 24, "test-other": 6})
    extra = write_librispeech_tree(tmp_path / "audio", {"mine": 6}, n_speakers=2, seed=1)
    out = tmp_path / "recipe"
    overrides = [
        f"out_dir={out}",
        f"unlabelled_audio={extra / 'mine'}",
        f"run.teacher.path={tiny_whisper['ct2']}",
        "student_preset=whisper-test-student",
        "student_steps=4",
        "librispeech_dev_speakers=1",
        "parallel_runs=1",
        "partial_baseline=true",
        "run.data.max_batch_seconds=20",
        "run.train.eval_every=4",
        "run.train.checkpoint_every=4",
        "run.train.warmup_steps=1",
        "run.train.threads=1",
        "run.train.progress=false",
        "eval.threads=1",
        "eval.latency_utterances=2",
        "eval.vocabulary=train",
        f"eval.lm_cache={out / 'lm-cache'}",
        "eval.precision=bf16",  # the model files scored and timed in bfloat16, and said so
        f"variants={json.dumps(scaled_variants(2))}",
    ]
    sets = [a for o in overrides for a in ("--set", o)]
    args = ["demo", "configs/librispeech-whisper.yaml", "--librispeech", str(corpus), *sets]
    from asrkd import demo_scoring

    timed = []  # what runs in a fresh process of its own

    def fresh(fn, *args):
        timed.append((fn.__name__, *(a if isinstance(a, str) else None for a in args[:2])))
        return in_fresh_process(fn, *args)

    in_fresh_process = demo_scoring.in_fresh_process
    monkeypatch.setattr("asrkd.demo_scoring.in_fresh_process", fresh)
    assert main(args) == 0
    printed = capsys.readouterr().out
    rows = {r["name"]: r for r in json.loads((out / "results.json").read_text())}
    # each teacher runtime is transcribed, then timed with the students after all the scoring
    # (a run that reuses its WER still times it), each model in a fresh process
    runtimes = [(name, rt) for name, _, rt in timed if name in ("evaluate_teacher", "time_teacher")]
    assert runtimes == [
        ("evaluate_teacher", "faster-whisper-int8"),
        ("evaluate_teacher", "pytorch"),
        ("time_teacher", "faster-whisper-int8"),
        ("time_teacher", "pytorch"),
    ]
    assert [name for name, *_ in timed].count("_time") == len(rows) - 2
    for rt in ("faster-whisper-int8", "pytorch"):
        stored = json.loads((out / "eval" / f"teacher-{rt}" / "summary.json").read_text())
        assert stored["speed"]["rtf"] == rows[f"teacher-{rt}"]["rtf"]
    student = "whisper-test-student"
    expected = {
        "teacher-faster-whisper-int8",
        "teacher-pytorch",
        f"full-{student}-none",
        f"full-{student}-init",
        f"full-{student}-init-seq",
        f"partial-{student}-none",
        f"partial-{student}-init",
        f"partial-{student}-init-seq",
    }
    assert expected <= set(rows)
    assert any(name.endswith("-int8") and name.startswith(("full", "partial")) for name in rows)
    report = (out / "report.md").read_text()
    for name, row in rows.items():
        assert name in report and name in printed
        assert row["params"] > 0 and row["rtf"] > 0
    # the noisy test set: every student row, and the teacher's first runtime
    assert rows["teacher-faster-whisper-int8"]["noisy_wer"] is not None
    assert rows[f"full-{student}-init"]["noisy_wer"] is not None
    assert "best distilled student (by dev WER, decoded as test is)" in report
    # (b) has its own init-only row, so its KD terms are measured against it
    assert f"the KD terms vs the initialisation alone (partial-{student}-init," in report
    # ... each comparison with its paired interval over the test utterances
    targets = report.split("## Targets")[1].split("##")[0]
    assert targets.count("95 % interval over the test utterances [") == 4, targets
    # the delivered int8 file is held to the first target too, under the student it came from
    # where that is its situation's best distilled one (here the files are chosen among all)
    (int8,) = [n for n in rows if n.endswith("-int8") and not n.startswith("teacher")]
    source = int8.removesuffix("-int8")
    assert (f"  - as delivered ({int8}, onnx-int8): WER " in targets) is (
        f"decoded as test is) {source}: WER" in targets
    )
    pairs = "word pairs of the student's own transcripts over CMU Sphinx's US English LM"
    triples = "trigram LM (CMU Sphinx's US English word triples over a bigram of the"
    assert f"{triples} {pairs} (pocketsphinx), backing off to the unigram)" in report
    # the RTF of a student row is its network and its lexicon decoder
    assert "its decoder takes" in report and rows[f"full-{student}-init"]["decoder_rtf"] > 0
    assert "the lexicon beam search, flashlight-text's C++ search)" in report  # the recipe's
    # the decoder's LM built once per set of transcripts ((a)'s, (b)'s), read by every row
    assert len(list((out / "lm-cache").glob("*.arpa"))) == 2
    assert "The students' decoder LMs were built once each (2: one per set of" in report
    # the distilled run heard the untranscribed folder and counted its pseudo-labels
    run = out / "runs" / f"partial-{student}-init-seq"
    summary = json.loads((run / "summary.json").read_text())
    assert "pseudo_labels_checked" in summary
    # train.precision=auto: bfloat16 where this CPU computes it, and the report says which
    assert summary["precision"] in ("fp32", "bf16")
    assert ("forward pass in bfloat16 (train" in report) is (summary["precision"] == "bf16")
    students = [r for n, r in rows.items() if not n.startswith("teacher")]
    assert {r["eval_precision"] for r in students} == {"bf16", None}  # None: the int8 file
    listed = report.split(" scored and timed with the forward pass in bfloat16 (eval.precision")
    assert len(listed) == 2 and f"`full-{student}-init`" in listed[0].rsplit("; ", 1)[1].split(", ")
    # ... and the report says what sequence KD left out of them, run by run
    left_out = report.split("Sequence KD's teacher transcripts left out")[1].split("##")[0]
    assert f"- partial-{student}-init-seq: {summary['pseudo_labels_over_max_wer']} of " in left_out
    assert f"- full-{student}-init-seq: " in left_out and f"{student}-init:" not in left_out
    counts = (summary["pseudo_labels_repetitive"], summary["pseudo_labels_too_long"])
    assert (
        f"(distill.max_pseudo_compression): {counts[0]}; longer than the student's CTC can "
        f"align: {counts[1]}" in left_out
    )
    assert (run / "teacher_transcripts_left_out.tsv").is_file()
    assert "unlabelled_cuts" in (run / "config.yaml").read_text()
    # the delivered file names the search it was scored with: `asrkd transcribe` uses it
    from asrkd.ondevice import OnnxRecognizer

    (delivered,) = (out / "export").glob("*-int8.onnx")
    assert OnnxRecognizer(delivered, threads=1).lexicon.engine == "flashlight"
    # init copied the teacher's blocks: the init-only student starts from Whisper's front end
    assert (out / "runs" / f"full-{student}-init" / "model.safetensors").is_file()
