"""Strategies and the Distiller: named terms, weights from the config, hidden-state KD wiring."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from asrkd.config import ConfigError, DistillConfig
from asrkd.data.dataset import Batch
from asrkd.data.text import Tokenizer
from asrkd.distill.losses import ctc_loss, frame_kl
from asrkd.distill.strategies import (
    CTC_TERMS,
    STRATEGIES,
    Distiller,
    LogitKD,
    auto_layer_map,
    loss_weights,
)
from asrkd.distill.teachers import TeacherOutput, TeacherRequest
from asrkd.models import PRESETS
from asrkd.models.conformer import ConformerCTC, ConformerDims, ModelOutput

pytestmark = pytest.mark.usefixtures("one_thread")

TOK = Tokenizer()
STUDENT = dataclasses.replace(PRESETS["tiny"], vocab_size=29, n_mels=20, n_layers=2, dropout=0.0)
TEACHER = dataclasses.replace(STUDENT, d_model=48, n_heads=2, n_layers=4)


def make_batch(texts: list[str], feat_lens: list[int], n_mels: int = 20) -> Batch:
    ids = [TOK.encode(t) for t in texts]
    target_lens = torch.tensor([len(x) for x in ids])
    targets = torch.zeros(len(ids), max(1, int(target_lens.max())), dtype=torch.long)
    for i, x in enumerate(ids):
        targets[i, : len(x)] = torch.tensor(x, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(len(texts), max(feat_lens), n_mels, generator=g)
    return Batch(
        feats,
        torch.tensor(feat_lens),
        targets,
        target_lens,
        target_lens > 0,
        [f"cut{i}" for i in range(len(texts))],
        [n / 100 for n in feat_lens],
    )


def model(dims: ConformerDims, seed: int) -> ConformerCTC:
    torch.manual_seed(seed)
    return ConformerCTC(dims)


def teacher_output(teacher: ConformerCTC, batch: Batch, request: TeacherRequest) -> TeacherOutput:
    with torch.inference_mode():
        out = teacher.eval()(batch.feats, batch.feat_lens)
    return TeacherOutput(
        logits=out.logits if request.logits else None,
        lengths=out.lengths,
        hidden={i: out.hidden_states[i] for i in request.hidden_layers},
        transcripts=["ab", ""] if request.transcripts else None,
    )


# -- weights --------------------------------------------------------------------------------


def test_distill_defaults() -> None:
    cfg = DistillConfig()
    assert cfg.strategy == "none" and cfg.weight == 0.02 and cfg.temperature == 1.0
    assert set(STRATEGIES) == {"none", "logit", "sequence", "hidden"}


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("none", {"ctc": 1.0}),
        ("logit", {"ctc": 0.7, "kd_logit": 0.3}),
        ("sequence", {"ctc": 0.6, "kd_seq": 0.4}),
        ("hidden", {"ctc": 1.0, "kd_hidden": 2.5}),
        ("logit+sequence", {"ctc": 0.3, "kd_logit": 0.3, "kd_seq": 0.4}),
        ("logit+hidden", {"ctc": 0.7, "kd_logit": 0.3, "kd_hidden": 2.5}),
    ],
)
def test_loss_weights(strategy: str, expected: dict[str, float]) -> None:
    cfg = DistillConfig(strategy=strategy, weight=0.3, sequence_weight=0.4, hidden_weight=2.5)
    assert loss_weights(cfg) == pytest.approx(expected)


def test_weights_that_leave_ctc_negative_are_rejected() -> None:
    with pytest.raises(ConfigError, match="exceed 1"):
        DistillConfig(strategy="logit+sequence", weight=0.6, sequence_weight=0.5)
    # Each weight alone is fine: only the strategies in use take from the CTC term.
    assert loss_weights(DistillConfig(strategy="logit", weight=0.9))["ctc"] == pytest.approx(0.1)
    DistillConfig(strategy="logit+sequence", weight=0.5, sequence_weight=0.5)


# -- strategies --------------------------------------------------------------------------------


def test_logit_distiller_total_is_weighted_ctc_plus_kd() -> None:
    batch = make_batch(["ab c", "d"], [90, 60])
    student = model(STUDENT, 0)(batch.feats, batch.feat_lens)
    cfg = DistillConfig(strategy="logit", weight=0.25, temperature=2.0)
    distiller = Distiller(cfg, TOK, STUDENT)
    assert distiller.request == TeacherRequest(logits=True) and distiller.needs_teacher
    teacher = teacher_output(model(STUDENT, 1), batch, distiller.request)
    total, terms = distiller(student, teacher, batch)
    ctc = ctc_loss(student.logits, student.lengths, batch.targets, batch.target_lens)
    kd = frame_kl(student.logits, teacher.logits, student.lengths, 2.0)
    assert set(terms) == {"ctc", "kd_logit"}
    torch.testing.assert_close(terms["ctc"], ctc)
    torch.testing.assert_close(terms["kd_logit"], kd)
    torch.testing.assert_close(total, 0.75 * ctc + 0.25 * kd)


def test_no_kd_is_ctc_on_labelled_utterances_only() -> None:
    batch = make_batch(["ab c", ""], [90, 60])
    student = model(STUDENT, 0)(batch.feats, batch.feat_lens)
    distiller = Distiller(DistillConfig(), TOK, STUDENT)
    assert not distiller.needs_teacher
    total, terms = distiller(student, None, batch)
    first = ctc_loss(
        student.logits[:1], student.lengths[:1], batch.targets[:1], batch.target_lens[:1]
    )
    torch.testing.assert_close(total, first)
    assert set(terms) == {"ctc"}


def test_logit_kd_refuses_different_frame_counts() -> None:
    student = ModelOutput(torch.randn(2, 10, 29), torch.tensor([10, 8]), ())
    teacher = TeacherOutput(logits=torch.randn(2, 5, 29), lengths=torch.tensor([5, 4]))
    with pytest.raises(ValueError, match="frame counts differ"):
        LogitKD(1.0)(student, teacher, make_batch(["a", "b"], [43, 35]))


def test_sequence_strategy_uses_teacher_transcripts_on_unlabelled_audio() -> None:
    batch = make_batch(["", ""], [90, 60])  # nothing transcribed: only the teacher teaches
    student_model = model(STUDENT, 0)
    student = student_model(batch.feats, batch.feat_lens)
    distiller = Distiller(DistillConfig(strategy="sequence", sequence_weight=0.5), TOK, STUDENT)
    assert distiller.request == TeacherRequest(transcripts=True)
    teacher = TeacherOutput(lengths=student.lengths, transcripts=["ab", ""])
    total, terms = distiller(student, teacher, batch)
    assert terms["ctc"].item() == 0.0 and terms["kd_seq"].item() > 0
    total.backward()
    assert student_model.ctc_head.weight.grad.abs().sum() > 0


def test_intermediate_ctc_mixes_the_ctc_terms_as_the_last_block_does() -> None:
    """train.inter_ctc_weight: "inter_ctc" is the ground-truth and teacher-transcript CTC terms
    on the intermediate logits, mixed by their weights, and enters the total with its own."""
    batch = make_batch(["ab c", "d"], [90, 60])
    student_model = model(STUDENT, 0)
    student = student_model(batch.feats, batch.feat_lens)
    inter_logits = student_model.intermediate_logits(student.hidden_states[0])
    cfg = DistillConfig(strategy="sequence", sequence_weight=0.75)
    distiller = Distiller(cfg, TOK, STUDENT, inter_ctc_weight=0.3)
    teacher = TeacherOutput(lengths=student.lengths, transcripts=["ab", None])
    total, terms = distiller(student, teacher, batch, inter_logits)
    lens = student.lengths
    ctc_i = ctc_loss(inter_logits, lens, batch.targets, batch.target_lens)
    seq_targets = torch.tensor([TOK.encode("ab"), [0, 0]])
    seq_i = ctc_loss(
        inter_logits, lens, seq_targets, torch.tensor([2, 0]), torch.tensor([1, 0]) > 0
    )
    assert set(terms) == {*CTC_TERMS.values(), "inter_ctc"}  # CTC_TERMS names them right
    torch.testing.assert_close(terms["inter_ctc"], 0.25 * ctc_i + 0.75 * seq_i)
    torch.testing.assert_close(
        total, 0.25 * terms["ctc"] + 0.75 * terms["kd_seq"] + 0.3 * terms["inter_ctc"]
    )
    _, plain = Distiller(cfg, TOK, STUDENT)(student, teacher, batch, inter_logits)
    assert "inter_ctc" not in plain  # weight 0: off, whatever the caller passes
    with pytest.raises(ConfigError, match="every CTC term here has weight 0"):
        Distiller(DistillConfig(strategy="logit", weight=1.0), TOK, STUDENT, inter_ctc_weight=0.3)


def test_auto_layer_map() -> None:
    assert auto_layer_map(4, 16) == ((1, 7), (3, 15))
    assert auto_layer_map(2, 4) == ((0, 1), (1, 3))
    assert auto_layer_map(1, 6) == ((0, 5),)
    assert auto_layer_map(3, 1) == ((2, 0),)
    for n_s in range(1, 8):
        for n_t in range(1, 12):
            for s, t in auto_layer_map(n_s, n_t):
                assert 0 <= s < n_s and 0 <= t < n_t


def test_hidden_distiller_projections_and_student_get_gradients() -> None:
    batch = make_batch(["ab c", "d"], [90, 60])
    student_model = model(STUDENT, 0)
    distiller = Distiller(DistillConfig(strategy="hidden"), TOK, STUDENT, TEACHER)
    hidden = distiller.parts["hidden"]
    assert hidden.layer_map == ((0, 1), (1, 3))  # auto: middle and last layers
    assert distiller.request.hidden_layers == (1, 3)
    assert [tuple(p.weight.shape) for p in hidden.projections] == [(48, 32), (48, 32)]
    teacher_model = model(TEACHER, 1)
    teacher = teacher_output(teacher_model, batch, distiller.request)
    student = student_model(batch.feats, batch.feat_lens)
    total, terms = distiller(student, teacher, batch)
    assert set(terms) == {"ctc", "kd_hidden"} and terms["kd_hidden"] > 0
    total.backward()
    for proj in hidden.projections:
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert student_model.blocks[0].ff1.net[1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher_model.parameters())


def test_hidden_kd_aligns_teacher_frames_in_time() -> None:
    """A teacher at twice the student's frame rate: its hidden states are resampled."""
    batch = make_batch(["ab", "c"], [90, 60])
    cfg = DistillConfig(strategy="hidden", hidden_layer_map=((1, 2),))
    distiller = Distiller(cfg, TOK, STUDENT, TEACHER)
    student_model = model(STUDENT, 0)
    student = student_model(batch.feats, batch.feat_lens)
    n = student.logits.shape[1]
    g = torch.Generator().manual_seed(0)
    teacher = TeacherOutput(
        lengths=2 * student.lengths, hidden={2: torch.randn(2, 2 * n, 48, generator=g)}
    )
    total, terms = distiller(student, teacher, batch)
    assert torch.isfinite(terms["kd_hidden"])
    total.backward()
    assert distiller.parts["hidden"].projections[0].weight.grad.abs().sum() > 0


def test_hidden_kd_needs_valid_layers_and_a_teacher() -> None:
    with pytest.raises(ValueError, match="outside"):
        Distiller(
            DistillConfig(strategy="hidden", hidden_layer_map=((2, 0),)), TOK, STUDENT, TEACHER
        )
    with pytest.raises(ValueError, match="outside"):
        Distiller(
            DistillConfig(strategy="hidden", hidden_layer_map=((0, 4),)), TOK, STUDENT, TEACHER
        )
    with pytest.raises(ValueError, match="exposes its layers"):
        Distiller(DistillConfig(strategy="hidden"), TOK, STUDENT, None)


def test_combined_strategies_request_and_terms() -> None:
    batch = make_batch(["ab c", "d"], [90, 60])
    cfg = DistillConfig(
        strategy="logit+sequence+hidden", weight=0.2, sequence_weight=0.3, hidden_weight=0.5
    )
    distiller = Distiller(cfg, TOK, STUDENT, TEACHER)
    assert distiller.request == TeacherRequest(True, True, (1, 3))
    # A same-width teacher so logits match; the hidden map is auto ((0, 0), (1, 1)).
    distiller = Distiller(cfg, TOK, STUDENT, STUDENT)
    teacher = teacher_output(model(STUDENT, 1), batch, distiller.request)
    student = model(STUDENT, 0)(batch.feats, batch.feat_lens)
    total, terms = distiller(student, teacher, batch)
    assert set(terms) == {"ctc", "kd_logit", "kd_seq", "kd_hidden"}
    expected = (
        0.5 * terms["ctc"]
        + 0.2 * terms["kd_logit"]
        + 0.3 * terms["kd_seq"]
        + 0.5 * terms["kd_hidden"]
    )
    torch.testing.assert_close(total, expected)


def test_teacher_request_union() -> None:
    a = TeacherRequest(logits=True, hidden_layers=(3, 1))
    b = TeacherRequest(transcripts=True, hidden_layers=(1, 2))
    assert a | b == TeacherRequest(True, True, (1, 2, 3))
