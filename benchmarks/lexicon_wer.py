"""WER of greedy decoding and of the lexicon beam search, this version against another
lexicon.py (e.g. an older commit's), over beams and vocabularies, on the same log-probabilities:
one row per (test set, decoder version, beam, vocabulary) with WER, deletions per 100 reference
words, utterances whose hypothesis lost its last word against greedy's word count, OOV rate and
decoding seconds.

    git show b7db6d9:src/asrkd/lexicon.py > /tmp/lexicon_before.py  # (lexicon/search.py
    # since the module became a package: its LexiconDecoder, with this checkout's LMs)
    .venv/bin/python benchmarks/lexicon_wer.py --model runs/real/model.safetensors \
        --cuts dev.jsonl.gz test-other.jsonl.gz --reference /tmp/lexicon_before.py \
        [--beams 8 32] [--vocabularies train train+wordfreq:50000]

The decoder's weights stay EvalConfig's (LM weight 0.5, word bonus 1, wordfreq weight 0.5):
nothing here is tuned on the sets it reports.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jiwer
import torch
from lexicon_decode import load_reference  # the script folder is on sys.path

from asrkd.config import EvalConfig
from asrkd.data.dataset import cut_text, load_cuts
from asrkd.evaluation import _outputs, error_rates, make_lexicon_decoder, oov_rate
from asrkd.transcribe import open_model_file


def log_probs_of(model, path: str) -> tuple[list, list[str]]:
    cuts = load_cuts(path)
    rows, refs = [], {}
    with torch.inference_mode():
        for group, _, logits, lengths in _outputs(model.forward, cuts, model.tokenizer, 60.0):
            lp = logits.float().log_softmax(-1).numpy()
            for c, row, n in zip(group, lp, lengths.tolist()):
                rows.append((c.id, row[:n]))
                refs[c.id] = cut_text(c)
    return rows, refs


def score(refs: dict[str, str], hyps: list[tuple[str, str]]) -> dict[str, float]:
    results = [(i, refs[i], h) for i, h in hyps]
    wer, _ = error_rates(results)
    kept = [(r, h) for _, r, h in results if r]
    out = jiwer.process_words([r for r, _ in kept], [h or "<empty>" for _, h in kept])
    n_ref = sum(len(r.split()) for r, _ in kept)
    return {"wer": wer, "del_per_100": 100 * out.deletions / n_ref}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--cuts", nargs="+", required=True)
    ap.add_argument(
        "--reference", default="", help="another lexicon.py (or lexicon/search.py) to compare with"
    )
    ap.add_argument("--beams", nargs="+", type=int, default=[8, 32])
    ap.add_argument("--vocabularies", nargs="+", default=["train", "train+wordfreq:50000"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = open_model_file(args.model, 1)
    reference = load_reference(args.reference) if args.reference else None
    print(
        "\n| set | decoder | beam | vocabulary | OOV % | WER % | del/100 words | last word "
        "lost | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for path in args.cuts:
        name = Path(path).name.removeprefix("cuts_").removesuffix(".jsonl.gz")
        rows, refs = log_probs_of(model, path)
        greedy = [(i, model.tokenizer.decode(_best_path(lp))) for i, lp in rows]
        g = score(refs, greedy)
        print(
            f"| {name} | greedy | – | – | – | {100 * g['wer']:.1f} | {g['del_per_100']:.1f} "
            "| – | – |"
        )
        for vocabulary in args.vocabularies:
            for beam in args.beams:
                cfg = EvalConfig(decoder="lexicon", beam=beam, vocabulary=vocabulary)
                decoder = make_lexicon_decoder(cfg, model, args.model)
                oov = oov_rate([(i, refs[i], "") for i, _ in rows], decoder)
                versions = {"new": decoder}
                if reference is not None:
                    old = reference.LexiconDecoder.__new__(reference.LexiconDecoder)
                    old.__dict__.update(decoder.__dict__)  # same trie, LM and settings
                    versions = {"old": old, "new": decoder}
                for version, dec in versions.items():
                    t0 = time.perf_counter()
                    hyps = [(i, dec.decode(lp)) for i, lp in rows]
                    seconds = time.perf_counter() - t0
                    s = score(refs, hyps)
                    lost = sum(_lost_last_word(refs[i], h) for i, h in hyps)
                    print(
                        f"| {name} | {version} | {beam} | {vocabulary} | {100 * oov:.1f} "
                        f"| {100 * s['wer']:.1f} | {s['del_per_100']:.1f} | {lost}/{len(hyps)} "
                        f"| {seconds:.1f} |",
                        flush=True,
                    )


def _best_path(lp) -> list[int]:
    ids = lp.argmax(-1).tolist()
    return [t for j, t in enumerate(ids) if t != 0 and (j == 0 or ids[j - 1] != t)]


def _lost_last_word(ref: str, hyp: str) -> bool:
    """The hypothesis ends before the reference's last word: its last word is not the
    reference's and it has fewer words (a crude count of dropped final words)."""
    r, h = ref.split(), hyp.split()
    return bool(r) and len(h) < len(r) and (not h or h[-1] != r[-1])


if __name__ == "__main__":
    main()
