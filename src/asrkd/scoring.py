"""Scoring hypotheses against references (WER/CER with jiwer) and the files `asrkd evaluate`
writes: pure functions over (cut id, reference, hypothesis) triples, shared by the PyTorch path
(asrkd.evaluation) and the PyTorch-free one (asrkd.ondevice).
"""

from __future__ import annotations

import json
from pathlib import Path

import jiwer
import numpy as np

Result = tuple[str, str, str]  # cut id, reference, hypothesis


def oov_rate(results: list[Result], lexicon) -> float:
    """Share of reference words the lexicon cannot spell (they can never be recognised)."""
    words = [w for _, ref, _ in results for w in ref.split()]
    return sum(not lexicon.knows(w) for w in words) / max(1, len(words))


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


def hyps_path(out_dir: str | Path, name: str, decoding: str) -> Path:
    """Where write_results keeps the transcripts of test set `name` decoded by `decoding`."""
    return Path(out_dir) / f"hyps-{name}-{decoding}.txt"


def write_results(results: list[Result], out_dir: Path, name: str, decoding: str) -> dict:
    """The hypotheses, errors and summary files of one test set and decoding; returns the
    summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{name}-{decoding}"
    with open(hyps_path(out_dir, name, decoding), "w", encoding="utf-8") as fh:
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


def write_summary(summary: dict, out_dir: str | Path) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def write_set(greedy: list[Result], lex: list[Result] | None, lexicon, out_dir: Path, name: str,
              tag: str) -> dict:  # fmt: skip
    """The result files of one test set and its summary: greedy decoding alone (tagged `tag`),
    or the lexicon decoding (tagged `tag`) with its OOV rate and the greedy figures beside it."""
    if lex is None:
        return write_results(greedy, out_dir, name, tag)
    greedy_summary = write_results(greedy, out_dir, name, "greedy")
    return {
        **write_results(lex, out_dir, name, tag),
        "oov_rate": oov_rate(lex, lexicon),
        "greedy_wer": greedy_summary["wer"],
        "greedy_cer": greedy_summary["cer"],
    }


def read_results(path: str | Path) -> list[Result]:
    """The (cut id, reference, hypothesis) triples of a hyps-*.txt file write_results wrote."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        cut_id, ref, hyp = (line.split("\t") + ["", ""])[:3]
        rows.append((cut_id, ref, hyp))
    return rows


def paired_bootstrap(a: list[Result], b: list[Result], rounds: int = 5000, seed: int = 0) -> dict:
    """How sure the WER difference b - a of two systems on the same utterances is, as far as
    the choice of test utterances goes (Bisani & Ney 2004: utterances resampled with
    replacement `rounds` times, both systems scored on each sample). Returns both WERs, the
    difference and its 95 % interval (fractions), and the share of samples where b is better.
    It says nothing of training noise: two runs of one recipe differ by more than this."""
    hyps_b = {cut_id: hyp for cut_id, _, hyp in b}
    missing = [cut_id for cut_id, ref, _ in a if ref and cut_id not in hyps_b]
    if missing:
        raise ValueError(f"{len(missing)} utterances of the first system missing from the second, "
                         f"e.g. {missing[0]}")  # fmt: skip
    errors, words = [], []
    for cut_id, ref, hyp in a:
        if not ref:
            continue
        counts = [jiwer.process_words(ref, h) for h in (hyp, hyps_b[cut_id])]
        errors.append([c.substitutions + c.deletions + c.insertions for c in counts])
        words.append(len(ref.split()))
    if not words:
        raise ValueError("no utterance with a reference transcript to score")
    e, n = np.array(errors, dtype=float), np.array(words, dtype=float)
    rng = np.random.default_rng(seed)
    diff = np.empty(rounds)
    for start in range(0, rounds, 256):  # (256, utterances) indices at a time: bounded memory
        picks = rng.integers(0, len(n), (min(256, rounds - start), len(n)))
        sample_errors = e[picks].sum(axis=1)  # (rounds in chunk, 2)
        sample_words = n[picks].sum(axis=1)
        diff[start : start + len(picks)] = (
            sample_errors[:, 1] - sample_errors[:, 0]
        ) / sample_words
    wer = e.sum(axis=0) / n.sum()
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return {
        "wer_a": float(wer[0]),
        "wer_b": float(wer[1]),
        "difference": float(wer[1] - wer[0]),
        "ci95": (float(lo), float(hi)),
        "b_better": float((diff < 0).mean()),
        "n_utterances": len(n),
        "n_words": int(n.sum()),
    }
