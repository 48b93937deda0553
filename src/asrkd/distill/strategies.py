"""Distillation strategies: each turns (student output, teacher output, batch) into named loss
terms. Only the training step weighs the terms, with `loss_weights(cfg.distill)`.

Every run includes the ground-truth CTC term ("ctc", from `none`); the other strategies add:
- logit:    "kd_logit"  frame-level KL(teacher_T || student_T) * T^2
- sequence: "kd_seq"    CTC on the teacher's transcripts (works on untranscribed audio too)
- hidden:   "kd_hidden" L1 + cosine distance between mapped layers via learned projections
Terms from untranscribed utterances enter every KD term but never the ground-truth CTC term.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from asrkd.config import ConfigError, DistillConfig
from asrkd.data.dataset import Batch
from asrkd.data.text import Tokenizer
from asrkd.distill.losses import align_time, ctc_loss, frame_kl, hidden_distance
from asrkd.distill.teachers import TeacherOutput, TeacherRequest
from asrkd.models.conformer import ModelOutput


class NoKD(nn.Module):
    """Baseline: CTC on the ground truth of the transcribed utterances."""

    request = TeacherRequest()

    def forward(self, student: ModelOutput, teacher: TeacherOutput | None, batch: Batch):
        terms = ctc_loss(
            student.logits, student.lengths, batch.targets, batch.target_lens, batch.labelled
        )
        return {"ctc": terms}


class LogitKD(nn.Module):
    request = TeacherRequest(logits=True)

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, student: ModelOutput, teacher: TeacherOutput, batch: Batch):
        if not torch.equal(student.lengths.cpu(), teacher.lengths.cpu()):
            raise ValueError(
                "teacher and student output frame counts differ "
                f"({teacher.lengths.tolist()} vs {student.lengths.tolist()}): their frame rates "
                "do not match, so frame-level logit KD is not possible; use sequence or hidden KD"
            )
        t_logits = teacher.logits.to(student.logits.device)
        return {"kd_logit": frame_kl(student.logits, t_logits, student.lengths, self.temperature)}


class SequenceKD(nn.Module):
    request = TeacherRequest(transcripts=True)

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, student: ModelOutput, teacher: TeacherOutput, batch: Batch):
        # An empty teacher transcript is a legitimate target (silence) and counts; None is one
        # left out (asrkd.distill.pseudo_labels.REASONS: not mappable into the student's units,
        # a loop, too long for CTC, or over distill.max_pseudo_wer).
        kept = torch.tensor([t is not None for t in teacher.transcripts])
        ids = [self.tokenizer.encode(t or "") for t in teacher.transcripts]
        lens = torch.tensor([len(x) for x in ids])
        targets = torch.zeros(len(ids), max(1, int(lens.max())), dtype=torch.long)
        for i, x in enumerate(ids):
            targets[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        dev = student.logits.device
        loss = ctc_loss(
            student.logits, student.lengths, targets.to(dev), lens.to(dev), kept.to(dev)
        )
        return {"kd_seq": loss}


def auto_layer_map(n_student: int, n_teacher: int) -> tuple[tuple[int, int], ...]:
    """The student's middle and last layers onto the teacher's at the same relative depth."""
    pairs = {(n_student - 1, n_teacher - 1)}
    if n_student > 1 and n_teacher > 1:
        pairs.add((n_student // 2 - 1, n_teacher // 2 - 1))
    return tuple(sorted(pairs))


class HiddenKD(nn.Module):
    def __init__(self, layer_map: tuple[tuple[int, int], ...], d_student: int, d_teacher: int):
        super().__init__()
        self.layer_map = layer_map
        self.request = TeacherRequest(hidden_layers=tuple(sorted({t for _, t in layer_map})))
        self.projections = nn.ModuleList(nn.Linear(d_student, d_teacher) for _ in layer_map)

    def forward(self, student: ModelOutput, teacher: TeacherOutput, batch: Batch):
        losses = []
        for (s_layer, t_layer), proj in zip(self.layer_map, self.projections):
            s_hidden = proj(student.hidden_states[s_layer])
            t_hidden = teacher.hidden[t_layer].to(s_hidden.device)
            t_hidden = align_time(t_hidden.float(), s_hidden.shape[1])
            losses.append(hidden_distance(s_hidden, t_hidden, student.lengths))
        return {"kd_hidden": torch.stack(losses).mean()}


STRATEGIES: dict[str, type] = {
    "none": NoKD,
    "logit": LogitKD,
    "sequence": SequenceKD,
    "hidden": HiddenKD,
}


# The strategies whose terms are CTC losses on the student's output, and their terms' names:
# an intermediate block's output (train.inter_ctc_weight) is trained on them too.
CTC_TERMS = {"none": "ctc", "sequence": "kd_seq"}


def loss_weights(cfg: DistillConfig) -> dict[str, float]:
    """Weights of the named terms: logit and sequence KD take their weight from the CTC term
    ((1 - w) * CTC + w * KD), hidden KD is added with its own weight."""
    weights = {"ctc": 1.0}
    if "logit" in cfg.strategies:
        weights["kd_logit"] = cfg.weight
        weights["ctc"] -= cfg.weight
    if "sequence" in cfg.strategies:
        weights["kd_seq"] = cfg.sequence_weight
        weights["ctc"] -= cfg.sequence_weight
    if "hidden" in cfg.strategies:
        weights["kd_hidden"] = cfg.hidden_weight
    return weights


class Distiller(nn.Module):
    """The chosen strategies together; its parameters (hidden projections) train with the student
    and are not part of the exported model."""

    def __init__(
        self,
        cfg: DistillConfig,
        tokenizer: Tokenizer,
        student_dims: Any,
        teacher_dims: Any = None,
        inter_ctc_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.weights = loss_weights(cfg)
        if inter_ctc_weight:
            if not any(self.weights.get(k, 0.0) > 0 for k in CTC_TERMS.values()):
                raise ConfigError(
                    "train.inter_ctc_weight: intermediate CTC trains on the CTC terms' targets "
                    "(ground truth, teacher transcripts), and every CTC term here has weight 0"
                )
            self.weights["inter_ctc"] = inter_ctc_weight
        mods: dict[str, nn.Module] = {"none": NoKD()}
        for name in cfg.strategies:
            if name == "logit":
                mods[name] = LogitKD(cfg.temperature)
            elif name == "sequence":
                mods[name] = SequenceKD(tokenizer)
            elif name == "hidden":
                mods[name] = self._hidden(cfg, student_dims, teacher_dims)
        self.parts = nn.ModuleDict(mods)
        self.request = TeacherRequest()
        for mod in self.parts.values():
            self.request = self.request | mod.request

    @staticmethod
    def _hidden(cfg: DistillConfig, student: Any, teacher: Any):
        """student, teacher: model dims of any family (n_layers and d_model are all it reads)."""
        if teacher is None:
            raise ConfigError(
                "hidden-state KD needs a teacher that exposes its layers (teacher.kind=checkpoint "
                "or whisper)"
            )
        layer_map = cfg.hidden_layer_map or auto_layer_map(student.n_layers, teacher.n_layers)
        for s, t in layer_map:
            if not (0 <= s < student.n_layers and 0 <= t < teacher.n_layers):
                raise ValueError(
                    f"distill.hidden_layer_map pair ({s}, {t}) is outside the student's "
                    f"{student.n_layers} or the teacher's {teacher.n_layers} layers"
                )
        return HiddenKD(tuple(layer_map), student.d_model, teacher.d_model)

    @property
    def needs_teacher(self) -> bool:
        r = self.request
        return r.logits or r.transcripts or bool(r.hidden_layers)

    def forward(
        self,
        student: ModelOutput,
        teacher: TeacherOutput | None,
        batch: Batch,
        inter_logits: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(weighted total, unweighted terms). inter_logits (B, T', V): an intermediate block's
        output read by the CTC head (train.inter_ctc_weight); its term "inter_ctc" is the CTC
        terms (ground truth, teacher transcripts) on it, mixed as the last block's are."""
        terms: dict[str, Tensor] = {}
        for mod in self.parts.values():
            terms.update(mod(student, teacher, batch))
        if inter_logits is not None and "inter_ctc" in self.weights:
            inter = ModelOutput(inter_logits, student.lengths, ())
            ctc_terms: dict[str, Tensor] = {}
            for name in CTC_TERMS:
                if name in self.parts:
                    ctc_terms.update(self.parts[name](inter, teacher, batch))
            mix = sum(self.weights[k] for k in ctc_terms)  # > 0: checked in __init__
            terms["inter_ctc"] = sum(self.weights[k] * v for k, v in ctc_terms.items()) / mix
        total = sum(self.weights[k] * v for k, v in terms.items() if self.weights[k] != 0.0)
        if not isinstance(total, Tensor):
            total = student.logits.sum() * 0.0
        return total, terms
