"""bfloat16 arithmetic where the hardware computes it: `train.precision` (the student's forward
pass in training) and `eval.precision` (a model file's forward pass in evaluation and
transcription). "fp32" is plain float32; "bf16" runs the network under `torch.autocast` with
bfloat16 (weights stay float32); "auto" is bf16 where the hardware has bfloat16 products, else
fp32."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 products in hardware: a GPU with bfloat16 (Ampere and
    later), a CPU with AVX512-BF16 or AMX (Linux's CPU flags; elsewhere False)."""
    if device.type == "cuda":
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
    return partial(torch.autocast, device.type, dtype=torch.bfloat16)
