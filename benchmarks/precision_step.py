"""Seconds per CTC training step of a preset in float32 and in bfloat16 (`train.precision`:
torch.autocast around the student's forward pass, losses and weights in float32, asrkd.training's
own helpers), measured in one run on the same batches.

    .venv/bin/python benchmarks/precision_step.py --train CUTS \
        [--presets whisper-tiny-enc4 conformer-m-15 tiny] [--from-block 2] \
        [--batch-seconds 20] [--steps 20] [--rounds 3] [--threads 1]

--from-block N starts Whisper-encoder presets above their front end and first N blocks, as
the real-speech recipe's students train (train.freeze + train.cache_frozen): those states are
computed once before timing, as the cache holds them. Each precision starts from the same
weights and trains --steps steps (AdamW fused, dropout 0) after 3 warm-up steps; the two take
turns for --rounds rounds and the median is printed. Prints a Markdown table; whether the CPU
computes bfloat16 in hardware (asrkd.precision.native_bf16) heads it.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import platform
import statistics

import torch
from train_step import (  # the script folder is on sys.path
    WARMUP,
    ctc_update,
    first_batches,
    mean_step_seconds,
)

from asrkd.data.text import Tokenizer
from asrkd.models import build_model
from asrkd.precision import autocast_of, native_bf16
from asrkd.training import as_float32

PRECISIONS = ("fp32", "bf16")


def seconds_per_step(model, batches: list, precision: str, start: int) -> float:
    """Mean seconds of a training step after WARMUP steps; `start` > 0: from block `start` on
    the precomputed states (each batch a (states, lengths, targets, target_lens) tuple)."""
    model = copy.deepcopy(model).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    autocast = autocast_of(precision, torch.device("cpu"))

    def step(b) -> None:
        x, lengths, targets, target_lens = b
        with autocast():
            out = model.forward_from(x, lengths, start) if start else model(x, lengths)
        ctc_update(opt, as_float32(out), targets, target_lens)

    return mean_step_seconds(step, batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True, help="training cut manifest (with features)")
    ap.add_argument("--presets", nargs="+", default=["whisper-tiny-enc4"])
    ap.add_argument("--from-block", type=int, default=0)
    ap.add_argument("--batch-seconds", type=float, default=20.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    args = ap.parse_args()
    tok = Tokenizer()
    batches = first_batches(args.train, args.batch_seconds, args.steps + WARMUP, tok)
    cpu = torch.device("cpu")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, bfloat16 in "
        f"hardware: {native_bf16(cpu)}, torch {torch.__version__}, {args.steps} steps x "
        f"{args.rounds} rounds, batches of {args.batch_seconds:g} s"
    )
    print("\n| preset | from block | threads | fp32 s/step | bf16 s/step | bf16 speed-up |")
    print("|---|---|---|---|---|---|")
    for preset, threads in itertools.product(args.presets, args.threads):
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = build_model(preset, tok.vocab_size, batches[0].feats.shape[-1], 0.0)
        start = args.from_block if model.family == "whisper-encoder" else 0
        if start:
            for module in (model.conv1, model.conv2, *model.blocks[:start]):
                module.requires_grad_(False)
            with torch.no_grad():
                inputs = [(model.front(b.feats, b.feat_lens, start),
                           model.output_lengths(b.feat_lens), b.targets, b.target_lens)
                          for b in batches]  # fmt: skip
        else:
            inputs = [(b.feats, b.feat_lens, b.targets, b.target_lens) for b in batches]
        times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for _ in range(args.rounds):
            for precision in PRECISIONS:
                times[precision].append(seconds_per_step(model, inputs, precision, start))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(
            f"| {preset} | {start} | {threads} | {med['fp32']:.3f} | {med['bf16']:.3f} | "
            f"{med['fp32'] / med['bf16']:.2f}x |"
        )


if __name__ == "__main__":
    main()
