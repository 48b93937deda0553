"""Seconds to lexicon-decode a test set with asrkd's LexiconDecoder, optionally against another
version of asrkd/lexicon.py (e.g. an older commit's) on the very same log-probabilities, checking
that both give the same transcripts.

    git show a434418:src/asrkd/lexicon.py > /tmp/lexicon_before.py  # (lexicon/search.py
    # since the module became a package: its LexiconDecoder, with this checkout's LMs)
    .venv/bin/python benchmarks/lexicon_decode.py --models runs/demo/runs/teacher/model.safetensors \
        --cuts runs/demo/manifests/cuts_test.jsonl.gz [--reference /tmp/lexicon_before.py] \
        [--rounds 3] [--beam 32] [--vocabulary train+wordfreq:50000]

The network runs once per model (one thread); only the beam search is timed, medians of
--rounds alternating rounds. Decoder settings: EvalConfig's (vocabulary "train": the model's
own training manifest) unless --config (a demo YAML's `eval:` part or an EvalConfig YAML),
--set eval-key=value, --beam or --vocabulary say else.

--engines flashlight python compares the search engines (eval.lexicon_engine) on the same
log-probabilities instead, with each one's WER and error counts over the cuts' transcripts:

    .venv/bin/python benchmarks/lexicon_decode.py --models MODEL --cuts DEV_CUTS \
        --config configs/librispeech-whisper.yaml --engines flashlight python

and with --grid key=v1,v2 (repeatable) every combination of decoder settings on the same
log-probabilities (tuning on dev: the network runs once per model):

    ... --engines flashlight --grid beam=32,64 --grid lm_weight=0.5,0.7,1.0
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

from asrkd.config import EvalConfig, apply_overrides, from_dict
from asrkd.data.dataset import load_cuts
from asrkd.evaluation import _outputs, make_lexicon_decoder
from asrkd.scoring import score
from asrkd.transcribe import open_model_file


def load_reference(path: str):
    spec = importlib.util.spec_from_file_location("lexicon_reference", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--cuts", required=True)
    ap.add_argument(
        "--reference", default="", help="another lexicon.py (or lexicon/search.py) to compare with"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--config", default="", help="YAML: a demo config's eval part, or EvalConfig")
    ap.add_argument("--set", action="append", default=[], help="eval key=value")
    ap.add_argument("--beam", type=int, default=None)
    ap.add_argument("--vocabulary", default=None)
    ap.add_argument("--engines", nargs="*", default=[], help="e.g. flashlight python")
    ap.add_argument(
        "--grid",
        action="append",
        default=[],
        help="with --engines: eval key=v1,v2,... (repeatable); every combination is decoded",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    data = dict(data.get("eval", data))
    shortcuts = [f"{k}={v}" for k, v in (("beam", args.beam), ("vocabulary", args.vocabulary)) if v]
    apply_overrides(data, ["decoder=lexicon", *args.set, *shortcuts])
    data.pop("lexicon_cuts", None)  # a demo fills it in; here the model's own manifest
    cfg = from_dict(EvalConfig, data)
    cuts = load_cuts(args.cuts)
    if args.engines:
        axes = [[f"{key}={v}" for v in values.split(",")] for key, _, values in
                (g.partition("=") for g in args.grid)]  # fmt: skip
        combos = [list(c) for c in itertools.product(*axes)]  # [[]] without --grid
        configs = [(", ".join(c), from_dict(EvalConfig, apply_overrides(dict(data), c)))
                   for c in combos]  # fmt: skip
        compare_engines(args, configs, cuts)
        return
    reference = load_reference(args.reference) if args.reference else None
    print("\n| model | utterances | frames | asrkd s | reference s | speed-up | same text |")
    print("|---|---|---|---|---|---|---|")
    for path in args.models:
        model = open_model_file(path, 1, precision=cfg.precision)
        decoder = make_lexicon_decoder(cfg, model, path)
        rows = []
        with torch.inference_mode():
            for group, _, logits, lengths in _outputs(model.forward, cuts, model.tokenizer, 60.0):
                log_probs = logits.float().log_softmax(-1).numpy()
                rows += [log_probs[i, :n] for i, n in enumerate(lengths.tolist())]
        decoders = {"asrkd": decoder}
        if reference is not None:
            ref = reference.LexiconDecoder.__new__(reference.LexiconDecoder)
            ref.__dict__.update(decoder.__dict__)  # same trie, LM and settings
            decoders["reference"] = ref
        times: dict[str, list[float]] = {k: [] for k in decoders}
        texts = {}
        for _ in range(args.rounds):
            for name, dec in decoders.items():
                t0 = time.perf_counter()
                texts[name] = [dec.decode(r) for r in rows]
                times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        ref_s = f"{med['reference']:.2f}" if reference else "–"
        gain = f"{med['reference'] / med['asrkd']:.2f}x" if reference else "–"
        same = str(texts["asrkd"] == texts["reference"]) if reference else "–"
        print(
            f"| {path} | {len(rows)} | {sum(len(r) for r in rows)} | {med['asrkd']:.2f} "
            f"| {ref_s} | {gain} | {same} |"
        )


def compare_engines(args, configs: list[tuple[str, EvalConfig]], cuts) -> None:
    """Each engine's search time (median of --rounds, one thread) and WER on the same
    log-probabilities, one table row per model, engine and setting of --grid (the network runs
    once per model, at eval.precision as --config / --set give it)."""
    from dataclasses import replace

    print(f"\n{configs[0][1]}\n")
    print(
        "| model | engine | setting | utterances | frames | search s | speed vs first | WER "
        "| S | D | I |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for path in args.models:
        model = open_model_file(path, 1, precision=configs[0][1].precision)
        rows, refs = [], []
        with torch.inference_mode():
            for group, texts, logits, lengths in _outputs(
                model.forward, cuts, model.tokenizer, 60.0
            ):
                log_probs = logits.float().log_softmax(-1).numpy()
                rows += [log_probs[i, :n] for i, n in enumerate(lengths.tolist())]
                refs += [(c.id, r) for c, r in zip(group, texts)]
        first = None
        for engine, (label, cfg) in itertools.product(args.engines, configs):
            decoder = make_lexicon_decoder(replace(cfg, lexicon_engine=engine), model, path)
            times = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                hyps = [decoder.decode(r) for r in rows]
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            first = first or med
            s = score([(i, r, h) for (i, r), h in zip(refs, hyps)])
            frames = sum(len(r) for r in rows)
            print(
                f"| {path} | {engine} | {label or '–'} | {len(rows)} | {frames} | {med:.2f} "
                f"| {first / med:.2f}x | {100 * s['wer']:.2f} % | {s['substitutions']} "
                f"| {s['deletions']} | {s['insertions']} |"
            )


if __name__ == "__main__":
    main()
