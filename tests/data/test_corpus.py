"""The embedded synthetic corpus: voices, sentences, augmentation, layout, determinism, caching."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrkd.config import ConfigError, CorpusConfig
from asrkd.data import augment as aug
from asrkd.data.corpus import MARKER, build_corpus, plan_speakers, plan_voices, synthesize
from asrkd.data.sentences import load_words, sample_sentence
from asrkd.data.tts import VoiceSpec

TINY = {"hours": 0.015, "n_train_voices": 2, "n_dev_voices": 2, "n_test_voices": 2, "num_jobs": 1}
UTT_RE = re.compile(r"^(train|dev|test)/(\d+)/(\d+)/(\d+)-(\d+)-(\d{4})\.flac$")


def _power_db(x: np.ndarray) -> float:
    return 10.0 * np.log10(np.mean(np.asarray(x, np.float64) ** 2))


def _tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every audio and transcript file, by path relative to root."""
    files = sorted(p for p in root.rglob("*") if p.suffix in (".flac", ".txt"))
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("corpus") / "synthetic"
    start = time.perf_counter()
    root = build_corpus(CorpusConfig(**TINY), out, progress=False)
    return root, time.perf_counter() - start


def test_default_voices_are_many_distinct_and_disjoint_between_parts() -> None:
    cfg = CorpusConfig()
    voices = plan_voices(cfg)
    all_voices = [v for part in voices.values() for v in part]
    assert len(set(all_voices)) == len(all_voices) >= 24
    for part, part_voices in voices.items():
        assert {v.engine for v in part_voices} == set(cfg.engines), part
    # espeak timbres (variants) never cross parts: test voices are new, not re-pitched train ones
    variants = {p: {v.variant for v in vs if v.engine == "espeak"} for p, vs in voices.items()}
    assert not variants["train"] & variants["test"] and not variants["train"] & variants["dev"]
    assert not variants["dev"] & variants["test"]
    speakers = plan_speakers(cfg)
    assert len({s.speaker_id for s in speakers}) == len(speakers)
    for spk in speakers:  # babble comes from the speaker's own part only
        assert set(spk.babble_voices) <= set(voices[spk.part])


@pytest.mark.parametrize(
    "voice",
    [
        VoiceSpec("espeak", "en", "f5", 1.1, 1.1),  # breathy: draws on espeak's noise generator
        VoiceSpec("espeak", "en-us", "m3", 0.9, 1.0),
        VoiceSpec("hibari", "heart", "", 0.8, 1.1, 0.9),
    ],
)
def test_engines_repeat_exactly_whatever_came_before(voice: VoiceSpec) -> None:
    text = "SHE READ THE NUMBERS ALOUD"
    first = synthesize(text, voice, 11, 16000)
    synthesize("SOMETHING ELSE ENTIRELY", VoiceSpec("espeak", "en-029", "klatt2"), 5, 16000)
    synthesize("AND MORE", VoiceSpec("hibari", "heart"), 5, 16000)
    again = synthesize(text, voice, 11, 16000)
    assert np.array_equal(first, again)
    seconds_per_char = len(first) / 16000 / len(text)
    assert 0.03 < seconds_per_char < 0.15  # speech-like pace, not silence or a stuck buffer
    assert -40 < _power_db(first) < 0


def test_word_list_and_sentences() -> None:
    words = load_words()
    assert len(words) >= 2000 and len(set(words)) == len(words)
    assert all(re.fullmatch(r"[a-z']+", w) for w in words)
    rng = np.random.default_rng(0)
    sentences = [sample_sentence(rng, words, 4, 14, 0.5) for _ in range(2000)]
    vocab = {w.lower() for s in sentences for w in s.split()}
    assert vocab <= set(words) and len(vocab) > 1500  # broad coverage, not a few phrases
    assert all(s == s.upper() and 4 <= len(s.split()) <= 14 for s in sentences)


@pytest.mark.parametrize("kind", ["white", "pink", "babble"])
@pytest.mark.parametrize("snr_db", [0.0, 12.5, 30.0])
def test_add_noise_reaches_the_requested_snr(kind: str, snr_db: float) -> None:
    rng = np.random.default_rng(1)
    t = np.arange(16000) / 16000
    speech = (0.1 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(
        np.float32
    )
    babble = rng.standard_normal(5000).astype(np.float32)
    noisy = aug.add_noise(speech, aug.make_noise(rng, kind, len(speech), babble), snr_db)
    assert not np.allclose(noisy, speech)
    measured = _power_db(speech) - _power_db(noisy - speech)
    assert measured == pytest.approx(snr_db, abs=0.01)


def test_pink_noise_has_falling_spectrum() -> None:
    power = np.abs(np.fft.rfft(aug.pink_noise(np.random.default_rng(0), 1 << 16))) ** 2
    low, high = power[100:1000].mean(), power[10000:30000].mean()
    assert low / high > 10  # 1/f: about 20x between these bands


def test_augment_snr_as_reported() -> None:
    cfg = CorpusConfig(noise_prob=1.0, reverb_prob=0.0, speed_range=(1.0, 1.0), volume_db=(0, 0))
    x = 0.3 * np.sin(2 * np.pi * 300 * np.arange(8000) / 16000).astype(np.float32)
    y, info = aug.augment(x, 16000, np.random.default_rng(3), cfg, np.ones(100, np.float32))
    clean = x * 10 ** (cfg.level_db / 20) / np.sqrt(np.mean(x.astype(np.float64) ** 2))
    assert info.noise in cfg.noise_types and cfg.snr_db[0] <= info.snr_db <= cfg.snr_db[1]
    assert _power_db(clean) - _power_db(y - clean) == pytest.approx(info.snr_db, abs=0.05)
    assert _power_db(clean) == pytest.approx(cfg.level_db, abs=0.01)


def _peak_hz(x: np.ndarray, sr: int) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(x))) * sr / len(x))


def test_speed_change_scales_duration_and_pitch() -> None:
    sr = 16000
    x = np.sin(2 * np.pi * 500 * np.arange(2 * sr) / sr).astype(np.float32)
    fast = aug.change_speed(x, 1.1)
    assert len(fast) == round(len(x) / 1.1)
    assert _peak_hz(fast, sr) == pytest.approx(550, abs=2)
    slow = aug.change_speed(x, 0.9)
    assert len(slow) == round(len(x) / 0.9)


def test_resample_keeps_frequency() -> None:
    x = np.sin(2 * np.pi * 1000 * np.arange(22050) / 22050).astype(np.float32)
    y = aug.resample(x, 22050, 16000)
    assert len(y) == 16000
    assert _peak_hz(y, 16000) == pytest.approx(1000, abs=1)
    assert np.sqrt(np.mean(y[1000:-1000] ** 2)) == pytest.approx(np.sqrt(0.5), rel=0.01)


def test_synthetic_rir_has_requested_rt60() -> None:
    sr, rt60 = 16000, 0.5
    rir = aug.synthetic_rir(np.random.default_rng(0), sr, rt60, drr_db=5.0)
    tail = rir[1:].astype(np.float64) ** 2
    assert 10 * np.log10(1.0 / tail.sum()) == pytest.approx(5.0, abs=0.01)
    edc = 10 * np.log10(np.cumsum(tail[::-1])[::-1] / tail.sum())  # Schroeder decay curve
    t5, t25 = np.argmax(edc < -5) / sr, np.argmax(edc < -25) / sr
    assert 3 * (t25 - t5) == pytest.approx(rt60, rel=0.1)  # T20 extrapolated to 60 dB
    x = np.random.default_rng(1).standard_normal(sr).astype(np.float32)
    y = aug.reverberate(x, rir)
    assert len(y) == len(x) and _power_db(y) == pytest.approx(_power_db(x), abs=0.01)
    assert not np.allclose(x, y)


def test_tiny_corpus_layout(tiny_corpus: tuple[Path, float]) -> None:
    root, seconds = tiny_corpus
    assert seconds < 20
    flacs = sorted(str(p.relative_to(root)) for p in root.rglob("*.flac"))
    assert flacs and all(UTT_RE.match(f) for f in flacs)
    transcripts = {}
    for trans in root.rglob("*.trans.txt"):
        part, spk, chapter = trans.relative_to(root).parts[:3]
        assert trans.name == f"{spk}-{chapter}.trans.txt"
        for line in trans.read_text().splitlines():
            utt_id, text = line.split(" ", 1)
            assert re.fullmatch(r"[A-Z' ]+", text) and text == text.strip()
            transcripts[f"{part}/{spk}/{chapter}/{utt_id}.flac"] = text
    assert sorted(transcripts) == flacs
    audio, sr = sf.read(root / flacs[0])
    assert sr == 16000 and audio.ndim == 1 and 0.5 < len(audio) / sr < 10
    voices = json.loads((root / "voices.json").read_text())
    parts = {p: {v["speaker"] for v in voices if v["part"] == p} for p in ("train", "dev", "test")}
    on_disk = {p: {int(d.name) for d in (root / p).iterdir()} for p in parts}
    assert parts == on_disk and all(parts.values())
    assert len({(v["engine"], v["name"], v["variant"], v["pitch"]) for v in voices}) == len(voices)
    assert (root / "VOICES.md").read_text().count("| train |") == len(parts["train"])
    hours = json.loads((root / MARKER).read_text())["hours"]
    assert hours == pytest.approx(TINY["hours"], rel=0.25)


def test_second_build_is_cached(tiny_corpus: tuple[Path, float]) -> None:
    root, _ = tiny_corpus
    before = _tree_digest(root)
    start = time.perf_counter()
    assert build_corpus(CorpusConfig(**TINY), root, progress=False) == root
    assert time.perf_counter() - start < 1.0
    assert _tree_digest(root) == before


def test_same_seed_same_files_any_num_jobs(tiny_corpus: tuple[Path, float], tmp_path: Path) -> None:
    root, _ = tiny_corpus
    again = build_corpus(CorpusConfig(**{**TINY, "num_jobs": 2}), tmp_path / "again", False)
    assert _tree_digest(again) == _tree_digest(root)


def test_new_seed_rebuilds_in_place(tiny_corpus: tuple[Path, float], tmp_path: Path) -> None:
    root, _ = tiny_corpus
    out = tmp_path / "other"
    build_corpus(CorpusConfig(**TINY), out, progress=False)
    build_corpus(CorpusConfig(**{**TINY, "seed": 1}), out, progress=False)
    assert _tree_digest(out) != _tree_digest(root)
    assert json.loads((out / MARKER).read_text())["config"]["seed"] == 1


def test_refuses_to_clear_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError):
        build_corpus(CorpusConfig(**TINY), tmp_path, progress=False)
    assert (tmp_path / "thesis.tex").exists()


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError):
        CorpusConfig(engines=("festival",))
    with pytest.raises(ConfigError):
        CorpusConfig(snr_db=(30.0, 10.0))
    with pytest.raises(ConfigError):
        CorpusConfig(dev_fraction=0.5, test_fraction=0.5)
