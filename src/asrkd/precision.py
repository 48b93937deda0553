"""bfloat16 arithmetic where the hardware computes it: `train.precision` (the student's forward
pass in training) and `eval.precision` (a model file's forward pass in evaluation and
transcription). "fp32" is plain float32; "bf16" runs the network under `torch.autocast` with
bfloat16 (weights stay float32); "auto" is bf16 where the hardware has bfloat16 products, else
fp32.

Also the kernel cache of inference processes (`limit_kernel_cache`). Importing this module does
not import torch: the ONNX path of `asrkd transcribe` and `asrkd evaluate` runs without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# oneDNN, which runs PyTorch's CPU convolutions and bfloat16 products, keeps the kernels it
# builds for each input shape, 1,024 by default. Utterances decoded one at a time each have
# their own length, so an inference process gains nothing from them and holds their memory: the
# real-speech recipe's Whisper-encoder student over the 100 test-other utterances grew a
# process 273 -> 450 MB in float32 and -> 601 MB in bfloat16 with the default, -> 349 and
# -> 507 MB with 16, at the same speed (docs/benchmarks.md, "bfloat16 inference"). Training
# keeps the default: its duration buckets repeat shapes, and 16 made a bf16 student's steps
# ~15 % slower. PyTorch's own wrapper of oneDNN (ideep) keeps a second per-shape cache of the
# same kind, 1,024 by default (LRU_CACHE_CAPACITY): it held the bfloat16 path's memory, ~1.4 MB
# per utterance length (the recipe's 5-block student over those 100 utterances, forward passes
# only: +138 MB with 1,024, +19 MB with 16, float32 +24 MB; the same speed; 2026-12-07,
# docs/benchmarks.md, "The real-speech recipe cold at f5471f0").
INFERENCE_ENV = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "16", "LRU_CACHE_CAPACITY": "16"}


def limit_kernel_cache(env: dict | None = None) -> dict:
    """INFERENCE_ENV into `env` (default: this process's os.environ) where the user has not set
    those variables; returns `env`. oneDNN and ideep read them once, at their first use in a
    process: call before any PyTorch computation (`asrkd transcribe`, `asrkd evaluate` and the
    memory probe do; the demo's scoring workers get them through spawn_pool's env)."""
    env = os.environ if env is None else env
    for key, value in INFERENCE_ENV.items():
        env.setdefault(key, value)
    return env


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 products in hardware: a GPU with bfloat16 (Ampere and
    later), a CPU with AVX512-BF16 or AMX (Linux's CPU flags; elsewhere False)."""
    if device.type == "cuda":
        import torch

        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f" {flag}" in flags for flag in ("avx512_bf16", "amx_bf16"))


def resolve_precision(precision: str, device: torch.device, key: str = "train.precision") -> str:
    """A precision setting (`key`, for messages) on `device`: "auto" = "bf16" where the hardware
    has it, else "fp32". Warns where "bf16" is asked of hardware that only emulates it (slower
    than float32)."""
    if precision == "fp32":
        return precision
    fast = native_bf16(device)
    if precision == "auto":
        return "bf16" if fast else "fp32"
    if not fast:
        log.warning(
            "%s=bf16: %s has no bfloat16 instructions (a CPU needs AVX512-BF16 or AMX); "
            "bfloat16 is emulated and slower than %s=fp32",
            key,
            device.type,
            key,
        )
    return precision


def autocast_of(precision: str, device: torch.device) -> Callable[[], Any]:
    """A resolved precision -> a context-manager factory for a forward pass: bf16 =
    torch.autocast with bfloat16 on `device`, fp32 = nothing."""
    if precision == "fp32":
        return contextlib.nullcontext
    import torch

    return partial(torch.autocast, device.type, dtype=torch.bfloat16)
