"""Export a model file for on-device inference: one self-contained ONNX file.

The graph takes feats (B, T, F) float32 log-mel and feat_lens (B,) int64, with B and T dynamic,
and returns logits (B, T', V) and lengths (B,) exactly as the eager model of any family in
asrkd.models.FAMILIES does (a Conformer's feature normalisation included). The model family,
tokenizer, feature settings and model dims travel in the file's metadata_props, so the .onnx
file alone is enough to transcribe (see asrkd.transcribe).

Dimension legend: B batch, T input frames, T' = subsampled frames, F mel bins, V vocabulary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from asrkd.config import ExportConfig, FeatureConfig, parse_vocabulary
from asrkd.data.text import Tokenizer
from asrkd.lexicon import (
    ArpaSource,
    WordLM,
    config_lm,
    lm_from_manifest,
    training_lm,
    vocabulary_label,
)
from asrkd.lexicon_cache import cached_arpa, reads_cache
from asrkd.models import CTCModel
from asrkd.models.checkpoint import (
    CheckpointError,
    atomic_write,
    model_from_tensors,
    read_checkpoint,
)
from asrkd.ondevice import (  # noqa: F401  defined there (PyTorch-free), re-exported
    INPUT_NAMES,
    LEXICON_ARPA_KEY,
    ONNX_FORMAT,
    OUTPUT_NAMES,
    lengths_dtype,
    lexicon_from_metadata,
    onnx_session,
    pack_lexicon,
    read_onnx_metadata,
)

# Two unpadded 3x3 stride-2 convolutions need 7 input frames for one output frame: the shortest
# input the graph is exported for.
MIN_FRAMES = 7
# Verification inputs: lengths that exercise padding (T' = 49 and 30 frames).
VERIFY_LENS = (200, 123)


class ExportError(RuntimeError):
    """The model could not be exported, or the exported graph disagrees with eager PyTorch."""


class _Exportable(nn.Module):
    """A CTC model (either family) with plain tensor outputs (logits, lengths): no hidden states in the graph.
    log_probs=True: log-softmax outputs instead of logits (what sherpa-onnx's CTC decoders
    expect; asrkd's decoders take either)."""

    def __init__(self, model: CTCModel, log_probs: bool = False) -> None:
        super().__init__()
        self.model = model
        self.log_probs = log_probs

    def forward(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(feats, feat_lens)
        if self.log_probs:
            return out.logits.log_softmax(-1), out.lengths
        return out.logits, out.lengths


def require_onnx_exporter() -> None:
    """torch.onnx.export (the torch.export-based exporter) needs onnx and onnxscript."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"asrkd export needs {', '.join(missing)}: pip install 'asrkd[export]'")


# How a file carries its lexicon: settings as JSON, the LM as ARPA text (asrkd.lexicon.ArpaSource);
# a recipe's delivered file is exported again when it changes
LEXICON_LAYOUT = "settings-json+arpa-gz"


def onnx_metadata(
    meta: dict[str, Any], quantized: bool, lexicon: dict[str, Any] | None = None
) -> dict[str, str]:
    """metadata_props of an exported file, from a checkpoint's decoded metadata (and the
    lexicon decoder's words, LM and settings, when the file carries one)."""
    features = FeatureConfig(**(meta.get("features") or {}))
    props = {
        "asrkd.format": ONNX_FORMAT,
        "asrkd.family": json.dumps(meta.get("family") or "conformer"),
        "asrkd.dims": json.dumps(meta["dims"]),
        "asrkd.tokenizer": json.dumps(meta["tokenizer"]),
        "asrkd.features": json.dumps(dataclasses.asdict(features)),
        "asrkd.quantized": json.dumps(quantized),
    }
    if lexicon is not None:  # the settings as zipped JSON; the LM as zipped ARPA text, apart
        settings = {k: v for k, v in lexicon.items() if k != "arpa_gz"}
        props["asrkd.lexicon_gz"] = json.dumps(pack_lexicon(settings))
        props[LEXICON_ARPA_KEY] = lexicon["arpa_gz"]
    return props


def lexicon_metadata(
    cfg: ExportConfig, meta: dict[str, Any], model_path: str | Path
) -> dict[str, Any] | None:
    """{"arpa_gz", "lm_order", "beam", "lm_weight", "word_bonus", "vocabulary", "bigrams",
    "token_prune", "blank_penalty", "engine"} (the word LM as ArpaSource packs it: ARPA text,
    gzip, base64; 3.1 MB for the real-speech recipe's LM, whose tables as JSON took 3.4 MB
    packed and ~100 MB of Python objects to read back) from cfg's lexicon fields
    (config_lm), whose "train" part is cfg.lexicon_cuts' transcripts ("train": the model's own
    training manifest), or None when cfg asks for no lexicon (no lexicon_cuts, no wordfreq
    words, no ARPA file)."""
    uses_wordfreq = parse_vocabulary(cfg.vocabulary)[1] > 0
    if not cfg.lexicon_cuts and not uses_wordfreq and not cfg.arpa:
        return None

    def train_lm(order: int) -> WordLM:
        if cfg.lexicon_cuts == "train":
            return training_lm(meta.get("config") or {}, model_path, order)
        return lm_from_manifest(cfg.lexicon_cuts, order)

    tokenizer = Tokenizer.from_json(json.dumps(meta["tokenizer"]))
    if reads_cache(cfg, tokenizer):
        arpa = ArpaSource.from_file(cached_arpa(cfg.lm_cache, cfg, tokenizer, train_lm))
    else:
        arpa = ArpaSource.from_lm(config_lm(cfg, tokenizer, train_lm))
    return {
        "arpa_gz": arpa.packed,
        "lm_order": arpa.order,
        "beam": cfg.beam,
        "lm_weight": cfg.lm_weight,
        "word_bonus": cfg.word_bonus,
        "vocabulary": vocabulary_label(cfg),
        "bigrams": cfg.bigrams,
        "token_prune": cfg.token_prune,
        "blank_penalty": cfg.blank_penalty,
        "engine": cfg.lexicon_engine,  # the search it was exported (and scored) with
    }


def example_inputs(n_mels: int, lens: tuple[int, ...] = VERIFY_LENS) -> tuple[Tensor, Tensor]:
    """Deterministic (feats (B, max(lens), n_mels), feat_lens (B,)) with padding beyond lens."""
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(len(lens), max(lens), n_mels, generator=gen)
    return feats, torch.tensor(lens, dtype=torch.int64)


def onnx_program(
    module: nn.Module, args: tuple, names: tuple, outputs: tuple, dims: dict, opset: int
):
    """torch.onnx.ONNXProgram of `module` (eval mode) on example `args`, with input names
    `names`, output names `outputs` and dynamic shapes `dims`; ExportError when it fails."""
    try:
        with _quiet_exporters(), warnings.catch_warnings():
            # pytree deprecations and axis renaming inside the exporter: nothing for the user
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec")
            warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used")
            return torch.onnx.export(
                module.eval(),
                args,
                dynamo=True,
                input_names=list(names),
                output_names=list(outputs),
                dynamic_shapes=dims,
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
    except Exception as err:  # the exporter raises many types; all mean the same to a user
        raise ExportError(f"ONNX export failed: {err}") from err


def _to_onnx(model: CTCModel, opset: int, log_probs: bool = False):
    """torch.onnx.ONNXProgram of `model` with dynamic batch and time axes."""
    batch = torch.export.Dim("batch", min=1)
    time = torch.export.Dim("time", min=MIN_FRAMES)
    return onnx_program(
        _Exportable(model, log_probs), example_inputs(model.dims.n_mels), INPUT_NAMES,
        OUTPUT_NAMES, {"feats": {0: batch, 1: time}, "feat_lens": {0: batch}}, opset,
    )  # fmt: skip


def strip_debug_info(model) -> None:
    """Drop the exporter's per-node metadata (Python stack traces with local paths, module
    names, FX node text) from an onnx_ir model: ~10 % of a small model's file, and nothing a
    shipped model should carry."""
    for graph in model.graphs():
        for node in graph:
            node.metadata_props.clear()
            for value in node.outputs:
                value.metadata_props.clear()


def run_onnx(session, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
    """Run an onnxruntime session like the eager model: (logits (B, T', V), lengths (B,))."""
    inputs = {
        "feats": feats.numpy().astype(np.float32, copy=False),
        "feat_lens": feat_lens.numpy().astype(lengths_dtype(session), copy=False),
    }
    logits, lengths = session.run(list(OUTPUT_NAMES), inputs)
    return torch.from_numpy(logits), torch.from_numpy(lengths)


def verify_export(
    path: str | Path, model: CTCModel, tolerance: float, log_probs: bool = False
) -> float:
    """Max abs logit (log_probs: log-softmax) difference between the file at `path` and eager
    `model` on a padded batch; ExportError when above `tolerance` or when the lengths differ."""
    session = onnx_session(path, threads=1)  # a two-utterance batch: one thread is plenty
    feats, feat_lens = example_inputs(model.dims.n_mels)
    with torch.inference_mode():
        eager = model(feats, feat_lens)
    expected = eager.logits.log_softmax(-1) if log_probs else eager.logits
    logits, lengths = run_onnx(session, feats, feat_lens)
    if not torch.equal(lengths, eager.lengths):
        raise ExportError(f"exported lengths {lengths.tolist()} != eager {eager.lengths.tolist()}")
    diff = (logits - expected).abs().max().item()
    if not diff <= tolerance:
        raise ExportError(f"exported logits differ from eager by {diff:.3g} > {tolerance:g}")
    return diff


class _DropQuantizerChatter(logging.Filter):
    """onnxruntime.quantization logs on the root logger: per-tensor INFO lines and a hint to run
    shape pre-processing (which matters for static quantisation, not here)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from_quantizer = "onnxruntime" in record.pathname and "quantization" in record.pathname
        return record.levelno >= logging.ERROR or not from_quantizer


# Exporter loggers that are chatty at INFO (every rewrite rule) or WARNING (missing torchvision).
_QUIET_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")


@contextlib.contextmanager
def _quiet_exporters():
    """Silence the exporter's and quantizer's progress logging (the CLI logs at INFO)."""
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    chatter = _DropQuantizerChatter()
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    logging.getLogger().addFilter(chatter)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(chatter)
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def quantize_file(
    src: str | Path, dst: str | Path, ops: tuple[str, ...], per_channel: bool = True
) -> None:
    """int8 dynamic quantisation of the weights of `ops`, one scale per output channel or per
    tensor (metadata_props are kept)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_exporters():
        quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=list(ops),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
        )


def load_for_export(model_path: str | Path) -> tuple[CTCModel, dict[str, Any]]:
    """(model in eval mode, checkpoint metadata) of a model file, once the exporter's packages
    are known to be installed; CheckpointError when the file is not an asrkd model."""
    require_onnx_exporter()
    tensors, meta = read_checkpoint(model_path)
    try:
        model = model_from_tensors(tensors, meta)
    except (KeyError, TypeError, RuntimeError) as err:  # as load_model: not an asrkd model
        raise CheckpointError(f"{model_path}: does not fit an asrkd model ({err})") from err
    return model.eval(), meta


def export_model(
    model_path: str | Path,
    out_path: str | Path,
    cfg: ExportConfig | None = None,
    log_probs: bool = False,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """Write the model file at `model_path` as ONNX to `out_path` (atomically) and return it.
    log_probs: the graph ends in log-softmax; extra_metadata: more metadata_props (both for
    asrkd.sherpa)."""
    cfg = cfg or ExportConfig()
    model, meta = load_for_export(model_path)
    program = _to_onnx(model, cfg.opset, log_probs)
    strip_debug_info(program.model)
    lexicon = lexicon_metadata(cfg, meta, model_path)
    program.model.metadata_props.update(onnx_metadata(meta, cfg.quantize, lexicon))
    program.model.metadata_props.update(extra_metadata or {})
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = os.path.join(tmp, "fp32.onnx")
        program.save(fp32, external_data=False)
        if cfg.verify:
            verify_export(fp32, model, cfg.verify_tolerance, log_probs)
        if cfg.quantize:
            atomic_write(
                out_path,
                lambda dst: quantize_file(fp32, dst, cfg.quantize_ops, cfg.quantize_per_channel),
            )
        else:
            atomic_write(out_path, lambda dst: shutil.copyfile(fp32, dst))
    return out_path
