"""The learning-rate schedules, frozen parameters and seeding of a training run."""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from asrkd.config import ConfigError, TrainConfig


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to min_ratio at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def head_lr_factor(step: int, tc: TrainConfig) -> float:
    """The CTC head's (and the distiller's projections') schedule over the whole run."""
    return lr_factor(step, tc.warmup_steps, tc.max_steps, tc.min_lr_ratio)


def body_lr_factor(step: int, tc: TrainConfig) -> float:
    """The rest of the student: 0 during the head_steps, then a warm-up and cosine decay of its
    own over the remaining steps."""
    if step < tc.head_steps:
        return 0.0
    return lr_factor(
        step - tc.head_steps, tc.warmup_steps, tc.max_steps - tc.head_steps, tc.min_lr_ratio
    )


def frozen_parameters(model: torch.nn.Module, names: tuple[str, ...]) -> set[torch.nn.Parameter]:
    """The parameters train.freeze names (exact names or prefixes at a "." boundary), set to
    requires_grad=False; a ConfigError for a name that matches none."""
    frozen = set()
    for name in names:
        hits = [p for n, p in model.named_parameters() if n == name or n.startswith(name + ".")]
        if not hits:
            some = ", ".join(sorted({n.rsplit(".", 1)[0] for n, _ in model.named_parameters()})[:8])
            raise ConfigError(
                f"train.freeze: {name!r} names no parameter of the student ({some}, ...)"
            )
        frozen.update(hits)
    for p in frozen:
        p.requires_grad_(False)
    return frozen


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
