"""Evaluation: CTC decoding (greedy, or lexicon beam search), WER/CER, and the cost of running
the model.

For each test set NAME and decoding TAG (`greedy`, or e.g. `lexicon-b8-lm0.5-wb1`, written
beside the greedy files), `evaluate` writes into its output folder::

    hyps-NAME-TAG.txt     cut id <TAB> reference <TAB> hypothesis
    errors-NAME-TAG.txt   per-utterance word alignment and error counts, worst first
    wer-NAME-TAG.json     WER, CER, error counts
    summary.json          all sets plus parameters, bytes on disk, peak memory, latency, RTF
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jiwer
import torch
from lhotse import CutSet

from asrkd.config import ConfigError, EvalConfig
from asrkd.data.dataset import collate, cut_text, duration_batches, load_cuts
from asrkd.data.text import Tokenizer, normalize_text
from asrkd.lexicon import LexiconDecoder, WordLM
from asrkd.models.checkpoint import load_model, read_checkpoint_meta
from asrkd.models.conformer import ConformerCTC, ConformerDims
from asrkd.models.ctc import greedy_decode

Result = tuple[str, str, str]  # cut id, reference, hypothesis


def _forward(model: ConformerCTC, cuts: CutSet, tokenizer: Tokenizer, batch_seconds, device):
    """(cuts, normalised references, model output) per duration batch, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        for group in duration_batches(cuts, batch_seconds):
            batch = collate(CutSet.from_cuts(group), tokenizer)
            out = model(batch.feats.to(device), batch.feat_lens.to(device))
            yield group, [normalize_text(cut_text(c)) for c in group], out
    finally:
        model.train(was_training)


@torch.inference_mode()
def decode_cuts(
    model: ConformerCTC,
    cuts: CutSet,
    tokenizer: Tokenizer,
    batch_seconds: float,
    device: torch.device | str = "cpu",
) -> list[Result]:
    """Greedy-decode every cut; results sorted by cut id."""
    results = []
    for group, refs, out in _forward(model, cuts, tokenizer, batch_seconds, device):
        paths = greedy_decode(out.logits, out.lengths, tokenizer.blank_id)
        results += [(c.id, r, tokenizer.decode(ids)) for c, r, ids in zip(group, refs, paths)]
    return sorted(results)


@torch.inference_mode()
def decode_cuts_lexicon(
    model: ConformerCTC,
    cuts: CutSet,
    tokenizer: Tokenizer,
    batch_seconds: float,
    lexicon: LexiconDecoder,
) -> tuple[list[Result], list[Result]]:
    """(greedy, lexicon beam search) results of every cut from the same forward passes."""
    greedy, lex = [], []
    for group, refs, out in _forward(model, cuts, tokenizer, batch_seconds, "cpu"):
        paths = greedy_decode(out.logits, out.lengths, tokenizer.blank_id)
        greedy += [(c.id, r, tokenizer.decode(ids)) for c, r, ids in zip(group, refs, paths)]
        log_probs = out.logits.float().log_softmax(-1).cpu().numpy()
        for c, r, lp, n in zip(group, refs, log_probs, out.lengths.tolist()):
            lex.append((c.id, r, lexicon.decode(lp[:n])))
    return sorted(greedy), sorted(lex)


def make_lexicon_decoder(
    cfg: EvalConfig, tokenizer: Tokenizer, model_path: str | Path
) -> LexiconDecoder | None:
    """The beam-search decoder cfg asks for (None for greedy), its words and unigram LM taken
    from the transcripts of cfg.lexicon_cuts, or else of the model's training manifest."""
    if cfg.decoder == "greedy":
        return None
    source = cfg.lexicon_cuts
    if not source:
        run = read_checkpoint_meta(model_path).get("config") or {}
        source = run.get("data", {}).get("train_cuts", "")
        if not source:
            raise ConfigError(
                f"{model_path} names no training manifest: set eval.lexicon_cuts to the cut "
                "manifest whose transcripts give the lexicon decoder its words"
            )
    lm = WordLM.from_texts(cut_text(c) for c in load_cuts(source))
    return LexiconDecoder(tokenizer, lm, cfg.beam, cfg.lm_weight, cfg.word_bonus)


def oov_rate(results: list[Result], lexicon: LexiconDecoder) -> float:
    """Share of reference words the lexicon cannot spell (they can never be recognised)."""
    words = [w for _, ref, _ in results for w in ref.split()]
    return sum(w not in lexicon.lm.log_probs for w in words) / max(1, len(words))


def error_rates(results: list[Result]) -> tuple[float, float]:
    """Corpus-level (WER, CER) over utterances with a non-empty reference."""
    refs = [r for _, r, _ in results if r]
    hyps = [h for _, r, h in results if r]
    if not refs:
        raise ValueError("no utterance with a reference transcript to score")
    return float(jiwer.wer(refs, hyps)), float(jiwer.cer(refs, hyps))


def score(results: list[Result]) -> dict:
    """WER/CER with their error counts (substitutions, deletions, insertions)."""
    refs = [r for _, r, _ in results if r]
    hyps = [h for _, r, h in results if r]
    w = jiwer.process_words(refs, hyps)
    c = jiwer.process_characters(refs, hyps)
    n_words = w.hits + w.substitutions + w.deletions
    return {
        "wer": w.wer,
        "cer": c.cer,
        "n_utterances": len(refs),
        "n_words": n_words,
        "substitutions": w.substitutions,
        "deletions": w.deletions,
        "insertions": w.insertions,
    }


def write_results(results: list[Result], out_dir: Path, name: str, decoding: str) -> dict:
    """The hypotheses, errors and summary files of one test set and decoding; returns the
    summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{name}-{decoding}"
    with open(out_dir / f"hyps-{tag}.txt", "w", encoding="utf-8") as fh:
        fh.writelines(f"{cut_id}\t{ref}\t{hyp}\n" for cut_id, ref, hyp in results)
    rows = []
    for cut_id, ref, hyp in results:
        if not ref:
            continue
        w = jiwer.process_words(ref, hyp)
        errors = w.substitutions + w.deletions + w.insertions
        rows.append((errors, cut_id, jiwer.visualize_alignment(w, show_measures=False)))
    with open(out_dir / f"errors-{tag}.txt", "w", encoding="utf-8") as fh:
        for errors, cut_id, text in sorted(rows, key=lambda r: (-r[0], r[1])):
            fh.write(f"{cut_id}: {errors} word errors\n{text.strip()}\n\n")
    summary = score(results)
    (out_dir / f"wer-{tag}.json").write_text(json.dumps(summary, indent=2))
    return summary


@torch.inference_mode()
def measure_speed(model: ConformerCTC, cuts: CutSet, cfg: EvalConfig) -> dict:
    """Latency at batch size 1 (mean over the first cfg.latency_utterances cuts by id), its
    real-time factor, and throughput at batches of cfg.batch_seconds of audio."""
    model.eval()
    tok = Tokenizer()
    chosen = sorted(cuts, key=lambda c: c.id)[: cfg.latency_utterances]
    singles = [collate(CutSet.from_cuts([c]), tok) for c in chosen]
    model(singles[0].feats, singles[0].feat_lens)  # warm-up
    times = []
    for b in singles:
        t0 = time.perf_counter()
        model(b.feats, b.feat_lens)
        times.append(time.perf_counter() - t0)
    audio = sum(b.audio_seconds for b in singles)
    batches = [collate(CutSet.from_cuts(g), tok) for g in duration_batches(cuts, cfg.batch_seconds)]
    t0 = time.perf_counter()
    for b in batches:
        model(b.feats, b.feat_lens)
    elapsed = time.perf_counter() - t0
    return {
        "latency_ms": 1000 * sum(times) / len(times),
        "rtf": sum(times) / audio,
        "throughput_audio_s_per_s": sum(b.audio_seconds for b in batches) / elapsed,
        "latency_utterances": len(singles),
        "threads": torch.get_num_threads(),
    }


def measure_memory(
    model_path: str | Path, cuts_path: str | Path, n_utts: int, threads: int
) -> dict:
    """Peak resident memory of loading the model and decoding n_utts utterances one at a time,
    measured in a fresh process so nothing else this process holds is counted."""
    code = (
        "import json,sys; from asrkd.evaluate import _memory_probe; "
        "print(json.dumps(_memory_probe(sys.argv[1], sys.argv[2], int(sys.argv[3]), "
        "int(sys.argv[4]))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(model_path), str(cuts_path), str(n_utts), str(threads)],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _status_mb(field: str) -> float:
    """A memory figure (VmRSS, VmHWM) of this process from /proc, in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _memory_probe(model_path: str, cuts_path: str, n_utts: int, threads: int) -> dict:
    if threads:
        torch.set_num_threads(threads)
    tok = Tokenizer()
    cuts = sorted(load_cuts(cuts_path), key=lambda c: c.id)[:n_utts]
    batches = [collate(CutSet.from_cuts([c]), tok) for c in cuts]
    with torch.inference_mode():
        # Run a throwaway minimal model first, so torch's one-off kernel and thread-pool set-up
        # is in the baseline and the figure below scales with the model measured.
        warm = ConformerCTC(
            ConformerDims(
                n_mels=batches[0].feats.shape[-1],
                d_model=16,
                n_layers=1,
                n_heads=2,
                ff_mult=2,
                conv_kernel=7,
            )
        )
        for b in batches:
            warm(b.feats, b.feat_lens)
        del warm
    base = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the high-water mark VmHWM to the current RSS
    model, _ = load_model(model_path)
    with torch.inference_mode():
        for b in batches:
            model(b.feats, b.feat_lens)
    peak = _status_mb("VmHWM")
    return {"peak_rss_mb": peak, "baseline_rss_mb": base, "model_memory_mb": peak - base}


def evaluate(
    model_path: str | Path,
    cuts_paths: list[str | Path],
    out_dir: str | Path,
    cfg: EvalConfig,
    measure: bool = True,
) -> dict:
    """Score a model file on each cut manifest and (optionally) measure its cost."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(out_dir)
    model, tok = load_model(model_path)
    summary: dict = {
        "model": str(model_path),
        "n_params": model.n_params(),
        "bytes_fp32": 4 * model.n_params(),
        "bytes_on_disk": Path(model_path).stat().st_size,
        "dims": model.dims.__dict__,
        "sets": {},
    }
    lexicon = make_lexicon_decoder(cfg, tok, model_path)
    summary["decoding"] = cfg.tag
    for path in cuts_paths:
        cuts = load_cuts(path)
        name = Path(path).name.split(".")[0].removeprefix("cuts_")
        if lexicon is None:
            results = decode_cuts(model, cuts, tok, cfg.batch_seconds)
            summary["sets"][name] = write_results(results, out_dir, name, cfg.tag)
            continue
        greedy, lex = decode_cuts_lexicon(model, cuts, tok, cfg.batch_seconds, lexicon)
        greedy_summary = write_results(greedy, out_dir, name, "greedy")
        summary["sets"][name] = {
            **write_results(lex, out_dir, name, cfg.tag),
            "oov_rate": oov_rate(lex, lexicon),
            "greedy_wer": greedy_summary["wer"],
            "greedy_cer": greedy_summary["cer"],
        }
    if measure and cuts_paths:
        cuts = load_cuts(cuts_paths[0])
        summary["speed"] = measure_speed(model, cuts, cfg)
        summary["memory"] = measure_memory(
            model_path, cuts_paths[0], cfg.latency_utterances, cfg.threads
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
