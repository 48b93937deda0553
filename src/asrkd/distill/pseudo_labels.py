"""Which teacher transcripts (pseudo-labels) sequence KD may train on.

A cached transcript is None when the teacher's text could not be mapped into the student's units
(asrkd.data.normalize); with `distill.max_pseudo_wer` > 0, a transcript whose word error rate
against the utterance's own transcript exceeds it is set to None too (distil-whisper keeps
pseudo-labels within 10 % WER). SequenceKD leaves None out of its term; untranscribed
utterances have no reference and are never dropped for WER.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import jiwer

log = logging.getLogger(__name__)


LEFT_OUT_FILE = "teacher_transcripts_left_out.tsv"  # in the run's folder


@dataclass
class PseudoLabelStats:
    """What the filter did, for the run's summary and its list of what was left out."""

    n_checked: int = 0  # transcripts with a reference
    unmappable: list[str] = field(default_factory=list)  # cut ids
    over_wer: list[str] = field(default_factory=list)  # cut ids
    # cut id -> (WER, teacher transcript, the utterance's own) of each over_wer
    over_wer_texts: dict[str, tuple[float, str, str]] = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "pseudo_labels_checked": self.n_checked,
            "pseudo_labels_unmappable": len(self.unmappable),
            "pseudo_labels_over_max_wer": len(self.over_wer),
        }

    def merge(self, other: PseudoLabelStats) -> None:
        """Add another filter's counts and lists (one manifest's) to these."""
        self.n_checked += other.n_checked
        self.unmappable += other.unmappable
        self.over_wer += other.over_wer
        self.over_wer_texts |= other.over_wer_texts

    def write_tsv(self, path: Path) -> None:
        """Every transcript left out, one per line: cut id, reason (over_max_wer or
        unmappable), its WER, the teacher's text, the utterance's own (tab-separated, with a
        header), so that a user can read what the teacher got wrong."""
        lines = ["cut_id\treason\twer\tteacher\treference"]
        for cut_id in self.over_wer:
            wer, text, ref = self.over_wer_texts[cut_id]
            lines.append(f"{cut_id}\tover_max_wer\t{wer:.3f}\t{text}\t{ref}")
        from asrkd.models.checkpoint import atomic_write  # torch: training code only

        lines += [f"{cut_id}\tunmappable\t\t\t" for cut_id in self.unmappable]
        content = "\n".join(lines) + "\n"
        atomic_write(path, lambda tmp: Path(tmp).write_text(content, encoding="utf-8"))


def pseudo_label_wer(hypothesis: str, reference: str) -> float:
    """Word error rate of one teacher transcript against the truth (1.0 when the truth is
    empty but the transcript is not, 0.0 when both are)."""
    if not reference.split():
        return float(bool(hypothesis.split()))
    return float(jiwer.wer(reference, hypothesis))


def filter_pseudo_labels(
    texts: dict[str, str | None], references: dict[str, str], max_wer: float
) -> tuple[dict[str, str | None], PseudoLabelStats]:
    """(texts with dropped transcripts set to None, stats). `references`: cut id -> its own
    transcript, for the cuts that have one; max_wer 0 = no WER filter."""
    stats = PseudoLabelStats()
    kept: dict[str, str | None] = {}
    for cut_id, text in texts.items():
        ref = references.get(cut_id)
        if text is None:
            stats.unmappable.append(cut_id)
        elif ref is not None and max_wer > 0:
            stats.n_checked += 1
            wer = pseudo_label_wer(text, ref)
            if wer > max_wer:
                stats.over_wer.append(cut_id)
                stats.over_wer_texts[cut_id] = (wer, text, ref)
                text = None
        kept[cut_id] = text
    if stats.unmappable:
        log.warning(
            "%d teacher transcripts could not be written in the student's units and are left "
            "out of sequence KD: %s",
            len(stats.unmappable),
            ", ".join(stats.unmappable),
        )
    if max_wer > 0:
        log.info(
            "distill.max_pseudo_wer=%g: %d of %d checked teacher transcripts dropped",
            max_wer,
            len(stats.over_wer),
            stats.n_checked,
        )
    return kept, stats
