"""Seconds per CTC training step of a preset: asrkd's model and optimiser as they are, against
their reference paths (torch's nn.Dropout instead of asrkd's Dropout; nn.Conv1d calls instead of
`pointwise` matrix products and the channels-last `depthwise`; attention dropout inside torch's
scaled_dot_product_attention instead of asrkd's masks; AdamW without fused=True; all four = the
code before 2026-11-29), measured in one run on the same batches.

    .venv/bin/python benchmarks/train_step.py --train CUTS [--presets demo-teacher]
        [--dropout 0.05] [--batch-seconds 30] [--steps 30] [--rounds 3] [--threads 1 2]

Each variant starts from the same weights (the reference paths use the very same parameters) and trains --steps steps (AdamW, CTC loss) on the
same collated batches after 3 warm-up steps; the variants take turns for --rounds rounds and the
median per variant is printed, so machine noise hits all of them alike. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import platform
import statistics
import time
import types

import torch
import torch.nn.functional as F

from asrkd.config import DataConfig
from asrkd.data.dataset import collate, load_cuts, make_sampler
from asrkd.data.text import Tokenizer
from asrkd.models import build_model
from asrkd.models.conformer import ConvModule, Dropout, SelfAttention, apply_rotary

WARMUP = 3
VARIANTS = ("asrkd", "torch", "conv1d", "sdpa", "unfused", "before", "none")  # table columns


def with_torch_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` whose asrkd Dropout modules are torch's nn.Dropout (same p)."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, Dropout):
                setattr(module, name, torch.nn.Dropout(child.p))
    return model


def _conv_forward_reference(self: ConvModule, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ConvModule.forward as it was: Conv1d calls on channels-first tensors (kernel-1 and
    depthwise)."""
    y = F.glu(self.pointwise_in(self.norm(x).transpose(1, 2)), dim=1)  # (B, D, T')
    y = y.masked_fill(~mask[:, None, :], 0.0)
    y = self.depthwise(y).transpose(1, 2)
    y = F.silu(self.conv_norm(y)).transpose(1, 2)
    return self.dropout(self.pointwise_out(y).transpose(1, 2))


def with_forward(model: torch.nn.Module, cls: type, forward) -> torch.nn.Module:
    """A copy of `model` whose `cls` modules run `forward` (a reference path) instead."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, cls):
            module.forward = types.MethodType(forward, module)
    return model


def with_conv1d_pointwise(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` whose convolution modules call their nn.Conv1d layers."""
    return with_forward(model, ConvModule, _conv_forward_reference)


def _attention_forward_reference(self: SelfAttention, x, mask, rope):
    """SelfAttention.forward as it was: attention dropout inside scaled_dot_product_attention."""
    b, t, d = x.shape
    qkv = self.qkv(self.norm(x)).view(b, t, 3, self.n_heads, d // self.n_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
    p = self.dropout.p if self.training else 0.0
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], dropout_p=p)
    return self.dropout(self.out(y.transpose(1, 2).reshape(b, t, d)))


def with_sdpa_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` whose attention drops weights inside torch's SDPA (aten::bernoulli_)."""
    return with_forward(model, SelfAttention, _attention_forward_reference)


def first_batches(train: str, batch_seconds: float, n: int, tok: Tokenizer) -> list:
    """The first `n` collated batches of a training manifest, as training draws them (seed 0)."""
    sampler = make_sampler(load_cuts(train), DataConfig(max_batch_seconds=batch_seconds), True, 0)
    return [collate(cuts, tok) for cuts in itertools.islice(sampler, n)]


def mean_step_seconds(step, batches: list) -> float:
    """Mean seconds of step(batch) over `batches` after the first WARMUP of them."""
    for b in batches[:WARMUP]:
        step(b)
    t0 = time.perf_counter()
    for b in batches[WARMUP:]:
        step(b)
    return (time.perf_counter() - t0) / (len(batches) - WARMUP)


def ctc_update(opt, out, targets, target_lens) -> None:
    """One optimiser step on the CTC loss of a model output `out` (logits B x T' x V, lengths)."""
    log_probs = out.logits.log_softmax(-1).transpose(0, 1)
    loss = F.ctc_loss(log_probs, targets, out.lengths, target_lens, zero_infinity=True)
    opt.zero_grad()
    loss.backward()
    opt.step()


def seconds_per_step(model: torch.nn.Module, batches: list, fused: bool = True) -> float:
    model = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)

    def step(b) -> None:
        ctc_update(opt, model(b.feats, b.feat_lens), b.targets, b.target_lens)

    return mean_step_seconds(step, batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True, help="training cut manifest (with features)")
    ap.add_argument("--presets", nargs="+", default=["demo-teacher"])
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--batch-seconds", type=float, default=30.0)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=list(VARIANTS),
        help="which columns to measure (all by default)",
    )
    args = ap.parse_args()
    tok = Tokenizer()
    batches = first_batches(args.train, args.batch_seconds, args.steps + WARMUP, tok)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"threads {args.threads}, torch {torch.__version__}, {args.steps} steps x "
        f"{args.rounds} rounds, batches of {args.batch_seconds:g} s"
    )
    print(
        "\n| preset | threads | asrkd s/step | nn.Dropout | Conv1d calls | SDPA dropout "
        "| unfused AdamW | all four (before) | no dropout | speed-up vs before |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for preset, threads in itertools.product(args.presets, args.threads):
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = build_model(preset, tok.vocab_size, batches[0].feats.shape[-1], args.dropout)
        before = with_sdpa_dropout(with_conv1d_pointwise(with_torch_dropout(model)))
        variants = {  # name: (model, fused AdamW)
            "asrkd": (model, True),
            "torch": (with_torch_dropout(model), True),
            "conv1d": (with_conv1d_pointwise(model), True),
            "sdpa": (with_sdpa_dropout(model), True),
            "unfused": (model, False),
            "before": (before, False),
            "none": (build_model(preset, tok.vocab_size, batches[0].feats.shape[-1], 0.0), True),
        }
        variants = {k: v for k, v in variants.items() if k in args.variants}
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, (variant, fused) in variants.items():
                torch.manual_seed(1)
                times[name].append(seconds_per_step(variant, batches, fused))
        med = {k: statistics.median(v) for k, v in times.items()}
        cells = " | ".join(f"{med[k]:.3f}" if k in med else "–" for k in VARIANTS)
        gain = f"{med['before'] / med['asrkd']:.2f}x" if {"before", "asrkd"} <= set(med) else "–"
        print(f"| {preset} | {threads} | {cells} | {gain} |")


if __name__ == "__main__":
    main()
