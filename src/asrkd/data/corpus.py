"""The embedded default corpus: synthetic speech written in the LibriSpeech layout (`asrkd corpus`).

    <root>/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<utt:04d>.flac   16 kHz mono FLAC
    <root>/<part>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt         "<utt-id> TRANSCRIPT"
    <root>/voices.json, <root>/VOICES.md                                     speaker id -> voice

with parts ``train``, ``dev`` and ``test`` whose speakers (synthetic voices) are disjoint, so the
test measures generalisation to new voices. Everything is made offline: sentences from
asrkd.data.sentences, speech from asrkd.data.tts, noise, reverberation and speed changes from
asrkd.data.augment. The audio is a function of the CorpusConfig (seed included) and the engines'
versions; a completion marker holding their hash makes a second build return at once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from asrkd.config import CorpusConfig, to_dict
from asrkd.data.augment import augment, resample
from asrkd.data.sentences import load_words, sample_sentence
from asrkd.data.tts import (
    ENGINES,
    ESPEAK_ACCENTS,
    ESPEAK_VARIANTS,
    HIBARI_VOICE,
    VoiceSpec,
    engine_versions,
)
from asrkd.processes import spawn_pool

CORPUS_FORMAT = 1  # bump whenever the same config would start producing different audio
PARTS = ("train", "dev", "test")
SPEAKER_ID_BASE = {"train": 1000, "dev": 2000, "test": 3000}  # speaker 2004 = 4th dev voice
MARKER = ".asrkd-corpus-complete"
OWN_ENTRIES = {*PARTS, "voices.json", "VOICES.md", MARKER}
BABBLE_VOICES = 4  # other voices of the same part summed into one speaker's babble noise
BABBLE_SECONDS = 8.0  # babble track length, looped as needed


@dataclass(frozen=True)
class Speaker:
    """One speaker to synthesise: a voice, an audio budget and its own seed."""

    part: str
    speaker_id: int
    voice: VoiceSpec
    seconds: float
    seed: int
    babble_voices: tuple[VoiceSpec, ...]


def corpus_hash(cfg: CorpusConfig) -> str:
    """Hash of everything that determines the audio: config (less num_jobs), format, engines, words."""
    config = {k: v for k, v in to_dict(cfg).items() if k != "num_jobs"}
    words = resources.files("asrkd.data").joinpath("words.txt").read_bytes()
    key = {
        "config": config,
        "format": CORPUS_FORMAT,
        "engines": engine_versions(cfg.engines),
        "words": hashlib.sha256(words).hexdigest(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _lerp(bounds: tuple[float, float], q: float) -> float:
    return float(bounds[0] + (bounds[1] - bounds[0]) * q)


def _espeak_pairs(cfg: CorpusConfig, counts: dict[str, int], rng: np.random.Generator) -> dict:
    """(accent, variant) pairs per part: each pair used once, variants disjoint between parts."""
    variants = list(rng.permutation(ESPEAK_VARIANTS))
    pairs: dict[str, list[tuple[str, str]]] = {}
    for part in ("test", "dev", "train"):
        n_variants = max(2, -(-counts[part] // len(ESPEAK_ACCENTS)))
        if part == "train":
            n_variants = len(variants)
        mine, variants = variants[:n_variants], variants[n_variants:]
        options = [(a, v) for v in mine for a in ESPEAK_ACCENTS]
        if len(options) < counts[part]:
            raise ValueError(f"too many espeak voices for the {part} part ({counts[part]})")
        pairs[part] = [options[i] for i in rng.permutation(len(options))[: counts[part]]]
    return pairs


def plan_voices(cfg: CorpusConfig) -> dict[str, list[VoiceSpec]]:
    """The voices of each part; parts take turns over cfg.engines, and no voice is used twice."""
    rng = np.random.default_rng([cfg.seed, 1])
    n_voices = {"train": cfg.n_train_voices, "dev": cfg.n_dev_voices, "test": cfg.n_test_voices}
    engines = {
        p: [cfg.engines[i % len(cfg.engines)] for i in range(n)] for p, n in n_voices.items()
    }
    counts = {p: e.count("espeak") for p, e in engines.items()}
    pairs = _espeak_pairs(cfg, counts, rng)
    voices: dict[str, list[VoiceSpec]] = {}
    for part in PARTS:
        voices[part] = []
        for engine in engines[part]:
            q = float(rng.uniform())  # pitch and vocal-tract length loosely go together
            pitch = _lerp(cfg.voice_pitch, q)
            rate = _lerp(cfg.voice_rate, float(rng.uniform()))
            if engine == "espeak":
                accent, variant = pairs[part].pop()
                voices[part].append(VoiceSpec("espeak", accent, variant, pitch, rate))
            else:
                q_formant = float(np.clip(q + rng.uniform(-0.3, 0.3), 0.0, 1.0))
                formant = _lerp(cfg.voice_formant, q_formant)
                voices[part].append(VoiceSpec(engine, HIBARI_VOICE, "", pitch, rate, formant))
    return voices


def plan_speakers(cfg: CorpusConfig) -> list[Speaker]:
    """Every speaker of every part, with its share of the part's audio budget."""
    fractions = {
        "train": 1.0 - cfg.dev_fraction - cfg.test_fraction,
        "dev": cfg.dev_fraction,
        "test": cfg.test_fraction,
    }
    speakers = []
    for part, voices in plan_voices(cfg).items():
        seconds = cfg.hours * 3600.0 * fractions[part] / len(voices)
        for i, voice in enumerate(voices):
            speaker_id = SPEAKER_ID_BASE[part] + i + 1
            others = [v for v in voices if v != voice] or [voice]
            rng = np.random.default_rng([cfg.seed, 2, speaker_id])
            babble = tuple(others[j] for j in rng.choice(len(others), BABBLE_VOICES))
            seed = int(np.random.SeedSequence([cfg.seed, 3, speaker_id]).generate_state(1)[0])
            speakers.append(Speaker(part, speaker_id, voice, seconds, seed, babble))
    return speakers


_ENGINE_CACHE: dict[str, Any] = {}  # one engine instance per worker process, made on first use


def synthesize(text: str, voice: VoiceSpec, seed: int, sample_rate: int) -> np.ndarray:
    """Clean speech for text in voice, at sample_rate."""
    if voice.engine not in _ENGINE_CACHE:
        _ENGINE_CACHE[voice.engine] = ENGINES[voice.engine]()
    engine = _ENGINE_CACHE[voice.engine]
    audio = engine(text, voice, seed)
    if len(audio) == 0:
        raise RuntimeError(f"{voice.label} produced no audio for {text!r}")
    return resample(audio, engine.sample_rate, sample_rate)


def make_babble(spk: Speaker, cfg: CorpusConfig, rng: np.random.Generator) -> np.ndarray:
    """Several other voices of the same part, each at unit RMS, summed at random offsets."""
    words = load_words()
    n = int(BABBLE_SECONDS * cfg.sample_rate)
    track = np.zeros(n, np.float32)
    for voice in spk.babble_voices:
        text = sample_sentence(rng, words, cfg.max_words, cfg.max_words, cfg.zipf_share)
        speech = synthesize(text, voice, int(rng.integers(2**31)), cfg.sample_rate)[:n]
        speech = speech / max(float(np.sqrt(np.mean(speech**2))), 1e-8)
        padded = np.zeros(n, np.float32)
        padded[: len(speech)] = speech
        track += np.roll(padded, int(rng.integers(n)))
    return track


def synthesize_speaker(spk: Speaker, cfg: CorpusConfig, root: Path) -> dict[str, Any]:
    """Write one speaker's chapters (audio and transcripts) under root; returns its statistics.

    Utterances are synthesised until the speaker's audio budget is spent, then split into
    cfg.chapters_per_speaker consecutive chapters.
    """
    rng = np.random.default_rng(spk.seed)
    words = load_words()
    babble = make_babble(spk, cfg, rng)
    utts: list[tuple[str, np.ndarray]] = []
    total = 0.0
    # stop half a mean utterance early, so that budgets are met on average rather than exceeded
    while not utts or total + 0.5 * total / len(utts) < spk.seconds:
        text = sample_sentence(rng, words, cfg.min_words, cfg.max_words, cfg.zipf_share)
        clean = synthesize(text, spk.voice, int(rng.integers(2**31)), cfg.sample_rate)
        audio, _ = augment(clean, cfg.sample_rate, rng, cfg, babble)
        utts.append((text, audio))
        total += len(audio) / cfg.sample_rate
    n_chapters = min(cfg.chapters_per_speaker, len(utts))
    bounds = np.linspace(0, len(utts), n_chapters + 1).round().astype(int)
    for c in range(n_chapters):
        chapter = spk.speaker_id * 10 + c
        folder = root / spk.part / str(spk.speaker_id) / str(chapter)
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for i, (text, audio) in enumerate(utts[bounds[c] : bounds[c + 1]]):
            utt_id = f"{spk.speaker_id}-{chapter}-{i:04d}"
            sf.write(folder / f"{utt_id}.flac", audio, cfg.sample_rate, subtype="PCM_16")
            lines.append(f"{utt_id} {text}\n")
        (folder / f"{spk.speaker_id}-{chapter}.trans.txt").write_text("".join(lines))
    return {"speaker": spk.speaker_id, "utterances": len(utts), "seconds": round(total, 2)}


def _prepare_root(root: Path) -> None:
    """Empty a corpus folder of a previous (partial or other-config) build; refuse foreign files."""
    if root.exists():
        foreign = sorted(p.name for p in root.iterdir() if p.name not in OWN_ENTRIES)
        if foreign:
            raise FileExistsError(f"{root} holds files that are not a corpus: {foreign[:5]}")
        for part in PARTS:
            shutil.rmtree(root / part, ignore_errors=True)
        (root / MARKER).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)


def _run_speakers(
    speakers: list[Speaker], cfg: CorpusConfig, root: Path, progress: bool
) -> list[dict[str, Any]]:
    """synthesize_speaker for each speaker, in cfg.num_jobs processes (the output is the same)."""
    from tqdm import tqdm

    bar = tqdm(total=len(speakers), desc="corpus speakers", disable=not progress)
    stats = []
    if cfg.num_jobs == 1:
        for spk in speakers:
            stats.append(synthesize_speaker(spk, cfg, root))
            bar.update()
    else:
        with spawn_pool(cfg.num_jobs) as pool:
            futures = [pool.submit(synthesize_speaker, spk, cfg, root) for spk in speakers]
            for future in as_completed(futures):
                stats.append(future.result())
                bar.update()
    bar.close()
    return sorted(stats, key=lambda s: s["speaker"])


def _write_voices(root: Path, speakers: list[Speaker], stats: list[dict[str, Any]]) -> None:
    """voices.json and VOICES.md: which voice, part and how much audio each speaker id is."""
    by_id = {s["speaker"]: s for s in stats}
    rows = [
        {"speaker": spk.speaker_id, "part": spk.part, **asdict(spk.voice), **by_id[spk.speaker_id]}
        for spk in speakers
    ]
    (root / "voices.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "# Voices of the synthetic corpus\n",
        "Speakers are disjoint between parts. pitch and rate multiply the engine's defaults;",
        "formant > 1 is a shorter vocal tract (hibari voices only). Engines: hibari = hibari-tts",
        "(Apache-2.0), espeak = libespeak-ng from espeakng-loader (GPL-3.0).\n",
        "| speaker | part | engine | voice | variant | pitch | rate | formant | utts | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['speaker']} | {r['part']} | {r['engine']} | {r['name']} | {r['variant']} "
            f"| {r['pitch']:.2f} | {r['rate']:.2f} | {r['formant']:.2f} | {r['utterances']} "
            f"| {r['seconds']:.1f} |"
        )
    (root / "VOICES.md").write_text("\n".join(lines) + "\n")


def build_corpus(cfg: CorpusConfig, out_dir: str | Path, progress: bool = True) -> Path:
    """Synthesise the corpus into out_dir (the corpus root, returned); idempotent.

    A completed build with the same corpus_hash returns at once; anything else in out_dir that
    this function wrote before is replaced.
    """
    root = Path(out_dir)
    key = corpus_hash(cfg)
    marker = root / MARKER
    if marker.exists() and json.loads(marker.read_text()).get("hash") == key:
        return root
    start = time.perf_counter()
    _prepare_root(root)
    speakers = plan_speakers(cfg)
    stats = _run_speakers(speakers, cfg, root, progress)
    _write_voices(root, speakers, stats)
    seconds = sum(s["seconds"] for s in stats)
    summary = {
        "hash": key,
        "config": to_dict(cfg),
        "engines": engine_versions(cfg.engines),
        "speakers": len(speakers),
        "utterances": sum(s["utterances"] for s in stats),
        "hours": round(seconds / 3600.0, 4),
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    marker.write_text(json.dumps(summary, indent=1) + "\n")  # written last: the build is complete
    return root
