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
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer as FWTokenizer
from faster_whisper.transcribe import get_ctranslate2_storage, get_suppressed_tokens
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
    fw = WhisperTeacher(whisper, beam=1, compute_type="int8")._faster_whisper()
    tok = FWTokenizer(fw.hf_tokenizer, fw.model.is_multilingual, task="transcribe",
                      language="en")  # fmt: skip
    rows = []
    for k in range(0, len(cuts), 8):
        group = cuts[k : k + 8]
        clips = [
            resample_mono(np.asarray(c.load_audio(), np.float32).mean(0), int(c.sampling_rate),
                          SAMPLE_RATE).astype(np.float32)
            for c in group
        ]  # fmt: skip
        feats = [pad_or_trim(fw.feature_extractor(x, chunk_length=30)[:, :-1]) for x in clips]
        encoded = fw.model.encode(get_ctranslate2_storage(np.stack(feats)))
        results = fw.model.generate(
            encoded,
            [[*tok.sot_sequence, tok.no_timestamps]] * len(group),
            beam_size=1,
            patience=1,
            length_penalty=1,
            max_length=fw.max_length,
            suppress_blank=True,
            suppress_tokens=list(get_suppressed_tokens(tok, [-1])),
            return_scores=True,
            return_no_speech_prob=True,
        )
        for c, r in zip(group, results):
            ids = r.sequences_ids[0]
            text = normalize_english(tok.decode([i for i in ids if i < tok.eot]).strip()) or ""
            ref = normalize_english(c.supervisions[0].text) or ""
            rows.append({"id": c.id, "seconds": c.duration,
                         "logprob": r.scores[0] * len(ids) / (len(ids) + 1),
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
