"""Initialise a student from its teacher: copy evenly spaced teacher layers where shapes allow."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from asrkd.models.conformer import ConformerCTC

log = logging.getLogger(__name__)


@dataclass
class InitReport:
    layer_map: dict[int, int]  # student block -> teacher block
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # shapes differ


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


def init_from_teacher(student: ConformerCTC, teacher: ConformerCTC) -> InitReport:
    """Copy the subsampling, the CTC head and evenly spaced blocks from teacher to student.

    Every student tensor must have a teacher counterpart (missing keys are an error); tensors
    whose shapes differ are skipped and listed. Raises when nothing at all could be copied.
    The student is run once on random input afterwards to prove it is usable.
    """
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


def _smoke_test(model: ConformerCTC) -> None:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 100, model.dims.n_mels), torch.tensor([100]))
    model.train(was_training)
    if not torch.isfinite(out.logits).all():
        raise ValueError("the initialised student produces non-finite outputs")
