"""Tiny end-to-end distillation runs on test-made data, one per strategy: the run folder holds its
artifacts and the losses fell."""

from __future__ import annotations

import json
from pathlib import Path

from asrkd.config import load_config
from asrkd.data.dataset import collate, cut_text
from asrkd.models.checkpoint import load_model, read_checkpoint
from asrkd.training import Trainer
from tests.conftest import tiny_run_overrides

STEPS = 60  # metrics rows every 10 steps


def distil(parts, teacher: Path, tmp_path: Path, overrides: list[str]):
    """Run a short distillation; returns (run folder, trainer, fraction of unlabelled rows seen)."""
    out = tmp_path / "run"
    cfg = load_config(
        None,
        tiny_run_overrides(parts, out, STEPS)
        + [f"teacher.path={teacher}", f"teacher.cache_dir={tmp_path / 'cache'}", "train.seed=1"]
        + overrides,
    )
    trainer = Trainer(cfg)
    seen = {"labelled": 0, "unlabelled": 0}
    step = trainer.step

    def counting_step(batch, weight=1.0):
        seen["labelled"] += int(batch.labelled.sum())
        seen["unlabelled"] += int((~batch.labelled).sum())
        return step(batch, weight)

    trainer.step = counting_step
    trainer.run()
    return out, trainer, seen


def assert_run_ok(out: Path, strategy: str, terms: tuple[str, ...]) -> list[dict]:
    for name in ("model.safetensors", "metrics.jsonl", "summary.json", "config.yaml"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["strategy"] == strategy and summary["steps"] == STEPS
    assert summary["bad_steps"] == 0
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == STEPS // 10
    for key in ("loss",) + terms:
        first = (steps[0][key] + steps[1][key]) / 2
        last = (steps[-1][key] + steps[-2][key]) / 2
        assert last < first, (key, [r[key] for r in steps])
    assert any("dev_wer" in r for r in rows)
    model, _ = load_model(out / "model.safetensors")
    assert model.dims.d_model == 32  # the student, without the distiller's projections
    assert not any(
        k.startswith("model.distill") for k in read_checkpoint(out / "model.safetensors")[0]
    )
    return steps


def test_logit_kd_run(prepared_parts, tiny_teacher, tmp_path) -> None:
    out, _, _ = distil(
        prepared_parts, tiny_teacher, tmp_path, ["distill.strategy=logit", "distill.weight=0.5"]
    )
    assert_run_ok(out, "logit", ("ctc", "kd_logit"))
    assert len(list((tmp_path / "cache").glob("*/index.json"))) == 1  # the cache was used


def test_sequence_kd_run_uses_untranscribed_audio(prepared_parts, tiny_teacher, tmp_path) -> None:
    out, trainer, seen = distil(
        prepared_parts,
        tiny_teacher,
        tmp_path,
        ["distill.strategy=sequence", "data.labelled_fraction=0.5"],
    )
    assert_run_ok(out, "sequence", ("kd_seq",))
    untranscribed = [c for c in trainer.train_cuts if not cut_text(c)]
    assert len(trainer.train_cuts) == 60 and len(untranscribed) == 30  # 2 of 4 speakers
    assert seen["unlabelled"] > 0 and seen["labelled"] > 0


def test_hidden_kd_run(prepared_parts, tiny_teacher, tmp_path) -> None:
    out, trainer, _ = distil(
        prepared_parts,
        tiny_teacher,
        tmp_path,
        ["distill.strategy=hidden", "distill.hidden_weight=2"],
    )
    assert_run_ok(out, "hidden", ("kd_hidden",))
    assert any(k.startswith("parts.hidden.projections") for k in trainer.distiller.state_dict())


def test_logit_and_hidden_online_without_cache(prepared_parts, tiny_teacher, tmp_path) -> None:
    out, _, _ = distil(
        prepared_parts,
        tiny_teacher,
        tmp_path,
        ["distill.strategy=logit+hidden", "distill.weight=0.5", "teacher.cache=false"],
    )
    assert_run_ok(out, "logit+hidden", ("kd_logit", "kd_hidden"))
    assert not (tmp_path / "cache").exists()  # the teacher ran online


def test_tempo_perturbation_with_frame_level_kd(prepared_parts, tiny_teacher, tmp_path) -> None:
    """data.tempo_range stretches the student's input; the cached teacher logits and hidden
    states are stretched alike, so frame-level KD still lines up and trains."""
    out, _, _ = distil(
        prepared_parts,
        tiny_teacher,
        tmp_path,
        ["distill.strategy=logit+hidden", "distill.weight=0.5", "data.tempo_range=[0.8,1.2]"],
    )
    assert_run_ok(out, "logit+hidden", ("ctc", "kd_logit", "kd_hidden"))


def test_retime_stretches_teacher_frames_to_the_students_lengths() -> None:
    import torch

    from asrkd.distill.teachers import TeacherOutput
    from asrkd.training.trainer import _retime

    logits = torch.randn(2, 10, 5)
    hidden = {3: torch.randn(2, 10, 4)}
    out = _retime(TeacherOutput(logits, torch.tensor([10, 6]), hidden, None), torch.tensor([12, 5]))
    assert out.logits.shape == (2, 12, 5) and out.hidden[3].shape == (2, 12, 4)
    assert out.lengths.tolist() == [12, 5]
    for x, y in ((logits, out.logits), (hidden[3], out.hidden[3])):
        torch.testing.assert_close(y[0, [0, -1]], x[0, [0, 9]])  # ends stay in place
        torch.testing.assert_close(y[1, [0, 4]], x[1, [0, 5]])
        assert torch.all(y[1, 5:] == 0)


def test_student_initialised_as_its_teacher_has_no_logit_kd_loss(
    prepared_parts, tiny_teacher, tmp_path
) -> None:
    """init_from_teacher with the teacher's own preset: the student is the teacher, so the first
    frame-level KD term is ~0 (fp16 cache rounding only) and the CTC term is the teacher's."""
    out = tmp_path / "run"
    extra = [
        f"teacher.path={tiny_teacher}",
        f"teacher.cache_dir={tmp_path / 'cache'}",
        "distill.strategy=logit",
        "distill.init_from_teacher=true",
        "data.spec_augment=false",
        "model.dropout=0",
    ]
    trainer = Trainer(load_config(None, tiny_run_overrides(prepared_parts, out, 1) + extra))
    _, cuts = next(iter(trainer.batches()))
    row = trainer.step(collate(cuts, trainer.tokenizer))
    assert row["kd_logit"] < 1e-3
    assert row["ctc"] < 0.5


def test_bpe_units_learnt_saved_and_shared_with_a_student(prepared_parts, tmp_path) -> None:
    """model.tokenizer=bpe learns word pieces on the transcribed train text and the checkpoint
    carries them; a student reuses them through model.tokenizer=<teacher file> for logit KD, and
    without that the vocabulary check says what to set."""
    import pytest

    from asrkd.config import ConfigError
    from asrkd.data.text import BpeTokenizer, Tokenizer
    from asrkd.runtime import build_tokenizer
    from asrkd.training import train

    teacher_out = tmp_path / "bpe-teacher"
    overrides = tiny_run_overrides(prepared_parts, teacher_out, 20)
    train(load_config(None, [*overrides, "model.tokenizer=bpe", "model.bpe_size=40"]))
    _, teacher_tok = load_model(teacher_out / "model.safetensors")
    assert isinstance(teacher_tok, BpeTokenizer) and teacher_tok.vocab_size == 40

    cfg = load_config(None, tiny_run_overrides(prepared_parts, tmp_path / "x", 1))
    assert build_tokenizer(cfg, []) == Tokenizer()
    reuse = load_config(None, [f"model.tokenizer={teacher_out / 'model.safetensors'}"])
    assert build_tokenizer(reuse, []) == teacher_tok
    (tmp_path / "tok.json").write_text(teacher_tok.to_json())
    assert build_tokenizer(load_config(None, [f"model.tokenizer={tmp_path / 'tok.json'}"]), []) == (
        teacher_tok
    )
    for bad in (tmp_path / "missing.json", tmp_path / "cache"):
        with pytest.raises(ConfigError, match="model.tokenizer"):
            build_tokenizer(load_config(None, [f"model.tokenizer={bad}"]), [])

    teacher = teacher_out / "model.safetensors"
    with pytest.raises(ConfigError, match="model.tokenizer"):
        distil(prepared_parts, teacher, tmp_path / "a", ["distill.strategy=logit"])
    out, _, _ = distil(
        prepared_parts,
        teacher,
        tmp_path / "b",
        ["distill.strategy=logit", "distill.weight=0.5", f"model.tokenizer={teacher}"],
    )
    assert load_model(out / "model.safetensors")[1] == teacher_tok
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["bad_steps"] == 0
