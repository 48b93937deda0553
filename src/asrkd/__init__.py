"""asrkd: compress CTC speech recognisers by knowledge distillation.

The Python API mirrors the CLI::

    import asrkd
    cfg = asrkd.load_config("configs/demo-teacher.yaml", ["train.max_steps=500"])
    run_dir = asrkd.train(cfg)                     # `asrkd train` / `asrkd distill`
    summary = asrkd.evaluate(run_dir / "model.safetensors", ["cuts_test.jsonl.gz"], "eval",
                             asrkd.EvalConfig())  # `asrkd evaluate`
    model, tokenizer = asrkd.load_model(run_dir / "model.safetensors")

Names are imported on first use, so `import asrkd` stays cheap.
"""

from __future__ import annotations

import importlib

_API = {
    "train": "asrkd.training",
    "evaluate": "asrkd.evaluation",
    "load_model": "asrkd.models.checkpoint",
    "prepare_librispeech": "asrkd.data.librispeech",
    "download_librispeech": "asrkd.data.librispeech",
    "build_corpus": "asrkd.data.corpus",
    "transcribe_files": "asrkd.transcribe",
    "load_config": "asrkd.config",
    "Config": "asrkd.config",
    "EvalConfig": "asrkd.config",
    "PrepareConfig": "asrkd.config",
    "CorpusConfig": "asrkd.config",
}

__all__ = [
    "Config",
    "CorpusConfig",
    "EvalConfig",
    "PrepareConfig",
    "build_corpus",
    "download_librispeech",
    "evaluate",
    "load_config",
    "load_model",
    "prepare_librispeech",
    "train",
    "transcribe_files",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'asrkd' has no attribute {name!r}")
