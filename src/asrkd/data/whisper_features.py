"""Whisper's log-mel features (features.kind=whisper), on the unpadded utterance.

Whisper (openai/whisper `log_mel_spectrogram`, transformers' `WhisperFeatureExtractor`) pads the
audio with zeros to 30 s, takes a centred STFT (reflection before the first sample), drops the
last frame, and floors log10 of the power mel spectrogram at (its maximum - 8) before mapping it
by (x + 4) / 4. `log_mel` gives exactly Whisper's first n_samples // 160 frames of that, for any
length: zeros after the audio (what the 30-s padding puts there), and the maximum taken over every
frame that sees audio (later frames are silence, floored at 1e-10, so they never raise it).
Longer than 30 s, where Whisper would cut, the same definition simply continues. (One exception:
audio within 200 samples of exactly 30 s, where Whisper's STFT reflects the audio's own end into
its last frame instead of zeros; measured: 0.006 in that one frame.)

`log_mel` needs numpy only (a torch-free transcribe path); `WhisperLogMel` (made on first use,
because lhotse imports torch) is the lhotse FeatureExtractor that `asrkd prepare` stores.
lhotse's own `WhisperFbank` is not used: it reflects at the end instead of padding with zeros,
takes the maximum over its own frames only, pads its output with zero frames to
round(n_samples / 160) and builds its filters with librosa (not installed here), so its last
frames and sometimes its floor differ from Whisper's.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms window
HOP_LENGTH = 160  # 10 ms: 100 frames per second
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples in a Whisper input
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 frames in a Whisper input
LOG_RANGE = 8.0  # decades kept below the loudest mel value
MEL_FLOOR = 1e-10
FEATURE_TYPE = "asrkd-whisper-log-mel"  # lhotse's `features.type` of stored features


def _hertz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, Whisper's): linear to 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    mels = 3.0 * freq / 200.0
    logstep = 27.0 / np.log(6.4)
    return np.where(freq >= 1000.0, 15.0 + np.log(np.maximum(freq, 1e-12) / 1000.0) * logstep, mels)


def _mel_to_hertz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    logstep = np.log(6.4) / 27.0
    return np.where(mels >= 15.0, 1000.0 * np.exp(logstep * (mels - 15.0)), 200.0 * mels / 3.0)


@functools.lru_cache(maxsize=4)
def mel_filters(n_mels: int = 80) -> np.ndarray:
    """(N_FFT // 2 + 1, n_mels) float64 triangular filters, slaney scale and slaney area
    normalisation, 0 to 8 kHz: transformers' `mel_filter_bank(..., norm="slaney",
    mel_scale="slaney")` as WhisperFeatureExtractor calls it (= librosa.filters.mel)."""
    fft_freqs = np.linspace(0, SAMPLE_RATE // 2, N_FFT // 2 + 1)
    mel_points = np.linspace(_hertz_to_mel(0.0), _hertz_to_mel(SAMPLE_RATE / 2), n_mels + 2)
    edges = _mel_to_hertz(mel_points)  # (n_mels + 2,)
    slopes = edges[None, :] - fft_freqs[:, None]  # (n_bins, n_mels + 2)
    widths = np.diff(edges)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (edges[2:] - edges[:-2]))[None, :]


def n_frames_of(n_samples: int) -> int:
    """Frames `log_mel` gives for n_samples: Whisper's n_samples // 160."""
    return n_samples // HOP_LENGTH


def log_mel(samples: np.ndarray, n_mels: int = 80, n_frames: int | None = None) -> np.ndarray:
    """(n_samples,) mono audio at 16 kHz -> (n_samples // 160, n_mels) float32 Whisper log-mel
    (or its first `n_frames` frames, at most one more than that).

    Computed in float64 from the float32 samples (Whisper casts to float32 first)."""
    samples = np.asarray(samples)
    log_spec, top = log10_mel(samples, n_mels)
    n_frames = n_frames_of(samples.shape[-1]) if n_frames is None else n_frames
    out = np.maximum(log_spec[:n_frames], top - LOG_RANGE)
    return ((out + 4.0) / 4.0).astype(np.float32)


def log10_mel(samples: np.ndarray, n_mels: int = 80) -> tuple[np.ndarray, float]:
    """(log10 power mel (n_seen, n_mels) of every frame that sees audio, floored at 1e-10;
    the maximum Whisper's floor is taken from, i.e. over its first 3000 frames)."""
    x = np.asarray(samples, dtype=np.float32).astype(np.float64)
    if x.ndim != 1:
        raise ValueError(f"log_mel expects mono samples (n_samples,), got shape {x.shape}")
    n = x.shape[0]
    half = N_FFT // 2
    # Frames that see audio: frame k covers [k * HOP - half, k * HOP + half) of the audio.
    n_seen = -(-(n + half) // HOP_LENGTH)
    # Whisper's maximum runs over its 3000 frames only (frame 3000 is dropped before it).
    n_max = n_seen if n > N_SAMPLES else min(n_seen, N_FRAMES)
    n_zeros = max(half, (n_seen - 1) * HOP_LENGTH + N_FFT - half - n)
    padded = np.pad(np.pad(x, (0, n_zeros)), (half, 0), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:n_seen]
    window = np.hanning(N_FFT + 1)[:-1]  # periodic Hann, as torch.hann_window(400)
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2  # (n_seen, N_FFT // 2 + 1)
    log_spec = np.log10(np.maximum(power @ mel_filters(n_mels), MEL_FLOOR))
    return log_spec, float(log_spec[:n_max].max())


@dataclass
class WhisperLogMelConfig:
    num_filters: int = 80

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict) -> WhisperLogMelConfig:
        return WhisperLogMelConfig(**data)


@functools.cache
def _lhotse_class() -> type:
    """WhisperLogMel: a lhotse FeatureExtractor around `log_mel` (built on first use)."""
    from lhotse.features.base import FeatureExtractor
    from lhotse.utils import compute_num_frames_from_samples

    class WhisperLogMel(FeatureExtractor):
        name = FEATURE_TYPE
        config_type = WhisperLogMelConfig

        @property
        def frame_shift(self) -> float:
            return HOP_LENGTH / SAMPLE_RATE

        def feature_dim(self, sampling_rate: int) -> int:
            return self.config.num_filters

        def extract(self, samples, sampling_rate: int) -> np.ndarray:
            if sampling_rate != SAMPLE_RATE:
                raise ValueError(
                    f"Whisper features need {SAMPLE_RATE} Hz audio, got {sampling_rate}"
                )
            samples = np.asarray(samples, dtype=np.float32)
            if samples.ndim == 2:  # lhotse passes (channels, n_samples)
                if samples.shape[0] != 1:
                    raise ValueError("Whisper features need mono audio")
                samples = samples[0]
            # lhotse requires round(n / 160) frames (lhotse.utils.compute_num_frames), one more
            # than Whisper's n // 160 for half the lengths: the extra one is Whisper's next frame,
            # and batches drop it (asrkd.data.dataset.collate), so models see n // 160 frames.
            n_frames = compute_num_frames_from_samples(
                samples.shape[-1], self.frame_shift, SAMPLE_RATE
            )
            return log_mel(samples, self.config.num_filters, n_frames)

    WhisperLogMel.__module__ = __name__  # picklable as asrkd.data.whisper_features.WhisperLogMel
    WhisperLogMel.__qualname__ = "WhisperLogMel"
    return WhisperLogMel


def lhotse_extractor(n_mels: int = 80):
    """The lhotse FeatureExtractor `asrkd prepare` stores Whisper features with."""
    return _lhotse_class()(WhisperLogMelConfig(num_filters=n_mels))


def __getattr__(name: str):
    if name == "WhisperLogMel":  # for pickle (prepare's worker processes)
        return _lhotse_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
