"""Training throughput and inference latency of every model preset on this machine.

    .venv/bin/python benchmarks/presets.py [--threads N] [--presets a b ...]

Training: AdamW steps on a batch of random 80-dim features holding 60 s of audio (6 utterances of
10 s), CTC loss on random targets; reports audio-seconds processed per second. Inference: batch 1,
one 10 s utterance; reports latency and real-time factor. Random inputs cost the same as real ones.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from asrkd.distill.losses import ctc_loss
from asrkd.models import PRESETS, build_model

FRAMES_PER_SECOND = 100  # 10 ms fbank hop


def time_training(preset: str, seconds: float, steps: int) -> float:
    model = build_model(preset, 29, 80, 0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    n_utts, n_frames = 6, int(seconds / 6 * FRAMES_PER_SECOND)
    feats = torch.randn(n_utts, n_frames, 80)
    lens = torch.full((n_utts,), n_frames)
    targets = torch.randint(1, 29, (n_utts, n_frames // 8))
    target_lens = torch.full((n_utts,), n_frames // 8)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        out = model(feats, lens)
        loss = ctc_loss(out.logits, out.lengths, targets, target_lens)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return seconds / (sum(times[1:]) / steps)  # first step is warm-up


@torch.inference_mode()
def time_inference(preset: str, seconds: float, repeats: int) -> float:
    model = build_model(preset, 29, 80, 0.0).eval()
    n = int(seconds * FRAMES_PER_SECOND)
    feats, lens = torch.randn(1, n, 80), torch.tensor([n])
    model(feats, lens)
    t0 = time.perf_counter()
    for _ in range(repeats):
        model(feats, lens)
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}")
    print("| preset | parameters | train audio-s/s (60 s batches) | latency 10 s utt (ms) | RTF |")
    print("|---|---|---|---|---|")
    for preset in args.presets:
        n_params = build_model(preset, 29, 80, 0.1).n_params()
        steps = args.steps if n_params < 5e6 else 1
        speed = time_training(preset, 60.0, steps)
        latency = time_inference(preset, 10.0, 5 if n_params < 5e6 else 2)
        print(
            f"| {preset} | {n_params / 1e6:.2f} M | {speed:.0f} | {1000 * latency:.0f} "
            f"| {latency / 10.0:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
