"""Cost of a distillation step relative to the baseline student's step, measured in one run.

    .venv/bin/python benchmarks/kd_step.py --train CUTS --dev CUTS --teacher MODEL \
        --student PRESET [--steps 20] [--threads 2]

Times `Trainer.step` on the same collated batches for: the baseline (strategy none), logit KD
from the teacher-output cache, and logit KD with the teacher run online at every step. The cache
is built before timing (its one-off cost is printed separately).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from asrkd.config import load_config
from asrkd.data.dataset import collate, make_sampler
from asrkd.training import Trainer


def build(args, out: str, *extra: str) -> Trainer:
    cfg = load_config(
        None,
        [
            f"data.train_cuts={args.train}",
            f"data.dev_cuts={args.dev}",
            f"data.max_batch_seconds={args.batch_seconds}",
            f"model.preset={args.student}",
            f"train.out_dir={out}",
            "train.progress=false",
            f"train.threads={args.threads}",
            *extra,
        ],
    )
    return Trainer(cfg)


def time_steps(trainer: Trainer, batches) -> float:
    trainer.step(batches[0])  # warm-up
    t0 = time.perf_counter()
    for batch in batches[1:]:
        trainer.step(batch)
    return (time.perf_counter() - t0) / (len(batches) - 1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train", required=True)
    p.add_argument("--dev", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-seconds", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = build(args, f"{tmp}/base")
        sampler = make_sampler(base.train_cuts, base.cfg.data, shuffle=True, seed=0)
        batches = [collate(c, base.tokenizer) for _, c in zip(range(args.steps + 1), sampler)]
        t0 = time.perf_counter()
        cached = build(
            args,
            f"{tmp}/cached",
            "distill.strategy=logit",
            f"teacher.path={args.teacher}",
            "teacher.cache=true",
            f"teacher.cache_dir={tmp}/cache",
        )
        cache_seconds = time.perf_counter() - t0
        online = build(
            args,
            f"{tmp}/online",
            "distill.strategy=logit",
            f"teacher.path={args.teacher}",
            "teacher.cache=false",
        )
        results = {}
        for name, trainer in (("baseline", base), ("cached", cached), ("online", online)):
            torch.manual_seed(0)
            results[name] = time_steps(trainer, batches)
    audio = sum(b.audio_seconds for b in batches[1:]) / (len(batches) - 1)
    print(
        f"# {torch.get_num_threads()} threads, {args.steps} steps of ~{audio:.0f} s audio, "
        f"student {args.student}, teacher {args.teacher}"
    )
    print(
        f"teacher cache build (one teacher pass over the train set, incl. setup): "
        f"{cache_seconds:.1f} s"
    )
    for name, seconds in results.items():
        print(f"{name:9s} {seconds * 1000:8.1f} ms/step  {seconds / results['baseline']:.2f}x")


if __name__ == "__main__":
    main()
