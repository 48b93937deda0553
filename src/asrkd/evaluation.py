"""Evaluation: CTC decoding (greedy, or lexicon beam search), WER/CER, and the cost of running
the model — a .safetensors model file, or an .onnx file from `asrkd export` (fp32 or int8, run
by onnxruntime), so a delivered file is scored as it will run.

For each test set NAME and decoding TAG (`greedy`, or e.g. `lexicon-b8-lm0.5-wb1`, written
beside the greedy files), `evaluate` writes into its output folder::

    hyps-NAME-TAG.txt     cut id <TAB> reference <TAB> hypothesis
    errors-NAME-TAG.txt   per-utterance word alignment and error counts, worst first
    wer-NAME-TAG.json     WER, CER, error counts
    summary.json          all sets plus parameters, bytes on disk, peak memory, latency, RTF
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from lhotse import CutSet

from asrkd.config import EvalConfig, from_dict, to_dict
from asrkd.data.dataset import collate, cut_text, duration_batches, load_cuts
from asrkd.data.text import Tokenizer, normalize_text
from asrkd.lexicon import (
    LexiconDecoder,
    WordLM,
    clear_caches,
    eval_decoder,
    lm_from_manifest,
    training_lm,
)
from asrkd.models.conformer import ConformerCTC, ConformerDims
from asrkd.models.ctc import greedy_decode
from asrkd.precision import limit_kernel_cache
from asrkd.scoring import (  # noqa: F401  error_rates, score: re-exported (train, tests)
    Result,
    error_rates,
    oov_rate,
    score,
    write_results,
    write_set,
    write_summary,
)
from asrkd.transcribe import ModelFile, first_text, is_onnx, open_model_file

Forward = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _outputs(forward: Forward, cuts: CutSet, tokenizer: Tokenizer, batch_seconds: float):
    """(cuts, normalised references, logits (B, T', V), lengths (B,)) per duration batch."""
    for group in duration_batches(cuts, batch_seconds):
        batch = collate(CutSet.from_cuts(group), tokenizer)
        logits, lengths = forward(batch.feats, batch.feat_lens)
        yield group, [normalize_text(cut_text(c)) for c in group], logits, lengths


def _greedy(group, refs, logits, lengths, tokenizer: Tokenizer) -> list[Result]:
    paths = greedy_decode(logits, lengths, tokenizer.blank_id)
    return [(c.id, r, tokenizer.decode(ids)) for c, r, ids in zip(group, refs, paths)]


@torch.inference_mode()
def decode_cuts(
    model: ConformerCTC,
    cuts: CutSet,
    tokenizer: Tokenizer,
    batch_seconds: float,
    device: torch.device | str = "cpu",
) -> list[Result]:
    """Greedy-decode every cut with a model being trained (eval mode meanwhile); results
    sorted by cut id."""

    def forward(feats, feat_lens):
        out = model(feats.to(device), feat_lens.to(device))
        return out.logits, out.lengths

    was_training = model.training
    model.eval()
    try:
        results = []
        for group, refs, logits, lengths in _outputs(forward, cuts, tokenizer, batch_seconds):
            results += _greedy(group, refs, logits, lengths, tokenizer)
    finally:
        model.train(was_training)
    return sorted(results)


@torch.inference_mode()
def decode_model_file(
    model: ModelFile, cuts: CutSet, batch_seconds: float, lexicon: LexiconDecoder | None
) -> tuple[list[Result], list[Result] | None]:
    """(greedy, lexicon beam search or None) results of every cut from the same forward
    passes of an opened model file (PyTorch or ONNX)."""
    tok = model.tokenizer
    greedy, lex = [], []
    for group, refs, logits, lengths in _outputs(model.forward, cuts, tok, batch_seconds):
        greedy += _greedy(group, refs, logits, lengths, tok)
        if lexicon is None:
            continue
        log_probs = logits.float().log_softmax(-1).cpu().numpy()
        for c, r, lp, n in zip(group, refs, log_probs, lengths.tolist()):
            lex.append((c.id, r, lexicon.decode(lp[:n])))
    return sorted(greedy), (sorted(lex) if lexicon is not None else None)


def make_lexicon_decoder(
    cfg: EvalConfig, model: ModelFile, model_path: str | Path
) -> LexiconDecoder | None:
    """The beam-search decoder cfg asks for (None for greedy), asrkd.lexicon.eval_decoder: the
    lexicon an exported file carries, else cfg.vocabulary whose "train" part is the transcripts
    of cfg.lexicon_cuts, else of the model's training manifest (its transcribed speakers)."""

    def train_lm(order: int) -> WordLM:
        if cfg.lexicon_cuts:
            return lm_from_manifest(cfg.lexicon_cuts, order)
        return training_lm(model.run_config, model_path, order)

    lexicon = eval_decoder(cfg, model.tokenizer, model.lexicon, model_path, train_lm)
    return lexicon.release_lm() if lexicon is not None else None


@torch.inference_mode()
def measure_speed(
    model: ModelFile, cuts: CutSet, cfg: EvalConfig, lexicon: LexiconDecoder | None = None
) -> dict:
    """Latency at batch size 1 (mean over the first cfg.latency_utterances cuts by id) and its
    real-time factor, from stored features to text: the network and the decoder the WER is
    scored with (`lexicon`, else greedy), also given apart (network_rtf, decoder_rtf); and the
    network's throughput at batches of cfg.batch_seconds of audio."""
    tok = model.tokenizer
    chosen = sorted(cuts, key=lambda c: c.id)[: cfg.latency_utterances]
    singles = [collate(CutSet.from_cuts([c]), tok) for c in chosen]
    model.forward(singles[0].feats, singles[0].feat_lens)  # warm-up
    network, decoder = [], []
    for b in singles:
        t0 = time.perf_counter()
        logits, lengths = model.forward(b.feats, b.feat_lens)
        t1 = time.perf_counter()
        first_text(logits, lengths, tok, lexicon)
        network.append(t1 - t0)
        decoder.append(time.perf_counter() - t1)
    audio = sum(b.audio_seconds for b in singles)
    batches = [collate(CutSet.from_cuts(g), tok) for g in duration_batches(cuts, cfg.batch_seconds)]
    t0 = time.perf_counter()
    for b in batches:
        model.forward(b.feats, b.feat_lens)
    elapsed = time.perf_counter() - t0
    total = sum(network) + sum(decoder)
    return {
        "latency_ms": 1000 * total / len(singles),
        "rtf": total / audio,
        "network_rtf": sum(network) / audio,
        "decoder_rtf": sum(decoder) / audio,
        "decoder": cfg.tag,
        "throughput_audio_s_per_s": sum(b.audio_seconds for b in batches) / elapsed,
        "latency_utterances": len(singles),
        "threads": cfg.threads if is_onnx_model(model) else torch.get_num_threads(),
    }


def is_onnx_model(model: ModelFile) -> bool:
    return model.format.startswith("onnx")


PROBE_MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, kept from moving
# How memory is measured (a stored figure from another probe is not reused): 3 since exported
# files run without onnxruntime's memory arena and their decoder is built for the engine asked
MEMORY_PROBE = 3


def measure_memory(model_path: str | Path, cuts_path: str | Path, cfg: EvalConfig) -> dict:
    """Peak resident memory of loading the model and the decoder its WER is scored with, and
    transcribing cfg.latency_utterances utterances one at a time (as a teacher's is measured),
    in a fresh process so nothing else this process holds is counted; with the network's and the
    decoder's shares (the resident growth of loading each)."""
    code = (
        "import json,sys; from asrkd.evaluation import _memory_probe; "
        "print(json.dumps(_memory_probe(*sys.argv[1:4])))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(model_path), str(cuts_path), json.dumps(to_dict(cfg))],
        capture_output=True,
        text=True,
        check=False,
        env=probe_env(),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def probe_env() -> dict[str, str]:
    """The environment of a memory probe's process: glibc's malloc with a fixed mmap threshold.

    By default glibc raises the threshold each time a large block is freed, so later large
    buffers (attention over a long utterance) come from the heap, where fragmentation that
    depends on the two threads' timing keeps them resident: the same model over the same 100
    utterances peaked anywhere from 87 to 134 MB. With the threshold fixed, blocks above it are
    mapped and given back when freed, and the peak is the memory actually in use, the same to
    0.4 MB run after run (docs/benchmarks.md). A threshold the user set is kept. And oneDNN's
    kernel cache as `asrkd transcribe` sets it (asrkd.precision.limit_kernel_cache)."""
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(PROBE_MMAP_THRESHOLD))
    return limit_kernel_cache(env)


def _status_mb(field: str) -> float:
    """A memory figure (VmRSS, VmHWM) of this process from /proc, in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


@torch.inference_mode()
def _memory_probe(model_path: str, cuts_path: str, cfg_json: str) -> dict:
    cfg = from_dict(EvalConfig, json.loads(cfg_json))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tok = Tokenizer()
    cuts = sorted(load_cuts(cuts_path), key=lambda c: c.id)[: cfg.latency_utterances]
    batches = [collate(CutSet.from_cuts([c]), tok) for c in cuts]
    # Run a throwaway minimal model first, so torch's one-off kernel and thread-pool set-up is
    # in the baseline and the figure below scales with the model measured.
    warm = ConformerCTC(
        ConformerDims(
            n_mels=batches[0].feats.shape[-1], d_model=16, n_layers=1, n_heads=2, ff_mult=2,
            conv_kernel=7,
        )
    )  # fmt: skip
    for b in batches:
        warm(b.feats, b.feat_lens)
    del warm
    if is_onnx(model_path):
        import onnxruntime  # noqa: F401  the runtime's own code is not the model's memory
    base = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the high-water mark VmHWM to the current RSS
    model = open_model_file(model_path, cfg.threads, lexicon=False, precision=cfg.precision)
    network = _status_mb("VmRSS")
    if cfg.decoder != "greedy":
        model.lexicon = model.file_lexicon(cfg.lexicon_engine)
    lexicon = make_lexicon_decoder(cfg, model, model_path)
    model.lexicon = None  # kept only where it is the decoder (eval_decoder returns it then)
    clear_caches()  # what built the decoder, kept for the next one, is not the decoder's
    gc.collect()
    decoder = _status_mb("VmRSS")
    for b in batches:
        logits, lengths = model.forward(b.feats, b.feat_lens)
        first_text(logits, lengths, model.tokenizer, lexicon)
    peak = _status_mb("VmHWM")
    return {
        "peak_rss_mb": peak,
        "baseline_rss_mb": base,
        "model_memory_mb": peak - base,
        "network_mb": network - base,
        "decoder_mb": decoder - network,
        "decoder": cfg.tag,
    }


def evaluate(
    model_path: str | Path,
    cuts_paths: list[str | Path],
    out_dir: str | Path,
    cfg: EvalConfig,
    measure: bool = True,
) -> dict:
    """Score a model file (.safetensors, or .onnx from `asrkd export`) on each cut manifest and
    (optionally) measure its cost."""
    if is_onnx(model_path):  # scored from audio, as a device runs it (asrkd.ondevice)
        from asrkd.ondevice import evaluate_onnx

        return evaluate_onnx(model_path, cuts_paths, out_dir, cfg, measure)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(out_dir)
    model = open_model_file(
        model_path, cfg.threads, engine=cfg.lexicon_engine, precision=cfg.precision
    )
    summary: dict = {
        "model": str(model_path),
        "format": model.format,
        "precision": model.precision,
        "n_params": model.n_params,
        "bytes_fp32": 4 * model.n_params,
        "bytes_on_disk": Path(model_path).stat().st_size,
        "family": model.family,
        "dims": model.dims.__dict__,
        "sets": {},
    }
    lexicon = make_lexicon_decoder(cfg, model, model_path)
    summary["decoding"] = cfg.tag
    for path in cuts_paths:
        cuts = load_cuts(path)
        name = Path(path).name.split(".")[0].removeprefix("cuts_")
        greedy, lex = decode_model_file(model, cuts, cfg.batch_seconds, lexicon)
        summary["sets"][name] = write_set(greedy, lex, lexicon, out_dir, name, cfg.tag)
    if measure and cuts_paths:
        summary.update(measure_costs(model_path, cuts_paths[0], cfg, model))
    return write_summary(summary, out_dir)


def measure_costs(
    model_path: str | Path,
    cuts_path: str | Path,
    cfg: EvalConfig,
    model: ModelFile | None = None,
    speed: bool = True,
    memory: bool = True,
) -> dict:
    """{"speed": measure_speed(...), "memory": measure_memory(...)} on one cut manifest; the
    timing wants a quiet machine, the memory probe (a fresh process) does not."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    costs = {}
    if speed:
        model = model or open_model_file(
            model_path, cfg.threads, engine=cfg.lexicon_engine, precision=cfg.precision
        )
        lexicon = make_lexicon_decoder(cfg, model, model_path)  # built before the clock starts
        costs["speed"] = measure_speed(model, load_cuts(cuts_path), cfg, lexicon)
    if memory:
        costs["memory"] = measure_memory(model_path, cuts_path, cfg)
    return costs
