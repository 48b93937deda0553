"""Transcribe audio files with a model file: the same fbank features the model was trained on
(stored in the file), mono at the model's sample rate, greedy CTC decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from asrkd.config import FeatureConfig
from asrkd.data.validate import DataError
from asrkd.models.checkpoint import read_checkpoint, model_from_tensors
from asrkd.data.text import Tokenizer
from asrkd.models.ctc import greedy_decode
import json


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Mono float32 samples at `sample_rate` (channels averaged, resampled when needed)."""
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as err:
        raise DataError(f"{path}: unreadable audio ({err})") from err
    if audio.shape[0] == 0:
        raise DataError(f"{path}: no samples")
    mono = torch.from_numpy(audio.mean(axis=1)).unsqueeze(0)
    if rate != sample_rate:
        from lhotse.augmentation.resample import Resample

        mono = Resample(rate, sample_rate)(mono)
    return mono.squeeze(0).numpy()


def fbank(samples: np.ndarray, cfg: FeatureConfig) -> torch.Tensor:
    """(T, n_mels) log-mel features, computed exactly as `asrkd prepare` computes them."""
    from lhotse import Fbank, FbankConfig

    extractor = Fbank(FbankConfig(sampling_rate=cfg.sample_rate, num_filters=cfg.n_mels,
                                  frame_shift=cfg.frame_shift, frame_length=cfg.frame_length))
    return torch.from_numpy(extractor.extract(samples, cfg.sample_rate))


class Transcriber:
    """A model file loaded once, turning audio into text."""

    def __init__(self, model_path: str | Path) -> None:
        tensors, meta = read_checkpoint(model_path)
        self.model = model_from_tensors(tensors, meta)
        self.tokenizer = Tokenizer.from_json(json.dumps(meta["tokenizer"]))
        self.features = FeatureConfig(**meta.get("features") or {})

    @torch.inference_mode()
    def __call__(self, samples: np.ndarray) -> str:
        feats = fbank(samples, self.features)
        out = self.model(feats[None], torch.tensor([feats.shape[0]]))
        return self.tokenizer.decode(greedy_decode(out.logits, out.lengths)[0])


def transcribe_files(model_path: str | Path, paths: list[str | Path]) -> list[tuple[str, str]]:
    """(path, text) for each audio file."""
    transcriber = Transcriber(model_path)
    rate = transcriber.features.sample_rate
    return [(str(p), transcriber(load_audio(p, rate))) for p in paths]
