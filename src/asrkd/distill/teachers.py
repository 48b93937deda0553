"""Teachers: anything that, for a batch of features, gives frame logits over the student's
vocabulary, hidden states of chosen layers, or transcripts.

Strategies only see `TeacherOutput`, so a teacher from another toolkit plugs in by implementing
`Teacher` and adding its class to TEACHERS: logits and hidden states only where its frames and
vocabulary match the student's, transcripts always. A teacher that declares `offers` (a
TeacherRequest) gives only that; one with `needs_audio` is called with the utterances' audio and
runs from the teacher cache. `hf-ctc` (HFCTCTeacher) is such a teacher: any Hugging Face CTC
recogniser, for its transcripts; so is `whisper` (asrkd.distill.whisper_teacher), for its
transcripts and encoder states.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from asrkd.config import ConfigError, TeacherConfig
from asrkd.data.text import Tokenizer, normalize_text
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


class HFCTCTeacher:
    """A Hugging Face CTC recogniser (wav2vec 2.0, HuBERT, WavLM, ... through transformers'
    AutoModelForCTC and its processor): `path` is a folder written by `save_pretrained` or a
    Hub model id, which transformers downloads once into its cache. Needs `asrkd[hf]`.

    It hears audio, not asrkd's features, and spells with its own units at its own frame rate,
    so it gives transcripts only: sequence-level KD (`distill.strategy=sequence`), also as
    pseudo-labels for untranscribed audio (`data.unlabelled_cuts`). It runs once per manifest,
    into the teacher cache (`teacher.cache`), one utterance at a time: no padding, so each
    transcript is exactly what the model gives for that utterance alone.
    """

    needs_audio = True  # build_cache passes audio=[(samples, sample_rate), ...]
    offers = TeacherRequest(transcripts=True)

    def __init__(self, path: str | Path) -> None:
        try:
            from transformers import AutoFeatureExtractor, AutoModelForCTC, AutoTokenizer
        except ImportError as err:
            raise ImportError(
                "teacher.kind=hf-ctc needs transformers: pip install 'asrkd[hf]'"
            ) from err
        self.path = str(path)
        try:
            self.extractor = AutoFeatureExtractor.from_pretrained(self.path)
            self.hf_tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.hf_model = AutoModelForCTC.from_pretrained(self.path).eval()
        except OSError as err:  # neither a model folder nor a Hub id it could fetch
            raise FileNotFoundError(f"teacher.path={self.path} (hf-ctc): {err}") from err
        except ValueError as err:  # a model, but not one AutoModelForCTC knows
            raise ConfigError(
                f"teacher.path={self.path} (hf-ctc): not a CTC model transformers can load ({err})"
            ) from err
        self.hf_model.requires_grad_(False)
        self.tokenizer = Tokenizer()  # asrkd's characters: the cache collates with it
        self.sample_rate = int(self.extractor.sampling_rate)
        self.device = torch.device("cpu")
        root = Path(self.path)
        if root.is_dir():  # hidden entries: download tools' metadata, not the model
            names = sorted(
                p.relative_to(root)
                for p in root.rglob("*")
                if p.is_file() and not any(x.startswith(".") for x in p.relative_to(root).parts)
            )
            listing = "".join(f"{name}:{file_sha256(root / name)}\n" for name in names)
        else:  # a Hub id: the revision transformers resolved it to
            listing = f"{self.path}@{getattr(self.hf_model.config, '_commit_hash', None)}"
        self._fingerprint = hashlib.sha256(f"hf-ctc\n{listing}".encode()).hexdigest()

    def fingerprint(self) -> str:
        return self._fingerprint

    def to(self, device: torch.device) -> HFCTCTeacher:
        self.device = device
        self.hf_model.to(device)
        return self

    def transcribe(self, samples: np.ndarray, sample_rate: int) -> str:
        """Greedy CTC transcript of one mono utterance, normalised like asrkd's transcripts."""
        from asrkd.data.audio import resample_mono

        samples = resample_mono(samples, sample_rate, self.sample_rate)
        inputs = self.extractor(samples, sampling_rate=self.sample_rate, return_tensors="pt")
        with torch.inference_mode():  # input_values or input_features, as the model takes
            logits = self.hf_model(**inputs.to(self.device)).logits
        text = self.hf_tokenizer.batch_decode(logits.argmax(-1).cpu())[0]
        return normalize_text(text)

    def __call__(
        self,
        feats: Tensor,
        feat_lens: Tensor,
        request: TeacherRequest,
        audio: list[tuple[np.ndarray, int]] | None = None,
    ) -> TeacherOutput:
        if request.logits or request.hidden_layers:
            raise ValueError(f"teacher {self.path} (hf-ctc) gives transcripts only")
        if audio is None or len(audio) != len(feat_lens):
            raise ValueError(f"teacher {self.path} (hf-ctc) needs the audio of every utterance")
        from asrkd.models import subsampled_lengths

        return TeacherOutput(
            lengths=subsampled_lengths(feat_lens),
            transcripts=[self.transcribe(x, sr) for x, sr in audio],
        )


# A teacher kind with its own module is imported here, after the names it uses exist.
from asrkd.distill.whisper_teacher import WhisperTeacher

TEACHERS: dict[str, type] = {
    "checkpoint": CheckpointTeacher,
    "hf-ctc": HFCTCTeacher,
    "whisper": WhisperTeacher,
}


def load_teacher(kind: str, path: str | Path, cfg: TeacherConfig | None = None) -> Teacher:
    """The teacher of `kind` at `path`; a kind with options of its own (`from_config`) takes
    them from `cfg` (teacher.beam, teacher.compute_type)."""
    cls = TEACHERS[kind]
    if cfg is not None and hasattr(cls, "from_config"):
        return cls.from_config(cfg)
    return cls(path)
