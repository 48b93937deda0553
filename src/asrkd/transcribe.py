"""Model files as recognisers: audio -> fbank (the settings stored in the file, mono at the
model's sample rate) -> logits -> text. A model file is either a .safetensors file (eager
PyTorch) or a .onnx file from `asrkd export` (onnxruntime, fp32 or int8). Decoding is greedy
CTC, or the lexicon beam search when the file carries a lexicon (`asrkd export` with
lexicon_cuts), so that `asrkd transcribe` gives the text `asrkd evaluate` scored.

`asrkd evaluate` opens model files through `open_model_file` too: one path from file to logits
for both formats.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asrkd.config import FeatureConfig
from asrkd.data.audio import fbank_extractor, load_mono
from asrkd.data.text import Tokenizer
from asrkd.lexicon import LexiconDecoder
from asrkd.models import DEFAULT_FAMILY, FAMILIES
from asrkd.models.checkpoint import model_family, model_from_tensors, read_checkpoint
from asrkd.models.ctc import greedy_decode
from asrkd.ondevice import is_onnx, transcribe_onnx_files
from asrkd.precision import autocast_of, resolve_precision


def fbank(samples: np.ndarray, cfg: FeatureConfig) -> torch.Tensor:
    """(T, n_mels) log-mel features of cfg.kind (fbank or Whisper's), computed exactly as `asrkd
    prepare` computes them (Whisper's: the n_samples // 160 frames batches keep, not the one
    more lhotse stores for half the lengths; asrkd.data.dataset.collate)."""
    if cfg.kind == "whisper":
        from asrkd.data.whisper_features import log_mel

        return torch.from_numpy(log_mel(samples, cfg.n_mels))
    extractor = fbank_extractor(cfg)
    return torch.from_numpy(extractor.extract(samples, cfg.sample_rate))


class ModelFile:
    """A model file opened for inference; subclasses provide `forward`.

    Attributes: tokenizer, features (FeatureConfig), family (a key of asrkd.models.FAMILIES),
    dims (that family's dims), run_config (the training run's config as a dict; empty for ONNX
    files), lexicon (LexiconDecoder or None), format ("safetensors", "onnx" or "onnx-int8").
    """

    tokenizer: Tokenizer
    features: FeatureConfig
    family: str = DEFAULT_FAMILY
    dims: Any
    run_config: dict[str, Any]
    lexicon: LexiconDecoder | None = None
    format: str
    precision: str = "fp32"  # the forward pass's arithmetic as run (eval.precision resolved)

    def forward(
        self, feats: torch.Tensor, feat_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, F), feat_lens (B,) -> logits (B, T', V), lengths (B,)."""
        raise NotImplementedError

    def file_lexicon(self, engine: str | None = None) -> LexiconDecoder | None:
        """The lexicon decoder the file carries (only exported files carry one), searched by
        `engine` (EvalConfig.lexicon_engine; None: the search the file was exported with)."""
        return None

    @property
    def n_params(self) -> int:
        """Parameters of the network (the same count for fp32 and int8 files)."""
        return FAMILIES[self.family][1](self.dims).n_params()

    def __call__(self, samples: np.ndarray) -> str:
        feats = fbank(samples, self.features)
        logits, lengths = self.forward(feats[None], torch.tensor([feats.shape[0]]))
        return first_text(logits, lengths, self.tokenizer, self.lexicon)


class Transcriber(ModelFile):
    """A model file (.safetensors) loaded once, turning audio into text (greedy)."""

    format = "safetensors"

    def __init__(self, model_path: str | Path, precision: str = "fp32") -> None:
        """precision: eval.precision ("fp32", "bf16" or "auto", resolved here on the CPU)."""
        cpu = torch.device("cpu")
        self.precision = resolve_precision(precision, cpu, "eval.precision")
        self._autocast = autocast_of(self.precision, cpu)
        tensors, meta = read_checkpoint(model_path)
        self.model = model_from_tensors(tensors, meta).eval()
        self.dims = self.model.dims
        self.family = model_family(meta)
        self.tokenizer = Tokenizer.from_json(json.dumps(meta["tokenizer"]))
        self.features = FeatureConfig(**meta.get("features") or {})
        self.run_config = meta.get("config") or {}

    @property
    def n_params(self) -> int:
        return self.model.n_params()

    @torch.inference_mode()
    def forward(
        self, feats: torch.Tensor, feat_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with self._autocast():
            out = self.model(feats, feat_lens)
        return out.logits.float(), out.lengths


class OnnxTranscriber(ModelFile):
    """A file written by `asrkd export` (.onnx, fp32 or int8) run with onnxruntime; tokenizer,
    feature settings and any lexicon come from its metadata. threads=0 lets onnxruntime
    decide."""

    def __init__(
        self,
        model_path: str | Path,
        threads: int = 0,
        lexicon: bool = True,
        engine: str | None = None,
    ) -> None:
        from asrkd.ondevice import OnnxRecognizer

        onnx = OnnxRecognizer(model_path, threads, lexicon, engine)  # its metadata, read once
        self._onnx = onnx
        self.session, self.tokenizer, self.features = onnx.session, onnx.tokenizer, onnx.features
        self.lexicon, self.format, self.family = onnx.lexicon, onnx.format, onnx.family
        self.dims = FAMILIES[self.family][0](**onnx.dims)
        self.run_config = {}

    def forward(
        self, feats: torch.Tensor, feat_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from asrkd.export import run_onnx

        return run_onnx(self.session, feats, feat_lens)

    def file_lexicon(self, engine: str | None = None) -> LexiconDecoder | None:
        return self._onnx.file_lexicon(engine)


def first_text(
    logits: torch.Tensor, lengths: torch.Tensor, tok: Tokenizer, lexicon: LexiconDecoder | None
) -> str:
    """The text of a batch's first utterance: the lexicon beam search, else greedy CTC."""
    if lexicon is None:
        return tok.decode(greedy_decode(logits, lengths, tok.blank_id)[0])
    return lexicon.decode(logits[0, : int(lengths[0])].float().log_softmax(-1).cpu().numpy())


def open_model_file(
    model_path: str | Path,
    threads: int = 0,
    lexicon: bool = True,
    engine: str | None = None,
    precision: str = "fp32",
) -> ModelFile:
    """OnnxTranscriber for an exported .onnx file, Transcriber for a .safetensors model file.
    `threads` applies to onnxruntime; PyTorch uses torch.set_num_threads. lexicon=False leaves
    an exported file's lexicon unread (model.file_lexicon() reads it); `engine` searches it.
    `precision` (eval.precision) applies to .safetensors files; an ONNX file runs as exported."""
    if is_onnx(model_path):
        return OnnxTranscriber(model_path, threads, lexicon, engine)
    return Transcriber(model_path, precision)


def transcribe_files(
    model_path: str | Path, paths: list[str | Path], precision: str = "fp32"
) -> list[tuple[str, str]]:
    """(path, text) for each audio file; `model_path` is a .safetensors model file (its
    forward pass in `precision`, eval.precision's choices) or a .onnx file from `asrkd export`
    (run without PyTorch: asrkd.ondevice)."""
    if is_onnx(model_path):
        return transcribe_onnx_files(model_path, paths)
    transcriber = open_model_file(model_path, precision=precision)
    rate = transcriber.features.sample_rate
    return [(str(p), transcriber(load_mono(p, rate))) for p in paths]
