"""Reading audio as the models expect it: mono float32 at the feature sample rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from asrkd.config import FeatureConfig
from asrkd.data.validate import DataError


def fbank_extractor(cfg: FeatureConfig):
    """The lhotse extractor that `asrkd prepare` stores and `asrkd transcribe` computes: one
    place, so a model always sees the features it was trained on. Fbank, or Whisper's log-mel
    when cfg.kind is "whisper"."""
    if cfg.kind == "whisper":
        from asrkd.data.whisper_features import lhotse_extractor

        return lhotse_extractor(cfg.n_mels)
    from lhotse import Fbank, FbankConfig

    return Fbank(
        FbankConfig(
            sampling_rate=cfg.sample_rate,
            num_filters=cfg.n_mels,
            frame_shift=cfg.frame_shift,
            frame_length=cfg.frame_length,
        )
    )


def load_mono(path: str | Path, sample_rate: int) -> np.ndarray:
    """(n_samples,) float32: channels averaged, resampled to `sample_rate` when needed with
    lhotse's port of torchaudio's sinc resampler (lhotse's Recording.resample needs torchaudio or
    scipy, which asrkd does not install). Unreadable or empty audio is a DataError."""
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as err:
        raise DataError(f"{path}: unreadable audio ({err})") from err
    if audio.shape[0] == 0:
        raise DataError(f"{path}: no samples")
    return resample_mono(audio.mean(axis=1), rate, sample_rate)


def resample_mono(mono: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """(n_samples,) float32 at `rate` -> at `sample_rate`, with lhotse's port of torchaudio's
    sinc resampler (kernel cached per rate pair)."""
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if rate == sample_rate:
        return mono
    from lhotse.augmentation.torchaudio import get_or_create_resampler

    x = torch.from_numpy(mono).unsqueeze(0)
    return get_or_create_resampler(rate, sample_rate)(x).squeeze(0).numpy()
