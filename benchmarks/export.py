"""File size and latency of exported models: eager PyTorch vs onnxruntime fp32 vs int8.

    .venv/bin/python benchmarks/export.py [--presets demo-student demo-teacher] [--threads 1 2]
        [--repeats 20] [--set quantize_ops=[MatMul,Gemm,Conv]]

For each preset: a model with random weights (timing does not depend on them) saved as a model
file, exported to ONNX fp32 and int8 (ExportConfig, with --set overrides), then one 10 s
utterance (batch 1, 1000 frames) timed in each runtime at each thread count: median of
--repeats runs after 3 warm-up runs. Also reports the int8 model's max abs logit deviation from
eager and the fraction of frames whose argmax agrees (random weights: a lower bound on what a
trained model sees). Prints a Markdown table; one run measures everything, so rows compare.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch

from asrkd.config import ExportConfig, load_config
from asrkd.data.text import Tokenizer
from asrkd.export import export_model, onnx_session, run_onnx
from asrkd.models import build_model
from asrkd.models.checkpoint import load_model, save_checkpoint

FRAMES_PER_SECOND = 100  # 10 ms fbank hop
UTTERANCE_SECONDS = 10.0
WARMUP = 3


def median_ms(fn, repeats: int) -> float:
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def export_preset(preset: str, folder: Path, cfg: ExportConfig) -> dict[str, Path]:
    """Model file, fp32 and int8 ONNX files of a randomly initialised preset."""
    torch.manual_seed(0)
    model = build_model(preset, Tokenizer().vocab_size, 80, 0.0)
    paths = {"safetensors": folder / f"{preset}.safetensors"}
    save_checkpoint(paths["safetensors"], model, Tokenizer())
    paths["fp32"] = export_model(paths["safetensors"], folder / f"{preset}.onnx", cfg)
    int8_cfg = load_config(None, ["quantize=true"] + _overrides(cfg), ExportConfig)
    paths["int8"] = export_model(paths["safetensors"], folder / f"{preset}-int8.onnx", int8_cfg)
    return paths


def _overrides(cfg: ExportConfig) -> list[str]:
    return [f"quantize_ops=[{','.join(cfg.quantize_ops)}]", f"opset={cfg.opset}"]


def measure(paths: dict[str, Path], threads: int, repeats: int) -> dict[str, float]:
    """Latency (ms) of one 10 s utterance in each runtime with `threads` threads."""
    model, _ = load_model(paths["safetensors"])
    n = int(UTTERANCE_SECONDS * FRAMES_PER_SECOND)
    feats, feat_lens = torch.randn(1, n, model.dims.n_mels), torch.tensor([n])
    torch.set_num_threads(threads)
    with torch.inference_mode():
        row = {"eager": median_ms(lambda: model(feats, feat_lens), repeats)}
    for kind in ("fp32", "int8"):
        session = onnx_session(paths[kind], threads)
        row[kind] = median_ms(lambda s=session: run_onnx(s, feats, feat_lens), repeats)
    return row


def int8_agreement(paths: dict[str, Path]) -> tuple[float, float]:
    """(max abs logit difference, fraction of frames with the same argmax) int8 vs eager."""
    model, _ = load_model(paths["safetensors"])
    n = int(UTTERANCE_SECONDS * FRAMES_PER_SECOND)
    feats, feat_lens = torch.randn(1, n, model.dims.n_mels), torch.tensor([n])
    with torch.inference_mode():
        eager = model(feats, feat_lens).logits
    logits, _ = run_onnx(onnx_session(paths["int8"], 1), feats, feat_lens)
    same = (logits.argmax(-1) == eager.argmax(-1)).float().mean().item()
    return (logits - eager).abs().max().item(), same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["demo-student", "demo-teacher"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(None, args.overrides, ExportConfig)
    print(
        f"# torch {torch.__version__}, onnxruntime {ort.__version__}, {platform.machine()}, "
        f"opset {cfg.opset}, int8 ops {'/'.join(cfg.quantize_ops)}; "
        f"median of {args.repeats} runs, one {UTTERANCE_SECONDS:.0f} s utterance"
    )
    print(
        "| preset | params | safetensors | onnx fp32 | onnx int8 | threads | eager ms "
        "| ort fp32 ms | ort int8 ms | int8 max abs diff | int8 argmax agree |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            paths = export_preset(preset, Path(tmp), cfg)
            mb = {k: p.stat().st_size / 1e6 for k, p in paths.items()}
            n_params = load_model(paths["safetensors"])[0].n_params()
            diff, agree = int8_agreement(paths)
            for threads in args.threads:
                ms = measure(paths, threads, args.repeats)
                print(
                    f"| {preset} | {n_params / 1e6:.2f} M | {mb['safetensors']:.2f} MB "
                    f"| {mb['fp32']:.2f} MB | {mb['int8']:.2f} MB | {threads} "
                    f"| {ms['eager']:.1f} | {ms['fp32']:.1f} | {ms['int8']:.1f} "
                    f"| {diff:.3f} | {agree:.1%} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
