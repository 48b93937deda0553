"""Training and distillation: one loop for every strategy (`none` is plain CTC training).

A run folder holds::

    config.yaml            the resolved config
    checkpoints/step-*.safetensors   model + optimiser + scheduler + sampler position + RNG states
    model.safetensors      best model on dev (what `evaluate`, `export` and teachers use)
    final.safetensors      model after the last step
    metrics.jsonl          one JSON object per logged step and per dev evaluation
    summary.json           written when the run completes
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from asrkd.config import Config, ConfigError
from asrkd.distributed import World, barrier, init_group, launch, leave_group, world_from_env
from asrkd.runtime import select_device
from asrkd.training.trainer import Trainer, as_float32

__all__ = ["Trainer", "as_float32", "train"]


def train(
    cfg: Config, resume: bool = False, on_eval: Callable[[int, dict], None] | None = None
) -> Path:
    """Train (or distil) a model as `cfg` says; returns the run folder. `on_eval(step, row)` is
    called after each dev evaluation (a sweep uses it to prune).

    Data-parallel when train.processes > 1 (processes started here) or under torchrun."""
    world = world_from_env()
    if world is not None and cfg.train.processes != 1:
        raise ConfigError(
            "train.processes must be 1 under torchrun: torchrun already started "
            f"{world.size} processes (--nproc-per-node)"
        )
    if (world is not None or cfg.train.processes > 1) and on_eval is not None:
        raise ConfigError(
            "a sweep trial cannot train data-parallel (its pruner runs in one process): "
            "set train.processes=1 for sweeps"
        )
    if world is not None:
        _train_process(world, "env://", cfg, resume)
    elif cfg.train.processes > 1:
        launch(_train_process, cfg.train.processes, cfg, resume)
    else:
        Trainer(cfg, resume=resume).run(on_eval)
    return Path(cfg.train.out_dir)


def _train_process(world: World, init_method: str, cfg: Config, resume: bool) -> None:
    """One process of a data-parallel run."""
    init_group(world, select_device(cfg.train.device), init_method)
    try:
        Trainer(cfg, resume=resume, world=world).run()
        barrier(world)  # rank 0 has written the model files when this returns
    finally:
        leave_group()
