"""Initialise a student from its teacher, or a Whisper-encoder student from a pretrained Whisper:
copy evenly spaced layers (distil-whisper's rule) where shapes allow."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from asrkd.config import ConfigError
from asrkd.models import CTCModel, WhisperEncoderCTC

log = logging.getLogger(__name__)


@dataclass
class InitReport:
    layer_map: dict[int, int]  # student block -> teacher block
    copied: list[str] = field(default_factory=list)  # student tensors now equal to the source's
    skipped: list[str] = field(default_factory=list)  # shapes differ, or no source (CTC head)


def evenly_spaced(n_student: int, n_teacher: int) -> list[int]:
    """Teacher block indices for each student block, first and last included when possible."""
    if n_student == 1:
        return [n_teacher - 1]
    step = (n_teacher - 1) / (n_student - 1)
    return [round(i * step) for i in range(n_student)]


def _teacher_key(student_key: str, layer_map: dict[int, int]) -> str:
    if student_key.startswith("blocks."):
        _, idx, rest = student_key.split(".", 2)
        return f"blocks.{layer_map[int(idx)]}.{rest}"
    return student_key


def init_from_teacher(student: CTCModel, teacher: CTCModel) -> InitReport:
    """Copy the subsampling, the CTC head and evenly spaced blocks from teacher to student.

    Every student tensor must have a teacher counterpart (missing keys are an error); tensors
    whose shapes differ are skipped and listed. Raises when nothing at all could be copied.
    The student is run once on random input afterwards to prove it is usable.
    """
    if student.family != teacher.family:
        raise ConfigError(
            f"distill.init_from_teacher: a {student.family} student cannot take the layers of a "
            f"{teacher.family} teacher (choose a {teacher.family} preset)"
        )
    layer_map = dict(enumerate(evenly_spaced(student.dims.n_layers, teacher.dims.n_layers)))
    t_state = teacher.state_dict()
    report = InitReport(layer_map)
    new_state = {}
    for key, value in student.state_dict().items():
        t_key = _teacher_key(key, layer_map)
        if t_key not in t_state:
            raise KeyError(f"student tensor {key} has no teacher counterpart {t_key}")
        if t_state[t_key].shape == value.shape:
            new_state[key] = t_state[t_key].clone()
            report.copied.append(key)
        else:
            new_state[key] = value
            report.skipped.append(key)
    if not report.copied:
        raise ValueError("no teacher tensor fits the student (widths differ): cannot initialise")
    missing, unexpected = student.load_state_dict(new_state, strict=True)
    assert not missing and not unexpected
    _smoke_test(student)
    log.info(
        "student init: copied %d tensors, skipped %d (layer map %s)",
        len(report.copied),
        len(report.skipped),
        layer_map,
    )
    return report


def init_from_whisper(student: WhisperEncoderCTC, whisper, source: str = "whisper") -> InitReport:
    """Copy a pretrained Whisper's conv front end, evenly spaced encoder blocks and final
    LayerNorm into a Whisper-encoder student; its CTC head stays as it was (random).

    `whisper` is transformers' WhisperForConditionalGeneration or WhisperModel (what
    asrkd.models.whisper_io.load_whisper returns); `source` names it in errors. Positions are
    Whisper's sinusoid formula in the student, so nothing is copied for them. Width, heads, MLP
    and mel bins must match (ConfigError otherwise).

    A student deeper than the Whisper takes all its blocks in order, and each block above them
    starts as a copy of the Whisper's last block with its two residual branches' output
    projections (attention's out_proj, fc2) zeroed: such a block adds nothing, so the student
    starts as exactly the Whisper's encoder, with room to grow above it (`whisper-tiny-enc5`).
    """
    if student.family != "whisper-encoder":
        raise ConfigError(f"{source}: Whisper weights fit Whisper-encoder students only")
    conf, dims = whisper.config, student.dims
    ours = (dims.d_model, dims.n_heads, dims.ffn_dim, dims.n_mels)
    theirs = (conf.d_model, conf.encoder_attention_heads, conf.encoder_ffn_dim, conf.num_mel_bins)
    if ours != theirs:
        raise ConfigError(
            f"{source}: encoder (d_model, heads, ffn_dim, n_mels) = {theirs} with "
            f"{conf.encoder_layers} blocks; the student has {ours} with {dims.n_layers} blocks. "
            "Choose a preset of the Whisper's width (whisper-tiny-* for tiny, whisper-base-* "
            "for base)"
        )
    n_copied = min(dims.n_layers, conf.encoder_layers)  # blocks above them: the last, zeroed
    added = range(n_copied, dims.n_layers)
    last = conf.encoder_layers - 1
    layer_map = dict(
        enumerate([*evenly_spaced(n_copied, conf.encoder_layers), *[last] * len(added)])
    )
    # the tensors that end an added block's two residual branches: zero, so it adds nothing
    zeroed = tuple(f"blocks.{i}.{name}." for i in added for name in ("self_attn.out_proj", "fc2"))
    w_state = whisper.get_encoder().state_dict()
    _log_position_gap(student, w_state["embed_positions.weight"])
    report = InitReport(layer_map)
    new_state = {}
    for key, value in student.state_dict().items():
        w_key = _teacher_key(key, layer_map).replace("blocks.", "layers.", 1)
        if key.startswith("ctc_head."):
            new_state[key] = value
            report.skipped.append(key)
            continue
        if w_state[w_key].shape != value.shape:  # a missing key raises KeyError: a bug
            raise ConfigError(f"{source}: {w_key} has shape {tuple(w_state[w_key].shape)}")
        new_state[key] = w_state[w_key].detach().to(value.dtype).clone()
        if key.startswith(zeroed):
            new_state[key].zero_()
        report.copied.append(key)
    student.load_state_dict(new_state, strict=True)
    _smoke_test(student)
    n_copied = len(report.copied)
    log.info("student init from %s: copied %d tensors (blocks %s)", source, n_copied, layer_map)
    if added:
        log.info(
            "student blocks %s added above the Whisper's %d: copies of its last block whose "
            "attention out_proj and fc2 are zero (they start as the identity)",
            list(added),
            conf.encoder_layers,
        )
    return report


def _log_position_gap(student: WhisperEncoderCTC, stored: torch.Tensor) -> None:
    """Whisper checkpoints store their positions (openai's in fp16): how far the formula the
    student uses is from them, for the log."""
    from asrkd.models.whisper_encoder import sinusoids

    formula = sinusoids(stored.shape[0], student.inv_timescales.cpu())
    log.info("Whisper positions vs formula: max abs diff %.2g", (formula - stored).abs().max())


def _smoke_test(model: CTCModel) -> None:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 100, model.dims.n_mels), torch.tensor([100]))
    model.train(was_training)
    if not torch.isfinite(out.logits).all():
        raise ValueError("the initialised student produces non-finite outputs")
