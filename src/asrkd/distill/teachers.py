"""Teachers: anything that, for a batch of features, gives frame logits over the student's
vocabulary, hidden states of chosen layers, or transcripts.

Strategies only see `TeacherOutput`, so a teacher from another toolkit (a Hugging Face CTC model,
Whisper) plugs in by implementing `Teacher` and adding its class to TEACHERS: logits and hidden
states only where its frames and vocabulary match the student's, transcripts always.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from asrkd.data.text import Tokenizer
from asrkd.models.checkpoint import load_model
from asrkd.models.ctc import greedy_decode


@dataclass(frozen=True)
class TeacherRequest:
    """What a strategy needs from the teacher."""

    logits: bool = False
    transcripts: bool = False
    hidden_layers: tuple[int, ...] = ()

    def __or__(self, other: TeacherRequest) -> TeacherRequest:
        layers = tuple(sorted(set(self.hidden_layers) | set(other.hidden_layers)))
        return TeacherRequest(
            self.logits or other.logits, self.transcripts or other.transcripts, layers
        )


@dataclass
class TeacherOutput:
    """logits (B, T', V) and lengths (B,) when asked; hidden {layer: (B, T', D)};
    transcripts: normalised text per utterance."""

    logits: Tensor | None = None
    lengths: Tensor | None = None
    hidden: dict[int, Tensor] = field(default_factory=dict)
    transcripts: list[str] | None = None


class Teacher(Protocol):
    tokenizer: Tokenizer

    def fingerprint(self) -> str:
        """A hash that changes whenever the teacher's outputs could change."""
        ...

    def __call__(
        self, feats: Tensor, feat_lens: Tensor, request: TeacherRequest
    ) -> TeacherOutput: ...


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class CheckpointTeacher:
    """A model file written by `asrkd train` (or `asrkd distill`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.model, self.tokenizer = load_model(self.path)
        self.model.requires_grad_(False)
        self.n_layers = self.model.dims.n_layers
        self.d_model = self.model.dims.d_model
        self._fingerprint = file_sha256(self.path)

    def fingerprint(self) -> str:
        return self._fingerprint

    def to(self, device: torch.device) -> CheckpointTeacher:
        self.model.to(device)
        return self

    def __call__(self, feats: Tensor, feat_lens: Tensor, request: TeacherRequest) -> TeacherOutput:
        bad = [i for i in request.hidden_layers if not 0 <= i < self.n_layers]
        if bad:
            raise ValueError(f"teacher {self.path} has {self.n_layers} layers; asked for {bad}")
        with torch.inference_mode():
            out = self.model(feats, feat_lens)
        result = TeacherOutput(lengths=out.lengths.clone())
        if request.logits:
            result.logits = out.logits.clone()
        result.hidden = {i: out.hidden_states[i].clone() for i in request.hidden_layers}
        if request.transcripts:
            ids = greedy_decode(out.logits, out.lengths, self.tokenizer.blank_id)
            result.transcripts = [self.tokenizer.decode(x) for x in ids]
        return result


TEACHERS: dict[str, type] = {"checkpoint": CheckpointTeacher}


def load_teacher(kind: str, path: str | Path) -> Teacher:
    return TEACHERS[kind](path)
