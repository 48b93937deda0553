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

import jiwer

log = logging.getLogger(__name__)


@dataclass
class PseudoLabelStats:
    """What the filter did, for the run's summary."""

    n_checked: int = 0  # transcripts with a reference
    unmappable: list[str] = field(default_factory=list)  # cut ids
    over_wer: list[str] = field(default_factory=list)  # cut ids

    def summary(self) -> dict:
        return {
            "pseudo_labels_checked": self.n_checked,
            "pseudo_labels_unmappable": len(self.unmappable),
            "pseudo_labels_over_max_wer": len(self.over_wer),
        }


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
            if pseudo_label_wer(text, ref) > max_wer:
                stats.over_wer.append(cut_id)
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
