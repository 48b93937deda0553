"""Offline speech synthesis engines for the embedded corpus, and the voices they can take.

Two engines, both pip-installable and needing no network or system package:

- ``hibari`` (package ``hibari-tts``, Apache-2.0, the project's own licence): a small neural
  vocoder distilled from one Kokoro-82M voice, ~100x realtime on one core. Its network predicts a
  spectral envelope and an F0 curve per 12.5 ms frame, so new speakers are made from the one voice
  in the wheel by scaling F0 (pitch) and warping the frequency axis of the envelope (vocal-tract
  length, as in VTLP).
- ``espeak`` (package ``espeakng-loader``, which ships libespeak-ng and its voice data): formant
  synthesis, ~1000x realtime, eight English accents times many voice variants. libespeak-ng is
  **GPL-3.0**: it is loaded lazily through ctypes only when a corpus config names it, and nothing in
  asrkd imports it otherwise; a distribution that must stay free of GPL code can drop the package
  and set ``corpus.engines=[hibari]``.

Each engine turns ``(text, VoiceSpec, seed)`` into float32 mono audio at its own sample rate.
"""

from __future__ import annotations

import _ctypes
import ctypes
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

# espeak-ng accents (voice file names under espeak-ng-data/lang/gmw; "en" is British) and variants
# (espeak-ng-data/voices/!v). Only variants that sound like a plain human voice are kept:
# the novelty ones (whisper, croak, robots) would teach the recogniser nothing useful.
ESPEAK_ACCENTS = (
    "en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
    "en-029", "en-us-nyc",
)  # fmt: skip
ESPEAK_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4",
)  # fmt: skip
# espeak-ng's default, 175 words per minute, is ~19 characters/s: faster than read speech
# (LibriSpeech ~15/s) and hard for CTC after subsampling. 150 matches hibari's pace.
ESPEAK_RATE_WPM = 150
ESPEAK_PITCH = 50  # espeak-ng's default base pitch parameter (0-100)
HIBARI_VOICE = "heart"  # the one voice inside the hibari-tts wheel (others need a download)
HIBARI_VOICED_HZ = 40.0  # hibari.dsp treats F0 below this as unvoiced


@dataclass(frozen=True)
class VoiceSpec:
    """One synthetic speaker: an engine's voice plus pitch, rate and vocal-tract changes.

    pitch and rate multiply the engine's defaults; formant > 1 shortens the vocal tract (formants
    move up). espeak voices take their timbre from `variant` and keep formant = 1.
    """

    engine: str
    name: str  # espeak accent, or the hibari voice
    variant: str = ""
    pitch: float = 1.0
    rate: float = 1.0
    formant: float = 1.0

    @property
    def label(self) -> str:
        base = f"{self.name}+{self.variant}" if self.variant else self.name
        return f"{self.engine}:{base} pitch={self.pitch:.2f} rate={self.rate:.2f} formant={self.formant:.2f}"


class Engine(Protocol):
    sample_rate: int

    def __call__(self, text: str, voice: VoiceSpec, seed: int) -> np.ndarray: ...


class EspeakEngine:
    """libespeak-ng (GPL-3.0) through ctypes, synchronous mode with a synth callback.

    libespeak-ng keeps hidden state between utterances (its voicing noise continues from one
    utterance to the next, whatever seeds are set), so the same text would come out differently
    depending on what was said before. Every utterance therefore runs in a freshly loaded copy of
    the library: a private copy of the .so, dlopen'ed, used once and dlclose'd (~4 ms). Its noise
    generators (seeded from the clock by default) are seeded from the utterance's seed.
    """

    def __init__(self) -> None:
        try:
            import espeakng_loader  # GPL-3.0 library: imported only when an espeak voice is used
        except ImportError as err:
            raise ImportError(
                "the espeak corpus engine needs the optional GPL-3.0 package espeakng-loader: "
                "pip install 'asrkd[espeak]', or set corpus.engines=[hibari]"
            ) from err

        self._data_path = espeakng_loader.get_data_path().encode()
        self._dir = tempfile.mkdtemp(prefix="asrkd-espeak-")
        weakref.finalize(self, shutil.rmtree, self._dir, True)
        # a private path: nobody else in the process holds it open, so dlclose really unloads it
        self._lib_path = shutil.copy(espeakng_loader.get_library_path(), self._dir)
        self._chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(
            ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
        )
        self._callback = callback_type(self._on_audio)  # kept alive while the library uses it
        self.sample_rate = 22050
        with self._fresh_library():
            pass  # sets sample_rate

    def _on_audio(self, wav: Any, n_samples: int, events: Any) -> int:
        if n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        return 0  # 0 = continue synthesis

    @contextmanager
    def _fresh_library(self) -> Iterator[Any]:
        lib = ctypes.CDLL(self._lib_path, mode=ctypes.RTLD_LOCAL)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        # AUDIO_OUTPUT_SYNCHRONOUS=2; espeakINITIALIZE_DONT_EXIT=0x8000 (return errors, never exit)
        self.sample_rate = lib.espeak_Initialize(2, 0, self._data_path, 0x8000)
        try:
            if self.sample_rate <= 0:
                raise RuntimeError("espeak_Initialize failed")
            lib.espeak_SetSynthCallback(self._callback)
            yield lib
        finally:
            lib.espeak_Terminate()
            _ctypes.dlclose(lib._handle)

    def __call__(self, text: str, voice: VoiceSpec, seed: int) -> np.ndarray:
        name = f"{voice.name}+{voice.variant}" if voice.variant else voice.name
        self._chunks.clear()
        with self._fresh_library() as lib:
            # espeak_Initialize seeds espeak's own noise generator from the clock; libc's rand()
            # is used too. Seeding both makes the breathy variants (f1-f5...) repeatable.
            lib.espeak_ng_SetRandSeed(ctypes.c_long(seed % 2**31))
            ctypes.CDLL(None).srand(ctypes.c_uint(seed % 2**32))
            if lib.espeak_SetVoiceByName(name.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {name!r}")
            lib.espeak_SetParameter(1, round(ESPEAK_RATE_WPM * voice.rate), 0)  # espeakRATE
            lib.espeak_SetParameter(3, int(np.clip(round(ESPEAK_PITCH * voice.pitch), 0, 100)), 0)
            data = text.lower().encode("utf-8") + b"\0"
            # position 0, POS_CHARACTER=1, end 0, espeakCHARS_UTF8=1
            if lib.espeak_Synth(data, len(data), 0, 1, 0, 1, None, None) != 0:
                raise RuntimeError(f"espeak_Synth failed for {text!r}")
            lib.espeak_Synchronize()
        if not self._chunks:
            return np.zeros(0, np.float32)
        return np.concatenate(self._chunks).astype(np.float32) / 32768.0


class HibariEngine:
    """hibari-tts (Apache-2.0), its bundled voice reshaped per speaker.

    Runs the ONNX network itself, then edits its outputs (F0 curve, spectral envelopes) before
    hibari's own vocoder turns them into audio, so one voice yields many speakers.
    """

    def __init__(self) -> None:
        from hibari import Hibari

        self.tts = Hibari(voice=HIBARI_VOICE, threads=1)
        self.sample_rate = int(self.tts.sample_rate)

    def __call__(self, text: str, voice: VoiceSpec, seed: int) -> np.ndarray:
        from hibari import dsp

        rng = np.random.default_rng(seed)
        parts = []
        # lower case: hibari reads an all-capitals word as an acronym, letter by letter
        for phonemes in self.tts.phonemize(text.lower()):
            ids = np.asarray([self.tts.ids(phonemes)], np.int64)
            speed = np.asarray([voice.rate], np.float32)
            outs = [o[0] for o in self.tts.sess.run(None, {"ids": ids, "speed": speed})]
            *envelopes, f0 = outs  # lh, th, ln, lr, phi: [bins, frames]; f0: [frames]
            envelopes = [warp_frequency_axis(e, voice.formant) for e in envelopes]
            f0 = np.where(f0 > HIBARI_VOICED_HZ, f0 * voice.pitch, f0).astype(np.float32)
            parts.append(dsp.synth(*envelopes, f0, rng))
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def warp_frequency_axis(spec: np.ndarray, alpha: float) -> np.ndarray:
    """Move spectral features to alpha times their frequency (linear interpolation over bins).

    spec: (n_bins, n_frames). alpha > 1 moves formants up, as a shorter vocal tract does.
    """
    if alpha == 1.0:
        return spec
    n_bins = spec.shape[0]
    src = np.clip(np.arange(n_bins, dtype=np.float32) / alpha, 0, n_bins - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_bins - 1)
    frac = (src - lo)[:, None]
    return ((1.0 - frac) * spec[lo] + frac * spec[hi]).astype(spec.dtype)


ENGINES: dict[str, type] = {"hibari": HibariEngine, "espeak": EspeakEngine}


def engine_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed package version behind each engine (part of the corpus cache key)."""
    from importlib.metadata import PackageNotFoundError, version

    packages = {"hibari": "hibari-tts", "espeak": "espeakng-loader"}
    out = {}
    for name in names:
        try:
            out[name] = version(packages[name])
        except PackageNotFoundError:
            out[name] = "missing"
    return out
