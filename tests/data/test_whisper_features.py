"""Whisper log-mel features (features.kind=whisper): equal to transformers'
WhisperFeatureExtractor on real speech, the same through lhotse as through numpy, and computed
by prepare and transcribe alike."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from asrkd.config import ConfigError, FeatureConfig
from asrkd.data.audio import fbank_extractor
from asrkd.data.whisper_features import log10_mel, log_mel, mel_filters

TOLERANCE = 1e-4  # transformers computes in float32, log_mel in float64: ~2e-5 apart


def test_numpy_and_lhotse_paths_agree_and_count_frames() -> None:
    extractor = fbank_extractor(FeatureConfig(kind="whisper"))
    rng = np.random.default_rng(0)
    for n in (160, 161, 399, 16000, 16079, 16080, 37_123):
        audio = (rng.standard_normal(n) * 0.1).astype(np.float32)
        feats = log_mel(audio)
        assert feats.shape == (n // 160, 80) and feats.dtype == np.float32
        stored = extractor.extract(audio[None], 16000)  # lhotse's round(n / 160) frames
        assert stored.shape == ((n + 80) // 160, 80)
        assert np.array_equal(stored[: n // 160], feats)
        assert np.array_equal(extractor.extract(audio, 16000), stored)
    assert extractor.frame_shift == 0.01 and extractor.feature_dim(16000) == 80


def test_feature_config_kind_is_validated() -> None:
    with pytest.raises(ConfigError, match="features.kind"):
        FeatureConfig(kind="mfcc")
    with pytest.raises(ConfigError, match="Whisper's fixed log-mel"):
        FeatureConfig(kind="whisper", n_mels=64)
    assert FeatureConfig().kind == "fbank"


def test_mel_filters_are_whisper_s() -> None:
    transformers = pytest.importorskip("transformers")
    reference = transformers.WhisperFeatureExtractor(feature_size=80).mel_filters
    assert np.allclose(reference, mel_filters(80), rtol=0, atol=1e-12)


@pytest.mark.librispeech
def test_equal_to_transformers_on_real_speech() -> None:
    """The first n_samples // 160 frames of Whisper's 30-s-padded features, and the floor
    (max - 8) of the unpadded utterance equals the padded one's (padding is silence)."""
    root = os.environ.get("ASRKD_LIBRISPEECH_DIR")
    if not root:
        pytest.skip("set ASRKD_LIBRISPEECH_DIR to a LibriSpeech folder with test-other")
    transformers = pytest.importorskip("transformers")
    import soundfile as sf

    extractor = transformers.WhisperFeatureExtractor(feature_size=80)
    files = sorted(glob.glob(os.path.join(root, "test-other", "*", "*", "*.flac")))[::33][:3]
    assert len(files) == 3
    for path in files:
        audio, rate = sf.read(path, dtype="float32")
        assert rate == 16000 and len(audio) < 30 * 16000
        ours = log_mel(audio)
        ref = extractor(audio, sampling_rate=16000, return_tensors="np").input_features[0].T
        n = len(audio) // 160
        assert ours.shape == (n, 80)
        assert np.abs(ref[:n] - ours).max() < TOLERANCE, path
        floor = ref[n + 10 :]  # frames over the padding only: all at Whisper's floor
        assert np.ptp(floor) == 0
        _, top = log10_mel(audio)
        assert abs((top - 8.0 + 4.0) / 4.0 - floor[0, 0]) < TOLERANCE, path
