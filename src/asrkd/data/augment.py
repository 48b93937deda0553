"""Seeded numpy augmentation: resampling/speed change, reverberation, additive noise, gain.

All functions take and return float32 mono signals; randomness comes only from the numpy Generator
passed in, so one seed gives one signal. Noise is synthetic: white, pink (1/f power) or babble
(several other synthetic voices summed). Impulse responses are synthetic too: a direct path plus
exponentially decaying Gaussian noise with the requested RT60.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from asrkd.config import CorpusConfig

RT60_DECAY_DB = 60.0  # RT60: the time the reverberant energy takes to fall by 60 dB
MAX_FFT = 1 << 24  # longest resampling transform: 17 minutes at 16 kHz
PEAK_LIMIT = 0.99  # scale an utterance down when a gain would clip it (the SNR is unchanged)


@lru_cache(maxsize=1)
def _smooth_sizes() -> np.ndarray:
    """Sorted FFT lengths up to 2^24 with no prime factor above 11 (fast in pocketfft)."""
    sizes = np.array([1], np.int64)
    for prime in (2, 3, 5, 7, 11):
        powers = prime ** np.arange(int(np.log(MAX_FFT) / np.log(prime)) + 1, dtype=np.int64)
        sizes = np.outer(sizes, powers).ravel()
        sizes = sizes[sizes <= MAX_FFT]
    return np.sort(sizes)


def _fft_sizes(n_min: int, ratio: float) -> tuple[int, int]:
    """(n_in, n_out): n_in >= n_min a fast FFT length, n_out = round(n_in * ratio) a fair one.

    An FFT whose length has a large prime factor is 10-20x slower. n_in is 11-smooth; n_out,
    tied to n_in by the ratio, is taken from the first candidates with no prime factor above 47.
    """
    sizes = _smooth_sizes()
    candidates = sizes[np.searchsorted(sizes, n_min) :][:64]
    outs = np.round(candidates * ratio).astype(np.int64)
    rest = outs.copy()
    for prime in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47):
        for _ in range(int(np.log2(MAX_FFT))):
            divisible = rest % prime == 0
            if not divisible.any():
                break
            rest[divisible] //= prime
    hits = np.nonzero(rest == 1)[0]
    best = hits[0] if len(hits) else 0  # no hit: still correct, only slower
    return int(candidates[best]), int(outs[best])


def resample(x: np.ndarray, sr_in: float, sr_out: float) -> np.ndarray:
    """Band-limited resampling by zero-padding or truncating the spectrum (ideal low-pass).

    Zero padding both ends keeps the FFT's circular wrap-around out of the signal; the padded
    length is picked so that both transforms have fast sizes.
    """
    if sr_in == sr_out or len(x) == 0:
        return x.astype(np.float32)
    pad = 256
    n_in, n_out = _fft_sizes(len(x) + 2 * pad, sr_out / sr_in)
    spec = np.fft.rfft(np.pad(x.astype(np.float64), (pad, n_in - len(x) - pad)))
    n_bins = n_out // 2 + 1
    if n_bins <= len(spec):
        spec = spec[:n_bins]
    else:
        spec = np.concatenate([spec, np.zeros(n_bins - len(spec), spec.dtype)])
    y = np.fft.irfft(spec, n_out) * (n_out / n_in)
    pad_out = round(pad * n_out / n_in)
    n_keep = round(len(x) * sr_out / sr_in)
    return y[pad_out : pad_out + n_keep].astype(np.float32)


def change_speed(x: np.ndarray, factor: float) -> np.ndarray:
    """Kaldi-style speed perturbation: factor 1.1 is 10% faster and higher, 1/1.1 the length."""
    return resample(x, factor, 1.0)


def white_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal(n).astype(np.float32)


def pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Gaussian noise with 1/f power: white noise's spectrum scaled by 1/sqrt(f)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(len(spec), dtype=np.float64)
    freqs[0] = 1.0  # keep DC finite; it is removed below anyway
    spec /= np.sqrt(freqs)
    spec[0] = 0.0
    return np.fft.irfft(spec, n).astype(np.float32)


def babble_noise(rng: np.random.Generator, bank: np.ndarray, n: int) -> np.ndarray:
    """n samples of a looped babble track, from a random starting point."""
    if len(bank) == 0:
        return white_noise(rng, n)
    start = int(rng.integers(len(bank)))
    return np.resize(np.roll(bank, -start), n).astype(np.float32)


def add_noise(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """x plus noise scaled so that 10 log10(mean(x^2) / mean(scaled noise^2)) = snr_db."""
    p_signal = float(np.mean(x.astype(np.float64) ** 2))
    p_noise = float(np.mean(noise.astype(np.float64) ** 2))
    if p_signal == 0.0 or p_noise == 0.0:
        return x
    scale = np.sqrt(p_signal / (p_noise * 10.0 ** (snr_db / 10.0)))
    return (x + scale * noise[: len(x)]).astype(np.float32)


def synthetic_rir(rng: np.random.Generator, sr: int, rt60: float, drr_db: float) -> np.ndarray:
    """A direct-path impulse then a Gaussian tail decaying 60 dB over rt60 seconds.

    drr_db: direct-to-reverberant energy ratio; the tail's energy is the direct path's / 10^(drr/10).
    """
    n = max(int(rt60 * sr), 2)
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * 10.0 ** (-RT60_DECAY_DB / 20.0 * t / rt60)
    tail[0] = 0.0
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / np.sum(tail**2))
    tail[0] = 1.0
    return tail.astype(np.float32)


def reverberate(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with an impulse response (FFT), keep len(x) samples and the input's RMS."""
    n = len(x) + len(rir) - 1
    n_fft = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, n_fft) * np.fft.rfft(rir, n_fft), n_fft)[: len(x)]
    rms_in, rms_out = np.sqrt(np.mean(x**2)), np.sqrt(np.mean(y**2))
    return (y * (rms_in / rms_out if rms_out > 0 else 1.0)).astype(np.float32)


@dataclass(frozen=True)
class AugmentInfo:
    """What was done to one utterance (written to the corpus notes, used by the tests)."""

    speed: float
    rt60: float = 0.0  # 0 = no reverberation
    noise: str = ""  # "" = no noise
    snr_db: float = float("inf")
    gain_db: float = 0.0


def augment(
    x: np.ndarray, sr: int, rng: np.random.Generator, cfg: CorpusConfig, babble: np.ndarray
) -> tuple[np.ndarray, AugmentInfo]:
    """Speed change, then (maybe) reverberation, (maybe) noise, then a gain; x at sr Hz.

    The clean signal is first set to cfg.level_db RMS so that volume_db is relative to a known level.
    """
    speed = float(rng.uniform(*cfg.speed_range))
    y = change_speed(x, speed)
    rms = np.sqrt(np.mean(y.astype(np.float64) ** 2))
    if rms > 0:
        y = (y * 10.0 ** (cfg.level_db / 20.0) / rms).astype(np.float32)
    rt60 = 0.0
    if rng.random() < cfg.reverb_prob:
        rt60 = float(rng.uniform(*cfg.rt60))
        y = reverberate(y, synthetic_rir(rng, sr, rt60, float(rng.uniform(*cfg.drr_db))))
    noise, snr = "", float("inf")
    if rng.random() < cfg.noise_prob:
        noise = str(cfg.noise_types[int(rng.integers(len(cfg.noise_types)))])
        snr = float(rng.uniform(*cfg.snr_db))
        y = add_noise(y, make_noise(rng, noise, len(y), babble), snr)
    gain = float(rng.uniform(*cfg.volume_db))
    y = y * 10.0 ** (gain / 20.0)
    peak = float(np.max(np.abs(y))) if len(y) else 0.0
    if peak > PEAK_LIMIT:
        y = y * (PEAK_LIMIT / peak)
    return y.astype(np.float32), AugmentInfo(speed, rt60, noise, snr, gain)


def make_noise(rng: np.random.Generator, kind: str, n: int, babble: np.ndarray) -> np.ndarray:
    if kind == "white":
        return white_noise(rng, n)
    if kind == "pink":
        return pink_noise(rng, n)
    if kind == "babble":
        return babble_noise(rng, babble, n)
    raise ValueError(f"unknown noise type {kind!r}")
