"""Transcribe audio files with a model file: the same fbank features the model was trained on
(stored in the file), mono at the model's sample rate, greedy CTC decoding. A model file is either
a .safetensors file (eager PyTorch) or a .onnx file from `asrkd export` (onnxruntime)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from asrkd.config import FeatureConfig
from asrkd.data.audio import fbank_extractor, load_mono
from asrkd.data.text import Tokenizer
from asrkd.models.checkpoint import model_from_tensors, read_checkpoint
from asrkd.models.ctc import greedy_decode


def fbank(samples: np.ndarray, cfg: FeatureConfig) -> torch.Tensor:
    """(T, n_mels) log-mel features, computed exactly as `asrkd prepare` computes them."""
    extractor = fbank_extractor(cfg)
    return torch.from_numpy(extractor.extract(samples, cfg.sample_rate))


class _CTCTranscriber:
    """Audio -> fbank -> (logits, lengths) -> greedy CTC text; subclasses provide the model."""

    tokenizer: Tokenizer
    features: FeatureConfig

    def forward(
        self, feats: torch.Tensor, feat_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, T, F), feat_lens (B,) -> logits (B, T', V), lengths (B,)."""
        raise NotImplementedError

    def __call__(self, samples: np.ndarray) -> str:
        feats = fbank(samples, self.features)
        logits, lengths = self.forward(feats[None], torch.tensor([feats.shape[0]]))
        return self.tokenizer.decode(greedy_decode(logits, lengths)[0])


class Transcriber(_CTCTranscriber):
    """A model file (.safetensors) loaded once, turning audio into text."""

    def __init__(self, model_path: str | Path) -> None:
        tensors, meta = read_checkpoint(model_path)
        self.model = model_from_tensors(tensors, meta)
        self.tokenizer = Tokenizer.from_json(json.dumps(meta["tokenizer"]))
        self.features = FeatureConfig(**meta.get("features") or {})

    @torch.inference_mode()
    def forward(
        self, feats: torch.Tensor, feat_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(feats, feat_lens)
        return out.logits, out.lengths


class OnnxTranscriber(_CTCTranscriber):
    """A file written by `asrkd export` (.onnx, fp32 or int8) run with onnxruntime; tokenizer
    and feature settings come from its metadata. threads=0 lets onnxruntime decide."""

    def __init__(self, model_path: str | Path, threads: int = 0) -> None:
        from asrkd.export import onnx_session, read_onnx_metadata

        self.session = onnx_session(model_path, threads)
        props = self.session.get_modelmeta().custom_metadata_map
        meta = read_onnx_metadata(props, model_path)
        self.tokenizer = Tokenizer.from_json(json.dumps(meta["tokenizer"]))
        self.features = FeatureConfig(**meta["features"])

    def forward(
        self, feats: torch.Tensor, feat_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from asrkd.export import run_onnx

        return run_onnx(self.session, feats, feat_lens)


def open_transcriber(model_path: str | Path) -> _CTCTranscriber:
    """OnnxTranscriber for an exported .onnx file, Transcriber for a .safetensors model file."""
    if Path(model_path).suffix.lower() == ".onnx":
        return OnnxTranscriber(model_path)
    return Transcriber(model_path)


def transcribe_files(model_path: str | Path, paths: list[str | Path]) -> list[tuple[str, str]]:
    """(path, text) for each audio file; `model_path` is a .safetensors model file or a .onnx
    file from `asrkd export`."""
    transcriber = open_transcriber(model_path)
    rate = transcriber.features.sample_rate
    return [(str(p), transcriber(load_mono(p, rate))) for p in paths]
