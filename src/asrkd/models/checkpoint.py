"""Model files and training checkpoints: safetensors tensors plus JSON metadata, never pickle.

A file holds tensors named ``model.*`` (and, for training checkpoints, ``optim.*`` and ``rng.*``)
and a JSON header entry per metadata key: ``family`` (a key of asrkd.models.FAMILIES; absent in
files from before families: a Conformer), ``dims`` (that family's dims), ``tokenizer``, ``features`` (the
FeatureConfig the model was trained on), ``config`` (the resolved run config) and, in training checkpoints, ``train_state``. Files are written to a
temporary name and renamed, so a crash never leaves a half-written file under the real name.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from asrkd.config import CheckpointError  # defined there (torch-free); used and re-exported
from asrkd.data.text import Tokenizer
from asrkd.files import atomic_write, remove_stale_temporaries  # noqa: F401  torch-free, re-exported
from asrkd.models import DEFAULT_FAMILY, CTCModel, model_from_dims

FORMAT = "asrkd/1"

log = logging.getLogger(__name__)


def save_checkpoint(
    path: str | Path,
    model: CTCModel,
    tokenizer: Tokenizer,
    config: dict[str, Any] | None = None,
    extra_tensors: dict[str, Tensor] | None = None,
    train_state: dict[str, Any] | None = None,
    features: dict[str, Any] | None = None,
) -> None:
    """Write model weights (+ optional training state) atomically."""
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    for key, value in (extra_tensors or {}).items():
        tensors[key] = value.detach().contiguous()
    metadata = {
        "format": FORMAT,
        "family": json.dumps(model.family),
        "dims": json.dumps(dataclasses.asdict(model.dims)),
        "tokenizer": tokenizer.to_json(),
        "config": json.dumps(config or {}),
        "features": json.dumps(features or {}),
    }
    if train_state is not None:
        metadata["train_state"] = json.dumps(train_state)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """All tensors and the decoded metadata of a checkpoint, with clear errors."""
    path = Path(path)
    meta = read_checkpoint_meta(path)  # also the missing-file and format checks
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({err})") from err
    return tensors, meta


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The decoded metadata of a checkpoint without loading its tensors."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({err})") from err
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an asrkd checkpoint (format={raw.get('format')!r})")
    return {k: (v if k == "format" else json.loads(v)) for k, v in raw.items()}


def model_family(meta: dict[str, Any]) -> str:
    """The model family a file's decoded metadata names (older files: Conformers)."""
    return meta.get("family") or DEFAULT_FAMILY


def model_from_tensors(tensors: dict[str, Tensor], meta: dict[str, Any]) -> CTCModel:
    """Rebuild the model from a checkpoint's own family, dims and weights (strict: no missing
    keys)."""
    model = model_from_dims(model_family(meta), meta["dims"])
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_model(path: str | Path) -> tuple[CTCModel, Tokenizer]:
    """Rebuild a model and its tokenizer from the file alone (eval mode, CPU)."""
    tensors, meta = read_checkpoint(path)
    try:
        model = model_from_tensors(tensors, meta)
    except (KeyError, TypeError, RuntimeError) as err:  # dims or tensors of another model
        raise CheckpointError(f"{path}: does not fit an asrkd model ({err})") from err
    return model, Tokenizer.from_json(json.dumps(meta["tokenizer"]))


def rng_state() -> dict[str, Tensor]:
    """Torch RNG states as tensors (CPU, and CUDA where present)."""
    state = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"rng.cuda{i}"] = s
    return state


def set_rng_state(tensors: dict[str, Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
