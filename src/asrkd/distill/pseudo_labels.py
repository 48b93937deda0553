"""Which teacher transcripts (pseudo-labels) sequence KD may train on.

A cached transcript is None when the teacher's text could not be mapped into the student's units
(asrkd.data.normalize). Of the others, every one, with or without a transcript of its own, is
left out when it is
- repetitive: its gzip compression ratio exceeds `distill.max_pseudo_compression` (Whisper's
  own test for the loops it falls into on silence, music or noise: "thank you thank you ...";
  openai/whisper and faster-whisper use 2.4);
- too long for the student: CTC cannot align it to the student's output frames of the utterance
  (one frame per unit and a blank between repeats), so its loss term would be infinite and
  zeroed without a word;
and, with `distill.max_pseudo_wer` > 0, when its word error rate against the utterance's own
transcript exceeds it (distil-whisper keeps pseudo-labels within 10 % WER). SequenceKD leaves
None out of its term. Each transcript left out is named in the run's list
(`teacher_transcripts_left_out.tsv`); the log names the unmappable, repetitive and too long
ones and counts the others. The checks run on cached transcripts (teacher.cache, which a
Whisper teacher needs); a count of None in summary.json is a check that did not run.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jiwer

log = logging.getLogger(__name__)


LEFT_OUT_FILE = "teacher_transcripts_left_out.tsv"  # in the run's folder
# Why a transcript is left out, in the order they are tested (the first that holds is given)
REASONS = ("unmappable", "repetitive", "too_long", "over_max_wer")


@dataclass
class PseudoLabelStats:
    """What the filter did, for the run's summary and its list of what was left out."""

    n_checked: int = 0  # transcripts with a reference, checked against it
    # reason (REASONS) -> cut ids left out for it
    left_out: dict[str, list[str]] = field(default_factory=lambda: {r: [] for r in REASONS})
    # cut id -> (WER or None, teacher transcript, the utterance's own or "") of each left out
    # but the unmappable (which have no text)
    texts: dict[str, tuple[float | None, str, str]] = field(default_factory=dict)
    applied: set[str] = field(default_factory=set)  # the reasons checked for

    @property
    def unmappable(self) -> list[str]:
        return self.left_out["unmappable"]

    @property
    def over_wer(self) -> list[str]:
        return self.left_out["over_max_wer"]

    @property
    def n_left_out(self) -> int:
        return sum(len(ids) for ids in self.left_out.values())

    def summary(self) -> dict:
        """Counts for summary.json: None for a check that did not run (off, or no cache)."""
        return {
            "pseudo_labels_checked": self.n_checked,
            **{
                f"pseudo_labels_{r}": len(ids) if r in self.applied else None
                for r, ids in self.left_out.items()
            },
        }

    def merge(self, other: PseudoLabelStats) -> None:
        """Add another filter's counts and lists (one manifest's) to these."""
        self.n_checked += other.n_checked
        self.applied |= other.applied
        for reason, ids in other.left_out.items():
            self.left_out[reason] += ids
        self.texts |= other.texts

    def write_tsv(self, path: Path) -> None:
        """Every transcript left out, one per line: cut id, reason (REASONS), its WER against
        the utterance's own transcript (where checked), the teacher's text, the utterance's own
        (tab-separated, with a header), so that a user can read what the teacher got wrong."""
        lines = ["cut_id\treason\twer\tteacher\treference"]
        for reason, ids in self.left_out.items():
            for cut_id in ids:
                wer, text, ref = self.texts.get(cut_id, (None, "", ""))
                shown = "" if wer is None else f"{wer:.3f}"
                lines.append(f"{cut_id}\t{reason}\t{shown}\t{text}\t{ref}")
        from asrkd.models.checkpoint import atomic_write  # torch: training code only

        content = "\n".join(lines) + "\n"
        atomic_write(path, lambda tmp: Path(tmp).write_text(content, encoding="utf-8"))


def compression_ratio(text: str) -> float:
    """Bytes of `text` over bytes of its zlib compression, as openai/whisper computes it: ~1-2
    for speech, above 2.4 for a transcript caught in a loop (0 for the empty text)."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def pseudo_label_wer(hypothesis: str, reference: str) -> float:
    """Word error rate of one teacher transcript against the truth (1.0 when the truth is
    empty but the transcript is not, 0.0 when both are)."""
    if not reference.split():
        return float(bool(hypothesis.split()))
    return float(jiwer.wer(reference, hypothesis))


def filter_pseudo_labels(
    texts: dict[str, str | None],
    references: dict[str, str],
    max_wer: float,
    max_compression: float = 0.0,
    fits: Callable[[str, str], bool] | None = None,
) -> tuple[dict[str, str | None], PseudoLabelStats]:
    """(texts with those left out set to None, stats). `references`: cut id -> its own
    transcript, for the cuts that have one; max_wer 0 = no WER filter; max_compression 0 = no
    loop filter; `fits(cut id, text)`: whether the student's CTC can align `text` to that cut
    (None: not checked)."""
    stats = PseudoLabelStats()
    stats.applied = {"unmappable"}
    stats.applied |= {"repetitive"} if max_compression > 0 else set()
    stats.applied |= {"too_long"} if fits is not None else set()
    stats.applied |= {"over_max_wer"} if max_wer > 0 else set()
    kept: dict[str, str | None] = {}
    for cut_id, text in texts.items():
        ref = references.get(cut_id)
        reason, wer = None, None
        if text is None:
            reason = "unmappable"
        elif max_compression > 0 and compression_ratio(text) > max_compression:
            reason = "repetitive"
        elif fits is not None and not fits(cut_id, text):
            reason = "too_long"
        elif ref is not None and max_wer > 0:
            stats.n_checked += 1
            wer = pseudo_label_wer(text, ref)
            reason = "over_max_wer" if wer > max_wer else None
        if reason is not None:
            stats.left_out[reason].append(cut_id)
            if text is not None:
                stats.texts[cut_id] = (wer, text, ref or "")
            text = None
        kept[cut_id] = text
    for reason, what in (
        ("unmappable", "could not be written in the student's units"),
        ("repetitive", f"repeat themselves (compression ratio over {max_compression:g}: a loop)"),
        ("too_long", "are longer than the student's CTC can align to their audio"),
    ):
        if stats.left_out[reason]:
            ids = stats.left_out[reason]
            log.warning("%d teacher transcripts %s and are left out of sequence KD: %s",
                        len(ids), what, ", ".join(ids))  # fmt: skip
    if max_wer > 0:
        log.info(
            "distill.max_pseudo_wer=%g: %d of %d checked teacher transcripts dropped",
            max_wer,
            len(stats.over_wer),
            stats.n_checked,
        )
    return kept, stats
