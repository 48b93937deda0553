"""Reading audio as the models expect it: mono float32 at the feature sample rate, and its
log-mel features: lhotse's Fbank (what `asrkd prepare` stores) or kaldi-native-fbank (what
sherpa-onnx computes and the PyTorch-free path uses; equal to lhotse's to ~2e-3 on log-mel
values, docs/benchmarks.md, "A student on device runtimes"). torch and lhotse are imported only where needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

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
    import torch
    from lhotse.augmentation.torchaudio import get_or_create_resampler

    x = torch.from_numpy(mono).unsqueeze(0)
    return get_or_create_resampler(rate, sample_rate)(x).squeeze(0).numpy()


def knf_fbank_options(cfg: FeatureConfig):
    """kaldi-native-fbank options equal to lhotse's FbankConfig defaults (and to sherpa-onnx's
    feature extractor for zipformer CTC models): povey window, pre-emphasis 0.97, DC offset
    removed, no dither, snip_edges=False, mel bins from 20 Hz to Nyquist - 400 Hz, samples in
    [-1, 1] (no int16 scaling), natural-log power."""
    try:
        import kaldi_native_fbank as knf
    except ImportError as err:
        raise ImportError(
            "features without PyTorch need kaldi-native-fbank: pip install 'asrkd[export]'"
        ) from err
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = cfg.sample_rate
    opts.frame_opts.frame_shift_ms = 1000 * cfg.frame_shift
    opts.frame_opts.frame_length_ms = 1000 * cfg.frame_length
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    opts.mel_opts.num_bins = cfg.n_mels
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = -400.0
    return opts


def knf_fbank(samples: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """(T, n_mels) float32 log-mel features of mono samples at cfg.sample_rate, computed with
    kaldi-native-fbank: the same frames as lhotse's Fbank (T = round(n_samples / hop))."""
    import kaldi_native_fbank as knf

    fbank = knf.OnlineFbank(knf_fbank_options(cfg))
    fbank.accept_waveform(cfg.sample_rate, np.ascontiguousarray(samples, dtype=np.float32))
    fbank.input_finished()
    n = fbank.num_frames_ready
    if n == 0:
        return np.zeros((0, cfg.n_mels), dtype=np.float32)
    return np.stack([np.asarray(fbank.get_frame(i), dtype=np.float32) for i in range(n)])


def features_np(samples: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """(T, n_mels) float32 features of cfg.kind without PyTorch: kaldi-native-fbank for fbank,
    asrkd.data.whisper_features.log_mel (numpy) for Whisper's log-mel; the frames training saw."""
    if cfg.kind == "whisper":
        from asrkd.data.whisper_features import log_mel

        return log_mel(samples, cfg.n_mels).astype(np.float32)
    return knf_fbank(samples, cfg)
