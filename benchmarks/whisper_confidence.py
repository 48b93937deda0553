"""Does Whisper's own confidence find its transcripts that are far from the truth? On utterances
with transcripts: Whisper's greedy transcript through faster-whisper (as the recipe's teacher
makes it, in batches of 8 windows of 30 s), its mean token log-prob (faster-whisper's
avg_logprob), and its WER against the utterance's own transcript, both normalised as asrkd
normalises pseudo-labels; then the AUC of the log-prob for "over 10 % WER" and what dropping the
least confident would leave (docs/benchmarks.md, round 24).

    .venv/bin/python benchmarks/whisper_confidence.py CUTS N WHISPER_FOLDER OUT.json
"""

from __future__ import annotations

import json
import random
import sys

import numpy as np
import torch
from lhotse import CutSet

from asrkd.data.audio import resample_mono
from asrkd.data.normalize import normalize_english
from asrkd.distill.pseudo_labels import pseudo_label_wer
from asrkd.distill.whisper_teacher import SAMPLE_RATE, WhisperTeacher


def main(cuts_path: str, n: int, whisper: str, out: str) -> None:
    torch.set_num_threads(1)
    cuts = list(CutSet.from_file(cuts_path))
    random.Random(0).shuffle(cuts)
    cuts = [c for c in cuts if c.duration <= 30][:n]
    teacher = WhisperTeacher(whisper, beam=1, compute_type="int8")
    rows = []
    for k in range(0, len(cuts), 8):
        group = cuts[k : k + 8]
        clips = [
            resample_mono(np.asarray(c.load_audio(), np.float32).mean(0), int(c.sampling_rate),
                          SAMPLE_RATE).astype(np.float32)
            for c in group
        ]  # fmt: skip
        for c, (text, logprob) in zip(group, teacher.ct2_batch_scored(clips)):
            text = normalize_english(text) or ""
            ref = normalize_english(c.supervisions[0].text) or ""
            rows.append({"id": c.id, "seconds": c.duration, "logprob": logprob,
                         "wer": pseudo_label_wer(text, ref), "text": text, "ref": ref})  # fmt: skip
    with open(out, "w") as fh:
        json.dump(rows, fh, indent=1)
    wer = np.array([r["wer"] for r in rows])
    logprob = np.array([r["logprob"] for r in rows])
    bad = wer > 0.1
    auc = float(np.mean(logprob[bad][:, None] < logprob[~bad][None, :]))
    print(f"{len(rows)} utterances; over 10 % WER: {bad.mean():.1%}; mean WER {wer.mean():.1%}; "
          f"AUC of the log-prob for over 10 %: {auc:.3f}")  # fmt: skip
    for q in (0.05, 0.1, 0.15, 0.2, 0.3):
        drop = logprob <= np.quantile(logprob, q)
        print(f"drop the lowest {q:.0%}: kept over 10 %: {bad[~drop].mean():.1%}, "
              f"kept mean WER {wer[~drop].mean():.1%}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
