"""Scoring hypotheses against references (WER/CER with jiwer) and the files `asrkd evaluate`
writes: pure functions over (cut id, reference, hypothesis) triples, shared by the PyTorch path
(asrkd.evaluate) and the PyTorch-free one (asrkd.ondevice).
"""

from __future__ import annotations

import json
from pathlib import Path

import jiwer

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
